/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The writer: qcow2_create(), qcow2_set_backing(), raw_create() and the swap signature template. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "qcow2.h"
#include "test-util.h"

#define KiB (UINT64_C(1) << 10)
#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define TiB (UINT64_C(1) << 40)

#define UNKNOWN_EXT_MAGIC UINT32_C(0x12345678)
#define UNKNOWN_EXT_BYTES 16U

static char tmpdir[64];
static unsigned file_counter;

/* A new empty file in the temporary directory; unlinked at once, the descriptor keeps it alive. */
static int new_file(void) {
        char path[128];
        int fd;

        snprintf(path, sizeof(path), "%s/img-%u", tmpdir, file_counter++);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
                perror("open");
                exit(EXIT_FAILURE);
        }
        if (unlink(path) < 0) {
                perror("unlink");
                exit(EXIT_FAILURE);
        }
        return fd;
}

static uint64_t file_size_of(int fd) {
        struct stat st;

        if (fstat(fd, &st) < 0) {
                perror("fstat");
                exit(EXIT_FAILURE);
        }
        return (uint64_t) st.st_size;
}

static void *xmalloc(size_t n) {
        void *p = malloc(n ? n : 1);

        if (!p) {
                fprintf(stderr, "out of memory\n");
                exit(EXIT_FAILURE);
        }
        return p;
}

static void pread_exact(int fd, void *buf, size_t n, uint64_t off) {
        if (format_pread_full(fd, buf, n, off) < 0) {
                fprintf(stderr, "short read of %zu bytes at 0x%" PRIx64 "\n", n, off);
                exit(EXIT_FAILURE);
        }
}

static void pwrite_exact(int fd, const void *buf, size_t n, uint64_t off) {
        if (format_pwrite_full(fd, buf, n, off) < 0) {
                fprintf(stderr, "short write of %zu bytes at 0x%" PRIx64 "\n", n, off);
                exit(EXIT_FAILURE);
        }
}

/* The whole file, for before/after comparisons. */
static uint8_t *slurp(int fd, size_t *ret_size) {
        size_t n = (size_t) file_size_of(fd);
        uint8_t *buf = xmalloc(n);

        pread_exact(fd, buf, n, 0);
        *ret_size = n;
        return buf;
}

static char *repeat_char(char c, size_t n) {
        char *s = xmalloc(n + 1);

        memset(s, c, n);
        s[n] = 0;
        return s;
}

/* Re-parses the header and walks the image: must be clean. */
static void expect_clean(int fd, const char *what, uint64_t allocated) {
        Qcow2CheckResult res = {};
        FormatError err = {};
        Qcow2Header h;
        int r;

        r = qcow2_header_read(fd, NULL, &h, &err);
        CHECK_EQ_INT(r, 0);
        if (r < 0) {
                fprintf(stderr, "  %s: %s\n", what, err.reason);
                return;
        }
        r = qcow2_check(fd, &h, NULL, &res, &err);
        CHECK_EQ_INT(r, 0);
        CHECK_EQ_INT(res.corruptions, 0);
        CHECK_EQ_INT(res.leaks, 0);
        CHECK_EQ_INT(res.allocated_clusters, allocated);
        if (r < 0 || res.corruptions || res.leaks) {
                fprintf(stderr, "  %s: r=%d %s\n", what, r, err.reason);
                for (uint64_t i = 0; i < res.n_problems; i++)
                        fprintf(stderr, "    %s\n", res.problems[i].text);
        }
        qcow2_check_result_done(&res);
}

/* ---- qcow2_create ---- */

