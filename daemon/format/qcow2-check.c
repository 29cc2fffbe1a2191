/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The metadata walk: the equivalent of `qemu-img check` without repair. Every structure of the
 * image is located, checked for alignment, bounds, reserved bits and overlap, and counted; the
 * recomputed reference counts are compared with the on-disk refcounts.
 *
 * Bounds: memory is 9 bytes per host cluster of the file (capped by Qcow2Limits), plus one table
 * at a time; time is bounded by the number of L2 tables read, which is capped relative to the file.
 */

#include <stdio.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

#include "bytes.h"
#include "qcow2-internal.h"

typedef enum ClusterUse {
        USE_NONE,
        USE_META,   /* header, L1s, refcount structures, snapshot table, bitmaps, encryption header */
        USE_L2,     /* an L2 table (may be shared between L1 tables through snapshots) */
        USE_DATA,   /* guest data (may be shared, several compressed clusters may share one) */
} ClusterUse;

static const char *const cluster_use_table[] = {
        [USE_NONE] = "free space",
        [USE_META] = "metadata",
        [USE_L2] = "an L2 table",
        [USE_DATA] = "guest data",
};

typedef struct Walk {
        int fd;
        const Qcow2Header *h;
        Qcow2CheckResult *res;
        FormatError *err;
        uint64_t nb_clusters;
        uint32_t *refs;   /* recomputed references */
        uint32_t *ondisk; /* refcounts read from the refcount blocks, UINT32_MAX if that or more */
        uint8_t *rt;      /* the refcount table, to read refcounts wider than 32 bits again */
        uint8_t *use;
        uint8_t *table;   /* one cluster */
        uint8_t *zin;     /* a compressed cluster's bytes (at most 2 clusters), allocated on first use */
        uint8_t *zout;    /* its decompressed content (one cluster) */
        ZSTD_DCtx *zstd;  /* the zstd decoder, created on first use */
        uint64_t max_l2_reads;
} Walk;

static const char *const problem_kind_table[_QCOW2_PROBLEM_KIND_MAX] = {
        [QCOW2_PROBLEM_OUTSIDE_FILE] = "outside-file",
        [QCOW2_PROBLEM_MISALIGNED] = "misaligned",
        [QCOW2_PROBLEM_OVERLAP] = "overlap",
        [QCOW2_PROBLEM_RESERVED_BITS] = "reserved-bits",
        [QCOW2_PROBLEM_INVALID_ENTRY] = "invalid-entry",
        [QCOW2_PROBLEM_REFCOUNT_MISMATCH] = "refcount-mismatch",
        [QCOW2_PROBLEM_LEAK] = "leak",
        [QCOW2_PROBLEM_COPIED_FLAG] = "copied-flag",
        [QCOW2_PROBLEM_SNAPSHOT_TABLE] = "snapshot-table",
        [QCOW2_PROBLEM_BITMAP_DIRECTORY] = "bitmap-directory",
};

const char *qcow2_problem_kind_to_string(Qcow2ProblemKind k) {
        if (k < 0 || k >= _QCOW2_PROBLEM_KIND_MAX)
                return NULL;
        return problem_kind_table[k];
}

void qcow2_check_result_done(Qcow2CheckResult *r) {
        if (!r)
                return;
        free(r->problems);
        *r = (Qcow2CheckResult) {};
}

_printf_(4, 5) static void problem(Walk *w, Qcow2ProblemKind kind, uint64_t offset, const char *fmt, ...) {
        Qcow2CheckResult *res = w->res;

        if (kind == QCOW2_PROBLEM_LEAK)
                res->leaks++;
        else
                res->corruptions++;

        if (res->n_problems >= QCOW2_CHECK_MAX_PROBLEMS)
                return;
        if (!res->problems) {
                res->problems = calloc(QCOW2_CHECK_MAX_PROBLEMS, sizeof(Qcow2Problem));
                if (!res->problems)
                        return;
        }

        Qcow2Problem *p = &res->problems[res->n_problems++];
        va_list ap;

        p->kind = kind;
        p->offset = offset;
        va_start(ap, fmt);
        (void) vsnprintf(p->text, sizeof(p->text), fmt, ap);
        va_end(ap);
}

