/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * In-place qcow2 editing with an undo log; see qcow2-edit.h for the crash model. Tables live in
 * memory in host byte order (L1, refcount table) or as on-disk clusters (L2 tables, refcount
 * blocks) until qcow2_edit_flush() writes them.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "qcow2-edit.h"
#include "qcow2-internal.h"

typedef struct RefBlock {
        uint8_t *buf;    /* NULL: not loaded */
        uint64_t offset; /* 0: new, not placed yet */
        bool dirty;
} RefBlock;

typedef struct L2Table {
        uint8_t *buf;
        uint64_t offset; /* always a cluster this edit allocated */
} L2Table;

struct Qcow2Edit {
        int fd;
        UndoLog *undo;
        Qcow2Header h;
        uint64_t cs;
        uint64_t orig_end; /* file length when editing began: everything below existed before */
        uint64_t next;     /* next free cluster: allocation only ever moves forward */

        uint64_t *l1;
        uint64_t l1_size, l1_offset, l1_clusters;
        bool l1_dirty;

        uint64_t *reftable;
        uint64_t rt_entries, rt_offset, rt_clusters;
        bool rt_dirty;
        uint64_t per_block;
        RefBlock *blocks;
        uint64_t n_blocks;

        L2Table **l2; /* by L1 index: tables changed since the last flush */
        uint64_t n_l2;

        uint8_t *backing_header;
        size_t backing_header_len;
        bool header_dirty;

        uint64_t *saved; /* offsets of regions already in the undo log */
        size_t n_saved, allocated_saved;

        uint64_t metadata_bytes;
};

static uint64_t div_round_up(uint64_t a, uint64_t b) {
        return a / b + (a % b != 0);
}

const Qcow2Header *qcow2_edit_header(const Qcow2Edit *e) {
        return &e->h;
}

uint64_t qcow2_edit_metadata_bytes(const Qcow2Edit *e) {
        return e->metadata_bytes;
}

Qcow2Edit *qcow2_edit_free(Qcow2Edit *e) {
        if (!e)
                return NULL;
        for (uint64_t i = 0; i < e->n_blocks; i++)
                free(e->blocks[i].buf);
        for (uint64_t i = 0; i < e->n_l2; i++)
                if (e->l2[i]) {
                        free(e->l2[i]->buf);
                        free(e->l2[i]);
                }
        free(e->blocks);
        free(e->l2);
        free(e->l1);
        free(e->reftable);
        free(e->backing_header);
        free(e->saved);
        free(e);
        return NULL;
}

/* ---- refcounts ---- */

static uint64_t rc_read(const uint8_t *b, uint64_t i, uint32_t order) {
        switch (order) {
        case 6:
                return be64_read(b + i * 8);
        case 5:
                return be32_read(b + i * 4);
        case 4:
                return be16_read(b + i * 2);
        case 3:
                return b[i];
        default: {
                uint32_t bits = 1U << order;
                return (b[i * bits / 8] >> (i * bits % 8)) & ((1U << bits) - 1);
        }
        }
}

static void rc_write(uint8_t *b, uint64_t i, uint32_t order, uint64_t v) {
        switch (order) {
        case 6:
                be64_write(b + i * 8, v);
                break;
        case 5:
                be32_write(b + i * 4, (uint32_t) v);
                break;
        case 4:
                be16_write(b + i * 2, (uint16_t) v);
                break;
        case 3:
                b[i] = (uint8_t) v;
                break;
        default: {
                uint32_t bits = 1U << order, shift = i * bits % 8;
                uint8_t mask = (uint8_t) (((1U << bits) - 1) << shift);
                b[i * bits / 8] = (uint8_t) ((b[i * bits / 8] & ~mask) | ((v << shift) & mask));
        }
        }
}

