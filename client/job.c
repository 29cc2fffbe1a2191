/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

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

/* Beyond this the time left means nothing and is not shown. */
#define JOB_LEFT_MAX_USEC (UINT64_C(100) * 3600 * UINT64_C(1000000))

typedef struct JobWatch {
        sd_bus *bus;
        sd_event *event;
        const char *owner; /* vdiskd's unique name: signals from anyone else are not listened to */
        const char *path;
        const char *label;
        bool progress;
        bool bar_drawn;

        sd_bus_slot *getall_slot;
        bool getall_again; /* a signal came while a request was under way: read once more */
        bool removed;      /* the Manager announced JobRemoved */
        bool finished;     /* the job sent Finished */
        bool ended;
        bool detached;
        int error;

        char *state;
        char *error_name;
        char *error_message;
        double fraction;
        uint64_t bytes_done;
        uint64_t bytes_total;
        JobRate rate;
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

void job_rate_add(JobRate *r, uint64_t usec, uint64_t bytes) {
        /* A clock or a counter that goes back starts the window afresh. */
        if (r->n > 0 && (usec < r->last_usec || bytes < r->last_bytes))
                r->n = 0;

        if (r->n == 0 || usec - r->usec[r->n - 1] >= JOB_RATE_INTERVAL_USEC) {
                if (r->n == JOB_RATE_SAMPLES) {
                        memmove(r->usec, r->usec + 1, (JOB_RATE_SAMPLES - 1) * sizeof(r->usec[0]));
                        memmove(r->bytes, r->bytes + 1, (JOB_RATE_SAMPLES - 1) * sizeof(r->bytes[0]));
                        r->n--;
                }
                r->usec[r->n] = usec;
                r->bytes[r->n] = bytes;
                r->n++;
        }
        r->last_usec = usec;
        r->last_bytes = bytes;
}

bool job_rate_get(const JobRate *r, uint64_t bytes_total, uint64_t *ret_rate, uint64_t *ret_left_usec) {
        double rate, left;

        if (r->n == 0 || r->last_usec - r->usec[0] < JOB_RATE_MIN_USEC || r->last_bytes <= r->bytes[0])
                return false;

        rate = (double) (r->last_bytes - r->bytes[0]) * 1e6 / (double) (r->last_usec - r->usec[0]);
        if (bytes_total == 0)
                left = -1.0;
        else if (r->last_bytes >= bytes_total)
                left = 0.0;
        else
                left = (double) (bytes_total - r->last_bytes) * 1e6 / rate;

        *ret_rate = rate < 1.0 ? 1 : rate >= (double) UINT64_MAX ? UINT64_MAX : (uint64_t) rate;
        *ret_left_usec = left < 0.0 || left >= (double) JOB_LEFT_MAX_USEC ? UINT64_MAX : (uint64_t) left;
        return true;
}

/* The longest prefix of s that is at most `width` columns wide, with "..." appended if s was cut;
 * "" if not even that fits. */
static char *cut_to_width(const char *s, size_t width) {
        mbstate_t state = {};
        size_t left = strlen(s), used = 0, end = 0;
        char *t;

        if (utf8_width(s) <= width)
                return strdup(s);
        if (width < 4)
                return strdup("");

        while (left > 0) {
                wchar_t wc;
                size_t n = mbrtowc(&wc, s + end, left, &state);
                int w;

                if (n == (size_t) -1 || n == (size_t) -2 || n == 0) {
                        /* Not decodable: one byte, one column, like utf8_width()'s fallback. */
                        n = 1;
                        w = 1;
                        state = (mbstate_t) {};
                } else
                        w = MAX(wcwidth(wc), 0);
                if (used + (size_t) w > width - 3)
                        break;
                used += (size_t) w;
                end += n;
                left -= n;
        }

        t = malloc(end + 4);
        if (!t)
                return NULL;
        memcpy(t, s, end);
        memcpy(t + end, "...", 4);
        return t;
}

int job_progress_format(const char *label, const JobProgress *p, size_t columns, char **ret) {
        /* What is shown, from everything to the least, in the order the parts are given up. */
        static const struct {
                bool rate, left, bar, bytes;
        } layouts[] = {
                { true, true, true, true },
                { false, true, true, true },
                { false, false, true, true },
                { false, false, false, true },
                { false, false, false, false },
        };
        char done[FORMAT_BYTES_MAX], total[FORMAT_BYTES_MAX], rate[FORMAT_BYTES_MAX], left[FORMAT_DURATION_MAX];
        _cleanup_free_ char *s_percent = NULL, *s_bytes = NULL, *s_rate = NULL, *s_left = NULL, *s_label = NULL,
                            *left_text = NULL, *line = NULL;
        size_t avail = columns > 0 ? columns - 1 : 0, w_label, w_percent, w_bytes, w_rate, w_left, bar = 0;
        size_t pick = ELEMENTSOF(layouts);
        double f = p->fraction;
        FILE *out;
        size_t size;

        if (!(f > 0.0)) /* also catches NaN */
                f = p->bytes_total > 0 ? (double) p->bytes_done / (double) p->bytes_total : 0.0;
        if (f > 1.0)
                f = 1.0;

        if (asprintf(&s_percent, " %3u%%", (unsigned) (f * 100.0)) < 0)
                return -ENOMEM;
        if (p->bytes_total > 0 &&
            asprintf(&s_bytes, " %s/%s", format_bytes(done, sizeof(done), p->bytes_done),
                     format_bytes(total, sizeof(total), p->bytes_total)) < 0)
                return -ENOMEM;
        if (p->rate > 0 && asprintf(&s_rate, " %s/s", format_bytes(rate, sizeof(rate), p->rate)) < 0)
                return -ENOMEM;
        if (p->left_usec != UINT64_MAX) {
                (void) format_duration(left, sizeof(left), p->left_usec);
                /* TRANSLATORS: the time a job still needs, as in "0:19 left" or "1:02:03 left"; keep it short. */
                if (asprintf(&left_text, _("%s left"), left) < 0 || asprintf(&s_left, " %s", left_text) < 0)
                        return -ENOMEM;
        }

        w_label = utf8_width(label);
        w_percent = utf8_width(s_percent);
        w_bytes = s_bytes ? utf8_width(s_bytes) : 0;
        w_rate = s_rate ? utf8_width(s_rate) : 0;
        w_left = s_left ? utf8_width(s_left) : 0;

        for (size_t i = 0; i < ELEMENTSOF(layouts); i++) {
                size_t w = w_label + w_percent + (layouts[i].bytes ? w_bytes : 0) + (layouts[i].rate ? w_rate : 0) +
                           (layouts[i].left ? w_left : 0);

                if (layouts[i].bar) {
                        if (w + 3 + PROGRESS_BAR_MIN > avail)
                                continue;
                        bar = MIN(avail - w - 3, (size_t) PROGRESS_BAR_MAX);
                }
                if (w <= avail) {
                        pick = i;
                        break;
                }
        }

        if (pick < ELEMENTSOF(layouts))
                s_label = strdup(label);
        else {
                /* Not even the label and the percentage fit: cut the label. */
                pick = ELEMENTSOF(layouts) - 1;
                s_label = cut_to_width(label, avail > w_percent ? avail - w_percent : 0);
        }
        if (!s_label)
                return -ENOMEM;

        out = open_memstream(&line, &size);
        if (!out)
                return -ENOMEM;
        if (w_percent <= avail) { /* else nothing fits */
                fputs(s_label, out);
                if (bar > 0) {
                        size_t filled = (size_t) (f * (double) bar);

                        fputs(" [", out);
                        for (size_t i = 0; i < bar; i++)
                                fputc(i < filled ? '#' : '-', out);
                        fputc(']', out);
                }
                fputs(s_percent, out);
                if (layouts[pick].bytes && s_bytes)
                        fputs(s_bytes, out);
                if (layouts[pick].rate && s_rate)
                        fputs(s_rate, out);
                if (layouts[pick].left && s_left)
                        fputs(s_left, out);
        }
        if (fclose(out) != 0)
                return -ENOMEM;

        *ret = TAKE_PTR(line);
        return 0;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * UINT64_C(1000000) + (uint64_t) ts.tv_nsec / 1000;
}

static void job_watch_draw(JobWatch *w) {
        _cleanup_free_ char *line = NULL;
        JobProgress p = {
                .fraction = w->fraction,
                .bytes_done = w->bytes_done,
                .bytes_total = w->bytes_total,
                .left_usec = UINT64_MAX,
        };

        if (!w->progress || job_state_is_final(w->state))
                return;

        job_rate_add(&w->rate, now_usec(), w->bytes_done);
        (void) job_rate_get(&w->rate, w->bytes_total, &p.rate, &p.left_usec);

        if (job_progress_format(w->label, &p, terminal_columns(), &line) < 0)
                return; /* out of memory: the next update tries again */

        fprintf(stderr, "\r%s\033[K", line);
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

static int job_watch_request(JobWatch *w);

static int on_getall_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        JobWatch *w = userdata;
        const sd_bus_error *e;
        int r;

        w->getall_slot = sd_bus_slot_unref(w->getall_slot);

        e = sd_bus_message_get_error(m);
        if (e) {
                /* Gone right after its Finished or JobRemoved (both from vdiskd's own connection): the
                 * state from that signal is all there is. */
                if ((w->removed || w->finished) && job_state_is_final(w->state)) {
                        job_watch_end(w, 0);
                        return 0;
                }
                /* vdiskd exited (a new one would not know the job): its unique name has no owner. */
                if (sd_bus_error_has_names(e, SD_BUS_ERROR_UNKNOWN_OBJECT, SD_BUS_ERROR_UNKNOWN_METHOD,
                                           SD_BUS_ERROR_NAME_HAS_NO_OWNER, SD_BUS_ERROR_SERVICE_UNKNOWN)) {
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
        else {
                job_watch_draw(w);
                if (w->getall_again)
                        (void) job_watch_request(w);
        }
        return 0;
}

static int job_watch_request(JobWatch *w) {
        int r;

        if (w->getall_slot) { /* one request at a time; the answer may predate the signal */
                w->getall_again = true;
                return 0;
        }
        w->getall_again = false;

        r = sd_bus_call_method_async(w->bus, &w->getall_slot, w->owner, w->path,
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

        /* The match only lets vdiskd's own signals through; still, the job's properties have the last
         * word (they are what the signal announced, or the job is not over after all). */
        w->finished = true;
        (void) job_watch_request(w);
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

/* vdiskd's unique name (":1.42"): any local user may send a signal that claims to be from a job, but
 * the bus sets the sender of each message, and only vdiskd's connection has this name. */
static int vdiskd_unique_name(sd_bus *bus, char **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *owner;
        char *s;
        int r;

        r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "GetNameOwner", &error, &reply, "s", VDISK_BUS_NAME);
        if (r < 0) {
                (void) log_call_error(&error, r, _("Failed to find vdiskd on the bus"));
                return r;
        }

        r = sd_bus_message_read(reply, "s", &owner);
        if (r < 0)
                return log_bus_parse_error(r);
        if (owner[0] != ':')
                return log_bus_parse_error(-EPROTO);

        s = strdup(owner);
        if (!s)
                return log_oom();
        *ret = s;
        return 0;
}

int job_follow(sd_bus *bus, const char *path, const char *label, bool progress, JobResult *ret) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *finished_slot = NULL, *changed_slot = NULL, *removed_slot = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_free_ char *owner = NULL;
        JobWatch w = {
                .bus = bus,
                .path = path,
                .label = label,
                .progress = progress,
        };
        sigset_t mask;
        int r;

        r = vdiskd_unique_name(bus, &owner);
        if (r < 0)
                return r;
        w.owner = owner;

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
        r = sd_bus_match_signal(bus, &finished_slot, owner, path, VDISK_JOB_INTERFACE, "Finished",
                                on_finished, &w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, &changed_slot, owner, path,
                                        "org.freedesktop.DBus.Properties", "PropertiesChanged",
                                        on_properties_changed, &w);
        if (r >= 0)
                r = sd_bus_match_signal(bus, &removed_slot, owner, VDISK_MANAGER_PATH,
                                        VDISK_MANAGER_INTERFACE, "JobRemoved", on_job_removed, &w);
        if (r < 0) {
                (void) sd_bus_detach_event(bus);
                return log_error_errno(r, _("Failed to subscribe to the signals of job %s"), path);
        }

        r = sd_bus_call_method(bus, owner, path, "org.freedesktop.DBus.Properties", "GetAll",
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
