/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The qcow2 writer: new images (always v3, refcount_order 4, no lazy refcounts) and the backing
 * pointer of existing ones. Everything written is first built in memory and validated by the same
 * parser that checks untrusted images.
 */

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "qcow2-internal.h"

#define WRITER_REFCOUNT_ORDER 4U

static const struct {
        uint8_t type;
        uint8_t bit;
        const char *name;
} feature_names[] = {
        { 0, 0, "dirty bit" },
        { 0, 1, "corrupt bit" },
        { 0, 2, "external data file" },
        { 0, 3, "compression type" },
        { 0, 4, "extended L2 entries" },
        { 1, 0, "lazy refcounts" },
        { 2, 0, "bitmaps" },
        { 2, 1, "raw external data" },
};

#define FEATURE_TABLE_BYTES (ELEMENTSOF(feature_names) * QCOW2_FEATURE_NAME_ENTRY_SIZE)

static size_t ext_size(size_t len) {
        return 8 + ((len + 7) & ~(size_t) 7);
}

static size_t ext_put(uint8_t *p, uint32_t magic, const void *body, size_t len) {
        be32_write(p, magic);
        be32_write(p + 4, (uint32_t) len);
        memcpy(p + 8, body, len);
        memset(p + 8 + len, 0, ext_size(len) - 8 - len);
        return ext_size(len);
}

static void feature_table_build(uint8_t out[static FEATURE_TABLE_BYTES]) {
        memset(out, 0, FEATURE_TABLE_BYTES);
        for (size_t i = 0; i < ELEMENTSOF(feature_names); i++) {
                uint8_t *e = out + i * QCOW2_FEATURE_NAME_ENTRY_SIZE;
                e[0] = feature_names[i].type;
                e[1] = feature_names[i].bit;
                memcpy(e + 2, feature_names[i].name, strlen(feature_names[i].name));
        }
}

static int check_backing_args(const char *backing_file, const char *backing_format, FormatError *err) {
        if (!backing_file && !backing_format)
                return 0;
        if (!backing_file || !backing_format)
                return format_error(err, -EINVAL, "a backing file needs a backing format and vice versa");
        if (!qcow2_name_is_valid(backing_file, QCOW2_MAX_BACKING_NAME))
                return format_error(err, -EINVAL, "invalid backing file name");
        if (!qcow2_name_is_valid(backing_format, QCOW2_MAX_FORMAT_NAME))
                return format_error(err, -EINVAL, "invalid backing format name");
        return 0;
}

static uint64_t div_round_up(uint64_t a, uint64_t b) {
        return a / b + (a % b ? 1 : 0);
}

/* What the caller asks for, before anything is computed or written. */
static int check_create_params(const Qcow2CreateParams *p, uint64_t cs, FormatError *err) {
        int r;

        if (p->size % FORMAT_SECTOR_SIZE != 0)
                return format_error(err, -EINVAL, "virtual size %" PRIu64 " is not a multiple of 512", p->size);
        if (p->size > FORMAT_DEFAULT_MAX_VIRTUAL_SIZE)
                return format_error(err, -E2BIG, "virtual size %" PRIu64 " is above the limit", p->size);
        r = check_backing_args(p->backing_file, p->backing_format, err);
        if (r < 0)
                return r;
        if (p->data_file && !qcow2_name_is_valid(p->data_file, QCOW2_MAX_DATA_FILE_NAME))
                return format_error(err, -EINVAL, "invalid external data file name");
        if (p->data_file_raw && !p->data_file)
                return format_error(err, -EINVAL, "a raw external data file needs an external data file");
        if (p->data_file_raw && p->backing_file)
                return format_error(err, -EINVAL, "a raw external data file excludes a backing file");
        if (p->initial_data_size > 0 && p->data_file)
                return format_error(err, -EOPNOTSUPP, "initial data with an external data file");
        if (p->initial_data_size > p->size || p->initial_data_size > (cs / 8) * cs)
                return format_error(err, -EINVAL, "initial data does not fit into the first L2 table's range");
        return 0;
}

