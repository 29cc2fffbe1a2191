/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * qcow2_check() (the metadata walk) and qcow2_map() (the allocation map), on images written by
 * qcow2_create() and then corrupted in place with pwrite.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "bytes.h"
#include "qcow2.h"
#include "test-util.h"

static char tmpdir[64];
static unsigned file_counter;

/* An image made by qcow2_create(), with the locations of its structures. */
typedef struct Img {
        int fd;
        uint32_t cluster_bits;
        uint64_t cs;
        uint64_t size;
        uint64_t n_data; /* data clusters written by initial_data */
        uint64_t rt_off, rb_off, l1_off, l2_off, data_off;
        uint64_t file_size;
        uint64_t nb_clusters;
        uint8_t *data; /* the initial data */
        size_t data_size;
} Img;

/* A new empty file in the temporary directory; unlinked at once, the descriptor keeps it alive. */
static int new_file(void) {
        char path[PATH_MAX];
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

static uint64_t get_be64(int fd, uint64_t off) {
        uint8_t b[8];

        pread_exact(fd, b, sizeof(b), off);
        return be64_read(b);
}

static void put_be64(int fd, uint64_t off, uint64_t v) {
        uint8_t b[8];

        be64_write(b, v);
        pwrite_exact(fd, b, sizeof(b), off);
}

static void put_be32(int fd, uint64_t off, uint32_t v) {
        uint8_t b[4];

        be32_write(b, v);
        pwrite_exact(fd, b, sizeof(b), off);
}

static void put_be16(int fd, uint64_t off, uint16_t v) {
        uint8_t b[2];

        be16_write(b, v);
        pwrite_exact(fd, b, sizeof(b), off);
}

static void grow_file(Img *img, uint64_t clusters) {
        if (ftruncate(img->fd, (off_t) (img->file_size + clusters * img->cs)) < 0) {
                perror("ftruncate");
                exit(EXIT_FAILURE);
        }
        img->file_size += clusters * img->cs;
        img->nb_clusters += clusters;
}

/*
 * Writes at `off` a raw deflate stream (4 KiB window, as QEMU writes them) of one cluster whose first
 * `random` bytes are pseudo-random and the rest `fill`; returns the stream's length.
 */
static size_t put_deflate(int fd, uint64_t cs, uint64_t off, size_t random, uint8_t fill) {
        uint8_t *in = malloc(cs), *out = malloc(2 * cs);
        uint32_t x = 12345;
        z_stream z = {};
        size_t n;

        if (!in || !out || deflateInit2(&z, 9, Z_DEFLATED, -12, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
                fprintf(stderr, "deflate setup failed\n");
                exit(EXIT_FAILURE);
        }
        memset(in, fill, cs);
        for (size_t i = 0; i < random && i < cs; i++) {
                x = x * 1103515245 + 12345;
                in[i] = (uint8_t) (x >> 16);
        }
        z.next_in = in;
        z.avail_in = (uInt) cs;
        z.next_out = out;
        z.avail_out = (uInt) (2 * cs);
        if (deflate(&z, Z_FINISH) != Z_STREAM_END) {
                fprintf(stderr, "deflate failed\n");
                exit(EXIT_FAILURE);
        }
        n = 2 * cs - z.avail_out;
        (void) deflateEnd(&z);
        pwrite_exact(fd, out, n, off);
        free(in);
        free(out);
        return n;
}

/* Entry addresses; the writer uses 16-bit refcounts and a single refcount block. */
static uint64_t l1e_addr(const Img *img, uint64_t i) {
        return img->l1_off + i * 8;
}

static uint64_t l2e_addr(const Img *img, uint64_t i) {
        return img->l2_off + i * 8;
}

static uint64_t rte_addr(const Img *img, uint64_t i) {
        return img->rt_off + i * 8;
}

static void set_refcount(const Img *img, uint64_t host_offset, uint16_t v) {
        put_be16(img->fd, img->rb_off + (host_offset / img->cs) * 2, v);
}

static void img_make(Img *img, uint32_t cluster_bits, uint64_t size, uint64_t n_data) {
        Qcow2CreateParams p = { .size = size, .cluster_bits = cluster_bits };
        FormatError err = {};
        Qcow2Header h;
        int r;

        *img = (Img) {
                .fd = new_file(),
                .cluster_bits = cluster_bits,
                .cs = UINT64_C(1) << cluster_bits,
                .size = size,
                .n_data = n_data,
        };
        if (n_data > 0) {
                /* Not a whole number of clusters: the last data cluster is partly initial data. */
                img->data_size = (size_t) (n_data * img->cs - img->cs / 4);
                img->data = malloc(img->data_size);
                if (!img->data)
                        exit(EXIT_FAILURE);
                for (size_t i = 0; i < img->data_size; i++)
                        img->data[i] = (uint8_t) (i * 7 + 1);
                p.initial_data = img->data;
                p.initial_data_size = img->data_size;
        }

        r = qcow2_create(img->fd, &p, &err);
        if (r < 0) {
                fprintf(stderr, "qcow2_create(cluster_bits=%" PRIu32 ", size=%" PRIu64 "): %s\n", cluster_bits, size,
                        err.reason);
                exit(EXIT_FAILURE);
        }
        r = qcow2_header_read(img->fd, NULL, &h, &err);
        if (r < 0) {
                fprintf(stderr, "qcow2_header_read: %s\n", err.reason);
                exit(EXIT_FAILURE);
        }

        img->rt_off = h.refcount_table_offset;
        img->rb_off = get_be64(img->fd, img->rt_off) & QCOW2_REFT_OFFSET_MASK;
        img->l1_off = h.l1_table_offset;
        img->file_size = h.file_size;
        img->nb_clusters = (h.file_size + img->cs - 1) / img->cs;
        if (n_data > 0) {
                img->l2_off = get_be64(img->fd, l1e_addr(img, 0)) & QCOW2_L1E_OFFSET_MASK;
                img->data_off = get_be64(img->fd, l2e_addr(img, 0)) & QCOW2_L2E_OFFSET_MASK;
        }
}

static void img_done(Img *img) {
        if (img->fd >= 0)
                close(img->fd);
        free(img->data);
        *img = (Img) { .fd = -1 };
}

/* Re-reads the header (the test may have patched it) and walks the image. */
static int img_check(const Img *img, const Qcow2Limits *limits, Qcow2CheckResult *res, FormatError *err) {
        Qcow2Header h;
        int r;

        *res = (Qcow2CheckResult) {};
        r = qcow2_header_read(img->fd, NULL, &h, err);
        if (r < 0) {
                fprintf(stderr, "header no longer parses: %s\n", err->reason);
                return r;
        }
        return qcow2_check(img->fd, &h, limits, res, err);
}

static int img_map(const Img *img, ExtentMap *m, FormatError *err) {
        Qcow2Header h;
        int r;

        *m = (ExtentMap) {};
        r = qcow2_header_read(img->fd, NULL, &h, err);
        if (r < 0)
                return r;
        return qcow2_map(img->fd, &h, m, err);
}

static uint64_t count_kind(const Qcow2CheckResult *res, Qcow2ProblemKind kind) {
        uint64_t n = 0;

        for (uint64_t i = 0; i < res->n_problems; i++)
                if (res->problems[i].kind == kind)
                        n++;
        return n;
}

static bool has_problem(const Qcow2CheckResult *res, Qcow2ProblemKind kind, uint64_t offset) {
        for (uint64_t i = 0; i < res->n_problems; i++)
                if (res->problems[i].kind == kind && res->problems[i].offset == offset)
                        return true;
        return false;
}

static void dump_problems(const char *what, const Qcow2CheckResult *res) {
        fprintf(stderr, "  %s: corruptions=%" PRIu64 " leaks=%" PRIu64 "\n", what, res->corruptions, res->leaks);
        for (uint64_t i = 0; i < res->n_problems; i++)
                fprintf(stderr, "    %s @0x%" PRIx64 ": %s\n", qcow2_problem_kind_to_string(res->problems[i].kind),
                        res->problems[i].offset, res->problems[i].text);
}

/*
 * Checks the image and compares the counters; `kind` at `offset` must be among the problems.
 * Every problem is stored in detail here (far below QCOW2_CHECK_MAX_PROBLEMS), so n_problems must
 * equal corruptions + leaks except where several leaks past the end share one record.
 */
static void expect_problems(const Img *img, const char *what, Qcow2ProblemKind kind, uint64_t offset,
                            uint64_t corruptions, uint64_t leaks) {
        Qcow2CheckResult res;
        FormatError err = {};
        int r;

        r = img_check(img, NULL, &res, &err);
        CHECK_EQ_INT(r, 0);
        if (r < 0) {
                fprintf(stderr, "  %s (cluster_bits %" PRIu32 "): %s\n", what, img->cluster_bits, err.reason);
                return;
        }
        CHECK(has_problem(&res, kind, offset));
        CHECK_EQ_INT(res.corruptions, corruptions);
        CHECK_EQ_INT(res.leaks, leaks);
        CHECK_EQ_INT(res.n_problems, corruptions + leaks);
        CHECK_EQ_INT(err.code, 0);
        if (!has_problem(&res, kind, offset) || res.corruptions != corruptions || res.leaks != leaks)
                dump_problems(what, &res);
        qcow2_check_result_done(&res);
}

static void expect_clean_allocated(const Img *img, const char *what, uint64_t allocated) {
        Qcow2CheckResult res;
        FormatError err = {};
        int r;

        r = img_check(img, NULL, &res, &err);
        CHECK_EQ_INT(r, 0);
        if (r < 0) {
                fprintf(stderr, "  %s: %s\n", what, err.reason);
                return;
        }
        CHECK_EQ_INT(res.corruptions, 0);
        CHECK_EQ_INT(res.leaks, 0);
        CHECK_EQ_INT(res.n_problems, 0);
        CHECK_EQ_INT(res.host_clusters, img->nb_clusters);
        CHECK_EQ_INT(res.allocated_clusters, allocated);
        CHECK_EQ_INT(res.compressed_clusters, 0);
        CHECK_EQ_INT(res.l2_tables_read, img->n_data > 0 ? 1 : 0);
        if (res.corruptions || res.leaks)
                dump_problems(what, &res);
        qcow2_check_result_done(&res);
}

static void expect_clean(const Img *img, const char *what) {
        expect_clean_allocated(img, what, img->n_data);
}

/* ---- clean images ---- */

static void test_clean_images(void) {
        static const uint32_t bits[] = { 9, 12, 16, 21 };

        for (size_t i = 0; i < ELEMENTSOF(bits); i++) {
                Img img;

                /* Without data: header, refcount table and block, L1. */
                img_make(&img, bits[i], UINT64_C(64) << 20, 0);
                CHECK_EQ_INT(img.rt_off, img.cs);
                CHECK_EQ_INT(img.rb_off, 2 * img.cs);
                expect_clean(&img, "fresh image");
                img_done(&img);

                /* With one and with three data clusters: one L2 table plus the data. */
                for (uint64_t n = 1; n <= 3; n += 2) {
                        uint8_t *buf;

                        img_make(&img, bits[i], UINT64_C(64) << 20, n);
                        CHECK(img.l2_off > img.l1_off);
                        CHECK_EQ_INT(img.l2_off % img.cs, 0);
                        CHECK_EQ_INT(img.data_off, img.l2_off + img.cs);
                        CHECK_EQ_INT(img.file_size, img.data_off + n * img.cs);
                        /* Every data L2 entry carries COPIED and points at consecutive clusters. */
                        for (uint64_t k = 0; k < n; k++)
                                CHECK_EQ_INT(get_be64(img.fd, l2e_addr(&img, k)),
                                             (img.data_off + k * img.cs) | QCOW2_OFLAG_COPIED);
                        CHECK_EQ_INT(get_be64(img.fd, l2e_addr(&img, n)), 0);
                        buf = malloc(img.data_size);
                        if (!buf)
                                exit(EXIT_FAILURE);
                        pread_exact(img.fd, buf, img.data_size, img.data_off);
                        CHECK(memcmp(buf, img.data, img.data_size) == 0);
                        free(buf);
                        expect_clean(&img, "image with initial data");
                        img_done(&img);
                }
        }
}

/* ---- corruptions ---- */

/* The standard fixture: 4 MiB, two data clusters (L2 and data exist, the rest is unallocated). */
#define FIXTURE_SIZE (UINT64_C(4) << 20)
#define FIXTURE_DATA 2U

static void test_l1_corruptions(uint32_t cb) {
        Img img;
        uint64_t l1e;

        /* Reserved bit 0 in the L1 entry: the L2 table is not followed, so it and the data leak. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        l1e = get_be64(img.fd, l1e_addr(&img, 0));
        put_be64(img.fd, l1e_addr(&img, 0), l1e | 1);
        expect_problems(&img, "L1 reserved bit 0", QCOW2_PROBLEM_RESERVED_BITS, l1e_addr(&img, 0), 1, 1 + FIXTURE_DATA);
        img_done(&img);

        /* Reserved bit 56. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, l1e_addr(&img, 0), l1e | (UINT64_C(1) << 56));
        expect_problems(&img, "L1 reserved bit 56", QCOW2_PROBLEM_RESERVED_BITS, l1e_addr(&img, 0), 1, 1 + FIXTURE_DATA);
        img_done(&img);

        /* COPIED without an L2 table in an unused L1 entry. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        if (FIXTURE_SIZE > (img.cs / 8) * img.cs) {
                put_be64(img.fd, l1e_addr(&img, 1), QCOW2_OFLAG_COPIED);
                expect_problems(&img, "L1 COPIED without table", QCOW2_PROBLEM_INVALID_ENTRY, l1e_addr(&img, 1), 1, 0);
        }
        img_done(&img);

        /* Misaligned L2 table (only expressible with clusters above 512 bytes). */
        if (cb > 9) {
                img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
                put_be64(img.fd, l1e_addr(&img, 0), (img.l2_off + 512) | QCOW2_OFLAG_COPIED);
                expect_problems(&img, "misaligned L2", QCOW2_PROBLEM_MISALIGNED, img.l2_off + 512, 1, 1 + FIXTURE_DATA);
                img_done(&img);
        }

        /* L2 table past the end of the file. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, l1e_addr(&img, 0), (img.file_size + 16 * img.cs) | QCOW2_OFLAG_COPIED);
        expect_problems(&img, "L2 outside the file", QCOW2_PROBLEM_OUTSIDE_FILE, img.file_size + 16 * img.cs, 1,
                        1 + FIXTURE_DATA);
        img_done(&img);

        /*
         * L2 table on top of the refcount table. The refcount table is then also read as an L2
         * table: its entry 0 (the refcount block's offset, without COPIED) is a data cluster on top
         * of the refcount block. Corruptions: overlap at the refcount table and at the refcount
         * block, COPIED clear on a cluster with refcount 1, and two refcounts of 1 for two
         * references each. The real L2 table and data are no longer referenced: leaks.
         */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, l1e_addr(&img, 0), img.rt_off | QCOW2_OFLAG_COPIED);
        expect_problems(&img, "L2 over refcount table", QCOW2_PROBLEM_OVERLAP, img.rt_off, 5, 1 + FIXTURE_DATA);
        {
                Qcow2CheckResult res;
                FormatError err = {};

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK(has_problem(&res, QCOW2_PROBLEM_REFCOUNT_MISMATCH, img.rt_off));
                CHECK(has_problem(&res, QCOW2_PROBLEM_OVERLAP, img.rb_off));
                CHECK(has_problem(&res, QCOW2_PROBLEM_REFCOUNT_MISMATCH, img.rb_off));
                CHECK(has_problem(&res, QCOW2_PROBLEM_COPIED_FLAG, img.rb_off));
                CHECK(has_problem(&res, QCOW2_PROBLEM_LEAK, img.l2_off));
                CHECK(has_problem(&res, QCOW2_PROBLEM_LEAK, img.data_off));
                qcow2_check_result_done(&res);
        }
        img_done(&img);
}

static void test_l2_corruptions(uint32_t cb) {
        Img img;
        uint64_t l2e;

        /* Data cluster past the end of the file; the real data cluster 0 leaks. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, l2e_addr(&img, 0), (img.file_size + 4 * img.cs) | QCOW2_OFLAG_COPIED);
        expect_problems(&img, "data past EOF", QCOW2_PROBLEM_OUTSIDE_FILE, img.file_size + 4 * img.cs, 1, 1);
        img_done(&img);

        /*
         * Data cluster on top of the L1 table: an overlap and, the L1 cluster now having two
         * references, a refcount mismatch; the real data cluster 0 leaks. (The header cluster
         * cannot be named: offset 0 means "unallocated".)
         */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, l2e_addr(&img, 0), img.l1_off | QCOW2_OFLAG_COPIED);
        expect_problems(&img, "data over L1", QCOW2_PROBLEM_OVERLAP, img.l1_off, 2, 1);
        {
                Qcow2CheckResult res;
                FormatError err = {};

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK(has_problem(&res, QCOW2_PROBLEM_REFCOUNT_MISMATCH, img.l1_off));
                CHECK(has_problem(&res, QCOW2_PROBLEM_LEAK, img.data_off));
                qcow2_check_result_done(&res);
        }
        img_done(&img);

        /* Reserved bit 1 and reserved bit 56 of a standard L2 entry. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        l2e = get_be64(img.fd, l2e_addr(&img, 0));
        put_be64(img.fd, l2e_addr(&img, 0), l2e | 2);
        expect_problems(&img, "L2 reserved bit 1", QCOW2_PROBLEM_RESERVED_BITS, l2e_addr(&img, 0), 1, 1);
        put_be64(img.fd, l2e_addr(&img, 0), l2e | (UINT64_C(1) << 56));
        expect_problems(&img, "L2 reserved bit 56", QCOW2_PROBLEM_RESERVED_BITS, l2e_addr(&img, 0), 1, 1);
        img_done(&img);

        /* Compressed entry with COPIED. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED | img.data_off);
        expect_problems(&img, "compressed with COPIED", QCOW2_PROBLEM_INVALID_ENTRY, l2e_addr(&img, 0), 1, 1);
        img_done(&img);

        /*
         * A compressed stream of one sector starting 100 bytes before the end of data cluster 0:
         * its size is 512 minus the offset's sector remainder, so it ends exactly at the cluster
         * boundary and data cluster 1 keeps its single reference. Consistent, since the refcount
         * of data cluster 0 still matches its one reference.
         */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        CHECK(put_deflate(img.fd, img.cs, img.data_off + img.cs - 100, 0, 0x11) <= 100);
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | (img.data_off + img.cs - 100));
        {
                Qcow2CheckResult res;
                FormatError err = {};

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK_EQ_INT(res.corruptions, 0);
                CHECK_EQ_INT(res.leaks, 0);
                CHECK_EQ_INT(res.compressed_clusters, 1);
                CHECK_EQ_INT(res.allocated_clusters, FIXTURE_DATA - 1);
                qcow2_check_result_done(&res);
        }
        /* One additional sector: the stream now reaches into data cluster 1 as well. */
        put_be64(img.fd, l2e_addr(&img, 0),
                 QCOW2_OFLAG_COMPRESSED | (UINT64_C(1) << (62 - (cb - 8))) | (img.data_off + img.cs - 100));
        expect_problems(&img, "compressed stream into the next cluster", QCOW2_PROBLEM_REFCOUNT_MISMATCH,
                        img.data_off + img.cs, 1, 0);
        img_done(&img);

        /* Unallocated entry (offset 0) with COPIED. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, l2e_addr(&img, 5), QCOW2_OFLAG_COPIED);
        expect_problems(&img, "unallocated with COPIED", QCOW2_PROBLEM_INVALID_ENTRY, l2e_addr(&img, 5), 1, 0);
        img_done(&img);

        /* Misaligned data cluster. */
        if (cb > 9) {
                img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
                put_be64(img.fd, l2e_addr(&img, 0), (img.data_off + 512) | QCOW2_OFLAG_COPIED);
                expect_problems(&img, "misaligned data", QCOW2_PROBLEM_MISALIGNED, l2e_addr(&img, 0), 1, 1);
                img_done(&img);
        }

        /* COPIED clear on a cluster whose refcount is 1. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, l2e_addr(&img, 0), img.data_off);
        expect_problems(&img, "COPIED clear", QCOW2_PROBLEM_COPIED_FLAG, img.data_off, 1, 0);
        img_done(&img);

        /* COPIED clear on the L1 entry of an L2 table whose refcount is 1. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, l1e_addr(&img, 0), img.l2_off);
        expect_problems(&img, "L1 COPIED clear", QCOW2_PROBLEM_COPIED_FLAG, img.l2_off, 1, 0);
        img_done(&img);

        /*
         * Two L2 entries naming the same data cluster without snapshots: two references against a
         * refcount of 1; the second data cluster is no longer referenced.
         */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        l2e = get_be64(img.fd, l2e_addr(&img, 0));
        put_be64(img.fd, l2e_addr(&img, 1), l2e);
        expect_problems(&img, "shared data cluster", QCOW2_PROBLEM_REFCOUNT_MISMATCH, img.data_off, 1, 1);
        {
                Qcow2CheckResult res;
                FormatError err = {};

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK(has_problem(&res, QCOW2_PROBLEM_LEAK, img.data_off + img.cs));
                CHECK_EQ_INT(count_kind(&res, QCOW2_PROBLEM_OVERLAP), 0);
                qcow2_check_result_done(&res);
        }
        img_done(&img);

        /*
         * The zero flag in a version 2 image. Patching the version to 2 keeps the header
         * parseable: a v2 header is 72 bytes, and the v3 incompatible-features field at 72 (all
         * zero) then reads as the end-of-extensions marker.
         */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be32(img.fd, 4, 2);
        {
                Qcow2Header h;
                FormatError err = {};

                CHECK_EQ_INT(qcow2_header_read(img.fd, NULL, &h, &err), 0);
                CHECK_EQ_INT(h.version, 2);
                CHECK_EQ_INT(h.header_length, QCOW2_V2_HEADER_LENGTH);
        }
        expect_clean(&img, "v2 image");
        l2e = get_be64(img.fd, l2e_addr(&img, 0));
        put_be64(img.fd, l2e_addr(&img, 0), l2e | QCOW2_OFLAG_ZERO);
        expect_problems(&img, "v2 zero flag", QCOW2_PROBLEM_RESERVED_BITS, l2e_addr(&img, 0), 1, 1);
        /* In version 3 the same entry is a valid preallocated zero cluster. */
        put_be32(img.fd, 4, 3);
        expect_clean_allocated(&img, "v3 zero-alloc", FIXTURE_DATA - 1);
        img_done(&img);
}

