/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * org.vdisk1.Job: a long operation, stepped from the event loop at idle priority so that bus calls
 * come first, and at least every JOB_TURN_USEC even while calls keep arriving, so that a flood of
 * calls cannot stall it; progress on properties; Finished when done; the object stays for
 * JOB_LINGER_USEC afterwards, then JobRemoved is emitted on the Manager.
 */

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "manager.h"
#include "test-hooks.h"

#define JOB_LINGER_USEC (60 * UINT64_C(1000000))

/* Tests only: a shorter linger (VDISKD_TEST_JOB_LINGER_SEC), e.g. to watch exit-on-idle. */
static uint64_t job_linger_usec(void) {
        return test_hook_job_linger_usec(JOB_LINGER_USEC);
}
#define JOB_PROGRESS_INTERVAL_USEC (200 * UINT64_C(1000))

typedef enum JobState {
        JOB_RUNNING,
        JOB_DONE,
        JOB_FAILED,
        JOB_CANCELLED,
        _JOB_STATE_MAX,
} JobState;

static const char *const job_state_table[_JOB_STATE_MAX] = {
        [JOB_RUNNING] = "running",
        [JOB_DONE] = "done",
        [JOB_FAILED] = "failed",
        [JOB_CANCELLED] = "cancelled",
};

struct Job {
        Manager *manager;
        char path[64];
        char *operation, *vm, *disk;
        uid_t owner;
        JobState state;
        uint64_t bytes_done, bytes_total;
        char *error_name, *error_message;
        const JobOps *ops;
        void *op;
        sd_bus_slot *slot;
        sd_event_source *step_source;
        sd_event_source *linger_source;
        sd_event_source *delay_source;
        sd_event_source *turn_source;
        uint64_t last_step;
        uint64_t last_emit;
};

/* Tests only: a pause between steps (VDISKD_TEST_STEP_DELAY_MS), so that a job can be watched,
 * cancelled or killed midway on small images. */
#define JOB_TURN_USEC (UINT64_C(100) * 1000)

static uint64_t step_delay_usec(void) {
        return test_hook_step_delay_usec();
}

static int job_delay_cb(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;
        j->delay_source = sd_event_source_disable_unref(j->delay_source);
        if (j->step_source)
                (void) sd_event_source_set_enabled(j->step_source, SD_EVENT_ON);
        return 0;
}

const char *job_path(const Job *j) {
        return j->path;
}
const char *job_operation(const Job *j) {
        return j->operation;
}
const char *job_vm(const Job *j) {
        return j->vm;
}
const char *job_disk(const Job *j) {
        return j->disk;
}
bool job_is_running(const Job *j) {
        return j->state == JOB_RUNNING;
}

size_t manager_running_jobs(Manager *m) {
        size_t n = 0;
        for (size_t i = 0; i < m->n_jobs; i++)
                n += job_is_running(m->jobs[i]);
        return n;
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
        sd_bus_slot_unref(j->slot);
        free(j->operation);
        free(j->vm);
        free(j->disk);
        free(j->error_name);
        free(j->error_message);
        free(j);
        return NULL;
}

static void job_unlink(Job *j) {
        Manager *m = j->manager;
        for (size_t i = 0; i < m->n_jobs; i++)
                if (m->jobs[i] == j) {
                        memmove(m->jobs + i, m->jobs + i + 1, (m->n_jobs - i - 1) * sizeof(Job *));
                        m->n_jobs--;
                        return;
                }
}

static int job_linger_cb(sd_event_source *s, uint64_t usec, void *userdata) {
        Job *j = userdata;
        Manager *m = j->manager;

        (void) sd_bus_emit_signal(m->bus, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "JobRemoved", "os", j->path,
                                  job_state_table[j->state]);
        job_unlink(j);
        job_free(j);
        return 0;
}

static void job_emit_progress(Job *j, bool force) {
        uint64_t now;

        (void) sd_event_now(j->manager->event, CLOCK_MONOTONIC, &now);
        if (!force && now - j->last_emit < JOB_PROGRESS_INTERVAL_USEC)
                return;
        j->last_emit = now;
        (void) sd_bus_emit_properties_changed(j->manager->bus, j->path, VDISK_JOB_INTERFACE, "Progress", "BytesDone",
                                              "BytesTotal", NULL);
}

