/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <string.h>
#include <sys/stat.h>

#include "bytes.h"
#include "qcow2.h"

bool qcow2_l1_entries_for(uint64_t size, uint32_t cluster_bits, bool extended_l2, uint64_t *ret) {
        uint32_t l2_bits = cluster_bits - (extended_l2 ? 4 : 3);
        uint32_t shift = cluster_bits + l2_bits;

        if (cluster_bits < QCOW2_MIN_CLUSTER_BITS || cluster_bits > QCOW2_MAX_CLUSTER_BITS)
                return false;
        /* ceil(size / 2^shift) without overflow */
        *ret = (size >> shift) + ((size & ((UINT64_C(1) << shift) - 1)) ? 1 : 0);
        return true;
}

bool qcow2_name_is_valid(const char *name, size_t max) {
        size_t n;

        if (!name)
                return false;
        n = strlen(name);
        if (n == 0 || n > max)
                return false;
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) name[i];
                if (c < 0x20 || c == 0x7f)
                        return false;
        }
        return true;
}

/* Copies a name from the image; refuses NUL and control characters rather than truncating them. */
static int copy_name(const uint8_t *p, size_t len, char *out, size_t out_size, const char *what,
                     FormatError *err) {
        if (len >= out_size)
                return format_error(err, -EBADMSG, "%s is %zu bytes long, more than %zu", what, len, out_size - 1);
        for (size_t i = 0; i < len; i++)
                if (p[i] < 0x20 || p[i] == 0x7f)
                        return format_error(err, -EBADMSG, "%s contains a control character at byte %zu", what, i);
        memcpy(out, p, len);
        out[len] = 0;
        return 0;
}

/* A table of `bytes` bytes at `offset`: aligned, inside [cluster 1, 2^56) and inside the file. */
static int check_table(const Qcow2Header *h, uint64_t offset, uint64_t bytes, const char *what,
                       FormatError *err) {
        if (offset & (h->cluster_size - 1))
                return format_error(err, -EBADMSG, "%s offset 0x%" PRIx64 " is not aligned to the cluster size",
                                    what, offset);
        if (bytes == 0)
                return 0;
        if (offset < h->cluster_size)
                return format_error(err, -EBADMSG, "%s overlaps the header cluster", what);
        if (offset >= QCOW2_MAX_OFFSET || bytes > QCOW2_MAX_OFFSET - offset)
                return format_error(err, -EBADMSG, "%s lies beyond the largest qcow2 offset", what);
        if (offset > h->file_size || bytes > h->file_size - offset)
                return format_error(err, -EBADMSG, "%s (0x%" PRIx64 ", %" PRIu64 " bytes) extends past the end of the file",
                                    what, offset, bytes);
        return 0;
}

/* -ENODATA, with no error recorded: the bytes given end before what must be read (partial parse). */
#define NEED_MORE (-ENODATA)