static void test_create_geometry(void) {
        static const uint64_t sizes[] = { 0, 512, GiB, 16 * TiB };

        for (uint32_t cb = QCOW2_MIN_CLUSTER_BITS; cb <= QCOW2_MAX_CLUSTER_BITS; cb++)
                for (size_t s = 0; s < ELEMENTSOF(sizes); s++) {
                        uint64_t cs = UINT64_C(1) << cb, size = sizes[s], l1_entries;
                        Qcow2CreateParams p = { .size = size, .cluster_bits = cb };
                        FormatError err = {};
                        ExtentMap m = {};
                        Qcow2Header h;
                        int fd = new_file(), r;

                        CHECK(qcow2_l1_entries_for(size, cb, false, &l1_entries));
                        r = qcow2_create(fd, &p, &err);
                        if (l1_entries * 8 > QCOW2_MAX_L1_BYTES) {
                                /* 16 TiB with 512 B and 4 KiB clusters. */
                                CHECK_EQ_INT(r, -E2BIG);
                                CHECK_EQ_INT(err.code, -E2BIG);
                                CHECK_CONTAINS(err.reason, "L1");
                                CHECK_EQ_INT(file_size_of(fd), 0);
                                close(fd);
                                continue;
                        }
                        CHECK_EQ_INT(r, 0);
                        if (r < 0) {
                                fprintf(stderr, "  cluster_bits %" PRIu32 " size %" PRIu64 ": %s\n", cb, size, err.reason);
                                close(fd);
                                continue;
                        }

                        r = qcow2_header_read(fd, NULL, &h, &err);
                        CHECK_EQ_INT(r, 0);
                        if (r < 0) {
                                close(fd);
                                continue;
                        }
                        CHECK_EQ_INT(h.version, 3);
                        CHECK_EQ_INT(h.refcount_order, 4);
                        CHECK_EQ_INT(h.header_length, QCOW2_V3_HEADER_LENGTH);
                        CHECK_EQ_INT(h.size, size);
                        CHECK_EQ_INT(h.cluster_bits, cb);
                        CHECK_EQ_INT(h.cluster_size, cs);
                        CHECK_EQ_INT(h.l1_size, l1_entries);
                        CHECK_EQ_INT(h.crypt_method, 0);
                        CHECK_EQ_INT(h.nb_snapshots, 0);
                        CHECK_EQ_INT(h.incompatible_features, 0);
                        CHECK_EQ_INT(h.compatible_features, 0);
                        CHECK_EQ_INT(h.autoclear_features, 0);
                        CHECK_EQ_INT(h.compression_type, 0);
                        CHECK(!h.has_backing_file);
                        CHECK(!h.has_backing_format);
                        CHECK(!h.has_data_file_name);
                        CHECK_EQ_INT(h.n_unknown_extensions, 0);
                        /* The feature table (392 bytes) only where cluster 0 keeps room for the longest backing
                         * name and format afterwards: from 2 KiB clusters on. */
                        CHECK_EQ_INT(h.has_feature_table, cs >= 2048);
                        CHECK_EQ_INT(h.n_feature_names, cs >= 2048 ? 8 : 0);
                        CHECK_EQ_INT(h.refcount_table_offset, cs);
                        CHECK_EQ_INT(h.refcount_table_clusters, 1);
                        CHECK_EQ_INT(h.l1_table_offset % cs, 0);
                        CHECK(h.l1_table_offset >= 3 * cs);
                        /* Like QEMU: the file ends right after the L1 entries. */
                        CHECK_EQ_INT(h.file_size, h.l1_table_offset + 8 * l1_entries);

                        expect_clean(fd, "new image", 0);

                        CHECK_EQ_INT(qcow2_map(fd, &h, &m, &err), 0);
                        if (size == 0)
                                CHECK_EQ_INT(m.n_extents, 0);
                        else {
                                CHECK_EQ_INT(m.n_extents, 1);
                                if (m.n_extents == 1) {
                                        CHECK_EQ_INT(m.extents[0].start, 0);
                                        CHECK_EQ_INT(m.extents[0].length, size);
                                        CHECK_EQ_INT(m.extents[0].state, EXTENT_UNALLOCATED);
                                }
                        }
                        extent_map_done(&m);
                        close(fd);
                }
}

static void test_create_default_and_cap(void) {
        FormatError err = {};
        Qcow2Header h;
        int fd;

        /* cluster_bits 0 means 64 KiB. */
        fd = new_file();
        CHECK_EQ_INT(qcow2_create(fd, &(Qcow2CreateParams) { .size = GiB }, &err), 0);
        CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
        CHECK_EQ_INT(h.cluster_bits, 16);
        CHECK_EQ_INT(h.l1_size, 2);
        CHECK_EQ_INT(h.l1_table_offset, 0x30000);
        CHECK_EQ_INT(h.file_size, 0x30000 + 16);
        close(fd);

        /* Exactly the default cap is accepted. */
        fd = new_file();
        CHECK_EQ_INT(qcow2_create(fd, &(Qcow2CreateParams) { .size = FORMAT_DEFAULT_MAX_VIRTUAL_SIZE, .cluster_bits = 16 }, &err),
                     0);
        CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
        CHECK_EQ_INT(h.size, FORMAT_DEFAULT_MAX_VIRTUAL_SIZE);
        expect_clean(fd, "64 TiB image", 0);
        close(fd);
}

static void expect_create_refused(const Qcow2CreateParams *p, int code, const char *what) {
        FormatError err = {};
        int fd = new_file(), r;

        r = qcow2_create(fd, p, &err);
        CHECK_EQ_INT(r, code);
        CHECK_EQ_INT(err.code, code);
        CHECK(err.reason[0] != 0);
        /* Refused before anything is written. */
        CHECK_EQ_INT(file_size_of(fd), 0);
        if (r != code)
                fprintf(stderr, "  %s: got %d (%s)\n", what, r, err.reason);
        close(fd);
}