static void job_finish(Job *j, JobState state, int r, const OpError *err) {
        Manager *m = j->manager;

        j->state = state;
        if (state != JOB_DONE) {
                sd_bus_error e = SD_BUS_ERROR_NULL;
                bus_error_from_op(&e, r, err && err->code ? err->reason : NULL);
                j->error_name = strdup(e.name);
                j->error_message = strdup(e.message ?: "");
                sd_bus_error_free(&e);
        }
        j->step_source = sd_event_source_disable_unref(j->step_source);
        j->delay_source = sd_event_source_disable_unref(j->delay_source);
        j->turn_source = sd_event_source_disable_unref(j->turn_source);

        log_op(state == JOB_DONE ? LOG_INFO : LOG_WARNING, j->operation, j->vm, j->disk, NULL, "Job %s %s%s%s", j->path,
               job_state_table[state], j->error_message ? ": " : "", j->error_message ?: "");
        (void) sd_bus_emit_properties_changed(m->bus, j->path, VDISK_JOB_INTERFACE, "State", "Progress", "BytesDone",
                                              "ErrorName", "ErrorMessage", NULL);
        (void) sd_bus_emit_signal(m->bus, j->path, VDISK_JOB_INTERFACE, "Finished", "sss", job_state_table[state],
                                  j->error_name ?: "", j->error_message ?: "");
        /* Clean-up that follows the operation's commit point (removing layers) comes after the news. */
        (void) sd_bus_flush(m->bus);
        if (j->op && j->ops->free)
                j->op = j->ops->free(j->op);
        (void) sd_event_add_time_relative(m->event, &j->linger_source, CLOCK_MONOTONIC, job_linger_usec(), 0,
                                          job_linger_cb, j);
}