static int parse_extensions(const uint8_t *buf, uint64_t avail, uint64_t start, uint64_t end, Qcow2Header *h,
                            FormatError *err) {
        uint32_t seen[QCOW2_MAX_EXTENSIONS];
        uint64_t off = start;
        int r;

        for (;;) {
                uint32_t magic, len;
                uint64_t padded;
                const uint8_t *body;

                /* An area filled to its end needs no end marker: QEMU reads extensions while one fits. */
                if (off == end) {
                        h->extensions_end = off;
                        return 0;
                }
                if (off > end || end - off < 8)
                        return format_error(err, -EBADMSG,
                                            "header extensions are not terminated by an end marker inside the header area");
                if (off > avail || avail - off < 8)
                        return NEED_MORE;
                magic = be32_read(buf + off);
                len = be32_read(buf + off + 4);
                off += 8;

                if (magic == QCOW2_EXT_END) {
                        if (len != 0)
                                return format_error(err, -EBADMSG, "end-of-extensions marker has non-zero length");
                        h->extensions_end = off;
                        return 0;
                }

                if (len > end - off)
                        return format_error(err, -EBADMSG,
                                            "header extension 0x%08" PRIx32 " (%" PRIu32 " bytes) extends past the header area",
                                            magic, len);
                padded = ((uint64_t) len + 7) & ~UINT64_C(7);
                if (padded > end - off)
                        return format_error(err, -EBADMSG, "padding of header extension 0x%08" PRIx32 " extends past the header area",
                                            magic);
                if (padded > avail - off)
                        return NEED_MORE;

                if (h->n_extensions >= QCOW2_MAX_EXTENSIONS)
                        return format_error(err, -E2BIG, "more than %u header extensions", QCOW2_MAX_EXTENSIONS);
                for (uint32_t i = 0; i < h->n_extensions; i++)
                        if (seen[i] == magic)
                                return format_error(err, -EBADMSG, "header extension 0x%08" PRIx32 " appears twice",
                                                    magic);
                seen[h->n_extensions++] = magic;
                body = buf + off;

                switch (magic) {
                case QCOW2_EXT_BACKING_FORMAT:
                        if (len == 0)
                                return format_error(err, -EBADMSG, "backing format extension is empty");
                        if (len > QCOW2_MAX_FORMAT_NAME)
                                return format_error(err, -EBADMSG, "backing format name is %" PRIu32 " bytes long, more than %u",
                                                    len, QCOW2_MAX_FORMAT_NAME);
                        r = copy_name(body, len, h->backing_format, sizeof(h->backing_format), "backing format name", err);
                        if (r < 0)
                                return r;
                        h->has_backing_format = true;
                        break;

                case QCOW2_EXT_FEATURE_TABLE:
                        if (len % QCOW2_FEATURE_NAME_ENTRY_SIZE != 0)
                                return format_error(err, -EBADMSG, "feature name table length %" PRIu32 " is not a multiple of %u",
                                                    len, QCOW2_FEATURE_NAME_ENTRY_SIZE);
                        for (uint32_t i = 0; i < len / QCOW2_FEATURE_NAME_ENTRY_SIZE; i++) {
                                const uint8_t *e = body + (size_t) i * QCOW2_FEATURE_NAME_ENTRY_SIZE;
                                if (e[0] > 2)
                                        return format_error(err, -EBADMSG, "feature name table entry %" PRIu32 " has unknown type %u",
                                                            i, e[0]);
                                if (e[1] > 63)
                                        return format_error(err, -EBADMSG, "feature name table entry %" PRIu32 " names bit %u",
                                                            i, e[1]);
                        }
                        h->has_feature_table = true;
                        h->n_feature_names = len / QCOW2_FEATURE_NAME_ENTRY_SIZE;
                        break;

                case QCOW2_EXT_BITMAPS:
                        if (len != 24)
                                return format_error(err, -EBADMSG, "bitmaps extension has length %" PRIu32 ", expected 24", len);
                        h->has_bitmaps_ext = true;
                        h->nb_bitmaps = be32_read(body);
                        h->bitmap_directory_size = be64_read(body + 8);
                        h->bitmap_directory_offset = be64_read(body + 16);
                        if (be32_read(body + 4) != 0)
                                return format_error(err, -EBADMSG, "bitmaps extension has non-zero reserved field");
                        break;

                case QCOW2_EXT_CRYPTO:
                        if (len != 16)
                                return format_error(err, -EBADMSG, "encryption header extension has length %" PRIu32 ", expected 16",
                                                    len);
                        h->has_crypto_ext = true;
                        h->crypto_offset = be64_read(body);
                        h->crypto_length = be64_read(body + 8);
                        break;

                case QCOW2_EXT_DATA_FILE:
                        if (len == 0)
                                return format_error(err, -EBADMSG, "external data file extension is empty");
                        r = copy_name(body, len, h->data_file, sizeof(h->data_file), "external data file name", err);
                        if (r < 0)
                                return r;
                        h->has_data_file_name = true;
                        break;

                default:
                        h->n_unknown_extensions++;
                        break;
                }

                off += padded;
        }
}