/* After the v3 header in cluster 0: the extensions (backing format, data file, feature names), the end
 * marker, then the backing file name. */
static int put_names(uint8_t *hdr, uint64_t cs, const Qcow2CreateParams *p, FormatError *err) {
        uint8_t features[FEATURE_TABLE_BYTES];
        size_t need = QCOW2_V3_HEADER_LENGTH + 8, pos;
        bool with_features;

        if (p->backing_format)
                need += ext_size(strlen(p->backing_format));
        if (p->data_file)
                need += ext_size(strlen(p->data_file));
        if (p->backing_file)
                need += strlen(p->backing_file);
        if (need > cs)
                return format_error(err, -E2BIG, "names do not fit into the header cluster");
        /* The feature name table is informative. Like QEMU, leave it out of small clusters: cluster 0
         * must keep room for the longest backing name and format a later rebase may write. */
        with_features = need + ext_size(FEATURE_TABLE_BYTES) + QCOW2_MAX_BACKING_NAME +
                                        ext_size(QCOW2_MAX_FORMAT_NAME) <= cs;

        pos = QCOW2_V3_HEADER_LENGTH;
        if (p->backing_format)
                pos += ext_put(hdr + pos, QCOW2_EXT_BACKING_FORMAT, p->backing_format, strlen(p->backing_format));
        if (p->data_file)
                pos += ext_put(hdr + pos, QCOW2_EXT_DATA_FILE, p->data_file, strlen(p->data_file));
        if (with_features) {
                feature_table_build(features);
                pos += ext_put(hdr + pos, QCOW2_EXT_FEATURE_TABLE, features, sizeof(features));
        }
        pos += 8; /* end marker: already zero */
        if (p->backing_file) {
                size_t len = strlen(p->backing_file);
                memcpy(hdr + pos, p->backing_file, len);
                be64_write(hdr + 8, pos);
                be32_write(hdr + 16, (uint32_t) len);
        }
        return 0;
}

