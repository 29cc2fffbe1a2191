/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"
#include "log.h"
#include "macro.h"
#include "test-hooks.h"
#include "util.h"

#define JOB_LINGER_USEC (60 * UINT64_C(1000000))
#define JOB_PROGRESS_INTERVAL_USEC (200 * UINT64_C(1000))
#define JOB_TURN_USEC (UINT64_C(100) * 1000)
#define JOB_GATE_WAIT_USEC (UINT64_C(500) * 1000)

static const char *const job_state_table[_JOB_STATE_MAX] = {
        [JOB_RUNNING] = "running",
        [JOB_DONE] = "done",
        [JOB_FAILED] = "failed",
        [JOB_CANCELLED] = "cancelled",
};

const char *job_state_to_string(JobState s) {
        return s >= 0 && s < _JOB_STATE_MAX ? job_state_table[s] : NULL;
}

/* Test builds only (test-hooks.h): a shorter linger, e.g. to watch exit-on-idle. */
static uint64_t job_linger_usec(void) {
        return test_hook_job_linger_usec(JOB_LINGER_USEC);
}

/* Test builds only: a pause between steps, so that a job can be watched, cancelled or killed midway
 * on small images. */
static uint64_t step_delay_usec(void) {
        return test_hook_step_delay_usec();
}

void job_registry_init(JobRegistry *reg, sd_event *event) {
        *reg = (JobRegistry) { .event = event };
}

void job_registry_set_gate(JobRegistry *reg, JobGate gate, void *userdata) {
        reg->gate = gate;
        reg->gate_userdata = userdata;
}

static bool job_gate_open(const JobRegistry *reg) {
        return !reg->gate || reg->gate(reg->gate_userdata);
}

size_t job_registry_running(const JobRegistry *reg) {
        size_t n = 0;
        for (size_t i = 0; i < reg->n_jobs; i++)
                n += reg->jobs[i]->state == JOB_RUNNING;
        return n;
}

Job *job_registry_find(const JobRegistry *reg, uint64_t number) {
        for (size_t i = 0; i < reg->n_jobs; i++)
                if (reg->jobs[i]->number == number)
                        return reg->jobs[i];
        return NULL;
}

Job *job_registry_find_running(const JobRegistry *reg, const char *vm, const char *disk) {
        for (size_t i = 0; i < reg->n_jobs; i++) {
                Job *j = reg->jobs[i];
                if (j->state == JOB_RUNNING && streq(j->vm, vm) && (!disk || streq(j->disk, disk)))
                        return j;
        }
        return NULL;
}

double job_progress(const Job *j) {
        double p = j->state == JOB_DONE ? 1.0 : j->bytes_total > 0 ? (double) j->bytes_done / (double) j->bytes_total : 0.0;
        return p > 1.0 ? 1.0 : p;
}

static Job *job_free(Job *j) {
        if (!j)
                return NULL;
        if (j->op && j->ops->free)
                j->ops->free(j->op);
        sd_event_source_disable_unref(j->step_source);
        sd_event_source_disable_unref(j->linger_source);
        sd_event_source_disable_unref(j->delay_source);
        sd_event_source_disable_unref(j->turn_source);
        free(j->operation);
        free(j->vm);
        free(j->disk);
        free(j->error_message);
        free(j);
        return NULL;
}

static void job_unlink(Job *j) {
        JobRegistry *reg = j->registry;
        for (size_t i = 0; i < reg->n_jobs; i++)
                if (reg->jobs[i] == j) {
                        memmove(reg->jobs + i, reg->jobs + i + 1, (reg->n_jobs - i - 1) * sizeof(Job *));
                        reg->n_jobs--;
                        return;
                }
}

static int job_linger_cb(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;
        JobRegistry *reg = j->registry;

        if (reg->events.removed)
                reg->events.removed(j, reg->events.userdata);
        job_unlink(j);
        job_free(j);
        return 0;
}

static int job_delay_cb(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;
        j->delay_source = sd_event_source_disable_unref(j->delay_source);
        if (j->step_source)
                (void) sd_event_source_set_enabled(j->step_source, SD_EVENT_ON);
        return 0;
}

