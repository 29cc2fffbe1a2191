/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Leases as plain data: who holds which disk, in which mode, and the fds the holder has not fetched yet.
 * Only the first page (the 16 fds of OpenDisk's reply) is opened by OpenDisk; each further fd is opened
 * when GetFds asks for it, through the same checks of the store (op_lease_get_fds in open-disk.h). A fd
 * not fetched yet counts as held for the limits whether it is open already or not. At most one read-write lease per disk, or any number of read-only ones. A lease
 * names its disk by VM and disk name; that is an identity because neither DeleteVM nor DeleteDisk is
 * allowed while the disk has any lease, read-only ones included (lease_check_idle(…, any_lease)), so a
 * leased disk cannot be replaced by another of the same name.
 * The bus face (bus/bus-lease.c) publishes each lease as an object; nothing here knows D-Bus.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "job.h"
#include "record.h"
#include "store.h"

#define LEASE_MAX_FDS_PER_MESSAGE 16U

/* One fd of a lease: which file of which layer (the chain as it was at OpenDisk) and in which mode. */
typedef struct LeaseFd {
        char layer[LAYER_ID_LEN + 1];
        bool data_file;   /* the layer's external data file, not its image file */
        bool writable;    /* O_RDWR: the top layer (and its data file) of a read-write lease */
        bool handed_out;  /* sent to the holder (or being sent): never again */
        int fd;           /* the daemon's copy: -EBADF until opened, and again once handed out */
} LeaseFd;

typedef struct Export Export;

typedef struct Lease {
        char id[LAYER_ID_LEN + 1]; /* random: the last element of its object path */
        char *vm, *disk;
        bool read_only;
        char *holder; /* unique bus name of the holder's connection */
        uid_t holder_uid;
        pid_t holder_pid;
        LeaseFd *fds; /* top first, each layer's data file right after it; an export: its one socket */
        size_t n_fds;
        Export *export; /* NULL: the chain's fds are handed out (ops/export.h) */
        struct ClusterLeases *cluster; /* cluster mode: the disk's cluster lease, released with this lease */
} Lease;

/* Why a lease ended, kept for the jobs that still name it (a live job learns that its lease is gone
 * only at its next step, and says why). */
typedef struct LeaseEnded {
        char id[LAYER_ID_LEN + 1];
        char why[96];
        bool job_completed; /* its live job had completed when it ended: the records follow the helper */
} LeaseEnded;

#define LEASE_ENDED_KEEP 8U

/* Cluster mode: a quarantine that could not be recorded when its lease ended, because another host held
 * the VM record's lease at that moment. The disk's own cluster lease is kept meanwhile (no host can use
 * the disk), and the quarantine is recorded under the VM's lease as soon as it is free (retried every
 * second): never a VM record written without its lease, which could lose that host's change. */
typedef struct PendingQuarantine {
        char *vm, *disk, *reason;
        struct ClusterLeases *cluster;
} PendingQuarantine;

typedef struct LeaseRegistry {
        Lease **leases;
        size_t n_leases;
        LeaseEnded ended[LEASE_ENDED_KEEP]; /* the last leases ended, a ring */
        unsigned n_ended;
        PendingQuarantine *pending;
        size_t n_pending;
        Store *pending_store;
        sd_event_source *pending_retry;
} LeaseRegistry;

Lease *lease_free(Lease *l);
/* Closes the daemon's copies of fds [first, first + count) once they are on their way to the holder and
 * marks them handed out: a hypervisor's image locks live on these open file descriptions and must go
 * with the hypervisor. */
void lease_forget_fds(Lease *l, size_t first, size_t count);
/* Whether fds [first, first + count) are all still to be handed out. */
bool lease_fds_pending(const Lease *l, size_t first, size_t count);

void lease_registry_done(LeaseRegistry *reg);
/* The lockspace is lost (ops/cluster-fence.c): the pending quarantines cannot be recorded; forgotten,
 * their cluster leases with them (dropped by the caller), each logged. */
void lease_registry_forget_pending(LeaseRegistry *reg);
/* A quarantine of `disk` of `vm` (any disk of it if NULL) waiting to be recorded: the disk is not handed
 * out meanwhile. NULL if there is none. */
const PendingQuarantine *lease_registry_pending(const LeaseRegistry *reg, const char *vm, const char *disk);
int lease_registry_add(LeaseRegistry *reg, Lease *l);
void lease_registry_remove(LeaseRegistry *reg, Lease *l);
Lease *lease_registry_find(const LeaseRegistry *reg, const char *id);
/* The leases of one holder, and the fds not yet fetched of one holder's leases (of all if NULL). */
size_t lease_registry_count_holder(const LeaseRegistry *reg, const char *holder);
size_t lease_registry_held_fds(const LeaseRegistry *reg, const char *holder);
/* A lease of `disk` of `vm` (any disk of the VM if `disk` is NULL) that excludes a new one: any lease
 * if `read_only` is false, a read-write one if it is true. NULL if there is none. */
const Lease *lease_registry_conflict(const LeaseRegistry *reg, const char *vm, const char *disk, bool read_only);

/* Whether a disk (any disk of `vm` if `disk` is NULL) may change offline: -EBUSY, naming the holder, the
 * job or the lock, while a lease excludes it (`any_lease`: also read-only leases; without it, a
 * read-only lease excludes it too as long as it has fds not fetched yet, so that the layers those will
 * be opened from stay the chain's), a job runs on it, or another process holds QEMU's write locks on
 * its top layer (a QEMU started without vdisk). */
int lease_check_idle(Store *s, const LeaseRegistry *leases, const JobRegistry *jobs, const char *vm, const char *disk,
                     bool any_lease, OpError *err);

/* Ends a lease and frees it. After a read-write lease, the headers a hypervisor could write are
 * checked against the records again; a difference quarantines the disk. */
void lease_end(Store *s, LeaseRegistry *reg, Lease *l, const char *why);
/* How lease `id` ended, if it is one of the last LEASE_ENDED_KEEP to end; NULL otherwise. */
const LeaseEnded *lease_registry_ended(const LeaseRegistry *reg, const char *id);
/* The holder's connection went away: ends all its leases. */
void lease_registry_holder_gone(Store *s, LeaseRegistry *reg, const char *holder);
