/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-lease.h"
#include "live.h"
#include "recovery.h"
#include "log.h"

static int take(ClusterLeases *l, const char *name, bool exclusive, const char *what, OpError *err) {
        struct ClusterHeld *h;
        uint64_t owner = 0;
        char *copy;
        int r;

        copy = strdup(name);
        if (!copy)
                return op_error(err, -ENOMEM, "Out of memory");
        h = reallocarray(l->held, l->n_held + 1, sizeof(*h));
        if (!h) {
                free(copy);
                return op_error(err, -ENOMEM, "Out of memory");
        }
        l->held = h;

        r = cluster_acquire(l->cluster, name, exclusive, &owner);
        if (r == -EHOSTDOWN) {
                free(copy);
                return op_error(err, r, "This host (cluster host %" PRIu64 ") has not joined the lockspace yet; retry in a "
                                "few seconds", cluster_host_id(l->cluster));
        }
        if (r == -EBUSY) {
                free(copy);
                if (owner > 0)
                        return op_error(err, r, "%s is in use by cluster host %" PRIu64, what, owner);
                return op_error(err, r, "%s is in use by another cluster host", what);
        }
        if (r < 0) {
                free(copy);
                return op_error(err, r == -EIO ? -EIO : r, "Cannot take the cluster lease of %s (sanlock failed)", what);
        }
        l->held[l->n_held++] = (struct ClusterHeld) { .name = copy, .exclusive = exclusive };
        return r;
}

/* Just acquired exclusively from outside this vdiskd: no operation of ours holds `lease`, so a journal
 * entry naming it was left by a host that died (or by this vdiskd before a restart). It is rolled back
 * or forward now, before anything reads the records it may have left half-done; then the records are
 * read again (`vm`; NULL: the catalog). */
static int recover_under(Store *s, const char *lease, const char *vm, const char *what, OpError *err) {
        size_t n = 0;
        int r;

        r = store_recover_lease(s, lease, &n);
        if (r < 0)
                return op_error(err, r == -ENOMEM ? r : -EBADMSG,
                                "%s has an interrupted operation of a host that stopped, which cannot be recovered: see the log", what);
        if (n == 0)
                return 0;
        log_notice("Recovered %zu interrupted operation(s) under cluster lease %s", n, lease);
        r = vm ? store_reload_vm(s, vm) : store_reload_catalog(s);
        if (r < 0)
                return op_error(err, r == -ENOMEM ? r : -EBADMSG, "The records of %s cannot be read again", what);
        return 0;
}

int cluster_leases_catalog(ClusterLeases *l, Store *s, bool exclusive, OpError *err) {
        int r;

        if (!l->cluster)
                return 0;
        r = take(l, "catalog", exclusive, "The image catalog", err);
        if (r <= 0)
                return r;
        r = store_reload_catalog(s);
        if (r < 0)
                return op_error(err, r == -ENOMEM ? r : -EBADMSG, "The catalog's records cannot be read again");
        if (exclusive)
                return recover_under(s, "catalog", NULL, "The image catalog", err);
        return 0;
}

int cluster_leases_vm(ClusterLeases *l, Store *s, const char *vm, bool exclusive, OpError *err) {
        char name[CLUSTER_NAME_MAX + 1], what[128];
        const Vm *v;
        int r;

        if (!l->cluster)
                return 0;
        snprintf(name, sizeof(name), "vm:%s", vm);
        snprintf(what, sizeof(what), "VM '%s'", vm);
        r = take(l, name, exclusive, what, err);
        if (r <= 0)
                return r;
        /* Acquired from another host: the records are read again; while this host held the lease nobody
         * else could change them, and only then may a running operation of ours point into them. */
        r = store_reload_vm(s, vm);
        if (r < 0)
                return op_error(err, r == -ENOMEM ? r : -EBADMSG, "The records of VM '%s' cannot be read again", vm);
        if (exclusive) {
                r = recover_under(s, name, vm, what, err);
                if (r < 0)
                        return r;
        }
        v = store_find_vm(s, vm);
        if (v && l->owner != (uid_t) -1 && v->owner_uid != l->owner)
                return op_error(err, -EACCES, "Access to VM '%s' denied", vm);
        return 0;
}

