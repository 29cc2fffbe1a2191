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

#include "reshape-internal.h"


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

/* The operation's state, with the disk's chain as its first layers; `*ret_pos`: where `layer` is in the
 * chain, SIZE_MAX if it is not. */
static int reshape_op_new(Store *s, const Limits *lim, ReshapeKind kind, const char *vm, const char *disk, const Disk *d,
                          const char *layer, ReshapeOp **ret, size_t *ret_pos, OpError *err) {
        _cleanup_(reshape_freep) ReshapeOp *op = NULL;
        size_t pos = SIZE_MAX;

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
        op->cp_src = op->cp_dst = op->cp_kick_fd = -EBADF;
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
        *ret_pos = pos;
        *ret = TAKE_PTR(op);
        return 0;
}

/* Commit of the layer at `pos` into its backing: checks, old view and new chain. */
static int choose_commit(ReshapeOp *op, const Disk *d, size_t pos, const char *layer, Layer **ret_committed,
                         OpError *err) {
        const char *disk = op->disk;
        Layer *committed, *p;

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
        *ret_committed = committed;
        return 0;
}

/* Rebase of the top onto `layer` (a lower layer, a catalog image, or "" to flatten): checks, views, new
 * chain. */
static int choose_rebase(ReshapeOp *op, size_t pos, const char *layer, OpError *err) {
        Store *s = op->store;
        const char *disk = op->disk;
        Layer *top = op->layers[0].layer;
        int r;

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
        r = chain_of(s, b, &op->new_chain, &op->n_new_chain, op->limits.max_chain_depth, err);
        if (r < 0)
                return r;
        return 0;
}

/* Opens, locks and checks what will change, then maps it. */
static int open_and_map(ReshapeOp *op, size_t pos, OpError *err) {
        ReshapeKind kind = op->kind;
        int r;

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
                r = reshape_view_load(op, op->target_index, err);
                if (r >= 0 && kind == RESHAPE_COMMIT)
                        r = reshape_view_load(op, pos, err);
                if (r < 0)
                        return r;
        }
        if (kind == RESHAPE_COMMIT && op->target.layer->format == IMAGE_FORMAT_RAW)
                op->target.cluster_size = 512;
        else if (kind != RESHAPE_UNSAFE_REBASE) {
                Qcow2Limits ql = { .max_virtual_size = op->limits.max_virtual_size };
                Qcow2Header h;
                r = qcow2_header_read(op->target.fd, &ql, &h, err);
                if (r < 0)
                        return r;
                op->target.cluster_size = h.cluster_size;
        }

        return 0;
}

/* The work list and its size; refused now rather than midway if the store cannot hold it. */
static int plan(ReshapeOp *op, OpError *err) {
        int r = 0;

        if (op->kind == RESHAPE_REBASE)
                r = reshape_plan_rebase(op, err);
        else if (op->kind == RESHAPE_COMMIT)
                r = reshape_plan_commit(op, err);
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

        return 0;
}

/* The journal: commit point is the disk's new chain; the changed layers' records before and after; the
 * private layers that leave the chain. */
static int write_intent(ReshapeOp *op, const Disk *d, const Layer *committed, OpError *err) {
        Store *s = op->store;
        Layer *top = op->layers[0].layer;
        int r;

        r = txn_new(s, op->op, INTENT_COMMIT_CHAIN, op->vm, 0, &op->txn);
        if (r >= 0)
                r = txn_set_commit_chain(op->txn, op->disk, op->new_chain, op->n_new_chain);
        if (r < 0)
                return op_error(err, r, "out of memory");
        {
                Layer *after = NULL;
                if (op->kind == RESHAPE_COMMIT) {
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

        return 0;
}

/* Marks the changed layers and starts their undo logs: from here on a crash is rolled back from them.
 * On failure, rolls back. */
static int mark_and_begin(ReshapeOp *op, const Layer *committed, OpError *err) {
        Store *s = op->store;
        int r;

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
        if (r >= 0 && op->kind == RESHAPE_COMMIT) {
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
        return 0;
}

int reshape_begin(Store *s, const Limits *lim, ReshapeKind kind, const char *vm, const char *disk, const char *layer,
                  ReshapeOp **ret, OpError *err) {
        _cleanup_(reshape_freep) ReshapeOp *op = NULL;
        Vm *v;
        Disk *d;
        Layer *committed = NULL;
        size_t pos = SIZE_MAX;
        int r;

        r = op_find_disk(s, vm, disk, &v, &d, err);
        if (r < 0)
                return r;
        if (d->quarantine)
                return op_error(err, -EBADMSG, "disk '%s' of VM '%s' is quarantined: %s", disk, vm, d->quarantine);

        r = reshape_op_new(s, lim, kind, vm, disk, d, layer, &op, &pos, err);
        if (r < 0)
                return r;
        r = kind == RESHAPE_COMMIT ? choose_commit(op, d, pos, layer, &committed, err) : choose_rebase(op, pos, layer, err);
        if (r >= 0)
                r = open_and_map(op, pos, err);
        if (r >= 0)
                r = plan(op, err);
        if (r >= 0)
                r = write_intent(op, d, committed, err);
        if (r >= 0)
                r = mark_and_begin(op, committed, err);
        if (r < 0)
                return r;
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
                        r = reshape_materialize_compare(op, a, b, err);
                else if (op->target.edit)
                        r = reshape_materialize_qcow2(op, op->old_view, op->n_old_view, a, b, err);
                else
                        r = reshape_materialize_raw(op, a, b, err);
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
                r = reshape_copy_flush(op, err);
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
