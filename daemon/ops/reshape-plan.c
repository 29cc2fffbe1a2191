/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Reshape: what each guest range reads through the old and the new view of the chain, and the work list. */

#include "reshape-internal.h"

/* ---- views ---- */

int reshape_view_load(ReshapeOp *op, size_t i, OpError *err) {
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
int reshape_view_resolve(ReshapeOp *op, const size_t *view, size_t n, size_t from, size_t stop, uint64_t a, uint64_t b,
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

        r = reshape_view_load(op, view[from], err);
        if (r < 0)
                return r;
        v = &op->layers[view[from]];
        end = MIN(b, v->size);

        x = a;
        for (size_t i = extent_find(&v->map, a); x < end && i < v->map.n_extents; i++) {
                const Extent *e = &v->map.extents[i];
                uint64_t s = MAX(x, e->start), t = MIN(end, e->start + e->length);

                if (s > x) { /* a gap in the map reads as unallocated */
                        r = reshape_view_resolve(op, view, n, from + 1, stop, x, s, out, err);
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
                        r = reshape_view_resolve(op, view, n, from + 1, stop, s, t, out, err);
                        if (r < 0)
                                return r;
                }
                x = t;
        }
        if (x < end) {
                r = reshape_view_resolve(op, view, n, from + 1, stop, x, end, out, err);
                if (r < 0)
                        return r;
        }
        /* Past this layer's end: zeros, whatever lies below. */
        if (end < b && pieces_add(out, MAX(a, end), b - MAX(a, end), PIECE_ZERO, 0, 0) < 0)
                return op_error(err, -ENOMEM, "out of memory");
        return 0;
}

/* Where a piece's data is: the layer's data file, if it has one, else the layer's file. */
int reshape_piece_fd(const ReshapeOp *op, const Piece *p) {
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

int reshape_plan_rebase(ReshapeOp *op, OpError *err) {
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
                r = reshape_view_resolve(op, op->old_view, op->n_old_view, 0, op->shared, e->start, end, &po, err);
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
                r = reshape_view_resolve(op, op->new_view, op->n_new_view, 0, SIZE_MAX, e->start, end, &pn, err);
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

int reshape_plan_commit(ReshapeOp *op, OpError *err) {
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

