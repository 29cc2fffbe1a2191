/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Unit tests for qcow2_header_parse(): a valid v3 header is built in memory, then every rule is
 * broken one at a time and the exact errno and a distinctive part of the reason are checked.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bytes.h"
#include "qcow2.h"
#include "test-util.h"

#define CLUSTER 65536U
#define FILE_SIZE UINT64_C(0x40000)
#define GIB (UINT64_C(1) << 30)
#define REFTABLE_OFFSET UINT64_C(0x10000)
#define L1_OFFSET UINT64_C(0x30000)
#define EXT_START 112U

/* Header field offsets. */
#define OFF_VERSION 4
#define OFF_BACKING_OFFSET 8
#define OFF_BACKING_SIZE 16
#define OFF_CLUSTER_BITS 20
#define OFF_SIZE 24
#define OFF_CRYPT 32
#define OFF_L1_SIZE 36
#define OFF_L1_OFFSET 40
#define OFF_REFTABLE_OFFSET 48
#define OFF_REFTABLE_CLUSTERS 56
#define OFF_NB_SNAPSHOTS 60
#define OFF_SNAPSHOTS_OFFSET 64
#define OFF_INCOMPAT 72
#define OFF_COMPAT 80
#define OFF_AUTOCLEAR 88
#define OFF_REFCOUNT_ORDER 96
#define OFF_HEADER_LENGTH 100
#define OFF_COMPRESSION 104

#define EXT_UNKNOWN UINT32_C(0x12345678)

static uint8_t img[CLUSTER];

/* qemu-img create -f qcow2 X 1G, with the file extended to 0x40000 bytes. */
static void build_v3(uint8_t *b, size_t size) {
        memset(b, 0, size);
        be32_write(b, QCOW2_MAGIC);
        be32_write(b + OFF_VERSION, 3);
        be32_write(b + OFF_CLUSTER_BITS, 16);
        be64_write(b + OFF_SIZE, GIB);
        be32_write(b + OFF_L1_SIZE, 2);
        be64_write(b + OFF_L1_OFFSET, L1_OFFSET);
        be64_write(b + OFF_REFTABLE_OFFSET, REFTABLE_OFFSET);
        be32_write(b + OFF_REFTABLE_CLUSTERS, 1);
        be32_write(b + OFF_REFCOUNT_ORDER, 4);
        be32_write(b + OFF_HEADER_LENGTH, QCOW2_V3_HEADER_LENGTH);
        /* End-of-extensions marker at 112: magic 0, length 0 (the buffer is zeroed). */
}

static void reset(void) {
        build_v3(img, sizeof(img));
}

/* Writes one extension record at `off` (body zero-padded to 8 bytes); returns the next offset. */
static size_t put_ext(uint8_t *b, size_t off, uint32_t magic, const void *data, uint32_t len) {
        size_t padded = ((size_t) len + 7) & ~(size_t) 7;

        be32_write(b + off, magic);
        be32_write(b + off + 4, len);
        memset(b + off + 8, 0, padded);
        if (data && len > 0)
                memcpy(b + off + 8, data, len);
        return off + 8 + padded;
}

static size_t put_end(uint8_t *b, size_t off) {
        be32_write(b + off, QCOW2_EXT_END);
        be32_write(b + off + 4, 0);
        return off + 8;
}

static size_t put_bitmaps(uint8_t *b, size_t off, uint32_t nb, uint32_t reserved, uint64_t dir_size,
                          uint64_t dir_offset) {
        uint8_t body[24];

        be32_write(body, nb);
        be32_write(body + 4, reserved);
        be64_write(body + 8, dir_size);
        be64_write(body + 16, dir_offset);
        return put_ext(b, off, QCOW2_EXT_BITMAPS, body, sizeof(body));
}

static size_t put_crypto(uint8_t *b, size_t off, uint64_t offset, uint64_t length) {
        uint8_t body[16];

        be64_write(body, offset);
        be64_write(body + 8, length);
        return put_ext(b, off, QCOW2_EXT_CRYPTO, body, sizeof(body));
}

static void set_backing(uint8_t *b, uint64_t offset, const void *name, uint32_t len) {
        be64_write(b + OFF_BACKING_OFFSET, offset);
        be32_write(b + OFF_BACKING_SIZE, len);
        if (name && len > 0)
                memcpy(b + offset, name, len);
}

static int parse(const uint8_t *b, size_t size, uint64_t file_size, const Qcow2Limits *limits, Qcow2Header *h,
                 FormatError *err) {
        memset(err, 0, sizeof(*err));
        return qcow2_header_parse(b, size, file_size, limits, h, err);
}

/* Fails with `code` and a reason containing `needle`; the output header is left untouched. */
static void expect_fail_at(int line, const uint8_t *b, size_t size, uint64_t file_size, const Qcow2Limits *limits,
                           int code, const char *needle) {
        static Qcow2Header h, sentinel;
        FormatError err;
        int before = test_failures, r;

        memset(&h, 0x5a, sizeof(h));
        memset(&sentinel, 0x5a, sizeof(sentinel));
        r = parse(b, size, file_size, limits, &h, &err);
        CHECK_EQ_INT(r, code);
        CHECK_EQ_INT(err.code, code);
        CHECK_CONTAINS(err.reason, needle);
        CHECK(!strchr(err.reason, '\n'));
        CHECK(memcmp(&h, &sentinel, sizeof(h)) == 0);
        if (test_failures != before)
                fprintf(stderr, "  ^ case at line %d (reason: \"%s\")\n", line, err.reason);
}

#define EXPECT_FAIL_EX(b, size, file_size, limits, code, needle) \
        expect_fail_at(__LINE__, b, size, file_size, limits, code, needle)
#define EXPECT_FAIL(code, needle) expect_fail_at(__LINE__, img, sizeof(img), FILE_SIZE, NULL, code, needle)

static bool expect_ok_at(int line, const uint8_t *b, size_t size, uint64_t file_size, const Qcow2Limits *limits,
                         Qcow2Header *h) {
        FormatError err;
        int before = test_failures, r;

        memset(h, 0x5a, sizeof(*h));
        r = parse(b, size, file_size, limits, h, &err);
        CHECK_EQ_INT(r, 0);
        CHECK_EQ_INT(err.code, 0);
        if (test_failures != before) {
                fprintf(stderr, "  ^ case at line %d (reason: \"%s\")\n", line, err.reason);
                return false;
        }
        return true;
}

#define EXPECT_OK_EX(b, size, file_size, limits, h) expect_ok_at(__LINE__, b, size, file_size, limits, h)
#define EXPECT_OK(h) expect_ok_at(__LINE__, img, sizeof(img), FILE_SIZE, NULL, h)

/* ---- baseline ---- */

static void test_valid_v3(void) {
        static Qcow2Header h;

        reset();
        if (!EXPECT_OK(&h))
                return;
        CHECK_EQ_INT(h.version, 3);
        CHECK_EQ_INT(h.cluster_bits, 16);
        CHECK_EQ_INT(h.cluster_size, CLUSTER);
        CHECK_EQ_INT(h.size, GIB);
        CHECK_EQ_INT(h.crypt_method, 0);
        CHECK_EQ_INT(h.l1_size, 2);
        CHECK_EQ_INT(h.l1_table_offset, L1_OFFSET);
        CHECK_EQ_INT(h.refcount_table_offset, REFTABLE_OFFSET);
        CHECK_EQ_INT(h.refcount_table_clusters, 1);
        CHECK_EQ_INT(h.nb_snapshots, 0);
        CHECK_EQ_INT(h.snapshots_offset, 0);
        CHECK_EQ_INT(h.incompatible_features, 0);
        CHECK_EQ_INT(h.compatible_features, 0);
        CHECK_EQ_INT(h.autoclear_features, 0);
        CHECK_EQ_INT(h.refcount_order, 4);
        CHECK_EQ_INT(h.header_length, 112);
        CHECK_EQ_INT(h.compression_type, 0);
        CHECK(!h.has_backing_file);
        CHECK(!h.has_backing_format);
        CHECK(!h.has_data_file_name);
        CHECK(!h.has_feature_table);
        CHECK(!h.has_bitmaps_ext);
        CHECK(!h.has_crypto_ext);
        CHECK_EQ_INT(h.n_extensions, 0);
        CHECK_EQ_INT(h.n_unknown_extensions, 0);
        CHECK_EQ_INT(h.extensions_end, 120);
        CHECK_EQ_INT(h.file_size, FILE_SIZE);
        CHECK_EQ_INT(qcow2_l2_entries(&h), 8192);
        CHECK_EQ_INT(qcow2_refcount_bits(&h), 16);

        /* The buffer may be larger than the file: only file_size bytes count. */
        reset();
        CHECK(EXPECT_OK_EX(img, sizeof(img), FILE_SIZE, NULL, &h));

        /* Limits with zero fields mean the defaults. */
        {
                Qcow2Limits lim = {};
                reset();
                CHECK(EXPECT_OK_EX(img, sizeof(img), FILE_SIZE, &lim, &h));
        }

        /* A NULL FormatError is allowed. */
        reset();
        CHECK_EQ_INT(qcow2_header_parse(img, sizeof(img), FILE_SIZE, NULL, &h, NULL), 0);
        be32_write(img, 0);
        CHECK_EQ_INT(qcow2_header_parse(img, sizeof(img), FILE_SIZE, NULL, &h, NULL), -EBADMSG);
}

/* ---- main header ---- */