static void test_create_refusals(void) {
        _cleanup_free_ char *long_name = repeat_char('n', 1024), *max_name = repeat_char('m', 1023);
        uint8_t data[4096] = { 1 };

        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .cluster_bits = 8 }, -EINVAL, "cluster_bits 8");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .cluster_bits = 22 }, -EINVAL, "cluster_bits 22");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB + 1 }, -EINVAL, "size not a multiple of 512");
        expect_create_refused(&(Qcow2CreateParams) { .size = 1000 }, -EINVAL, "size 1000");
        expect_create_refused(&(Qcow2CreateParams) { .size = FORMAT_DEFAULT_MAX_VIRTUAL_SIZE + 512 }, -E2BIG,
                              "size above the cap");
        expect_create_refused(&(Qcow2CreateParams) { .size = UINT64_MAX - 511 }, -E2BIG, "huge size");
        expect_create_refused(&(Qcow2CreateParams) { .size = TiB, .cluster_bits = 9 }, -E2BIG, "L1 above 32 MiB");

        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .backing_file = "base.qcow2" }, -EINVAL,
                              "backing file without format");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .backing_format = "qcow2" }, -EINVAL,
                              "backing format without file");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .backing_file = "base\n.qcow2", .backing_format = "qcow2" },
                              -EINVAL, "backing name with a newline");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .backing_file = long_name, .backing_format = "qcow2" },
                              -EINVAL, "backing name of 1024 bytes");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .backing_file = "", .backing_format = "qcow2" }, -EINVAL,
                              "empty backing name");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .backing_file = "b", .backing_format = "qcow2-too-long-x" },
                              -EINVAL, "backing format of 16 bytes");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .data_file_raw = true }, -EINVAL,
                              "data_file_raw without data_file");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .data_file = "d.raw", .data_file_raw = true,
                                                     .backing_file = "b", .backing_format = "raw" },
                              -EINVAL, "data_file_raw with backing");
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .data_file = "d\tx" }, -EINVAL, "data file with a tab");
        /* The longest valid name does not fit into a 512-byte header cluster. */
        expect_create_refused(&(Qcow2CreateParams) { .size = GiB, .cluster_bits = 9, .backing_file = max_name,
                                                     .backing_format = "qcow2" },
                              -E2BIG, "1023-byte name in 512-byte clusters");
        /* Initial data: larger than the image, beyond one L2 table's range, or with a data file. */
        expect_create_refused(&(Qcow2CreateParams) { .size = 2048, .cluster_bits = 9, .initial_data = data,
                                                     .initial_data_size = sizeof(data) },
                              -EINVAL, "initial data larger than the image");
        expect_create_refused(&(Qcow2CreateParams) { .size = MiB, .cluster_bits = 9, .initial_data = data,
                                                     .initial_data_size = 64 * 512 + 1 },
                              -EINVAL, "initial data beyond the first L2 table");
        expect_create_refused(&(Qcow2CreateParams) { .size = MiB, .data_file = "d.raw", .initial_data = data,
                                                     .initial_data_size = sizeof(data) },
                              -EOPNOTSUPP, "initial data with a data file");

        /* The longest valid name fits into 64 KiB clusters and reads back exactly. */
        {
                FormatError err = {};
                Qcow2Header h;
                int fd = new_file();

                CHECK_EQ_INT(qcow2_create(fd, &(Qcow2CreateParams) { .size = GiB, .backing_file = max_name,
                                                                      .backing_format = "qcow2" }, &err), 0);
                CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
                CHECK(h.has_backing_file);
                CHECK_EQ_INT(h.backing_file_size, 1023);
                CHECK(strcmp(h.backing_file, max_name) == 0);
                close(fd);
        }
}