static int block_get(Qcow2Edit *e, uint64_t b, RefBlock **ret, FormatError *err) {
        RefBlock *rb;
        uint64_t off;
        int r;

        if (b >= e->n_blocks) {
                uint64_t n = MAX(b + 1, e->n_blocks * 2);
                RefBlock *p = realloc(e->blocks, n * sizeof(RefBlock));
                if (!p)
                        return format_error(err, -ENOMEM, "out of memory");
                memset(p + e->n_blocks, 0, (n - e->n_blocks) * sizeof(RefBlock));
                e->blocks = p;
                e->n_blocks = n;
        }
        rb = &e->blocks[b];
        if (!rb->buf) {
                rb->buf = calloc(1, e->cs);
                if (!rb->buf)
                        return format_error(err, -ENOMEM, "out of memory");
                off = b < e->rt_entries ? e->reftable[b] & QCOW2_REFT_OFFSET_MASK : 0;
                if (off) {
                        r = format_pread_full(e->fd, rb->buf, e->cs, off);
                        if (r < 0)
                                return format_error(err, r, "cannot read refcount block %" PRIu64, b);
                        rb->offset = off;
                }
        }
        *ret = rb;
        return 0;
}

static int rc_get(Qcow2Edit *e, uint64_t cluster, uint64_t *ret, FormatError *err) {
        RefBlock *rb;
        int r = block_get(e, cluster / e->per_block, &rb, err);
        if (r < 0)
                return r;
        *ret = rc_read(rb->buf, cluster % e->per_block, e->h.refcount_order);
        return 0;
}

static int rc_set(Qcow2Edit *e, uint64_t cluster, uint64_t v, FormatError *err) {
        RefBlock *rb;
        int r = block_get(e, cluster / e->per_block, &rb, err);
        if (r < 0)
                return r;
        rc_write(rb->buf, cluster % e->per_block, e->h.refcount_order, v);
        rb->dirty = true;
        return 0;
}

