/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Chain operations on a disk that an export serves, done in its helper while the VM runs.
 *
 * The records stay the truth, and the helper is brought to them: a live snapshot first commits the new
 * layer exactly as an offline one does (its file, then the VM record: the commit point), and only then
 * switches the helper to it. An empty overlay reads exactly like the layer below it, so between the two
 * steps the chain the records describe holds the same data as the one the helper serves, and a guest
 * write that lands in the old top in between is still read through the new one. Whatever interrupts
 * the switch (vdiskd killed, the helper refusing) is finished by export_reconcile(): at the next start,
 * or before the next live operation.
 */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "live.h"
#include "log.h"
#include "open-disk.h"
#include "util.h"


static json_object *object_of(const char *k1, json_object *v1, const char *k2, json_object *v2, const char *k3,
                              json_object *v3) {
        json_object *o = json_object_new_object();

        if (!o || json_object_object_add(o, k1, v1) < 0 || (k2 && json_object_object_add(o, k2, v2) < 0) ||
            (k3 && json_object_object_add(o, k3, v3) < 0)) {
                json_object_put(o);
                return NULL;
        }
        return o;
}

/* The node the export serves now: the helper's active top. */
int export_active_node(Export *e, char ret[static EXPORT_NODE_NAME_MAX], OpError *err) {
        _cleanup_json_ json_object *reply = NULL;
        int r;

        r = export_qmp(e, "query-block-exports", NULL, -EBADF, &reply, err);
        if (r < 0)
                return r;
        for (size_t i = 0; json_object_is_type(reply, json_type_array) && i < json_object_array_length(reply); i++) {
                json_object *x = json_object_array_get_idx(reply, i), *id, *node;

                if (json_object_object_get_ex(x, "id", &id) && json_object_is_type(id, json_type_string) &&
                    json_object_object_get_ex(x, "node-name", &node) && json_object_is_type(node, json_type_string) &&
                    json_object_get_string_len(node) < (int) EXPORT_NODE_NAME_MAX) {
                        snprintf(ret, EXPORT_NODE_NAME_MAX, "%s", json_object_get_string(node));
                        return 0;
                }
        }
        return op_error(err, -EIO, "The storage helper serves no export");
}

/* The next free fd set of the helper. */
static int next_fdset(Export *e, int64_t *ret, OpError *err) {
        _cleanup_json_ json_object *reply = NULL;
        int64_t max = 0;
        int r;

        r = export_qmp(e, "query-fdsets", NULL, -EBADF, &reply, err);
        if (r < 0)
                return r;
        for (size_t i = 0; json_object_is_type(reply, json_type_array) && i < json_object_array_length(reply); i++) {
                json_object *id;
                if (json_object_object_get_ex(json_object_array_get_idx(reply, i), "fdset-id", &id))
                        max = MAX(max, json_object_get_int64(id));
        }
        *ret = max + 1;
        return 0;
}

/* Hands layer `id` (a qcow2 overlay of the node `below`) to the helper and makes it the active top. */
static int add_overlay(Export *e, Store *s, const char *id, const char *below, OpError *err) {
        _cleanup_json_ json_object *fdset = NULL, *file = NULL, *format = NULL, *snap = NULL;
        char fname[EXPORT_NODE_NAME_MAX], lname[EXPORT_NODE_NAME_MAX], path[32];
        Layer *l = store_find_layer(s, id);
        _cleanup_close_ int fd = -EBADF;
        int64_t set;
        int r;

        if (!l || l->format != IMAGE_FORMAT_QCOW2 || l->data_file)
                return op_error(err, -EBADMSG, "Layer %s is not a qcow2 overlay the helper can take live", id);
        fd = store_open_layer(s, l, O_RDWR);
        if (fd < 0)
                return op_error(err, fd == -ENOENT ? -EBADMSG : fd, "Cannot open layer %s", id);
        r = next_fdset(e, &set, err);
        if (r < 0)
                return r;
        export_node_name(fname, 'F', id);
        export_node_name(lname, 'L', id);
        snprintf(path, sizeof(path), "/dev/fdset/%" PRIi64, set);
        fdset = object_of("fdset-id", json_object_new_int64(set), "opaque", json_object_new_string(id), NULL, NULL);
        file = object_of("driver", json_object_new_string("file"), "node-name", json_object_new_string(fname), "filename",
                         json_object_new_string(path));
        format = object_of("driver", json_object_new_string("qcow2"), "node-name", json_object_new_string(lname), "file",
                           json_object_new_string(fname));
        snap = object_of("node", json_object_new_string(below), "overlay", json_object_new_string(lname), NULL, NULL);
        if (!fdset || !file || !format || !snap || json_object_object_add(format, "backing", NULL) < 0)
                return -ENOMEM;
        r = export_qmp(e, "add-fd", fdset, fd, NULL, err);
        if (r >= 0)
                r = export_qmp(e, "blockdev-add", file, -EBADF, NULL, err);
        if (r >= 0)
                r = export_qmp(e, "blockdev-add", format, -EBADF, NULL, err);
        if (r >= 0)
                r = export_qmp(e, "blockdev-snapshot", snap, -EBADF, NULL, err);
        return r;
}