static void test_refcount_corruptions(uint32_t cb) {
        Img img;
        uint64_t old_end;

        /* Refcount 0 for the L1 table's cluster: a mismatch, nothing else. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        set_refcount(&img, img.l1_off, 0);
        expect_problems(&img, "L1 refcount 0", QCOW2_PROBLEM_REFCOUNT_MISMATCH, img.l1_off, 1, 0);
        img_done(&img);

        /* Refcount 0 for the header cluster. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        set_refcount(&img, 0, 0);
        expect_problems(&img, "header refcount 0", QCOW2_PROBLEM_REFCOUNT_MISMATCH, 0, 1, 0);
        img_done(&img);

        /* Refcount 0 for a data cluster: a mismatch, and its COPIED flag is now wrong too. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        set_refcount(&img, img.data_off, 0);
        expect_problems(&img, "data refcount 0", QCOW2_PROBLEM_REFCOUNT_MISMATCH, img.data_off, 2, 0);
        {
                Qcow2CheckResult res;
                FormatError err = {};

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK(has_problem(&res, QCOW2_PROBLEM_COPIED_FLAG, img.data_off));
                qcow2_check_result_done(&res);
        }
        img_done(&img);

        /* Refcount 2 for a data cluster with one reference: a leak, and COPIED is wrong. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        set_refcount(&img, img.data_off, 2);
        expect_problems(&img, "data refcount 2", QCOW2_PROBLEM_LEAK, img.data_off, 1, 1);
        img_done(&img);

        /* Refcount 1 for a free cluster inside the file: a leak, no corruption. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        old_end = img.file_size;
        grow_file(&img, 1);
        expect_clean(&img, "grown image with a free cluster");
        set_refcount(&img, old_end, 1);
        expect_problems(&img, "free cluster refcount 1", QCOW2_PROBLEM_LEAK, old_end, 0, 1);
        img_done(&img);

        /* Refcounts for three clusters past the end of the file: three leaks in one record. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        for (uint64_t k = 0; k < 3; k++)
                set_refcount(&img, img.file_size + k * img.cs, 1);
        {
                Qcow2CheckResult res;
                FormatError err = {};

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK_EQ_INT(res.corruptions, 0);
                CHECK_EQ_INT(res.leaks, 3);
                CHECK_EQ_INT(res.n_problems, 1);
                CHECK(has_problem(&res, QCOW2_PROBLEM_LEAK, img.file_size));
                qcow2_check_result_done(&res);
        }
        img_done(&img);

        /* Reserved bits in the refcount table entry: reported, the block is still used. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, rte_addr(&img, 0), img.rb_off | 1);
        expect_problems(&img, "reftable reserved bits", QCOW2_PROBLEM_RESERVED_BITS, rte_addr(&img, 0), 1, 0);
        img_done(&img);

        /* Reserved bits in an unused refcount table entry. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, rte_addr(&img, 1), 0x100);
        expect_problems(&img, "unused reftable entry reserved bits", QCOW2_PROBLEM_RESERVED_BITS, rte_addr(&img, 1), 1, 0);
        img_done(&img);

        /*
         * A misaligned refcount block is not read: every cluster in use but the block itself then
         * has refcount 0 (a mismatch each), and the COPIED flags of the L2 table and of the data
         * clusters no longer match a refcount of 1.
         */
        if (cb > 9) {
                img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
                put_be64(img.fd, rte_addr(&img, 0), img.rb_off + 512);
                expect_problems(&img, "misaligned refcount block", QCOW2_PROBLEM_MISALIGNED, img.rb_off + 512,
                                1 + (img.nb_clusters - 1) + 1 + FIXTURE_DATA, 0);
                {
                        Qcow2CheckResult res;
                        FormatError err = {};

                        CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                        CHECK_EQ_INT(count_kind(&res, QCOW2_PROBLEM_REFCOUNT_MISMATCH), img.nb_clusters - 1);
                        CHECK_EQ_INT(count_kind(&res, QCOW2_PROBLEM_COPIED_FLAG), 1 + FIXTURE_DATA);
                        CHECK(!has_problem(&res, QCOW2_PROBLEM_REFCOUNT_MISMATCH, img.rb_off));
                        qcow2_check_result_done(&res);
                }
                img_done(&img);
        }

        /* A refcount block past the end of the file. */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        put_be64(img.fd, rte_addr(&img, 0), img.file_size + 8 * img.cs);
        {
                Qcow2CheckResult res;
                FormatError err = {};

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK(has_problem(&res, QCOW2_PROBLEM_OUTSIDE_FILE, img.file_size + 8 * img.cs));
                CHECK_EQ_INT(res.leaks, 0);
                CHECK(res.corruptions > 1);
                qcow2_check_result_done(&res);
        }
        img_done(&img);
}