static Qcow2ProblemKind decode_problem_kind(int r) {
        switch (r) {
        case -ERANGE:
                return QCOW2_PROBLEM_RESERVED_BITS;
        case -EFAULT:
                return QCOW2_PROBLEM_MISALIGNED;
        default:
                return QCOW2_PROBLEM_INVALID_ENTRY;
        }
}

static bool overlap_allowed(ClusterUse old, ClusterUse new) {
        if (old == USE_NONE)
                return true;
        /* Sharing is how snapshots work: an L2 table or data cluster may have several references. */
        return old == new && (new == USE_L2 || new == USE_DATA);
}

/*
 * Counts one reference to every cluster of [offset, offset + bytes). Returns false (and records a
 * problem) if the range leaves the file; overlaps are recorded but still counted.
 */
static bool mark(Walk *w, uint64_t offset, uint64_t bytes, ClusterUse use, const char *what) {
        uint64_t first, last;

        if (bytes == 0)
                return true;
        if (offset >= QCOW2_MAX_OFFSET || bytes > QCOW2_MAX_OFFSET - offset) {
                problem(w, QCOW2_PROBLEM_OUTSIDE_FILE, offset, "%s at 0x%" PRIx64 " lies beyond the largest qcow2 offset",
                        what, offset);
                return false;
        }
        first = offset >> w->h->cluster_bits;
        last = (offset + bytes - 1) >> w->h->cluster_bits;
        if (last >= w->nb_clusters) {
                problem(w, QCOW2_PROBLEM_OUTSIDE_FILE, offset, "%s at 0x%" PRIx64 " extends past the end of the file", what,
                        offset);
                return false;
        }

        for (uint64_t c = first; c <= last; c++) {
                if (!overlap_allowed(w->use[c], use))
                        problem(w, QCOW2_PROBLEM_OVERLAP, c << w->h->cluster_bits,
                                "%s at 0x%" PRIx64 " overlaps %s", what, c << w->h->cluster_bits,
                                cluster_use_table[w->use[c]]);
                if (w->use[c] == USE_NONE || use == USE_META)
                        w->use[c] = (uint8_t) use;
                if (w->refs[c] < UINT32_MAX)
                        w->refs[c]++;
        }
        return true;
}

static uint64_t refcount_get(const uint8_t *block, uint64_t idx, uint32_t order) {
        uint32_t bits = 1U << order;

        switch (bits) {
        case 64:
                return be64_read(block + idx * 8);
        case 32:
                return be32_read(block + idx * 4);
        case 16:
                return be16_read(block + idx * 2);
        case 8:
                return block[idx];
        default: {
                /* Sub-byte widths: bit 0 is the least significant bit of the byte. */
                uint64_t bit = idx * bits;
                return (block[bit / 8] >> (bit % 8)) & ((1U << bits) - 1);
        }
        }
}

