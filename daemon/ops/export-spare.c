/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Spare helpers ([Exports] SpareHelpers=): storage helpers started ahead of any OpenDisk, so that an
 * export's start does not wait for QEMU to start (about 40 of an export's 70 ms). A spare is a helper
 * like any other (the same command line, sandbox and uid switch, a uid of [Exports] HelperUids= that no
 * other live helper has), whose monitor has answered and which holds no file at all: nothing of a disk
 * reaches it before OpenDisk takes it for exactly one lease. Its directory is <runtime>/spares/<id>, <id>
 * its QEMU -name and the lease id it will have; taking it renames the directory to
 * <runtime>/exports/<id>, from where export_start() goes on as with a helper it started itself.
 *
 * The pool refills itself from the event loop: one start at a time, the fork and exec in the loop (a
 * few ms) and the wait for QEMU's greeting an I/O source, so the loop never waits for QEMU. A spare that
 * OpenDisk takes is replaced at once, from OpenDisk itself and whether or not another is starting (the
 * fork and exec only; its QEMU starts while OpenDisk hands the chain to the spare taken). A spare that
 * dies is replaced (after a growing delay if they keep dying); a spare that is still starting when
 * OpenDisk wants one is waited for (less than starting another).
 *
 * A restarted vdiskd stops every spare its previous instance left (export_spares_cleanup(), from
 * spare.json: the pid, checked against the monitor's -name as for exports); vdiskd stops its spares
 * when it exits.
 */

#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <unistd.h>

#include "export.h"
#include "log.h"
#include "util.h"

#define SPARE_STATE "spare.json"
#define SPARE_STATE_MAX 4096U
#define SPARE_RETRY_MIN_USEC (100U * 1000U)
#define SPARE_RETRY_MAX_USEC (60U * 1000000U)
#define SPARE_STOP_TIMEOUT_USEC (5U * 1000000U)
/* The first spare starts this long after vdiskd: a vdiskd that lives shorter (started by D-Bus for one
 * call, or restarted in a loop) starts no QEMU for nothing, and its start is not slowed by one. */
#define SPARE_FIRST_DELAY_USEC (1U * 1000000U)

typedef struct ExportSpare {
        ExportSpares *pool;
        char id[LAYER_ID_LEN + 1];
        char *dir;
        uid_t uid;
        Helper *helper;
        bool ready;                       /* its monitor completed the handshake */
        sd_event_source *greeting, *deadline; /* while starting */
} ExportSpare;

struct ExportSpares {
        const ExportSettings *set;
        const LeaseRegistry *leases;
        sd_event *event;
        ExportSpare **spares;
        size_t n_spares;
        sd_event_source *refill;
        uint64_t retry_usec; /* the delay before the next start after a failure or a death */
};

static int path_join(char **ret, const char *a, const char *b) {
        return asprintf(ret, "%s/%s", a, b) < 0 ? -ENOMEM : 0;
}

static void remove_spare_dir(const char *dir) {
        static const char *const files[] = { HELPER_QMP_SOCKET, HELPER_LOG, SPARE_STATE, SPARE_STATE ".tmp" };

        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                _cleanup_free_ char *p = NULL;
                if (path_join(&p, dir, files[i]) >= 0)
                        (void) unlink(p);
        }
        if (rmdir(dir) < 0 && errno != ENOENT)
                log_warning("Failed to remove %s: %s", dir, strerror(errno));
}

bool export_spares_uses_uid(const ExportSpares *p, uid_t uid) {
        for (size_t i = 0; p && i < p->n_spares; i++)
                if (p->spares[i]->uid == uid)
                        return true;
        return false;
}

static void spare_free(ExportSpare *s) {
        if (!s)
                return;
        s->greeting = sd_event_source_disable_unref(s->greeting);
        s->deadline = sd_event_source_disable_unref(s->deadline);
        helper_free(s->helper);
        free(s->dir);
        free(s);
}

static void pool_remove(ExportSpares *p, ExportSpare *s) {
        for (size_t i = 0; i < p->n_spares; i++)
                if (p->spares[i] == s) {
                        memmove(p->spares + i, p->spares + i + 1, (p->n_spares - i - 1) * sizeof(ExportSpare *));
                        p->n_spares--;
                        return;
                }
}

/* Stops a spare (asking it to quit first if `timeout_usec` > 0), removes its directory and forgets it. */
static void spare_discard(ExportSpare *s, uint64_t timeout_usec) {
        if (s->helper) {
                qmp_client_detach_event(s->helper->qmp);
                (void) helper_stop(s->helper, s->ready ? timeout_usec : 0);
        }
        remove_spare_dir(s->dir);
        pool_remove(s->pool, s);
        spare_free(s);
}

