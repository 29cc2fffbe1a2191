/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"

#define QCOW2_MAGIC UINT32_C(0x514649fb)
#define QCOW2_V2_HEADER_LENGTH 72U
#define QCOW2_V3_MIN_HEADER_LENGTH 104U
#define QCOW2_V3_HEADER_LENGTH 112U

#define QCOW2_MIN_CLUSTER_BITS 9U
#define QCOW2_MAX_CLUSTER_BITS 21U
#define QCOW2_MIN_EXTL2_CLUSTER_BITS 14U
#define QCOW2_MAX_CLUSTER_SIZE (UINT64_C(1) << QCOW2_MAX_CLUSTER_BITS)

/* QEMU's open-time limits (block/qcow2.h), kept identical so that no image QEMU refuses passes. */
#define QCOW2_MAX_L1_BYTES (UINT64_C(32) << 20)
#define QCOW2_MAX_REFTABLE_BYTES (UINT64_C(8) << 20)
#define QCOW2_MAX_SNAPSHOTS 65536U
#define QCOW2_MAX_SNAPSHOTS_BYTES (UINT64_C(1024) * 65536)
#define QCOW2_MAX_SNAPSHOT_EXTRA_DATA 1024U
#define QCOW2_MAX_BITMAPS 65535U
#define QCOW2_MAX_BITMAP_DIRECTORY_BYTES (UINT64_C(1024) * 65535)
#define QCOW2_MAX_REFCOUNT_ORDER 6U
#define QCOW2_MAX_OFFSET (UINT64_C(1) << 56) /* every host offset lies below this */
#define QCOW2_MAX_BACKING_NAME 1023U
#define QCOW2_MAX_FORMAT_NAME 15U
/* vdisk's own: the data-file name has no limit in QEMU; we use the backing name's. */
#define QCOW2_MAX_DATA_FILE_NAME 1023U
/* vdisk's own: at most this many header extensions (QEMU has none; each costs a linear check). */
#define QCOW2_MAX_EXTENSIONS 64U

#define QCOW2_INCOMPAT_DIRTY (UINT64_C(1) << 0)
#define QCOW2_INCOMPAT_CORRUPT (UINT64_C(1) << 1)
#define QCOW2_INCOMPAT_DATA_FILE (UINT64_C(1) << 2)
#define QCOW2_INCOMPAT_COMPRESSION (UINT64_C(1) << 3)
#define QCOW2_INCOMPAT_EXTL2 (UINT64_C(1) << 4)
#define QCOW2_INCOMPAT_MASK UINT64_C(0x1f)
#define QCOW2_COMPAT_LAZY_REFCOUNTS (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_BITMAPS (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (UINT64_C(1) << 1)
#define QCOW2_AUTOCLEAR_MASK UINT64_C(0x3)

#define QCOW2_EXT_END UINT32_C(0x00000000)
#define QCOW2_EXT_BACKING_FORMAT UINT32_C(0xe2792aca)
#define QCOW2_EXT_FEATURE_TABLE UINT32_C(0x6803f857)
#define QCOW2_EXT_BITMAPS UINT32_C(0x23852875)
#define QCOW2_EXT_CRYPTO UINT32_C(0x0537be77)
#define QCOW2_EXT_DATA_FILE UINT32_C(0x44415441)

#define QCOW2_CRYPT_NONE 0U
#define QCOW2_CRYPT_AES 1U
#define QCOW2_CRYPT_LUKS 2U

#define QCOW2_COMPRESSION_DEFLATE 0U
#define QCOW2_COMPRESSION_ZSTD 1U

#define QCOW2_L1E_OFFSET_MASK UINT64_C(0x00fffffffffffe00)
#define QCOW2_L1E_RESERVED_MASK UINT64_C(0x7f000000000001ff)
#define QCOW2_L2E_OFFSET_MASK UINT64_C(0x00fffffffffffe00)
#define QCOW2_L2E_STD_RESERVED_MASK UINT64_C(0x3f000000000001fe)
#define QCOW2_OFLAG_COPIED (UINT64_C(1) << 63)
#define QCOW2_OFLAG_COMPRESSED (UINT64_C(1) << 62)
#define QCOW2_OFLAG_ZERO UINT64_C(1)
#define QCOW2_REFT_OFFSET_MASK UINT64_C(0xfffffffffffffe00)
#define QCOW2_REFT_RESERVED_MASK UINT64_C(0x1ff)
#define QCOW2_EXTL2_SUBCLUSTERS 32U

#define QCOW2_FEATURE_NAME_ENTRY_SIZE 48U
#define QCOW2_FEATURE_NAME_LENGTH 46U

