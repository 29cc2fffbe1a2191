/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Cluster mode: hosts that share one store coordinate through sanlock (docs/design.md, "Cluster mode").
 * This layer wraps libsanlock and knows nothing of the store, images or D-Bus: it joins the lockspace
 * (delta leases: host liveness), and acquires and releases named resource leases (Disk Paxos) on one
 * registered sanlock connection. Resource names are chosen by ops/ ("catalog", "vm:NAME",
 * "disk:VM/DISK"); their offsets in the lease area come from sanlock's resource index at offset 0 of
 * the area (sanlock_create_resource / sanlock_lookup_rindex), so every host finds the same offset.
 *
 * Local users are counted: a resource is acquired from sanlock once per host and released when its last
 * local user releases it; exclusion between users of one host is the business of ops/ (leases, jobs)
 * as in local mode. Calls never wait for another host: an acquire that conflicts fails at once with
 * -EBUSY (SANLK_ACQUIRE_OWNER_NOWAIT also for a holder whose lease must first time out).
 */

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

typedef enum ClusterMode {
        CLUSTER_MODE_LOCAL,
        CLUSTER_MODE_SANLOCK,
        _CLUSTER_MODE_MAX,
        _CLUSTER_MODE_INVALID = -EINVAL,
} ClusterMode;

const char *cluster_mode_to_string(ClusterMode m);
ClusterMode cluster_mode_from_string(const char *s);

#define CLUSTER_DEFAULT_IO_TIMEOUT 10U
#define CLUSTER_MAX_HOST_ID 2000U /* sanlock's limit with 512-byte sectors and 1 MiB alignment */
#define CLUSTER_JOIN_POLL_USEC (200 * UINT64_C(1000))

/* vdiskd.conf [Cluster]. */
typedef struct ClusterSettings {
        ClusterMode mode;
        uint64_t host_id;   /* HostId=: 1..CLUSTER_MAX_HOST_ID, unique per host */
        char *lockspace;    /* Lockspace=NAME:PATH: the delta leases, at offset 0 of PATH */
        char *leases;       /* Leases=PATH: sanlock's resource index at offset 0, the resource leases after it */
        uint32_t io_timeout; /* IoTimeout=: seconds, sanlock's io_timeout of the lockspace */
} ClusterSettings;

void cluster_settings_init_default(ClusterSettings *s);
void cluster_settings_done(ClusterSettings *s);
/* Whether settings for Mode=sanlock are complete and valid: 0, or -EINVAL with the reason (static text). */
int cluster_settings_check(const ClusterSettings *s, const char **ret_why);

/* Whether this vdiskd was built with libsanlock (-Dsanlock). */
bool cluster_supported(void);

typedef struct Cluster Cluster;

/* Registers with the local sanlock daemon and starts joining the lockspace; joining goes on from the
 * event loop (polled every CLUSTER_JOIN_POLL_USEC) and takes a few io_timeouts. -EOPNOTSUPP if built
 * without sanlock; -ECONNREFUSED (logged) if no sanlock daemon answers. */
int cluster_new(const ClusterSettings *s, sd_event *event, Cluster **ret);
/* Forgets the connection: sanlock releases every lease it holds. The lockspace stays joined. */
Cluster *cluster_free(Cluster *c);

bool cluster_joined(const Cluster *c);
uint64_t cluster_host_id(const Cluster *c);

/* Called once, from the event loop, when the lockspace is joined (at once if it is already): where a
 * restarted vdiskd adopts its orphan leases (cluster_adopt) and releases the rest (cluster_release_orphans). */
typedef void (*ClusterJoinedHandler)(Cluster *c, void *userdata);
void cluster_set_joined_handler(Cluster *c, ClusterJoinedHandler handler, void *userdata);

