/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>

#include <systemd/sd-bus.h>

typedef struct JobResult {
        char *state; /* "done", "failed" or "cancelled" */
        char *error_name;
        char *error_message;
} JobResult;

void job_result_done(JobResult *r);

/* Follows the org.vdisk1.Job at `path` until it ends: from its Finished signal, PropertiesChanged,
 * the Manager's JobRemoved, and by reading its properties periodically (the fallback if a signal is
 * missed). With `progress`, draws "<label> [####----] 42% 420.0M/1.0G" on stderr.
 *
 * Returns 0 when the job ended (ret filled in), -EINTR when SIGINT or SIGTERM arrived (the job is
 * left running: detaching never cancels it), or another negative errno after logging why. */
int job_follow(sd_bus *bus, const char *path, const char *label, bool progress, JobResult *ret);