/* One snapshot table entry (40 bytes + extra data + id + name), padded to 8 bytes. */
static void write_snapshot(const Img *img, uint64_t off, uint32_t extra) {
        uint8_t e[64] = {};

        be64_write(e, 0);       /* l1_table_offset */
        be32_write(e + 8, 0);   /* l1_size */
        be16_write(e + 12, 1);  /* id_len */
        be16_write(e + 14, 1);  /* name_len */
        be32_write(e + 36, extra);
        /* extra data (16 bytes when valid): vm_state_size_large 0, disk_size */
        be64_write(e + 48, img->size);
        e[56] = '1';
        e[57] = 's';
        pwrite_exact(img->fd, e, sizeof(e), off);
}

static void test_snapshot_table(uint32_t cb) {
        Img img;
        uint64_t snap;

        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        snap = img.file_size;
        grow_file(&img, 1);
        write_snapshot(&img, snap, 16);
        set_refcount(&img, snap, 1);
        put_be32(img.fd, 60, 1);
        put_be64(img.fd, 64, snap);
        /* A valid snapshot without an L1 table: the walk accounts for the snapshot table. */
        expect_clean(&img, "valid snapshot table");

        /* 2000 bytes of extra data: over QEMU's limit. The table is still accounted: no leak. */
        put_be32(img.fd, snap + 36, 2000);
        expect_problems(&img, "snapshot extra 2000", QCOW2_PROBLEM_SNAPSHOT_TABLE, snap, 1, 0);

        /* Version 3 needs at least 16 bytes of extra data. */
        put_be32(img.fd, snap + 36, 8);
        expect_problems(&img, "snapshot extra 8", QCOW2_PROBLEM_SNAPSHOT_TABLE, snap, 1, 0);
        img_done(&img);

        /*
         * Two entries of 59 and 58 bytes: the second starts 8-byte aligned (at +64), and the file ends
         * right after its name, without the padding QEMU never writes after the last entry.
         */
        img_make(&img, cb, FIXTURE_SIZE, FIXTURE_DATA);
        snap = img.file_size;
        grow_file(&img, 1);
        write_snapshot(&img, snap, 16);
        put_be16(img.fd, snap + 14, 2); /* name "s\0": 59 bytes */
        write_snapshot(&img, snap + 64, 16);
        if (ftruncate(img.fd, (off_t) (snap + 64 + 58)) < 0) {
                perror("ftruncate");
                exit(EXIT_FAILURE);
        }
        img.file_size = snap + 64 + 58;
        set_refcount(&img, snap, 1);
        put_be32(img.fd, 60, 2);
        put_be64(img.fd, 64, snap);
        expect_clean(&img, "snapshot table ending the file without padding");

        /* One byte less: the last entry's name is cut off. */
        if (ftruncate(img.fd, (off_t) (snap + 64 + 57)) < 0) {
                perror("ftruncate");
                exit(EXIT_FAILURE);
        }
        img.file_size = snap + 64 + 57;
        expect_problems(&img, "snapshot table cut short", QCOW2_PROBLEM_SNAPSHOT_TABLE, snap + 64, 1, 0);
        img_done(&img);
}