static void test_short_and_magic(void) {
        uint8_t *b;

        /* A heap buffer of exactly 71 bytes: ASan catches any read past it. */
        b = malloc(71);
        CHECK(b);
        if (b) {
                reset();
                memcpy(b, img, 71);
                EXPECT_FAIL_EX(b, 71, 71, NULL, -EBADMSG, "too short for a qcow2 header (71 bytes)");
                EXPECT_FAIL_EX(b, 0, 71, NULL, -EBADMSG, "too short for a qcow2 header (0 bytes)");
                free(b);
        }
        /* The file is short even though the buffer is not. */
        reset();
        EXPECT_FAIL_EX(img, sizeof(img), 71, NULL, -EBADMSG, "too short for a qcow2 header");
        EXPECT_FAIL_EX(img, sizeof(img), 0, NULL, -EBADMSG, "too short for a qcow2 header");

        reset();
        be32_write(img, 0x514649fa);
        EXPECT_FAIL(-EBADMSG, "no qcow2 magic");
        reset();
        memset(img, 0, 4);
        EXPECT_FAIL(-EBADMSG, "no qcow2 magic");
        reset();
        memcpy(img, "QED\0", 4);
        EXPECT_FAIL(-EBADMSG, "no qcow2 magic");
}

static void test_version(void) {
        static Qcow2Header h;

        reset();
        be32_write(img + OFF_VERSION, 1);
        EXPECT_FAIL(-EOPNOTSUPP, "qcow version 1 is not qcow2");
        reset();
        be32_write(img + OFF_VERSION, 0);
        EXPECT_FAIL(-EOPNOTSUPP, "qcow version 0 is not qcow2");
        reset();
        be32_write(img + OFF_VERSION, 4);
        EXPECT_FAIL(-EOPNOTSUPP, "unsupported qcow2 version 4");
        reset();
        be32_write(img + OFF_VERSION, UINT32_MAX);
        EXPECT_FAIL(-EOPNOTSUPP, "unsupported qcow2 version 4294967295");

        /* v2: 72-byte header, refcount_order fixed at 4, no feature fields. */
        reset();
        be32_write(img + OFF_VERSION, 2);
        memset(img + 72, 0, 40);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.version, 2);
                CHECK_EQ_INT(h.header_length, 72);
                CHECK_EQ_INT(h.refcount_order, 4);
                CHECK_EQ_INT(h.incompatible_features, 0);
                CHECK_EQ_INT(h.autoclear_features, 0);
                CHECK_EQ_INT(h.compression_type, 0);
                CHECK_EQ_INT(h.extensions_end, 80);
                CHECK_EQ_INT(h.n_extensions, 0);
        }
        /* v2 extensions start right after the 72 bytes. */
        {
                size_t off;
                reset();
                be32_write(img + OFF_VERSION, 2);
                memset(img + 72, 0, 40);
                off = put_ext(img, 72, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
                off = put_end(img, off);
                if (EXPECT_OK(&h)) {
                        CHECK(h.has_backing_format);
                        CHECK(strcmp(h.backing_format, "raw") == 0);
                        CHECK_EQ_INT(h.extensions_end, off);
                }
        }
        /* A v2 header whose bytes 72+ do not form an extension list is refused. */
        reset();
        be32_write(img + OFF_VERSION, 2);
        be32_write(img + 72, EXT_UNKNOWN);
        be32_write(img + 76, UINT32_MAX);
        EXPECT_FAIL(-EBADMSG, "extends past the header area");
}

static void test_cluster_bits(void) {
        static Qcow2Header h;

        reset();
        be32_write(img + OFF_CLUSTER_BITS, 8);
        EXPECT_FAIL(-EBADMSG, "cluster_bits 8 is below the minimum of 9");
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 0);
        EXPECT_FAIL(-EBADMSG, "cluster_bits 0 is below the minimum");
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 22);
        EXPECT_FAIL(-EOPNOTSUPP, "cluster_bits 22 is above the supported maximum of 21");
        /* Must not be used as a shift count (UBSan) before being refused. */
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 64);
        EXPECT_FAIL(-EOPNOTSUPP, "cluster_bits 64 is above");
        reset();
        be32_write(img + OFF_CLUSTER_BITS, UINT32_MAX);
        EXPECT_FAIL(-EOPNOTSUPP, "cluster_bits 4294967295 is above");

        /* Boundaries: 9 (512 B: L1 of 32768 entries) and 21 (2 MiB) are accepted. */
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 9);
        be32_write(img + OFF_L1_SIZE, 32768);
        be64_write(img + OFF_REFTABLE_OFFSET, 0x200);
        be64_write(img + OFF_L1_OFFSET, 0x600);
        if (EXPECT_OK_EX(img, sizeof(img), 0x600 + 32768 * 8, NULL, &h)) {
                CHECK_EQ_INT(h.cluster_size, 512);
                CHECK_EQ_INT(h.l1_size, 32768);
        }
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 21);
        be32_write(img + OFF_L1_SIZE, 1);
        be64_write(img + OFF_REFTABLE_OFFSET, UINT64_C(1) << 21);
        be64_write(img + OFF_L1_OFFSET, UINT64_C(2) << 21);
        /* 2 MiB clusters: the caller has to pass the whole of cluster 0. */
        {
                uint8_t *big = calloc(1, QCOW2_MAX_CLUSTER_SIZE);
                CHECK(big);
                if (big) {
                        memcpy(big, img, sizeof(img));
                        if (EXPECT_OK_EX(big, QCOW2_MAX_CLUSTER_SIZE, UINT64_C(3) << 21, NULL, &h))
                                CHECK_EQ_INT(h.cluster_size, QCOW2_MAX_CLUSTER_SIZE);
                        /* Passing less than cluster 0 is a caller error, not an image error. */
                        EXPECT_FAIL_EX(big, sizeof(img), UINT64_C(3) << 21, NULL, -EINVAL, "caller passed 65536 bytes");
                        free(big);
                }
        }
        reset();
        EXPECT_FAIL_EX(img, 4096, FILE_SIZE, NULL, -EINVAL, "cluster 0 has 65536");
}

static void test_header_length(void) {
        static Qcow2Header h;
        uint8_t *b;

        reset();
        be32_write(img + OFF_HEADER_LENGTH, 96);
        EXPECT_FAIL(-EBADMSG, "header_length 96 is below 104");
        reset();
        be32_write(img + OFF_HEADER_LENGTH, 0);
        EXPECT_FAIL(-EBADMSG, "header_length 0 is below 104");
        reset();
        be32_write(img + OFF_HEADER_LENGTH, 108);
        EXPECT_FAIL(-EBADMSG, "header_length 108 is not a multiple of 8");
        reset();
        be32_write(img + OFF_HEADER_LENGTH, 113);
        EXPECT_FAIL(-EBADMSG, "header_length 113 is not a multiple of 8");
        reset();
        be32_write(img + OFF_HEADER_LENGTH, CLUSTER + 8);
        EXPECT_FAIL(-EBADMSG, "header_length 65544 exceeds the cluster size");
        reset();
        be32_write(img + OFF_HEADER_LENGTH, UINT32_MAX - 7);
        EXPECT_FAIL(-EBADMSG, "exceeds the cluster size");
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 9);
        be32_write(img + OFF_HEADER_LENGTH, 520);
        EXPECT_FAIL(-EBADMSG, "header_length 520 exceeds the cluster size");

        /* Past the end of the file: a file of 200 bytes, passed as a buffer of exactly 200 bytes. */
        b = malloc(200);
        CHECK(b);
        if (b) {
                reset();
                be32_write(img + OFF_HEADER_LENGTH, 208);
                memcpy(b, img, 200);
                EXPECT_FAIL_EX(b, 200, 200, NULL, -EBADMSG, "header_length 208 extends past the end of the file");
                /* The file, not the buffer, is what is short. */
                EXPECT_FAIL_EX(img, sizeof(img), 200, NULL, -EBADMSG, "header_length 208 extends past the end");
                /* A 112-byte v3 header in a 104-byte file; in a 100-byte file, not even the fixed part fits. */
                reset();
                EXPECT_FAIL_EX(img, sizeof(img), 104, NULL, -EBADMSG, "header_length 112 extends past the end");
                EXPECT_FAIL_EX(img, sizeof(img), 100, NULL, -EBADMSG, "too short for a qcow2 version 3 header (100 bytes)");
                free(b);
        }

        /*
         * A v3 header in a file of 72..103 bytes: header_length (bytes 100..103) must not be read past
         * the buffer, which here has exactly the file's size (ASan).
         */
        {
                static const size_t short_sizes[] = { 72, 80, 100, 103 };
                for (size_t i = 0; i < ELEMENTSOF(short_sizes); i++) {
                        size_t n = short_sizes[i];
                        uint8_t *s = malloc(n);
                        CHECK(s);
                        if (!s)
                                continue;
                        reset();
                        memcpy(s, img, n);
                        EXPECT_FAIL_EX(s, n, n, NULL, -EBADMSG, "too short for a qcow2 version 3 header");
                        free(s);
                }
                /* 104 bytes are enough to read the header; then the tables are past the end. */
                b = malloc(104);
                CHECK(b);
                if (b) {
                        reset();
                        be32_write(img + OFF_HEADER_LENGTH, 104);
                        memcpy(b, img, 104);
                        EXPECT_FAIL_EX(b, 104, 104, NULL, -EBADMSG, "L1 table (0x30000, 16 bytes) extends past the end");
                        free(b);
                }
        }

        /* 104: no compression type byte; the extensions start at 104. */
        reset();
        be32_write(img + OFF_HEADER_LENGTH, 104);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.header_length, 104);
                CHECK_EQ_INT(h.compression_type, 0);
                CHECK_EQ_INT(h.extensions_end, 112);
        }
        /* ... so a non-zero byte at 104 is an extension magic (0x01000000, empty), not a compression type. */
        reset();
        be32_write(img + OFF_HEADER_LENGTH, 104);
        img[OFF_COMPRESSION] = 1;
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.compression_type, 0);
                CHECK_EQ_INT(h.n_unknown_extensions, 1);
                CHECK_EQ_INT(h.extensions_end, 120);
        }
        reset();
        be32_write(img + OFF_HEADER_LENGTH, 104);
        img[OFF_COMPRESSION] = 1;
        be32_write(img + 108, CLUSTER);
        EXPECT_FAIL(-EBADMSG, "header extension 0x01000000 (65536 bytes) extends past the header area");

        /* 120: bytes 112..119 are unknown header fields, kept and ignored. */
        reset();
        be32_write(img + OFF_HEADER_LENGTH, 120);
        memset(img + 112, 0xff, 8);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.header_length, 120);
                CHECK_EQ_INT(h.extensions_end, 128);
        }
}