static void test_create_backing_and_data_file(void) {
        static const uint32_t bits[] = { 9, 16, 21 };

        for (size_t i = 0; i < ELEMENTSOF(bits); i++) {
                Qcow2CreateParams p = { .size = GiB, .cluster_bits = bits[i], .backing_file = "../base images/base.qcow2",
                                        .backing_format = "qcow2" };
                FormatError err = {};
                Qcow2Header h;
                int fd = new_file();

                CHECK_EQ_INT(qcow2_create(fd, &p, &err), 0);
                CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
                CHECK(h.has_backing_file);
                CHECK_EQ_INT(h.backing_file_size, strlen(p.backing_file));
                CHECK(strcmp(h.backing_file, p.backing_file) == 0);
                CHECK(h.has_backing_format);
                CHECK(strcmp(h.backing_format, "qcow2") == 0);
                /* The name follows the end marker directly. */
                CHECK_EQ_INT(h.backing_file_offset, h.extensions_end);
                CHECK_EQ_INT(h.incompatible_features, 0);
                expect_clean(fd, "image with backing", 0);
                close(fd);
        }

        {
                Qcow2CreateParams p = { .size = GiB, .data_file = "disk.data" };
                FormatError err = {};
                Qcow2Header h;
                int fd = new_file();

                CHECK_EQ_INT(qcow2_create(fd, &p, &err), 0);
                CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
                CHECK_EQ_INT(h.incompatible_features, QCOW2_INCOMPAT_DATA_FILE);
                CHECK_EQ_INT(h.incompatible_features, UINT64_C(1) << 2);
                CHECK_EQ_INT(h.autoclear_features, 0);
                CHECK(h.has_data_file_name);
                CHECK(strcmp(h.data_file, "disk.data") == 0);
                CHECK(!h.has_backing_file);
                expect_clean(fd, "image with data file", 0);
                close(fd);
        }

        {
                Qcow2CreateParams p = { .size = GiB, .data_file = "disk.data", .data_file_raw = true };
                FormatError err = {};
                Qcow2Header h;
                int fd = new_file();

                CHECK_EQ_INT(qcow2_create(fd, &p, &err), 0);
                CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
                CHECK_EQ_INT(h.incompatible_features, QCOW2_INCOMPAT_DATA_FILE);
                CHECK_EQ_INT(h.autoclear_features, QCOW2_AUTOCLEAR_DATA_FILE_RAW);
                CHECK(strcmp(h.data_file, "disk.data") == 0);
                expect_clean(fd, "image with raw data file", 0);

                /* A raw external data file excludes a backing file: set_backing refuses, nothing changes. */
                {
                        size_t n_before, n_after;
                        _cleanup_free_ uint8_t *before = slurp(fd, &n_before), *after = NULL;

                        err = (FormatError) {};
                        CHECK_EQ_INT(qcow2_set_backing(fd, "b", "raw", &err), -EINVAL);
                        after = slurp(fd, &n_after);
                        CHECK_EQ_INT(n_after, n_before);
                        CHECK(n_after == n_before && memcmp(before, after, n_before) == 0);
                }
                close(fd);
        }

        /* Backing file and data file together. */
        {
                Qcow2CreateParams p = { .size = GiB, .data_file = "disk.data", .backing_file = "base", .backing_format = "raw" };
                FormatError err = {};
                Qcow2Header h;
                int fd = new_file();

                CHECK_EQ_INT(qcow2_create(fd, &p, &err), 0);
                CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
                CHECK(strcmp(h.data_file, "disk.data") == 0);
                CHECK(strcmp(h.backing_file, "base") == 0);
                CHECK(strcmp(h.backing_format, "raw") == 0);
                close(fd);
        }
}

/* ---- qcow2_set_backing ---- */

/*
 * Inserts an unknown extension (magic 0x12345678, 5 bytes "vdisk", non-zero padding) before the end
 * marker, moving the backing name (if any) by the same 16 bytes, and sets autoclear bit 5.
 */
static void craft_unknown_extension(int fd, uint8_t ext[static UNKNOWN_EXT_BYTES]) {
        _cleanup_free_ uint8_t *old = NULL, *buf = NULL;
        FormatError err = {};
        Qcow2Header h;
        uint64_t end_marker;
        size_t area;

        if (qcow2_header_read(fd, NULL, &h, &err) < 0) {
                fprintf(stderr, "craft: %s\n", err.reason);
                exit(EXIT_FAILURE);
        }
        area = (size_t) MIN(h.cluster_size, h.file_size);
        old = xmalloc(area);
        buf = xmalloc(area);
        pread_exact(fd, old, area, 0);
        memcpy(buf, old, area);

        be32_write(ext, UNKNOWN_EXT_MAGIC);
        be32_write(ext + 4, 5);
        memcpy(ext + 8, "vdisk", 5);
        memset(ext + 13, 0xa5, 3);

        end_marker = h.extensions_end - 8;
        if (h.has_backing_file) {
                if (h.backing_file_offset + h.backing_file_size + UNKNOWN_EXT_BYTES > area) {
                        fprintf(stderr, "craft: no room\n");
                        exit(EXIT_FAILURE);
                }
                memset(buf + h.backing_file_offset, 0, h.backing_file_size);
                memcpy(buf + h.backing_file_offset + UNKNOWN_EXT_BYTES, old + h.backing_file_offset, h.backing_file_size);
                be64_write(buf + 8, h.backing_file_offset + UNKNOWN_EXT_BYTES);
        } else if (h.extensions_end + UNKNOWN_EXT_BYTES > area) {
                fprintf(stderr, "craft: no room\n");
                exit(EXIT_FAILURE);
        }
        memcpy(buf + end_marker, ext, UNKNOWN_EXT_BYTES);
        memset(buf + end_marker + UNKNOWN_EXT_BYTES, 0, 8);
        be64_write(buf + 88, be64_read(buf + 88) | (UINT64_C(1) << 5));
        pwrite_exact(fd, buf, area, 0);

        if (qcow2_header_read(fd, NULL, &h, &err) < 0) {
                fprintf(stderr, "craft: crafted header does not parse: %s\n", err.reason);
                exit(EXIT_FAILURE);
        }
}

