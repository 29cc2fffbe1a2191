/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The copy engine of Rebase/Commit/flatten (daemon/ops/reshape-copy.c): which file systems count as
 * sharing extents, and a pending copy written out in chunks that start the target's writeback, with
 * the bytes landing where they belong, also when the copy crosses chunk boundaries and runs past the
 * source's end. */

#include <sys/vfs.h>

#include "../../daemon/ops/reshape-internal.h"
#include "test-util.h"

static void test_fs_types(void) {
        CHECK(reshape_fs_shares_extents(0x9123683E));  /* btrfs */
        CHECK(reshape_fs_shares_extents(0x58465342));  /* XFS */
        CHECK(reshape_fs_shares_extents(0xCA451A4E));  /* bcachefs */
        CHECK(!reshape_fs_shares_extents(0xEF53));     /* ext2/3/4 */
        CHECK(!reshape_fs_shares_extents(0x01021994)); /* tmpfs */
        CHECK(!reshape_fs_shares_extents(0));
}

static uint8_t *pattern(size_t n, unsigned seed) {
        uint8_t *p = malloc(n);
        CHECK(p);
        for (size_t i = 0; p && i < n; i++)
                p[i] = (uint8_t) ((i * 2654435761U + seed) >> 13);
        return p;
}

/* 10 MiB + 123 bytes of source copied from offset 4096 to offset 65536 of the target, with a pending
 * length reaching 2 MiB past the source's end: chunks of COPY_KICK_BYTES, then the short end. */
static void test_copy(void) {
        char dir[] = "/tmp/test-reshape-copy.XXXXXX", sp[64], dp[64];
        const uint64_t src_len = (UINT64_C(10) << 20) + 123, skip = 4096, at = 65536;
        ReshapeOp op = { .cp_kick_fd = -EBADF };
        OpError err = {};
        uint8_t *want, *got;
        struct statfs sf;
        int src, dst;

        CHECK(mkdtemp(dir));
        snprintf(sp, sizeof sp, "%s/src", dir);
        snprintf(dp, sizeof dp, "%s/dst", dir);
        src = open(sp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        dst = open(dp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        CHECK(src >= 0 && dst >= 0);
        want = pattern(src_len, 7);
        if (!want)
                abort();
        CHECK_EQ_INT(pwrite(src, want, src_len, 0), (ssize_t) src_len);

        op.cp_src = src;
        op.cp_dst = dst;
        op.cp_src_off = skip;
        op.cp_dst_off = at;
        op.cp_len = src_len - skip + (UINT64_C(2) << 20);
        CHECK_EQ_INT(reshape_copy_flush(&op, &err), 0);
        CHECK_EQ_INT(op.cp_len, 0);
        CHECK_EQ_INT(op.cp_kick_fd, dst);

        /* Everything up to the source's end, nothing beyond it (the target reads zeros there). */
        CHECK_EQ_INT(lseek(dst, 0, SEEK_END), (off_t) (at + src_len - skip));
        got = malloc(src_len - skip);
        if (!got) /* CHECK() counts and goes on: the reads below need the buffer */
                abort();
        CHECK_EQ_INT(pread(dst, got, src_len - skip, (off_t) at), (ssize_t) (src_len - skip));
        CHECK(memcmp(got, want + skip, src_len - skip) == 0);

        /* Writeback was started after every whole chunk: what is left unstarted is the remainder. */
        CHECK_EQ_INT(fstatfs(dst, &sf), 0);
        if (reshape_fs_shares_extents((int64_t) sf.f_type))
                CHECK(op.cp_shares);
        else {
                CHECK(!op.cp_shares);
                CHECK_EQ_INT(op.cp_unkicked, (src_len - skip) % COPY_KICK_BYTES);
        }

        /* A second copy into the same target continues the count; into another target starts anew. */
        op.cp_src_off = 0;
        op.cp_dst_off = 0;
        op.cp_len = 1000;
        CHECK_EQ_INT(reshape_copy_flush(&op, &err), 0);
        if (!op.cp_shares)
                CHECK_EQ_INT(op.cp_unkicked, (src_len - skip) % COPY_KICK_BYTES + 1000);
        CHECK_EQ_INT(pread(dst, got, 1000, 0), 1000);
        CHECK(memcmp(got, want, 1000) == 0);
        op.cp_dst = src;
        op.cp_src = dst;
        op.cp_src_off = at;
        op.cp_dst_off = src_len;
        op.cp_len = 500;
        CHECK_EQ_INT(reshape_copy_flush(&op, &err), 0);
        CHECK_EQ_INT(op.cp_kick_fd, src);
        if (!op.cp_shares)
                CHECK_EQ_INT(op.cp_unkicked, 500);

        free(want);
        free(got);
        close(src);
        close(dst);
        CHECK_EQ_INT(unlink(sp), 0);
        CHECK_EQ_INT(unlink(dp), 0);
        CHECK_EQ_INT(rmdir(dir), 0);
}

int main(void) {
        test_fs_types();
        test_copy();
        TEST_MAIN_END();
}
