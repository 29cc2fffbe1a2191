/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster-lease.h"
#include "export.h"
#include "image-lock.h"
#include "lease.h"
#include "live.h"
#include "vdisk-bus.h"
#include "log.h"
#include "ops.h"
#include "util.h"

#define QUARANTINE_RETRY_USEC UINT64_C(1000000)

Lease *lease_free(Lease *l) {
        if (!l)
                return NULL;
        for (size_t i = 0; i < l->n_fds; i++)
                safe_close(l->fds[i].fd);
        free(l->fds);
        export_free(l->export); /* the helper keeps serving: vdiskd may be stopping, not the lease */
        cluster_leases_forget(l->cluster); /* likewise: its persistent disk lease stays this host's (an orphan) */
        free(l->vm);
        free(l->disk);
        free(l->holder);
        free(l);
        return NULL;
}

void lease_forget_fds(Lease *l, size_t first, size_t count) {
        for (size_t i = first; i < first + count && i < l->n_fds; i++) {
                l->fds[i].fd = safe_close(l->fds[i].fd);
                l->fds[i].handed_out = true;
        }
}

bool lease_fds_pending(const Lease *l, size_t first, size_t count) {
        for (size_t i = first; i < first + count && i < l->n_fds; i++)
                if (l->fds[i].handed_out)
                        return false;
        return true;
}

/* The fds of `l` not handed out yet, opened or not. */
static size_t lease_held_fds(const Lease *l) {
        size_t n = 0;
        for (size_t k = 0; k < l->n_fds; k++)
                n += !l->fds[k].handed_out;
        return n;
}

static void pending_done(PendingQuarantine *p, bool release) {
        if (release)
                cluster_leases_free(p->cluster);
        else
                cluster_leases_forget(p->cluster);
        free(p->vm);
        free(p->disk);
        free(p->reason);
}

static void pending_remove(LeaseRegistry *reg, size_t i, bool release) {
        pending_done(&reg->pending[i], release);
        memmove(reg->pending + i, reg->pending + i + 1, (reg->n_pending - i - 1) * sizeof(*reg->pending));
        reg->n_pending--;
}

void lease_registry_forget_pending(LeaseRegistry *reg) {
        while (reg->n_pending > 0) {
                PendingQuarantine *p = &reg->pending[reg->n_pending - 1];
                log_error("The quarantine of disk '%s' of VM '%s' (%s) was never recorded: this host lost its cluster lockspace",
                          p->disk, p->vm, p->reason);
                pending_remove(reg, reg->n_pending - 1, false);
        }
}

void lease_registry_done(LeaseRegistry *reg) {
        for (size_t i = 0; i < reg->n_leases; i++)
                lease_free(reg->leases[i]);
        free(reg->leases);
        for (size_t i = 0; i < reg->n_pending; i++) {
                log_error("Stopping before the quarantine of disk '%s' of VM '%s' (%s) could be recorded: its cluster lease stays "
                          "this host's until a vdiskd of this host joins again", reg->pending[i].disk, reg->pending[i].vm,
                          reg->pending[i].reason);
                pending_done(&reg->pending[i], false);
        }
        free(reg->pending);
        sd_event_source_disable_unref(reg->pending_retry);
        *reg = (LeaseRegistry) {};
}

const PendingQuarantine *lease_registry_pending(const LeaseRegistry *reg, const char *vm, const char *disk) {
        for (size_t i = 0; i < reg->n_pending; i++)
                if (streq(reg->pending[i].vm, vm) && (!disk || streq(reg->pending[i].disk, disk)))
                        return &reg->pending[i];
        return NULL;
}

int lease_registry_add(LeaseRegistry *reg, Lease *l) {
        Lease **a = reallocarray(reg->leases, reg->n_leases + 1, sizeof(Lease *));
        if (!a)
                return -ENOMEM;
        reg->leases = a;
        reg->leases[reg->n_leases++] = l;
        return 0;
}

void lease_registry_remove(LeaseRegistry *reg, Lease *l) {
        for (size_t i = 0; i < reg->n_leases; i++)
                if (reg->leases[i] == l) {
                        memmove(reg->leases + i, reg->leases + i + 1, (reg->n_leases - i - 1) * sizeof(Lease *));
                        reg->n_leases--;
                        return;
                }
}

Lease *lease_registry_find(const LeaseRegistry *reg, const char *id) {
        for (size_t i = 0; i < reg->n_leases; i++)
                if (streq(reg->leases[i]->id, id))
                        return reg->leases[i];
        return NULL;
}

size_t lease_registry_count_holder(const LeaseRegistry *reg, const char *holder) {
        size_t n = 0;
        for (size_t i = 0; i < reg->n_leases; i++)
                n += streq(reg->leases[i]->holder, holder);
        return n;
}

size_t lease_registry_held_fds(const LeaseRegistry *reg, const char *holder) {
        size_t n = 0;
        for (size_t i = 0; i < reg->n_leases; i++)
                if (!holder || streq(reg->leases[i]->holder, holder))
                        n += lease_held_fds(reg->leases[i]);
        return n;
}