/* Finds extension `magic` in cluster 0; returns its offset or 0. */
static uint64_t find_extension(const uint8_t *buf, size_t area, uint64_t header_length, uint32_t magic) {
        uint64_t off = header_length;

        while (off + 8 <= area) {
                uint32_t m = be32_read(buf + off), len = be32_read(buf + off + 4);

                if (m == QCOW2_EXT_END)
                        return 0;
                if (m == magic)
                        return off;
                off += 8 + (((uint64_t) len + 7) & ~UINT64_C(7));
        }
        return 0;
}

/* Bytes of the fixed header that set_backing must not touch: all but 8..19 (backing) and 88..95 (autoclear). */
static bool fixed_header_unchanged(const uint8_t *a, const uint8_t *b) {
        return memcmp(a, b, 8) == 0 && memcmp(a + 20, b + 20, 68) == 0 &&
               memcmp(a + 96, b + 96, QCOW2_V3_HEADER_LENGTH - 96) == 0;
}

/* After each set_backing: fields, the unknown extension, autoclear, no stale bytes, clean check. */
static void verify_after_set(int fd, const char *backing, const char *format, const uint8_t *orig_hdr,
                             const uint8_t ext[static UNKNOWN_EXT_BYTES], const char *what) {
        _cleanup_free_ uint8_t *buf = NULL;
        FormatError err = {};
        Qcow2Header h;
        uint64_t off, used;
        size_t area;
        bool zero = true;
        int r;

        r = qcow2_header_read(fd, NULL, &h, &err);
        CHECK_EQ_INT(r, 0);
        if (r < 0) {
                fprintf(stderr, "  %s: %s\n", what, err.reason);
                return;
        }
        CHECK_EQ_INT(h.has_backing_file, !!backing);
        CHECK_EQ_INT(h.has_backing_format, !!format);
        if (backing) {
                CHECK(strcmp(h.backing_file, backing) == 0);
                CHECK_EQ_INT(h.backing_file_size, strlen(backing));
        } else {
                CHECK_EQ_INT(h.backing_file_offset, 0);
                CHECK_EQ_INT(h.backing_file_size, 0);
        }
        if (format)
                CHECK(strcmp(h.backing_format, format) == 0);
        CHECK_EQ_INT(h.autoclear_features & (UINT64_C(1) << 5), 0);
        CHECK_EQ_INT(h.autoclear_features & ~QCOW2_AUTOCLEAR_MASK, 0);
        CHECK_EQ_INT(h.n_unknown_extensions, 1);
        CHECK(h.has_feature_table);
        CHECK_EQ_INT(h.n_feature_names, 8);

        area = (size_t) MIN(h.cluster_size, h.file_size);
        buf = xmalloc(area);
        pread_exact(fd, buf, area, 0);
        CHECK(fixed_header_unchanged(buf, orig_hdr));

        /* The unknown extension, byte for byte including its padding. */
        off = find_extension(buf, area, h.header_length, UNKNOWN_EXT_MAGIC);
        CHECK(off != 0);
        if (off != 0)
                CHECK(memcmp(buf + off, ext, UNKNOWN_EXT_BYTES) == 0);

        /* Nothing after the end of the name (or the end marker): no stale bytes of an older, longer name. */
        used = h.has_backing_file ? h.backing_file_offset + h.backing_file_size : h.extensions_end;
        for (uint64_t i = used; i < area; i++)
                if (buf[i] != 0) {
                        zero = false;
                        fprintf(stderr, "  %s: stale byte 0x%02x at %" PRIu64 "\n", what, buf[i], i);
                        break;
                }
        CHECK(zero);

        expect_clean(fd, what, 0);
}