static void test_padding(void) {
        for (size_t i = 105; i < 112; i++) {
                char needle[64];

                reset();
                img[i] = 0x80;
                snprintf(needle, sizeof(needle), "header padding byte %zu is not zero", i);
                EXPECT_FAIL(-EBADMSG, needle);
        }
}

static void test_features(void) {
        static Qcow2Header h;

        reset();
        be64_write(img + OFF_INCOMPAT, UINT64_C(1) << 5);
        EXPECT_FAIL(-EOPNOTSUPP, "unknown incompatible features 0x20");
        reset();
        be64_write(img + OFF_INCOMPAT, (UINT64_C(1) << 63) | QCOW2_INCOMPAT_DIRTY);
        EXPECT_FAIL(-EOPNOTSUPP, "unknown incompatible features 0x8000000000000000");

        /* Known bits alone are accepted here (dirty, corrupt); unknown compatible/autoclear bits too. */
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT);
        be64_write(img + OFF_COMPAT, UINT64_MAX);
        be64_write(img + OFF_AUTOCLEAR, UINT64_C(1) << 40);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.incompatible_features, 3);
                CHECK(h.compatible_features == UINT64_MAX);
                CHECK(h.autoclear_features == (UINT64_C(1) << 40));
        }

        reset();
        be32_write(img + OFF_REFCOUNT_ORDER, 7);
        EXPECT_FAIL(-EBADMSG, "refcount_order 7 is above 6");
        reset();
        be32_write(img + OFF_REFCOUNT_ORDER, UINT32_MAX);
        EXPECT_FAIL(-EBADMSG, "refcount_order 4294967295 is above 6");
        reset();
        be32_write(img + OFF_REFCOUNT_ORDER, 6);
        if (EXPECT_OK(&h))
                CHECK_EQ_INT(qcow2_refcount_bits(&h), 64);
        reset();
        be32_write(img + OFF_REFCOUNT_ORDER, 0);
        if (EXPECT_OK(&h))
                CHECK_EQ_INT(qcow2_refcount_bits(&h), 1);
}

static void test_compression(void) {
        static Qcow2Header h;

        reset();
        img[OFF_COMPRESSION] = 2;
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION);
        EXPECT_FAIL(-EOPNOTSUPP, "unknown compression type 2");
        reset();
        img[OFF_COMPRESSION] = 0xff;
        EXPECT_FAIL(-EOPNOTSUPP, "unknown compression type 255");
        reset();
        img[OFF_COMPRESSION] = QCOW2_COMPRESSION_ZSTD;
        EXPECT_FAIL(-EBADMSG, "compression type is not deflate but the compression type bit is not set");
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION);
        EXPECT_FAIL(-EBADMSG, "compression type bit is set but the compression type is deflate");
        /* Same with a 104-byte header, where the type is implicitly deflate. */
        reset();
        be32_write(img + OFF_HEADER_LENGTH, 104);
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION);
        EXPECT_FAIL(-EBADMSG, "compression type bit is set but the compression type is deflate");

        reset();
        img[OFF_COMPRESSION] = QCOW2_COMPRESSION_ZSTD;
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_COMPRESSION);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.compression_type, QCOW2_COMPRESSION_ZSTD);
                CHECK_EQ_INT(h.incompatible_features, QCOW2_INCOMPAT_COMPRESSION);
        }
}

static void test_extended_l2(void) {
        static Qcow2Header h;

        reset();
        be32_write(img + OFF_CLUSTER_BITS, 13);
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_EXTL2);
        EXPECT_FAIL(-EBADMSG, "extended L2 entries need clusters of at least 16384 bytes");
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 9);
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_EXTL2);
        EXPECT_FAIL(-EBADMSG, "extended L2 entries need clusters");

        /* 16 KiB clusters with extended L2: 1024 entries per L2, 16 MiB each, 64 L1 entries for 1 GiB. */
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 14);
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_EXTL2);
        be32_write(img + OFF_L1_SIZE, 64);
        if (EXPECT_OK(&h))
                CHECK_EQ_INT(qcow2_l2_entries(&h), 1024);
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 14);
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_EXTL2);
        be32_write(img + OFF_L1_SIZE, 63);
        EXPECT_FAIL(-EBADMSG, "L1 table has 63 entries, the virtual size needs 64");

        /* 64 KiB clusters: extended L2 halves what an L2 table maps, so 1 GiB needs 4 entries, not 2. */
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_EXTL2);
        EXPECT_FAIL(-EBADMSG, "L1 table has 2 entries, the virtual size needs 4");
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_EXTL2);
        be32_write(img + OFF_L1_SIZE, 4);
        if (EXPECT_OK(&h))
                CHECK_EQ_INT(qcow2_l2_entries(&h), 4096);
}

static void expect_verdict(const Qcow2Header *h, int code, const char *needle) {
        FormatError err = {};
        int r = qcow2_header_verdict(h, &err);

        CHECK_EQ_INT(r, code);
        if (needle)
                CHECK(strstr(err.reason, needle) != NULL);
        if (needle && !strstr(err.reason, needle))
                fprintf(stderr, "  verdict reason: \"%s\"\n", err.reason);
}

static void test_crypt(void) {
        static Qcow2Header h;

        reset();
        be32_write(img + OFF_CRYPT, 3);
        EXPECT_FAIL(-EBADMSG, "unknown encryption method 3");
        reset();
        be32_write(img + OFF_CRYPT, UINT32_MAX);
        EXPECT_FAIL(-EBADMSG, "unknown encryption method 4294967295");

        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
        EXPECT_FAIL(-EBADMSG, "LUKS encryption without an encryption header extension");

        /* LUKS with its extension. */
        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
        put_end(img, put_crypto(img, EXT_START, 0x20000, 0x1000));
        if (EXPECT_OK(&h)) {
                CHECK(h.has_crypto_ext);
                CHECK_EQ_INT(h.crypt_method, QCOW2_CRYPT_LUKS);
                CHECK_EQ_INT(h.crypto_offset, 0x20000);
                CHECK_EQ_INT(h.crypto_length, 0x1000);
                CHECK_EQ_INT(h.n_extensions, 1);
                CHECK_EQ_INT(h.n_unknown_extensions, 0);
                /* Parsed, but no image vdisk can read without the key (catalogue: "valid: LUKS-encrypted"). */
                expect_verdict(&h, -EOPNOTSUPP, "encrypted images are not supported (LUKS encryption)");
        }

        /* AES is parsed; the verdict refuses it (catalogue: "header: crypt_method 1 (AES)"). */
        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_AES);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.crypt_method, QCOW2_CRYPT_AES);
                expect_verdict(&h, -EOPNOTSUPP, "encrypted images are not supported (AES encryption)");
        }
        /* And a plain image has no verdict against it. */
        reset();
        if (EXPECT_OK(&h))
                expect_verdict(&h, 0, NULL);

        reset();
        put_end(img, put_crypto(img, EXT_START, 0x20000, 0x1000));
        EXPECT_FAIL(-EBADMSG, "encryption header extension on an image not encrypted with LUKS");
        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_AES);
        put_end(img, put_crypto(img, EXT_START, 0x20000, 0x1000));
        EXPECT_FAIL(-EBADMSG, "encryption header extension on an image not encrypted with LUKS");

        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
        {
                uint8_t body[24] = {};
                be64_write(body, 0x20000);
                be64_write(body + 8, 0x1000);
                put_end(img, put_ext(img, EXT_START, QCOW2_EXT_CRYPTO, body, 8));
                EXPECT_FAIL(-EBADMSG, "encryption header extension has length 8, expected 16");
                reset();
                be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
                put_end(img, put_ext(img, EXT_START, QCOW2_EXT_CRYPTO, body, 24));
                EXPECT_FAIL(-EBADMSG, "encryption header extension has length 24, expected 16");
        }

        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
        put_end(img, put_crypto(img, EXT_START, 0x20000, 0));
        EXPECT_FAIL(-EBADMSG, "encryption header has zero length");
        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
        put_end(img, put_crypto(img, EXT_START, 0x20200, 0x1000));
        EXPECT_FAIL(-EBADMSG, "encryption header offset 0x20200 is not aligned");
        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
        put_end(img, put_crypto(img, EXT_START, 0, 0x1000));
        EXPECT_FAIL(-EBADMSG, "encryption header overlaps the header cluster");
        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
        put_end(img, put_crypto(img, EXT_START, 0x30000, 0x10001));
        EXPECT_FAIL(-EBADMSG, "encryption header (0x30000, 65537 bytes) extends past the end of the file");
        /* A length that would wrap offset + length. */
        reset();
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
        put_end(img, put_crypto(img, EXT_START, 0x20000, UINT64_MAX));
        EXPECT_FAIL(-EBADMSG, "encryption header lies beyond the largest qcow2 offset");
}