/*
 * A compressed cluster must inflate to a whole cluster from the bytes its descriptor covers (QEMU's
 * read fails with EIO otherwise; iotest 214). Streams of about 1 KiB in data cluster 0.
 */
static void test_compressed_data(void) {
        Img img;
        uint32_t x = 62 - (16 - 8);
        size_t n;
        uint64_t sectors;

        img_make(&img, 16, FIXTURE_SIZE, FIXTURE_DATA);
        n = put_deflate(img.fd, img.cs, img.data_off, 1000, 0);
        CHECK(n > 1000 && n < 2048);
        sectors = (n + 511) / 512;
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | ((sectors - 1) << x) | img.data_off);
        {
                Qcow2CheckResult res;
                FormatError err = {};

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK_EQ_INT(res.corruptions, 0);
                CHECK_EQ_INT(res.leaks, 0);
                CHECK_EQ_INT(res.compressed_clusters, 1);
                qcow2_check_result_done(&res);
        }

        /* One sector less: the stream is cut. */
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | ((sectors - 2) << x) | img.data_off);
        expect_problems(&img, "compressed stream cut by its descriptor", QCOW2_PROBLEM_INVALID_ENTRY, img.data_off, 1, 0);

        /* Bytes that are no deflate stream (0xff...: a block of the reserved type 3). */
        put_be64(img.fd, img.data_off, UINT64_C(0xffffffffffffffff));
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | ((sectors - 1) << x) | img.data_off);
        expect_problems(&img, "compressed cluster that is not a deflate stream", QCOW2_PROBLEM_INVALID_ENTRY, img.data_off,
                        1, 0);
        img_done(&img);
}