static void test_set_backing(bool created_with_backing) {
        _cleanup_free_ char *long_name = repeat_char('L', 1000);
        uint8_t ext[UNKNOWN_EXT_BYTES], orig_hdr[QCOW2_V3_HEADER_LENGTH];
        Qcow2CreateParams p = { .size = GiB, .cluster_bits = 16 };
        FormatError err = {};
        Qcow2Header h;
        int fd = new_file();

        if (created_with_backing) {
                p.backing_file = "A";
                p.backing_format = "qcow2";
        }
        CHECK_EQ_INT(qcow2_create(fd, &p, &err), 0);
        craft_unknown_extension(fd, ext);
        CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
        CHECK_EQ_INT(h.n_unknown_extensions, 1);
        CHECK(h.autoclear_features & (UINT64_C(1) << 5));
        CHECK_EQ_INT(h.has_backing_file, created_with_backing);
        if (created_with_backing)
                CHECK(strcmp(h.backing_file, "A") == 0);
        pread_exact(fd, orig_hdr, sizeof(orig_hdr), 0);

        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, "B", "raw", &err), 0);
        verify_after_set(fd, "B", "raw", orig_hdr, ext, "set B/raw");

        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, long_name, "qcow2", &err), 0);
        verify_after_set(fd, long_name, "qcow2", orig_hdr, ext, "set long name");

        /* Shorter again: the tail of the long name must be zeroed. */
        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, "C", "qcow2", &err), 0);
        verify_after_set(fd, "C", "qcow2", orig_hdr, ext, "set C after long name");

        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, long_name, "raw", &err), 0);
        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, NULL, NULL, &err), 0);
        verify_after_set(fd, NULL, NULL, orig_hdr, ext, "remove after long name");

        /* Removing again is a no-op that still succeeds. */
        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, NULL, NULL, &err), 0);
        verify_after_set(fd, NULL, NULL, orig_hdr, ext, "remove twice");

        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, "D", "raw", &err), 0);
        verify_after_set(fd, "D", "raw", orig_hdr, ext, "set D after removal");

        /* Invalid arguments: refused, nothing written. */
        {
                size_t n_before, n_after;
                _cleanup_free_ uint8_t *before = slurp(fd, &n_before), *after = NULL;
                _cleanup_free_ char *too_long = repeat_char('x', 1024);

                err = (FormatError) {};
                CHECK_EQ_INT(qcow2_set_backing(fd, "E", NULL, &err), -EINVAL);
                err = (FormatError) {};
                CHECK_EQ_INT(qcow2_set_backing(fd, NULL, "raw", &err), -EINVAL);
                err = (FormatError) {};
                CHECK_EQ_INT(qcow2_set_backing(fd, "E\nF", "raw", &err), -EINVAL);
                err = (FormatError) {};
                CHECK_EQ_INT(qcow2_set_backing(fd, too_long, "raw", &err), -EINVAL);
                after = slurp(fd, &n_after);
                CHECK_EQ_INT(n_after, n_before);
                CHECK(n_after == n_before && memcmp(before, after, n_before) == 0);
        }
        close(fd);
}

static void expect_set_backing_refused(int fd, const char *backing, const char *format, int code, const char *what) {
        size_t n_before, n_after;
        _cleanup_free_ uint8_t *before = slurp(fd, &n_before), *after = NULL;
        FormatError err = {};
        int r;

        r = qcow2_set_backing(fd, backing, format, &err);
        CHECK_EQ_INT(r, code);
        CHECK_EQ_INT(err.code, code);
        if (r != code)
                fprintf(stderr, "  %s: got %d (%s)\n", what, r, err.reason);
        after = slurp(fd, &n_after);
        CHECK_EQ_INT(n_after, n_before);
        CHECK(n_after == n_before && memcmp(before, after, n_before) == 0);
}

