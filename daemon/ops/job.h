/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Jobs: long operations (import, rebase, commit, flatten) stepped from the event loop, as plain data.
 * A step runs at idle priority so that calls come first, and at least every JOB_TURN_USEC even while
 * calls keep arriving, so that a flood of calls cannot stall it. A finished job stays readable for a
 * while (its linger time), then leaves the registry. The bus face (bus/bus-job.c) is told of progress,
 * of the end and of the removal through JobEvents; nothing here knows D-Bus.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "format.h"

typedef FormatError OpError;

typedef struct JobOps {
        int (*step)(void *op, OpError *err); /* > 0 more to do, 0 done, < 0 failed (already rolled back) */
        void (*abort)(void *op);
        void *(*free)(void *op);
        uint64_t (*bytes_done)(const void *op);
        uint64_t (*bytes_total)(const void *op);
        uint64_t wait_usec; /* a pause between steps: jobs that watch another process's job poll it */
} JobOps;

typedef enum JobState {
        JOB_RUNNING,
        JOB_DONE,
        JOB_FAILED,
        JOB_CANCELLED,
        _JOB_STATE_MAX,
} JobState;

const char *job_state_to_string(JobState s);

typedef struct Job Job;
typedef struct JobRegistry JobRegistry;

typedef struct JobEvents {
        void (*progress)(Job *j, void *userdata); /* at most every JOB_PROGRESS_INTERVAL_USEC */
        void (*finished)(Job *j, void *userdata); /* state and error are final */
        void (*removed)(Job *j, void *userdata);  /* right before the job is freed */
        void *userdata;
} JobEvents;

struct Job {
        JobRegistry *registry;
        uint64_t number; /* 1, 2, …: the job's name */
        char *operation, *vm, *disk;
        uid_t owner;
        JobState state;
        uint64_t bytes_done, bytes_total;
        int error;           /* negative errno of a failed or cancelled job */
        char *error_message; /* its one-line reason */
        const JobOps *ops;
        void *op;
        sd_event_source *step_source, *linger_source, *delay_source, *turn_source;
        uint64_t last_step, last_emit;
        bool gated; /* waiting for the gate: said once in the log */
};

/* Cluster mode: whether jobs may write to the store now (cluster_renewal_fresh(): this host's lease on
 * the lockspace was renewed recently enough that no other host can have taken its leases over). */
typedef bool (*JobGate)(void *userdata);

struct JobRegistry {
        sd_event *event;
        Job **jobs;
        size_t n_jobs;
        uint64_t counter;
        JobEvents events;
        JobGate gate;
        void *gate_userdata;
};

void job_registry_init(JobRegistry *reg, sd_event *event);
/* While `gate` says no, a running job takes no step and, if it must end (a failed step, a Cancel), is
 * abandoned rather than rolled back: a write then could land on what another host now owns. */
void job_registry_set_gate(JobRegistry *reg, JobGate gate, void *userdata);
/* Aborts running jobs (rolls them back) and frees every job. */
void job_registry_done(JobRegistry *reg);

size_t job_registry_running(const JobRegistry *reg);
Job *job_registry_find(const JobRegistry *reg, uint64_t number);
/* A running job on `disk` of `vm` (any disk of it if `disk` is NULL), or NULL. */
Job *job_registry_find_running(const JobRegistry *reg, const char *vm, const char *disk);

/* Starts stepping `op`; the job owns it only on success. */
int job_start(JobRegistry *reg, const char *operation, const char *vm, const char *disk, uid_t owner, const JobOps *ops,
              void *op, Job **ret);
/* Cancels a running job: rolls its operation back, and it ends "cancelled". -EINVAL if it has ended. */
int job_cancel(Job *j);
/* The same, with the job's error message `why`. */
int job_cancel_why(Job *j, const char *why);
/* Ends a running job "cancelled" with `why`, without rolling its operation back: nothing more is written;
 * its journal entry stays, so whoever takes its lease next rolls it back or forward (cluster mode: the
 * lockspace was lost). -EINVAL if it has ended. */
int job_abandon(Job *j, const char *why);
/* Progress as a fraction 0..1. */
double job_progress(const Job *j);
