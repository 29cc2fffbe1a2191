/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The daemon's state: the event loop, the bus connection, the store, the configuration, the jobs and
 * leases, and the credentials of callers seen on the bus. Plain data owned by main.c; the bus face
 * (bus/) reads and changes it, the manager itself never calls into bus/.
 */

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "cluster.h"
#include "daemon-config.h"
#include "job.h"
#include "lease.h"
#include "ops.h"
#include "store.h"

/* Who is calling, from the sender's bus credentials (never from a PID). */
typedef struct Caller {
        uid_t uid;
        pid_t pid;
        bool root;
        bool admin; /* root or a member of the admin group */
} Caller;

/* Credentials by unique bus name: they cannot change while a connection exists, and unique names are
 * never reused on a bus, so they are asked for once per connection. */
typedef struct CallerCache {
        struct CallerEntry {
                char *name;
                Caller caller;
        } *entries;
        size_t n_entries;
} CallerCache;

#define CALLER_CACHE_MAX 4096U

const Caller *caller_cache_get(const CallerCache *c, const char *name);
void caller_cache_put(CallerCache *c, const char *name, const Caller *caller);
void caller_cache_forget(CallerCache *c, const char *name);
void caller_cache_done(CallerCache *c);

typedef struct Manager {
        sd_event *event;
        sd_bus *bus;
        Store *store;
        Config config;
        bool has_admin_gid;
        gid_t admin_gid;
        JobRegistry jobs;
        LeaseRegistry leases;
        CallerCache callers;
        Cluster *cluster; /* NULL in Mode=local */
        struct ClusterRecovery *cluster_recovery; /* cluster mode: interrupted operations of other hosts */
        ExportSpares *spares; /* [Exports] SpareHelpers=, started by manager_recover_exports() */
} Manager;

int manager_new(const Config *config, Manager **ret);
Manager *manager_free(Manager *m);
/* What OpenDisk needs to start an export, with the manager's handler for helpers that exit. */
ExportContext manager_export_context(Manager *m);
/* After a restart: the exports whose helpers still serve become leases again, the spare helpers of the
 * previous vdiskd are stopped; then the spare helpers of this one are started (from the event loop). */
int manager_recover_exports(Manager *m);
/* Nothing leased and no job, running or still readable. */
bool manager_busy(const Manager *m);