/* One reference less for each cluster of [offset, offset+length). */
static int rc_release(Qcow2Edit *e, uint64_t offset, uint64_t length, FormatError *err) {
        for (uint64_t c = offset / e->cs; length > 0 && c <= (offset + length - 1) / e->cs; c++) {
                uint64_t v;
                int r = rc_get(e, c, &v, err);
                if (r < 0)
                        return r;
                if (v == 0)
                        return format_error(err, -EBADMSG, "host cluster 0x%" PRIx64 " is referenced but has refcount 0",
                                            c * e->cs);
                r = rc_set(e, c, v - 1, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int alloc_clusters(Qcow2Edit *e, uint64_t n, uint64_t *ret, FormatError *err) {
        uint64_t off = e->next;

        if (n > (QCOW2_MAX_OFFSET - off) / e->cs)
                return format_error(err, -E2BIG, "the image would grow beyond the largest qcow2 offset");
        e->next += n * e->cs;
        for (uint64_t i = 0; i < n; i++) {
                int r = rc_set(e, off / e->cs + i, 1, err);
                if (r < 0)
                        return r;
        }
        *ret = off;
        return 0;
}

int qcow2_edit_alloc(Qcow2Edit *e, uint64_t n, uint64_t *ret_offset, FormatError *err) {
        return alloc_clusters(e, n, ret_offset, err);
}

/* Places new refcount blocks, growing (moving) the refcount table when it is too small; repeats until
 * the blocks that describe the new clusters are themselves described. */
static int place_refcount_structures(Qcow2Edit *e, FormatError *err) {
        for (;;) {
                bool changed = false;
                uint64_t used = 0;
                int r;

                for (uint64_t b = 0; b < e->n_blocks; b++) {
                        RefBlock *rb = &e->blocks[b];
                        uint64_t off;

                        if (!rb->buf)
                                continue;
                        used = b + 1;
                        if (rb->offset)
                                continue;
                        if (e->next > QCOW2_MAX_OFFSET - e->cs)
                                return format_error(err, -E2BIG, "the image would grow beyond the largest qcow2 offset");
                        off = e->next;
                        e->next += e->cs;
                        rb->offset = off;
                        rb->dirty = true;
                        r = rc_set(e, off / e->cs, 1, err); /* may load or create another block */
                        if (r < 0)
                                return r;
                        rb = &e->blocks[b]; /* the array may have moved */
                        if (b < e->rt_entries) {
                                e->reftable[b] = off;
                                e->rt_dirty = true;
                        }
                        changed = true;
                        used = MAX(used, e->n_blocks);
                }
                for (uint64_t b = e->n_blocks; b-- > 0;)
                        if (e->blocks[b].buf) {
                                used = b + 1;
                                break;
                        }

                if (used > e->rt_entries) {
                        /* A bigger table at the end, with room to spare for the blocks it brings itself. */
                        uint64_t want = used + used / 2 + 64, clusters = div_round_up(want * 8, e->cs), off;
                        uint64_t *t;

                        if (clusters * e->cs > QCOW2_MAX_REFTABLE_BYTES)
                                return format_error(err, -E2BIG, "the refcount table would exceed %" PRIu64 " bytes",
                                                    QCOW2_MAX_REFTABLE_BYTES);
                        t = calloc(clusters * e->cs / 8, sizeof(uint64_t));
                        if (!t)
                                return format_error(err, -ENOMEM, "out of memory");
                        memcpy(t, e->reftable, e->rt_entries * sizeof(uint64_t));
                        r = rc_release(e, e->rt_offset, e->rt_clusters * e->cs, err);
                        if (r >= 0)
                                r = alloc_clusters(e, clusters, &off, err);
                        if (r < 0) {
                                free(t);
                                return r;
                        }
                        free(e->reftable);
                        e->reftable = t;
                        e->rt_entries = clusters * e->cs / 8;
                        e->rt_offset = off;
                        e->rt_clusters = clusters;
                        for (uint64_t b = 0; b < e->n_blocks && b < e->rt_entries; b++)
                                if (e->blocks[b].offset)
                                        e->reftable[b] = e->blocks[b].offset;
                        e->rt_dirty = true;
                        e->header_dirty = true;
                        changed = true;
                }
                if (!changed)
                        return 0;
        }
}

/* ---- L1/L2 ---- */

static int l2_for_write(Qcow2Edit *e, uint64_t l1_index, L2Table **ret, FormatError *err) {
        L2Table *t = NULL;
        uint64_t old;
        int r;

        if (l1_index >= e->l1_size)
                return format_error(err, -EINVAL, "guest cluster beyond the virtual size");
        if (e->l2[l1_index]) {
                *ret = e->l2[l1_index];
                return 0;
        }

        t = calloc(1, sizeof(L2Table));
        if (!t || !(t->buf = calloc(1, e->cs))) {
                free(t);
                return format_error(err, -ENOMEM, "out of memory");
        }
        e->l2[l1_index] = t; /* freed with the edit from here on */

        old = e->l1[l1_index] & QCOW2_L1E_OFFSET_MASK;
        if (old) {
                r = format_pread_full(e->fd, t->buf, e->cs, old);
                if (r < 0)
                        return format_error(err, r, "cannot read an L2 table");
        }
        if (old && old >= e->orig_end)
                t->offset = old; /* made by this edit: changed in place */
        else {
                /* Copy on write: the old table keeps describing the old content until the L1 moves on. */
                if (old) {
                        r = rc_release(e, old, e->cs, err);
                        if (r < 0)
                                return r;
                }
                r = alloc_clusters(e, 1, &t->offset, err);
                if (r < 0)
                        return r;
                e->l1[l1_index] = t->offset | QCOW2_OFLAG_COPIED;
                e->l1_dirty = true;
        }
        *ret = t;
        return 0;
}

int qcow2_edit_map(Qcow2Edit *e, uint64_t index, uint64_t host, FormatError *err) {
        uint64_t per_l2 = qcow2_l2_entries(&e->h), guest = index << e->h.cluster_bits;
        Qcow2Entry old;
        L2Table *t = NULL;
        char text[160];
        int r;

        bool zero = host == QCOW2_EDIT_ZERO;

        if (zero && e->h.version < 3)
                return format_error(err, -EOPNOTSUPP, "a version 2 image has no zero clusters");
        if (!zero && (host & (e->cs - 1)))
                return format_error(err, -EINVAL, "data cluster offset is not aligned");
        if (!zero && qcow2_has_data_file(&e->h) && host != guest)
                return format_error(err, -EINVAL, "with an external data file, data lies at its guest offset");

        r = l2_for_write(e, index / per_l2, &t, err);
        if (r < 0)
                return r;
        r = qcow2_entry_decode(&e->h, t->buf, index % per_l2, guest, &old, text, sizeof(text));
        if (r < 0)
                return format_error(err, -EBADMSG, "%s", text);
        switch (qcow2_has_data_file(&e->h) ? QCOW2_CLUSTER_UNALLOCATED : old.type) { /* a data file has no refcounts */
        case QCOW2_CLUSTER_NORMAL:
        case QCOW2_CLUSTER_ZERO_ALLOC:
                r = rc_release(e, old.host_offset, e->cs, err);
                break;
        case QCOW2_CLUSTER_COMPRESSED:
                r = rc_release(e, old.host_offset, old.compressed_size, err);
                break;
        default:
                r = 0;
        }
        if (r < 0)
                return r;
        be64_write(t->buf + (index % per_l2) * 8, zero ? QCOW2_OFLAG_ZERO : host | QCOW2_OFLAG_COPIED);
        return 0;
}

int qcow2_edit_grow(Qcow2Edit *e, uint64_t size, FormatError *err) {
        uint64_t n;
        int r;

        if (size <= e->h.size)
                return 0;
        if (!qcow2_l1_entries_for(size, e->h.cluster_bits, false, &n) || n * 8 > QCOW2_MAX_L1_BYTES)
                return format_error(err, -E2BIG, "the L1 table for %" PRIu64 " bytes would be too large", size);
        if (n > e->l1_size) {
                uint64_t clusters = div_round_up(n * 8, e->cs);
                uint64_t *l1 = realloc(e->l1, n * sizeof(uint64_t));
                L2Table **l2;

                if (!l1)
                        return format_error(err, -ENOMEM, "out of memory");
                memset(l1 + e->l1_size, 0, (n - e->l1_size) * sizeof(uint64_t));
                e->l1 = l1;
                l2 = realloc(e->l2, n * sizeof(L2Table *));
                if (!l2)
                        return format_error(err, -ENOMEM, "out of memory");
                memset(l2 + e->n_l2, 0, (n - e->n_l2) * sizeof(L2Table *));
                e->l2 = l2;
                e->n_l2 = n;

                if (clusters > e->l1_clusters) {
                        uint64_t off;
                        if (e->l1_clusters > 0) {
                                r = rc_release(e, e->l1_offset, e->l1_clusters * e->cs, err);
                                if (r < 0)
                                        return r;
                        }
                        r = alloc_clusters(e, clusters, &off, err);
                        if (r < 0)
                                return r;
                        e->l1_offset = off;
                        e->l1_clusters = clusters;
                }
                e->l1_size = n;
                e->l1_dirty = true;
        }
        e->h.size = size;
        e->header_dirty = true;
        return 0;
}

int qcow2_edit_set_backing(Qcow2Edit *e, const char *backing_file, const char *backing_format, FormatError *err) {
        uint8_t *buf;
        size_t len;
        int r;

        r = qcow2_build_backing_header(e->fd, backing_file, backing_format, &buf, &len, err);
        if (r < 0)
                return r;
        free(e->backing_header);
        e->backing_header = buf;
        e->backing_header_len = len;
        e->header_dirty = true;
        return 0;
}

/* ---- flush ---- */

static int save_once(Qcow2Edit *e, uint64_t offset, uint64_t length, FormatError *err) {
        int r;

        if (offset >= e->orig_end)
                return 0; /* new: rolling back truncates it away */
        for (size_t i = 0; i < e->n_saved; i++)
                if (e->saved[i] == offset)
                        return 0;
        if (e->n_saved == e->allocated_saved) {
                size_t n = e->allocated_saved ? e->allocated_saved * 2 : 64;
                uint64_t *p = realloc(e->saved, n * sizeof(uint64_t));
                if (!p)
                        return format_error(err, -ENOMEM, "out of memory");
                e->saved = p;
                e->allocated_saved = n;
        }
        r = undo_save(e->undo, offset, length, err);
        if (r < 0)
                return r;
        e->saved[e->n_saved++] = offset;
        return 0;
}

static int write_table(Qcow2Edit *e, const uint64_t *t, uint64_t n, uint64_t offset, const char *what, FormatError *err) {
        _cleanup_free_ uint8_t *buf = malloc(MAX(n, 1) * 8);
        int r;

        if (!buf)
                return format_error(err, -ENOMEM, "out of memory");
        for (uint64_t i = 0; i < n; i++)
                be64_write(buf + i * 8, t[i]);
        r = format_pwrite_full(e->fd, buf, n * 8, offset);
        if (r < 0)
                return format_error(err, r, "cannot write the %s", what);
        e->metadata_bytes += n * 8;
        return 0;
}

static int build_header(Qcow2Edit *e, uint8_t **ret, size_t *ret_len, FormatError *err) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t area = (size_t) MIN(e->cs, e->orig_end);
        Qcow2Limits unlimited = { .max_virtual_size = UINT64_MAX };
        Qcow2Header check;
        int r;

        buf = malloc(area);
        if (!buf)
                return format_error(err, -ENOMEM, "out of memory");
        r = format_pread_full(e->fd, buf, area, 0);
        if (r < 0)
                return format_error(err, r, "cannot read the image header");
        if (e->backing_header) {
                if (e->backing_header_len > area)
                        return format_error(err, -E2BIG, "the header does not fit into cluster 0");
                memcpy(buf, e->backing_header, e->backing_header_len);
        }
        be64_write(buf + 24, e->h.size);
        be32_write(buf + 36, (uint32_t) e->l1_size);
        be64_write(buf + 40, e->l1_offset);
        be64_write(buf + 48, e->rt_offset);
        be32_write(buf + 56, (uint32_t) e->rt_clusters);

        /* What we write must pass our own parser, against the file as it will be. */
        r = qcow2_header_parse(buf, area, MAX(e->next, e->orig_end), &unlimited, &check, err);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(buf);
        *ret_len = area;
        return 0;
}

static int edit_write(Qcow2Edit *e, bool durable, FormatError *err) {
        _cleanup_free_ uint8_t *header = NULL;
        size_t header_len = 0;
        struct stat st;
        int r;

        r = place_refcount_structures(e, err);
        if (r < 0)
                return r;
        if (e->header_dirty) {
                r = build_header(e, &header, &header_len, err);
                if (r < 0)
                        return r;
        }

        /* 1. The old bytes of everything about to be overwritten in place, flushed. */
        if (header)
                r = save_once(e, 0, header_len, err);
        if (r >= 0 && e->l1_dirty)
                r = save_once(e, e->l1_offset, e->l1_clusters * e->cs, err);
        if (r >= 0 && e->rt_dirty)
                r = save_once(e, e->rt_offset, e->rt_clusters * e->cs, err);
        for (uint64_t b = 0; r >= 0 && b < e->n_blocks; b++)
                if (e->blocks[b].dirty)
                        r = save_once(e, e->blocks[b].offset, e->cs, err);
        if (r >= 0)
                r = undo_sync(e->undo, err);
        if (r < 0)
                return r;

        /* 2. Tables: new L2 tables, refcount blocks, refcount table, L1, header. */
        for (uint64_t i = 0; i < e->n_l2; i++) {
                L2Table *t = e->l2[i];
                if (!t)
                        continue;
                r = format_pwrite_full(e->fd, t->buf, e->cs, t->offset);
                if (r < 0)
                        return format_error(err, r, "cannot write an L2 table");
                e->metadata_bytes += e->cs;
        }
        for (uint64_t b = 0; b < e->n_blocks; b++) {
                RefBlock *rb = &e->blocks[b];
                if (!rb->dirty)
                        continue;
                r = format_pwrite_full(e->fd, rb->buf, e->cs, rb->offset);
                if (r < 0)
                        return format_error(err, r, "cannot write a refcount block");
                e->metadata_bytes += e->cs;
        }
        if (e->rt_dirty) {
                r = write_table(e, e->reftable, e->rt_entries, e->rt_offset, "refcount table", err);
                if (r < 0)
                        return r;
        }
        if (e->l1_dirty) {
                r = write_table(e, e->l1, e->l1_size, e->l1_offset, "L1 table", err);
                if (r < 0)
                        return r;
        }
        if (header) {
                r = format_pwrite_full(e->fd, header, header_len, 0);
                if (r < 0)
                        return format_error(err, r, "cannot write the image header");
                e->metadata_bytes += header_len;
        }

        /* 3. Every cluster handed out lies inside the file. */
        if (fstat(e->fd, &st) < 0)
                return format_error(err, negative_errno(), "cannot stat the image");
        if ((uint64_t) st.st_size < e->next && ftruncate(e->fd, (off_t) e->next) < 0)
                return format_error(err, negative_errno(), "cannot extend the image");
        if (durable && fdatasync(e->fd) < 0)
                return format_error(err, negative_errno(), "cannot flush the image");

        for (uint64_t i = 0; i < e->n_l2; i++)
                if (e->l2[i]) {
                        free(e->l2[i]->buf);
                        free(e->l2[i]);
                        e->l2[i] = NULL;
                }
        for (uint64_t b = 0; b < e->n_blocks; b++)
                e->blocks[b].dirty = false;
        e->l1_dirty = e->rt_dirty = e->header_dirty = false;
        free(e->backing_header);
        e->backing_header = NULL;
        return 0;
}

int qcow2_edit_flush(Qcow2Edit *e, FormatError *err) {
        return edit_write(e, true, err);
}

int qcow2_edit_write_tables(Qcow2Edit *e, FormatError *err) {
        return edit_write(e, false, err);
}

/* ---- open ---- */

static int read_table(int fd, uint64_t offset, uint64_t n, uint64_t **ret, const char *what, FormatError *err) {
        _cleanup_free_ uint8_t *buf = malloc(MAX(n, 1) * 8);
        uint64_t *t = calloc(MAX(n, 1), sizeof(uint64_t));
        int r;

        if (!buf || !t) {
                free(t);
                return format_error(err, -ENOMEM, "out of memory");
        }
        if (n > 0) {
                r = format_pread_full(fd, buf, n * 8, offset);
                if (r < 0) {
                        free(t);
                        return format_error(err, r, "cannot read the %s", what);
                }
        }
        for (uint64_t i = 0; i < n; i++)
                t[i] = be64_read(buf + i * 8);
        *ret = t;
        return 0;
}

int qcow2_edit_open(int fd, UndoLog *undo, Qcow2Edit **ret, FormatError *err) {
        Qcow2Limits unlimited = { .max_virtual_size = UINT64_MAX };
        Qcow2Edit *e;
        int r;

        e = calloc(1, sizeof(Qcow2Edit));
        if (!e)
                return format_error(err, -ENOMEM, "out of memory");
        e->fd = fd;
        e->undo = undo;

        r = qcow2_header_read(fd, &unlimited, &e->h, err);
        if (r < 0)
                goto fail;
        r = -EOPNOTSUPP;
        if (e->h.nb_snapshots > 0) {
                format_error(err, r, "the image has internal snapshots");
                goto fail;
        }
        if (e->h.has_bitmaps_ext || (e->h.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)) {
                format_error(err, r, "the image has persistent bitmaps");
                goto fail;
        }
        if (e->h.crypt_method != QCOW2_CRYPT_NONE) {
                format_error(err, r, "the image is encrypted");
                goto fail;
        }
        if (qcow2_has_extl2(&e->h)) {
                format_error(err, r, "the image uses extended L2 entries");
                goto fail;
        }
        if (e->h.incompatible_features & (QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT)) {
                r = format_error(err, -EBADMSG, "the image is marked dirty or corrupt");
                goto fail;
        }

        e->cs = e->h.cluster_size;
        e->orig_end = e->h.file_size;
        e->next = div_round_up(e->orig_end, e->cs) * e->cs;
        e->per_block = (e->cs * 8) >> e->h.refcount_order;

        e->l1_size = e->h.l1_size;
        e->l1_offset = e->h.l1_table_offset;
        e->l1_clusters = div_round_up(e->l1_size * 8, e->cs);
        r = read_table(fd, e->l1_offset, e->l1_size, &e->l1, "L1 table", err);
        if (r < 0)
                goto fail;
        e->n_l2 = e->l1_size;
        e->l2 = calloc(MAX(e->n_l2, 1), sizeof(L2Table *));
        if (!e->l2) {
                r = format_error(err, -ENOMEM, "out of memory");
                goto fail;
        }

        e->rt_offset = e->h.refcount_table_offset;
        e->rt_clusters = e->h.refcount_table_clusters;
        e->rt_entries = e->rt_clusters * e->cs / 8;
        r = read_table(fd, e->rt_offset, e->rt_entries, &e->reftable, "refcount table", err);
        if (r < 0)
                goto fail;

        *ret = e;
        return 0;
fail:
        qcow2_edit_free(e);
        return r;
}