/* Writes at `off` one zstd frame of `len` bytes (the first 1000 pseudo-random, the rest zero); returns its size. */
static size_t put_zstd(int fd, uint64_t off, size_t len) {
        size_t bound = ZSTD_compressBound(len), n;
        uint8_t *in = calloc(1, len), *out = malloc(bound);
        uint32_t x = 777;

        if (!in || !out) {
                fprintf(stderr, "out of memory\n");
                exit(EXIT_FAILURE);
        }
        for (size_t i = 0; i < 1000 && i < len; i++) {
                x = x * 1103515245 + 12345;
                in[i] = (uint8_t) (x >> 16);
        }
        n = ZSTD_compress(out, bound, in, len, 3);
        if (ZSTD_isError(n)) {
                fprintf(stderr, "zstd compression failed\n");
                exit(EXIT_FAILURE);
        }
        pwrite_exact(fd, out, n, off);
        free(in);
        free(out);
        return n;
}

/*
 * zstd-compressed clusters are decompressed too: one complete frame of exactly one cluster, as QEMU's
 * read wants (catalogue case "compressed: zlib data declared zstd" was valid to vdisk before, EIO
 * to QEMU).
 */
static void test_compressed_zstd(void) {
        Img img;
        uint32_t x = 62 - (16 - 8);
        uint8_t ct = QCOW2_COMPRESSION_ZSTD, b[8];
        uint64_t sectors;
        size_t n;

        img_make(&img, 16, FIXTURE_SIZE, FIXTURE_DATA);
        pread_exact(img.fd, b, 8, 72);
        put_be64(img.fd, 72, be64_read(b) | QCOW2_INCOMPAT_COMPRESSION);
        pwrite_exact(img.fd, &ct, 1, 104);

        n = put_zstd(img.fd, img.data_off, img.cs);
        CHECK(n > 1000 && n < 2048);
        sectors = (n + 511) / 512;
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | ((sectors - 1) << x) | img.data_off);
        {
                Qcow2CheckResult res;
                FormatError err = {};

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK_EQ_INT(res.corruptions, 0);
                CHECK_EQ_INT(res.leaks, 0);
                CHECK_EQ_INT(res.compressed_clusters, 1);
                qcow2_check_result_done(&res);
        }

        /* The frame cut by its descriptor. */
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | ((sectors - 2) << x) | img.data_off);
        expect_problems(&img, "zstd frame cut by its descriptor", QCOW2_PROBLEM_INVALID_ENTRY, img.data_off, 1, 0);

        /* A frame of half a cluster: complete, but short. */
        n = put_zstd(img.fd, img.data_off, img.cs / 2);
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | (((n + 511) / 512 - 1) << x) | img.data_off);
        expect_problems(&img, "zstd frame of half a cluster", QCOW2_PROBLEM_INVALID_ENTRY, img.data_off, 1, 0);

        /* A frame of two clusters: the cluster is full before the frame ends. */
        n = put_zstd(img.fd, img.data_off, 2 * img.cs);
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | (((n + 511) / 512 - 1) << x) | img.data_off);
        expect_problems(&img, "zstd frame of two clusters", QCOW2_PROBLEM_INVALID_ENTRY, img.data_off, 1, 0);

        /* A deflate stream in an image that says zstd. */
        n = put_deflate(img.fd, img.cs, img.data_off, 1000, 0);
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | (((n + 511) / 512 - 1) << x) | img.data_off);
        expect_problems(&img, "deflate stream in a zstd image", QCOW2_PROBLEM_INVALID_ENTRY, img.data_off, 1, 0);
        img_done(&img);
}