static int load_refcounts(Walk *w) {
        const Qcow2Header *h = w->h;
        uint64_t rt_bytes = (uint64_t) h->refcount_table_clusters << h->cluster_bits;
        uint64_t per_block = (h->cluster_size * 8) >> h->refcount_order;
        uint64_t beyond = 0;
        uint8_t *rt;
        int r;

        rt = w->rt = malloc(rt_bytes);
        if (!rt)
                return format_error(w->err, -ENOMEM, "out of memory");
        r = format_pread_full(w->fd, rt, rt_bytes, h->refcount_table_offset);
        if (r < 0)
                return format_error(w->err, r, "cannot read the refcount table");
        mark(w, h->refcount_table_offset, rt_bytes, USE_META, "refcount table");

        for (uint64_t i = 0; i < rt_bytes / 8; i++) {
                uint64_t e = be64_read(rt + i * 8), off = e & QCOW2_REFT_OFFSET_MASK;

                if (e & QCOW2_REFT_RESERVED_MASK)
                        problem(w, QCOW2_PROBLEM_RESERVED_BITS, h->refcount_table_offset + i * 8,
                                "refcount table entry %" PRIu64 " has reserved bits set", i);
                if (off == 0)
                        continue;
                if (off & (h->cluster_size - 1)) {
                        problem(w, QCOW2_PROBLEM_MISALIGNED, off, "refcount block %" PRIu64 " is not cluster-aligned", i);
                        continue;
                }
                if (!mark(w, off, h->cluster_size, USE_META, "refcount block"))
                        continue;
                if (off > h->file_size || h->cluster_size > h->file_size - off) {
                        problem(w, QCOW2_PROBLEM_OUTSIDE_FILE, off, "refcount block %" PRIu64 " extends past the end of the file", i);
                        continue;
                }
                r = format_pread_full(w->fd, w->table, h->cluster_size, off);
                if (r < 0)
                        return format_error(w->err, r, "cannot read refcount block %" PRIu64, i);
                for (uint64_t k = 0; k < per_block; k++) {
                        uint64_t c, v = refcount_get(w->table, k, h->refcount_order);

                        if (v == 0)
                                continue;
                        if (i > (UINT64_MAX - k) / per_block || (c = i * per_block + k) >= w->nb_clusters) {
                                beyond++;
                                continue;
                        }
                        w->ondisk[c] = v > UINT32_MAX ? UINT32_MAX : (uint32_t) v;
                }
        }

        if (beyond > 0) {
                w->res->leaks += beyond - 1;
                problem(w, QCOW2_PROBLEM_LEAK, h->file_size,
                        "%" PRIu64 " clusters past the end of the file have a non-zero refcount", beyond);
        }
        return 0;
}

/*
 * The exact on-disk refcount of cluster c, for messages: ondisk[] saturates at UINT32_MAX, which
 * only 64-bit refcounts can exceed; those are read again from their refcount block.
 */
static uint64_t exact_refcount(Walk *w, uint64_t c) {
        const Qcow2Header *h = w->h;
        uint64_t per_block = (h->cluster_size * 8) >> h->refcount_order, e, off;
        uint8_t b[8];

        if (c >= w->nb_clusters)
                return 0;
        if (w->ondisk[c] < UINT32_MAX || h->refcount_order < 6 || !w->rt)
                return w->ondisk[c];
        /* The entry was read once through this table entry, so both are in bounds. */
        e = be64_read(w->rt + (c / per_block) * 8);
        off = (e & QCOW2_REFT_OFFSET_MASK) + (c % per_block) * 8;
        if (format_pread_full(w->fd, b, sizeof(b), off) < 0)
                return w->ondisk[c];
        return be64_read(b);
}

static uint32_t ondisk_refcount(Walk *w, uint64_t offset) {
        uint64_t c = offset >> w->h->cluster_bits;
        return c < w->nb_clusters ? w->ondisk[c] : 0;
}

/*
 * Whether a zstd-compressed cluster's bytes (in w->zin) hold one zstd frame that decodes to
 * exactly one cluster: QEMU's read fails (EIO) when the frame is damaged, gives less than a
 * cluster, or is not complete when the cluster is. Bytes after the frame (the rest of the last
 * sector) are not read. Returns 1 if so, 0 if not, < 0 on an allocation error.
 */
static int zstd_cluster_ok(Walk *w, size_t size) {
        ZSTD_inBuffer in = { .src = w->zin, .size = size };
        ZSTD_outBuffer out = { .dst = w->zout, .size = w->h->cluster_size };
        size_t left = 1;

        if (!w->zstd) {
                w->zstd = ZSTD_createDCtx();
                if (!w->zstd)
                        return -ENOMEM;
        } else
                (void) ZSTD_DCtx_reset(w->zstd, ZSTD_reset_session_only);

        while (out.pos < out.size) {
                size_t in_before = in.pos, out_before = out.pos;

                left = ZSTD_decompressStream(w->zstd, &out, &in);
                if (ZSTD_isError(left))
                        return 0;
                if (left == 0 || (in.pos == in_before && out.pos == out_before))
                        break; /* the frame ended, or no input can take it further */
        }
        return left == 0 && out.pos == out.size;
}