static void test_virtual_size(void) {
        static Qcow2Header h;
        Qcow2Limits lim = {};

        reset();
        be64_write(img + OFF_SIZE, GIB + 1);
        EXPECT_FAIL(-EBADMSG, "virtual size 1073741825 is not a multiple of 512");
        reset();
        be64_write(img + OFF_SIZE, GIB - 256);
        EXPECT_FAIL(-EBADMSG, "is not a multiple of 512");

        lim.max_virtual_size = GIB / 2;
        reset();
        EXPECT_FAIL_EX(img, sizeof(img), FILE_SIZE, &lim, -E2BIG, "virtual size 1073741824 is above the limit of 536870912");
        lim.max_virtual_size = GIB;
        reset();
        CHECK(EXPECT_OK_EX(img, sizeof(img), FILE_SIZE, &lim, &h));
        lim.max_virtual_size = GIB - 512;
        reset();
        EXPECT_FAIL_EX(img, sizeof(img), FILE_SIZE, &lim, -E2BIG, "above the limit of 1073741312");

        /* The default cap, with no limits and with zero limits. */
        reset();
        be64_write(img + OFF_SIZE, FORMAT_DEFAULT_MAX_VIRTUAL_SIZE + 512);
        be32_write(img + OFF_L1_SIZE, 131073);
        EXPECT_FAIL(-E2BIG, "virtual size 70368744178176 is above the limit of 70368744177664");
        lim.max_virtual_size = 0;
        EXPECT_FAIL_EX(img, sizeof(img), FILE_SIZE, &lim, -E2BIG, "above the limit of 70368744177664");
        reset();
        be64_write(img + OFF_SIZE, UINT64_MAX - 511);
        EXPECT_FAIL(-E2BIG, "above the limit");
        /* Exactly the default cap: 131072 L1 entries of 512 MiB each, a 1 MiB L1 table. */
        reset();
        be64_write(img + OFF_SIZE, FORMAT_DEFAULT_MAX_VIRTUAL_SIZE);
        be32_write(img + OFF_L1_SIZE, 131072);
        if (EXPECT_OK_EX(img, sizeof(img), L1_OFFSET + 131072 * 8, NULL, &h))
                CHECK(h.size == FORMAT_DEFAULT_MAX_VIRTUAL_SIZE);

        /* Size 0 with an empty L1 (no table at all) is valid. */
        reset();
        be64_write(img + OFF_SIZE, 0);
        be32_write(img + OFF_L1_SIZE, 0);
        be64_write(img + OFF_L1_OFFSET, 0);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.size, 0);
                CHECK_EQ_INT(h.l1_size, 0);
        }
}

static void test_l1(void) {
        static Qcow2Header h;

        reset();
        be32_write(img + OFF_L1_SIZE, 1);
        EXPECT_FAIL(-EBADMSG, "L1 table has 1 entries, the virtual size needs 2");
        reset();
        be32_write(img + OFF_L1_SIZE, 0);
        EXPECT_FAIL(-EBADMSG, "L1 table has 0 entries, the virtual size needs 2");
        /* One byte more than 512 MiB needs a second entry. */
        reset();
        be64_write(img + OFF_SIZE, GIB / 2 + 512);
        be32_write(img + OFF_L1_SIZE, 1);
        EXPECT_FAIL(-EBADMSG, "L1 table has 1 entries, the virtual size needs 2");
        reset();
        be64_write(img + OFF_SIZE, GIB / 2);
        be32_write(img + OFF_L1_SIZE, 1);
        CHECK(EXPECT_OK(&h));
        /* A larger L1 than needed is fine. */
        reset();
        be32_write(img + OFF_L1_SIZE, 100);
        CHECK(EXPECT_OK(&h));

        reset();
        be32_write(img + OFF_L1_SIZE, (uint32_t) (QCOW2_MAX_L1_BYTES / 8) + 1);
        EXPECT_FAIL(-E2BIG, "L1 table of 4194305 entries is larger than 32 MiB");
        reset();
        be32_write(img + OFF_L1_SIZE, UINT32_MAX);
        EXPECT_FAIL(-E2BIG, "L1 table of 4294967295 entries is larger than 32 MiB");
        /* Exactly 32 MiB is under the limit; here it does not fit in the file. */
        reset();
        be32_write(img + OFF_L1_SIZE, (uint32_t) (QCOW2_MAX_L1_BYTES / 8));
        EXPECT_FAIL(-EBADMSG, "L1 table (0x30000, 33554432 bytes) extends past the end of the file");

        reset();
        be64_write(img + OFF_L1_OFFSET, L1_OFFSET + 0x200);
        EXPECT_FAIL(-EBADMSG, "L1 table offset 0x30200 is not aligned to the cluster size");
        reset();
        be64_write(img + OFF_L1_OFFSET, L1_OFFSET + 1);
        EXPECT_FAIL(-EBADMSG, "L1 table offset 0x30001 is not aligned");
        reset();
        be64_write(img + OFF_L1_OFFSET, 0);
        EXPECT_FAIL(-EBADMSG, "L1 table overlaps the header cluster");
        reset();
        be64_write(img + OFF_L1_OFFSET, FILE_SIZE);
        EXPECT_FAIL(-EBADMSG, "L1 table (0x40000, 16 bytes) extends past the end of the file");
        /* Starts inside the file, ends past it. */
        reset();
        EXPECT_FAIL_EX(img, sizeof(img), L1_OFFSET + 8, NULL, -EBADMSG, "L1 table (0x30000, 16 bytes) extends past the end");
        reset();
        CHECK(EXPECT_OK_EX(img, sizeof(img), L1_OFFSET + 16, NULL, &h));
        reset();
        be64_write(img + OFF_L1_OFFSET, QCOW2_MAX_OFFSET);
        EXPECT_FAIL(-EBADMSG, "L1 table lies beyond the largest qcow2 offset");
        reset();
        be64_write(img + OFF_L1_OFFSET, UINT64_C(0xffffffffffff0000));
        EXPECT_FAIL(-EBADMSG, "L1 table lies beyond the largest qcow2 offset");
        /* Starts below 2^56, ends above it. */
        reset();
        be64_write(img + OFF_L1_OFFSET, QCOW2_MAX_OFFSET - CLUSTER);
        be32_write(img + OFF_L1_SIZE, 8193);
        EXPECT_FAIL(-EBADMSG, "L1 table lies beyond the largest qcow2 offset");
        /* Alignment is checked even for an empty table. */
        reset();
        be64_write(img + OFF_SIZE, 0);
        be32_write(img + OFF_L1_SIZE, 0);
        be64_write(img + OFF_L1_OFFSET, 0x1234);
        EXPECT_FAIL(-EBADMSG, "L1 table offset 0x1234 is not aligned");
}

static void test_refcount_table(void) {
        static Qcow2Header h;

        reset();
        be32_write(img + OFF_REFTABLE_CLUSTERS, 0);
        EXPECT_FAIL(-EBADMSG, "image has no refcount table");
        reset();
        be32_write(img + OFF_REFTABLE_CLUSTERS, 129);
        EXPECT_FAIL(-E2BIG, "refcount table of 129 clusters is larger than 8 MiB");
        reset();
        be32_write(img + OFF_REFTABLE_CLUSTERS, UINT32_MAX);
        EXPECT_FAIL(-E2BIG, "refcount table of 4294967295 clusters is larger than 8 MiB");
        /* 8 MiB exactly passes the limit, and then does not fit in the file. */
        reset();
        be32_write(img + OFF_REFTABLE_CLUSTERS, 128);
        EXPECT_FAIL(-EBADMSG, "refcount table (0x10000, 8388608 bytes) extends past the end of the file");
        /* With 512-byte clusters the limit is 16384 clusters. */
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 9);
        be64_write(img + OFF_SIZE, 32768);
        be32_write(img + OFF_L1_SIZE, 1);
        be32_write(img + OFF_REFTABLE_CLUSTERS, 16385);
        EXPECT_FAIL(-E2BIG, "refcount table of 16385 clusters is larger than 8 MiB");
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 9);
        be64_write(img + OFF_SIZE, 32768);
        be32_write(img + OFF_L1_SIZE, 1);
        be32_write(img + OFF_REFTABLE_CLUSTERS, 16384);
        EXPECT_FAIL(-EBADMSG, "refcount table (0x10000, 8388608 bytes) extends past the end of the file");
        /* ... and 200 of them (100 KiB) are fine, although 200 clusters of 64 KiB would not be. */
        reset();
        be32_write(img + OFF_CLUSTER_BITS, 9);
        be64_write(img + OFF_SIZE, 32768);
        be32_write(img + OFF_L1_SIZE, 1);
        be32_write(img + OFF_REFTABLE_CLUSTERS, 200);
        if (EXPECT_OK(&h))
                CHECK_EQ_INT(h.refcount_table_clusters, 200);

        reset();
        be64_write(img + OFF_REFTABLE_OFFSET, REFTABLE_OFFSET + 8);
        EXPECT_FAIL(-EBADMSG, "refcount table offset 0x10008 is not aligned to the cluster size");
        reset();
        be64_write(img + OFF_REFTABLE_OFFSET, 0);
        EXPECT_FAIL(-EBADMSG, "refcount table overlaps the header cluster");
        reset();
        be64_write(img + OFF_REFTABLE_OFFSET, FILE_SIZE);
        EXPECT_FAIL(-EBADMSG, "refcount table (0x40000, 65536 bytes) extends past the end of the file");
        reset();
        be64_write(img + OFF_REFTABLE_OFFSET, UINT64_C(1) << 60);
        EXPECT_FAIL(-EBADMSG, "refcount table lies beyond the largest qcow2 offset");
        reset();
        be64_write(img + OFF_REFTABLE_OFFSET, L1_OFFSET);
        be32_write(img + OFF_REFTABLE_CLUSTERS, 2);
        EXPECT_FAIL(-EBADMSG, "refcount table (0x30000, 131072 bytes) extends past");
        reset();
        be32_write(img + OFF_REFTABLE_CLUSTERS, 3);
        if (EXPECT_OK(&h))
                CHECK_EQ_INT(h.refcount_table_clusters, 3);
}