/* Fencing (docs/design.md, "Losing the lockspace"). vdiskd registers a kill path with sanlock: when this
 * host's lockspace is lost (its delta lease could not be renewed for 8 × IoTimeout: the storage is
 * unreachable) or another host asks for a lease it holds (`sanlock client request -f 2`), sanlock runs
 * `kill -USR2 <vdiskd's pid>` instead of SIGTERM, and escalates to SIGKILL if vdiskd still holds leases
 * in the lockspace after its kill grace period (`sanlock daemon -g`, 40 s by default). On that signal,
 * from the event loop: the lockspace counts as not joined (every acquire answers -EHOSTDOWN), the fence
 * handler runs (it stops the jobs and fences the holders, whose ends release their leases), then every
 * lease still held is released, the connection is registered again (sanlock refuses acquires on a
 * connection it has started to kill), and the lockspace is joined again once sanlock has dropped it
 * (through the joined handler, as at start). */
#define CLUSTER_FENCE_SIGNAL SIGUSR2
typedef void (*ClusterFenceHandler)(Cluster *c, void *userdata);
void cluster_set_fence_handler(Cluster *c, ClusterFenceHandler handler, void *userdata);
const char *cluster_lockspace_name(const Cluster *c);

/* Whether this host's lease on the lockspace was renewed recently enough (10 × IoTimeout, at most
 * 8 × IoTimeout + 30 s, as sanlock reports it) that no other host can have taken its leases: false while not joined, or when the renewal is late (the storage is
 * slow or gone, or this host was frozen and has just been resumed, before sanlock noticed). Nothing is
 * written for a lease while it is false: acquires answer -ENOLINK, jobs wait (ops/job.c's gate). True
 * for NULL (local mode). */
bool cluster_renewal_fresh(Cluster *c);

/* Takes resource `name` (at most CLUSTER_NAME_MAX bytes) for one local user, shared or exclusive.
 * `persistent` (SANLK_RES_PERSISTENT): when vdiskd's connection closes (vdiskd stops or dies) the lease is
 * not released but kept by this host's sanlock daemon as an orphan, until a vdiskd adopts it again
 * (cluster_adopt) or releases it (cluster_release_orphans); other hosts see it held all along. A name is
 * always taken with one persistence (sanlock wants all the shared holders of a resource alike): the
 * first local user's counts.
 * 1: acquired from sanlock now (what it protects may have been changed by another host: re-read it);
 * 0: this host held it already, in this mode or a stronger one (or was converted to exclusive);
 * -EHOSTDOWN: the lockspace is not joined yet; -EBUSY: another host holds it (`*ret_owner`: its host id,
 * 0 if sanlock cannot tell); -EIO (logged): sanlock failed otherwise. */
int cluster_acquire(Cluster *c, const char *name, bool exclusive, bool persistent, uint64_t *ret_owner);
/* Takes over, for one local user, the orphan `name` a previous vdiskd of this host left held in this mode
 * (SANLK_ACQUIRE_ORPHAN_ONLY: only this host's orphans, never a lease free on disk or another host's).
 * 1: adopted; 0: this host holds it already (another local user adopted it); -ENOENT: there is no such
 * orphan; -EBUSY: held here in another mode; -EHOSTDOWN: not joined; -EIO (logged): sanlock failed. */
int cluster_adopt(Cluster *c, const char *name, bool exclusive);
/* Migration: takes `name` exclusively and persistently only if its lease version (sanlock's lver, bumped
 * by every acquire) is still `version`, the one the source held when it released it at the switch-over
 * (SANLK_RES_LVER). 1: taken; -ESTALE: another host took it since (SANLK_ACQUIRE_LVER); -EBUSY: held
 * (by another host: `*ret_owner`; or by a local user); -EHOSTDOWN, -EIO as cluster_acquire(). */
int cluster_acquire_version(Cluster *c, const char *name, uint64_t version, uint64_t *ret_owner);
/* The lease version of `name` as the lease area says now (sanlock_read_resource): while this host holds
 * it, the version it was acquired with. */
int cluster_version(Cluster *c, const char *name, uint64_t *ret);
/* Releases every orphan lease of this host in the lockspace (those no local user adopted). Asynchronous
 * in sanlock: another host may see one held for a moment longer. */
void cluster_release_orphans(Cluster *c);
/* One local user lets go; the last one releases it to sanlock (an exclusive holder that leaves while
 * shared users remain converts it back to shared). */
void cluster_release(Cluster *c, const char *name, bool exclusive);

#define CLUSTER_NAME_MAX 128