int qcow2_create(int fd, const Qcow2CreateParams *p, FormatError *err) {
        uint32_t cluster_bits = p->cluster_bits ? p->cluster_bits : 16;
        uint64_t cs, l1_size, l1_clusters, l2_clusters = 0, data_clusters = 0;
        uint64_t rt_clusters = 1, rb_clusters = 1, total, per_block;
        uint64_t rt_offset, rb_offset, l1_offset, l2_offset, data_offset, file_end;
        _cleanup_free_ uint8_t *hdr = NULL, *rt = NULL, *rb = NULL, *l2 = NULL;
        Qcow2Header check;
        int r;

        if (cluster_bits < QCOW2_MIN_CLUSTER_BITS || cluster_bits > QCOW2_MAX_CLUSTER_BITS)
                return format_error(err, -EINVAL, "cluster size must be a power of two from 512 bytes to 2 MiB");
        cs = UINT64_C(1) << cluster_bits;
        r = check_create_params(p, cs, err);
        if (r < 0)
                return r;

        qcow2_l1_entries_for(p->size, cluster_bits, false, &l1_size);
        if (l1_size * 8 > QCOW2_MAX_L1_BYTES)
                return format_error(err, -E2BIG, "virtual size needs an L1 table larger than 32 MiB with this cluster size");
        l1_clusters = div_round_up(l1_size * 8, cs);
        if (p->initial_data_size > 0) {
                l2_clusters = 1;
                data_clusters = div_round_up(p->initial_data_size, cs);
        }

        /* The refcount structures must count themselves: iterate to a fixed point. */
        per_block = (cs * 8) >> WRITER_REFCOUNT_ORDER;
        for (;;) {
                uint64_t rb_new, rt_new;

                total = 1 + rt_clusters + rb_clusters + l1_clusters + l2_clusters + data_clusters;
                rb_new = div_round_up(total, per_block);
                rt_new = div_round_up(rb_new * 8, cs);
                if (rb_new == rb_clusters && rt_new == rt_clusters)
                        break;
                rb_clusters = rb_new;
                rt_clusters = rt_new;
        }
        if ((rt_clusters << cluster_bits) > QCOW2_MAX_REFTABLE_BYTES)
                return format_error(err, -E2BIG, "refcount table would be larger than 8 MiB");

        rt_offset = cs;
        rb_offset = rt_offset + (rt_clusters << cluster_bits);
        l1_offset = rb_offset + (rb_clusters << cluster_bits);
        l2_offset = l1_offset + (l1_clusters << cluster_bits);
        data_offset = l2_offset + (l2_clusters << cluster_bits);
        /* Like QEMU: the file ends right after the L1 entries unless data follows. */
        file_end = data_clusters > 0 ? data_offset + (data_clusters << cluster_bits) : l1_offset + l1_size * 8;

        /* Cluster 0: header, extensions, end marker, backing name. */
        hdr = calloc(1, cs);
        if (!hdr)
                return format_error(err, -ENOMEM, "out of memory");
        be32_write(hdr, QCOW2_MAGIC);
        be32_write(hdr + 4, 3);
        be32_write(hdr + 20, cluster_bits);
        be64_write(hdr + 24, p->size);
        be32_write(hdr + 36, (uint32_t) l1_size);
        be64_write(hdr + 40, l1_offset);
        be64_write(hdr + 48, rt_offset);
        be32_write(hdr + 56, (uint32_t) rt_clusters);
        be64_write(hdr + 72, p->data_file ? QCOW2_INCOMPAT_DATA_FILE : 0);
        be64_write(hdr + 88, p->data_file_raw ? QCOW2_AUTOCLEAR_DATA_FILE_RAW : 0);
        be32_write(hdr + 96, WRITER_REFCOUNT_ORDER);
        be32_write(hdr + 100, QCOW2_V3_HEADER_LENGTH);

        r = put_names(hdr, cs, p, err);
        if (r < 0)
                return r;

        /* Validate what we are about to write with the parser for untrusted images. */
        r = qcow2_header_parse(hdr, cs, MAX(file_end, cs), NULL, &check, err);
        if (r < 0)
                return r;

        rt = calloc(rt_clusters, cs);
        rb = calloc(rb_clusters, cs);
        if (!rt || !rb)
                return format_error(err, -ENOMEM, "out of memory");
        for (uint64_t i = 0; i < rb_clusters; i++)
                be64_write(rt + i * 8, rb_offset + (i << cluster_bits));
        for (uint64_t c = 0; c < total; c++)
                be16_write(rb + c * 2, 1);

        if (ftruncate(fd, (off_t) file_end) < 0)
                return format_error(err, negative_errno(), "cannot size the image file");
        r = format_pwrite_full(fd, hdr, cs, 0);
        if (r >= 0)
                r = format_pwrite_full(fd, rt, rt_clusters << cluster_bits, rt_offset);
        if (r >= 0)
                r = format_pwrite_full(fd, rb, rb_clusters << cluster_bits, rb_offset);

        if (r >= 0 && p->initial_data_size > 0) {
                uint8_t l1e[8];

                l2 = calloc(1, cs);
                if (!l2)
                        return format_error(err, -ENOMEM, "out of memory");
                for (uint64_t i = 0; i < data_clusters; i++)
                        be64_write(l2 + i * 8, (data_offset + (i << cluster_bits)) | QCOW2_OFLAG_COPIED);
                be64_write(l1e, l2_offset | QCOW2_OFLAG_COPIED);
                r = format_pwrite_full(fd, p->initial_data, p->initial_data_size, data_offset);
                if (r >= 0)
                        r = format_pwrite_full(fd, l2, cs, l2_offset);
                if (r >= 0)
                        r = format_pwrite_full(fd, l1e, sizeof(l1e), l1_offset);
        }
        if (r < 0)
                return format_error(err, r, "cannot write the image");
        return 0;
}

