/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Rebase, flatten and commit: operations that change which layer provides a guest cluster without
 * changing what the guest sees.
 *
 * Planning works from allocation maps only. A *view* is a list of layers read top-down: a guest
 * offset is provided by the first layer that allocates it (data or zero), reads as zeros past a
 * layer's virtual size or below the last layer. For each guest range the old and the new view are
 * resolved to *pieces* (zero, or data at a host offset of one layer); where the pieces are the same
 * nothing is read or written.
 *
 *   rebase T onto B:   T's unallocated ranges where view(T's old backing chain) differs from
 *                      view(B's chain) get the old content, copied into T (zero clusters become zero
 *                      flags); then T's header names B. When B is a lower layer of the chain, the old
 *                      view stops at B: whatever falls through to B is unchanged by construction, and
 *                      neither B nor anything below it is opened.
 *   flatten:           rebase onto nothing.
 *   commit L into P:   P's clusters under L's allocated ranges get view(L, P, ...)'s content; P grows
 *                      to L's size; the layer above L (if any) names P; L leaves the chain.
 *
 * Every write goes into new clusters at the end of the target (see qcow2-edit.h) or, for a raw
 * target, into place after its old bytes are in the undo log; so a cancelled or failed operation, or
 * one interrupted by a crash before its commit point (the VM record with the new chain), is rolled
 * back byte for byte from the undo logs in the journal.
 */

#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "image-lock.h"
#include "log.h"
#include "ops.h"
#include "qcow2-edit.h"
#include "reshape.h"
#include "test-hooks.h"
#include "undo.h"

#define RESHAPE_STEP_BYTES (UINT64_C(256) << 20)
#define COPY_BUFFER (UINT64_C(1) << 20)

typedef struct ViewLayer {
        Layer *layer; /* the store's record; stable while the disk is busy with this job */
        int fd;
        int data_fd; /* the external data file, where data clusters are, or -EBADF */
        bool loaded;
        uint64_t size;
        ExtentMap map;
} ViewLayer;

typedef enum PieceKind {
        PIECE_ZERO,
        PIECE_DATA,
        PIECE_BELOW, /* falls through to the part of the chain that old and new view share */
} PieceKind;

typedef struct Piece {
        uint64_t start, length;
        PieceKind kind;
        size_t layer; /* PIECE_DATA: index in ReshapeOp.layers */
        uint64_t host;
} Piece;

typedef struct Pieces {
        Piece *p;
        size_t n, allocated;
} Pieces;

typedef struct Range {
        uint64_t start, end;
} Range;

typedef struct Target {
        Layer *layer;
        int fd; /* read-write, QEMU-locked for the whole operation */
        int undo_fd;
        UndoLog undo;
        int data_fd; /* its external data file: written in place, through its own undo log */
        int data_undo_fd;
        UndoLog data_undo;
        Qcow2Edit *edit; /* qcow2 targets */
        uint64_t cluster_size;
} Target;

struct ReshapeOp {
        Store *store;
        Limits limits;
        ReshapeKind kind;
        bool unsafe;
        char *op;
        char *vm, *disk;
        char **new_chain;
        size_t n_new_chain;
        Txn *txn;
        bool finished, cleanup;

        /* The disk's chain (top first), then a catalog image that is the new backing, if any. */
        ViewLayer *layers;
        size_t n_layers;
        size_t *old_view, *new_view;
        size_t n_old_view, n_new_view;
        size_t shared; /* rebase onto a lower layer: the layer index where old and new view meet, else SIZE_MAX */

        Target target;    /* rebase: the top; commit: the backing of the committed layer */
        Target upper;     /* commit: the layer above the committed one (its header changes), fd -EBADF if none */
        size_t target_index;
        Layer *new_backing; /* rebase: NULL = flatten */
        Layer *pinned;

        Range *work;
        size_t n_work, work_pos;
        uint64_t work_off;
        uint64_t bytes_total, bytes_done;
        uint64_t step_bytes;
        bool stepped;

        /* Pending copy, extended while source and target stay contiguous. */
        int cp_src, cp_dst;
        uint64_t cp_src_off, cp_dst_off, cp_len;
};

uint64_t reshape_bytes_done(const ReshapeOp *op) {
        return op->bytes_done;
}

uint64_t reshape_bytes_total(const ReshapeOp *op) {
        return op->bytes_total;
}

const char *reshape_operation(const ReshapeOp *op) {
        return op->op;
}

static void target_done(Target *t) {
        t->edit = qcow2_edit_free(t->edit);
        t->fd = safe_close(t->fd);
        t->undo_fd = safe_close(t->undo_fd);
        t->data_fd = safe_close(t->data_fd);
        t->data_undo_fd = safe_close(t->data_undo_fd);
}

static void reshape_cleanup(ReshapeOp *op);

ReshapeOp *reshape_free(ReshapeOp *op) {
        if (!op)
                return NULL;
        if (op->cleanup)
                reshape_cleanup(op);
        for (size_t i = 0; i < op->n_layers; i++) {
                safe_close(op->layers[i].fd);
                safe_close(op->layers[i].data_fd);
                extent_map_done(&op->layers[i].map);
        }
        free(op->layers);
        free(op->old_view);
        free(op->new_view);
        target_done(&op->target);
        target_done(&op->upper);
        if (op->pinned && op->pinned->pins > 0)
                op->pinned->pins--;
        for (size_t i = 0; i < op->n_new_chain; i++)
                free(op->new_chain[i]);
        free(op->new_chain);
        free(op->work);
        txn_free(op->txn);
        free(op->op);
        free(op->vm);
        free(op->disk);
        free(op);
        return NULL;
}

/* ---- views ---- */

