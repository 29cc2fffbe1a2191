/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Live commit, rebase and flatten: the layers a job drops from the chain of a disk that an export
 * serves go in the storage helper (QEMU's block-commit and block-stream) while the VM keeps writing.
 *
 * The helper changes its chain first and the records follow: QEMU copies the data, rewrites the header
 * of the layer above the dropped ones and switches its graph when its job completes; only then are the
 * records committed (one transaction: the disk's new chain, the upper layer's backing, the dropped
 * layers' files after the commit point). Until QEMU's job completes the old chain stays valid:
 * commit writes into the base only clusters the committed layer covers, which the guest never reads
 * from the base while that layer is above it; stream writes into the top only what it reads through
 * it already. A job that fails or is cancelled therefore leaves the records as they were.
 *
 * What job the helper was given is kept in the export's state.json until the records are settled, so
 * that a vdiskd killed meanwhile finds out at its next start (live_job_recover()): a job still running
 * is cancelled (the old chain), one that completed is rolled forward in the records (the new chain).
 */

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "journal.h"
#include "live.h"
#include "log.h"
#include "open-disk.h"
#include "test-hooks.h"
#include "util.h"

#define LIVE_JOB_ID "vdisk-job"
#define LIVE_JOB_CANCEL_TIMEOUT_USEC (UINT64_C(30) * 1000000)
/* The opaque string of a read-write fd handed over for one job: "rw:" and the layer id. */
#define LIVE_RW_OPAQUE "rw:"

struct LiveJob {
        Store *store;
        const LeaseRegistry *leases;
        char lease[LAYER_ID_LEN + 1];
        char *vm, *disk;
        char op[16];     /* "commit", "rebase", "flatten" */
        bool active;     /* an active commit: completed by us once QEMU's mirror is ready */
        bool completing; /* block-job-complete sent */
        bool running_point;
        uint64_t done, total;
};

static char *mfree_str(char *p) {
        free(p);
        return NULL;
}

static uint64_t now_usec(void) {
        struct timespec ts;
        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static void strv_freep(char ***v) {
        strv_free(*v);
}
#define _cleanup_strv_ _cleanup_(strv_freep)

static int put(json_object *o, const char *key, json_object *value) {
        if (!o || !value || json_object_object_add(o, key, value) < 0) {
                json_object_put(value);
                return -ENOMEM;
        }
        return 0;
}

static int put_string(json_object *o, const char *key, const char *value) {
        return put(o, key, json_object_new_string(value));
}

static const char *get_string(json_object *o, const char *key) {
        json_object *v;
        return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}


static size_t chain_index(const Disk *d, const char *id) {
        for (size_t i = 0; id && i < d->n_chain; i++)
                if (streq(d->chain[i], id))
                        return i;
        return SIZE_MAX;
}

/* The chain once job `op` on `layer` has completed: NULL (and 0) if `layer` is not where the job
 * needs it (the records were settled already). */
static int new_chain_of(const Disk *d, const char *op, const char *layer, char ***ret, size_t *ret_n) {
        _cleanup_strv_ char **v = NULL;
        size_t n = 0, pos = chain_index(d, layer);
        int r = 0;

        *ret = NULL;
        *ret_n = 0;
        if (streq(op, "commit")) {
                if (pos == SIZE_MAX || pos + 1 >= d->n_chain)
                        return 0;
                for (size_t i = 0; r >= 0 && i < d->n_chain; i++)
                        if (i != pos)
                                r = strv_push(&v, &n, d->chain[i]);
        } else {
                if (streq(op, "rebase") && (pos == SIZE_MAX || pos == 0))
                        return 0;
                if (streq(op, "flatten") && d->n_chain < 2)
                        return 0;
                r = strv_push(&v, &n, d->chain[0]);
                for (size_t i = streq(op, "flatten") ? d->n_chain : pos; r >= 0 && i < d->n_chain; i++)
                        r = strv_push(&v, &n, d->chain[i]);
        }
        if (r < 0)
                return r;
        *ret = TAKE_PTR(v);
        *ret_n = n;
        return 0;
}

/* The "fds" array of entry `i` of query-fdsets' reply and the set's id; NULL if it is not shaped so. */
static json_object *fdset_fds(json_object *reply, size_t i, int64_t *ret_id) {
        json_object *set = json_object_array_get_idx(reply, i), *fds, *sid;

        if (!json_object_object_get_ex(set, "fdset-id", &sid) || !json_object_object_get_ex(set, "fds", &fds) ||
            !json_object_is_type(fds, json_type_array))
                return NULL;
        *ret_id = json_object_get_int64(sid);
        return fds;
}

/* The fd set whose descriptors are layer `id`'s (their opaque string is the id), -ENOENT if none. */
static int fdset_of(Export *e, const char *id, int64_t *ret, OpError *err) {
        _cleanup_json_ json_object *reply = NULL;
        int r;

        r = export_qmp(e, "query-fdsets", NULL, -EBADF, &reply, err);
        if (r < 0)
                return r;
        for (size_t i = 0; json_object_is_type(reply, json_type_array) && i < json_object_array_length(reply); i++) {
                int64_t sid;
                json_object *fds = fdset_fds(reply, i, &sid);

                for (size_t k = 0; fds && k < json_object_array_length(fds); k++) {
                        const char *opaque = get_string(json_object_array_get_idx(fds, k), "opaque");
                        if (opaque && streq(opaque, id)) {
                                *ret = sid;
                                return 0;
                        }
                }
        }
        return -ENOENT;
}

/* QEMU writes into layer `l` (the base of a commit, or the layer above the committed one): a read-write
 * descriptor of it joins the fd set of its file node, from which QEMU reopens it. */
static int add_rw_fd(Export *e, Store *s, const Layer *l, OpError *err) {
        _cleanup_json_ json_object *args = json_object_new_object();
        char opaque[sizeof(LIVE_RW_OPAQUE) + LAYER_ID_LEN];
        _cleanup_close_ int fd = -EBADF;
        int64_t set;
        int r;

        r = fdset_of(e, l->id, &set, err);
        if (r == -ENOENT)
                return op_error(err, -EIO, "The storage helper holds no file of layer %s", l->id);
        if (r < 0)
                return r;
        fd = store_open_layer(s, l, O_RDWR);
        if (fd < 0)
                return op_error(err, fd == -ENOENT ? -EBADMSG : fd, "Cannot open layer %s", l->id);
        snprintf(opaque, sizeof(opaque), LIVE_RW_OPAQUE "%s", l->id);
        r = put(args, "fdset-id", json_object_new_int64(set));
        if (r >= 0)
                r = put_string(args, "opaque", opaque);
        if (r < 0)
                return r;
        return export_qmp(e, "add-fd", args, fd, NULL, err);
}

/* The chain the helper serves, as node names from its active top down through the backing edges of its
 * block graph. Only meaningful while no job runs (a job inserts filter nodes). */
static int helper_chain(Export *e, char ***ret, size_t *ret_n, OpError *err) {
        _cleanup_json_ json_object *graph = NULL;
        _cleanup_strv_ char **v = NULL;
        char active[EXPORT_NODE_NAME_MAX];
        json_object *nodes, *edges;
        const char *name = active;
        size_t n = 0;
        int r;

        r = export_active_node(e, active, err);
        if (r >= 0)
                r = export_qmp(e, "x-debug-query-block-graph", NULL, -EBADF, &graph, err);
        if (r < 0)
                return r;
        if (!json_object_object_get_ex(graph, "nodes", &nodes) || !json_object_object_get_ex(graph, "edges", &edges) ||
            !json_object_is_type(nodes, json_type_array) || !json_object_is_type(edges, json_type_array))
                return op_error(err, -EIO, "The storage helper's block graph is unreadable");
        while (name && n <= json_object_array_length(nodes)) {
                json_object *id = NULL, *x;
                const char *next = NULL;

                for (size_t i = 0; !id && i < json_object_array_length(nodes); i++) {
                        x = json_object_array_get_idx(nodes, i);
                        if (streq_ptr(get_string(x, "name"), name) && !json_object_object_get_ex(x, "id", &id))
                                id = NULL;
                }
                if (!id || strv_push(&v, &n, name) < 0)
                        return op_error(err, id ? -ENOMEM : -EIO, "The storage helper's node %s is not in its graph", name);
                for (size_t i = 0; !next && i < json_object_array_length(edges); i++) {
                        json_object *edge = json_object_array_get_idx(edges, i), *parent, *child;

                        if (!streq_ptr(get_string(edge, "name"), "backing") || !json_object_object_get_ex(edge, "parent", &parent) ||
                            json_object_get_int64(parent) != json_object_get_int64(id) ||
                            !json_object_object_get_ex(edge, "child", &child))
                                continue;
                        for (size_t k = 0; !next && k < json_object_array_length(nodes); k++) {
                                json_object *c, *cid;
                                c = json_object_array_get_idx(nodes, k);
                                if (json_object_object_get_ex(c, "id", &cid) && json_object_get_int64(cid) == json_object_get_int64(child))
                                        next = get_string(c, "name");
                        }
                }
                name = next;
        }
        *ret = TAKE_PTR(v);
        *ret_n = n;
        return 0;
}

/* Whether the helper's chain (node names) is exactly the chain `ids`. */
static bool chain_is(char **nodes, size_t n_nodes, char **ids, size_t n_ids) {
        if (n_nodes != n_ids)
                return false;
        for (size_t i = 0; i < n_ids; i++) {
                char name[EXPORT_NODE_NAME_MAX];
                export_node_name(name, 'L', ids[i]);
                if (!streq(nodes[i], name))
                        return false;
        }
        return true;
}

/* A copy of a layer's record naming `backing` (NULL: none) below it. */
static Layer *layer_with_backing(const Layer *l, const Layer *backing) {
        json_object *o = layer_to_json(l);
        Layer *c = NULL;

        if (o && layer_from_json(o, &c) >= 0) {
                free(c->backing);
                c->backing = backing ? strdup(backing->id) : NULL;
                c->backing_format = backing ? backing->format : _IMAGE_FORMAT_INVALID;
                c->generation++;
                c->state = LAYER_READY;
                if (backing && !c->backing)
                        c = layer_free(c);
        }
        json_object_put(o);
        return c;
}

/* One transaction: the disk's new chain (the commit point), each kept layer whose backing changed, and
 * the private layers that left the chain, removed after the commit point. */
static int commit_records(Store *s, const char *op, const char *vm, const Disk *d, char **chain, size_t n, OpError *err) {
        _cleanup_(txn_abortp) Txn *t = NULL;
        char name[32];
        Vm *v, *next = NULL;
        Disk *nd;
        int r;

        snprintf(name, sizeof(name), "live-%s", op);
        r = txn_new(s, name, INTENT_COMMIT_CHAIN, vm, 0, &t);
        if (r >= 0)
                r = txn_set_commit_chain(t, d->name, chain, n);
        for (size_t k = 0; r >= 0 && k < n; k++) {
                Layer *l = store_find_layer(s, chain[k]), *b = k + 1 < n ? store_find_layer(s, chain[k + 1]) : NULL, *after;

                if (!l || (k + 1 < n && !b))
                        return op_error(err, -EBADMSG, "A layer record of disk '%s' is missing", d->name);
                if (streq_ptr(l->backing, b ? b->id : NULL))
                        continue;
                after = layer_with_backing(l, b);
                r = after ? txn_add_modify(t, l, after) : -ENOMEM;
                layer_free(after);
        }
        for (size_t i = 0; r >= 0 && i < d->n_chain; i++) {
                Layer *l = store_find_layer(s, d->chain[i]);
                bool stays = false;

                for (size_t k = 0; k < n && !stays; k++)
                        stays = streq(chain[k], d->chain[i]);
                if (!stays && l && l->vm && store_count_users(s, l->id) == 1)
                        r = txn_add_drop(t, l->id);
        }
        if (r < 0)
                return op_error(err, r, "out of memory");
        r = txn_start(t);
        if (r < 0)
                return op_error(err, r, "cannot write the journal");

        v = store_find_vm(s, vm);
        if (!v || vm_copy(v, &next) < 0 || !(nd = vm_find_disk(next, d->name))) {
                vm_free(next);
                return op_error(err, -ENOMEM, "out of memory");
        }
        for (size_t i = 0; i < nd->n_chain; i++)
                free(nd->chain[i]);
        free(nd->chain);
        nd->n_chain = 0;
        nd->chain = calloc(n, sizeof(char *));
        for (size_t i = 0; nd->chain && i < n; i++)
                if ((nd->chain[i] = strdup(chain[i])))
                        nd->n_chain++;
        if (nd->n_chain != n) {
                vm_free(next);
                return op_error(err, -ENOMEM, "out of memory");
        }
        next->generation++;
        r = txn_commit(t, txn_write_vm, next); /* then the changed layers' records and the dropped files */
        if (r < 0) {
                vm_free(next);
                return op_record_error(err, r, "VM");
        }
        return 0;
}

/* The helper lets go of the layers that left its chain: their nodes, then their descriptors. Best
 * effort: a node left behind only keeps a removed file open until the helper stops. */
static void release_layers(Export *e, const Disk *old, char **chain, size_t n) {
        for (size_t i = 0; i < old->n_chain; i++) {
                bool stays = false;
                int64_t set;

                for (size_t k = 0; k < n && !stays; k++)
                        stays = streq(chain[k], old->chain[i]);
                if (stays)
                        continue;
                for (const char *kind = "LF"; *kind; kind++) {
                        _cleanup_json_ json_object *args = json_object_new_object();
                        char name[EXPORT_NODE_NAME_MAX];
                        OpError err = {};

                        export_node_name(name, *kind, old->chain[i]);
                        if (put_string(args, "node-name", name) >= 0)
                                (void) export_qmp(e, "blockdev-del", args, -EBADF, NULL, &err);
                }
                for (unsigned tries = 0; tries < 8; tries++) {
                        _cleanup_json_ json_object *args = json_object_new_object();
                        OpError err = {};

                        if (fdset_of(e, old->chain[i], &set, &err) < 0 || put(args, "fdset-id", json_object_new_int64(set)) < 0 ||
                            export_qmp(e, "remove-fd", args, -EBADF, NULL, &err) < 0)
                                break;
                }
        }
}

/* The read-write fds handed over for a job go once it has ended: QEMU keeps a dup of one it still uses,
 * and an fd left in its set would keep the image locks QEMU took through it (they belong to the open
 * file description, which the set keeps open), in the way of the next job's reopen. Best effort. */
static void release_rw_fds(Export *e) {
        _cleanup_json_ json_object *reply = NULL;
        OpError err = {};

        if (export_qmp(e, "query-fdsets", NULL, -EBADF, &reply, &err) < 0)
                return;
        for (size_t i = 0; json_object_is_type(reply, json_type_array) && i < json_object_array_length(reply); i++) {
                int64_t sid;
                json_object *fds = fdset_fds(reply, i, &sid);

                for (size_t k = 0; fds && k < json_object_array_length(fds); k++) {
                        _cleanup_json_ json_object *args = json_object_new_object();
                        json_object *x = json_object_array_get_idx(fds, k), *fd;
                        const char *opaque = get_string(x, "opaque");

                        if (!opaque || !startswith(opaque, LIVE_RW_OPAQUE) || !json_object_object_get_ex(x, "fd", &fd) ||
                            put(args, "fdset-id", json_object_new_int64(sid)) < 0 ||
                            put(args, "fd", json_object_new_int64(json_object_get_int64(fd))) < 0)
                                continue;
                        (void) export_qmp(e, "remove-fd", args, -EBADF, NULL, &err);
                }
        }
}

int live_job_settle(Export *e, Store *s, bool *ret_changed, OpError *err) {
        _cleanup_strv_ char **nodes = NULL, **chain = NULL;
        _cleanup_(vm_freep) Vm *old = NULL;
        size_t n_nodes = 0, n = 0;
        const Lease *l = e->lease;
        Disk *d;
        int r;

        *ret_changed = false;
        if (!e->job_op)
                return 0;
        r = op_find_disk(s, l->vm, l->disk, NULL, &d, err);
        if (r >= 0)
                r = helper_chain(e, &nodes, &n_nodes, err);
        if (r >= 0)
                r = new_chain_of(d, e->job_op, e->job_layer, &chain, &n);
        if (r < 0)
                return r;
        if (!chain_is(nodes, n_nodes, d->chain, d->n_chain)) {
                if (!chain || !chain_is(nodes, n_nodes, chain, n))
                        return op_error(err, -EBADMSG,
                                        "The storage helper of disk '%s' of VM '%s' serves neither the recorded chain nor the one its %s leaves",
                                        l->disk, l->vm, e->job_op);
                r = vm_copy(store_find_vm(s, l->vm), &old);
                if (r < 0)
                        return op_error(err, r, "out of memory");
                r = commit_records(s, e->job_op, l->vm, d, chain, n, err);
                if (r < 0)
                        return r;
                log_op(LOG_INFO, e->job_op, l->vm, l->disk, NULL, "Live %s of disk '%s' of VM '%s' done: the records follow the storage helper",
                       e->job_op, l->disk, l->vm);
                release_layers(e, vm_find_disk(old, l->disk), chain, n);
                *ret_changed = true;
                r = op_find_disk(s, l->vm, l->disk, NULL, &d, err);
                if (r < 0)
                        return r;
        }
        release_rw_fds(e);
        e->job_op = mfree_str(e->job_op);
        r = export_set_nodes(e, d);
        if (r >= 0)
                r = export_save_state(e);
        if (r < 0)
                return op_error(err, r, "Cannot record the export's chain");
        return 0;
}

static int query_job(Export *e, json_object **ret_job, json_object **ret_reply, OpError *err) {
        int r;

        *ret_job = NULL;
        r = export_qmp(e, "query-jobs", NULL, -EBADF, ret_reply, err);
        if (r < 0)
                return r;
        for (size_t i = 0; json_object_is_type(*ret_reply, json_type_array) && i < json_object_array_length(*ret_reply); i++) {
                json_object *x = json_object_array_get_idx(*ret_reply, i);
                if (streq_ptr(get_string(x, "id"), LIVE_JOB_ID))
                        *ret_job = x;
        }
        return 0;
}

static int job_command(Export *e, const char *command, const char *key, OpError *err) {
        _cleanup_json_ json_object *args = json_object_new_object();
        int r = put_string(args, key, LIVE_JOB_ID);

        if (r >= 0 && streq(command, "block-job-cancel"))
                r = put(args, "force", json_object_new_boolean(true));
        if (r < 0)
                return r;
        return export_qmp(e, command, args, -EBADF, NULL, err);
}

/* Cancels the helper's job if it still runs and waits until it has ended, then dismisses it. */
static int cancel_helper_job(Export *e, OpError *err) {
        bool cancelled = false;
        uint64_t start = now_usec();
        int r;

        for (;;) {
                _cleanup_json_ json_object *reply = NULL;
                json_object *job;
                const char *status;

                r = query_job(e, &job, &reply, err);
                if (r < 0)
                        return r;
                if (!job)
                        return 0;
                status = get_string(job, "status");
                if (streq_ptr(status, "concluded"))
                        return job_command(e, "job-dismiss", "id", err);
                if (!cancelled) {
                        OpError ignored = {};
                        /* Refused if the job concluded meanwhile: the next look finds it so. */
                        (void) job_command(e, "block-job-cancel", "device", &ignored);
                        cancelled = true;
                }
                if (now_usec() - start > LIVE_JOB_CANCEL_TIMEOUT_USEC)
                        return op_error(err, -ETIMEDOUT, "The storage helper's job did not end when cancelled");
                (void) usleep(10 * 1000);
        }
}

int live_job_recover(Export *e, Store *s, OpError *err) {
        char op[16];
        bool changed;
        int r;

        if (!e->job_op)
                return 0;
        snprintf(op, sizeof(op), "%s", e->job_op);
        r = cancel_helper_job(e, err);
        if (r >= 0)
                r = live_job_settle(e, s, &changed, err);
        if (r < 0)
                return r;
        log_op(LOG_NOTICE, op, e->lease->vm, e->lease->disk, NULL,
               "A live job on disk '%s' of VM '%s' was interrupted (restart or end of lease): %s", e->lease->disk, e->lease->vm,
               changed ? "it had completed, the records now follow the storage helper" : "cancelled, the chain is unchanged");
        return changed;
}

/* ---- the job ---- */

/* The export of the job's lease, NULL (with the reason) once the lease has ended. */
static Export *job_export(LiveJob *j, OpError *err) {
        Lease *l = lease_registry_find(j->leases, j->lease);

        if (!l || !l->export) {
                const LeaseEnded *ended = lease_registry_ended(j->leases, j->lease);
                if (err)
                        op_error(err, -ECANCELED, "The lease of disk '%s' of VM '%s' ended (%s) before the live %s completed", j->disk,
                                 j->vm, ended ? ended->why : "the reason is no longer known", j->op);
                return NULL;
        }
        return l->export;
}

static void point(const LiveJob *j, const char *what) {
        char name[64];
        snprintf(name, sizeof(name), "live-%s:%s", j->op, what);
        crash_point(name);
}

int live_job_step(LiveJob *j, OpError *err) {
        _cleanup_json_ json_object *reply = NULL;
        Export *e = job_export(j, err);
        const char *status, *failure;
        json_object *job, *v;
        bool changed;
        int r;

        if (!e) {
                /* The lease's end settled the helper's job: it had completed, the records follow. */
                const LeaseEnded *ended = lease_registry_ended(j->leases, j->lease);
                if (ended && ended->job_completed) {
                        j->done = j->total;
                        return 0;
                }
                return err->code;
        }
        r = query_job(e, &job, &reply, err);
        if (r < 0)
                return r;
        if (!j->running_point) {
                j->running_point = true;
                point(j, "running");
        }
        status = job ? get_string(job, "status") : "concluded";
        if (job && json_object_object_get_ex(job, "current-progress", &v))
                j->done = json_object_get_uint64(v);
        if (job && json_object_object_get_ex(job, "total-progress", &v))
                j->total = json_object_get_uint64(v);
        if (streq_ptr(status, "ready") && j->active && !j->completing) {
                r = job_command(e, "block-job-complete", "device", err);
                if (r < 0)
                        return r;
                j->completing = true;
        }
        if (!streq_ptr(status, "concluded"))
                return 1;
        failure = job ? get_string(job, "error") : NULL;
        if (failure)
                log_op(LOG_ERR, j->op, j->vm, j->disk, NULL, "The storage helper's %s of disk '%s' of VM '%s' failed: %s", j->op,
                       j->disk, j->vm, failure);
        if (job) {
                r = job_command(e, "job-dismiss", "id", err);
                if (r < 0)
                        return r;
        }
        point(j, "after-job");
        r = live_job_settle(e, j->store, &changed, err);
        if (r < 0)
                return r;
        if (!changed)
                return op_error(err, -EIO, "The storage helper's %s failed: %s", j->op, failure ?: "the chain did not change");
        j->done = j->total;
        return 0;
}

void live_job_abort(LiveJob *j) {
        Export *e = job_export(j, NULL);
        OpError err = {};
        bool changed = false;

        if (!e || !e->job_op)
                return;
        if (cancel_helper_job(e, &err) < 0 || live_job_settle(e, j->store, &changed, &err) < 0) {
                log_op(LOG_ERR, j->op, j->vm, j->disk, NULL, "Cannot cancel the live %s of disk '%s' of VM '%s': %s", j->op, j->disk,
                       j->vm, err.reason);
                return;
        }
        log_op(LOG_NOTICE, j->op, j->vm, j->disk, NULL, "Live %s of disk '%s' of VM '%s' %s", j->op, j->disk, j->vm,
               changed ? "had completed before it could be cancelled: the records follow the storage helper"
                       : "cancelled: the chain is unchanged");
}

LiveJob *live_job_free(LiveJob *j) {
        if (!j)
                return NULL;
        free(j->vm);
        free(j->disk);
        free(j);
        return NULL;
}

uint64_t live_job_bytes_done(const LiveJob *j) {
        return j->done;
}

uint64_t live_job_bytes_total(const LiveJob *j) {
        return j->total;
}

const char *live_job_operation(const LiveJob *j) {
        return j->op;
}

/* ---- begin ---- */

static int no_data_file(const Layer *l, OpError *err) {
        if (l->data_file)
                return op_error(err, -EOPNOTSUPP, "layer %s keeps its data in an external file, which a live job cannot change", l->id);
        return 0;
}

/* Commit of the layer at `pos`: the offline checks, and that QEMU would not have to grow the base. */
static int check_commit(Store *s, const Disk *d, size_t pos, const char *layer, OpError *err) {
        Layer *c, *b;
        int r;

        if (pos == SIZE_MAX)
                return op_error(err, -ENOENT, "layer %s is not in the chain of disk '%s'", layer, d->name);
        c = store_find_layer(s, d->chain[pos]);
        if (c->catalog_name)
                return op_error(err, -EOPNOTSUPP, "layer %s is the catalog image '%s', which is never merged", layer, c->catalog_name);
        if (pos + 1 >= d->n_chain)
                return op_error(err, -EOPNOTSUPP, "layer %s has no backing layer to commit into", layer);
        b = store_find_layer(s, d->chain[pos + 1]);
        if (b->catalog_name)
                return op_error(err, -EOPNOTSUPP, "the backing of layer %s is the catalog image '%s', which is never written", layer,
                                b->catalog_name);
        if (c->virtual_size < b->virtual_size)
                return op_error(err, -EOPNOTSUPP, "layer %s is smaller than its backing layer; committing would change the disk", layer);
        if (c->virtual_size > b->virtual_size)
                return op_error(err, -EOPNOTSUPP, "layer %s is larger than its backing layer, which a live commit cannot grow", layer);
        r = no_data_file(c, err);
        if (r >= 0)
                r = no_data_file(b, err);
        if (r >= 0 && pos > 0)
                r = no_data_file(store_find_layer(s, d->chain[pos - 1]), err);
        return r;
}

/* Rebase of the top onto `layer` ("": flatten): the offline checks, and that it only drops layers. */
static int check_rebase(Store *s, const Disk *d, size_t pos, const char *layer, OpError *err) {
        Layer *top = store_find_layer(s, d->chain[0]), *b;

        if (top->format != IMAGE_FORMAT_QCOW2)
                return op_error(err, -EOPNOTSUPP, "the active layer of disk '%s' is raw, which has no backing file", d->name);
        if (isempty(layer))
                return no_data_file(top, err);
        b = store_find_layer(s, layer);
        if (pos == 0)
                return op_error(err, -EINVAL, "layer %s is the active layer itself", layer);
        if (pos == SIZE_MAX && (!b || !b->catalog_name))
                return op_error(err, b ? -EINVAL : -ENOENT, "layer %s is neither below the active layer of disk '%s' nor a catalog image",
                                layer, d->name);
        if (pos == SIZE_MAX)
                return op_error(err, -EOPNOTSUPP,
                                "a live rebase can only drop layers of the chain: layer %s is not below the active layer of disk '%s'",
                                layer, d->name);
        return no_data_file(top, err);
}

/* QEMU's job: block-commit (into the layer below `layer`) or block-stream (down to `layer`, or all). */
static int start_helper_job(Export *e, Store *s, const Disk *d, ReshapeKind kind, size_t pos, OpError *err) {
        _cleanup_json_ json_object *args = json_object_new_object();
        char top[EXPORT_NODE_NAME_MAX], node[EXPORT_NODE_NAME_MAX], base[EXPORT_NODE_NAME_MAX];
        const Layer *b = pos == SIZE_MAX ? NULL : store_find_layer(s, d->chain[kind == RESHAPE_COMMIT ? pos + 1 : pos]);
        uint64_t speed = test_hook_step_bytes(0);
        int r;

        export_node_name(top, 'L', d->chain[0]);
        r = put_string(args, "job-id", LIVE_JOB_ID);
        if (r >= 0)
                r = put_string(args, "device", top);
        if (r >= 0)
                r = put(args, "auto-dismiss", json_object_new_boolean(false));
        if (r >= 0 && speed > 0) /* test builds: slow enough to be watched, cancelled or killed midway */
                r = put(args, "speed", json_object_new_int64((int64_t) speed));
        if (r >= 0 && b) {
                export_node_name(base, 'L', b->id);
                r = put_string(args, "base-node", base);
        }
        /* The name QEMU writes into the header of the layer above the dropped ones, as vdisk writes it. */
        if (r >= 0 && b && (kind != RESHAPE_COMMIT || pos > 0))
                r = put_string(args, "backing-file", b->file);
        if (r >= 0 && kind == RESHAPE_COMMIT) {
                export_node_name(node, 'L', d->chain[pos]);
                r = put_string(args, "top-node", node);
        }
        if (r < 0)
                return op_error(err, r, "out of memory");
        return export_qmp(e, kind == RESHAPE_COMMIT ? "block-commit" : "block-stream", args, -EBADF, NULL, err);
}

/* long because: the checks of both operations, then the steps of handing the job over, in order. */
int live_job_begin(Store *s, const LeaseRegistry *leases, Lease *l, ReshapeKind kind, const char *layer, LiveJob **ret,
                   OpError *err) {
        Export *e = l->export;
        size_t pos;
        LiveJob *j;
        Disk *d;
        int r;

        if (kind == RESHAPE_UNSAFE_REBASE)
                return op_error(err, -EOPNOTSUPP,
                                "an unsafe rebase rewrites a header the storage helper has open; a live rebase can only drop layers of the chain");
        /* A snapshot or a job left over from before comes first. */
        r = export_reconcile(e, s, err);
        if (r < 0)
                return r;
        r = op_find_disk(s, l->vm, l->disk, NULL, &d, err);
        if (r < 0)
                return r;
        if (d->quarantine)
                return op_error(err, -EBADMSG, "disk '%s' of VM '%s' is quarantined: %s", l->disk, l->vm, d->quarantine);
        for (size_t i = 0; i < d->n_chain; i++) {
                Layer *x = store_find_layer(s, d->chain[i]);
                if (!x)
                        return op_error(err, -EBADMSG, "the record of layer %s of disk '%s' is missing", d->chain[i], l->disk);
                if (x->state != LAYER_READY)
                        return op_error(err, -EBUSY, "layer %s is being changed by another operation", x->id);
        }
        pos = chain_index(d, isempty(layer) ? NULL : layer);
        r = kind == RESHAPE_COMMIT ? check_commit(s, d, pos, layer, err) : check_rebase(s, d, pos, layer, err);
        if (r < 0)
                return r;

        /* QEMU writes into the base of a commit, and into the header of the layer above the committed one. */
        if (kind == RESHAPE_COMMIT)
                r = add_rw_fd(e, s, store_find_layer(s, d->chain[pos + 1]), err);
        if (r >= 0 && kind == RESHAPE_COMMIT && pos > 1)
                r = add_rw_fd(e, s, store_find_layer(s, d->chain[pos - 1]), err);
        if (r < 0) {
                release_rw_fds(e);
                return r;
        }

        j = calloc(1, sizeof(LiveJob));
        if (!j)
                return op_error(err, -ENOMEM, "out of memory");
        *j = (LiveJob) { .store = s, .leases = leases, .vm = strdup(l->vm), .disk = strdup(l->disk),
                         .active = kind == RESHAPE_COMMIT && pos == 0 };
        snprintf(j->op, sizeof(j->op), "%s", kind == RESHAPE_COMMIT ? "commit" : isempty(layer) ? "flatten" : "rebase");
        memcpy(j->lease, l->id, sizeof(j->lease));
        e->job_op = strdup(j->op);
        snprintf(e->job_layer, sizeof(e->job_layer), "%s", layer ?: "");
        if (!j->vm || !j->disk || !e->job_op) {
                e->job_op = mfree_str(e->job_op);
                release_rw_fds(e);
                live_job_free(j);
                return op_error(err, -ENOMEM, "out of memory");
        }
        /* Recorded before the helper starts: a vdiskd killed from here on settles it at its next start. */
        r = export_save_state(e);
        if (r < 0)
                op_error(err, r, "Cannot record the export's job");
        else
                r = start_helper_job(e, s, d, kind, pos, err);
        if (r < 0) {
                e->job_op = mfree_str(e->job_op);
                (void) export_save_state(e);
                release_rw_fds(e);
                live_job_free(j);
                return r;
        }
        log_op(LOG_INFO, j->op, l->vm, l->disk, layer, "Live %s of disk '%s' of VM '%s' started in its storage helper", j->op,
               l->disk, l->vm);
        *ret = j;
        return 0;
}
