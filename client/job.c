/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <systemd/sd-event.h>

#include "bus-util.h"
#include "i18n.h"
#include "job.h"
#include "output.h"
#include "string-util.h"

/* How often the job's properties are read: often enough for a smooth bar on a terminal, otherwise
 * only as a fallback in case a signal was missed. */
#define JOB_POLL_PROGRESS_USEC (UINT64_C(200) * UINT64_C(1000))
#define JOB_POLL_QUIET_USEC (UINT64_C(1000) * UINT64_C(1000))

#define PROGRESS_BAR_MIN 10U
#define PROGRESS_BAR_MAX 50U

typedef struct JobWatch {
        sd_bus *bus;
        sd_event *event;
        const char *path;
        const char *label;
        bool progress;
        bool bar_drawn;

        sd_bus_slot *getall_slot;
        bool removed; /* the Manager announced JobRemoved */
        bool ended;
        bool detached;
        int error;

        char *state;
        char *error_name;
        char *error_message;
        double fraction;
        uint64_t bytes_done;
        uint64_t bytes_total;
} JobWatch;

void job_result_done(JobResult *r) {
        free(r->state);
        free(r->error_name);
        free(r->error_message);
        *r = (JobResult) {};
}

static int set_string(char **p, const char *s) {
        char *t = strdup(s);

        if (!t)
                return -ENOMEM;
        free(*p);
        *p = t;
        return 0;
}

static bool job_state_is_final(const char *state) {
        return state && !streq(state, "running");
}

static unsigned terminal_columns(void) {
        struct winsize ws = {};
        const char *e;

        if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) >= 0 && ws.ws_col > 0)
                return ws.ws_col;
        e = getenv("COLUMNS");
        if (e && atoi(e) > 0)
                return (unsigned) atoi(e);
        return 80;
}

static void job_watch_draw(JobWatch *w) {
        char done[FORMAT_BYTES_MAX], total[FORMAT_BYTES_MAX], suffix[2 * FORMAT_BYTES_MAX + 16];
        double f = w->fraction;
        size_t columns, used, bar = 0;
        unsigned percent;

        if (!w->progress || job_state_is_final(w->state))
                return;

        if (!(f >= 0.0)) /* also catches NaN */
                f = 0.0;
        if (f == 0.0 && w->bytes_total > 0)
                f = (double) w->bytes_done / (double) w->bytes_total;
        if (f > 1.0)
                f = 1.0;
        percent = (unsigned) (f * 100.0);

        if (w->bytes_total > 0)
                (void) snprintf(suffix, sizeof(suffix), " %3u%% %s/%s", percent,
                                format_bytes(done, sizeof(done), w->bytes_done),
                                format_bytes(total, sizeof(total), w->bytes_total));
        else
                (void) snprintf(suffix, sizeof(suffix), " %3u%%", percent);

        /* One column stays free so that the terminal never wraps the line. */
        columns = terminal_columns();
        used = utf8_width(w->label) + 3 + strlen(suffix) + 1;
        if (columns > used)
                bar = MIN(columns - used, (size_t) PROGRESS_BAR_MAX);

        fprintf(stderr, "\r%s", w->label);
        if (bar >= PROGRESS_BAR_MIN) {
                size_t filled = (size_t) (f * (double) bar);

                fputs(" [", stderr);
                for (size_t i = 0; i < bar; i++)
                        fputc(i < filled ? '#' : '-', stderr);
                fputc(']', stderr);
        }
        fputs(suffix, stderr);
        fputs("\033[K", stderr);
        fflush(stderr);
        w->bar_drawn = true;
}

static void job_watch_clear(JobWatch *w) {
        if (!w->bar_drawn)
                return;
        fputs("\r\033[K", stderr);
        fflush(stderr);
        w->bar_drawn = false;
}

static void job_watch_end(JobWatch *w, int error) {
        if (error < 0)
                w->error = error;
        else
                w->ended = true;
        (void) sd_event_exit(w->event, 0);
}

