/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Cluster mode: interrupted operations recovered without waiting for anyone to touch their VM. */

#include <stdbool.h>
#include <stdlib.h>

#include "cluster-recover.h"
#include "cluster-lease.h"
#include "log.h"
#include "recovery.h"
#include "test-hooks.h"

/* Until the lockspace is joined, then while entries are left, look often; otherwise now and then (an
 * entry of a host that died waits for its lease to expire there: 8 × IoTimeout + 60 s in sanlock 3.8). */
#define SCAN_JOINING_USEC (1U * 1000000U)
#define SCAN_PENDING_USEC (5U * 1000000U)
#define SCAN_IDLE_USEC (60U * 1000000U)
/* The orphan sweep (store_sweep_shared): on the first scan once joined, then this often; when the
 * catalog lease is busy, at the next scan. */
#define SWEEP_PERIOD_USEC (UINT64_C(10) * 60U * 1000000U)

struct ClusterRecovery {
        Cluster *cluster;
        Store *store;
        sd_event_source *timer;
        char **seen; /* the journal entries found by the last scan */
        uint64_t sweep_period;
        uint64_t next_sweep; /* CLOCK_MONOTONIC; 0: at the first scan once joined */
};

static bool contains(char **v, const char *s) {
        for (char **p = v; p && *p; p++)
                if (streq(*p, s))
                        return true;
        return false;
}

/* Takes the lease of each pending entry exclusively, which recovers it (cluster_leases_*), and lets go
 * at once. A lease held elsewhere is an operation still running there, or a host whose lease has not
 * expired yet: next time. Only entries already found by the previous scan are tried: an entry that is
 * new is most likely an operation running right now, whose host may release its lease just before we
 * take it — a short exclusive hold that would make another host's concurrent call (even a read such as
 * ListImages) answer InUse for nothing. An entry of a host that died waits for that host's lease to
 * expire anyway (much longer than one scan period). Returns how many entries are still pending. */
static size_t scan(ClusterRecovery *rec) {
        char **entries = NULL, **leases = NULL, **tried = NULL;
        size_t n = 0, n_tried = 0, left = 0;

        if (store_pending_entries(rec->store, &entries, &leases, &n) < 0)
                return 1;
        for (size_t k = 0; k < n; k++) {
                ClusterLeases held = CLUSTER_LEASES_INIT(rec->cluster);
                const char *vm = startswith(leases[k], "vm:");
                OpError err = {};
                int r;

                left++;
                if (!contains(rec->seen, entries[k]) || contains(tried, leases[k]))
                        continue;
                if (strv_push(&tried, &n_tried, leases[k]) < 0)
                        break;
                r = vm ? cluster_leases_vm(&held, rec->store, vm, true, &err)
                       : cluster_leases_catalog(&held, rec->store, true, &err);
                if (r < 0)
                        log_debug("Interrupted operation(s) under cluster lease %s not recovered yet: %s", leases[k], err.reason);
                cluster_leases_release(&held);
        }
        strv_free(leases);
        strv_free(tried);
        strv_free(rec->seen);
        rec->seen = entries;
        return left;
}

/* The orphan sweep. First without any lease and removing nothing (store_sweep_shared's dry run): most
 * of the time there is no orphan, and the catalog lease, which would make other hosts' catalog calls
 * (even ListImages) answer InUse meanwhile, is not taken at all. If there are orphans: again, from the
 * start, under the catalog lease held exclusively, removing them. Returns false if it must be tried
 * again at the next scan (the lease was busy). */
static bool sweep(ClusterRecovery *rec) {
        ClusterLeases held = CLUSTER_LEASES_INIT(rec->cluster);
        StoreSweep res = {};
        OpError err = {};
        int r;

        r = store_sweep_shared(rec->store, true, &res);
        if (r < 0 || res.orphans == 0) {
                log_debug("Orphan sweep: %s (%zu kept for %zu pending operation(s))",
                          r < 0 ? "not possible now" : "nothing to remove", res.kept, res.pending);
                return true;
        }
        r = cluster_leases_catalog(&held, rec->store, true, &err);
        if (r < 0) {
                log_debug("Orphan sweep postponed: %s", err.reason);
                cluster_leases_release(&held);
                return false;
        }
        res = (StoreSweep) {};
        r = store_sweep_shared(rec->store, false, &res);
        if (r >= 0 && res.removed > 0)
                (void) store_reload_catalog(rec->store); /* catalog records it removed leave memory */
        cluster_leases_release(&held);
        if (r >= 0)
                log_info("Orphan sweep of the shared store: %zu removed, %zu kept for %zu pending operation(s)",
                         res.removed, res.kept, res.pending);
        return true;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        ClusterRecovery *rec = userdata;
        uint64_t next = SCAN_JOINING_USEC, now = 0;

        if (cluster_joined(rec->cluster)) {
                next = scan(rec) > 0 ? SCAN_PENDING_USEC : SCAN_IDLE_USEC;
                (void) sd_event_now(sd_event_source_get_event(s), CLOCK_MONOTONIC, &now);
                if (now >= rec->next_sweep)
                        rec->next_sweep = now + (sweep(rec) ? rec->sweep_period : next);
                if (rec->next_sweep - now < next)
                        next = rec->next_sweep - now;
        }
        (void) sd_event_source_set_time_relative(s, next);
        (void) sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        return 0;
}

int cluster_recovery_start(Cluster *c, Store *s, sd_event *event, ClusterRecovery **ret) {
        ClusterRecovery *rec;
        int r;

        rec = calloc(1, sizeof(*rec));
        if (!rec)
                return -ENOMEM;
        *rec = (ClusterRecovery) { .cluster = c, .store = s, .sweep_period = test_hook_sweep_usec(SWEEP_PERIOD_USEC) };
        r = sd_event_add_time_relative(event, &rec->timer, CLOCK_MONOTONIC, SCAN_JOINING_USEC, 0, on_timer, rec);
        if (r < 0) {
                free(rec);
                return r;
        }
        (void) sd_event_source_set_description(rec->timer, "cluster-recovery");
        *ret = rec;
        return 0;
}

ClusterRecovery *cluster_recovery_free(ClusterRecovery *rec) {
        if (!rec)
                return NULL;
        sd_event_source_disable_unref(rec->timer);
        strv_free(rec->seen);
        free(rec);
        return NULL;
}