int cluster_leases_disk(ClusterLeases *l, const char *vm, const char *disk, bool exclusive, OpError *err) {
        char name[CLUSTER_NAME_MAX + 1], what[160];
        int r;

        if (!l->cluster)
                return 0;
        snprintf(name, sizeof(name), "disk:%s/%s", vm, disk);
        snprintf(what, sizeof(what), "Disk '%s' of VM '%s'", disk, vm);
        r = take(l, name, exclusive, what, err);
        return r < 0 ? r : 0;
}

int cluster_leases_vm_disks(ClusterLeases *l, Store *s, const char *vm, OpError *err) {
        Vm *v;

        if (!l->cluster)
                return 0;
        v = store_find_vm(s, vm);
        for (size_t i = 0; v && i < v->n_disks; i++) {
                int r = cluster_leases_disk(l, vm, v->disks[i].name, true, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

void cluster_leases_release(ClusterLeases *l) {
        if (!l)
                return;
        while (l->n_held > 0) {
                struct ClusterHeld *h = &l->held[--l->n_held];
                cluster_release(l->cluster, h->name, h->exclusive);
                free(h->name);
        }
        free(l->held);
        l->held = NULL;
}

int cluster_leases_move(ClusterLeases *l, ClusterLeases **ret) {
        ClusterLeases *n = malloc(sizeof(ClusterLeases));

        if (!n)
                return -ENOMEM;
        *n = *l;
        *l = (ClusterLeases) { .cluster = n->cluster, .owner = n->owner };
        *ret = n;
        return 0;
}

ClusterLeases *cluster_leases_free(ClusterLeases *l) {
        cluster_leases_release(l);
        free(l);
        return NULL;
}

struct LeasedJob {
        const JobOps *inner;
        void *op;
        ClusterLeases leases;
};

static int leased_step(void *op, OpError *err) {
        LeasedJob *j = op;
        return j->inner->step(j->op, err);
}

static void leased_abort(void *op) {
        LeasedJob *j = op;
        if (j->inner->abort)
                j->inner->abort(j->op);
}

/* Called when the job ends, after the operation's own clean-up: the leases go last. */
static void *leased_free(void *op) {
        LeasedJob *j = op;

        if (j->inner->free)
                j->inner->free(j->op);
        cluster_leases_release(&j->leases);
        free(j);
        return NULL;
}

static uint64_t leased_done(const void *op) {
        const LeasedJob *j = op;
        return j->inner->bytes_done(j->op);
}

static uint64_t leased_total(const void *op) {
        const LeasedJob *j = op;
        return j->inner->bytes_total(j->op);
}

static const JobOps leased_job_ops[2] = {
        { .step = leased_step, .abort = leased_abort, .free = leased_free, .bytes_done = leased_done, .bytes_total = leased_total },
        { .step = leased_step, .abort = leased_abort, .free = leased_free, .bytes_done = leased_done, .bytes_total = leased_total,
          .wait_usec = LIVE_JOB_POLL_USEC },
};

int leased_job_new(const JobOps *inner, void *op, ClusterLeases *leases, LeasedJob **ret, const JobOps **ret_ops) {
        LeasedJob *j;

        if (inner->wait_usec != 0 && inner->wait_usec != LIVE_JOB_POLL_USEC)
                return -EINVAL;
        j = malloc(sizeof(LeasedJob));
        if (!j)
                return -ENOMEM;
        *j = (LeasedJob) { .inner = inner, .op = op, .leases = *leases };
        *leases = (ClusterLeases) { .cluster = j->leases.cluster, .owner = j->leases.owner };
        *ret = j;
        *ret_ops = &leased_job_ops[inner->wait_usec != 0];
        return 0;
}