int export_reconcile(Export *e, Store *s, OpError *err) {
        char active[EXPORT_NODE_NAME_MAX];
        size_t k;
        Disk *d;
        int r;

        /* A live job first: its chain is settled (kept or rolled forward) before snapshots are looked for. */
        r = live_job_recover(e, s, err);
        if (r < 0)
                return r;
        r = op_find_disk(s, e->lease->vm, e->lease->disk, NULL, &d, err);
        if (r < 0)
                return r;
        r = export_active_node(e, active, err);
        if (r < 0)
                return r;
        for (k = 0; k < d->n_chain; k++) {
                char name[EXPORT_NODE_NAME_MAX];

                export_node_name(name, 'L', d->chain[k]);
                if (streq(name, active))
                        break;
        }
        if (k == d->n_chain)
                return op_error(err, -EBADMSG, "The storage helper of disk '%s' of VM '%s' serves a layer its chain does not have",
                                e->lease->disk, e->lease->vm);
        /* Layers recorded on top of the one it serves: deepest first. */
        while (k-- > 0) {
                r = add_overlay(e, s, d->chain[k], active, err);
                if (r < 0)
                        return r;
                export_node_name(active, 'L', d->chain[k]);
                log_op(LOG_INFO, "snapshot", e->lease->vm, e->lease->disk, d->chain[k],
                       "Storage helper of disk '%s' of VM '%s' switched to layer %s", e->lease->disk, e->lease->vm,
                       d->chain[k]);
        }
        r = export_set_nodes(e, d);
        if (r >= 0)
                r = export_save_state(e);
        if (r < 0)
                return op_error(err, r, "Cannot record the export's chain");
        return 0;
}

Lease *lease_registry_find_live(const LeaseRegistry *reg, const char *vm, const char *disk) {
        for (size_t i = 0; i < reg->n_leases; i++) {
                Lease *l = reg->leases[i];
                if (l->export && !l->read_only && streq(l->vm, vm) && streq(l->disk, disk))
                        return l;
        }
        return NULL;
}

int op_live_snapshot(Store *s, const Limits *lim, const JobRegistry *jobs, Lease *l, char ret_layer[static LAYER_ID_LEN + 1],
                     OpError *err) {
        const Job *j = job_registry_find_running(jobs, l->vm, l->disk);
        int r;

        if (j)
                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' is busy with a %s job", l->disk, l->vm, j->operation);
        /* A switch left over from before (vdiskd stopped, or the helper refused) comes first. */
        r = export_reconcile(l->export, s, err);
        if (r < 0)
                return r;
        r = op_snapshot(s, lim, l->vm, l->disk, ret_layer, err);
        if (r < 0)
                return r;
        crash_point("live-snapshot:after-commit");
        r = export_reconcile(l->export, s, err);
        if (r < 0) {
                log_op(LOG_ERR, "snapshot", l->vm, l->disk, ret_layer,
                       "Snapshot %s of disk '%s' of VM '%s' is recorded, but its storage helper has not switched to it yet: %s",
                       ret_layer, l->disk, l->vm, err->reason);
                return r;
        }
        return 0;
}
