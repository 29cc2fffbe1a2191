/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Fencing on sanlock's kill path: jobs cancelled, writers killed, leases ended (cluster-fence.h). */

#include <cap-ng.h>
#include <errno.h>
#include <inttypes.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cluster-fence.h"
#include "export.h"
#include "helper.h"
#include "log.h"
#include "util.h"

static struct {
        Store *store;
        LeaseRegistry *leases;
        JobRegistry *jobs;
} fence;

/* CAP_KILL for one call: a holder (a QEMU) may run as a uid of its own. vdiskd keeps it permitted in
 * cluster mode (main.c). */
static int kill_as_root(pid_t pid) {
        bool raised = false;
        int r;

        if (geteuid() == 0 && capng_get_caps_process() >= 0 && capng_have_capability(CAPNG_PERMITTED, CAP_KILL) &&
            capng_update(CAPNG_ADD, CAPNG_EFFECTIVE, CAP_KILL) >= 0 && capng_apply(CAPNG_SELECT_CAPS) >= 0)
                raised = true;
        r = kill(pid, SIGKILL) < 0 ? negative_errno() : 0;
        if (raised && (capng_update(CAPNG_DROP, CAPNG_EFFECTIVE, CAP_KILL) < 0 || capng_apply(CAPNG_SELECT_CAPS) < 0))
                log_error("Cannot lower CAP_KILL again");
        return r;
}

static void fence_writer(const char *lockspace, Lease *l) {
        int r;

        if (l->read_only)
                return;
        if (l->export) {
                /* No quit and flush: the storage may be what is gone. */
                r = l->export->helper ? helper_stop(l->export->helper, 0) : -ESRCH;
                if (r < 0)
                        log_error("Lockspace %s lost: cannot kill the storage helper of lease %s (disk '%s' of VM '%s'): %s",
                                  lockspace, l->id, l->disk, l->vm, strerror(-r));
                else
                        log_error("Lockspace %s lost: storage helper of lease %s (disk '%s' of VM '%s') killed", lockspace, l->id,
                                  l->disk, l->vm);
                return;
        }
        if (l->holder_pid <= 1 || l->holder_pid == getpid()) {
                log_error("Lockspace %s lost: lease %s (disk '%s' of VM '%s') has no holder pid to kill (%d)", lockspace, l->id,
                          l->disk, l->vm, (int) l->holder_pid);
                return;
        }
        r = kill_as_root(l->holder_pid);
        if (r < 0)
                log_error("Lockspace %s lost: cannot kill pid %d, holder of read-write lease %s (disk '%s' of VM '%s'): %s",
                          lockspace, (int) l->holder_pid, l->id, l->disk, l->vm, strerror(-r));
        else
                log_error("Lockspace %s lost: pid %d, holder of read-write lease %s (disk '%s' of VM '%s'), killed", lockspace,
                          (int) l->holder_pid, l->id, l->disk, l->vm);
}

static void on_fence(Cluster *c, void *userdata) {
        const char *ls = cluster_lockspace_name(c);
        char why[128];
        size_t n = 0;

        snprintf(why, sizeof(why), "This host lost cluster lockspace %s: stopped before its commit point", ls);
        for (size_t i = 0; fence.jobs && i < fence.jobs->n_jobs; i++) {
                Job *j = fence.jobs->jobs[i];
                if (j->state != JOB_RUNNING)
                        continue;
                log_error("Lockspace %s lost: job %" PRIu64 " (%s of disk '%s' of VM '%s') cancelled before its commit point", ls,
                          j->number, j->operation, j->disk, j->vm);
                (void) job_cancel_why(j, why);
                n++;
        }
        for (size_t i = 0; fence.leases && i < fence.leases->n_leases; i++)
                fence_writer(ls, fence.leases->leases[i]);
        snprintf(why, sizeof(why), "this host lost cluster lockspace %s", ls);
        while (fence.leases && fence.leases->n_leases > 0) {
                lease_end(fence.store, fence.leases, fence.leases->leases[fence.leases->n_leases - 1], why);
                n++;
        }
        if (fence.leases)
                lease_registry_forget_pending(fence.leases); /* their cluster leases are dropped next */
        log_error("Lockspace %s lost: %zu jobs and leases ended", ls, n);
}

void cluster_fence_setup(Cluster *c, Store *s, LeaseRegistry *leases, JobRegistry *jobs) {
        if (!c)
                return;
        fence.store = s;
        fence.leases = leases;
        fence.jobs = jobs;
        cluster_set_fence_handler(c, on_fence, NULL);
}