/*
 * Whether a compressed cluster decompresses, as QEMU's read does, from the bytes its descriptor
 * covers into a whole cluster: deflate is inflated raw with a 4 KiB window and must give at
 * least a cluster; zstd must give one complete frame of exactly a cluster. QEMU fails the read
 * (EIO) otherwise. Bytes past the end of the file read as zeros, as they do in QEMU (its own last
 * compressed cluster usually ends there).
 * Returns 1 if it does, 0 if not, < 0 on an I/O or allocation error.
 */
static int compressed_cluster_ok(Walk *w, uint64_t offset, uint64_t size) {
        const Qcow2Header *h = w->h;
        z_stream z = {};
        uint64_t avail;
        int r;

        if (!w->zin) {
                w->zin = malloc(2 * h->cluster_size);
                w->zout = malloc(h->cluster_size);
                if (!w->zin || !w->zout)
                        return -ENOMEM;
        }
        size = MIN(size, 2 * h->cluster_size); /* the descriptor's field cannot say more */
        avail = offset < h->file_size ? MIN(size, h->file_size - offset) : 0;
        r = format_pread_full(w->fd, w->zin, avail, offset);
        if (r < 0)
                return r;
        memset(w->zin + avail, 0, size - avail);

        if (h->compression_type == QCOW2_COMPRESSION_ZSTD)
                return zstd_cluster_ok(w, size);

        if (inflateInit2(&z, -12) != Z_OK)
                return -ENOMEM;
        z.next_in = w->zin;
        z.avail_in = (uInt) size;
        z.next_out = w->zout;
        z.avail_out = (uInt) h->cluster_size;
        r = inflate(&z, Z_FINISH);
        (void) inflateEnd(&z);
        return (r == Z_STREAM_END || r == Z_BUF_ERROR) && z.avail_out == 0;
}

