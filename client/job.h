/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

typedef struct JobResult {
        char *state; /* "done", "failed" or "cancelled" */
        char *error_name;
        char *error_message;
} JobResult;

void job_result_done(JobResult *r);

/* Follows the org.vdisk1.Job at `path` until it ends: from its Finished signal, PropertiesChanged,
 * the Manager's JobRemoved, and by reading its properties periodically (the fallback if a signal is
 * missed). With `progress`, draws the line of job_progress_format() on stderr.
 *
 * Returns 0 when the job ended (ret filled in), -EINTR when SIGINT or SIGTERM arrived (the job is
 * left running: detaching never cancels it), or another negative errno after logging why. */
int job_follow(sd_bus *bus, const char *path, const char *label, bool progress, JobResult *ret);

/* The rate of a job as this client sees it, over a moving window: one sample kept per
 * JOB_RATE_INTERVAL_USEC, the oldest of JOB_RATE_SAMPLES dropped, and the rate taken between the oldest
 * kept sample and the newest. The first sample is the base, so bytes done before vdiskctl attached
 * do not count. Samples are timed when vdiskctl reads them, so over less than JOB_RATE_MIN_USEC (a
 * signal and a reply read together after vdiskctl waited for the CPU) the rate would be noise. */
#define JOB_RATE_SAMPLES 8U
#define JOB_RATE_INTERVAL_USEC (UINT64_C(500) * UINT64_C(1000))
#define JOB_RATE_MIN_USEC (UINT64_C(1000) * UINT64_C(1000))

typedef struct JobRate {
        uint64_t usec[JOB_RATE_SAMPLES];
        uint64_t bytes[JOB_RATE_SAMPLES];
        size_t n;
        uint64_t last_usec, last_bytes; /* the newest sample */
} JobRate;

void job_rate_add(JobRate *r, uint64_t usec, uint64_t bytes);

/* Bytes per second, and the time left for the rest of `bytes_total` at that rate (UINT64_MAX when
 * bytes_total is 0 or the time is absurdly long). Returns false, leaving the outputs alone, until
 * two samples with progress and at least JOB_RATE_MIN_USEC between them. */
bool job_rate_get(const JobRate *r, uint64_t bytes_total, uint64_t *ret_rate, uint64_t *ret_left_usec);

typedef struct JobProgress {
        double fraction;     /* 0 to 1; 0 or not a number: computed from the bytes */
        uint64_t bytes_done;
        uint64_t bytes_total; /* 0: no bytes shown */
        uint64_t rate;        /* bytes per second; 0: not shown */
        uint64_t left_usec;   /* UINT64_MAX: not shown */
} JobProgress;

/* "<label> [####----]  42% 420.0M/1.0G 150.0M/s 0:19 left", at most `columns` - 1 columns wide so that
 * the terminal never wraps it. When it is narrower the bar shrinks, then the rate goes, then the time
 * left, the bar, the bytes, and last the label is cut. */
int job_progress_format(const char *label, const JobProgress *p, size_t columns, char **ret);
