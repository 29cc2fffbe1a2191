/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-lease.h"
#include "lease.h"
#include "live.h"
#include "log.h"

/* Disk leases are persistent (SANLK_RES_PERSISTENT), all of them: a lease object's (a read-write or
 * read-only OpenDisk, an export) must outlive a vdiskd that dies or stops while the VM goes on using the
 * disk, and sanlock wants every shared holder of a resource alike (a Snapshot shares the disk's lease
 * with read-only holders). An operation's disk lease left by a vdiskd that died is released when the
 * next vdiskd of this host joins (cluster_leases_adopt_when_joined). Catalog and VM record leases are
 * never held beyond a call or a job, and go with vdiskd's connection. */
static bool persistent_name(const char *name) {
        return strncmp(name, "disk:", 5) == 0;
}

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

        r = cluster_acquire(l->cluster, name, exclusive, persistent_name(name), &owner);
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
        v = store_find_vm(s, vm);
        if (v && l->owner != (uid_t) -1 && v->owner_uid != l->owner)
                return op_error(err, -EACCES, "Access to VM '%s' denied", vm);
        return 0;
}

static void disk_lease_name(char name[static CLUSTER_NAME_MAX + 1], const char *vm, const char *disk) {
        snprintf(name, CLUSTER_NAME_MAX + 1, "disk:%s/%s", vm, disk);
}

int cluster_leases_disk(ClusterLeases *l, const char *vm, const char *disk, bool exclusive, OpError *err) {
        char name[CLUSTER_NAME_MAX + 1], what[160];
        int r;

        if (!l->cluster)
                return 0;
        disk_lease_name(name, vm, disk);
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

ClusterLeases *cluster_leases_forget(ClusterLeases *l) {
        if (!l)
                return NULL;
        for (size_t i = 0; i < l->n_held; i++)
                free(l->held[i].name);
        free(l->held);
        free(l);
        return NULL;
}

/* One process, one cluster: what the joined handler works on. */
static struct {
        Store *store;
        LeaseRegistry *leases;
} adoption;

/* The disk lease of one lease found again after a restart: the orphan the previous vdiskd left, or, if
 * there is none (this host's sanlock daemon restarted meanwhile), a fresh one if nobody took it since.
 * 0, or -errno with the reason in `why`. */
static int adopt_one(Cluster *c, Lease *l, char *why, size_t why_size) {
        _cleanup_free_ ClusterLeases *n = NULL;
        char name[CLUSTER_NAME_MAX + 1];
        uint64_t owner = 0;
        int r;

        disk_lease_name(name, l->vm, l->disk);
        n = malloc(sizeof(ClusterLeases));
        if (!n)
                return -ENOMEM;
        *n = CLUSTER_LEASES_INIT(c);
        n->held = malloc(sizeof(struct ClusterHeld));
        if (!n->held || !(n->held[0].name = strdup(name))) {
                free(n->held);
                return -ENOMEM;
        }
        n->held[0].exclusive = !l->read_only;

        r = cluster_adopt(c, name, !l->read_only);
        if (r == -ENOENT) {
                log_warning("Lease %s: no orphan cluster lease of disk '%s' of VM '%s' to adopt (sanlock restarted?); "
                            "taking it again", l->id, l->disk, l->vm);
                r = cluster_acquire(c, name, !l->read_only, true, &owner);
        }
        if (r < 0) {
                free(n->held[0].name);
                free(n->held);
                if (r == -EBUSY && owner > 0)
                        snprintf(why, why_size, "its cluster lease was lost and cluster host %" PRIu64 " holds the disk now", owner);
                else
                        snprintf(why, why_size, "its cluster lease cannot be adopted again (%s)", strerror(-r));
                return r;
        }
        n->n_held = 1;
        l->cluster = TAKE_PTR(n);
        log_info("Lease %s: cluster lease of disk '%s' of VM '%s' adopted again (%s)", l->id, l->disk, l->vm,
                 l->read_only ? "shared" : "exclusive");
        return 0;
}

static void on_joined(Cluster *c, void *userdata) {
        LeaseRegistry *reg = adoption.leases;

        for (size_t i = 0; reg && i < reg->n_leases;) {
                Lease *l = reg->leases[i];
                char why[256];

                if (!l->cluster && adopt_one(c, l, why, sizeof(why)) < 0) {
                        /* Another host may write the disk now: this one's holder must stop (an export's helper
                         * is stopped; the header check follows as at every end). */
                        log_error("Lease %s of disk '%s' of VM '%s': %s; the lease ends", l->id, l->disk, l->vm, why);
                        lease_end(adoption.store, reg, l, why); /* removes it from the array */
                        continue;
                }
                i++;
        }
        /* What no lease found again names: leases of holders that left while vdiskd was away, operations
         * a dead vdiskd did not finish. */
        cluster_release_orphans(c);
}

void cluster_leases_adopt_when_joined(Cluster *c, Store *s, LeaseRegistry *leases) {
        if (!c)
                return;
        adoption.store = s;
        adoption.leases = leases;
        cluster_set_joined_handler(c, on_joined, NULL);
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