static void test_set_backing_too_big(void) {
        _cleanup_free_ char *name400 = repeat_char('q', 400), *name377 = repeat_char('s', 377),
                            *name376 = repeat_char('t', 376), *name300 = repeat_char('r', 300);
        FormatError err = {};
        Qcow2Header h;
        int fd;

        /*
         * 512-byte clusters with a backing file: no feature table (it does not fit), so 112 + 16
         * (backing format) + 8 (end) = 136 bytes are used before the name; 400 bytes do not fit.
         */
        fd = new_file();
        CHECK_EQ_INT(qcow2_create(fd, &(Qcow2CreateParams) { .size = GiB, .cluster_bits = 9, .backing_file = "a",
                                                            .backing_format = "qcow2" }, &err), 0);
        CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
        CHECK(!h.has_feature_table);
        expect_set_backing_refused(fd, name400, "qcow2", -E2BIG, "400-byte name in a 512-byte cluster");
        expect_set_backing_refused(fd, name377, "qcow2", -E2BIG, "377-byte name in a 512-byte cluster");
        /* Exactly 376 bytes fill the cluster. */
        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, name376, "qcow2", &err), 0);
        CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
        CHECK_EQ_INT(h.backing_file_offset, 136);
        CHECK(strcmp(h.backing_file, name376) == 0);
        expect_clean(fd, "376-byte name in a 512-byte cluster", 0);
        /* Shorter: the rest of the cluster is zeroed. */
        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, name300, "qcow2", &err), 0);
        CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
        CHECK(strcmp(h.backing_file, name300) == 0);
        {
                uint8_t c0[512], zero[512] = {};

                pread_exact(fd, c0, sizeof(c0), 0);
                CHECK(memcmp(c0 + 136 + 300, zero, 512 - 136 - 300) == 0);
        }
        expect_clean(fd, "300-byte name in a 512-byte cluster", 0);
        close(fd);

        /* 512-byte clusters without backing: no feature table, so a backing file can be added later. */
        fd = new_file();
        CHECK_EQ_INT(qcow2_create(fd, &(Qcow2CreateParams) { .size = GiB, .cluster_bits = 9 }, &err), 0);
        CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
        CHECK(!h.has_feature_table);
        CHECK_EQ_INT(h.extensions_end, 120);
        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, "b", "raw", &err), 0);
        CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
        CHECK(h.has_backing_file && strcmp(h.backing_file, "b") == 0);
        expect_clean(fd, "512-byte cluster after adding a backing file", 0);
        /* Removing the (absent) backing file still fits. */
        err = (FormatError) {};
        CHECK_EQ_INT(qcow2_set_backing(fd, NULL, NULL, &err), 0);
        expect_clean(fd, "512-byte cluster after removal", 0);
        close(fd);
}

/* ---- swap ---- */

static void test_swap_signature(void) {
        static const uint8_t uuid[16] = { 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0,
                                          0x0f, 0xed, 0xcb, 0xa9, 0x87, 0x65, 0x43, 0x21 };
        uint8_t page[SWAP_PAGE_SIZE], zero[SWAP_PAGE_SIZE] = {};

        memset(page, 0xee, sizeof(page));
        CHECK_EQ_INT(swap_signature_build(GiB, uuid, page), 0);
        CHECK(memcmp(page + 4086, "SWAPSPACE2", 10) == 0);
        CHECK_EQ_INT(le32_read(page + 1024), 1);
        CHECK_EQ_INT(page[1024], 1); /* little-endian */
        CHECK_EQ_INT(le32_read(page + 1028), GiB / 4096 - 1);
        CHECK_EQ_INT(le32_read(page + 1032), 0);
        CHECK(memcmp(page + 1036, uuid, 16) == 0);
        /* Everything else is zero: the boot block, the label, the rest. */
        CHECK(memcmp(page, zero, 1024) == 0);
        CHECK(memcmp(page + 1052, zero, 4086 - 1052) == 0);

        /* Not a whole number of pages: the partial page is not counted. */
        CHECK_EQ_INT(swap_signature_build(10 * 4096 + 512, uuid, page), 0);
        CHECK_EQ_INT(le32_read(page + 1028), 9);

        /* The minimum: 10 pages. */
        CHECK_EQ_INT(swap_signature_build(SWAP_MIN_PAGES * 4096, uuid, page), 0);
        CHECK_EQ_INT(le32_read(page + 1028), SWAP_MIN_PAGES - 1);

        /* Too small: 9 pages (and 10 pages less one byte). */
        memset(page, 0xee, sizeof(page));
        CHECK_EQ_INT(swap_signature_build(9 * 4096, uuid, page), -EINVAL);
        CHECK_EQ_INT(swap_signature_build(10 * 4096 - 1, uuid, page), -EINVAL);
        CHECK_EQ_INT(swap_signature_build(0, uuid, page), -EINVAL);
        /* A refused build leaves the page alone. */
        CHECK_EQ_INT(page[0], 0xee);
}