const Lease *lease_registry_conflict(const LeaseRegistry *reg, const char *vm, const char *disk, bool read_only) {
        for (size_t i = 0; i < reg->n_leases; i++) {
                const Lease *o = reg->leases[i];
                if (streq(o->vm, vm) && (!disk || streq(o->disk, disk)) && (!o->read_only || !read_only))
                        return o;
        }
        return NULL;
}

/* -EBUSY if another process writes the top layer of `d` (QEMU's lock bytes); a file that cannot be
 * opened is left to the operation, which reports it as it finds it. */
static int check_top_unlocked(Store *s, const char *vm, const Disk *d, OpError *err) {
        _cleanup_close_ int fd = -EBADF;
        Layer *top = d->n_chain > 0 ? store_find_layer(s, d->chain[0]) : NULL;
        int r;

        if (!top)
                return 0;
        fd = store_open_layer(s, top, O_RDONLY);
        if (fd < 0)
                return 0;
        r = image_lock_test_writer(fd);
        if (r < 0)
                return op_error(err, r, "Cannot test the image locks of layer %s", top->id);
        if (r > 0)
                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' is locked by another process (a running QEMU?)", d->name,
                                vm);
        return 0;
}

int lease_check_idle(Store *s, const LeaseRegistry *leases, const JobRegistry *jobs, const char *vm, const char *disk,
                     bool any_lease, OpError *err) {
        const Lease *l = lease_registry_conflict(leases, vm, disk, !any_lease);
        const PendingQuarantine *q = lease_registry_pending(leases, vm, disk);
        const Job *j;
        Vm *v;
        int r;

        if (l)
                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' is open %s by %s (pid %d)", l->disk, l->vm,
                                l->read_only ? "read-only" : "read-write", l->holder, (int) l->holder_pid);
        if (q)
                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' is being quarantined (%s): waiting for the VM's cluster lease",
                                q->disk, q->vm, q->reason);
        /* A read-only lease's fds not fetched yet are opened at GetFds from the chain as it was at OpenDisk:
         * that chain stays until they are fetched (or the lease ends). */
        for (size_t i = 0; !any_lease && i < leases->n_leases; i++) {
                const Lease *o = leases->leases[i];
                if (streq(o->vm, vm) && (!disk || streq(o->disk, disk)) && lease_held_fds(o) > 0)
                        return op_error(err, -EBUSY,
                                        "Disk '%s' of VM '%s' is open %s by %s (pid %d), which has not fetched all its fds yet",
                                        o->disk, o->vm, o->read_only ? "read-only" : "read-write", o->holder,
                                        (int) o->holder_pid);
        }
        j = job_registry_find_running(jobs, vm, disk);
        if (j)
                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' is busy with a %s job (" VDISK_JOB_PREFIX "/%" PRIu64 ")", j->disk,
                                vm, j->operation, j->number);
        v = store_find_vm(s, vm);
        for (size_t i = 0; v && i < v->n_disks; i++) {
                if (disk && !streq(v->disks[i].name, disk))
                        continue;
                r = check_top_unlocked(s, vm, &v->disks[i], err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int pending_retry(sd_event_source *source, uint64_t usec, void *userdata) {
        LeaseRegistry *reg = userdata;

        for (size_t i = 0; i < reg->n_pending;) {
                PendingQuarantine *p = &reg->pending[i];
                OpError err = {};
                int r;

                r = cluster_leases_vm(p->cluster, reg->pending_store, p->vm, true, &err);
                if (r < 0) {
                        log_debug("Quarantine of disk '%s' of VM '%s' still waits: %s", p->disk, p->vm, err.reason);
                        i++;
                        continue;
                }
                if (store_find_vm(reg->pending_store, p->vm)) {
                        r = op_quarantine(reg->pending_store, p->vm, p->disk, p->reason, &err);
                        if (r < 0)
                                log_error("Cannot record the quarantine of disk '%s' of VM '%s': %s", p->disk, p->vm, err.reason);
                        else
                                log_notice("Quarantine of disk '%s' of VM '%s' recorded under the VM's cluster lease (%s)", p->disk,
                                           p->vm, p->reason);
                }
                pending_remove(reg, i, true); /* both leases go */
        }
        if (reg->n_pending > 0) {
                (void) sd_event_source_set_time_relative(source, QUARANTINE_RETRY_USEC);
                (void) sd_event_source_set_enabled(source, SD_EVENT_ONESHOT);
        }
        return 0;
}

/* A quarantine changes the VM record: in cluster mode under the VM's lease like every other change (the
 * disk's own lease is still held here, so no other host can use the disk meanwhile). If another host
 * holds the VM's lease right now, the quarantine waits for it (PendingQuarantine), and the disk's lease
 * is kept until then: taken from `l`. */
static int quarantine(Store *s, LeaseRegistry *reg, Lease *l, const char *reason, OpError *err) {
        PendingQuarantine *p;
        sd_event *e = NULL;
        int r;

        if (!l->cluster) {
                if (lease_registry_pending(reg, l->vm, l->disk)) { /* a second reason while the first waits: said, not lost */
                        log_warning("Lease %s: disk '%s' of VM '%s' is also to be quarantined for: %s", l->id, l->disk, l->vm, reason);
                        return 0;
                }
                return op_quarantine(s, l->vm, l->disk, reason, err);
        }
        r = cluster_leases_vm(l->cluster, s, l->vm, true, err);
        if (r >= 0)
                return op_quarantine(s, l->vm, l->disk, reason, err);

        p = reallocarray(reg->pending, reg->n_pending + 1, sizeof(*p));
        if (!p)
                return op_error(err, -ENOMEM, "Out of memory");
        reg->pending = p;
        p = &reg->pending[reg->n_pending];
        *p = (PendingQuarantine) { .vm = strdup(l->vm), .disk = strdup(l->disk), .reason = strdup(reason) };
        if (!p->vm || !p->disk || !p->reason) {
                pending_done(p, false);
                return op_error(err, -ENOMEM, "Out of memory");
        }
        if (!reg->pending_retry) {
                r = sd_event_default(&e);
                if (r >= 0)
                        r = sd_event_add_time_relative(e, &reg->pending_retry, CLOCK_MONOTONIC, QUARANTINE_RETRY_USEC, 0, pending_retry, reg);
                sd_event_unref(e);
                if (r < 0) {
                        pending_done(p, false);
                        return op_error(err, r, "Cannot wait for the VM's cluster lease");
                }
        } else {
                (void) sd_event_source_set_time_relative(reg->pending_retry, QUARANTINE_RETRY_USEC);
                (void) sd_event_source_set_enabled(reg->pending_retry, SD_EVENT_ONESHOT);
        }
        p->cluster = TAKE_PTR(l->cluster);
        reg->pending_store = s;
        reg->n_pending++;
        log_warning("Lease %s: the quarantine of disk '%s' of VM '%s' waits for the VM's cluster lease (%s); the disk's cluster "
                    "lease is kept until it is recorded", l->id, l->disk, l->vm, err->reason);
        return 0;
}

void lease_end(Store *s, LeaseRegistry *reg, Lease *l, const char *why) {
        LeaseEnded *ended;
        int r = 0;

        log_op(LOG_INFO, "lease", l->vm, l->disk, NULL, "Lease " VDISK_LEASE_PREFIX "/%s of disk '%s' of VM '%s' ended (%s)", l->id, l->disk, l->vm,
               why);
        /* A live job the helper still runs is cancelled first, one it completed is recorded: the
         * headers read below then match the records either way. */
        if (l->export && l->export->job_op && store_find_vm(s, l->vm)) {
                OpError err = {};
                r = live_job_recover(l->export, s, &err);
                if (r < 0)
                        log_error("Lease %s: cannot settle the live %s of disk '%s' of VM '%s': %s", l->id, l->export->job_op,
                                  l->disk, l->vm, err.reason);
        }
        /* An export's helper flushes and closes the chain before the headers are read. One that cannot
         * be stopped may still write: its disk is quarantined. */
        if (l->export && export_stop(l->export) < 0 && store_find_vm(s, l->vm)) {
                OpError err = {};
                (void) quarantine(s, reg, l, "its storage helper could not be stopped when its lease ended", &err);
        }
        if (!l->read_only && store_find_vm(s, l->vm)) {
                _cleanup_free_ char *problem = NULL;
                OpError err = {};

                /* Only the top layer was writable: backing layers went out O_RDONLY. */
                if (op_verify(s, l->vm, l->disk, true, -EBADF, op_verify_first_problem, &problem, &err) >= 0 && problem) {
                        char reason[512];
                        snprintf(reason, sizeof(reason), "headers changed under a read-write lease: %s", problem);
                        (void) quarantine(s, reg, l, reason, &err);
                }
        }
        ended = &reg->ended[reg->n_ended++ % LEASE_ENDED_KEEP];
        snprintf(ended->id, sizeof(ended->id), "%s", l->id);
        snprintf(ended->why, sizeof(ended->why), "%s", why);
        ended->job_completed = r > 0;
        lease_registry_remove(reg, l);
        l->cluster = cluster_leases_free(l->cluster); /* the lease ends: its cluster lease goes, last */
        lease_free(l);
}

const LeaseEnded *lease_registry_ended(const LeaseRegistry *reg, const char *id) {
        for (unsigned i = 0; i < LEASE_ENDED_KEEP; i++)
                if (streq(reg->ended[i].id, id))
                        return &reg->ended[i];
        return NULL;
}

void lease_registry_holder_gone(Store *s, LeaseRegistry *reg, const char *holder) {
        for (size_t i = 0; i < reg->n_leases;) {
                if (streq(reg->leases[i]->holder, holder)) {
                        lease_end(s, reg, reg->leases[i], "holder left the bus"); /* removes it from the array */
                        continue;
                }
                i++;
        }
}
