/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* qcow2_header_read() reads 4 KiB first and the rest of cluster 0 only when the header needs it: both
 * paths must give exactly what qcow2_header_parse() gives on the whole cluster. */

#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bytes.h"
#include "qcow2.h"
#include "test-util.h"

#define CS 65536U

static int image(uint32_t ext_len, uint32_t header_length, const char *backing) {
        FormatError err = {};
        uint8_t *c0 = calloc(1, CS);
        int fd = memfd_create("t", MFD_CLOEXEC);
        size_t pos;

        CHECK(fd >= 0);
        CHECK_EQ_INT(qcow2_create(fd, &(Qcow2CreateParams) { .size = UINT64_C(1) << 30, .cluster_bits = 16 }, &err), 0);
        CHECK_EQ_INT(format_pread_full(fd, c0, CS, 0), 0);
        /* Rebuild cluster 0: header of `header_length` bytes, one unknown extension of `ext_len` bytes,
         * the end marker, then the backing name. */
        be32_write(c0 + 100, header_length);
        memset(c0 + 112, 0, CS - 112);
        pos = header_length;
        be32_write(c0 + pos, 0x12345678);
        be32_write(c0 + pos + 4, ext_len);
        if (ext_len > CS - pos - 16) {
                /* A length claiming more than cluster 0 holds: nothing more to write. */
                CHECK_EQ_INT(format_pwrite_full(fd, c0, CS, 0), 0);
                free(c0);
                return fd;
        }
        memset(c0 + pos + 8, 0xa5, ext_len);
        pos += 8 + ((ext_len + 7) & ~7U);
        pos += 8; /* end marker */
        if (backing) {
                memcpy(c0 + pos, backing, strlen(backing));
                be64_write(c0 + 8, pos);
                be32_write(c0 + 16, (uint32_t) strlen(backing));
        }
        CHECK_EQ_INT(format_pwrite_full(fd, c0, CS, 0), 0);
        free(c0);
        return fd;
}

static void same(int fd, int expect, const char *what) {
        uint8_t *c0 = malloc(CS);
        FormatError e1 = {}, e2 = {};
        Qcow2Header a, b;
        int ra, rb;

        memset(&a, 0, sizeof(a));
        memset(&b, 0, sizeof(b));
        CHECK_EQ_INT(format_pread_full(fd, c0, CS, 0), 0);
        ra = qcow2_header_parse(c0, CS, (uint64_t) lseek(fd, 0, SEEK_END), NULL, &a, &e1);
        rb = qcow2_header_read(fd, NULL, &b, &e2);
        if (ra != expect || rb != expect)
                fprintf(stderr, "%s: parse %d (%s), read %d (%s)\n", what, ra, e1.reason, rb, e2.reason);
        CHECK_EQ_INT(ra, expect);
        CHECK_EQ_INT(rb, expect);
        if (ra == 0 && rb == 0)
                CHECK(memcmp(&a, &b, sizeof(a)) == 0);
        else
                CHECK(strcmp(e1.reason, e2.reason) == 0);
        free(c0);
}

int main(void) {
        int fd;

        /* Everything inside the first 4 KiB. */
        fd = image(16, 112, "base.qcow2");
        same(fd, 0, "small");
        close(fd);
        /* Extensions reaching past 4 KiB: the second read is needed. */
        fd = image(6000, 112, "base.qcow2");
        same(fd, 0, "long extension");
        close(fd);
        /* The extension ends inside 4 KiB, the backing name straddles the boundary. */
        fd = image(4096 - 112 - 8 - 8 - 8, 112, "a-backing-name-that-crosses-4k.qcow2");
        same(fd, 0, "name across 4 KiB");
        close(fd);
        /* A header longer than 4 KiB. */
        fd = image(8, 4200, NULL);
        same(fd, 0, "header_length 4200");
        close(fd);
        /* Errors found after the first 4 KiB are the same errors. */
        fd = image(CS, 112, NULL);
        same(fd, -EBADMSG, "extension past cluster 0");
        close(fd);

        TEST_MAIN_END();
}