/* The fixed fields, by version. NEED_MORE (with `partial`) if a v3 header is longer than `buf`. */
static int header_read_fields(const uint8_t *buf, size_t size, uint64_t file_size, bool partial, Qcow2Header *h,
                              FormatError *err) {
        h->file_size = file_size;
        h->version = be32_read(buf + 4);
        h->backing_file_offset = be64_read(buf + 8);
        h->backing_file_size = be32_read(buf + 16);
        h->cluster_bits = be32_read(buf + 20);
        h->size = be64_read(buf + 24);
        h->crypt_method = be32_read(buf + 32);
        h->l1_size = be32_read(buf + 36);
        h->l1_table_offset = be64_read(buf + 40);
        h->refcount_table_offset = be64_read(buf + 48);
        h->refcount_table_clusters = be32_read(buf + 56);
        h->nb_snapshots = be32_read(buf + 60);
        h->snapshots_offset = be64_read(buf + 64);

        if (h->version < 2)
                return format_error(err, -EOPNOTSUPP, "qcow version %" PRIu32 " is not qcow2", h->version);
        if (h->version > 3)
                return format_error(err, -EOPNOTSUPP, "unsupported qcow2 version %" PRIu32, h->version);

        if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS)
                return format_error(err, -EBADMSG, "cluster_bits %" PRIu32 " is below the minimum of %u", h->cluster_bits,
                                    QCOW2_MIN_CLUSTER_BITS);
        if (h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
                return format_error(err, -EOPNOTSUPP, "cluster_bits %" PRIu32 " is above the supported maximum of %u",
                                    h->cluster_bits, QCOW2_MAX_CLUSTER_BITS);
        h->cluster_size = UINT64_C(1) << h->cluster_bits;

        if (h->version == 2) {
                h->header_length = QCOW2_V2_HEADER_LENGTH;
                h->refcount_order = 4;
        } else {
                /* header_length is at bytes 100..103: do not read it past the end of the buffer. */
                if (size < QCOW2_V3_MIN_HEADER_LENGTH)
                        return format_error(err, -EBADMSG, "file is too short for a qcow2 version 3 header (%zu bytes)",
                                            size);
                h->header_length = be32_read(buf + 100);
                if (h->header_length < QCOW2_V3_MIN_HEADER_LENGTH)
                        return format_error(err, -EBADMSG, "header_length %" PRIu32 " is below %u", h->header_length,
                                            QCOW2_V3_MIN_HEADER_LENGTH);
                if (h->header_length % 8 != 0)
                        return format_error(err, -EBADMSG, "header_length %" PRIu32 " is not a multiple of 8", h->header_length);
                if (h->header_length > h->cluster_size)
                        return format_error(err, -EBADMSG, "header_length %" PRIu32 " exceeds the cluster size", h->header_length);
                if (h->header_length > size) {
                        if (partial && h->header_length <= file_size)
                                return NEED_MORE;
                        return format_error(err, -EBADMSG, "header_length %" PRIu32 " extends past the end of the file",
                                            h->header_length);
                }
                h->incompatible_features = be64_read(buf + 72);
                h->compatible_features = be64_read(buf + 80);
                h->autoclear_features = be64_read(buf + 88);
                h->refcount_order = be32_read(buf + 96);
                if (h->header_length > 104) {
                        h->compression_type = buf[104];
                        for (size_t i = 105; i < 112; i++)
                                if (buf[i] != 0)
                                        return format_error(err, -EBADMSG, "header padding byte %zu is not zero", i);
                }
        }

        return 0;
}