static void test_snapshots(void) {
        static Qcow2Header h;

        reset();
        be32_write(img + OFF_NB_SNAPSHOTS, QCOW2_MAX_SNAPSHOTS + 1);
        be64_write(img + OFF_SNAPSHOTS_OFFSET, 0x20000);
        EXPECT_FAIL(-E2BIG, "65537 snapshots are more than 65536");
        reset();
        be32_write(img + OFF_NB_SNAPSHOTS, UINT32_MAX);
        be64_write(img + OFF_SNAPSHOTS_OFFSET, 0x20000);
        EXPECT_FAIL(-E2BIG, "4294967295 snapshots are more than 65536");
        reset();
        be32_write(img + OFF_NB_SNAPSHOTS, QCOW2_MAX_SNAPSHOTS);
        be64_write(img + OFF_SNAPSHOTS_OFFSET, 0x20000);
        if (EXPECT_OK(&h))
                CHECK_EQ_INT(h.nb_snapshots, QCOW2_MAX_SNAPSHOTS);

        /* Misaligned offset, even with 0 snapshots (as QEMU). */
        reset();
        be64_write(img + OFF_SNAPSHOTS_OFFSET, 0x100);
        EXPECT_FAIL(-EBADMSG, "snapshot table offset 0x100 is not aligned to the cluster size");
        reset();
        be32_write(img + OFF_NB_SNAPSHOTS, 1);
        be64_write(img + OFF_SNAPSHOTS_OFFSET, 0x20008);
        EXPECT_FAIL(-EBADMSG, "snapshot table offset 0x20008 is not aligned");
        reset();
        be32_write(img + OFF_NB_SNAPSHOTS, 1);
        be64_write(img + OFF_SNAPSHOTS_OFFSET, 0);
        EXPECT_FAIL(-EBADMSG, "snapshot table overlaps the header cluster");
        reset();
        be32_write(img + OFF_NB_SNAPSHOTS, 1);
        be64_write(img + OFF_SNAPSHOTS_OFFSET, FILE_SIZE);
        EXPECT_FAIL(-EBADMSG, "snapshot table (0x40000, 40 bytes) extends past the end of the file");
        reset();
        be32_write(img + OFF_NB_SNAPSHOTS, 1);
        be64_write(img + OFF_SNAPSHOTS_OFFSET, QCOW2_MAX_OFFSET);
        EXPECT_FAIL(-EBADMSG, "snapshot table lies beyond the largest qcow2 offset");
        /* With no snapshots, an aligned offset anywhere is ignored. */
        reset();
        be64_write(img + OFF_SNAPSHOTS_OFFSET, UINT64_C(0xffffffffffff0000));
        CHECK(EXPECT_OK(&h));
        reset();
        be32_write(img + OFF_NB_SNAPSHOTS, 1);
        be64_write(img + OFF_SNAPSHOTS_OFFSET, 0x20000);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.nb_snapshots, 1);
                CHECK_EQ_INT(h.snapshots_offset, 0x20000);
        }
}

/* ---- backing file name ---- */

static void test_backing_name(void) {
        static Qcow2Header h;
        static char name[1100];
        size_t off;

        reset();
        be64_write(img + OFF_BACKING_OFFSET, 0x200);
        EXPECT_FAIL(-EBADMSG, "backing file name has an offset but no length");
        reset();
        be32_write(img + OFF_BACKING_SIZE, 10);
        EXPECT_FAIL(-EBADMSG, "backing file name has a length but no offset");

        memset(name, 'a', sizeof(name));
        reset();
        set_backing(img, 0x200, name, 1024);
        EXPECT_FAIL(-EBADMSG, "backing file name is 1024 bytes long, more than 1023");
        reset();
        set_backing(img, 0x200, name, 0);
        be32_write(img + OFF_BACKING_SIZE, UINT32_MAX);
        EXPECT_FAIL(-EBADMSG, "backing file name is 4294967295 bytes long, more than 1023");
        reset();
        set_backing(img, 0x200, name, 1023);
        if (EXPECT_OK(&h)) {
                CHECK(h.has_backing_file);
                CHECK_EQ_INT(strlen(h.backing_file), 1023);
                CHECK_EQ_INT(h.backing_file[0], 'a');
        }

        /* Outside cluster 0. */
        reset();
        set_backing(img, 0, NULL, 0);
        be64_write(img + OFF_BACKING_OFFSET, CLUSTER);
        be32_write(img + OFF_BACKING_SIZE, 10);
        EXPECT_FAIL(-EBADMSG, "backing file name lies outside cluster 0");
        reset();
        set_backing(img, CLUSTER - 16, name, 16);
        be32_write(img + OFF_BACKING_SIZE, 17);
        EXPECT_FAIL(-EBADMSG, "backing file name lies outside cluster 0");
        reset();
        be64_write(img + OFF_BACKING_OFFSET, UINT64_C(0xffffffffffffff00));
        be32_write(img + OFF_BACKING_SIZE, 0x200);
        EXPECT_FAIL(-EBADMSG, "backing file name lies outside cluster 0");
        /* The last bytes of cluster 0 are fine. */
        reset();
        set_backing(img, CLUSTER - 16, "0123456789abcdef", 16);
        if (EXPECT_OK(&h))
                CHECK(strcmp(h.backing_file, "0123456789abcdef") == 0);

        /* Overlapping the header. */
        reset();
        set_backing(img, 0, NULL, 0);
        be64_write(img + OFF_BACKING_OFFSET, 100);
        be32_write(img + OFF_BACKING_SIZE, 8);
        EXPECT_FAIL(-EBADMSG, "backing file name overlaps the header");
        reset();
        be64_write(img + OFF_BACKING_OFFSET, 104);
        be32_write(img + OFF_BACKING_SIZE, 8);
        EXPECT_FAIL(-EBADMSG, "backing file name overlaps the header");
        reset();
        be64_write(img + OFF_BACKING_OFFSET, 1);
        be32_write(img + OFF_BACKING_SIZE, 1);
        EXPECT_FAIL(-EBADMSG, "backing file name overlaps the header");

        /*
         * Overlapping the extensions: the extension area ends where the name starts, so a name placed
         * over the extensions leaves them without an end marker, or cuts one in two.
         */
        reset();
        off = put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "qcow2", 5);
        put_end(img, off);
        set_backing(img, off, "base", 4); /* over the end marker: the area ends with the extension, as QEMU reads it */
        if (EXPECT_OK(&h)) {
                CHECK(strcmp(h.backing_file, "base") == 0);
                CHECK(h.has_backing_format);
                CHECK_EQ_INT(h.extensions_end, off);
        }
        reset();
        off = put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "qcow2", 5);
        put_end(img, off);
        be64_write(img + OFF_BACKING_OFFSET, EXT_START + 8); /* inside the backing-format body */
        be32_write(img + OFF_BACKING_SIZE, 5);
        EXPECT_FAIL(-EBADMSG, "header extension 0xe2792aca (5 bytes) extends past the header area");
        reset();
        set_backing(img, EXT_START + 4, "base", 4); /* inside the end marker */
        EXPECT_FAIL(-EBADMSG, "not terminated by an end marker");
        /* Right after the end marker is fine: the padding that follows is not needed. */
        reset();
        set_backing(img, EXT_START + 8, "base", 4);
        if (EXPECT_OK(&h)) {
                CHECK(strcmp(h.backing_file, "base") == 0);
                CHECK_EQ_INT(h.extensions_end, EXT_START + 8);
        }

        /* Control characters, NUL and DEL are refused, and the name is not quoted. */
        reset();
        set_backing(img, 0x200, "abcd\x01xyz", 8);
        EXPECT_FAIL(-EBADMSG, "backing file name contains a control character at byte 4");
        reset();
        set_backing(img, 0x200, "abcd\0xyz", 8);
        EXPECT_FAIL(-EBADMSG, "backing file name contains a control character at byte 4");
        reset();
        set_backing(img, 0x200, "abcd\nxyz", 8);
        EXPECT_FAIL(-EBADMSG, "control character at byte 4");
        reset();
        set_backing(img, 0x200, "abcdxyz\x7f", 8);
        EXPECT_FAIL(-EBADMSG, "control character at byte 7");
        reset();
        set_backing(img, 0x200, "\x1f", 1);
        EXPECT_FAIL(-EBADMSG, "control character at byte 0");
        {
                FormatError err;
                reset();
                set_backing(img, 0x200, "abcd\0xyz", 8);
                CHECK_EQ_INT(parse(img, sizeof(img), FILE_SIZE, NULL, &h, &err), -EBADMSG);
                CHECK(!strstr(err.reason, "abcd"));
                CHECK(!strstr(err.reason, "xyz"));
        }
        /* Bytes ≥ 0x80 (UTF-8) are allowed. */
        reset();
        set_backing(img, 0x200, "b\xc3\xa4se", 5);
        if (EXPECT_OK(&h))
                CHECK(strcmp(h.backing_file, "b\xc3\xa4se") == 0);

        /* A raw external data file excludes a backing file. */
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
        be64_write(img + OFF_AUTOCLEAR, QCOW2_AUTOCLEAR_DATA_FILE_RAW);
        set_backing(img, 0x200, "base", 4);
        EXPECT_FAIL(-EBADMSG, "an image with a raw external data file cannot have a backing file");
        /* ... a non-raw one does not. */
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
        set_backing(img, 0x200, "base", 4);
        CHECK(EXPECT_OK(&h));
}