static void job_emit_progress(Job *j) {
        JobRegistry *reg = j->registry;
        uint64_t now;

        (void) sd_event_now(reg->event, CLOCK_MONOTONIC, &now);
        if (now - j->last_emit < JOB_PROGRESS_INTERVAL_USEC)
                return;
        j->last_emit = now;
        if (reg->events.progress)
                reg->events.progress(j, reg->events.userdata);
}

static void job_finish(Job *j, JobState state, int r, const OpError *err) {
        JobRegistry *reg = j->registry;

        j->state = state;
        if (state != JOB_DONE) {
                j->error = r < 0 ? r : -EIO;
                j->error_message = strdup(err && err->code && err->reason[0] ? err->reason : strerror(-j->error));
        }
        j->step_source = sd_event_source_disable_unref(j->step_source);
        j->delay_source = sd_event_source_disable_unref(j->delay_source);
        j->turn_source = sd_event_source_disable_unref(j->turn_source);

        log_op(state == JOB_DONE ? LOG_INFO : LOG_WARNING, j->operation, j->vm, j->disk, NULL, "Job %" PRIu64 " %s%s%s",
               j->number, job_state_table[state], j->error_message ? ": " : "", j->error_message ?: "");
        if (reg->events.finished)
                reg->events.finished(j, reg->events.userdata);
        /* Clean-up that follows the operation's commit point (removing layers) comes after the news. */
        if (j->op && j->ops->free)
                j->op = j->ops->free(j->op);
        (void) sd_event_add_time_relative(reg->event, &j->linger_source, CLOCK_MONOTONIC, job_linger_usec(), 0,
                                          job_linger_cb, j);
}

static void job_run_step(Job *j) {
        JobRegistry *reg = j->registry;
        OpError err = {};
        int r;

        (void) sd_event_now(reg->event, CLOCK_MONOTONIC, &j->last_step);
        if (!job_gate_open(reg)) {
                if (!j->gated)
                        log_op(LOG_WARNING, j->operation, j->vm, j->disk, NULL,
                               "Job %" PRIu64 " waits: this host's cluster lease is not known to be valid now", j->number);
                j->gated = true;
                if (!j->delay_source && sd_event_add_time_relative(reg->event, &j->delay_source, CLOCK_MONOTONIC,
                                                                    JOB_GATE_WAIT_USEC, 0, job_delay_cb, j) >= 0)
                        (void) sd_event_source_set_enabled(j->step_source, SD_EVENT_OFF);
                return;
        }
        if (j->gated)
                log_op(LOG_NOTICE, j->operation, j->vm, j->disk, NULL, "Job %" PRIu64 " goes on", j->number);
        j->gated = false;
        r = j->ops->step(j->op, &err);
        j->bytes_done = j->ops->bytes_done(j->op);
        j->bytes_total = j->ops->bytes_total(j->op);
        if (r > 0) {
                uint64_t delay = MAX(step_delay_usec(), j->ops->wait_usec);

                job_emit_progress(j);
                if (delay > 0 && !j->delay_source &&
                    sd_event_add_time_relative(reg->event, &j->delay_source, CLOCK_MONOTONIC, delay, 0, job_delay_cb, j) >= 0)
                        (void) sd_event_source_set_enabled(j->step_source, SD_EVENT_OFF);
                return;
        }
        if (r < 0 && !job_gate_open(reg)) {
                /* Failed while this host may have lost its leases (e.g. it was frozen and another host
                 * took over): no roll-back here; whoever holds the lease next recovers the entry. */
                log_op(LOG_ERR, j->operation, j->vm, j->disk, NULL, "Job %" PRIu64 " failed (%s) while this host's cluster "
                       "lease is not known to be valid: left to recovery, not rolled back here", j->number, err.reason);
                job_finish(j, JOB_FAILED, r, &err);
                return;
        }
        if (r < 0 && j->ops->abort)
                j->ops->abort(j->op);
        job_finish(j, r < 0 ? JOB_FAILED : JOB_DONE, r, &err);
}