static int walk_l2(Walk *w, uint64_t l2_offset, uint64_t l1_index, bool active) {
        const Qcow2Header *h = w->h;
        uint64_t n = qcow2_l2_entries(h);
        int r;

        if (w->res->l2_tables_read >= w->max_l2_reads)
                return format_error(w->err, -E2BIG, "the metadata walk read more than %" PRIu64 " L2 tables", w->max_l2_reads);
        w->res->l2_tables_read++;

        /* The file's last cluster may be cut short: a table there is damaged, not an I/O error. */
        if (l2_offset > h->file_size || h->cluster_size > h->file_size - l2_offset) {
                problem(w, QCOW2_PROBLEM_OUTSIDE_FILE, l2_offset, "L2 table at 0x%" PRIx64 " extends past the end of the file",
                        l2_offset);
                return 0;
        }
        r = format_pread_full(w->fd, w->table, h->cluster_size, l2_offset);
        if (r < 0)
                return format_error(w->err, r, "cannot read the L2 table at 0x%" PRIx64, l2_offset);

        for (uint64_t j = 0; j < n; j++) {
                uint64_t guest = ((l1_index * n + j) << h->cluster_bits);
                Qcow2Entry e;
                char text[160];

                r = qcow2_entry_decode(h, w->table, j, guest, &e, text, sizeof(text));
                if (r < 0) {
                        problem(w, decode_problem_kind(r), l2_offset + j * qcow2_l2_entry_size(h), "%s", text);
                        continue;
                }

                switch (e.type) {
                case QCOW2_CLUSTER_COMPRESSED:
                        if (e.host_offset >= h->file_size) {
                                problem(w, QCOW2_PROBLEM_OUTSIDE_FILE, e.host_offset,
                                        "compressed cluster for guest offset 0x%" PRIx64 " lies past the end of the file", guest);
                                break;
                        }
                        if (active)
                                w->res->compressed_clusters++;
                        if (!mark(w, e.host_offset, e.compressed_size, USE_DATA, "compressed cluster"))
                                break;
                        r = compressed_cluster_ok(w, e.host_offset, e.compressed_size);
                        if (r < 0)
                                return format_error(w->err, r, "cannot check the compressed cluster at 0x%" PRIx64, e.host_offset);
                        if (r == 0)
                                problem(w, QCOW2_PROBLEM_INVALID_ENTRY, e.host_offset,
                                        "compressed cluster for guest offset 0x%" PRIx64 " does not decompress to a whole cluster from its %" PRIu64 " bytes",
                                        guest, e.compressed_size);
                        break;

                case QCOW2_CLUSTER_NORMAL:
                case QCOW2_CLUSTER_ZERO_ALLOC:
                        if (active && e.type == QCOW2_CLUSTER_NORMAL)
                                w->res->allocated_clusters++;
                        if (qcow2_has_data_file(h))
                                break; /* host offsets refer to the data file, which has no refcounts */
                        if (!mark(w, e.host_offset, h->cluster_size, USE_DATA, "data cluster"))
                                break;
                        if (active && (ondisk_refcount(w, e.host_offset) == 1) != e.copied)
                                problem(w, QCOW2_PROBLEM_COPIED_FLAG, e.host_offset,
                                        "data cluster 0x%" PRIx64 " has refcount %" PRIu64 " but COPIED is %s", e.host_offset,
                                        exact_refcount(w, e.host_offset >> h->cluster_bits), e.copied ? "set" : "clear");
                        break;

                case QCOW2_CLUSTER_ZERO_PLAIN:
                case QCOW2_CLUSTER_UNALLOCATED:
                        break;
                }
        }
        return 0;
}

static int walk_l1(Walk *w, uint64_t l1_offset, uint32_t l1_size, bool active, const char *what) {
        const Qcow2Header *h = w->h;
        _cleanup_free_ uint8_t *l1 = NULL;
        uint64_t bytes = (uint64_t) l1_size * 8;
        int r;

        if (l1_size == 0)
                return 0;
        if (bytes > QCOW2_MAX_L1_BYTES) {
                problem(w, QCOW2_PROBLEM_INVALID_ENTRY, l1_offset, "%s has more than 32 MiB of entries", what);
                return 0;
        }
        if (l1_offset & (h->cluster_size - 1)) {
                problem(w, QCOW2_PROBLEM_MISALIGNED, l1_offset, "%s is not cluster-aligned", what);
                return 0;
        }
        if (!mark(w, l1_offset, bytes, USE_META, what))
                return 0;
        /* QEMU truncates the file right after the L1 entries; the rest of the cluster need not exist. */
        if (l1_offset > h->file_size || bytes > h->file_size - l1_offset) {
                problem(w, QCOW2_PROBLEM_OUTSIDE_FILE, l1_offset, "%s extends past the end of the file", what);
                return 0;
        }

        l1 = malloc(bytes);
        if (!l1)
                return format_error(w->err, -ENOMEM, "out of memory");
        r = format_pread_full(w->fd, l1, bytes, l1_offset);
        if (r < 0)
                return format_error(w->err, r, "cannot read the %s", what);

        for (uint64_t i = 0; i < l1_size; i++) {
                uint64_t e = be64_read(l1 + i * 8), off = e & QCOW2_L1E_OFFSET_MASK;

                if (e & QCOW2_L1E_RESERVED_MASK) {
                        problem(w, QCOW2_PROBLEM_RESERVED_BITS, l1_offset + i * 8, "%s entry %" PRIu64 " has reserved bits set",
                                what, i);
                        continue;
                }
                if (off == 0) {
                        if (e & QCOW2_OFLAG_COPIED)
                                problem(w, QCOW2_PROBLEM_INVALID_ENTRY, l1_offset + i * 8,
                                        "%s entry %" PRIu64 " has the COPIED flag but no L2 table", what, i);
                        continue;
                }
                if (off & (h->cluster_size - 1)) {
                        problem(w, QCOW2_PROBLEM_MISALIGNED, off, "L2 table of %s entry %" PRIu64 " is not cluster-aligned", what, i);
                        continue;
                }
                if (!mark(w, off, h->cluster_size, USE_L2, "L2 table"))
                        continue;
                if (active && (ondisk_refcount(w, off) == 1) != !!(e & QCOW2_OFLAG_COPIED))
                        problem(w, QCOW2_PROBLEM_COPIED_FLAG, off, "L2 table 0x%" PRIx64 " has refcount %" PRIu64 " but COPIED is %s",
                                off, exact_refcount(w, off >> h->cluster_bits), (e & QCOW2_OFLAG_COPIED) ? "set" : "clear");
                r = walk_l2(w, off, i, active);
                if (r < 0)
                        return r;
        }
        return 0;
}

