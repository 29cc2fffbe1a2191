/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "undo.h"

#define UNDO_MAGIC UINT64_C(0x766469736b756e64)       /* "vdiskund" */
#define UNDO_ENTRY_MAGIC UINT64_C(0x766469736b656e74) /* "vdiskent" */
#define UNDO_HEADER_SIZE 24U
#define UNDO_ENTRY_HEADER_SIZE 32U

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                h ^= p[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}

#define FNV_INIT UINT64_C(0xcbf29ce484222325)

static uint64_t entry_sum(uint64_t offset, uint64_t length, const uint8_t *data) {
        uint8_t b[16];
        be64_write(b, offset);
        be64_write(b + 8, length);
        return fnv1a(fnv1a(FNV_INIT, b, sizeof(b)), data, length);
}

int undo_begin(UndoLog *u, int log_fd, int target_fd, FormatError *err) {
        uint8_t hdr[UNDO_HEADER_SIZE];
        struct stat st;
        int r;

        if (fstat(target_fd, &st) < 0)
                return format_error(err, negative_errno(), "cannot stat the image");
        *u = (UndoLog) { .fd = log_fd, .target_fd = target_fd, .original_size = (uint64_t) st.st_size };
        be64_write(hdr, UNDO_MAGIC);
        be64_write(hdr + 8, u->original_size);
        be64_write(hdr + 16, fnv1a(FNV_INIT, hdr, 16));
        r = format_pwrite_full(log_fd, hdr, sizeof(hdr), 0);
        if (r < 0)
                return format_error(err, r, "cannot write the undo log");
        u->pos = sizeof(hdr);
        return undo_sync(u, err);
}

int undo_save(UndoLog *u, uint64_t offset, uint64_t length, FormatError *err) {
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        if (offset >= u->original_size || length == 0)
                return 0;
        length = MIN(length, u->original_size - offset);
        if (length > UNDO_MAX_ENTRY) {
                /* Large regions go in pieces, each a complete entry. */
                for (uint64_t done = 0; done < length; done += UNDO_MAX_ENTRY) {
                        r = undo_save(u, offset + done, MIN(UNDO_MAX_ENTRY, length - done), err);
                        if (r < 0)
                                return r;
                }
                return 0;
        }

        buf = malloc(UNDO_ENTRY_HEADER_SIZE + length);
        if (!buf)
                return format_error(err, -ENOMEM, "out of memory");
        r = format_pread_full(u->target_fd, buf + UNDO_ENTRY_HEADER_SIZE, length, offset);
        if (r < 0)
                return format_error(err, r, "cannot read the image");
        be64_write(buf, UNDO_ENTRY_MAGIC);
        be64_write(buf + 8, offset);
        be64_write(buf + 16, length);
        be64_write(buf + 24, entry_sum(offset, length, buf + UNDO_ENTRY_HEADER_SIZE));
        r = format_pwrite_full(u->fd, buf, UNDO_ENTRY_HEADER_SIZE + length, u->pos);
        if (r < 0)
                return format_error(err, r, "cannot write the undo log");
        u->pos += UNDO_ENTRY_HEADER_SIZE + length;
        u->bytes += length;
        return 0;
}

int undo_sync(UndoLog *u, FormatError *err) {
        if (fdatasync(u->fd) < 0)
                return format_error(err, negative_errno(), "cannot flush the undo log");
        return 0;
}

static bool all_zero(const uint8_t *p, size_t n) {
        return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

/* Puts the old bytes back, a page at a time: a page that already holds them is left alone, and old
 * zeros (often a hole the change filled) become a hole again. Writing either would need blocks that a
 * full file system, the usual reason for rolling back, may not have: a page of old data was
 * allocated before the change, the others need nothing. */
static int restore_region(int fd, const uint8_t *old, size_t length, uint64_t offset) {
        uint8_t now[4096];

        for (size_t done = 0; done < length;) {
                size_t n = MIN(sizeof(now) - (size_t) ((offset + done) % sizeof(now)), length - done);
                int r = format_pread_full(fd, now, n, offset + done);

                if (r < 0 || memcmp(now, old + done, n) != 0) {
                        if (!all_zero(old + done, n) ||
                            fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) (offset + done), (off_t) n) < 0) {
                                r = format_pwrite_full(fd, old + done, n, offset + done);
                                if (r < 0)
                                        return r;
                        }
                }
                done += n;
        }
        return 0;
}