static int view_load(ReshapeOp *op, size_t i, OpError *err) {
        ViewLayer *v = &op->layers[i];
        Qcow2Limits lim = { .max_virtual_size = op->limits.max_virtual_size };
        Qcow2Header h;
        int r;

        if (v->loaded)
                return 0;
        if (v->fd < 0) {
                v->fd = store_open_layer(op->store, v->layer, O_RDONLY);
                if (v->fd == -EBADMSG)
                        return op_error(err, -EBADMSG, "the file of layer %s is not the one recorded (type, owner, links or inode differ); run Verify",
                                        v->layer->id);
                if (v->fd < 0)
                        return op_error(err, v->fd, "cannot open layer %s", v->layer->id);
        }
        if (v->layer->format == IMAGE_FORMAT_QCOW2) {
                r = qcow2_header_read(v->fd, &lim, &h, err);
                if (r < 0)
                        return r;
                if (!!(h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) != !!v->layer->data_file)
                        return op_error(err, -EBADMSG, "the data file of layer %s differs from its record; run Verify",
                                        v->layer->id);
                if (v->layer->data_file && v->data_fd < 0) {
                        v->data_fd = store_open_data_file(op->store, v->layer, O_RDONLY);
                        if (v->data_fd < 0)
                                return op_error(err, v->data_fd, "cannot open the data file of layer %s", v->layer->id);
                }
                r = qcow2_map(v->fd, &h, &v->map, err);
                if (r < 0)
                        return r;
                v->size = h.size;
        } else {
                struct stat st;
                if (fstat(v->fd, &st) < 0)
                        return op_error(err, negative_errno(), "cannot stat layer %s", v->layer->id);
                v->size = (uint64_t) st.st_size;
                r = raw_map(v->fd, v->size, &v->map);
                if (r < 0)
                        return op_error(err, r, "cannot map layer %s", v->layer->id);
        }
        v->loaded = true;
        return 0;
}

static int pieces_add(Pieces *ps, uint64_t start, uint64_t length, PieceKind kind, size_t layer, uint64_t host) {
        Piece *last = ps->n > 0 ? &ps->p[ps->n - 1] : NULL;

        if (length == 0)
                return 0;
        if (last && last->kind == kind && last->start + last->length == start &&
            (kind != PIECE_DATA || (last->layer == layer && last->host + last->length == host))) {
                last->length += length;
                return 0;
        }
        if (ps->n == ps->allocated) {
                size_t n = ps->allocated ? ps->allocated * 2 : 64;
                Piece *p = realloc(ps->p, n * sizeof(Piece));
                if (!p)
                        return -ENOMEM;
                ps->p = p;
                ps->allocated = n;
        }
        ps->p[ps->n++] = (Piece) { start, length, kind, layer, host };
        return 0;
}