static void test_backing_positive(void) {
        static Qcow2Header h;
        size_t off;

        /* What qemu-img create -F qcow2 -b base.qcow2 writes: format ext, end marker, then the name. */
        reset();
        off = put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "qcow2", 5);
        off = put_end(img, off);
        /* Bytes after the name (within the cluster) must not leak into the copy. */
        memcpy(img + off, "base.qcow2XYZ", 13);
        be64_write(img + OFF_BACKING_OFFSET, off);
        be32_write(img + OFF_BACKING_SIZE, 10);
        if (EXPECT_OK(&h)) {
                CHECK(h.has_backing_file);
                CHECK(h.has_backing_format);
                CHECK(strcmp(h.backing_file, "base.qcow2") == 0);
                CHECK(strcmp(h.backing_format, "qcow2") == 0);
                CHECK_EQ_INT(h.backing_file_offset, off);
                CHECK_EQ_INT(h.backing_file_size, 10);
                CHECK_EQ_INT(h.extensions_end, off);
                CHECK_EQ_INT(h.n_extensions, 1);
                CHECK_EQ_INT(h.n_unknown_extensions, 0);
        }

        /* The format name's padding may hold any bytes; they are not part of the name. */
        reset();
        off = put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
        memset(img + EXT_START + 8 + 3, 0xee, 5);
        put_end(img, off);
        if (EXPECT_OK(&h)) {
                CHECK(!h.has_backing_file);
                CHECK(strcmp(h.backing_format, "raw") == 0);
        }

        /* 15 bytes is the longest format name. */
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "abcdefghijklmno", 15));
        if (EXPECT_OK(&h))
                CHECK(strcmp(h.backing_format, "abcdefghijklmno") == 0);
}

/* ---- extensions ---- */

static void test_extension_bounds(void) {
        static Qcow2Header h;
        size_t off;

        /* A length that would wrap a 32-bit offset, or run past the cluster. */
        reset();
        put_ext(img, EXT_START, EXT_UNKNOWN, NULL, 0);
        be32_write(img + EXT_START + 4, UINT32_MAX);
        EXPECT_FAIL(-EBADMSG, "header extension 0x12345678 (4294967295 bytes) extends past the header area");
        reset();
        be32_write(img + EXT_START, EXT_UNKNOWN);
        be32_write(img + EXT_START + 4, CLUSTER - EXT_START - 8 + 1);
        EXPECT_FAIL(-EBADMSG, "header extension 0x12345678 (65417 bytes) extends past the header area");
        /* Second extension's length wraps. */
        reset();
        off = put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "qcow2", 5);
        be32_write(img + off, QCOW2_EXT_FEATURE_TABLE);
        be32_write(img + off + 4, UINT32_MAX - 6);
        EXPECT_FAIL(-EBADMSG, "header extension 0x6803f857 (4294967289 bytes) extends past the header area");

        /* A body that fits but whose padding runs past the end (the area ends at an odd backing offset). */
        reset();
        set_backing(img, 0x205, "base", 4);
        be32_write(img + EXT_START, EXT_UNKNOWN);
        be32_write(img + EXT_START + 4, 0x205 - EXT_START - 8);
        EXPECT_FAIL(-EBADMSG, "padding of header extension 0x12345678 extends past the header area");

        /* Missing end marker: every byte after the header non-zero. */
        reset();
        memset(img + EXT_START, 0x01, CLUSTER - EXT_START);
        EXPECT_FAIL(-EBADMSG, "header area");
        reset();
        memset(img + EXT_START, 0xff, CLUSTER - EXT_START);
        EXPECT_FAIL(-EBADMSG, "header area");
        /*
         * An extension filling cluster 0 exactly needs no end marker: QEMU stops where the area ends
         * (as with header_length equal to the cluster size, catalogue "header: header_length 65536").
         */
        reset();
        be32_write(img + EXT_START, EXT_UNKNOWN);
        be32_write(img + EXT_START + 4, CLUSTER - EXT_START - 8);
        memset(img + EXT_START + 8, 0x01, CLUSTER - EXT_START - 8);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.n_unknown_extensions, 1);
                CHECK_EQ_INT(h.extensions_end, CLUSTER);
        }
        /* header_length equal to the cluster size: no room for extensions, none read. */
        reset();
        be32_write(img + OFF_HEADER_LENGTH, CLUSTER);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.n_extensions, 0);
                CHECK_EQ_INT(h.extensions_end, CLUSTER);
        }
        /* Four bytes of room: not enough for a marker, and not the end either. */
        reset();
        be32_write(img + EXT_START, EXT_UNKNOWN);
        be32_write(img + EXT_START + 4, CLUSTER - EXT_START - 16);
        memset(img + EXT_START + 8, 0x01, CLUSTER - EXT_START - 16);
        be32_write(img + OFF_BACKING_OFFSET + 4, CLUSTER - 4);
        be32_write(img + OFF_BACKING_SIZE, 4);
        EXPECT_FAIL(-EBADMSG, "header extensions are not terminated by an end marker inside the header area");
        /* One end-marker's room less: the marker fits exactly in the last 8 bytes. */
        reset();
        be32_write(img + EXT_START, EXT_UNKNOWN);
        be32_write(img + EXT_START + 4, CLUSTER - EXT_START - 16);
        memset(img + EXT_START + 8, 0x01, CLUSTER - EXT_START - 16);
        put_end(img, CLUSTER - 8);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.extensions_end, CLUSTER);
                CHECK_EQ_INT(h.n_unknown_extensions, 1);
        }
        /* Fewer than 8 bytes left for the end marker. */
        reset();
        set_backing(img, EXT_START + 4, "base", 4);
        EXPECT_FAIL(-EBADMSG, "not terminated by an end marker");

        reset();
        be32_write(img + EXT_START, QCOW2_EXT_END);
        be32_write(img + EXT_START + 4, 8);
        EXPECT_FAIL(-EBADMSG, "end-of-extensions marker has non-zero length");
        reset();
        be32_write(img + EXT_START + 4, UINT32_MAX);
        EXPECT_FAIL(-EBADMSG, "end-of-extensions marker has non-zero length");
}

static void test_extension_count(void) {
        static Qcow2Header h;
        size_t off;

        reset();
        off = put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "qcow2", 5);
        off = put_ext(img, off, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
        put_end(img, off);
        EXPECT_FAIL(-EBADMSG, "header extension 0xe2792aca appears twice");
        reset();
        off = put_ext(img, EXT_START, EXT_UNKNOWN, "x", 1);
        off = put_ext(img, off, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
        off = put_ext(img, off, EXT_UNKNOWN, "y", 1);
        put_end(img, off);
        EXPECT_FAIL(-EBADMSG, "header extension 0x12345678 appears twice");
        reset();
        off = put_crypto(img, EXT_START, 0x20000, 0x1000);
        off = put_crypto(img, off, 0x20000, 0x1000);
        put_end(img, off);
        be32_write(img + OFF_CRYPT, QCOW2_CRYPT_LUKS);
        EXPECT_FAIL(-EBADMSG, "header extension 0x0537be77 appears twice");

        /* 64 extensions are accepted, 65 are not. */
        reset();
        off = EXT_START;
        for (uint32_t i = 0; i < QCOW2_MAX_EXTENSIONS; i++)
                off = put_ext(img, off, 0x1000 + i, NULL, 0);
        put_end(img, off);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.n_extensions, QCOW2_MAX_EXTENSIONS);
                CHECK_EQ_INT(h.n_unknown_extensions, QCOW2_MAX_EXTENSIONS);
        }
        reset();
        off = EXT_START;
        for (uint32_t i = 0; i < QCOW2_MAX_EXTENSIONS + 1; i++)
                off = put_ext(img, off, 0x1000 + i, NULL, 0);
        put_end(img, off);
        EXPECT_FAIL(-E2BIG, "more than 64 header extensions");
        /* Many more than 64: still E2BIG, no overflow of the bookkeeping. */
        reset();
        off = EXT_START;
        for (uint32_t i = 0; i < 1000; i++)
                off = put_ext(img, off, 0x1000 + i, NULL, 0);
        put_end(img, off);
        EXPECT_FAIL(-E2BIG, "more than 64 header extensions");

        /* Unknown extensions are skipped, with their bodies. */
        reset();
        off = put_ext(img, EXT_START, EXT_UNKNOWN, "\0\0\0\0\0\0\0\0\xff\xff\xff\xff", 12);
        off = put_ext(img, off, 0xabcdef01, NULL, 0);
        off = put_ext(img, off, QCOW2_EXT_BACKING_FORMAT, "raw", 3);
        off = put_end(img, off);
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(h.n_unknown_extensions, 2);
                CHECK_EQ_INT(h.n_extensions, 3);
                CHECK(h.has_backing_format);
                CHECK_EQ_INT(h.extensions_end, off);
        }
}

static void test_backing_format_ext(void) {
        static char longname[32];

        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, NULL, 0));
        EXPECT_FAIL(-EBADMSG, "backing format extension is empty");
        memset(longname, 'q', sizeof(longname));
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, longname, 16));
        EXPECT_FAIL(-EBADMSG, "backing format name is 16 bytes long, more than 15");
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, longname, 32));
        EXPECT_FAIL(-EBADMSG, "backing format name is 32 bytes long, more than 15");
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "qc\0w2", 5));
        EXPECT_FAIL(-EBADMSG, "backing format name contains a control character at byte 2");
}

