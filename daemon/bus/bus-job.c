/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The face of jobs (ops/job.c): org.vdisk1.Job objects with progress on properties, Finished when
 * done, and JobRemoved on the Manager when a finished job leaves.
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "log.h"

static void job_path(const Job *j, char path[static 64]) {
        snprintf(path, 64, VDISK_JOB_PREFIX "/%" PRIu64, j->number);
}

Job *bus_job_from_path(Manager *m, const char *path) {
        const char *s = path ? startswith(path, VDISK_JOB_PREFIX "/") : NULL;
        char *end;
        uint64_t n;

        if (!s || !*s || *s == '0' || *s == '-' || *s == '+')
                return NULL;
        errno = 0;
        n = strtoull(s, &end, 10);
        if (errno != 0 || *end != 0)
                return NULL;
        return job_registry_find(&m->jobs, n);
}

static void on_progress(Job *j, void *userdata) {
        Manager *m = userdata;
        char path[64];

        job_path(j, path);
        (void) sd_bus_emit_properties_changed(m->bus, path, VDISK_JOB_INTERFACE, "Progress", "BytesDone", "BytesTotal", NULL);
}

static void on_finished(Job *j, void *userdata) {
        Manager *m = userdata;
        const char *name = j->state == JOB_DONE ? "" : bus_error_name(j->error);
        char path[64];

        job_path(j, path);
        if (j->state == JOB_FAILED && streq(name, SD_BUS_ERROR_FAILED))
                log_error_errno(j->error, "Operation failed: %s", j->error_message ?: "unknown error");
        (void) sd_bus_emit_properties_changed(m->bus, path, VDISK_JOB_INTERFACE, "State", "Progress", "BytesDone",
                                              "ErrorName", "ErrorMessage", NULL);
        (void) sd_bus_emit_signal(m->bus, path, VDISK_JOB_INTERFACE, "Finished", "sss", job_state_to_string(j->state), name,
                                  j->error_message ?: "");
        /* Clean-up that follows the operation's commit point (removing layers) comes after the news. */
        (void) sd_bus_flush(m->bus);
}

static void on_removed(Job *j, void *userdata) {
        Manager *m = userdata;
        char path[64];

        job_path(j, path);
        (void) sd_bus_emit_signal(m->bus, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "JobRemoved", "os", path,
                                  job_state_to_string(j->state));
}

static int job_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                    sd_bus_error *error) {
        Manager *m = userdata;

        if (!bus_job_from_path(m, path))
                return 0;
        *found = m;
        return 1;
}

static int job_enumerate(sd_bus *bus, const char *path, void *userdata, char ***nodes, sd_bus_error *error) {
        Manager *m = userdata;
        char **l = calloc(m->jobs.n_jobs + 1, sizeof(char *));

        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < m->jobs.n_jobs; i++) {
                char p[64];

                job_path(m->jobs.jobs[i], p);
                l[i] = strdup(p);
                if (!l[i]) {
                        for (size_t k = 0; k < i; k++)
                                free(l[k]);
                        free(l);
                        return -ENOMEM;
                }
        }
        *nodes = l;
        return 0;
}

static int method_cancel(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        Job *j = bus_job_from_path(m, sd_bus_message_get_path(msg));

        if (!j)
                return bus_errorf(error, -ENOENT, "No such job");
        if (job_cancel(j) < 0)
                return bus_errorf(error, -EINVAL, "Job has already %s", job_state_to_string(j->state));
        return sd_bus_reply_method_return(msg, NULL);
}

static int property_get(sd_bus *bus, const char *path, const char *interface, const char *property, sd_bus_message *reply,
                        void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        Job *j = bus_job_from_path(m, path);

        if (!j)
                return bus_errorf(error, -ENOENT, "No such job");
        CHECK(bus_authorize_property(m, bus, interface, path, error));
        if (streq(property, "Operation"))
                return sd_bus_message_append(reply, "s", j->operation);
        if (streq(property, "VM"))
                return sd_bus_message_append(reply, "s", j->vm);
        if (streq(property, "Disk"))
                return sd_bus_message_append(reply, "s", j->disk);
        if (streq(property, "State"))
                return sd_bus_message_append(reply, "s", job_state_to_string(j->state));
        if (streq(property, "ErrorName"))
                return sd_bus_message_append(reply, "s", j->state == JOB_DONE || j->state == JOB_RUNNING ? "" : bus_error_name(j->error));
        if (streq(property, "ErrorMessage"))
                return sd_bus_message_append(reply, "s", j->error_message ?: "");
        if (streq(property, "Progress"))
                return sd_bus_message_append(reply, "d", job_progress(j));
        return sd_bus_message_append(reply, "t", streq(property, "BytesDone") ? j->bytes_done : j->bytes_total);
}

BUS_AUTHORIZED(authorized_cancel, method_cancel)

static const sd_bus_vtable job_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Operation", "s", property_get, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("VM", "s", property_get, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Disk", "s", property_get, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Progress", "d", property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BytesDone", "t", property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BytesTotal", "t", property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ErrorName", "s", property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ErrorMessage", "s", property_get, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_ARGS("Cancel", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, authorized_cancel, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("Finished", SD_BUS_ARGS("s", state, "s", error_name, "s", error_message), 0),
        SD_BUS_VTABLE_END,
};

int bus_job_register(Manager *m) {
        int r;

        m->jobs.events = (JobEvents) {
                .progress = on_progress,
                .finished = on_finished,
                .removed = on_removed,
                .userdata = m,
        };
        r = sd_bus_add_fallback_vtable(m->bus, NULL, VDISK_JOB_PREFIX, VDISK_JOB_INTERFACE, job_vtable, job_find, m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the Job objects");
        r = sd_bus_add_node_enumerator(m->bus, NULL, VDISK_JOB_PREFIX, job_enumerate, m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the Job enumerator");
        return 0;
}