/* Features, virtual size and the tables the header points to (L1, refcounts, snapshots). */
static int header_check_features_and_tables(Qcow2Header *h, uint64_t max_size, FormatError *err) {
        uint64_t l1_needed;
        int r;

        if (h->incompatible_features & ~QCOW2_INCOMPAT_MASK)
                return format_error(err, -EOPNOTSUPP, "unknown incompatible features 0x%" PRIx64,
                                    h->incompatible_features & ~QCOW2_INCOMPAT_MASK);

        if (h->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
                return format_error(err, -EBADMSG, "refcount_order %" PRIu32 " is above %u", h->refcount_order,
                                    QCOW2_MAX_REFCOUNT_ORDER);

        if (h->compression_type > QCOW2_COMPRESSION_ZSTD)
                return format_error(err, -EOPNOTSUPP, "unknown compression type %u", h->compression_type);
        if (h->compression_type != QCOW2_COMPRESSION_DEFLATE && !(h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION))
                return format_error(err, -EBADMSG, "compression type is not deflate but the compression type bit is not set");
        if (h->compression_type == QCOW2_COMPRESSION_DEFLATE && (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION))
                return format_error(err, -EBADMSG, "compression type bit is set but the compression type is deflate");

        if ((h->incompatible_features & QCOW2_INCOMPAT_EXTL2) && h->cluster_bits < QCOW2_MIN_EXTL2_CLUSTER_BITS)
                return format_error(err, -EBADMSG, "extended L2 entries need clusters of at least %u bytes",
                                    1U << QCOW2_MIN_EXTL2_CLUSTER_BITS);

        if (h->crypt_method > QCOW2_CRYPT_LUKS)
                return format_error(err, -EBADMSG, "unknown encryption method %" PRIu32, h->crypt_method);

        /* Virtual size. */
        if (h->size % FORMAT_SECTOR_SIZE != 0)
                return format_error(err, -EBADMSG, "virtual size %" PRIu64 " is not a multiple of 512", h->size);
        if (h->size > max_size)
                return format_error(err, -E2BIG, "virtual size %" PRIu64 " is above the limit of %" PRIu64, h->size, max_size);

        /* L1 table. */
        if ((uint64_t) h->l1_size * 8 > QCOW2_MAX_L1_BYTES)
                return format_error(err, -E2BIG, "L1 table of %" PRIu32 " entries is larger than 32 MiB", h->l1_size);
        if (!qcow2_l1_entries_for(h->size, h->cluster_bits, h->incompatible_features & QCOW2_INCOMPAT_EXTL2, &l1_needed))
                return format_error(err, -EBADMSG, "invalid cluster size");
        if (l1_needed > h->l1_size)
                return format_error(err, -EBADMSG, "L1 table has %" PRIu32 " entries, the virtual size needs %" PRIu64,
                                    h->l1_size, l1_needed);
        r = check_table(h, h->l1_table_offset, (uint64_t) h->l1_size * 8, "L1 table", err);
        if (r < 0)
                return r;

        /* Refcount table. */
        if (h->refcount_table_clusters == 0)
                return format_error(err, -EBADMSG, "image has no refcount table");
        if ((uint64_t) h->refcount_table_clusters > QCOW2_MAX_REFTABLE_BYTES >> h->cluster_bits)
                return format_error(err, -E2BIG, "refcount table of %" PRIu32 " clusters is larger than 8 MiB",
                                    h->refcount_table_clusters);
        r = check_table(h, h->refcount_table_offset, (uint64_t) h->refcount_table_clusters << h->cluster_bits,
                        "refcount table", err);
        if (r < 0)
                return r;

        /* Snapshot table: its length is only known from a walk; here, its start and count. */
        if (h->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
                return format_error(err, -E2BIG, "%" PRIu32 " snapshots are more than %u", h->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
        r = check_table(h, h->snapshots_offset, h->nb_snapshots > 0 ? 40 : 0, "snapshot table", err);
        if (r < 0)
                return r;

        return 0;
}

/* The backing file name and the header extensions before it, both inside cluster 0 (`area` bytes). */
static int header_parse_backing_and_extensions(const uint8_t *buf, size_t size, uint64_t area, Qcow2Header *h,
                                               FormatError *err) {
        uint64_t ext_end;
        int r;

        /* Backing file name: after the extensions, inside cluster 0. */
        if (h->backing_file_offset != 0 || h->backing_file_size != 0) {
                if (h->backing_file_offset == 0)
                        return format_error(err, -EBADMSG, "backing file name has a length but no offset");
                if (h->backing_file_size == 0)
                        return format_error(err, -EBADMSG, "backing file name has an offset but no length");
                if (h->backing_file_size > QCOW2_MAX_BACKING_NAME)
                        return format_error(err, -EBADMSG, "backing file name is %" PRIu32 " bytes long, more than %u",
                                            h->backing_file_size, QCOW2_MAX_BACKING_NAME);
                if (h->backing_file_offset >= area || h->backing_file_size > area - h->backing_file_offset)
                        return format_error(err, -EBADMSG, "backing file name lies outside cluster 0");
                if (h->backing_file_offset < h->header_length)
                        return format_error(err, -EBADMSG, "backing file name overlaps the header");
                if (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)
                        return format_error(err, -EBADMSG, "an image with a raw external data file cannot have a backing file");
                h->has_backing_file = true;
        }

        /* Header extensions end where the backing name starts (QEMU's rule), else at the end of cluster 0. */
        ext_end = h->has_backing_file ? h->backing_file_offset : area;
        if (h->header_length > ext_end)
                return format_error(err, -EBADMSG, "header extensions start after their area ends");
        r = parse_extensions(buf, size, h->header_length, ext_end, h, err);
        if (r < 0)
                return r;

        if (h->has_backing_file) {
                if (h->backing_file_offset < h->extensions_end)
                        return format_error(err, -EBADMSG, "backing file name overlaps the header extensions");
                if (h->backing_file_offset > size || h->backing_file_size > size - h->backing_file_offset)
                        return NEED_MORE;
                r = copy_name(buf + h->backing_file_offset, h->backing_file_size, h->backing_file, sizeof(h->backing_file),
                              "backing file name", err);
                if (r < 0)
                        return r;
        }

        return 0;
}

/* What the extensions say must agree with the feature bits. */
static int header_check_extensions(Qcow2Header *h, FormatError *err) {
        int r;

        if (h->has_data_file_name && !(h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE))
                return format_error(err, -EBADMSG, "external data file name present but the external data file bit is not set");
        if ((h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) && !(h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE))
                return format_error(err, -EBADMSG, "raw external data bit set without an external data file");
        if (h->crypt_method == QCOW2_CRYPT_LUKS && !h->has_crypto_ext)
                return format_error(err, -EBADMSG, "LUKS encryption without an encryption header extension");
        if (h->has_crypto_ext) {
                if (h->crypt_method != QCOW2_CRYPT_LUKS)
                        return format_error(err, -EBADMSG, "encryption header extension on an image not encrypted with LUKS");
                if (h->crypto_length == 0)
                        return format_error(err, -EBADMSG, "encryption header has zero length");
                r = check_table(h, h->crypto_offset, h->crypto_length, "encryption header", err);
                if (r < 0)
                        return r;
        }
        if (h->has_bitmaps_ext && (h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
                if (h->version < 3)
                        return format_error(err, -EBADMSG, "bitmaps extension in a version 2 image");
                if (h->nb_bitmaps == 0)
                        return format_error(err, -EBADMSG, "bitmaps extension with zero bitmaps");
                if (h->nb_bitmaps > QCOW2_MAX_BITMAPS)
                        return format_error(err, -E2BIG, "%" PRIu32 " bitmaps are more than %u", h->nb_bitmaps, QCOW2_MAX_BITMAPS);
                if (h->bitmap_directory_size == 0)
                        return format_error(err, -EBADMSG, "bitmap directory has zero length");
                if (h->bitmap_directory_size > QCOW2_MAX_BITMAP_DIRECTORY_BYTES)
                        return format_error(err, -E2BIG, "bitmap directory of %" PRIu64 " bytes is too large",
                                            h->bitmap_directory_size);
                r = check_table(h, h->bitmap_directory_offset, h->bitmap_directory_size, "bitmap directory", err);
                if (r < 0)
                        return r;
        }

        return 0;
}

/*
 * With `partial`, `buf` may hold less than cluster 0: parsing then needs only the bytes up to the end
 * of the extensions and the backing name, and returns NEED_MORE if those are not all there.
 */
static int header_parse(const uint8_t *buf, size_t size, uint64_t file_size, const Qcow2Limits *limits, bool partial,
                        Qcow2Header *ret, FormatError *err) {
        Qcow2Header h = {};
        uint64_t max_size, area;
        int r;

        max_size = limits && limits->max_virtual_size ? limits->max_virtual_size : FORMAT_DEFAULT_MAX_VIRTUAL_SIZE;

        if (size > file_size)
                size = (size_t) file_size;
        if (size < QCOW2_V2_HEADER_LENGTH)
                return format_error(err, -EBADMSG, "file is too short for a qcow2 header (%zu bytes)", size);
        if (be32_read(buf) != QCOW2_MAGIC)
                return format_error(err, -EBADMSG, "no qcow2 magic");

        r = header_read_fields(buf, size, file_size, partial, &h, err);
        if (r < 0 || r == NEED_MORE)
                return r;

        /* The header area is cluster 0; the bytes we were given must cover what the file has of it. */
        area = MIN(h.cluster_size, file_size);
        if (size < area && !partial)
                return format_error(err, -EINVAL, "caller passed %zu bytes, cluster 0 has %" PRIu64, size, area);

        r = header_check_features_and_tables(&h, max_size, err);
        if (r < 0)
                return r;
        r = header_parse_backing_and_extensions(buf, size, area, &h, err);
        if (r < 0 || r == NEED_MORE)
                return r;
        r = header_check_extensions(&h, err);
        if (r < 0)
                return r;

        *ret = h;
        return 0;
}

int qcow2_header_parse(const uint8_t *buf, size_t size, uint64_t file_size, const Qcow2Limits *limits,
                       Qcow2Header *ret, FormatError *err) {
        return header_parse(buf, size, file_size, limits, false, ret, err);
}

int qcow2_header_verdict(const Qcow2Header *h, FormatError *err) {
        if (h->incompatible_features & QCOW2_INCOMPAT_CORRUPT)
                return format_error(err, -EBADMSG,
                                    "image is marked corrupt (QEMU refuses to open it read-write); repair it with 'qemu-img check -r all'");
        if (h->incompatible_features & QCOW2_INCOMPAT_DIRTY)
                return format_error(err, -EBADMSG,
                                    "image is marked dirty (refcounts may be stale%s); repair it with 'qemu-img check -r all'",
                                    (h->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS) ? ": lazy refcounts were not written back" : "");
        /* No key is ever given to QEMU by vdisk: an encrypted image cannot be read (nor checked: ImportImage's answer). */
        if (h->crypt_method != QCOW2_CRYPT_NONE)
                return format_error(err, -EOPNOTSUPP, "encrypted images are not supported (%s encryption)",
                                    h->crypt_method == QCOW2_CRYPT_LUKS ? "LUKS" : "AES");
        if (h->has_backing_format && strcmp(h->backing_format, "raw") != 0 && strcmp(h->backing_format, "qcow2") != 0)
                return format_error(err, -EMEDIUMTYPE, "backing file format is neither raw nor qcow2");
        return 0;
}

int qcow2_header_read(int fd, const Qcow2Limits *limits, Qcow2Header *ret, FormatError *err) {
        _cleanup_free_ uint8_t *buf = NULL;
        struct stat st;
        size_t n, first;
        int r;

        if (fstat(fd, &st) < 0)
                return format_error(err, negative_errno(), "cannot stat the image");
        if (!S_ISREG(st.st_mode))
                return format_error(err, -EBADF, "not a regular file");
        if (st.st_size < 0)
                return format_error(err, -EIO, "negative file size");

        /* Usually the first 4 KiB hold everything the header uses; else read the rest of cluster 0. */
        n = (size_t) MIN((uint64_t) st.st_size, QCOW2_HEADER_READ_SIZE);
        buf = malloc(MAX(n, (size_t) 1));
        if (!buf)
                return format_error(err, -ENOMEM, "out of memory");
        first = MIN(n, (size_t) 4096);
        r = format_pread_full(fd, buf, first, 0);
        if (r < 0)
                return format_error(err, r, "cannot read the image header");
        r = header_parse(buf, first, (uint64_t) st.st_size, limits, true, ret, err);
        if (r != NEED_MORE)
                return r;

        n = (size_t) MIN((uint64_t) n, UINT64_C(1) << be32_read(buf + 20)); /* cluster_bits was checked */
        r = format_pread_full(fd, buf + first, n - first, first);
        if (r < 0)
                return format_error(err, r, "cannot read the image header");
        return qcow2_header_parse(buf, n, (uint64_t) st.st_size, limits, ret, err);
}