/* First extent of `m` that ends after `x`. */
static size_t extent_find(const ExtentMap *m, uint64_t x) {
        size_t lo = 0, hi = m->n_extents;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (m->extents[mid].start + m->extents[mid].length <= x)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

/* Resolves [a, b) through view[from..n): what provides each byte. Reaching index `stop` (a layer
 * index, SIZE_MAX for none) yields PIECE_BELOW. */
static int view_resolve(ReshapeOp *op, const size_t *view, size_t n, size_t from, size_t stop, uint64_t a, uint64_t b,
                        Pieces *out, OpError *err) {
        ViewLayer *v;
        uint64_t end, x;
        int r;

        if (a >= b)
                return 0;
        if (from >= n)
                return pieces_add(out, a, b - a, PIECE_ZERO, 0, 0) < 0 ? op_error(err, -ENOMEM, "out of memory") : 0;
        if (view[from] == stop)
                return pieces_add(out, a, b - a, PIECE_BELOW, 0, 0) < 0 ? op_error(err, -ENOMEM, "out of memory") : 0;

        r = view_load(op, view[from], err);
        if (r < 0)
                return r;
        v = &op->layers[view[from]];
        end = MIN(b, v->size);

        x = a;
        for (size_t i = extent_find(&v->map, a); x < end && i < v->map.n_extents; i++) {
                const Extent *e = &v->map.extents[i];
                uint64_t s = MAX(x, e->start), t = MIN(end, e->start + e->length);

                if (s > x) { /* a gap in the map reads as unallocated */
                        r = view_resolve(op, view, n, from + 1, stop, x, s, out, err);
                        if (r < 0)
                                return r;
                }
                if (s >= t)
                        break;
                switch (e->state) {
                case EXTENT_DATA:
                        r = pieces_add(out, s, t - s, PIECE_DATA, view[from],
                                       (e->has_host_offset ? e->host_offset : e->start) + (s - e->start));
                        if (r < 0)
                                return op_error(err, -ENOMEM, "out of memory");
                        break;
                case EXTENT_ZERO:
                        if (pieces_add(out, s, t - s, PIECE_ZERO, 0, 0) < 0)
                                return op_error(err, -ENOMEM, "out of memory");
                        break;
                case EXTENT_COMPRESSED:
                        return op_error(err, -EOPNOTSUPP, "layer %s has compressed clusters, which vdisk cannot copy yet",
                                        v->layer->id);
                default:
                        r = view_resolve(op, view, n, from + 1, stop, s, t, out, err);
                        if (r < 0)
                                return r;
                }
                x = t;
        }
        if (x < end) {
                r = view_resolve(op, view, n, from + 1, stop, x, end, out, err);
                if (r < 0)
                        return r;
        }
        /* Past this layer's end: zeros, whatever lies below. */
        if (end < b && pieces_add(out, MAX(a, end), b - MAX(a, end), PIECE_ZERO, 0, 0) < 0)
                return op_error(err, -ENOMEM, "out of memory");
        return 0;
}

/* Where a piece's data is: the layer's data file, if it has one, else the layer's file. */
static int piece_fd(const ReshapeOp *op, const Piece *p) {
        const ViewLayer *v = &op->layers[p->layer];
        return v->data_fd >= 0 ? v->data_fd : v->fd;
}

static bool pieces_equal(const Piece *p, const Piece *q, uint64_t x) {
        if (p->kind != q->kind)
                return false;
        if (p->kind != PIECE_DATA)
                return true;
        return p->layer == q->layer && p->host + (x - p->start) == q->host + (x - q->start);
}

/* ---- work list: target-cluster aligned guest ranges ---- */

static int work_add(ReshapeOp *op, uint64_t a, uint64_t b, uint64_t limit, OpError *err) {
        uint64_t cs = op->target.cluster_size;
        Range *last;

        a = a / cs * cs;
        b = MIN((b + cs - 1) / cs * cs, limit);
        if (a >= b)
                return 0;
        last = op->n_work > 0 ? &op->work[op->n_work - 1] : NULL;
        if (last && a <= last->end) {
                last->end = MAX(last->end, b);
                return 0;
        }
        if ((op->n_work & (op->n_work - 1)) == 0 || op->n_work < 64) {
                size_t n = op->n_work < 64 ? 64 : op->n_work * 2;
                Range *w = realloc(op->work, n * sizeof(Range));
                if (!w)
                        return op_error(err, -ENOMEM, "out of memory");
                op->work = w;
        }
        op->work[op->n_work++] = (Range) { a, b };
        return 0;
}

static int plan_rebase(ReshapeOp *op, OpError *err) {
        ViewLayer *t = &op->layers[0];
        int r;

        for (size_t i = 0; i < t->map.n_extents; i++) {
                const Extent *e = &t->map.extents[i];
                _cleanup_free_ Piece *old_p = NULL, *new_p = NULL;
                Pieces po = {}, pn = {};
                uint64_t x, end = MIN(e->start + e->length, t->size);
                size_t a = 0, b = 0;

                if (e->state != EXTENT_UNALLOCATED || e->start >= end)
                        continue;
                r = view_resolve(op, op->old_view, op->n_old_view, 0, op->shared, e->start, end, &po, err);
                old_p = po.p;
                if (r < 0)
                        return r;
                if (op->shared != SIZE_MAX) {
                        /* Everything but what falls through to the shared part changes provider. */
                        for (size_t k = 0; k < po.n; k++)
                                if (po.p[k].kind != PIECE_BELOW) {
                                        r = work_add(op, po.p[k].start, po.p[k].start + po.p[k].length, t->size, err);
                                        if (r < 0)
                                                return r;
                                }
                        continue;
                }
                r = view_resolve(op, op->new_view, op->n_new_view, 0, SIZE_MAX, e->start, end, &pn, err);
                new_p = pn.p;
                if (r < 0)
                        return r;
                for (x = e->start; x < end && a < po.n && b < pn.n;) {
                        const Piece *p = &po.p[a], *q = &pn.p[b];
                        uint64_t stop = MIN(p->start + p->length, q->start + q->length);

                        if (!pieces_equal(p, q, x)) {
                                r = work_add(op, x, stop, t->size, err);
                                if (r < 0)
                                        return r;
                        }
                        x = stop;
                        if (x >= p->start + p->length)
                                a++;
                        if (x >= q->start + q->length)
                                b++;
                }
        }
        return 0;
}

static int plan_commit(ReshapeOp *op, OpError *err) {
        ViewLayer *l = &op->layers[op->old_view[0]], *p = &op->layers[op->target_index];
        uint64_t new_size = MAX(l->size, p->size);
        int r;

        for (size_t i = 0; i < l->map.n_extents; i++) {
                const Extent *e = &l->map.extents[i];
                uint64_t end = MIN(e->start + e->length, l->size);

                if (e->state == EXTENT_UNALLOCATED || e->start >= end)
                        continue;
                if (e->state == EXTENT_COMPRESSED)
                        return op_error(err, -EOPNOTSUPP, "layer %s has compressed clusters, which vdisk cannot copy yet",
                                        l->layer->id);
                r = work_add(op, e->start, end, new_size, err);
                if (r < 0)
                        return r;
        }
        /* A grown backing layer would show its own backing through the new area: zero it. */
        if (p->layer->backing && l->size > p->size) {
                r = work_add(op, p->size, l->size, new_size, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- copying ---- */

static int copy_flush(ReshapeOp *op, OpError *err) {
        int src = op->cp_src;
        uint64_t so = op->cp_src_off, dof = op->cp_dst_off, len = op->cp_len;
        _cleanup_free_ uint8_t *buf = NULL;

        op->cp_len = 0;
        while (len > 0) {
                loff_t in = (loff_t) so, out = (loff_t) dof;
                ssize_t n = copy_file_range(src, &in, op->cp_dst, &out, MIN(len, UINT64_C(1) << 30), 0);
                if (n < 0 && (errno == EXDEV || errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS))
                        break;
                if (n < 0)
                        return op_error(err, negative_errno(), "cannot copy data");
                if (n == 0)
                        return 0; /* past the source's end: reads as zeros, and so does the target */
                so += (uint64_t) n;
                dof += (uint64_t) n;
                len -= (uint64_t) n;
        }
        if (len > 0 && !(buf = malloc(COPY_BUFFER)))
                return op_error(err, -ENOMEM, "out of memory");
        while (len > 0) {
                ssize_t n = pread(src, buf, MIN(len, COPY_BUFFER), (off_t) so);
                if (n < 0)
                        return op_error(err, negative_errno(), "cannot read data");
                if (n == 0)
                        return 0;
                if (format_pwrite_full(op->cp_dst, buf, (size_t) n, dof) < 0)
                        return op_error(err, negative_errno(), "cannot write data");
                so += (uint64_t) n;
                dof += (uint64_t) n;
                len -= (uint64_t) n;
        }
        return 0;
}

static int copy_add(ReshapeOp *op, int src, uint64_t src_off, int dst, uint64_t dst_off, uint64_t len, OpError *err) {
        if (op->cp_len > 0 && op->cp_src == src && op->cp_dst == dst && op->cp_src_off + op->cp_len == src_off &&
            op->cp_dst_off + op->cp_len == dst_off) {
                op->cp_len += len;
                return 0;
        }
        if (op->cp_len > 0) {
                int r = copy_flush(op, err);
                if (r < 0)
                        return r;
        }
        op->cp_src = src;
        op->cp_dst = dst;
        op->cp_src_off = src_off;
        op->cp_dst_off = dst_off;
        op->cp_len = len;
        return 0;
}

static int zero_range(int fd, uint64_t offset, uint64_t length, OpError *err) {
        _cleanup_free_ uint8_t *z = NULL;

        if (length == 0 || fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) offset, (off_t) length) >= 0)
                return 0;
        z = calloc(1, COPY_BUFFER);
        if (!z)
                return op_error(err, -ENOMEM, "out of memory");
        for (uint64_t x = 0; x < length; x += COPY_BUFFER)
                if (format_pwrite_full(fd, z, MIN(COPY_BUFFER, length - x), offset + x) < 0)
                        return op_error(err, negative_errno(), "cannot write zeros");
        return 0;
}

/* Before a data file is written in place: its old bytes into its undo log, flushed. */
static int data_file_prepare(ReshapeOp *op, uint64_t a, uint64_t b, OpError *err) {
        int r = undo_save(&op->target.data_undo, a, b - a, err);
        if (r >= 0)
                r = undo_sync(&op->target.data_undo, err);
        if (r >= 0 && op->cp_len > 0)
                r = copy_flush(op, err);
        if (r >= 0)
                r = zero_range(op->target.data_fd, a, b - a, err);
        return r;
}

/* The content of view[] over [a, b) into new clusters of the qcow2 target (zero clusters as flags);
 * with an external data file, into the data file at the guest offsets. */
static int materialize_qcow2(ReshapeOp *op, const size_t *view, size_t n, uint64_t a, uint64_t b, OpError *err) {
        _cleanup_free_ Piece *pp = NULL;
        Pieces ps = {};
        uint64_t cs = op->target.cluster_size, size = op->layers[op->target_index].size;
        bool v3 = qcow2_edit_header(op->target.edit)->version >= 3;
        size_t k = 0;
        int r;

        size = MAX(size, qcow2_edit_header(op->target.edit)->size);
        r = view_resolve(op, view, n, 0, SIZE_MAX, a, b, &ps, err);
        pp = ps.p;
        if (r < 0)
                return r;
        if (op->target.data_fd >= 0) {
                /* Data at guest offsets in the data file: what the view takes from the target itself is
                 * in place already; everything else is copied or zeroed there; every cluster maps to it. */
                uint64_t end = MIN(b, size);
                r = undo_save(&op->target.data_undo, a, end - a, err);
                if (r >= 0)
                        r = undo_sync(&op->target.data_undo, err);
                for (size_t j = 0; r >= 0 && j < ps.n; j++) {
                        const Piece *p = &ps.p[j];
                        uint64_t e = MIN(p->start + p->length, end);
                        if (p->start >= e || (p->kind == PIECE_DATA && p->layer == op->target_index && p->host == p->start))
                                continue;
                        if (p->kind == PIECE_DATA)
                                r = copy_add(op, piece_fd(op, p), p->host, op->target.data_fd, p->start, e - p->start, err);
                        else if (op->cp_len > 0 && (r = copy_flush(op, err)) < 0)
                                break;
                        else
                                r = zero_range(op->target.data_fd, p->start, e - p->start, err);
                }
                for (uint64_t c = a / cs; r >= 0 && c * cs < end; c++)
                        r = qcow2_edit_map(op->target.edit, c, c * cs, err);
                return r;
        }

        for (uint64_t c = a / cs; c * cs < b; c++) {
                uint64_t cstart = c * cs, cend = MIN(cstart + cs, MIN(b, size)), host = 0;
                bool zero = true;
                size_t first;

                while (k < ps.n && ps.p[k].start + ps.p[k].length <= cstart)
                        k++;
                first = k;
                for (size_t j = first; j < ps.n && ps.p[j].start < cend; j++)
                        if (ps.p[j].kind == PIECE_DATA)
                                zero = false;

                if (!zero || !v3) {
                        r = qcow2_edit_alloc(op->target.edit, 1, &host, err);
                        if (r < 0)
                                return r;
                } else
                        host = QCOW2_EDIT_ZERO;
                for (size_t j = first; !zero && j < ps.n && ps.p[j].start < cend; j++) {
                        const Piece *p = &ps.p[j];
                        uint64_t s = MAX(p->start, cstart), e = MIN(p->start + p->length, cend);
                        if (p->kind != PIECE_DATA || s >= e)
                                continue;
                        r = copy_add(op, piece_fd(op, p), p->host + (s - p->start), op->target.fd, host + (s - cstart), e - s,
                                     err);
                        if (r < 0)
                                return r;
                }
                r = qcow2_edit_map(op->target.edit, c, host, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The content of view[] over [a, b) into `buf`. */
static int read_view(ReshapeOp *op, const size_t *view, size_t n, uint64_t a, uint64_t b, uint8_t *buf, OpError *err) {
        _cleanup_free_ Piece *pp = NULL;
        Pieces ps = {};
        int r;

        memset(buf, 0, b - a);
        r = view_resolve(op, view, n, 0, SIZE_MAX, a, b, &ps, err);
        pp = ps.p;
        if (r < 0)
                return r;
        for (size_t j = 0; j < ps.n; j++) {
                const Piece *p = &ps.p[j];
                ssize_t got;
                if (p->kind != PIECE_DATA)
                        continue;
                got = pread(piece_fd(op, p), buf + (p->start - a), p->length, (off_t) p->host);
                if (got < 0)
                        return op_error(err, negative_errno(), "cannot read layer %s", op->layers[p->layer].layer->id);
        }
        return 0;
}

/* Rebase onto an image outside the chain: like qemu-img, clusters whose old and new content are
 * equal byte for byte are left alone (an updated base image shares most of its content). */
static int materialize_compare(ReshapeOp *op, uint64_t a, uint64_t b, OpError *err) {
        uint64_t cs = op->target.cluster_size, size = op->layers[0].size;
        _cleanup_free_ uint8_t *old = malloc(cs), *new = malloc(cs);
        int r;

        if (!old || !new)
                return op_error(err, -ENOMEM, "out of memory");
        for (uint64_t c = a / cs; c * cs < b; c++) {
                uint64_t s = c * cs, e = MIN(s + cs, size), host;
                bool zero = true;

                r = read_view(op, op->old_view, op->n_old_view, s, e, old, err);
                if (r >= 0)
                        r = read_view(op, op->new_view, op->n_new_view, s, e, new, err);
                if (r < 0)
                        return r;
                if (memcmp(old, new, e - s) == 0)
                        continue;
                for (uint64_t k = 0; k < e - s && zero; k++)
                        zero = old[k] == 0;
                if (zero && op->target.data_fd < 0 && qcow2_edit_header(op->target.edit)->version >= 3) {
                        r = qcow2_edit_map(op->target.edit, c, QCOW2_EDIT_ZERO, err);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (op->target.data_fd >= 0) {
                        host = s;
                        r = data_file_prepare(op, s, e, err);
                        if (r < 0)
                                return r;
                        if (format_pwrite_full(op->target.data_fd, old, e - s, s) < 0)
                                return op_error(err, negative_errno(), "cannot write the data file of layer %s",
                                                op->target.layer->id);
                } else {
                        r = qcow2_edit_alloc(op->target.edit, 1, &host, err);
                        if (r < 0)
                                return r;
                        if (format_pwrite_full(op->target.fd, old, e - s, host) < 0)
                                return op_error(err, negative_errno(), "cannot write layer %s", op->target.layer->id);
                }
                r = qcow2_edit_map(op->target.edit, c, host, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Commit into a raw layer: L's data over the old bytes, which go to the undo log first. */
static int materialize_raw(ReshapeOp *op, uint64_t a, uint64_t b, OpError *err) {
        _cleanup_free_ Piece *pp = NULL;
        Pieces ps = {};
        size_t top = op->old_view[0];
        int r;

        /* Only L itself: whatever L leaves unallocated is the target's own content already. */
        r = view_resolve(op, op->old_view, 1, 0, SIZE_MAX, a, b, &ps, err);
        pp = ps.p;
        if (r < 0)
                return r;
        r = undo_save(&op->target.undo, a, b - a, err);
        if (r >= 0)
                r = undo_sync(&op->target.undo, err);
        if (r < 0)
                return r;
        for (size_t j = 0; j < ps.n; j++) {
                const Piece *p = &ps.p[j];

                if (p->kind == PIECE_DATA) {
                        r = copy_add(op, piece_fd(op, p), p->host, op->target.fd, p->start, p->length, err);
                        if (r < 0)
                                return r;
                } else if (p->kind == PIECE_ZERO) {
                        /* Allocated zeros in L, or past L's end: the committed view reads zeros. */
                        if (op->cp_len > 0 && (r = copy_flush(op, err)) < 0)
                                return r;
                        r = zero_range(op->target.fd, p->start, p->length, err);
                        if (r < 0)
                                return r;
                }
        }
        (void) top;
        return 0;
}

/* ---- checks before anything is touched ---- */

static int check_header(ReshapeOp *op, Layer *l, int fd, OpError *err) {
        Qcow2Limits lim = { .max_virtual_size = op->limits.max_virtual_size };
        Qcow2CheckResult res = {};
        Layer *b = l->backing ? store_find_layer(op->store, l->backing) : NULL;
        Qcow2Header h;
        int r;

        if (l->format != IMAGE_FORMAT_QCOW2)
                return 0;
        r = qcow2_header_read(fd, &lim, &h, err);
        if (r < 0)
                return op_error(err, -EBADMSG, "layer %s: %s", l->id, err->reason);
        if (h.size != l->virtual_size || (l->backing && !b) || h.has_backing_file != !!b ||
            (b && (!streq(h.backing_file, b->file) || !h.has_backing_format ||
                   !streq(h.backing_format, image_format_to_string(l->backing_format)))))
                return op_error(err, -EBADMSG, "the header of layer %s differs from its record; run Verify", l->id);
        r = qcow2_check(fd, &h, &lim, &res, err);
        if (r >= 0 && (res.corruptions > 0 || res.leaks > 0))
                r = op_error(err, -EBADMSG, "layer %s has %" PRIu64 " metadata errors and %" PRIu64 " leaked clusters",
                             l->id, res.corruptions, res.leaks);
        qcow2_check_result_done(&res);
        return r;
}

static int target_open(ReshapeOp *op, Target *t, Layer *l, OpError *err) {
        int r;

        t->layer = l;
        t->fd = store_open_layer(op->store, l, O_RDWR);
        if (t->fd == -EBADMSG)
                return op_error(err, -EBADMSG, "the file of layer %s is not the one recorded (type, owner, links or inode differ); run Verify",
                                l->id);
        if (t->fd < 0)
                return op_error(err, t->fd, "cannot open layer %s", l->id);
        r = image_lock_for_change(t->fd);
        if (r == -EBUSY)
                return op_error(err, -EBUSY, "layer %s is in use by another program (a QEMU holds its image locks)", l->id);
        if (r < 0)
                return op_error(err, r, "cannot lock layer %s", l->id);
        if (l->data_file) {
                t->data_fd = store_open_data_file(op->store, l, O_RDWR);
                if (t->data_fd < 0)
                        return op_error(err, t->data_fd, "cannot open the data file of layer %s", l->id);
        }
        return check_header(op, l, t->fd, err);
}

static int target_begin(ReshapeOp *op, Target *t, OpError *err) {
        int r;

        t->undo_fd = txn_undo_create(op->txn, t->layer->id, false);
        if (t->undo_fd < 0)
                return op_error(err, t->undo_fd, "cannot create the undo log");
        r = undo_begin(&t->undo, t->undo_fd, t->fd, err);
        if (r < 0)
                return r;
        if (t->data_fd >= 0 && t == &op->target) {
                t->data_undo_fd = txn_undo_create(op->txn, t->layer->id, true);
                if (t->data_undo_fd < 0)
                        return op_error(err, t->data_undo_fd, "cannot create the undo log");
                r = undo_begin(&t->data_undo, t->data_undo_fd, t->data_fd, err);
                if (r < 0)
                        return r;
        }
        if (t->layer->format == IMAGE_FORMAT_QCOW2 && op->kind != RESHAPE_UNSAFE_REBASE && t == &op->target) {
                r = qcow2_edit_open(t->fd, &t->undo, &t->edit, err);
                if (r < 0)
                        return r;
                t->cluster_size = qcow2_edit_header(t->edit)->cluster_size;
        }
        return 0;
}

/* The backing pointer alone, through the undo log. */
static int rewrite_backing(Target *t, const Layer *backing, OpError *err) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t len;
        int r;

        r = qcow2_build_backing_header(t->fd, backing ? backing->file : NULL,
                                       backing ? image_format_to_string(backing->format) : NULL, &buf, &len, err);
        if (r < 0)
                return r;
        r = undo_save(&t->undo, 0, len, err);
        if (r >= 0)
                r = undo_sync(&t->undo, err);
        if (r < 0)
                return r;
        if (format_pwrite_full(t->fd, buf, len, 0) < 0)
                return op_error(err, negative_errno(), "cannot write the header of layer %s", t->layer->id);
        if (fdatasync(t->fd) < 0)
                return op_error(err, negative_errno(), "cannot flush layer %s", t->layer->id);
        return 0;
}

/* ---- begin ---- */

static int chain_of(Store *s, Layer *l, char ***chain, size_t *n, size_t max, OpError *err) {
        for (; l; l = l->backing ? store_find_layer(s, l->backing) : NULL) {
                char **c = reallocarray(*chain, *n + 1, sizeof(char *));
                if (!c)
                        return op_error(err, -ENOMEM, "out of memory");
                *chain = c;
                if (!(c[*n] = strdup(l->id)))
                        return op_error(err, -ENOMEM, "out of memory");
                (*n)++;
                if (*n > max)
                        return op_error(err, -ELOOP, "the new chain would have more than %zu layers", max);
        }
        return 0;
}

static int strv_append(char ***v, size_t *n, const char *s) {
        char **p = reallocarray(*v, *n + 1, sizeof(char *));
        if (!p)
                return -ENOMEM;
        *v = p;
        if (!(p[*n] = strdup(s)))
                return -ENOMEM;
        (*n)++;
        return 0;
}

static int add_view(size_t **view, size_t *n, size_t idx) {
        size_t *v = reallocarray(*view, *n + 1, sizeof(size_t));
        if (!v)
                return -ENOMEM;
        v[(*n)++] = idx;
        *view = v;
        return 0;
}

static Layer *layer_with(const Layer *l, const Layer *backing, uint64_t size, Layer **ret) {
        /* A copy through JSON keeps every field, including ones added later. */
        struct json_object *o = layer_to_json(l);
        Layer *c = NULL;

        if (o && layer_from_json(o, &c) >= 0) {
                if (backing != (const Layer *) -1) {
                        free(c->backing);
                        c->backing = backing ? strdup(backing->id) : NULL;
                        c->backing_format = backing ? backing->format : _IMAGE_FORMAT_INVALID;
                        if (backing && !c->backing)
                                c = layer_free(c);
                }
                if (c) {
                        c->virtual_size = size;
                        c->generation++;
                        c->state = LAYER_READY;
                }
        }
        json_object_put(o);
        *ret = c;
        return c;
}

#define KEEP_BACKING ((const Layer *) -1)

int reshape_begin(Store *s, const Limits *lim, ReshapeKind kind, const char *vm, const char *disk, const char *layer,
                  ReshapeOp **ret, OpError *err) {
        _cleanup_(reshape_freep) ReshapeOp *op = NULL;
        Vm *v;
        Disk *d;
        Layer *top, *committed = NULL;
        size_t pos = SIZE_MAX;
        int r;

        r = op_find_disk(s, vm, disk, &v, &d, err);
        if (r < 0)
                return r;
        if (d->quarantine)
                return op_error(err, -EBADMSG, "disk '%s' of VM '%s' is quarantined: %s", disk, vm, d->quarantine);

        op = calloc(1, sizeof(ReshapeOp));
        if (!op)
                return op_error(err, -ENOMEM, "out of memory");
        op->store = s;
        op->limits = *lim;
        op->kind = kind;
        op->unsafe = kind == RESHAPE_UNSAFE_REBASE;
        op->shared = SIZE_MAX;
        op->target.fd = op->target.undo_fd = op->upper.fd = op->upper.undo_fd = -EBADF;
        op->target.data_fd = op->target.data_undo_fd = op->upper.data_fd = op->upper.data_undo_fd = -EBADF;
        op->cp_src = op->cp_dst = -EBADF;
        op->step_bytes = test_hook_step_bytes(RESHAPE_STEP_BYTES);
        op->vm = strdup(vm);
        op->disk = strdup(disk);
        op->op = strdup(kind == RESHAPE_COMMIT ? "commit" : isempty(layer) ? "flatten" : "rebase");
        op->layers = calloc(d->n_chain + 1, sizeof(ViewLayer));
        if (!op->vm || !op->disk || !op->op || !op->layers)
                return op_error(err, -ENOMEM, "out of memory");

        for (size_t i = 0; i < d->n_chain; i++) {
                Layer *l = store_find_layer(s, d->chain[i]);
                if (!l)
                        return op_error(err, -EBADMSG, "the record of layer %s of disk '%s' is missing", d->chain[i], disk);
                if (l->state != LAYER_READY)
                        return op_error(err, -EBUSY, "layer %s is being changed by another operation", l->id);
                op->layers[op->n_layers++] = (ViewLayer) { .layer = l, .fd = -EBADF, .data_fd = -EBADF };
                if (!isempty(layer) && streq(l->id, layer))
                        pos = i;
        }
        top = op->layers[0].layer;

        if (kind == RESHAPE_COMMIT) {
                Layer *p;

                if (pos == SIZE_MAX)
                        return op_error(err, -ENOENT, "layer %s is not in the chain of disk '%s'", layer, disk);
                committed = op->layers[pos].layer;
                if (committed->catalog_name)
                        return op_error(err, -EOPNOTSUPP, "layer %s is the catalog image '%s', which is never merged", layer,
                                        committed->catalog_name);
                if (pos + 1 >= op->n_layers)
                        return op_error(err, -EOPNOTSUPP, "layer %s has no backing layer to commit into", layer);
                p = op->layers[pos + 1].layer;
                if (p->catalog_name)
                        return op_error(err, -EOPNOTSUPP,
                                        "the backing of layer %s is the catalog image '%s', which is never written", layer,
                                        p->catalog_name);
                if (committed->virtual_size < p->virtual_size)
                        return op_error(err, -EOPNOTSUPP, "layer %s is smaller than its backing layer; committing would change the disk",
                                        layer);
                op->target_index = pos + 1;
                for (size_t i = pos; i < op->n_layers; i++)
                        if (add_view(&op->old_view, &op->n_old_view, i) < 0)
                                return op_error(err, -ENOMEM, "out of memory");
                for (size_t i = 0; i < d->n_chain; i++)
                        if (i != pos && strv_append(&op->new_chain, &op->n_new_chain, d->chain[i]) < 0)
                                return op_error(err, -ENOMEM, "out of memory");
        } else {
                Layer *b = NULL;

                if (top->format != IMAGE_FORMAT_QCOW2)
                        return op_error(err, -EOPNOTSUPP, "the active layer of disk '%s' is raw, which has no backing file", disk);
                if (!isempty(layer)) {
                        b = store_find_layer(s, layer);
                        if (pos == 0)
                                return op_error(err, -EINVAL, "layer %s is the active layer itself", layer);
                        if (pos == SIZE_MAX && (!b || !b->catalog_name))
                                return op_error(err, b ? -EINVAL : -ENOENT,
                                                "layer %s is neither below the active layer of disk '%s' nor a catalog image",
                                                layer, disk);
                        if (b->state != LAYER_READY)
                                return op_error(err, -EBUSY, "layer %s is being created or changed", layer);
                }
                if (b && top->data_file_raw)
                        return op_error(err, -EOPNOTSUPP, "the active layer of disk '%s' keeps raw data in an external file, which excludes a backing file",
                                        disk);
                op->new_backing = b;
                op->target_index = 0;
                for (size_t i = 1; i < op->n_layers; i++)
                        if (add_view(&op->old_view, &op->n_old_view, i) < 0)
                                return op_error(err, -ENOMEM, "out of memory");
                if (pos != SIZE_MAX)
                        op->shared = pos;
                else if (b) {
                        op->layers[op->n_layers++] = (ViewLayer) { .layer = b, .fd = -EBADF, .data_fd = -EBADF };
                        if (add_view(&op->new_view, &op->n_new_view, op->n_layers - 1) < 0)
                                return op_error(err, -ENOMEM, "out of memory");
                }
                if (strv_append(&op->new_chain, &op->n_new_chain, top->id) < 0)
                        return op_error(err, -ENOMEM, "out of memory");
                r = chain_of(s, b, &op->new_chain, &op->n_new_chain, lim->max_chain_depth, err);
                if (r < 0)
                        return r;
        }

        /* Open, lock and check what will change; then map it. */
        r = target_open(op, &op->target, op->layers[op->target_index].layer, err);
        if (r < 0)
                return r;
        op->layers[op->target_index].fd = fcntl(op->target.fd, F_DUPFD_CLOEXEC, 3);
        if (op->layers[op->target_index].fd < 0)
                return op_error(err, negative_errno(), "out of file descriptors");
        if (op->target.data_fd >= 0) {
                op->layers[op->target_index].data_fd = fcntl(op->target.data_fd, F_DUPFD_CLOEXEC, 3);
                if (op->layers[op->target_index].data_fd < 0)
                        return op_error(err, negative_errno(), "out of file descriptors");
        }
        if (kind == RESHAPE_COMMIT && pos > 0) {
                r = target_open(op, &op->upper, op->layers[pos - 1].layer, err);
                if (r < 0)
                        return r;
        }
        if (kind != RESHAPE_UNSAFE_REBASE) {
                r = view_load(op, op->target_index, err);
                if (r >= 0 && kind == RESHAPE_COMMIT)
                        r = view_load(op, pos, err);
                if (r < 0)
                        return r;
        }
        if (kind == RESHAPE_COMMIT && op->target.layer->format == IMAGE_FORMAT_RAW)
                op->target.cluster_size = 512;
        else if (kind != RESHAPE_UNSAFE_REBASE) {
                Qcow2Limits ql = { .max_virtual_size = lim->max_virtual_size };
                Qcow2Header h;
                r = qcow2_header_read(op->target.fd, &ql, &h, err);
                if (r < 0)
                        return r;
                op->target.cluster_size = h.cluster_size;
        }

        if (kind == RESHAPE_REBASE)
                r = plan_rebase(op, err);
        else if (kind == RESHAPE_COMMIT)
                r = plan_commit(op, err);
        if (r < 0)
                return r;
        for (size_t i = 0; i < op->n_work; i++)
                op->bytes_total += op->work[i].end - op->work[i].start;

        {
                /* New clusters need room; the undo log needs little. Refuse now rather than midway. */
                struct statvfs vfs;
                if (fstatvfs(op->target.fd, &vfs) >= 0 && op->bytes_total > (uint64_t) vfs.f_bavail * vfs.f_frsize)
                        return op_error(err, -ENOSPC, "the store has %" PRIu64 " bytes free, the operation needs up to %" PRIu64,
                                        (uint64_t) vfs.f_bavail * vfs.f_frsize, op->bytes_total);
        }

        /* The journal: commit point is the disk's new chain; the changed layers' records before and after. */
        r = txn_new(s, op->op, INTENT_COMMIT_CHAIN, vm, 0, &op->txn);
        if (r >= 0)
                r = txn_set_commit_chain(op->txn, disk, op->new_chain, op->n_new_chain);
        if (r < 0)
                return op_error(err, r, "out of memory");
        {
                Layer *after = NULL;
                if (kind == RESHAPE_COMMIT) {
                        Layer *p = op->target.layer;
                        r = layer_with(p, KEEP_BACKING, MAX(p->virtual_size, committed->virtual_size), &after) ? 0 : -ENOMEM;
                        if (r >= 0)
                                r = txn_add_modify(op->txn, p, after);
                        after = layer_free(after);
                        if (r >= 0 && op->upper.layer) {
                                r = layer_with(op->upper.layer, p, op->upper.layer->virtual_size, &after) ? 0 : -ENOMEM;
                                if (r >= 0)
                                        r = txn_add_modify(op->txn, op->upper.layer, after);
                                after = layer_free(after);
                        }
                } else {
                        r = layer_with(top, op->new_backing, top->virtual_size, &after) ? 0 : -ENOMEM;
                        if (r >= 0)
                                r = txn_add_modify(op->txn, top, after);
                        layer_free(after);
                }
                if (r < 0)
                        return op_error(err, r, "out of memory");
        }
        /* Private layers that leave the chain and that no other disk uses go after the commit point. */
        for (size_t i = 0; i < d->n_chain; i++) {
                bool stays = false;
                Layer *l = op->layers[i].layer;
                for (size_t k = 0; k < op->n_new_chain && !stays; k++)
                        stays = streq(op->new_chain[k], l->id);
                if (!stays && l->vm && store_count_users(s, l->id) == 1 && txn_add_drop(op->txn, l->id) < 0)
                        return op_error(err, -ENOMEM, "out of memory");
        }
        /* The drops wait until the caller has been told (reshape_cleanup()). */
        txn_defer_finish(op->txn);
        r = txn_start(op->txn);
        if (r < 0)
                return op_error(err, r, "cannot write the journal");

        /* Mark, then the undo logs: from here on a crash is rolled back from them. */
        for (size_t k = 0; k < txn_intent(op->txn)->n_modify; k++) {
                Layer *l = store_find_layer(s, txn_intent(op->txn)->modify[k].layer);
                l->state = LAYER_MODIFYING;
                r = store_save_layer(s, l);
                if (r < 0) {
                        reshape_abort(op);
                        return op_error(err, r, "cannot write the layer record");
                }
        }
        txn_crash_point(op->txn, "after-mark");
        r = target_begin(op, &op->target, err);
        if (r >= 0 && op->upper.layer)
                r = target_begin(op, &op->upper, err);
        if (r >= 0 && kind == RESHAPE_COMMIT) {
                uint64_t size = MAX(op->target.layer->virtual_size, committed->virtual_size);
                if (op->target.edit)
                        r = qcow2_edit_grow(op->target.edit, size, err);
                if (r >= 0 && op->target.data_fd >= 0 && size > op->target.layer->virtual_size &&
                    ftruncate(op->target.data_fd, (off_t) size) < 0)
                        r = op_error(err, negative_errno(), "cannot grow the data file of layer %s", op->target.layer->id);
                else if (size > op->target.layer->virtual_size && ftruncate(op->target.fd, (off_t) size) < 0)
                        r = op_error(err, negative_errno(), "cannot grow layer %s", op->target.layer->id);
        }
        if (r < 0) {
                reshape_abort(op);
                return r;
        }
        if (committed)
                op->pinned = NULL;
        else if (op->new_backing && op->shared == SIZE_MAX) {
                op->pinned = op->new_backing;
                op->pinned->pins++;
        }

        log_op(LOG_INFO, op->op, vm, disk, op->target.layer->id, "%s of disk '%s' of VM '%s' started: %" PRIu64 " bytes to write",
               op->op, disk, vm, op->bytes_total);
        *ret = TAKE_PTR(op);
        return 0;
}

/* ---- steps ---- */

/* Asks the kernel to begin writing the file's dirty pages back, without waiting for them. */
static void start_writeback(int fd) {
        (void) sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

static int finish(ReshapeOp *op, OpError *err) {
        Vm *v, *next = NULL;
        Disk *nd;
        int r;

        /* The data first, then the tables that point at it. */
        if (op->target.data_fd >= 0 && fdatasync(op->target.data_fd) < 0)
                return op_error(err, negative_errno(), "cannot flush the data file of layer %s", op->target.layer->id);
        if (op->target.edit)
                r = qcow2_edit_flush(op->target.edit, err);
        else if (fdatasync(op->target.fd) < 0)
                r = op_error(err, negative_errno(), "cannot flush layer %s", op->target.layer->id);
        else
                r = 0;
        if (r < 0)
                return r;
        txn_crash_point(op->txn, "after-data");

        if (op->kind != RESHAPE_COMMIT)
                r = rewrite_backing(&op->target, op->new_backing, err);
        else if (op->upper.layer)
                r = rewrite_backing(&op->upper, op->target.layer, err);
        else
                r = 0;
        if (r < 0)
                return r;
        txn_crash_point(op->txn, "after-header");

        /* The commit point: the VM record with the new chain. */
        v = store_find_vm(op->store, op->vm);
        if (!v || vm_copy(v, &next) < 0)
                return op_error(err, -ENOMEM, "out of memory");
        nd = vm_find_disk(next, op->disk);
        if (!nd) {
                vm_free(next);
                return op_error(err, -ENOENT, "disk '%s' disappeared", op->disk);
        }
        for (size_t i = 0; i < nd->n_chain; i++)
                free(nd->chain[i]);
        free(nd->chain);
        nd->chain = calloc(op->n_new_chain, sizeof(char *));
        nd->n_chain = 0;
        for (size_t i = 0; nd->chain && i < op->n_new_chain; i++)
                if ((nd->chain[i] = strdup(op->new_chain[i])))
                        nd->n_chain++;
        if (nd->n_chain != op->n_new_chain) {
                vm_free(next);
                return op_error(err, -ENOMEM, "out of memory");
        }
        next->generation++;
        r = txn_commit(op->txn, txn_write_vm, next); /* also writes the changed layers' records "after" */
        if (r < 0) {
                vm_free(next);
                return op_record_error(err, r, "VM");
        }
        op->finished = true;

        /* Clean-up after the commit point; recovery repeats it if we die here. */
        target_done(&op->target);
        target_done(&op->upper);
        for (size_t i = 0; i < op->n_layers; i++)
                op->layers[i].fd = safe_close(op->layers[i].fd);
        op->cleanup = true; /* reshape_free(), once the job has said it is done */
        log_op(LOG_INFO, op->op, op->vm, op->disk, NULL, "%s of disk '%s' of VM '%s' done", op->op, op->disk, op->vm);
        return 0;
}

/* After the commit point and after the caller has been told: the layers that left the chain go. The
 * journal entry stays until then, so recovery repeats this if we die meanwhile. */
static void reshape_cleanup(ReshapeOp *op) {
        txn_finish(op->txn); /* nothing if the records "after" could not be written: the next start does it */
        op->cleanup = false;
}

int reshape_step(ReshapeOp *op, OpError *err) {
        uint64_t budget = op->step_bytes;
        bool did = false;
        int r = 0;

        if (op->finished)
                return 0;
        while (budget > 0 && op->work_pos < op->n_work) {
                Range *w = &op->work[op->work_pos];
                uint64_t a = w->start + op->work_off, b = MIN(w->end, a + budget);

                if (op->kind == RESHAPE_REBASE && op->n_new_view > 0)
                        r = materialize_compare(op, a, b, err);
                else if (op->target.edit)
                        r = materialize_qcow2(op, op->old_view, op->n_old_view, a, b, err);
                else
                        r = materialize_raw(op, a, b, err);
                if (r < 0)
                        goto fail;
                did = true;
                op->bytes_done += b - a;
                budget -= b - a;
                op->work_off += b - a;
                if (w->start + op->work_off >= w->end) {
                        op->work_pos++;
                        op->work_off = 0;
                }
        }
        if (op->cp_len > 0) {
                r = copy_flush(op, err);
                if (r < 0)
                        goto fail;
        }
        if (did) {
                /* No flush per step: until the commit point a crash is rolled back from the undo logs,
                 * which are flushed before anything is overwritten in place, so only finish() needs
                 * the data on disk. Writeback starts now, overlapping the next step's reads. */
                if (op->target.data_fd >= 0)
                        start_writeback(op->target.data_fd);
                start_writeback(op->target.fd);
                if (op->target.edit) {
                        r = qcow2_edit_write_tables(op->target.edit, err);
                        if (r < 0)
                                goto fail;
                }
                if (!op->stepped) {
                        op->stepped = true;
                        txn_crash_point(op->txn, "mid-copy");
                }
        }
        if (op->work_pos < op->n_work)
                return 1;
        r = finish(op, err);
        if (r < 0)
                goto fail;
        return 0;
fail:
        if (!op->finished)
                reshape_abort(op);
        return r;
}

void reshape_abort(ReshapeOp *op) {
        if (op->finished || !txn_started(op->txn))
                return;
        /* Our descriptors go first: the roll-back opens the files afresh. */
        target_done(&op->target);
        target_done(&op->upper);
        if (txn_abort(op->txn) < 0)
                log_error("Cannot roll back %s of disk '%s' of VM '%s'; the next start tries again", op->op, op->disk, op->vm);
        else
                log_op(LOG_NOTICE, op->op, op->vm, op->disk, NULL, "%s of disk '%s' of VM '%s' rolled back", op->op, op->disk,
                       op->vm);
        op->finished = true;
}