/* Refcounts wider than 32 bits are reported with their value, not a saturated 4294967295. */
static void test_refcount_64(void) {
        Img img;
        Qcow2CheckResult res;
        FormatError err = {};
        bool found = false;

        /* Rewrite the writer's 16-bit refcount block as a 64-bit one (refcount_order 6). */
        img_make(&img, 16, FIXTURE_SIZE, FIXTURE_DATA);
        {
                uint16_t v[64];
                uint8_t b[2];

                for (uint64_t c = 0; c < img.nb_clusters && c < ELEMENTSOF(v); c++) {
                        pread_exact(img.fd, b, sizeof(b), img.rb_off + c * 2);
                        v[c] = be16_read(b);
                }
                for (uint64_t c = 0; c < img.nb_clusters && c < ELEMENTSOF(v); c++)
                        put_be64(img.fd, img.rb_off + c * 8, v[c]);
        }
        put_be32(img.fd, 96, 6);
        expect_clean(&img, "64-bit refcounts");

        put_be64(img.fd, img.rb_off + (img.data_off / img.cs) * 8, (UINT64_C(1) << 32) + 5);
        CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
        CHECK_EQ_INT(res.leaks, 1);
        for (uint64_t i = 0; i < res.n_problems; i++)
                if (res.problems[i].kind == QCOW2_PROBLEM_LEAK && res.problems[i].offset == img.data_off) {
                        CHECK_CONTAINS(res.problems[i].text, "has refcount 4294967301 but 1 references");
                        found = true;
                } else if (res.problems[i].kind == QCOW2_PROBLEM_COPIED_FLAG && res.problems[i].offset == img.data_off)
                        CHECK_CONTAINS(res.problems[i].text, "has refcount 4294967301 but COPIED is set");
        CHECK(found);
        CHECK(has_problem(&res, QCOW2_PROBLEM_COPIED_FLAG, img.data_off));
        qcow2_check_result_done(&res);
        img_done(&img);
}

static void test_limits(void) {
        Img img;
        Qcow2CheckResult res = {};
        FormatError err = {};
        Qcow2Limits limits;
        int r;

        img_make(&img, 12, FIXTURE_SIZE, FIXTURE_DATA);

        limits = (Qcow2Limits) { .max_host_clusters = img.nb_clusters - 1 };
        r = img_check(&img, &limits, &res, &err);
        CHECK_EQ_INT(r, -E2BIG);
        CHECK_EQ_INT(err.code, -E2BIG);
        CHECK_CONTAINS(err.reason, "walk limit");
        CHECK(res.problems == NULL);

        limits = (Qcow2Limits) { .max_host_clusters = 1 };
        err = (FormatError) {};
        CHECK_EQ_INT(img_check(&img, &limits, &res, &err), -E2BIG);
        CHECK(err.reason[0] != 0);

        /* Exactly at the limit is fine. */
        limits = (Qcow2Limits) { .max_host_clusters = img.nb_clusters };
        err = (FormatError) {};
        r = img_check(&img, &limits, &res, &err);
        CHECK_EQ_INT(r, 0);
        CHECK_EQ_INT(res.corruptions + res.leaks, 0);
        qcow2_check_result_done(&res);

        img_done(&img);
}

/* ---- allocation map ---- */

static void check_extent(const ExtentMap *m, size_t i, uint64_t start, uint64_t length, ExtentState state, bool has_host,
                         uint64_t host) {
        CHECK(i < m->n_extents);
        if (i >= m->n_extents)
                return;
        CHECK_EQ_INT(m->extents[i].start, start);
        CHECK_EQ_INT(m->extents[i].length, length);
        CHECK_EQ_INT(m->extents[i].state, state);
        CHECK_EQ_INT(m->extents[i].has_host_offset, has_host);
        if (has_host)
                CHECK_EQ_INT(m->extents[i].host_offset, host);
}

static void test_map_fresh(void) {
        static const uint32_t bits[] = { 9, 12, 16, 21 };
        static const uint64_t sizes[] = { 512, UINT64_C(64) << 20, (UINT64_C(1) << 30) + 512 };

        for (size_t i = 0; i < ELEMENTSOF(bits); i++)
                for (size_t s = 0; s < ELEMENTSOF(sizes); s++) {
                        ExtentMap m;
                        FormatError err = {};
                        Img img;

                        img_make(&img, bits[i], sizes[s], 0);
                        CHECK_EQ_INT(img_map(&img, &m, &err), 0);
                        CHECK_EQ_INT(m.n_extents, 1);
                        check_extent(&m, 0, 0, sizes[s], EXTENT_UNALLOCATED, false, 0);
                        extent_map_done(&m);
                        img_done(&img);
                }

        /* A zero-sized image has no extents at all. */
        {
                ExtentMap m;
                FormatError err = {};
                Img img;

                img_make(&img, 16, 0, 0);
                CHECK_EQ_INT(img_map(&img, &m, &err), 0);
                CHECK_EQ_INT(m.n_extents, 0);
                extent_map_done(&m);
                img_done(&img);
        }
}

static void test_map_data(void) {
        static const uint32_t bits[] = { 9, 12, 16, 21 };

        for (size_t i = 0; i < ELEMENTSOF(bits); i++)
                for (uint64_t n = 1; n <= 3; n++) {
                        uint64_t size = UINT64_C(64) << 20;
                        ExtentMap m;
                        FormatError err = {};
                        Img img;

                        img_make(&img, bits[i], size, n);
                        CHECK_EQ_INT(img_map(&img, &m, &err), 0);
                        CHECK_EQ_INT(m.n_extents, 2);
                        check_extent(&m, 0, 0, n * img.cs, EXTENT_DATA, true, img.data_off);
                        check_extent(&m, 1, n * img.cs, size - n * img.cs, EXTENT_UNALLOCATED, false, 0);
                        extent_map_done(&m);
                        img_done(&img);
                }
}