/*
 * The snapshot table: entries start 8-byte aligned, but QEMU writes no padding after the last one, so
 * the table (and often the file) ends right after the last entry's name. The table's clusters are
 * counted once, up to the last byte read, whether or not an entry turned out to be invalid.
 */
static int walk_snapshots(Walk *w) {
        const Qcow2Header *h = w->h;
        uint64_t off = h->snapshots_offset, end = h->snapshots_offset;
        uint8_t fixed[40];
        int r = 0;

        for (uint32_t i = 0; i < h->nb_snapshots; i++) {
                uint64_t l1_offset, entry;
                uint32_t l1_size, extra;
                uint16_t id_len, name_len;

                if (i > 0)
                        off = (off + 7) & ~UINT64_C(7);
                if (off > h->file_size || sizeof(fixed) > h->file_size - off) {
                        problem(w, QCOW2_PROBLEM_SNAPSHOT_TABLE, off, "snapshot %" PRIu32 " lies past the end of the file", i);
                        break;
                }
                r = format_pread_full(w->fd, fixed, sizeof(fixed), off);
                if (r < 0)
                        return format_error(w->err, r, "cannot read the snapshot table");
                end = off + sizeof(fixed);

                l1_offset = be64_read(fixed);
                l1_size = be32_read(fixed + 8);
                id_len = be16_read(fixed + 12);
                name_len = be16_read(fixed + 14);
                extra = be32_read(fixed + 36);

                if (extra > QCOW2_MAX_SNAPSHOT_EXTRA_DATA) {
                        problem(w, QCOW2_PROBLEM_SNAPSHOT_TABLE, off, "snapshot %" PRIu32 " has %" PRIu32 " bytes of extra data", i,
                                extra);
                        break;
                }
                if (h->version >= 3 && extra < 16) {
                        problem(w, QCOW2_PROBLEM_SNAPSHOT_TABLE, off, "snapshot %" PRIu32 " lacks the version 3 extra data", i);
                        break;
                }
                entry = sizeof(fixed) + (uint64_t) extra + id_len + name_len;
                if (off + entry - h->snapshots_offset > QCOW2_MAX_SNAPSHOTS_BYTES)
                        return format_error(w->err, -E2BIG, "snapshot table is larger than 64 MiB");
                if (entry > h->file_size - off) {
                        problem(w, QCOW2_PROBLEM_SNAPSHOT_TABLE, off, "snapshot %" PRIu32 " extends past the end of the file", i);
                        break;
                }
                end = off + entry;

                r = walk_l1(w, l1_offset, l1_size, false, "snapshot L1 table");
                if (r < 0)
                        return r;
                off += entry;
        }

        mark(w, h->snapshots_offset, end - h->snapshots_offset, USE_META, "snapshot table");
        return 0;
}