/* The next start of a spare (p->refill, created with the pool), in `delay_usec`. */
static void schedule(ExportSpares *p, uint64_t delay_usec) {
        int r;

        r = sd_event_source_set_time_relative(p->refill, delay_usec);
        if (r >= 0)
                r = sd_event_source_set_enabled(p->refill, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error_errno(r, "Cannot schedule the start of a spare helper");
}

static void schedule_after_failure(ExportSpares *p) {
        uint64_t d = p->retry_usec;

        p->retry_usec = d < SPARE_RETRY_MIN_USEC ? SPARE_RETRY_MIN_USEC : d * 2 > SPARE_RETRY_MAX_USEC ? SPARE_RETRY_MAX_USEC : d * 2;
        schedule(p, d);
}

static int on_spare_event(QmpClient *c, const char *event, json_object *data, void *userdata) {
        ExportSpare *s = userdata;
        ExportSpares *p = s->pool;

        if (event) {
                log_debug("Spare helper pid %d: event %s", (int) s->helper->pid, event);
                return 0;
        }
        log_warning("Spare helper pid %d exited (see %s/%s); starting another", (int) s->helper->pid, s->dir, HELPER_LOG);
        spare_discard(s, 0);
        schedule_after_failure(p);
        return 0;
}

/* The handshake of a spare whose greeting is there (or, from export_spares_take(), will come). */
static int spare_complete(ExportSpare *s, uint64_t timeout_usec) {
        int r;

        s->greeting = sd_event_source_disable_unref(s->greeting);
        s->deadline = sd_event_source_disable_unref(s->deadline);
        r = helper_handshake(s->helper, timeout_usec);
        if (r < 0)
                return r;
        s->ready = true;
        return 0;
}

static int on_greeting(sd_event_source *es, int fd, uint32_t revents, void *userdata) {
        ExportSpare *s = userdata;
        ExportSpares *p = s->pool;
        int r;

        /* The greeting is there (or the helper is gone): the handshake's one round trip is all that is
         * left to wait for. */
        r = spare_complete(s, HELPER_TIMEOUT_USEC);
        if (r >= 0)
                r = qmp_client_attach_event(s->helper->qmp, p->event, SD_EVENT_PRIORITY_NORMAL, on_spare_event, s);
        if (r < 0) {
                log_error_errno(r, "Spare helper pid %d did not start", (int) s->helper->pid);
                spare_discard(s, 0);
                schedule_after_failure(p);
                return 0;
        }
        log_debug("Spare helper %s ready: pid %d, uid %u", s->id, (int) s->helper->pid, (unsigned) s->uid);
        if (p->n_spares < p->set->spare_helpers)
                schedule(p, 0);
        return 0;
}

static int on_deadline(sd_event_source *es, uint64_t usec, void *userdata) {
        ExportSpare *s = userdata;
        ExportSpares *p = s->pool;

        log_error("Spare helper pid %d did not answer on its monitor in time (see %s/%s)", (int) s->helper->pid, s->dir,
                  HELPER_LOG);
        spare_discard(s, 0);
        schedule_after_failure(p);
        return 0;
}

static int save_spare_state(const ExportSpare *s) {
        _cleanup_free_ char *path = NULL, *tmp = NULL, *text = NULL;
        _cleanup_close_ int fd = -EBADF;
        int n;

        n = asprintf(&text, "{\"version\":1,\"pid\":%d,\"uid\":%u}", (int) s->helper->pid, (unsigned) s->uid);
        if (n < 0 || path_join(&path, s->dir, SPARE_STATE) < 0 || path_join(&tmp, s->dir, SPARE_STATE ".tmp") < 0)
                return -ENOMEM;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        if (write(fd, text, (size_t) n) != n)
                return -EIO;
        return rename(tmp, path) < 0 ? negative_errno() : 0;
}

static int mkdir_0700(const char *path) {
        return mkdir(path, 0700) < 0 && errno != EEXIST ? negative_errno() : 0;
}

/* Starts one spare; the rest happens in on_greeting() / on_deadline(). */
static int spare_start(ExportSpares *p) {
        _cleanup_free_ char *spares = NULL;
        HelperSpawn spawn;
        ExportSpare *s, **a;
        int r;

        a = reallocarray(p->spares, p->n_spares + 1, sizeof(ExportSpare *));
        if (!a)
                return -ENOMEM;
        p->spares = a;
        s = calloc(1, sizeof(ExportSpare));
        if (!s)
                return -ENOMEM;
        s->pool = p;
        s->uid = geteuid();
        r = layer_id_new(s->id);
        if (r >= 0)
                r = path_join(&spares, p->set->runtime_dir, "spares");
        if (r >= 0)
                r = path_join(&s->dir, spares, s->id);
        if (r < 0) {
                spare_free(s);
                return r;
        }
        r = mkdir_0700(p->set->runtime_dir);
        if (r >= 0)
                r = mkdir_0700(spares);
        if (r >= 0)
                r = mkdir(s->dir, 0700) < 0 ? negative_errno() : 0;
        if (r < 0) {
                log_error_errno(r, "Cannot create %s", s->dir);
                spare_free(s);
                return r;
        }
        if (geteuid() == 0) {
                r = export_pick_uid(p->set, p->leases, p, &s->uid);
                if (r < 0) {
                        /* Every uid serves an export: tried again later (after a growing delay). */
                        remove_spare_dir(s->dir);
                        spare_free(s);
                        return r;
                }
        }
        spawn = (HelperSpawn) { .binary = p->set->helper, .dir = s->dir, .name = s->id, .switch_uid = geteuid() == 0,
                                .uid = s->uid, .gid = (gid_t) s->uid };
        p->spares[p->n_spares++] = s;
        r = helper_spawn_start(&spawn, &s->helper);
        if (r >= 0)
                r = save_spare_state(s);
        if (r >= 0)
                r = sd_event_add_io(p->event, &s->greeting, qmp_client_fd(s->helper->qmp), EPOLLIN, on_greeting, s);
        if (r >= 0)
                r = sd_event_add_time_relative(p->event, &s->deadline, CLOCK_MONOTONIC, HELPER_TIMEOUT_USEC, 0, on_deadline, s);
        if (r < 0) {
                spare_discard(s, 0);
                return r;
        }
        log_debug("Spare helper %s starting: pid %d, uid %u", s->id, (int) s->helper->pid, (unsigned) s->uid);
        return 1;
}

/* Starts a spare if the pool lacks one and none is starting. */
static void refill(ExportSpares *p) {
        int r;

        for (size_t i = 0; i < p->n_spares; i++)
                if (!p->spares[i]->ready)
                        return; /* one start at a time: on_greeting() schedules the next */
        if (p->n_spares >= p->set->spare_helpers)
                return;
        r = spare_start(p);
        if (r < 0) {
                if (r == -E2BIG)
                        log_debug("No helper uid is free for a spare helper");
                else
                        log_error_errno(r, "Cannot start a spare helper");
                schedule_after_failure(p);
        }
}

static int on_refill(sd_event_source *es, uint64_t usec, void *userdata) {
        refill(userdata);
        return 0;
}

int export_spares_new(const ExportSettings *set, const LeaseRegistry *leases, sd_event *event, ExportSpares **ret) {
        ExportSpares *p;
        int r;

        if (!set->enabled || set->spare_helpers == 0) {
                *ret = NULL;
                return 0;
        }
        p = calloc(1, sizeof(ExportSpares));
        if (!p)
                return -ENOMEM;
        *p = (ExportSpares) { .set = set, .leases = leases, .event = sd_event_ref(event) };
        r = sd_event_add_time_relative(event, &p->refill, CLOCK_MONOTONIC, SPARE_FIRST_DELAY_USEC, 0, on_refill, p);
        if (r < 0) {
                export_spares_free(p);
                return r;
        }
        (void) sd_event_source_set_enabled(p->refill, SD_EVENT_ONESHOT);
        *ret = p;
        return 0;
}

ExportSpares *export_spares_free(ExportSpares *p) {
        if (!p)
                return NULL;
        while (p->n_spares > 0)
                spare_discard(p->spares[p->n_spares - 1], SPARE_STOP_TIMEOUT_USEC);
        free(p->spares);
        sd_event_source_disable_unref(p->refill);
        sd_event_unref(p->event);
        free(p);
        return NULL;
}

/* long because: the checks of a spare before it becomes a lease's helper read best in one place. */
int export_spares_take(ExportSpares *p, const char *exports_dir, Helper **ret_helper, uid_t *ret_uid,
                       char ret_id[static LAYER_ID_LEN + 1]) {
        while (p && p->n_spares > 0) {
                _cleanup_free_ char *state = NULL, *dir = NULL;
                ExportSpare *s = NULL;
                int r;

                /* A ready one first; else the one starting, whose wait is shorter than a new helper's. */
                for (size_t i = 0; !s && i < p->n_spares; i++)
                        if (p->spares[i]->ready)
                                s = p->spares[i];
                if (!s)
                        s = p->spares[0];
                if (!s->ready) {
                        r = spare_complete(s, HELPER_TIMEOUT_USEC);
                        if (r < 0) {
                                spare_discard(s, 0);
                                continue;
                        }
                }
                qmp_client_detach_event(s->helper->qmp);
                if (qmp_client_is_dead(s->helper->qmp) || helper_exited(s->helper)) {
                        log_warning("Spare helper pid %d has exited; trying another", (int) s->helper->pid);
                        spare_discard(s, 0);
                        continue;
                }
                /* Its replacement starts now, before this OpenDisk hands over its chain: a series of
                 * OpenDisk calls (B8 measures 11 back to back) then finds each next spare started one
                 * call earlier, where starting it from the event loop after the answer left it half
                 * started for the next call (65 ms instead of 30 in B8). Started while the spare taken
                 * is still in the pool, so that its uid is not picked again before the lease with it
                 * is registered; not counted against SpareHelpers= with it, and whatever else starts
                 * (one start at a time otherwise). Its fork and exec (a few ms) are this call's. */
                r = spare_start(p);
                if (r == -E2BIG)
                        log_debug("No helper uid is free for a spare helper");
                else if (r < 0)
                        log_error_errno(r, "Cannot start a spare helper in place of the one taken");
                /* Its own from here on, whatever happens: never handed to a second lease. */
                pool_remove(p, s);
                p->retry_usec = 0;
                if (r < 0)
                        schedule(p, 0); /* from the event loop, once this OpenDisk has answered */

                /* Without spare.json first: a vdiskd that dies between the two steps leaves a directory
                 * without state under exports/ or spares/, whose helper is stopped at the next start. */
                r = path_join(&state, s->dir, SPARE_STATE);
                if (r >= 0)
                        r = path_join(&dir, exports_dir, s->id);
                if (r >= 0 && unlink(state) < 0)
                        r = negative_errno();
                if (r >= 0 && rename(s->dir, dir) < 0)
                        r = negative_errno();
                if (r >= 0) {
                        free(s->helper->dir);
                        s->helper->dir = TAKE_PTR(dir);
                }
                if (r < 0) {
                        log_error_errno(r, "Cannot move spare helper %s to %s", s->id, exports_dir);
                        (void) helper_stop(s->helper, 0);
                        remove_spare_dir(s->dir);
                        spare_free(s);
                        return r;
                }
                *ret_helper = TAKE_PTR(s->helper);
                *ret_uid = s->uid;
                memcpy(ret_id, s->id, LAYER_ID_LEN + 1);
                spare_free(s);
                return 1;
        }
        return 0;
}

/* One spare directory a previous vdiskd left: its helper is stopped, the directory removed. */
static void cleanup_one(const char *dir, const char *id) {
        _cleanup_free_ char *path = NULL;
        _cleanup_json_ json_object *st = NULL;
        json_object *v;
        Helper *h = NULL;
        int r = -ENOENT;

        if (path_join(&path, dir, SPARE_STATE) >= 0)
                st = json_object_from_file(path);
        if (st && json_object_object_get_ex(st, "pid", &v) && json_object_is_type(v, json_type_int) &&
            json_object_get_int64(v) > 0 && json_object_get_int64(v) <= INT32_MAX)
                r = helper_attach(dir, id, (pid_t) json_object_get_int64(v), &h);
        if (r >= 0) {
                log_info("Stopping spare helper pid %d left by a previous vdiskd", (int) h->pid);
                (void) helper_stop(h, SPARE_STOP_TIMEOUT_USEC);
                helper_free(h);
        } else if (helper_quit_dir(dir) >= 0) /* no state (yet): whatever answers on its monitor quits */
                log_info("Stopped the spare helper of %s left by a previous vdiskd", dir);
        remove_spare_dir(dir);
}

void export_spares_cleanup(const ExportSettings *set) {
        _cleanup_free_ char *spares = NULL;
        struct dirent *de;
        DIR *d;

        if (path_join(&spares, set->runtime_dir, "spares") < 0)
                return;
        d = opendir(spares);
        if (!d) {
                if (errno != ENOENT)
                        log_error_errno(errno, "Failed to read %s", spares);
                return;
        }
        while ((de = readdir(d))) {
                _cleanup_free_ char *dir = NULL;

                if (de->d_name[0] == '.' || path_join(&dir, spares, de->d_name) < 0)
                        continue;
                if (!layer_id_is_valid(de->d_name)) {
                        log_warning("Ignoring %s: not a spare helper's directory", dir);
                        continue;
                }
                cleanup_one(dir, de->d_name);
        }
        closedir(d);
}