static void test_map_entries(uint32_t cb) {
        uint64_t size = FIXTURE_SIZE, x = 62 - (cb - 8);
        ExtentMap m;
        FormatError err = {};
        Img img;

        img_make(&img, cb, size, FIXTURE_DATA);

        /* Zero-plain (value 1): reads as zeros, no host cluster. */
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_ZERO);
        CHECK_EQ_INT(img_map(&img, &m, &err), 0);
        CHECK_EQ_INT(m.n_extents, 3);
        check_extent(&m, 0, 0, img.cs, EXTENT_ZERO, false, 0);
        check_extent(&m, 1, img.cs, img.cs, EXTENT_DATA, true, img.data_off + img.cs);
        check_extent(&m, 2, 2 * img.cs, size - 2 * img.cs, EXTENT_UNALLOCATED, false, 0);
        extent_map_done(&m);

        /* Zero-alloc: zeros with a preallocated host cluster. */
        put_be64(img.fd, l2e_addr(&img, 0), img.data_off | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO);
        CHECK_EQ_INT(img_map(&img, &m, &err), 0);
        CHECK_EQ_INT(m.n_extents, 3);
        check_extent(&m, 0, 0, img.cs, EXTENT_ZERO, true, img.data_off);
        check_extent(&m, 1, img.cs, img.cs, EXTENT_DATA, true, img.data_off + img.cs);
        extent_map_done(&m);

        /* Both clusters zero-alloc and contiguous: one zero extent with a host offset. */
        put_be64(img.fd, l2e_addr(&img, 1), (img.data_off + img.cs) | QCOW2_OFLAG_COPIED | QCOW2_OFLAG_ZERO);
        CHECK_EQ_INT(img_map(&img, &m, &err), 0);
        CHECK_EQ_INT(m.n_extents, 2);
        check_extent(&m, 0, 0, 2 * img.cs, EXTENT_ZERO, true, img.data_off);
        extent_map_done(&m);

        /*
         * Compressed, one sector each, with host streams that are contiguous (data_off and
         * data_off + 512): still two extents. The second has 1 additional sector.
         */
        CHECK(put_deflate(img.fd, img.cs, img.data_off, 0, 0x22) <= 512);
        CHECK(put_deflate(img.fd, img.cs, img.data_off + 512, 0, 0x33) <= 1024);
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | img.data_off);
        put_be64(img.fd, l2e_addr(&img, 1), QCOW2_OFLAG_COMPRESSED | (UINT64_C(1) << x) | (img.data_off + 512));
        CHECK_EQ_INT(img_map(&img, &m, &err), 0);
        CHECK_EQ_INT(m.n_extents, 3);
        check_extent(&m, 0, 0, img.cs, EXTENT_COMPRESSED, true, img.data_off);
        check_extent(&m, 1, img.cs, img.cs, EXTENT_COMPRESSED, true, img.data_off + 512);
        check_extent(&m, 2, 2 * img.cs, size - 2 * img.cs, EXTENT_UNALLOCATED, false, 0);
        extent_map_done(&m);
        {
                Qcow2CheckResult res;

                CHECK_EQ_INT(img_check(&img, NULL, &res, &err), 0);
                CHECK_EQ_INT(res.compressed_clusters, 2);
                CHECK_EQ_INT(res.allocated_clusters, 0);
                qcow2_check_result_done(&res);
        }

        /* A compressed stream at an unaligned byte offset. */
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COMPRESSED | (img.data_off + 100));
        CHECK_EQ_INT(img_map(&img, &m, &err), 0);
        check_extent(&m, 0, 0, img.cs, EXTENT_COMPRESSED, true, img.data_off + 100);
        extent_map_done(&m);

        /* Invalid entries make the whole map fail. */
        err = (FormatError) {};
        m = (ExtentMap) {};
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COPIED | QCOW2_OFLAG_COMPRESSED | img.data_off);
        CHECK_EQ_INT(img_map(&img, &m, &err), -EBADMSG);
        CHECK_EQ_INT(err.code, -EBADMSG);
        CHECK_CONTAINS(err.reason, "COPIED");
        CHECK_EQ_INT(m.n_extents, 0);
        CHECK(m.extents == NULL);

        err = (FormatError) {};
        put_be64(img.fd, l2e_addr(&img, 0), img.data_off | QCOW2_OFLAG_COPIED | 2);
        CHECK_EQ_INT(img_map(&img, &m, &err), -EBADMSG);
        CHECK_CONTAINS(err.reason, "reserved");

        err = (FormatError) {};
        put_be64(img.fd, l2e_addr(&img, 0), QCOW2_OFLAG_COPIED);
        CHECK_EQ_INT(img_map(&img, &m, &err), -EBADMSG);

        err = (FormatError) {};
        put_be64(img.fd, l2e_addr(&img, 0), (img.file_size + img.cs) | QCOW2_OFLAG_COPIED);
        CHECK_EQ_INT(img_map(&img, &m, &err), -EBADMSG);
        CHECK_CONTAINS(err.reason, "past the end");

        /* Restored: maps again. */
        put_be64(img.fd, l2e_addr(&img, 0), img.data_off | QCOW2_OFLAG_COPIED);
        put_be64(img.fd, l2e_addr(&img, 1), (img.data_off + img.cs) | QCOW2_OFLAG_COPIED);
        err = (FormatError) {};
        CHECK_EQ_INT(img_map(&img, &m, &err), 0);
        CHECK_EQ_INT(m.n_extents, 2);
        extent_map_done(&m);

        /* An L1 entry with reserved bits. */
        err = (FormatError) {};
        put_be64(img.fd, l1e_addr(&img, 0), img.l2_off | QCOW2_OFLAG_COPIED | (UINT64_C(1) << 57));
        CHECK_EQ_INT(img_map(&img, &m, &err), -EBADMSG);
        CHECK_CONTAINS(err.reason, "L1 entry");

        /* An L1 entry naming an L2 table past the end of the file. */
        err = (FormatError) {};
        put_be64(img.fd, l1e_addr(&img, 0), (img.file_size + img.cs) | QCOW2_OFLAG_COPIED);
        CHECK_EQ_INT(img_map(&img, &m, &err), -EBADMSG);

        img_done(&img);
}

static void test_raw_map(void) {
        const uint64_t size = UINT64_C(1) << 20, data_at = 512 * 1024;
        uint8_t block[4096];
        ExtentMap m = {};
        uint64_t pos = 0;
        bool found = false;
        int fd;

        fd = new_file();
        if (ftruncate(fd, (off_t) size) < 0) {
                perror("ftruncate");
                exit(EXIT_FAILURE);
        }

        /* Entirely sparse: one zero extent (or one data extent without hole reporting). */
        CHECK_EQ_INT(raw_map(fd, size, &m), 0);
        CHECK_EQ_INT(m.n_extents, 1);
        if (m.n_extents == 1) {
                CHECK_EQ_INT(m.extents[0].start, 0);
                CHECK_EQ_INT(m.extents[0].length, size);
        }
        extent_map_done(&m);

        memset(block, 0xa5, sizeof(block));
        pwrite_exact(fd, block, sizeof(block), data_at);
        CHECK_EQ_INT(raw_map(fd, size, &m), 0);

        /* Whatever the filesystem reports, the extents tile [0, size) and 512 KiB is data. */
        for (size_t i = 0; i < m.n_extents; i++) {
                const Extent *e = &m.extents[i];

                CHECK_EQ_INT(e->start, pos);
                CHECK(e->length > 0);
                CHECK(e->state == EXTENT_ZERO || e->state == EXTENT_DATA);
                if (e->state == EXTENT_DATA) {
                        CHECK(e->has_host_offset);
                        CHECK_EQ_INT(e->host_offset, e->start);
                } else
                        CHECK(!e->has_host_offset);
                if (e->start <= data_at && data_at + sizeof(block) <= e->start + e->length) {
                        CHECK_EQ_INT(e->state, EXTENT_DATA);
                        found = true;
                }
                pos = e->start + e->length;
        }
        CHECK_EQ_INT(pos, size);
        CHECK(found);

        if (m.n_extents == 1) {
                /* The filesystem reports no holes (SEEK_DATA unsupported or fully allocated): all data. */
                check_extent(&m, 0, 0, size, EXTENT_DATA, true, 0);
        } else {
                /* Zero, data, zero; the data extent is the written block rounded to filesystem blocks. */
                struct stat st;
                uint64_t blk, first, end;

                if (fstat(fd, &st) < 0) {
                        perror("fstat");
                        exit(EXIT_FAILURE);
                }
                blk = st.st_blksize > 0 ? (uint64_t) st.st_blksize : 4096;
                first = data_at / blk * blk;
                end = (data_at + sizeof(block) + blk - 1) / blk * blk;
                CHECK_EQ_INT(m.n_extents, 3);
                check_extent(&m, 0, 0, first, EXTENT_ZERO, false, 0);
                check_extent(&m, 1, first, end - first, EXTENT_DATA, true, first);
                check_extent(&m, 2, end, size - end, EXTENT_ZERO, false, 0);
        }
        extent_map_done(&m);

        /* Only a part of the file: the extents stop at `size`. */
        CHECK_EQ_INT(raw_map(fd, data_at + 2048, &m), 0);
        CHECK(m.n_extents >= 1);
        if (m.n_extents >= 1) {
                const Extent *e = &m.extents[m.n_extents - 1];
                CHECK_EQ_INT(e->start + e->length, data_at + 2048);
                CHECK_EQ_INT(e->state, EXTENT_DATA);
        }
        extent_map_done(&m);

        /* Size 0: nothing. */
        CHECK_EQ_INT(raw_map(fd, 0, &m), 0);
        CHECK_EQ_INT(m.n_extents, 0);
        extent_map_done(&m);

        close(fd);
}