static void job_run_step(Job *j) {
        OpError err = {};
        int r;

        (void) sd_event_now(j->manager->event, CLOCK_MONOTONIC, &j->last_step);
        r = j->ops->step(j->op, &err);
        j->bytes_done = j->ops->bytes_done(j->op);
        j->bytes_total = j->ops->bytes_total(j->op);
        if (r > 0) {
                job_emit_progress(j, false);
                if (step_delay_usec() > 0 && !j->delay_source &&
                    sd_event_add_time_relative(j->manager->event, &j->delay_source, CLOCK_MONOTONIC, step_delay_usec(), 0,
                                               job_delay_cb, j) >= 0)
                        (void) sd_event_source_set_enabled(j->step_source, SD_EVENT_OFF);
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

static int job_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                    sd_bus_error *error) {
        Manager *m = userdata;
        for (size_t i = 0; i < m->n_jobs; i++)
                if (streq(m->jobs[i]->path, path)) {
                        *found = m->jobs[i];
                        return 1;
                }
        return 0;
}

static int job_enumerate(sd_bus *bus, const char *path, void *userdata, char ***nodes, sd_bus_error *error) {
        Manager *m = userdata;
        char **l = calloc(m->n_jobs + 1, sizeof(char *));

        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < m->n_jobs; i++) {
                l[i] = strdup(m->jobs[i]->path);
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

static int method_cancel(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        Caller c;
        int r;

        r = auth_caller(j->manager, msg, &c, error);
        if (r < 0)
                return r;
        if (!c.admin && c.uid != j->owner)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Only the job's starter or an administrator may cancel it");
        if (j->state != JOB_RUNNING)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Job has already %s", job_state_table[j->state]);

        if (j->ops->abort)
                j->ops->abort(j->op);
        job_finish(j, JOB_CANCELLED, -ECANCELED, &(OpError) { .code = -ECANCELED, .reason = "Cancelled by the caller" });
        return sd_bus_reply_method_return(msg, NULL);
}

/* Job.* is for administrators and the uid that started the job, reads included (dbus-api.md): a job's
 * properties name VMs, disks and errors. A read outside any incoming call is the daemon's own
 * PropertiesChanged. */
static int job_check_read(Job *j, sd_bus *bus, sd_bus_error *error) {
        sd_bus_message *msg = sd_bus_get_current_message(bus);
        Caller c;
        int r;

        if (!msg)
                return 0;
        r = auth_caller(j->manager, msg, &c, error);
        if (r < 0)
                return r;
        if (!c.admin && c.uid != j->owner)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Only the job's starter or an administrator may read it");
        return 0;
}

#define JOB_PROPERTY_STRING(fn, field)                                                                         \
        static int fn(sd_bus *bus, const char *path, const char *interface, const char *property,             \
                      sd_bus_message *reply, void *userdata, sd_bus_error *error) {                          \
                Job *j = userdata;                                                                             \
                int r = job_check_read(j, bus, error);                                                         \
                if (r < 0)                                                                                     \
                        return r;                                                                              \
                return sd_bus_message_append(reply, "s", (field) ?: "");                                      \
        }

JOB_PROPERTY_STRING(property_operation, j->operation)
JOB_PROPERTY_STRING(property_vm, j->vm)
JOB_PROPERTY_STRING(property_disk, j->disk)
JOB_PROPERTY_STRING(property_state, job_state_table[j->state])
JOB_PROPERTY_STRING(property_error_name, j->error_name)
JOB_PROPERTY_STRING(property_error_message, j->error_message)

static int property_progress(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        double p = j->state == JOB_DONE ? 1.0 : j->bytes_total > 0 ? (double) j->bytes_done / (double) j->bytes_total : 0.0;
        int r = job_check_read(j, bus, error);
        if (r < 0)
                return r;
        return sd_bus_message_append(reply, "d", p > 1.0 ? 1.0 : p);
}

static int property_bytes(sd_bus *bus, const char *path, const char *interface, const char *property,
                          sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Job *j = userdata;
        int r = job_check_read(j, bus, error);
        if (r < 0)
                return r;
        return sd_bus_message_append(reply, "t", streq(property, "BytesDone") ? j->bytes_done : j->bytes_total);
}

static const sd_bus_vtable job_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Operation", "s", property_operation, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("VM", "s", property_vm, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Disk", "s", property_disk, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", property_state, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Progress", "d", property_progress, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BytesDone", "t", property_bytes, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BytesTotal", "t", property_bytes, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ErrorName", "s", property_error_name, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ErrorMessage", "s", property_error_message, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_ARGS("Cancel", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, method_cancel, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("Finished", SD_BUS_ARGS("s", state, "s", error_name, "s", error_message), 0),
        SD_BUS_VTABLE_END,
};

int bus_job_register(Manager *m) {
        int r;

        r = sd_bus_add_fallback_vtable(m->bus, NULL, VDISK_JOB_PREFIX, VDISK_JOB_INTERFACE, job_vtable, job_find, m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the Job objects");
        r = sd_bus_add_node_enumerator(m->bus, NULL, VDISK_JOB_PREFIX, job_enumerate, m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the Job enumerator");
        return 0;
}

int job_start(Manager *m, const char *operation, const char *vm, const char *disk, uid_t owner, const JobOps *ops,
              void *op, const char **ret_path) {
        Job *j, **jobs;
        int r;

        j = calloc(1, sizeof(Job));
        if (!j)
                return -ENOMEM;
        j->manager = m;
        j->owner = owner;
        j->ops = ops;
        j->operation = strdup(operation);
        j->vm = strdup(vm);
        j->disk = strdup(disk);
        snprintf(j->path, sizeof(j->path), VDISK_JOB_PREFIX "/%" PRIu64, ++m->job_counter);
        if (!j->operation || !j->vm || !j->disk) {
                job_free(j);
                return -ENOMEM;
        }

        r = sd_event_add_defer(m->event, &j->step_source, job_step_cb, j);
        if (r >= 0)
                r = sd_event_source_set_priority(j->step_source, SD_EVENT_PRIORITY_IDLE);
        if (r >= 0)
                r = sd_event_source_set_enabled(j->step_source, SD_EVENT_ON);
        /* Inspect is open to anyone: a flood of it must not stall the jobs of others. */
        if (r >= 0)
                r = sd_event_add_time_relative(m->event, &j->turn_source, CLOCK_MONOTONIC, JOB_TURN_USEC, 0, job_turn_cb, j);
        if (r < 0) {
                job_free(j);
                return r;
        }

        jobs = reallocarray(m->jobs, m->n_jobs + 1, sizeof(Job *));
        if (!jobs) {
                job_free(j);
                return -ENOMEM;
        }
        m->jobs = jobs;
        m->jobs[m->n_jobs++] = j;
        /* Only now does the job own the operation. */
        j->op = op;
        j->bytes_total = ops->bytes_total(op);
        *ret_path = j->path;
        return 0;
}

void manager_free_jobs(Manager *m);
void manager_free_jobs(Manager *m) {
        for (size_t i = 0; i < m->n_jobs; i++) {
                Job *j = m->jobs[i];
                if (j->state == JOB_RUNNING && j->ops->abort)
                        j->ops->abort(j->op);
                job_free(j);
        }
        free(m->jobs);
        m->jobs = NULL;
        m->n_jobs = 0;
}