static void test_feature_table(void) {
        static Qcow2Header h;
        static const char *const names[8] = {
                "dirty bit", "corrupt bit", "external data file", "compression type",
                "extended L2 entries", "lazy refcounts", "bitmaps", "raw external data",
        };
        static const uint8_t types[8] = { 0, 0, 0, 0, 0, 1, 2, 2 };
        static const uint8_t bits[8] = { 0, 1, 2, 3, 4, 0, 0, 1 };
        uint8_t table[8 * QCOW2_FEATURE_NAME_ENTRY_SIZE];

        memset(table, 0, sizeof(table));
        for (size_t i = 0; i < 8; i++) {
                uint8_t *e = table + i * QCOW2_FEATURE_NAME_ENTRY_SIZE;
                e[0] = types[i];
                e[1] = bits[i];
                memcpy(e + 2, names[i], strlen(names[i]));
        }
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table)));
        if (EXPECT_OK(&h)) {
                CHECK(h.has_feature_table);
                CHECK_EQ_INT(h.n_feature_names, 8);
                CHECK_EQ_INT(h.n_unknown_extensions, 0);
                CHECK_EQ_INT(h.extensions_end, EXT_START + 8 + sizeof(table) + 8);
        }
        /* An empty table is a table of 0 names. */
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_FEATURE_TABLE, NULL, 0));
        if (EXPECT_OK(&h)) {
                CHECK(h.has_feature_table);
                CHECK_EQ_INT(h.n_feature_names, 0);
        }

        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_FEATURE_TABLE, table, 47));
        EXPECT_FAIL(-EBADMSG, "feature name table length 47 is not a multiple of 48");
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_FEATURE_TABLE, table, 49));
        EXPECT_FAIL(-EBADMSG, "feature name table length 49 is not a multiple of 48");

        table[0] = 3;
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table)));
        EXPECT_FAIL(-EBADMSG, "feature name table entry 0 has unknown type 3");
        table[0] = 0;
        table[QCOW2_FEATURE_NAME_ENTRY_SIZE * 7 + 1] = 64;
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table)));
        EXPECT_FAIL(-EBADMSG, "feature name table entry 7 names bit 64");
        table[QCOW2_FEATURE_NAME_ENTRY_SIZE * 7 + 1] = 63;
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_FEATURE_TABLE, table, sizeof(table)));
        CHECK(EXPECT_OK(&h));
}

static void set_bitmaps_autoclear(void) {
        be64_write(img + OFF_AUTOCLEAR, QCOW2_AUTOCLEAR_BITMAPS);
}

static void test_bitmaps_ext(void) {
        static Qcow2Header h;
        uint8_t body[32] = {};

        /* Valid, consistent bitmaps. */
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 1, 0, 64, 0x20000));
        if (EXPECT_OK(&h)) {
                CHECK(h.has_bitmaps_ext);
                CHECK_EQ_INT(h.nb_bitmaps, 1);
                CHECK_EQ_INT(h.bitmap_directory_size, 64);
                CHECK_EQ_INT(h.bitmap_directory_offset, 0x20000);
        }

        reset();
        set_bitmaps_autoclear();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_BITMAPS, body, 16));
        EXPECT_FAIL(-EBADMSG, "bitmaps extension has length 16, expected 24");
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_BITMAPS, body, 32));
        EXPECT_FAIL(-EBADMSG, "bitmaps extension has length 32, expected 24");
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 1, 1, 64, 0x20000));
        EXPECT_FAIL(-EBADMSG, "bitmaps extension has non-zero reserved field");
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 0, 0, 64, 0x20000));
        EXPECT_FAIL(-EBADMSG, "bitmaps extension with zero bitmaps");
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, QCOW2_MAX_BITMAPS + 1, 0, 64, 0x20000));
        EXPECT_FAIL(-E2BIG, "65536 bitmaps are more than 65535");
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, QCOW2_MAX_BITMAPS, 0, 64, 0x20000));
        CHECK(EXPECT_OK(&h));
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 1, 0, 0, 0x20000));
        EXPECT_FAIL(-EBADMSG, "bitmap directory has zero length");
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 1, 0, QCOW2_MAX_BITMAP_DIRECTORY_BYTES + 1, 0x20000));
        EXPECT_FAIL(-E2BIG, "bitmap directory of 67107841 bytes is too large");
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 1, 0, UINT64_MAX, 0x20000));
        EXPECT_FAIL(-E2BIG, "bitmap directory of 18446744073709551615 bytes is too large");
        /* The largest directory passes the limit, then has to fit in the file. */
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 1, 0, QCOW2_MAX_BITMAP_DIRECTORY_BYTES, 0x20000));
        EXPECT_FAIL(-EBADMSG, "bitmap directory (0x20000, 67107840 bytes) extends past the end of the file");
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 1, 0, 64, 0x20008));
        EXPECT_FAIL(-EBADMSG, "bitmap directory offset 0x20008 is not aligned to the cluster size");
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 1, 0, 64, 0));
        EXPECT_FAIL(-EBADMSG, "bitmap directory overlaps the header cluster");
        reset();
        set_bitmaps_autoclear();
        put_end(img, put_bitmaps(img, EXT_START, 1, 0, 64, QCOW2_MAX_OFFSET));
        EXPECT_FAIL(-EBADMSG, "bitmap directory lies beyond the largest qcow2 offset");

        /* Without autoclear bit 0 the bitmaps are inconsistent and ignored: the contents are not checked. */
        reset();
        put_end(img, put_bitmaps(img, EXT_START, 0, 0, 0, 0x20008));
        if (EXPECT_OK(&h)) {
                CHECK(h.has_bitmaps_ext);
                CHECK_EQ_INT(h.nb_bitmaps, 0);
        }
        reset();
        put_end(img, put_bitmaps(img, EXT_START, UINT32_MAX, 0, UINT64_MAX, UINT64_MAX));
        if (EXPECT_OK(&h)) {
                CHECK(h.has_bitmaps_ext);
                CHECK(h.bitmap_directory_size == UINT64_MAX);
        }
        /* Bit 0 without the extension is harmless. */
        reset();
        set_bitmaps_autoclear();
        if (EXPECT_OK(&h))
                CHECK(!h.has_bitmaps_ext);
}

static void test_data_file(void) {
        static Qcow2Header h;
        size_t off;

        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_DATA_FILE, "data.raw", 8));
        EXPECT_FAIL(-EBADMSG, "external data file name present but the external data file bit is not set");
        reset();
        be64_write(img + OFF_AUTOCLEAR, QCOW2_AUTOCLEAR_DATA_FILE_RAW);
        EXPECT_FAIL(-EBADMSG, "raw external data bit set without an external data file");
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_DATA_FILE, NULL, 0));
        EXPECT_FAIL(-EBADMSG, "external data file extension is empty");
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_DATA_FILE, "data\tfile", 9));
        EXPECT_FAIL(-EBADMSG, "external data file name contains a control character at byte 4");

        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
        be64_write(img + OFF_AUTOCLEAR, QCOW2_AUTOCLEAR_DATA_FILE_RAW);
        off = put_ext(img, EXT_START, QCOW2_EXT_DATA_FILE, "data.qcow", 9);
        memcpy(img + EXT_START + 8 + 9, "JUNK", 4); /* in the padding: not part of the name */
        put_end(img, off);
        if (EXPECT_OK(&h)) {
                CHECK(h.has_data_file_name);
                CHECK(strcmp(h.data_file, "data.qcow") == 0);
                CHECK_EQ_INT(h.incompatible_features, QCOW2_INCOMPAT_DATA_FILE);
                CHECK_EQ_INT(h.autoclear_features, QCOW2_AUTOCLEAR_DATA_FILE_RAW);
                CHECK_EQ_INT(h.n_unknown_extensions, 0);
        }
        /* The bit without a name: parsed (the name then comes from the record). */
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
        if (EXPECT_OK(&h))
                CHECK(!h.has_data_file_name);
}

/* No reason ever quotes bytes of a name stored in the image. */
static void test_no_secret_in_reason(void) {
        static Qcow2Header h;
        static char big[1100];
        FormatError err;
        int r;

        reset();
        set_backing(img, 0x200, "SECRET\x01", 7);
        r = parse(img, sizeof(img), FILE_SIZE, NULL, &h, &err);
        CHECK_EQ_INT(r, -EBADMSG);
        CHECK_CONTAINS(err.reason, "control character at byte 6");
        CHECK(!strstr(err.reason, "SECRET"));

        memset(big, 'x', sizeof(big));
        memcpy(big, "SECRET", 6);
        memcpy(big + 1000, "SECRET", 6);
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_DATA_FILE, big, sizeof(big)));
        r = parse(img, sizeof(img), FILE_SIZE, NULL, &h, &err);
        CHECK_EQ_INT(r, -EBADMSG);
        CHECK_EQ_INT(err.code, -EBADMSG);
        CHECK_CONTAINS(err.reason, "external data file name is 1100 bytes long, more than 1023");
        CHECK(!strstr(err.reason, "SECRET"));
        /* One byte over the limit: refused, not truncated nor written past the buffer. */
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_DATA_FILE, big, QCOW2_MAX_DATA_FILE_NAME + 1));
        r = parse(img, sizeof(img), FILE_SIZE, NULL, &h, &err);
        CHECK_EQ_INT(r, -EBADMSG);
        CHECK_CONTAINS(err.reason, "external data file name is 1024 bytes long, more than 1023");
        CHECK(!strstr(err.reason, "SECRET"));
        /* The longest accepted data-file name. */
        reset();
        be64_write(img + OFF_INCOMPAT, QCOW2_INCOMPAT_DATA_FILE);
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_DATA_FILE, big, QCOW2_MAX_DATA_FILE_NAME));
        if (EXPECT_OK(&h)) {
                CHECK_EQ_INT(strlen(h.data_file), QCOW2_MAX_DATA_FILE_NAME);
                CHECK(memcmp(h.data_file, big, QCOW2_MAX_DATA_FILE_NAME) == 0);
        }

        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "SECRET\x02", 7));
        r = parse(img, sizeof(img), FILE_SIZE, NULL, &h, &err);
        CHECK_EQ_INT(r, -EBADMSG);
        CHECK(!strstr(err.reason, "SECRET"));
        reset();
        put_end(img, put_ext(img, EXT_START, QCOW2_EXT_BACKING_FORMAT, "SECRETSECRETSECRET", 18));
        r = parse(img, sizeof(img), FILE_SIZE, NULL, &h, &err);
        CHECK_EQ_INT(r, -EBADMSG);
        CHECK(!strstr(err.reason, "SECRET"));
        reset();
        memcpy(big, "SECRET", 6);
        set_backing(img, 0x200, big, 1024);
        r = parse(img, sizeof(img), FILE_SIZE, NULL, &h, &err);
        CHECK_EQ_INT(r, -EBADMSG);
        CHECK(!strstr(err.reason, "SECRET"));
}

