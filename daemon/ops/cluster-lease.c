/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluster-lease.h"
#include "lease.h"
#include "live.h"
#include "recovery.h"
#include "log.h"
#include "vdisk-bus.h"

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
        if (r == -ENOLINK) {
                free(copy);
                return op_error(err, -EHOSTDOWN, "This host's lease on the cluster lockspace has not been renewed in time "
                                "(its storage is slow or unreachable): retry later");
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
        if (!l)
                return NULL;
        cluster_leases_release(l);
        /* After the release: a vdiskd that dies in between finds the lease again, and its orphan. */
        if (l->record && unlink(l->record) < 0 && errno != ENOENT)
                log_warning("Cannot remove %s: %m", l->record);
        free(l->record);
        free(l);
        return NULL;
}

ClusterLeases *cluster_leases_forget(ClusterLeases *l) {
        if (!l)
                return NULL;
        for (size_t i = 0; i < l->n_held; i++)
                free(l->held[i].name);
        free(l->held);
        free(l->record);
        free(l);
        return NULL;
}

#define LEASE_RECORDS "cluster-leases"
#define LEASE_RECORD_MAX 4096

static int records_dir(const char *runtime_dir, bool create, char **ret) {
        if (asprintf(ret, "%s/" LEASE_RECORDS, runtime_dir) < 0)
                return -ENOMEM;
        if (create && ((mkdir(runtime_dir, 0700) < 0 && errno != EEXIST) || (mkdir(*ret, 0700) < 0 && errno != EEXIST))) {
                int r = negative_errno();
                free(*ret);
                *ret = NULL;
                return r;
        }
        return 0;
}

int cluster_leases_record(const char *runtime_dir, Lease *l, OpError *err) {
        _cleanup_free_ char *dir = NULL, *path = NULL, *tmp = NULL;
        _cleanup_close_ int fd = -EBADF;
        json_object *o;
        const char *text;
        int r;

        if (!l->cluster || l->export)
                return 0;
        r = records_dir(runtime_dir, true, &dir);
        if (r < 0)
                return op_error(err, r, "Cannot create %s/" LEASE_RECORDS ": %s", runtime_dir, strerror(-r));
        if (asprintf(&path, "%s/%s.json", dir, l->id) < 0 || asprintf(&tmp, "%s/.#%s.json", dir, l->id) < 0)
                return op_error(err, -ENOMEM, "Out of memory");
        o = json_object_new_object();
        if (!o || json_object_object_add(o, "version", json_object_new_int(1)) < 0 ||
            json_object_object_add(o, "vm", json_object_new_string(l->vm)) < 0 ||
            json_object_object_add(o, "disk", json_object_new_string(l->disk)) < 0 ||
            json_object_object_add(o, "read-only", json_object_new_boolean(l->read_only)) < 0 ||
            json_object_object_add(o, "holder", json_object_new_string(l->holder)) < 0 ||
            json_object_object_add(o, "holder-uid", json_object_new_int64(l->holder_uid)) < 0 ||
            json_object_object_add(o, "holder-pid", json_object_new_int64(l->holder_pid)) < 0 ||
            json_object_object_add(o, "incoming", json_object_new_boolean(l->cluster->incoming)) < 0) {
                json_object_put(o);
                return op_error(err, -ENOMEM, "Out of memory");
        }
        text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
        fd = text ? open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600) : -ENOMEM;
        r = fd < 0 ? (text ? negative_errno() : -ENOMEM) : 0;
        if (r >= 0 && write(fd, text, strlen(text)) != (ssize_t) strlen(text))
                r = -EIO;
        if (r >= 0 && rename(tmp, path) < 0)
                r = negative_errno();
        json_object_put(o);
        if (r < 0) {
                (void) unlink(tmp);
                return op_error(err, r, "Cannot write the lease's record %s: %s", path, strerror(-r));
        }
        free(l->cluster->record);
        l->cluster->record = TAKE_PTR(path);
        return 0;
}