static int job_step_cb(sd_event_source *s, void *userdata) {
        job_run_step(userdata);
        return 0;
}

/* At the bus's priority: a step when none has run for a turn, because the idle step source does not
 * get its turn while calls keep coming. */
static int job_turn_cb(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;

        if (!j->delay_source && j->step_source && usec - MIN(usec, j->last_step) >= JOB_TURN_USEC)
                job_run_step(j);
        if (j->turn_source) { /* gone if that step finished the job */
                (void) sd_event_source_set_time_relative(j->turn_source, JOB_TURN_USEC);
                (void) sd_event_source_set_enabled(j->turn_source, SD_EVENT_ONESHOT);
        }
        return 0;
}

int job_cancel(Job *j) {
        return job_cancel_why(j, "Cancelled by the caller");
}

int job_cancel_why(Job *j, const char *why) {
        OpError err = { .code = -ECANCELED };

        if (j->state != JOB_RUNNING)
                return -EINVAL;
        if (!job_gate_open(j->registry))
                return job_abandon(j, why);
        if (j->ops->abort)
                j->ops->abort(j->op);
        snprintf(err.reason, sizeof(err.reason), "%s", why);
        job_finish(j, JOB_CANCELLED, -ECANCELED, &err);
        return 0;
}

int job_abandon(Job *j, const char *why) {
        OpError err = { .code = -ECANCELED };

        if (j->state != JOB_RUNNING)
                return -EINVAL;
        log_op(LOG_ERR, j->operation, j->vm, j->disk, NULL, "Job %" PRIu64 " abandoned, not rolled back here: its journal entry "
               "is left to whoever takes its lease next", j->number);
        snprintf(err.reason, sizeof(err.reason), "%s", why);
        job_finish(j, JOB_CANCELLED, -ECANCELED, &err);
        return 0;
}

int job_start(JobRegistry *reg, const char *operation, const char *vm, const char *disk, uid_t owner, const JobOps *ops,
              void *op, Job **ret) {
        Job *j, **jobs;
        int r;

        j = calloc(1, sizeof(Job));
        if (!j)
                return -ENOMEM;
        j->registry = reg;
        j->owner = owner;
        j->ops = ops;
        j->operation = strdup(operation);
        j->vm = strdup(vm);
        j->disk = strdup(disk);
        j->number = ++reg->counter;
        if (!j->operation || !j->vm || !j->disk) {
                job_free(j);
                return -ENOMEM;
        }

        r = sd_event_add_defer(reg->event, &j->step_source, job_step_cb, j);
        if (r >= 0)
                r = sd_event_source_set_priority(j->step_source, SD_EVENT_PRIORITY_IDLE);
        if (r >= 0)
                r = sd_event_source_set_enabled(j->step_source, SD_EVENT_ON);
        /* Inspect is open to anyone: a flood of it must not stall the jobs of others. */
        if (r >= 0)
                r = sd_event_add_time_relative(reg->event, &j->turn_source, CLOCK_MONOTONIC, JOB_TURN_USEC, 0, job_turn_cb,
                                               j);
        if (r < 0) {
                job_free(j);
                return r;
        }

        jobs = reallocarray(reg->jobs, reg->n_jobs + 1, sizeof(Job *));
        if (!jobs) {
                job_free(j);
                return -ENOMEM;
        }
        reg->jobs = jobs;
        reg->jobs[reg->n_jobs++] = j;
        /* Only now does the job own the operation. */
        j->op = op;
        j->bytes_total = ops->bytes_total(op);
        *ret = j;
        return 0;
}

void job_registry_done(JobRegistry *reg) {
        for (size_t i = 0; i < reg->n_jobs; i++) {
                Job *j = reg->jobs[i];
                if (j->state == JOB_RUNNING && j->ops->abort && job_gate_open(reg))
                        j->ops->abort(j->op);
                job_free(j);
        }
        free(reg->jobs);
        reg->jobs = NULL;
        reg->n_jobs = 0;
}