/* 512-byte clusters with a buffer of exactly cluster 0: ASan proves the scan stays inside it. */
static void test_exact_buffer(void) {
        static Qcow2Header h;
        uint8_t *b;

        b = malloc(512);
        CHECK(b);
        if (!b)
                return;
        build_v3(b, 512);
        be32_write(b + OFF_CLUSTER_BITS, 9);
        be64_write(b + OFF_SIZE, 32768);       /* one L2 table: 32 KiB */
        be32_write(b + OFF_L1_SIZE, 1);
        be64_write(b + OFF_REFTABLE_OFFSET, 512);
        be64_write(b + OFF_L1_OFFSET, 1024);
        if (EXPECT_OK_EX(b, 512, 2048, NULL, &h))
                CHECK_EQ_INT(h.cluster_size, 512);

        /* End marker in the very last 8 bytes. */
        be32_write(b + EXT_START, EXT_UNKNOWN);
        be32_write(b + EXT_START + 4, 512 - EXT_START - 16);
        memset(b + EXT_START + 8, 0x33, 512 - EXT_START - 16);
        put_end(b, 504);
        CHECK(EXPECT_OK_EX(b, 512, 2048, NULL, &h));
        /* No room for it: the extension ends the area, which QEMU reads the same way. */
        be32_write(b + EXT_START + 4, 512 - EXT_START - 8);
        memset(b + 504, 0x33, 8);
        CHECK(EXPECT_OK_EX(b, 512, 2048, NULL, &h));
        be32_write(b + EXT_START + 4, UINT32_MAX);
        EXPECT_FAIL_EX(b, 512, 2048, NULL, -EBADMSG, "extends past the header area");
        memset(b + EXT_START, 0xff, 512 - EXT_START);
        EXPECT_FAIL_EX(b, 512, 2048, NULL, -EBADMSG, "header area");

        /* A backing name ending on the last byte of the buffer. */
        memset(b + EXT_START, 0, 512 - EXT_START);
        set_backing(b, 500, "base.qcow2xx", 12);
        if (EXPECT_OK_EX(b, 512, 2048, NULL, &h))
                CHECK(strcmp(h.backing_file, "base.qcow2xx") == 0);
        be32_write(b + OFF_BACKING_SIZE, 13);
        EXPECT_FAIL_EX(b, 512, 2048, NULL, -EBADMSG, "backing file name lies outside cluster 0");
        free(b);
}

static void test_header_read(void) {
        static Qcow2Header h;
        FormatError err = {};
        int fd, p[2];

        fd = memfd_create("test-qcow2-header", MFD_CLOEXEC);
        CHECK(fd >= 0);
        if (fd >= 0) {
                reset();
                CHECK_EQ_INT(pwrite(fd, img, sizeof(img), 0), (long long) sizeof(img));
                CHECK_EQ_INT(ftruncate(fd, (off_t) FILE_SIZE), 0);
                CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), 0);
                CHECK_EQ_INT(h.file_size, FILE_SIZE);
                CHECK_EQ_INT(h.size, GIB);
                /* Truncated to a bare header: the tables are past the end. */
                CHECK_EQ_INT(ftruncate(fd, 512), 0);
                memset(&err, 0, sizeof(err));
                CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), -EBADMSG);
                CHECK_CONTAINS(err.reason, "extends past the end of the file");
                CHECK_EQ_INT(ftruncate(fd, 0), 0);
                memset(&err, 0, sizeof(err));
                CHECK_EQ_INT(qcow2_header_read(fd, NULL, &h, &err), -EBADMSG);
                CHECK_CONTAINS(err.reason, "too short");
                close(fd);
        }
        CHECK_EQ_INT(pipe2(p, O_CLOEXEC), 0);
        memset(&err, 0, sizeof(err));
        CHECK_EQ_INT(qcow2_header_read(p[0], NULL, &h, &err), -EBADF);
        CHECK_CONTAINS(err.reason, "not a regular file");
        close(p[0]);
        close(p[1]);
}

/* ---- helpers ---- */

static void test_l1_entries_for(void) {
        uint64_t n;

        n = 99;
        CHECK(qcow2_l1_entries_for(GIB, 16, false, &n));
        CHECK_EQ_INT(n, 2);
        CHECK(qcow2_l1_entries_for(GIB, 16, true, &n));
        CHECK_EQ_INT(n, 4);
        CHECK(qcow2_l1_entries_for(GIB, 9, false, &n));
        CHECK_EQ_INT(n, 32768);
        CHECK(qcow2_l1_entries_for(GIB, 14, true, &n));
        CHECK_EQ_INT(n, 64);
        CHECK(qcow2_l1_entries_for(0, 16, false, &n));
        CHECK_EQ_INT(n, 0);
        CHECK(qcow2_l1_entries_for(1, 16, false, &n));
        CHECK_EQ_INT(n, 1);
        CHECK(qcow2_l1_entries_for(GIB / 2, 16, false, &n));
        CHECK_EQ_INT(n, 1);
        CHECK(qcow2_l1_entries_for(GIB / 2 + 1, 16, false, &n));
        CHECK_EQ_INT(n, 2);
        CHECK(qcow2_l1_entries_for(FORMAT_DEFAULT_MAX_VIRTUAL_SIZE, 16, false, &n));
        CHECK_EQ_INT(n, 131072);
        /* No overflow at the top of the range. */
        CHECK(qcow2_l1_entries_for(UINT64_MAX, 21, false, &n));
        CHECK_EQ_INT(n, UINT64_C(1) << 25);
        CHECK(qcow2_l1_entries_for(UINT64_MAX, 9, false, &n));
        CHECK_EQ_INT(n, UINT64_C(1) << 49);
        CHECK(qcow2_l1_entries_for(UINT64_MAX, 9, true, &n));
        CHECK_EQ_INT(n, UINT64_C(1) << 50);
        CHECK(qcow2_l1_entries_for(UINT64_MAX, 21, true, &n));
        CHECK_EQ_INT(n, UINT64_C(1) << 26);

        /* Invalid cluster sizes fail and leave the result alone. */
        n = 77;
        CHECK(!qcow2_l1_entries_for(GIB, 8, false, &n));
        CHECK(!qcow2_l1_entries_for(GIB, 22, false, &n));
        CHECK(!qcow2_l1_entries_for(GIB, 0, false, &n));
        CHECK(!qcow2_l1_entries_for(GIB, 0, true, &n));
        CHECK(!qcow2_l1_entries_for(GIB, 3, true, &n));
        CHECK(!qcow2_l1_entries_for(GIB, 64, false, &n));
        CHECK(!qcow2_l1_entries_for(GIB, UINT32_MAX, true, &n));
        CHECK_EQ_INT(n, 77);
}

static void test_name_is_valid(void) {
        static char name[1025];

        CHECK(qcow2_name_is_valid("base.qcow2", QCOW2_MAX_BACKING_NAME));
        CHECK(qcow2_name_is_valid("a", 1));
        CHECK(qcow2_name_is_valid("b\xc3\xa4se", 15));
        CHECK(qcow2_name_is_valid("with space and ~!@#", 100));
        CHECK(!qcow2_name_is_valid(NULL, 100));
        CHECK(!qcow2_name_is_valid("", 100));
        CHECK(!qcow2_name_is_valid("ab", 1));
        CHECK(!qcow2_name_is_valid("a\nb", 100));
        CHECK(!qcow2_name_is_valid("a\tb", 100));
        CHECK(!qcow2_name_is_valid("\x01", 100));
        CHECK(!qcow2_name_is_valid("\x1f", 100));
        CHECK(!qcow2_name_is_valid("abc\x7f", 100));
        CHECK(!qcow2_name_is_valid("x", 0));

        memset(name, 'n', 1023);
        name[1023] = 0;
        CHECK(qcow2_name_is_valid(name, QCOW2_MAX_BACKING_NAME));
        name[1023] = 'n';
        name[1024] = 0;
        CHECK(!qcow2_name_is_valid(name, QCOW2_MAX_BACKING_NAME));
        CHECK(qcow2_name_is_valid(name, 1024));
        /* Format names: at most 15 bytes. */
        CHECK(qcow2_name_is_valid("abcdefghijklmno", QCOW2_MAX_FORMAT_NAME));
        CHECK(!qcow2_name_is_valid("abcdefghijklmnop", QCOW2_MAX_FORMAT_NAME));
}

int main(void) {
        test_valid_v3();
        test_short_and_magic();
        test_version();
        test_cluster_bits();
        test_header_length();
        test_padding();
        test_features();
        test_compression();
        test_extended_l2();
        test_crypt();
        test_virtual_size();
        test_l1();
        test_refcount_table();
        test_snapshots();
        test_backing_name();
        test_backing_positive();
        test_extension_bounds();
        test_extension_count();
        test_backing_format_ext();
        test_feature_table();
        test_bitmaps_ext();
        test_data_file();
        test_no_secret_in_reason();
        test_exact_buffer();
        test_header_read();
        test_l1_entries_for();
        test_name_is_valid();

        TEST_MAIN_END();
}