static int walk_bitmaps(Walk *w) {
        const Qcow2Header *h = w->h;
        _cleanup_free_ uint8_t *dir = NULL;
        uint64_t size = h->bitmap_directory_size, off = 0, n = 0;
        int r;

        if (!h->has_bitmaps_ext || !(h->autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
                return 0;
        if (!mark(w, h->bitmap_directory_offset, size, USE_META, "bitmap directory"))
                return 0;
        dir = malloc(size);
        if (!dir)
                return format_error(w->err, -ENOMEM, "out of memory");
        r = format_pread_full(w->fd, dir, size, h->bitmap_directory_offset);
        if (r < 0)
                return format_error(w->err, r, "cannot read the bitmap directory");

        while (off < size) {
                uint64_t table_offset, entry;
                uint32_t table_size, flags, extra;
                uint16_t name_size;
                uint8_t type, granularity;
                _cleanup_free_ uint8_t *table = NULL;

                if (size - off < 24) {
                        problem(w, QCOW2_PROBLEM_BITMAP_DIRECTORY, h->bitmap_directory_offset + off, "truncated bitmap directory entry");
                        return 0;
                }
                table_offset = be64_read(dir + off);
                table_size = be32_read(dir + off + 8);
                flags = be32_read(dir + off + 12);
                type = dir[off + 16];
                granularity = dir[off + 17];
                name_size = be16_read(dir + off + 18);
                extra = be32_read(dir + off + 20);
                entry = (24 + (uint64_t) extra + name_size + 7) & ~UINT64_C(7);
                if (entry > size - off) {
                        problem(w, QCOW2_PROBLEM_BITMAP_DIRECTORY, h->bitmap_directory_offset + off,
                                "bitmap directory entry extends past the directory");
                        return 0;
                }
                if (type != 1 || granularity < 9 || granularity > 31 || name_size == 0 || name_size > 1023 ||
                    (flags & ~UINT32_C(0x3)) || extra != 0 || table_size == 0 || table_offset == 0) {
                        problem(w, QCOW2_PROBLEM_BITMAP_DIRECTORY, h->bitmap_directory_offset + off,
                                "bitmap %" PRIu64 " has an invalid type, granularity, name size or flags", n);
                        return 0;
                }
                if ((uint64_t) table_size * 8 > QCOW2_MAX_L1_BYTES || (table_offset & (h->cluster_size - 1))) {
                        problem(w, QCOW2_PROBLEM_BITMAP_DIRECTORY, table_offset, "bitmap %" PRIu64 " has an invalid table", n);
                        return 0;
                }
                if (table_size > 0 && mark(w, table_offset, (uint64_t) table_size * 8, USE_META, "bitmap table")) {
                        table = malloc((size_t) table_size * 8);
                        if (!table)
                                return format_error(w->err, -ENOMEM, "out of memory");
                        r = format_pread_full(w->fd, table, (size_t) table_size * 8, table_offset);
                        if (r < 0)
                                return format_error(w->err, r, "cannot read a bitmap table");
                        for (uint32_t k = 0; k < table_size; k++) {
                                uint64_t e = be64_read(table + (size_t) k * 8), data = e & QCOW2_L1E_OFFSET_MASK;

                                if (e & UINT64_C(0xff000000000001fe))
                                        problem(w, QCOW2_PROBLEM_RESERVED_BITS, table_offset + (uint64_t) k * 8,
                                                "bitmap table entry has reserved bits set");
                                else if (data != 0 && (e & 1))
                                        problem(w, QCOW2_PROBLEM_INVALID_ENTRY, table_offset + (uint64_t) k * 8,
                                                "bitmap table entry has both an offset and the all-ones flag");
                                else if (data & (h->cluster_size - 1))
                                        problem(w, QCOW2_PROBLEM_MISALIGNED, data, "bitmap data cluster is not aligned");
                                else if (data != 0)
                                        mark(w, data, h->cluster_size, USE_META, "bitmap data cluster");
                        }
                }
                off += entry;
                n++;
        }
        if (n != h->nb_bitmaps)
                problem(w, QCOW2_PROBLEM_BITMAP_DIRECTORY, h->bitmap_directory_offset,
                        "bitmap directory holds %" PRIu64 " bitmaps, the header says %" PRIu32, n, h->nb_bitmaps);
        return 0;
}

static void compare_refcounts(Walk *w) {
        for (uint64_t c = 0; c < w->nb_clusters; c++) {
                uint32_t have = w->ondisk[c], want = w->refs[c];

                if (have == want)
                        continue;
                if (have < want)
                        problem(w, QCOW2_PROBLEM_REFCOUNT_MISMATCH, c << w->h->cluster_bits,
                                "cluster 0x%" PRIx64 " has refcount %" PRIu64 " but %" PRIu32 " references",
                                c << w->h->cluster_bits, exact_refcount(w, c), want);
                else
                        problem(w, QCOW2_PROBLEM_LEAK, c << w->h->cluster_bits,
                                "cluster 0x%" PRIx64 " has refcount %" PRIu64 " but %" PRIu32 " references (leaked)",
                                c << w->h->cluster_bits, exact_refcount(w, c), want);
        }
}

int qcow2_check(int fd, const Qcow2Header *h, const Qcow2Limits *limits, Qcow2CheckResult *ret, FormatError *err) {
        _cleanup_free_ uint32_t *refs = NULL, *ondisk = NULL;
        _cleanup_free_ uint8_t *use = NULL, *table = NULL, *rt = NULL, *zin = NULL, *zout = NULL;
        Qcow2CheckResult res = {};
        uint64_t max_clusters;
        Walk w;
        int r;

        max_clusters = limits && limits->max_host_clusters ? limits->max_host_clusters : QCOW2_DEFAULT_MAX_HOST_CLUSTERS;

        w = (Walk) {
                .fd = fd,
                .h = h,
                .res = &res,
                .err = err,
                .nb_clusters = (h->file_size + h->cluster_size - 1) >> h->cluster_bits,
        };
        if (w.nb_clusters > max_clusters)
                return format_error(err, -E2BIG, "file has %" PRIu64 " clusters, more than the walk limit of %" PRIu64,
                                    w.nb_clusters, max_clusters);
        res.host_clusters = w.nb_clusters;
        /* Each L2 table may be reached from the active L1 and every snapshot's L1 once. */
        w.max_l2_reads = (w.nb_clusters + 1) * ((uint64_t) h->nb_snapshots + 1);
        w.max_l2_reads = MIN(w.max_l2_reads, UINT64_C(1) << 24);

        refs = calloc(MAX(w.nb_clusters, 1), sizeof(uint32_t));
        ondisk = calloc(MAX(w.nb_clusters, 1), sizeof(uint32_t));
        use = calloc(MAX(w.nb_clusters, 1), 1);
        table = malloc(h->cluster_size);
        if (!refs || !ondisk || !use || !table)
                return format_error(err, -ENOMEM, "out of memory for %" PRIu64 " clusters", w.nb_clusters);
        w.refs = refs;
        w.ondisk = ondisk;
        w.use = use;
        w.table = table;

        mark(&w, 0, h->cluster_size, USE_META, "header");

        r = load_refcounts(&w);
        rt = w.rt;
        if (r >= 0)
                r = walk_l1(&w, h->l1_table_offset, h->l1_size, true, "active L1 table");
        if (r >= 0)
                r = walk_snapshots(&w);
        if (r >= 0)
                r = walk_bitmaps(&w);
        if (r >= 0 && h->has_crypto_ext)
                mark(&w, h->crypto_offset, h->crypto_length, USE_META, "encryption header");
        zin = w.zin;
        zout = w.zout;
        ZSTD_freeDCtx(w.zstd);
        if (r < 0) {
                qcow2_check_result_done(&res);
                return r;
        }

        compare_refcounts(&w);
        *ret = res;
        return 0;
}