static int job_watch_map(JobWatch *w, sd_bus_message *m) {
        const BusPropertyMap map[] = {
                { "State", 's', &w->state },
                { "Progress", 'd', &w->fraction },
                { "BytesDone", 't', &w->bytes_done },
                { "BytesTotal", 't', &w->bytes_total },
                { "ErrorName", 's', &w->error_name },
                { "ErrorMessage", 's', &w->error_message },
                {}
        };

        return bus_map_properties(m, map);
}

static int on_getall_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        JobWatch *w = userdata;
        const sd_bus_error *e;
        int r;

        w->getall_slot = sd_bus_slot_unref(w->getall_slot);

        e = sd_bus_message_get_error(m);
        if (e) {
                /* Gone together with its JobRemoved: the state from that signal is all there is. */
                if (w->removed && job_state_is_final(w->state)) {
                        job_watch_end(w, 0);
                        return 0;
                }
                if (sd_bus_error_has_names(e, SD_BUS_ERROR_UNKNOWN_OBJECT, SD_BUS_ERROR_UNKNOWN_METHOD)) {
                        job_watch_clear(w);
                        log_error(_("Job %s disappeared before it ended; its result is unknown. Check with 'vdiskctl list-images' or 'vdiskctl chain VM DISK'."),
                                  w->path);
                        job_watch_end(w, -ENXIO);
                        return 0;
                }
                job_watch_clear(w);
                (void) log_call_error(e, sd_bus_message_get_errno(m), _("Failed to read the state of job %s"), w->path);
                job_watch_end(w, -sd_bus_message_get_errno(m) ?: -EIO);
                return 0;
        }

        r = job_watch_map(w, m);
        if (r < 0) {
                job_watch_clear(w);
                job_watch_end(w, log_bus_parse_error(r));
                return 0;
        }

        if (job_state_is_final(w->state))
                job_watch_end(w, 0);
        else
                job_watch_draw(w);
        return 0;
}

static int job_watch_request(JobWatch *w) {
        int r;

        if (w->getall_slot) /* one request at a time */
                return 0;

        r = sd_bus_call_method_async(w->bus, &w->getall_slot, VDISK_BUS_NAME, w->path,
                                     "org.freedesktop.DBus.Properties", "GetAll",
                                     on_getall_reply, w, "s", VDISK_JOB_INTERFACE);
        if (r < 0) {
                job_watch_clear(w);
                job_watch_end(w, log_error_errno(r, _("Failed to read the state of job %s"), w->path));
        }
        return r;
}

static int on_finished(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        JobWatch *w = userdata;
        const char *state, *name, *message;
        int r;

        r = sd_bus_message_read(m, "sss", &state, &name, &message);
        if (r < 0) {
                job_watch_end(w, log_bus_parse_error(r));
                return 0;
        }

        if (set_string(&w->state, state) < 0 ||
            set_string(&w->error_name, name) < 0 ||
            set_string(&w->error_message, message) < 0) {
                job_watch_end(w, log_oom());
                return 0;
        }

        job_watch_end(w, 0);
        return 0;
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        JobWatch *w = userdata;
        const char *interface;
        int r;

        r = sd_bus_message_read(m, "s", &interface);
        if (r < 0 || !streq(interface, VDISK_JOB_INTERFACE))
                return 0;

        r = job_watch_map(w, m);
        if (r < 0) {
                job_watch_end(w, log_bus_parse_error(r));
                return 0;
        }

        /* ErrorName and ErrorMessage may come in a later signal: read them all once more. */
        if (job_state_is_final(w->state))
                (void) job_watch_request(w);
        else
                job_watch_draw(w);
        return 0;
}