typedef struct Entry {
        uint64_t pos, offset, length;
} Entry;

int undo_apply(int log_fd, int target_fd, FormatError *err) {
        _cleanup_free_ Entry *entries = NULL;
        _cleanup_free_ uint8_t *buf = NULL;
        uint8_t hdr[UNDO_HEADER_SIZE];
        size_t n = 0, allocated = 0;
        uint64_t original_size, pos, log_size;
        struct stat st;
        int r;

        if (fstat(log_fd, &st) < 0)
                return format_error(err, negative_errno(), "cannot stat the undo log");
        log_size = (uint64_t) st.st_size;
        if (log_size < sizeof(hdr) || format_pread_full(log_fd, hdr, sizeof(hdr), 0) < 0 ||
            be64_read(hdr) != UNDO_MAGIC || be64_read(hdr + 16) != fnv1a(FNV_INIT, hdr, 16))
                return 0; /* never completed: the image was not touched */
        original_size = be64_read(hdr + 8);

        /* Collect the valid prefix of entries first, then restore in reverse order. */
        for (pos = sizeof(hdr); pos + UNDO_ENTRY_HEADER_SIZE <= log_size;) {
                uint8_t eh[UNDO_ENTRY_HEADER_SIZE];
                uint64_t offset, length;

                if (format_pread_full(log_fd, eh, sizeof(eh), pos) < 0 || be64_read(eh) != UNDO_ENTRY_MAGIC)
                        break;
                offset = be64_read(eh + 8);
                length = be64_read(eh + 16);
                if (length == 0 || length > UNDO_MAX_ENTRY || length > log_size - pos - UNDO_ENTRY_HEADER_SIZE ||
                    offset >= original_size || length > original_size - offset)
                        break;
                free(buf);
                buf = malloc(length);
                if (!buf)
                        return format_error(err, -ENOMEM, "out of memory");
                if (format_pread_full(log_fd, buf, length, pos + UNDO_ENTRY_HEADER_SIZE) < 0 ||
                    entry_sum(offset, length, buf) != be64_read(eh + 24))
                        break;
                if (n == allocated) {
                        Entry *e = realloc(entries, (allocated = allocated ? allocated * 2 : 64) * sizeof(Entry));
                        if (!e)
                                return format_error(err, -ENOMEM, "out of memory");
                        entries = e;
                }
                entries[n++] = (Entry) { pos + UNDO_ENTRY_HEADER_SIZE, offset, length };
                pos += UNDO_ENTRY_HEADER_SIZE + length;
        }

        /* Truncate first: it frees what the change appended, so that restoring the old bytes finds room
         * even on a full file system. Repeating all of this after a crash gives the same result. */
        if (ftruncate(target_fd, (off_t) original_size) < 0)
                return format_error(err, negative_errno(), "cannot restore the image's length");

        for (size_t i = n; i-- > 0;) {
                free(buf);
                buf = malloc(entries[i].length);
                if (!buf)
                        return format_error(err, -ENOMEM, "out of memory");
                r = format_pread_full(log_fd, buf, entries[i].length, entries[i].pos);
                if (r >= 0)
                        r = restore_region(target_fd, buf, entries[i].length, entries[i].offset);
                if (r < 0)
                        return format_error(err, r, "cannot restore the image from its undo log");
        }
        if (fsync(target_fd) < 0)
                return format_error(err, negative_errno(), "cannot flush the restored image");
        return 0;
}