static void test_raw_create_swap(void) {
        static const uint8_t uuid[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16 };
        uint8_t page[SWAP_PAGE_SIZE], back[SWAP_PAGE_SIZE];
        const uint64_t size = 64 * MiB;
        FormatError err = {};
        ExtentMap m = {};
        int fd;

        CHECK_EQ_INT(swap_signature_build(size, uuid, page), 0);

        fd = new_file();
        CHECK_EQ_INT(raw_create(fd, size, page, sizeof(page), &err), 0);
        CHECK_EQ_INT(file_size_of(fd), size);
        pread_exact(fd, back, sizeof(back), 0);
        CHECK(memcmp(back, page, sizeof(page)) == 0);
        /* The page is data; the rest of the file is sparse (or data without hole reporting). */
        CHECK_EQ_INT(raw_map(fd, size, &m), 0);
        CHECK(m.n_extents >= 1);
        if (m.n_extents >= 1) {
                CHECK_EQ_INT(m.extents[0].start, 0);
                CHECK_EQ_INT(m.extents[0].state, EXTENT_DATA);
                CHECK(m.extents[0].length >= sizeof(page));
                CHECK_EQ_INT(m.extents[m.n_extents - 1].start + m.extents[m.n_extents - 1].length, size);
        }
        extent_map_done(&m);
        close(fd);

        /* Refusals, before the file is touched. */
        fd = new_file();
        err = (FormatError) {};
        CHECK_EQ_INT(raw_create(fd, size + 1, NULL, 0, &err), -EINVAL);
        err = (FormatError) {};
        CHECK_EQ_INT(raw_create(fd, FORMAT_DEFAULT_MAX_VIRTUAL_SIZE + 512, NULL, 0, &err), -E2BIG);
        err = (FormatError) {};
        CHECK_EQ_INT(raw_create(fd, 2048, page, sizeof(page), &err), -EINVAL);
        CHECK_EQ_INT(file_size_of(fd), 0);
        /* No initial data: only the size. */
        CHECK_EQ_INT(raw_create(fd, 3 * MiB, NULL, 0, &err), 0);
        CHECK_EQ_INT(file_size_of(fd), 3 * MiB);
        close(fd);
}

static void test_qcow2_create_swap(void) {
        static const uint8_t uuid[16] = { 0xaa, 0xbb, 0xcc, 0xdd, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 };
        static const uint32_t bits[] = { 9, 16 };
        const uint64_t size = 256 * MiB;
        uint8_t page[SWAP_PAGE_SIZE];

        CHECK_EQ_INT(swap_signature_build(size, uuid, page), 0);

        for (size_t i = 0; i < ELEMENTSOF(bits); i++) {
                uint64_t cs = UINT64_C(1) << bits[i], covered = 0, data_clusters = (sizeof(page) + cs - 1) / cs;
                Qcow2CreateParams p = { .size = size, .cluster_bits = bits[i], .initial_data = page,
                                        .initial_data_size = sizeof(page) };
                FormatError err = {};
                ExtentMap m = {};
                Qcow2Header h;
                int fd = new_file(), r;

                CHECK_EQ_INT(qcow2_create(fd, &p, &err), 0);
                r = qcow2_header_read(fd, NULL, &h, &err);
                CHECK_EQ_INT(r, 0);
                if (r < 0) {
                        close(fd);
                        continue;
                }
                CHECK_EQ_INT(h.size, size);

                CHECK_EQ_INT(qcow2_map(fd, &h, &m, &err), 0);
                CHECK(m.n_extents >= 2);
                /* Data extents from guest offset 0 cover the page; reading their host bytes gives it back. */
                for (size_t k = 0; k < m.n_extents && covered < sizeof(page); k++) {
                        const Extent *e = &m.extents[k];
                        uint64_t n;
                        uint8_t *buf;

                        CHECK_EQ_INT(e->start, covered);
                        CHECK_EQ_INT(e->state, EXTENT_DATA);
                        CHECK(e->has_host_offset);
                        if (e->state != EXTENT_DATA || !e->has_host_offset)
                                break;
                        CHECK_EQ_INT(e->host_offset % cs, 0);
                        CHECK(e->host_offset >= 4 * cs);
                        n = MIN(e->length, sizeof(page) - covered);
                        buf = xmalloc(n);
                        pread_exact(fd, buf, n, e->host_offset);
                        CHECK(memcmp(buf, page + covered, n) == 0);
                        free(buf);
                        covered += n;
                }
                CHECK_EQ_INT(covered, sizeof(page));
                /* Data clusters are contiguous: one data extent of whole clusters, then unallocated. */
                CHECK_EQ_INT(m.n_extents, 2);
                if (m.n_extents == 2) {
                        CHECK_EQ_INT(m.extents[0].length, data_clusters * cs);
                        CHECK_EQ_INT(m.extents[1].state, EXTENT_UNALLOCATED);
                        CHECK_EQ_INT(m.extents[1].start + m.extents[1].length, size);
                }
                extent_map_done(&m);
                expect_clean(fd, "swap image", data_clusters);
                close(fd);
        }
}

int main(void) {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-qcow2-write-XXXXXX");
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return EXIT_FAILURE;
        }

        test_create_geometry();
        test_create_default_and_cap();
        test_create_refusals();
        test_create_backing_and_data_file();
        test_set_backing(true);
        test_set_backing(false);
        test_set_backing_too_big();
        test_swap_signature();
        test_raw_create_swap();
        test_qcow2_create_swap();

        if (rmdir(tmpdir) < 0)
                perror("rmdir");

        TEST_MAIN_END();
}