static const char *json_string(json_object *o, const char *key) {
        json_object *v;
        return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static bool json_int(json_object *o, const char *key, int64_t min, int64_t max, int64_t *ret) {
        json_object *v;
        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return false;
        *ret = json_object_get_int64(v);
        return *ret >= min && *ret <= max;
}

/* One record: a lease (no fds, no disk lease yet) with `path` as its record. */
static int lease_from_record(Cluster *c, const char *path, const char *id, Lease **ret) {
        _cleanup_free_ char *text = NULL;
        _cleanup_close_ int fd = -EBADF;
        json_object *o, *ro, *incoming;
        const char *vm, *disk, *holder;
        int64_t version, uid, pid;
        ssize_t n;
        Lease *l;
        int r = 0;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return negative_errno();
        text = malloc(LEASE_RECORD_MAX + 1);
        if (!text)
                return -ENOMEM;
        n = read(fd, text, LEASE_RECORD_MAX + 1);
        if (n < 0 || n > LEASE_RECORD_MAX)
                return n < 0 ? negative_errno() : -EFBIG;
        text[n] = 0;
        o = json_tokener_parse(text);
        vm = o ? json_string(o, "vm") : NULL;
        disk = o ? json_string(o, "disk") : NULL;
        holder = o ? json_string(o, "holder") : NULL;
        if (!o || !json_int(o, "version", 1, 1, &version) || !vm || !disk || !holder ||
            !json_int(o, "holder-uid", 0, UINT32_MAX - 1, &uid) || !json_int(o, "holder-pid", 0, INT32_MAX, &pid) ||
            !json_object_object_get_ex(o, "read-only", &ro) || !json_object_is_type(ro, json_type_boolean)) {
                json_object_put(o);
                return -EBADMSG;
        }
        l = calloc(1, sizeof(Lease));
        if (l) {
                *l = (Lease) { .vm = strdup(vm), .disk = strdup(disk), .holder = strdup(holder),
                               .read_only = json_object_get_boolean(ro), .holder_uid = (uid_t) uid, .holder_pid = (pid_t) pid,
                               .cluster = calloc(1, sizeof(ClusterLeases)) };
                snprintf(l->id, sizeof(l->id), "%s", id);
                if (l->cluster)
                        *l->cluster = (ClusterLeases) { .cluster = c, .owner = (uid_t) -1, .record = strdup(path),
                                                        .incoming = json_object_object_get_ex(o, "incoming", &incoming) &&
                                                                    json_object_get_boolean(incoming) };
                if (!l->vm || !l->disk || !l->holder || !l->cluster || !l->cluster->record)
                        r = -ENOMEM;
        } else
                r = -ENOMEM;
        json_object_put(o);
        if (r < 0) {
                lease_free(l);
                return r;
        }
        *ret = l;
        return 0;
}

int cluster_leases_recover(Cluster *c, Store *s, const char *runtime_dir, LeaseRegistry *leases) {
        _cleanup_free_ char *dir = NULL;
        struct dirent *de;
        DIR *d;
        int r;

        if (!c)
                return 0;
        r = records_dir(runtime_dir, false, &dir);
        if (r < 0)
                return r;
        d = opendir(dir);
        if (!d)
                return errno == ENOENT ? 0 : log_error_errno(errno, "Failed to read %s", dir);
        while ((de = readdir(d))) {
                _cleanup_free_ char *path = NULL;
                char id[LAYER_ID_LEN + 1];
                size_t len = strlen(de->d_name);
                Lease *l = NULL;

                if (de->d_name[0] == '.') {
                        if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                                (void) unlinkat(dirfd(d), de->d_name, 0); /* a record never renamed into place */
                        continue;
                }
                if (asprintf(&path, "%s/%s", dir, de->d_name) < 0) {
                        closedir(d);
                        return -ENOMEM;
                }
                r = -EBADMSG;
                if (len == LAYER_ID_LEN + 5 && streq(de->d_name + LAYER_ID_LEN, ".json")) {
                        memcpy(id, de->d_name, LAYER_ID_LEN);
                        id[LAYER_ID_LEN] = 0;
                        if (layer_id_is_valid(id) && !lease_registry_find(leases, id))
                                r = lease_from_record(c, path, id, &l);
                }
                if (r >= 0 && !store_find_vm(s, l->vm))
                        r = -ENOENT;
                if (r >= 0)
                        r = lease_registry_add(leases, l);
                if (r < 0) {
                        log_warning("Lease record %s: %s; removed", path,
                                    r == -ENOENT ? "its VM is gone" : r == -EBADMSG ? "not a lease record" : strerror(-r));
                        lease_free(l);
                        (void) unlink(path);
                        continue;
                }
                log_info("Lease " VDISK_LEASE_PREFIX "/%s of disk '%s' of VM '%s' (fds held by pid %d) found again", l->id,
                         l->disk, l->vm, (int) l->holder_pid);
        }
        closedir(d);
        return 0;
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
        _cleanup_free_ ClusterLeases *fresh = NULL;
        ClusterLeases *n = l->cluster;
        char name[CLUSTER_NAME_MAX + 1];
        uint64_t owner = 0;
        int r;

        disk_lease_name(name, l->vm, l->disk);
        if (!n) {
                n = fresh = malloc(sizeof(ClusterLeases));
                if (!n)
                        return -ENOMEM;
                *n = CLUSTER_LEASES_INIT(c);
        }
        n->held = malloc(sizeof(struct ClusterHeld));
        if (!n->held || !(n->held[0].name = strdup(name))) {
                free(n->held);
                n->held = NULL;
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
                n->held = NULL;
                if (r == -EBUSY && owner > 0)
                        snprintf(why, why_size, "its cluster lease was lost and cluster host %" PRIu64 " holds the disk now", owner);
                else
                        snprintf(why, why_size, "its cluster lease cannot be adopted again (%s)", strerror(-r));
                return r;
        }
        n->n_held = 1;
        if (fresh)
                l->cluster = TAKE_PTR(fresh);
        log_info("Lease %s: cluster lease of disk '%s' of VM '%s' adopted again (%s)", l->id, l->disk, l->vm,
                 l->read_only ? "shared" : "exclusive");
        return 0;
}

static void on_joined(Cluster *c, void *userdata) {
        LeaseRegistry *reg = adoption.leases;

        for (size_t i = 0; reg && i < reg->n_leases;) {
                Lease *l = reg->leases[i];
                char why[256];

                /* An incoming lease has no disk lease to adopt: it takes one at the switch-over. */
                if ((!l->cluster || (l->cluster->n_held == 0 && !l->cluster->incoming)) &&
                    adopt_one(c, l, why, sizeof(why)) < 0) {
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

int cluster_leases_take_over(const char *runtime_dir, Lease *l, uint64_t version, OpError *err) {
        ClusterLeases *cl = l->cluster;
        struct ClusterHeld *h;
        char name[CLUSTER_NAME_MAX + 1];
        uint64_t owner = 0;
        char *copy;
        int r;

        if (!cl || !cl->incoming)
                return op_error(err, -EINVAL, "Lease %s was not opened for an incoming VM (OpenDisk's 'incoming')", l->id);
        if (version == 0)
                return op_error(err, -EINVAL, "The lease version must be the source's Lease.LeaseVersion (not 0)");
        disk_lease_name(name, l->vm, l->disk);
        copy = strdup(name);
        h = copy ? reallocarray(cl->held, cl->n_held + 1, sizeof(*h)) : NULL;
        if (!h) {
                free(copy);
                return op_error(err, -ENOMEM, "Out of memory");
        }
        cl->held = h;
        r = cluster_acquire_version(cl->cluster, name, version, &owner);
        if (r < 0)
                free(copy);
        if (r == -EHOSTDOWN)
                return op_error(err, r, "This host (cluster host %" PRIu64 ") has not joined the lockspace yet; retry in a "
                                "few seconds", cluster_host_id(cl->cluster));
        if (r == -ENOLINK)
                return op_error(err, -EHOSTDOWN, "This host's lease on the cluster lockspace has not been renewed in time "
                                "(its storage is slow or unreachable): retry later");
        if (r == -ESTALE)
                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' changed hands after lease version %" PRIu64
                                " (another host took it since the source released it): the hand-over fails", l->disk, l->vm,
                                version);
        if (r == -EBUSY && owner > 0)
                return op_error(err, r, "Disk '%s' of VM '%s' is in use by cluster host %" PRIu64 " (has the source released it?)",
                                l->disk, l->vm, owner);
        if (r == -EBUSY)
                return op_error(err, r, "Disk '%s' of VM '%s' is in use", l->disk, l->vm);
        if (r < 0)
                return op_error(err, r == -EIO ? -EIO : r, "Cannot take the cluster lease of disk '%s' of VM '%s' (sanlock failed)",
                                l->disk, l->vm);
        cl->held[cl->n_held++] = (struct ClusterHeld) { .name = copy, .exclusive = true };
        cl->incoming = false;
        log_info("Lease %s: disk '%s' of VM '%s' taken over at lease version %" PRIu64, l->id, l->disk, l->vm, version);
        /* A restart from now on adopts it; if the record cannot say so, the lease still holds it now. */
        r = cluster_leases_record(runtime_dir, l, err);
        if (r < 0)
                log_warning("Lease %s: %s", l->id, err->reason);
        return 0;
}

int cluster_leases_version(ClusterLeases *l, uint64_t *ret) {
        *ret = 0;
        for (size_t i = 0; l && i < l->n_held; i++)
                if (persistent_name(l->held[i].name))
                        return cluster_version(l->cluster, l->held[i].name, ret);
        return 0;
}
