/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The write-ahead log's entries: a new file's non-zero blocks into an entry, and the redo of an entry
 * (wal.h, docs/design.md "Commit protocol"). */

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "wal-internal.h"

static int hex_value(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;
}

/* Writes the logged blocks `want` at `off` that read as zeros in `fd` (never written back before a
 * power loss), and leaves every other block alone. */
static int restore_blocks(int fd, uint64_t off, const uint8_t *want, size_t len) {
        _cleanup_free_ uint8_t *have = malloc(MAX(len, (size_t) 1));
        ssize_t n;

        if (!have)
                return -ENOMEM;
        n = pread(fd, have, len, (off_t) off);
        if (n < 0)
                return negative_errno();
        if ((size_t) n < len)
                memset(have + n, 0, len - (size_t) n);
        for (size_t b = 0; b < len; b += WAL_EXTENT_BLOCK) {
                size_t bl = MIN((size_t) WAL_EXTENT_BLOCK, len - b);
                bool zero = true;
                int r;

                for (size_t i = 0; i < bl && zero; i++)
                        zero = have[b + i] == 0;
                if (!zero)
                        continue;
                r = format_pwrite_full(fd, want + b, bl, off + b);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Decodes one logged extent {"offset", "data": hex} of a file of `size` bytes and writes it: all of it
 * into a new file, only its blocks that read as zeros into a file restored in place. */
static int redo_extent(int fd, bool in_place, uint64_t size, struct json_object *a) {
        _cleanup_free_ uint8_t *buf = NULL;
        struct json_object *o, *d;
        const char *hex;
        size_t len;
        uint64_t off;

        if (!json_object_is_type(a, json_type_object) || !json_object_object_get_ex(a, "offset", &o) ||
            !json_object_is_type(o, json_type_int) || !json_object_object_get_ex(a, "data", &d) ||
            !json_object_is_type(d, json_type_string))
                return -EBADMSG;
        hex = json_object_get_string(d);
        len = strlen(hex) / 2;
        off = json_object_get_uint64(o);
        if (strlen(hex) % 2 != 0 || off > size || len > size - off)
                return -EBADMSG;
        buf = malloc(MAX(len, (size_t) 1));
        if (!buf)
                return -ENOMEM;
        for (size_t i = 0; i < len; i++) {
                int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -EBADMSG;
                buf[i] = (uint8_t) (hi << 4 | lo);
        }
        return in_place ? restore_blocks(fd, off, buf, len) : format_pwrite_full(fd, buf, len, off);
}

/* Makes one new file of an entry ({"layer", "size", "extents"}) whole and durable, as wal_entry_redo()
 * says; its inode into its layer in `ls`. */
static int redo_file(Store *s, Layer *const *ls, size_t n_layers, struct json_object *f) {
        struct json_object *id, *size, *extents;
        _cleanup_close_ int fd = -EBADF;
        Layer *l = NULL;
        char tmp[96];
        struct stat st;
        bool in_place;
        uint64_t sz;
        int r = 0;

        if (!json_object_is_type(f, json_type_object) || !json_object_object_get_ex(f, "layer", &id) ||
            !json_object_is_type(id, json_type_string) || !json_object_object_get_ex(f, "size", &size) ||
            !json_object_is_type(size, json_type_int) || !json_object_object_get_ex(f, "extents", &extents) ||
            !json_object_is_type(extents, json_type_array))
                return -EBADMSG;
        for (size_t j = 0; j < n_layers; j++)
                if (streq(ls[j]->id, json_object_get_string(id)))
                        l = ls[j];
        sz = json_object_get_uint64(size);
        if (!l || sz > WAL_FILE_MAX_SIZE)
                return -EBADMSG;

        snprintf(tmp, sizeof(tmp), STORE_TMP_PREFIX "%s", l->file);
        fd = open_beneath(s->images_fd, l->file, O_RDWR | O_NONBLOCK, 0);
        in_place = fd >= 0;
        if (fd == -ENOENT) {
                (void) unlinkat(s->images_fd, tmp, 0);
                fd = openat(s->images_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
                if (fd < 0)
                        return negative_errno();
        }
        if (fd < 0)
                return fd;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != s->uid)
                r = -EBADMSG;
        if (r >= 0 && (uint64_t) st.st_size < sz && ftruncate(fd, (off_t) sz) < 0)
                r = negative_errno();
        for (size_t j = 0; r >= 0 && j < json_object_array_length(extents); j++)
                r = redo_extent(fd, in_place, sz, json_object_array_get_idx(extents, j));
        if (r >= 0 && (fsync(fd) < 0 || fstat(fd, &st) < 0 ||
                       (!in_place && renameat(s->images_fd, tmp, s->images_fd, l->file) < 0)))
                r = negative_errno();
        if (r < 0) {
                if (!in_place)
                        (void) unlinkat(s->images_fd, tmp, 0);
                return r;
        }
        l->inode = (uint64_t) st.st_ino;
        crash_point("wal-redo:after-file");
        return 0;
}

/* One entry's new files, records and VM record, made durable: a redo can run any number of times.
 * A new file missing under its name is written afresh (temporary, fsync, rename, fsync of images/). A
 * file found under its name is restored in place: extended to the logged size if shorter, and each
 * logged block that reads as zeros is written (the logged blocks are the file's non-zero ones, so a
 * zero block is one a power loss took); a non-zero block is never overwritten, so nothing written into
 * the file after the entry (the entry is checkpointed before a writable fd of it leaves the daemon,
 * but a file can also be written by path) is undone. The inode found or made is recorded in the
 * records, written whole (record_write()), and with `memory` in the store's layer. */
int wal_entry_redo(Store *s, const char *vm, struct json_object *e, bool memory) {
        _cleanup_(vm_freep) Vm *v = NULL;
        struct json_object *x, *layers, *files;
        Layer *ls[4] = {};
        size_t n_layers;
        int r;

        if (!json_object_object_get_ex(e, "schema", &x) || !json_object_is_type(x, json_type_int) ||
            json_object_get_int64(x) < 1)
                return -EBADMSG;
        if (json_object_get_int64(x) > RECORD_SCHEMA)
                return -EPROTONOSUPPORT;
        if (!json_object_object_get_ex(e, "vm", &x) || vm_from_json(x, &v) < 0 || !streq(v->name, vm) ||
            !json_object_object_get_ex(e, "layers", &layers) || !json_object_is_type(layers, json_type_array) ||
            !json_object_object_get_ex(e, "files", &files) || !json_object_is_type(files, json_type_array))
                return -EBADMSG;
        n_layers = json_object_array_length(layers);
        if (n_layers > ELEMENTSOF(ls) || json_object_array_length(files) > n_layers)
                return -EBADMSG;
        r = 0;
        for (size_t k = 0; r >= 0 && k < n_layers; k++) {
                r = layer_from_json(json_object_array_get_idx(layers, k), &ls[k]);
                if (r >= 0 && (!ls[k]->vm || !streq(ls[k]->vm, vm) || ls[k]->data_file || ls[k]->state != LAYER_READY))
                        r = -EBADMSG;
        }

        for (size_t k = 0; r >= 0 && k < json_object_array_length(files); k++)
                r = redo_file(s, ls, n_layers, json_object_array_get_idx(files, k));
        if (r >= 0 && json_object_array_length(files) > 0)
                r = fsync_directory(s->images_fd);

        for (size_t k = 0; r >= 0 && k < n_layers; k++) {
                struct json_object *o = layer_to_json(ls[k]);
                char name[64];

                snprintf(name, sizeof(name), "layer-%s.json", ls[k]->id);
                r = record_write(s->records_fd, name, o);
                json_object_put(o);
                if (r >= 0 && memory) {
                        Layer *m = store_find_layer(s, ls[k]->id);
                        if (m)
                                m->inode = ls[k]->inode;
                }
        }
        if (r >= 0) {
                struct json_object *o = vm_to_json(v);
                char name[96];

                snprintf(name, sizeof(name), "vm-%s.json", v->name);
                r = record_write(s->records_fd, name, o);
                json_object_put(o);
        }
        for (size_t k = 0; k < n_layers; k++)
                layer_free(ls[k]);
        return r;
}

static const char hex_digits[] = "0123456789abcdef";

/* The non-zero WAL_EXTENT_BLOCK-byte blocks of `fd` (its data regions only), merged into runs. */
int wal_file_extents(int fd, uint64_t size, struct json_object **ret, size_t *total) {
        _cleanup_free_ uint8_t *buf = malloc(16384);
        struct json_object *a = json_object_new_array();
        uint64_t pos = 0;
        int r = 0;

        if (!buf || !a) {
                json_object_put(a);
                return -ENOMEM;
        }
        *total = 0;
        while (pos < size && r >= 0) {
                off_t data = lseek(fd, (off_t) pos, SEEK_DATA), hole;
                if (data < 0) {
                        if (errno != ENXIO)
                                r = negative_errno();
                        break;
                }
                hole = lseek(fd, data, SEEK_HOLE);
                if (hole < 0) {
                        r = negative_errno();
                        break;
                }
                for (uint64_t at = (uint64_t) data; at < (uint64_t) hole && r >= 0;) {
                        size_t n = (size_t) MIN((uint64_t) hole - at, (uint64_t) 16384);
                        size_t run_start = SIZE_MAX;

                        r = format_pread_full(fd, buf, n, at);
                        for (size_t b = 0; r >= 0 && b <= n; b += WAL_EXTENT_BLOCK) {
                                size_t bl = b < n ? MIN((size_t) WAL_EXTENT_BLOCK, n - b) : 0;
                                bool nonzero = false;

                                for (size_t i = 0; i < bl && !nonzero; i++)
                                        nonzero = buf[b + i] != 0;
                                if (nonzero && run_start == SIZE_MAX)
                                        run_start = b;
                                if (!nonzero && run_start != SIZE_MAX) {
                                        struct json_object *e = json_object_new_object();
                                        size_t len = b - run_start;
                                        char *hex;

                                        *total += len;
                                        if (*total > WAL_ENTRY_MAX / 2) {
                                                r = -E2BIG;
                                                json_object_put(e);
                                                break;
                                        }
                                        hex = malloc(2 * len + 1);
                                        if (!hex || !e) {
                                                free(hex);
                                                json_object_put(e);
                                                r = -ENOMEM;
                                                break;
                                        }
                                        for (size_t i = 0; i < len; i++) {
                                                hex[2 * i] = hex_digits[buf[run_start + i] >> 4];
                                                hex[2 * i + 1] = hex_digits[buf[run_start + i] & 15];
                                        }
                                        hex[2 * len] = 0;
                                        json_object_object_add(e, "offset", json_object_new_uint64(at + run_start));
                                        json_object_object_add(e, "data", json_object_new_string(hex));
                                        free(hex);
                                        json_object_array_add(a, e);
                                        run_start = SIZE_MAX;
                                }
                        }
                        at += n;
                }
                pos = (uint64_t) hole;
        }
        if (r < 0) {
                json_object_put(a);
                return r;
        }
        *ret = a;
        return 0;
}