static int on_job_removed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        JobWatch *w = userdata;
        const char *path, *state;
        int r;

        r = sd_bus_message_read(m, "os", &path, &state);
        if (r < 0 || !streq(path, w->path))
                return 0;

        if (set_string(&w->state, state) < 0) {
                job_watch_end(w, log_oom());
                return 0;
        }
        w->removed = true;
        (void) job_watch_request(w);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        JobWatch *w = userdata;
        int r;

        (void) job_watch_request(w);

        r = sd_event_source_set_time_relative(s, w->progress ? JOB_POLL_PROGRESS_USEC : JOB_POLL_QUIET_USEC);
        if (r >= 0)
                r = sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
        if (r < 0)
                job_watch_end(w, log_error_errno(r, _("Failed to set up the event loop")));
        return 0;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        JobWatch *w = userdata;

        w->detached = true;
        (void) sd_event_exit(w->event, 0);
        return 0;
}

int job_follow(sd_bus *bus, const char *path, const char *label, bool progress, JobResult *ret) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *finished_slot = NULL, *changed_slot = NULL, *removed_slot = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        JobWatch w = {
                .bus = bus,
                .path = path,
                .label = label,
                .progress = progress,
        };
        sigset_t mask;
        int r;

        r = sd_event_new(&event);
        if (r < 0)
                return log_error_errno(r, _("Failed to set up the event loop"));
        w.event = event;

        /* Ctrl-C and SIGTERM only end the waiting; they never cancel the job. sd-event wants them
         * blocked; they stay blocked until vdiskctl exits so that a second Ctrl-C cannot cut the
         * message short. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(-errno, _("Failed to block signals"));

        r = sd_event_add_signal(event, NULL, SIGINT, on_signal, &w);
        if (r >= 0)
                r = sd_event_add_signal(event, NULL, SIGTERM, on_signal, &w);
        if (r >= 0)
                r = sd_event_add_time_relative(event, NULL, CLOCK_MONOTONIC,
                                               progress ? JOB_POLL_PROGRESS_USEC : JOB_POLL_QUIET_USEC, 0,
                                               on_timer, &w);
        if (r < 0)
                return log_error_errno(r, _("Failed to set up the event loop"));

        r = sd_bus_attach_event(bus, event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, _("Failed to attach the bus connection to the event loop"));

        /* Subscribe first, then read the state: a job that ends in between is not missed. */
        r = sd_bus_match_signal(bus, &finished_slot, VDISK_BUS_NAME, path, VDISK_JOB_INTERFACE, "Finished",
                                on_finished, &w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, &changed_slot, VDISK_BUS_NAME, path,
                                        "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                        on_properties_changed, &w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, &removed_slot, VDISK_BUS_NAME, VDISK_MANAGER_PATH,
                                        VDISK_MANAGER_INTERFACE, "JobRemoved", on_job_removed, &w);
        if (r < 0) {
                (void) sd_bus_detach_event(bus);
                return log_error_errno(r, _("Failed to subscribe to the signals of job %s"), path);
        }

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, path, "org.freedesktop.DBus.Properties", "GetAll",
                               &error, &reply, "s", VDISK_JOB_INTERFACE);
        if (r < 0) {
                (void) sd_bus_detach_event(bus);
                (void) log_call_error(&error, r, _("Failed to read the state of job %s"), path);
                return r;
        }

        r = job_watch_map(&w, reply);
        if (r < 0) {
                (void) sd_bus_detach_event(bus);
                r = log_bus_parse_error(r);
                goto finish;
        }

        if (!job_state_is_final(w.state)) {
                job_watch_draw(&w);
                r = sd_event_loop(event);
                if (r < 0)
                        log_error_errno(r, _("Failed to wait for job %s"), path);
        }
        job_watch_clear(&w);

        w.getall_slot = sd_bus_slot_unref(w.getall_slot);
        (void) sd_bus_detach_event(bus);

        if (r < 0)
                goto finish;
        if (w.detached) {
                r = -EINTR;
                goto finish;
        }
        if (w.error < 0) {
                r = w.error;
                goto finish;
        }

        *ret = (JobResult) {
                .state = w.state,
                .error_name = w.error_name,
                .error_message = w.error_message,
        };
        return 0;

finish:
        free(w.state);
        free(w.error_name);
        free(w.error_message);
        return r;
}
