/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Cluster mode: interrupted operations recovered without waiting for anyone to touch their VM. */

#include <stdbool.h>
#include <stdlib.h>

#include "cluster-recover.h"
#include "cluster-lease.h"
#include "log.h"
#include "recovery.h"

/* Until the lockspace is joined, then while entries are left, look often; otherwise now and then (an
 * entry of a host that died waits for its lease to expire there: 8 × IoTimeout + 60 s in sanlock 3.8). */
#define SCAN_JOINING_USEC (1U * 1000000U)
#define SCAN_PENDING_USEC (5U * 1000000U)
#define SCAN_IDLE_USEC (60U * 1000000U)

struct ClusterRecovery {
        Cluster *cluster;
        Store *store;
        sd_event_source *timer;
        char **seen; /* the journal entries found by the last scan */
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

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        ClusterRecovery *rec = userdata;
        uint64_t next = SCAN_JOINING_USEC;

        if (cluster_joined(rec->cluster))
                next = scan(rec) > 0 ? SCAN_PENDING_USEC : SCAN_IDLE_USEC;
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
        *rec = (ClusterRecovery) { .cluster = c, .store = s };
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