typedef struct Qcow2Header {
        uint32_t version;
        uint64_t backing_file_offset;
        uint32_t backing_file_size;
        uint32_t cluster_bits;
        uint64_t cluster_size;
        uint64_t size;
        uint32_t crypt_method;
        uint32_t l1_size;
        uint64_t l1_table_offset;
        uint64_t refcount_table_offset;
        uint32_t refcount_table_clusters;
        uint32_t nb_snapshots;
        uint64_t snapshots_offset;
        uint64_t incompatible_features;
        uint64_t compatible_features;
        uint64_t autoclear_features;
        uint32_t refcount_order;
        uint32_t header_length;
        uint8_t compression_type;

        /* Header extensions and the backing name; strings are NUL-terminated copies. */
        bool has_backing_file;
        char backing_file[QCOW2_MAX_BACKING_NAME + 1];
        bool has_backing_format;
        char backing_format[QCOW2_MAX_FORMAT_NAME + 1];
        bool has_data_file_name;
        char data_file[QCOW2_MAX_DATA_FILE_NAME + 1];
        bool has_feature_table;
        uint32_t n_feature_names;
        bool has_bitmaps_ext;
        uint32_t nb_bitmaps;
        uint64_t bitmap_directory_size;
        uint64_t bitmap_directory_offset;
        bool has_crypto_ext;
        uint64_t crypto_offset;
        uint64_t crypto_length;
        uint32_t n_unknown_extensions;
        uint32_t n_extensions;
        /* First byte after the end-of-extensions marker. */
        uint64_t extensions_end;
        uint64_t file_size;
} Qcow2Header;

typedef struct Qcow2Limits {
        uint64_t max_virtual_size;   /* 0: FORMAT_DEFAULT_MAX_VIRTUAL_SIZE */
        uint64_t max_host_clusters;  /* metadata walk bookkeeping; 0: QCOW2_DEFAULT_MAX_HOST_CLUSTERS */
} Qcow2Limits;

/* The walk keeps 5 bytes per host cluster: 2^25 clusters = 160 MiB at most. */
#define QCOW2_DEFAULT_MAX_HOST_CLUSTERS (UINT64_C(1) << 25)

/* How many bytes of the file's start qcow2_header_parse() wants: the whole of cluster 0 (or the file). */
#define QCOW2_HEADER_READ_SIZE QCOW2_MAX_CLUSTER_SIZE

/*
 * Parses and validates the header, its extensions and the backing name from `buf`, which holds the
 * first min(file_size, QCOW2_HEADER_READ_SIZE) bytes of a file of `file_size` bytes. Checks every
 * open-time rule of QEMU plus vdisk's stricter ones (locations of tables inside the file and inside
 * [cluster 1, 2^56), alignment, sizes). It does not walk tables: see qcow2_check().
 */
int qcow2_header_parse(const uint8_t *buf, size_t size, uint64_t file_size, const Qcow2Limits *limits,
                       Qcow2Header *ret, FormatError *err);

/* Reads the first cluster of `fd` and parses it. */
int qcow2_header_read(int fd, const Qcow2Limits *limits, Qcow2Header *ret, FormatError *err);

/*
 * What makes a well-formed header unusable to vdisk, shared by Inspect's verdict and the checks of
 * uploads so that both agree: the corrupt bit (QEMU refuses to open the image read-write), the
 * dirty bit (refcounts may be stale: lazy refcounts not written back), a backing format other than
 * raw and qcow2 (QEMU cannot open the chain). A virtual size of 0 is valid, as to QEMU. Returns 0, -EBADMSG (damaged:
 * Corrupt) or -EMEDIUMTYPE (names something vdisk cannot follow: UnsafeImage), with the first
 * reason in err (which says how to repair, where qemu-img can).
 */
int qcow2_header_verdict(const Qcow2Header *h, FormatError *err);

static inline uint64_t qcow2_l2_entries(const Qcow2Header *h) {
        return h->cluster_size / ((h->incompatible_features & QCOW2_INCOMPAT_EXTL2) ? 16 : 8);
}

static inline uint32_t qcow2_refcount_bits(const Qcow2Header *h) {
        return 1U << h->refcount_order;
}

/* Number of L1 entries needed to map `size` bytes; false on overflow. */
bool qcow2_l1_entries_for(uint64_t size, uint32_t cluster_bits, bool extended_l2, uint64_t *ret);

/* ---- metadata walk (qemu-img check without repair) ---- */

typedef enum Qcow2ProblemKind {
        QCOW2_PROBLEM_OUTSIDE_FILE,
        QCOW2_PROBLEM_MISALIGNED,
        QCOW2_PROBLEM_OVERLAP,
        QCOW2_PROBLEM_RESERVED_BITS,
        QCOW2_PROBLEM_INVALID_ENTRY,
        QCOW2_PROBLEM_REFCOUNT_MISMATCH, /* on-disk refcount lower than references: corruption */
        QCOW2_PROBLEM_LEAK,              /* on-disk refcount higher than references */
        QCOW2_PROBLEM_COPIED_FLAG,
        QCOW2_PROBLEM_SNAPSHOT_TABLE,
        QCOW2_PROBLEM_BITMAP_DIRECTORY,
        _QCOW2_PROBLEM_KIND_MAX,
        _QCOW2_PROBLEM_KIND_INVALID = -EINVAL,
} Qcow2ProblemKind;

const char *qcow2_problem_kind_to_string(Qcow2ProblemKind k) _pure_;

typedef struct Qcow2Problem {
        Qcow2ProblemKind kind;
        uint64_t offset; /* host offset concerned, or guest offset for L2 entries where noted */
        char text[160];
} Qcow2Problem;