static void test_extent_map_append(void) {
        ExtentMap m = {};

        /* Length 0 is ignored. */
        CHECK_EQ_INT(extent_map_append(&m, 0, 0, EXTENT_DATA, true, 0), 0);
        CHECK_EQ_INT(m.n_extents, 0);

        /* Adjacent unallocated extents merge. */
        CHECK_EQ_INT(extent_map_append(&m, 0, 4096, EXTENT_UNALLOCATED, false, 0), 0);
        CHECK_EQ_INT(extent_map_append(&m, 4096, 4096, EXTENT_UNALLOCATED, false, 0), 0);
        CHECK_EQ_INT(m.n_extents, 1);
        check_extent(&m, 0, 0, 8192, EXTENT_UNALLOCATED, false, 0);

        /* Different state: new extent; data with contiguous host offsets merge. */
        CHECK_EQ_INT(extent_map_append(&m, 8192, 4096, EXTENT_DATA, true, 65536), 0);
        CHECK_EQ_INT(extent_map_append(&m, 12288, 4096, EXTENT_DATA, true, 65536 + 4096), 0);
        CHECK_EQ_INT(m.n_extents, 2);
        check_extent(&m, 1, 8192, 8192, EXTENT_DATA, true, 65536);

        /* Data whose host offset is not contiguous: no merge (backwards, and a gap forwards). */
        CHECK_EQ_INT(extent_map_append(&m, 16384, 4096, EXTENT_DATA, true, 0x100000), 0);
        CHECK_EQ_INT(m.n_extents, 3);
        CHECK_EQ_INT(extent_map_append(&m, 20480, 4096, EXTENT_DATA, true, 0x100000 + 8192), 0);
        CHECK_EQ_INT(m.n_extents, 4);
        CHECK_EQ_INT(extent_map_append(&m, 24576, 4096, EXTENT_DATA, true, 0x100000 + 8192 - 4096), 0);
        CHECK_EQ_INT(m.n_extents, 5);

        /* Zero without host merges with zero without host, not with zero with a host. */
        CHECK_EQ_INT(extent_map_append(&m, 28672, 512, EXTENT_ZERO, false, 0), 0);
        CHECK_EQ_INT(extent_map_append(&m, 29184, 512, EXTENT_ZERO, false, 0), 0);
        CHECK_EQ_INT(m.n_extents, 6);
        check_extent(&m, 5, 28672, 1024, EXTENT_ZERO, false, 0);
        CHECK_EQ_INT(extent_map_append(&m, 29696, 512, EXTENT_ZERO, true, 0x200000), 0);
        CHECK_EQ_INT(m.n_extents, 7);
        /* Zero with contiguous host offsets merges. */
        CHECK_EQ_INT(extent_map_append(&m, 30208, 512, EXTENT_ZERO, true, 0x200000 + 512), 0);
        CHECK_EQ_INT(m.n_extents, 7);
        check_extent(&m, 6, 29696, 1024, EXTENT_ZERO, true, 0x200000);

        /* Compressed never merge, even adjacent with contiguous streams. */
        CHECK_EQ_INT(extent_map_append(&m, 30720, 4096, EXTENT_COMPRESSED, true, 0x300000), 0);
        CHECK_EQ_INT(extent_map_append(&m, 34816, 4096, EXTENT_COMPRESSED, true, 0x300000 + 4096), 0);
        CHECK_EQ_INT(m.n_extents, 9);
        check_extent(&m, 7, 30720, 4096, EXTENT_COMPRESSED, true, 0x300000);
        check_extent(&m, 8, 34816, 4096, EXTENT_COMPRESSED, true, 0x300000 + 4096);

        /* Same state but a guest gap: no merge. */
        CHECK_EQ_INT(extent_map_append(&m, 40960, 4096, EXTENT_UNALLOCATED, false, 0), 0);
        CHECK_EQ_INT(extent_map_append(&m, 49152, 4096, EXTENT_UNALLOCATED, false, 0), 0);
        CHECK_EQ_INT(m.n_extents, 11);

        /* Without a host offset, a stray host_offset argument is dropped. */
        CHECK_EQ_INT(extent_map_append(&m, 53248, 4096, EXTENT_DATA, false, 1234), 0);
        CHECK_EQ_INT(m.n_extents, 12);
        CHECK_EQ_INT(m.extents[11].host_offset, 0);
        extent_map_done(&m);
        CHECK_EQ_INT(m.n_extents, 0);
        CHECK(m.extents == NULL);

        /* Many alternating extents: the array grows and keeps its contents. */
        for (uint64_t i = 0; i < 1000; i++)
                CHECK_EQ_INT(extent_map_append(&m, i * 512, 512, i % 2 ? EXTENT_ZERO : EXTENT_UNALLOCATED, false, 0), 0);
        CHECK_EQ_INT(m.n_extents, 1000);
        CHECK(m.allocated >= 1000);
        check_extent(&m, 999, 999 * 512, 512, EXTENT_ZERO, false, 0);
        check_extent(&m, 500, 500 * 512, 512, EXTENT_UNALLOCATED, false, 0);
        extent_map_done(&m);
}

static void test_strings(void) {
        CHECK_CONTAINS(qcow2_problem_kind_to_string(QCOW2_PROBLEM_LEAK), "leak");
        CHECK_CONTAINS(qcow2_problem_kind_to_string(QCOW2_PROBLEM_BITMAP_DIRECTORY), "bitmap");
        CHECK(qcow2_problem_kind_to_string(_QCOW2_PROBLEM_KIND_MAX) == NULL);
        CHECK(qcow2_problem_kind_to_string(-1) == NULL);
        for (int k = 0; k < _QCOW2_PROBLEM_KIND_MAX; k++)
                CHECK(qcow2_problem_kind_to_string(k) != NULL);
        CHECK_CONTAINS(extent_state_to_string(EXTENT_COMPRESSED), "compressed");
        CHECK(extent_state_to_string(_EXTENT_STATE_MAX) == NULL);
}

int main(void) {
        static const uint32_t corrupt_bits[] = { 9, 12, 16 };

        snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-qcow2-check-XXXXXX");
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return EXIT_FAILURE;
        }

        test_strings();
        test_clean_images();
        for (size_t i = 0; i < ELEMENTSOF(corrupt_bits); i++) {
                test_l1_corruptions(corrupt_bits[i]);
                test_l2_corruptions(corrupt_bits[i]);
                test_refcount_corruptions(corrupt_bits[i]);
                test_snapshot_table(corrupt_bits[i]);
                test_map_entries(corrupt_bits[i]);
        }
        test_refcount_64();
        test_compressed_data();
        test_compressed_zstd();
        test_limits();
        test_map_fresh();
        test_map_data();
        test_raw_map();
        test_extent_map_append();

        if (rmdir(tmpdir) < 0)
                perror("rmdir");

        TEST_MAIN_END();
}
