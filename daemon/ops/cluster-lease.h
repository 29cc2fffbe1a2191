/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The cluster leases of one operation (docs/design.md, "Cluster mode"): what it takes, in which mode,
 * and the re-reading of the records a lease protects when it was just acquired from another host.
 *
 *   "catalog"       the catalog: exclusive for CreateImage, ImportImage (the whole job), DeleteImage;
 *                   shared for CreateDisk from an image (the image cannot go meanwhile)
 *   "vm:NAME"       the VM record and its private layers' records: exclusive around every
 *                   read-modify-write (the whole operation, a job's whole life), shared for a consistent
 *                   read (OpenDisk, GetChain, ListDisks, Verify, GetDomainXML)
 *   "disk:VM/DISK"  the disk's chain in use: exclusive for a read-write OpenDisk (its life), Rebase,
 *                   Commit, flatten, DeleteDisk; shared for a read-only OpenDisk and Snapshot (a
 *                   snapshot only adds a layer above: readers elsewhere keep theirs, as on one host)
 *
 * With `cluster` NULL (Mode=local) every call succeeds and does nothing. A conflict is -EBUSY naming the
 * other host; a host that has not joined the lockspace yet gets -EHOSTDOWN (NotJoined).
 */

#include <stdbool.h>
#include <sys/types.h>

#include "cluster.h"
#include "job.h"
#include "ops.h"

typedef struct ClusterLeases {
        Cluster *cluster;
        /* Whose call this is: a VM record read again must still name this owner (a non-admin caller was
         * authorized against this host's copy, which may have been stale); (uid_t) -1: anyone. */
        uid_t owner;
        struct ClusterHeld {
                char *name;
                bool exclusive;
        } *held;
        size_t n_held;
        /* A lease object's fd-mode disk lease: its record under the runtime directory, so that a
         * restarted vdiskd finds the lease again (cluster_leases_record); removed when the lease ends. */
        char *record;
        /* Migration: a read-write lease opened for an incoming VM, its disk lease not taken yet
         * (cluster_leases_take_over at the switch-over). */
        bool incoming;
} ClusterLeases;

#define CLUSTER_LEASES_INIT(c) ((ClusterLeases) { .cluster = (c), .owner = (uid_t) -1 })
/* For a call by `caller` (a Caller *): administrators may use any VM, others only their own. */
#define CLUSTER_LEASES_FOR(c, caller) \
        ((ClusterLeases) { .cluster = (c), .owner = (caller)->admin ? (uid_t) -1 : (caller)->uid })

/* The catalog; freshly acquired, the catalog images are read again (store_reload_catalog). */
int cluster_leases_catalog(ClusterLeases *l, Store *s, bool exclusive, OpError *err);
/* VM `vm`'s record; freshly acquired, it is read again with its layers (store_reload_vm), and a VM that
 * exists must then belong to `l->owner` (else -EACCES, "Access to VM … denied", as bus/auth.c says). */
int cluster_leases_vm(ClusterLeases *l, Store *s, const char *vm, bool exclusive, OpError *err);
/* Disk `disk` of VM `vm`. */
int cluster_leases_disk(ClusterLeases *l, const char *vm, const char *disk, bool exclusive, OpError *err);
/* Every disk of VM `vm` as its record says now, exclusively (DeleteVM, after cluster_leases_vm()). */
int cluster_leases_vm_disks(ClusterLeases *l, Store *s, const char *vm, OpError *err);
/* Releases everything held, last first. */
void cluster_leases_release(ClusterLeases *l);
/* Frees `l` without releasing anything: vdiskd stops, the lease objects it forgets go on (exports, fds
 * handed out), and their persistent disk leases become orphans of this host when its connection closes. */
ClusterLeases *cluster_leases_forget(ClusterLeases *l);
/* After a restart: once the lockspace is joined, every lease of `leases` found again (exports) takes its
 * disk's lease back from the orphans the previous vdiskd left (cluster_adopt); a lease whose cluster lease
 * is lost to another host ends. Then every other orphan of this host is released (holders gone while
 * vdiskd was away, operations it did not finish). Nothing with `c` NULL. */
struct Lease;
struct LeaseRegistry;
void cluster_leases_adopt_when_joined(Cluster *c, Store *s, struct LeaseRegistry *leases);
/* A lease whose fds are handed out (no export: an export has its own state.json) is written down as
 * <runtime_dir>/cluster-leases/<id>.json (VM, disk, mode, holder), so that a restarted vdiskd finds it
 * again (cluster_leases_recover), adopts its disk lease and ends it when its holder goes; the record goes
 * when the lease ends (cluster_leases_free). Nothing in local mode (`l->cluster` NULL). */
int cluster_leases_record(const char *runtime_dir, struct Lease *l, OpError *err);
/* At a start, before the holders are checked: the leases of the records a previous vdiskd left, without
 * their fds (those not fetched then are gone with it) and without their disk lease until the lockspace
 * is joined (cluster_leases_adopt_when_joined). A record that cannot be read, or of a VM that is gone,
 * is removed (its orphan, if any, is released once joined). Nothing with `c` NULL. */
int cluster_leases_recover(Cluster *c, Store *s, const char *runtime_dir, struct LeaseRegistry *leases);
/* Migration, the destination: lease `l` (opened with OpenDisk's "incoming", `l->cluster->incoming`) takes
 * its disk lease exclusively with the version the source held (Lease.LeaseVersion there), so that a host
 * that took the disk after the source released it makes the hand-over fail: -EBUSY (InUse) naming it, or
 * saying that the disk changed hands. -EINVAL if `l` is not incoming. Its record is written again. */
int cluster_leases_take_over(const char *runtime_dir, struct Lease *l, uint64_t version, OpError *err);
/* The version of the disk lease `l` holds (0 if none: local mode, an incoming lease). */
int cluster_leases_version(ClusterLeases *l, uint64_t *ret);
/* Moves the leases into a new ClusterLeases (for a lease object or a job); `l` holds nothing after. */
int cluster_leases_move(ClusterLeases *l, ClusterLeases **ret);
ClusterLeases *cluster_leases_free(ClusterLeases *l);

/* A job that holds cluster leases for its operation's life: its steps and end are `inner`'s, and the
 * leases go when the operation ends (done, failed, cancelled) or is freed. `leases` is moved into it. */
typedef struct LeasedJob LeasedJob;
int leased_job_new(const JobOps *inner, void *op, ClusterLeases *leases, LeasedJob **ret, const JobOps **ret_ops);