/* At most this many problems are kept in detail; all are counted. */
#define QCOW2_CHECK_MAX_PROBLEMS 1000U

typedef struct Qcow2CheckResult {
        uint64_t corruptions; /* everything but leaks */
        uint64_t leaks;
        uint64_t n_problems;  /* stored in problems[] (≤ QCOW2_CHECK_MAX_PROBLEMS) */
        Qcow2Problem *problems;
        uint64_t host_clusters;     /* clusters covered by the file */
        uint64_t allocated_clusters; /* data clusters referenced by the active L1 */
        uint64_t compressed_clusters;
        uint64_t l2_tables_read;
} Qcow2CheckResult;

void qcow2_check_result_done(Qcow2CheckResult *r);

/*
 * Walks L1/L2, refcount table and blocks, snapshot table and snapshot L1s, bitmap directory and the
 * encryption header area; recomputes every refcount. Problems are reported in `ret` (the image is
 * consistent iff corruptions == 0 and leaks == 0). Returns < 0 only when the walk itself cannot be
 * done (I/O error, limit exceeded, malformed header), with `err` set.
 */
int qcow2_check(int fd, const Qcow2Header *h, const Qcow2Limits *limits, Qcow2CheckResult *ret,
                FormatError *err);

/* ---- allocation map ---- */

typedef enum ExtentState {
        EXTENT_UNALLOCATED, /* falls through to the backing layer (or reads zeros) */
        EXTENT_ZERO,        /* reads as zeros, no data (zero flag, possibly preallocated: host_offset set) */
        EXTENT_DATA,        /* data at host_offset (in the image, or in the external data file) */
        EXTENT_COMPRESSED,  /* compressed data; host_offset is the byte offset of the compressed stream */
        _EXTENT_STATE_MAX,
        _EXTENT_STATE_INVALID = -EINVAL,
} ExtentState;

const char *extent_state_to_string(ExtentState s) _pure_;

typedef struct Extent {
        uint64_t start;  /* guest offset */
        uint64_t length;
        ExtentState state;
        bool has_host_offset;
        uint64_t host_offset;
} Extent;

typedef struct ExtentMap {
        Extent *extents;
        size_t n_extents;
        size_t allocated;
} ExtentMap;

void extent_map_done(ExtentMap *m);
/* Appends, merging with the previous extent where state and host contiguity allow. */
int extent_map_append(ExtentMap *m, uint64_t start, uint64_t length, ExtentState state, bool has_host,
                      uint64_t host_offset);

/*
 * Guest extents of a qcow2 image from its L1/L2 tables (no data reads), covering [0, h->size).
 * Entries are validated as they are read; an invalid entry fails with -EBADMSG.
 */
int qcow2_map(int fd, const Qcow2Header *h, ExtentMap *ret, FormatError *err);

/* Raw image of `size` bytes: data extents, refined by SEEK_DATA/SEEK_HOLE into data and zero (holes). */
int raw_map(int fd, uint64_t size, ExtentMap *ret);

/* ---- writer ---- */

typedef struct Qcow2CreateParams {
        uint64_t size;
        uint32_t cluster_bits; /* 0: 16 */
        const char *backing_file;   /* NULL: none; always written with backing_format */
        const char *backing_format; /* required with backing_file */
        const char *data_file;      /* NULL: none; external data file name (incompatible bit 2) */
        bool data_file_raw;
        /* Optional initial guest content at offset 0 (for templates such as swap). */
        const uint8_t *initial_data;
        size_t initial_data_size;
} Qcow2CreateParams;

/* Writes a new qcow2 v3 image (refcount_order 4) into the empty file `fd`. Does not fsync. */
int qcow2_create(int fd, const Qcow2CreateParams *p, FormatError *err);

/*
 * Rewrites the backing pointer of an existing qcow2 image: name and format (both NULL: no backing
 * file). Every other header extension is preserved, unknown autoclear bits are cleared, the result
 * must fit in cluster 0 and parse again before a single byte is written; then it is written with one
 * pwrite and flushed with fdatasync.
 */
int qcow2_set_backing(int fd, const char *backing_file, const char *backing_format, FormatError *err);

/* The same, built in memory only: the new bytes of the header area, to be written at offset 0. */
int qcow2_build_backing_header(int fd, const char *backing_file, const char *backing_format, uint8_t **ret,
                               size_t *ret_len, FormatError *err);

/* Validates a name that will be written into a header (backing or data file). */
bool qcow2_name_is_valid(const char *name, size_t max);

/* Raw: sets the size of the empty file `fd` (sparse), optionally writing initial data at 0. */
int raw_create(int fd, uint64_t size, const uint8_t *initial_data, size_t initial_data_size, FormatError *err);

/* ---- templates ---- */

#define SWAP_PAGE_SIZE 4096U
#define SWAP_MIN_PAGES 10U

/* Fills `page` (SWAP_PAGE_SIZE bytes) with a Linux swap v1 signature for a device of `size` bytes. */
int swap_signature_build(uint64_t size, const uint8_t uuid[16], uint8_t page[static SWAP_PAGE_SIZE]);