int qcow2_build_backing_header(int fd, const char *backing_file, const char *backing_format, uint8_t **ret,
                               size_t *ret_len, FormatError *err) {
        _cleanup_free_ uint8_t *old = NULL, *new = NULL;
        Qcow2Header h, check;
        uint64_t area, old_end, pos, off;
        int r;

        r = check_backing_args(backing_file, backing_format, err);
        if (r < 0)
                return r;

        /* The image must be valid before we touch it; limits are not ours to apply here. */
        {
                Qcow2Limits unlimited = { .max_virtual_size = UINT64_MAX };
                r = qcow2_header_read(fd, &unlimited, &h, err);
                if (r < 0)
                        return r;
        }
        if (backing_file && (h.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
                return format_error(err, -EINVAL, "a raw external data file excludes a backing file");

        area = MIN(h.cluster_size, h.file_size);
        old = malloc(area);
        new = calloc(1, area);
        if (!old || !new)
                return format_error(err, -ENOMEM, "out of memory");
        r = format_pread_full(fd, old, area, 0);
        if (r < 0)
                return format_error(err, r, "cannot read the image header");

        old_end = h.has_backing_file ? h.backing_file_offset + h.backing_file_size : h.extensions_end;

        memcpy(new, old, h.header_length);
        if (h.version >= 3)
                be64_write(new + 88, h.autoclear_features & QCOW2_AUTOCLEAR_MASK);
        pos = h.header_length;
        if (backing_format) {
                size_t len = strlen(backing_format);
                if (ext_size(len) > area - pos)
                        return format_error(err, -E2BIG, "the new backing format does not fit into the header cluster");
                pos += ext_put(new + pos, QCOW2_EXT_BACKING_FORMAT, backing_format, len);
        }

        /* Every other extension, known or not, is carried over unchanged and in order. */
        off = h.header_length;
        for (;;) {
                uint32_t magic = be32_read(old + off), len = be32_read(old + off + 4);
                uint64_t sz = 8 + (((uint64_t) len + 7) & ~UINT64_C(7));

                if (magic == QCOW2_EXT_END)
                        break;
                if (magic != QCOW2_EXT_BACKING_FORMAT) {
                        if (sz > area - pos)
                                return format_error(err, -E2BIG, "header extensions do not fit into the header cluster");
                        memcpy(new + pos, old + off, sz);
                        pos += sz;
                }
                off += sz;
        }
        if (8 > area - pos)
                return format_error(err, -E2BIG, "header extensions do not fit into the header cluster");
        pos += 8;

        be64_write(new + 8, 0);
        be32_write(new + 16, 0);
        if (backing_file) {
                size_t len = strlen(backing_file);
                if (len > area - pos)
                        return format_error(err, -E2BIG, "the new backing file name does not fit into the header cluster");
                memcpy(new + pos, backing_file, len);
                be64_write(new + 8, pos);
                be32_write(new + 16, (uint32_t) len);
                pos += len;
        }

        {
                Qcow2Limits unlimited = { .max_virtual_size = UINT64_MAX };
                r = qcow2_header_parse(new, area, h.file_size, &unlimited, &check, err);
                if (r < 0)
                        return r;
        }

        /* The old and the new extent of the header area (stale bytes become zero). */
        *ret_len = MAX(pos, old_end);
        *ret = TAKE_PTR(new);
        return 0;
}

int qcow2_set_backing(int fd, const char *backing_file, const char *backing_format, FormatError *err) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t len;
        int r;

        r = qcow2_build_backing_header(fd, backing_file, backing_format, &buf, &len, err);
        if (r < 0)
                return r;
        r = format_pwrite_full(fd, buf, len, 0);
        if (r < 0)
                return format_error(err, r, "cannot write the image header");
        if (fdatasync(fd) < 0)
                return format_error(err, negative_errno(), "cannot flush the image header");
        return 0;
}
