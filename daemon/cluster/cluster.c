/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Cluster mode over libsanlock: one registered connection, the lockspace joined from the event loop,
 * counted resource leases at offsets from sanlock's resource index. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "config.h"
#include "log.h"
#include "util.h"

#if HAVE_SANLOCK
#include <sanlock.h>
#include <sanlock_admin.h>
#include <sanlock_resource.h>
#include <sanlock_rv.h>
#endif

static const char *const cluster_mode_table[_CLUSTER_MODE_MAX] = {
        [CLUSTER_MODE_LOCAL] = "local",
        [CLUSTER_MODE_SANLOCK] = "sanlock",
};

const char *cluster_mode_to_string(ClusterMode m) {
        return m >= 0 && m < _CLUSTER_MODE_MAX ? cluster_mode_table[m] : NULL;
}

ClusterMode cluster_mode_from_string(const char *s) {
        for (int i = 0; i < _CLUSTER_MODE_MAX; i++)
                if (streq_ptr(s, cluster_mode_table[i]))
                        return i;
        return _CLUSTER_MODE_INVALID;
}

void cluster_settings_init_default(ClusterSettings *s) {
        *s = (ClusterSettings) { .mode = CLUSTER_MODE_LOCAL, .io_timeout = CLUSTER_DEFAULT_IO_TIMEOUT };
}

void cluster_settings_done(ClusterSettings *s) {
        free(s->lockspace);
        free(s->leases);
        *s = (ClusterSettings) {};
}

/* "NAME:PATH": the name up to the first ':' (1..47 bytes of [A-Za-z0-9_.-]), then an absolute path. */
static int split_lockspace(const char *v, char name[static 48], const char **ret_path) {
        const char *colon = v ? strchr(v, ':') : NULL;
        size_t n;

        if (!colon)
                return -EINVAL;
        n = (size_t) (colon - v);
        if (n == 0 || n > 47)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", v[i]))
                        return -EINVAL;
        if (colon[1] != '/' || strlen(colon + 1) >= 1024)
                return -EINVAL;
        memcpy(name, v, n);
        name[n] = 0;
        *ret_path = colon + 1;
        return 0;
}

int cluster_settings_check(const ClusterSettings *s, const char **ret_why) {
        char name[48];
        const char *path;

        if (s->mode != CLUSTER_MODE_SANLOCK)
                return 0;
        if (s->host_id < 1 || s->host_id > CLUSTER_MAX_HOST_ID) {
                *ret_why = "[Cluster] HostId= must be set, from 1 to 2000, unique among the hosts";
                return -EINVAL;
        }
        if (split_lockspace(s->lockspace, name, &path) < 0) {
                *ret_why = "[Cluster] Lockspace= must be NAME:PATH (a name of at most 47 characters [A-Za-z0-9_.-], an absolute path)";
                return -EINVAL;
        }
        if (!s->leases || s->leases[0] != '/' || strlen(s->leases) >= 1024) {
                *ret_why = "[Cluster] Leases= must be the absolute path of the lease area";
                return -EINVAL;
        }
        if (s->io_timeout < 1 || s->io_timeout > 300) {
                *ret_why = "[Cluster] IoTimeout= must be from 1 to 300 seconds";
                return -EINVAL;
        }
        return 0;
}

bool cluster_supported(void) {
        return HAVE_SANLOCK;
}

#if HAVE_SANLOCK

typedef struct Held {
        char name[CLUSTER_NAME_MAX + 1];
        uint64_t offset;
        unsigned n_shared, n_exclusive;
        bool exclusive;  /* the mode sanlock holds it in */
        bool persistent; /* SANLK_RES_PERSISTENT: an orphan, not released, when vdiskd's connection closes */
} Held;

typedef struct Offset {
        char name[CLUSTER_NAME_MAX + 1];
        uint64_t offset;
} Offset;

struct Cluster {
        char lockspace_name[48];
        char lockspace_path[1024];
        char leases_path[1024];
        uint64_t host_id;
        uint32_t io_timeout;
        int sock;
        bool joined;
        bool join_logged;
        bool wait_gone; /* fenced: the lockspace sanlock still has is the lost one; join once it is gone */
        uint64_t fresh_until; /* CLOCK_MONOTONIC µs: until then the renewal counts as fresh without asking */
        bool stale_logged;
        sd_event_source *join_timer;
        sd_event_source *fence_source;
        ClusterJoinedHandler joined_handler;
        void *joined_userdata;
        ClusterFenceHandler fence_handler;
        void *fence_userdata;
        Held *held;
        size_t n_held;
        Offset *offsets; /* resource offsets found in the index: they never move while the name is in it */
        size_t n_offsets;
};

/* A resource with its one disk, as libsanlock wants it (struct sanlk_resource ends in a flexible array). */
typedef struct Resource {
        struct sanlk_resource res;
        struct sanlk_disk disk;
} Resource;

static uint64_t fnv1a(const char *s, uint64_t h) {
        for (; *s; s++)
                h = (h ^ (uint8_t) *s) * UINT64_C(1099511628211);
        return h;
}

/* sanlock names have at most 48 bytes: a longer name keeps its kind (up to ':') and becomes a hash. Two
 * names with one hash would share a lease: more exclusion than needed, never less. */
static void sanlock_name(const char *name, char out[static SANLK_NAME_LEN]) {
        memset(out, 0, SANLK_NAME_LEN);
        if (strlen(name) < SANLK_NAME_LEN) {
                memcpy(out, name, strlen(name));
                return;
        }
        snprintf(out, SANLK_NAME_LEN, "%.8s#%016" PRIx64 "%016" PRIx64, name, fnv1a(name, UINT64_C(14695981039346656037)),
                 fnv1a(name, UINT64_C(0x84222325cbf29ce4)));
}

static void resource_init(const Cluster *c, Resource *r, const char *name, uint64_t offset, bool shared, bool persistent) {
        *r = (Resource) {};
        memcpy(r->res.lockspace_name, c->lockspace_name, SANLK_NAME_LEN);
        sanlock_name(name, r->res.name);
        r->res.num_disks = 1;
        r->res.flags = (shared ? SANLK_RES_SHARED : 0) | (persistent ? SANLK_RES_PERSISTENT : 0);
        memcpy(r->disk.path, c->leases_path, SANLK_PATH_LEN);
        r->disk.offset = offset;
}

static void lockspace_init(const Cluster *c, struct sanlk_lockspace *ls) {
        *ls = (struct sanlk_lockspace) { .host_id = c->host_id };
        memcpy(ls->name, c->lockspace_name, SANLK_NAME_LEN);
        memcpy(ls->host_id_disk.path, c->lockspace_path, SANLK_PATH_LEN);
}

/* A registered connection (its pid is vdiskd's) with vdiskd's kill path: sanlock runs `kill -USR2 PID`
 * rather than sending SIGTERM when this host must give up its leases. The pid is in the arguments, not
 * added by SANLK_KILLPATH_PID: sanlock adds it only when a lockspace fails, not for a host's request. */
static int register_connection(Cluster *c) {
        char args[64];
        int sock, r;

        sock = sanlock_register();
        if (sock < 0) {
                log_error("Cannot register with the sanlock daemon (%d): is sanlock running?", sock);
                return -ECONNREFUSED;
        }
        snprintf(args, sizeof(args), "-%s %d", sigabbrev_np(CLUSTER_FENCE_SIGNAL), (int) getpid());
        r = sanlock_killpath(sock, 0, KILL_PATH, args);
        if (r < 0) /* sanlock then sends SIGTERM: vdiskd stops, the lockspace's leases with it */
                log_warning("Cannot register the kill path %s %s with sanlock (%d): losing the lockspace stops vdiskd",
                            KILL_PATH, args, r);
        return sock;
}

/* Drops what is left after the fence handler: every lease of this connection, which sanlock will kill no
 * more once it holds nothing; then a new connection, and the lockspace joined again. */
static void fence_drop(Cluster *c) {
        struct sanlk_lockspace ls;
        int r;

        for (size_t i = 0; i < c->n_held; i++)
                log_error("Lockspace %s: lease %s still held after the fence: released", c->lockspace_name, c->held[i].name);
        if (c->sock >= 0) {
                r = sanlock_release(c->sock, -1, SANLK_REL_ALL, 0, NULL);
                if (r < 0 && r != -ENOENT)
                        log_warning("Lockspace %s: cannot release the leases of vdiskd's connection (%d)", c->lockspace_name, r);
        }
        c->n_held = 0;
        c->sock = safe_close(c->sock);
        c->sock = register_connection(c); /* if it fails, the join poll tries again */

        /* A lost lockspace goes on being renewed nowhere: ask sanlock to drop it now that vdiskd uses
         * nothing in it (SANLK_REM_UNUSED: never if another process, e.g. a VM of libvirt's sanlock
         * driver, still does; then it stays, and a lockspace sanlock still has counts as joined). */
        lockspace_init(c, &ls);
        r = sanlock_rem_lockspace(&ls, SANLK_REM_ASYNC | SANLK_REM_UNUSED);
        c->wait_gone = r != -EBUSY;
        c->join_logged = false;
        log_error("Lockspace %s: every lease of this host dropped; cluster operations answer NotJoined until the "
                  "lockspace is joined again", c->lockspace_name);
        r = sd_event_source_set_time_relative(c->join_timer, 0);
        if (r >= 0)
                r = sd_event_source_set_enabled(c->join_timer, SD_EVENT_ONESHOT);
        if (r < 0)
                log_error("Lockspace %s: cannot start joining it again (%s)", c->lockspace_name, strerror(-r));
}

static int fence_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Cluster *c = userdata;

        log_error("Lockspace %s: sanlock ran vdiskd's kill path (signal from pid %" PRIu32 "): the lockspace is lost "
                  "(its storage did not answer for %" PRIu32 " s) or a host asked for this host's leases; fencing: "
                  "jobs are cancelled, holders of read-write leases stopped, then every lease dropped",
                  c->lockspace_name, si->ssi_pid, 8 * c->io_timeout);
        c->joined = false; /* from now on every acquire answers NotJoined */
        if (c->fence_handler)
                c->fence_handler(c, c->fence_userdata);
        fence_drop(c);
        return 0;
}

static int join_poll(sd_event_source *s, uint64_t usec, void *userdata) {
        Cluster *c = userdata;
        struct sanlk_lockspace ls;
        int r;

        if (c->sock < 0)
                c->sock = register_connection(c);
        lockspace_init(c, &ls);
        r = sanlock_inq_lockspace(&ls, 0);
        if (c->wait_gone) {
                /* After a fence: the lockspace sanlock still lists is the lost one, until it has dropped it. */
                if (r == 0)
                        goto again;
                c->wait_gone = false;
        }
        if (r == 0 && c->sock >= 0) {
                c->joined = true;
                log_info("Joined lockspace %s as host %" PRIu64 " (sanlock)", c->lockspace_name, c->host_id);
                r = sd_event_source_set_enabled(s, SD_EVENT_OFF);
                if (c->joined_handler)
                        c->joined_handler(c, c->joined_userdata);
                return r;
        }
        if (r == -ENOENT) {
                /* Not being added (any more): the add failed, e.g. the host id is another live host's. Try
                 * again; the message once. */
                r = sanlock_add_lockspace_timeout(&ls, SANLK_ADD_ASYNC, c->io_timeout);
                if (r < 0 && r != -EINPROGRESS && r != -EEXIST && !c->join_logged) {
                        log_error("Cannot join lockspace %s as host %" PRIu64 ": %s (%d); retrying", c->lockspace_name,
                                  c->host_id, r < -200 ? sanlock_strerror(r) : strerror(-r), r);
                        c->join_logged = true;
                }
        }
again:
        r = sd_event_source_set_time_relative(s, CLUSTER_JOIN_POLL_USEC);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(s, SD_EVENT_ONESHOT);
}

int cluster_new(const ClusterSettings *s, sd_event *event, Cluster **ret) {
        _cleanup_free_ Cluster *c = NULL;
        struct sanlk_lockspace ls;
        const char *path;
        int r;

        c = calloc(1, sizeof(Cluster));
        if (!c)
                return -ENOMEM;
        c->sock = -EBADF;
        if (split_lockspace(s->lockspace, c->lockspace_name, &path) < 0)
                return -EINVAL;
        snprintf(c->lockspace_path, sizeof(c->lockspace_path), "%s", path);
        snprintf(c->leases_path, sizeof(c->leases_path), "%s", s->leases);
        c->host_id = s->host_id;
        c->io_timeout = s->io_timeout;

        c->sock = register_connection(c);
        if (c->sock < 0)
                return c->sock;

        lockspace_init(c, &ls);
        r = sanlock_add_lockspace_timeout(&ls, SANLK_ADD_ASYNC, c->io_timeout);
        if (r == -EAGAIN) {
                /* sanlock still removes this lockspace (a vdiskd of this host lost it just before): what it
                 * lists now is the lost one; join_poll() adds it again once it is gone. */
                log_warning("Lockspace %s: sanlock is still giving up its previous instance; joining once that is done",
                            c->lockspace_name);
                c->wait_gone = true;
                r = 0;
        }
        if (r < 0 && r != -EEXIST && r != -EINPROGRESS) {
                safe_close(c->sock);
                return log_error_errno(EIO, "Cannot join lockspace %s at %s as host %" PRIu64 ": %s (%d)", c->lockspace_name,
                                       c->lockspace_path, c->host_id, r < -200 ? sanlock_strerror(r) : strerror(-r), r);
        }
        log_info("Joining lockspace %s at %s as host %" PRIu64 " (io_timeout %" PRIu32 " s)", c->lockspace_name, c->lockspace_path,
                 c->host_id, c->io_timeout);
        r = sd_event_add_time_relative(event, &c->join_timer, CLOCK_MONOTONIC, 0, 0, join_poll, c);
        if (r >= 0) {
                sigset_t ss;
                sigemptyset(&ss);
                sigaddset(&ss, CLUSTER_FENCE_SIGNAL);
                r = sigprocmask(SIG_BLOCK, &ss, NULL) < 0 ? -errno : 0;
        }
        if (r >= 0)
                r = sd_event_add_signal(event, &c->fence_source, CLUSTER_FENCE_SIGNAL, fence_signal, c);
        if (r < 0) {
                sd_event_source_disable_unref(c->join_timer);
                safe_close(c->sock);
                return r;
        }
        *ret = TAKE_PTR(c);
        return 0;
}

Cluster *cluster_free(Cluster *c) {
        if (!c)
                return NULL;
        sd_event_source_disable_unref(c->join_timer);
        sd_event_source_disable_unref(c->fence_source);
        /* Closing the registered connection releases every lease it holds. */
        safe_close(c->sock);
        free(c->held);
        free(c->offsets);
        free(c);
        return NULL;
}

bool cluster_joined(const Cluster *c) {
        return c && c->joined;
}

void cluster_set_joined_handler(Cluster *c, ClusterJoinedHandler handler, void *userdata) {
        if (!c)
                return;
        c->joined_handler = handler;
        c->joined_userdata = userdata;
        if (c->joined && handler)
                handler(c, userdata);
}

uint64_t cluster_host_id(const Cluster *c) {
        return c ? c->host_id : 0;
}

void cluster_set_fence_handler(Cluster *c, ClusterFenceHandler handler, void *userdata) {
        if (!c)
                return;
        c->fence_handler = handler;
        c->fence_userdata = userdata;
}

const char *cluster_lockspace_name(const Cluster *c) {
        return c ? c->lockspace_name : NULL;
}

/* sanlock_get_hosts() for this host: the timestamp its delta lease carried when last read back during a
 * renewal, in seconds of this host's CLOCK_MONOTONIC — one renewal interval (2 × IoTimeout) behind, so
 * never less than the true age (3–6 s on a healthy host with IoTimeout=1). sanlock gives up at 8 ×
 * IoTimeout, others may take the leases 60 s later: the limit sits between (docs/design.md, "the gate"). */
#define RENEWAL_LIMIT(io) MIN(10U * (uint64_t) (io), 8U * (uint64_t) (io) + 30U)
#define USEC_PER_SEC UINT64_C(1000000)

static uint64_t monotonic_usec(void) {
        struct timespec t;
        return clock_gettime(CLOCK_MONOTONIC, &t) < 0 ? 0 : (uint64_t) t.tv_sec * USEC_PER_SEC + (uint64_t) t.tv_nsec / 1000;
}

bool cluster_renewal_fresh(Cluster *c) {
        struct sanlk_host *hs = NULL;
        uint64_t now = monotonic_usec(), now_s = now / USEC_PER_SEC, limit, age, ts;
        int n = 0, r;

        if (!c)
                return true;
        if (!c->joined)
                return false;
        if (now < c->fresh_until)
                return true;
        r = sanlock_get_hosts(c->lockspace_name, c->host_id, &hs, &n, 0);
        ts = r >= 0 && n >= 1 && hs ? hs[0].timestamp : 0;
        free(hs);
        if (r == -EAGAIN) /* joined so recently that sanlock has not read the leases back yet */
                return true;
        if (ts == 0) {
                if (!c->stale_logged)
                        log_error("Lockspace %s: sanlock cannot tell when this host last renewed its lease (%d): jobs wait",
                                  c->lockspace_name, r < 0 ? r : -ENOENT);
                c->stale_logged = true;
                return false;
        }
        limit = RENEWAL_LIMIT(c->io_timeout);
        age = now_s > ts ? now_s - ts : 0;
        if (age >= limit) {
                if (!c->stale_logged)
                        log_error("Lockspace %s: this host's lease was last renewed %" PRIu64 " s ago (limit %" PRIu64 " s): "
                                  "nothing is written for it until it is renewed or the lockspace is given up",
                                  c->lockspace_name, age, limit);
                c->stale_logged = true;
                return false;
        }
        if (c->stale_logged)
                log_notice("Lockspace %s: this host's lease is renewed again (%" PRIu64 " s ago)", c->lockspace_name, age);
        c->stale_logged = false;
        c->fresh_until = now + MIN(USEC_PER_SEC, (limit - age - 1) * USEC_PER_SEC);
        return true;
}

static Held *held_find(Cluster *c, const char *name) {
        for (size_t i = 0; i < c->n_held; i++)
                if (streq(c->held[i].name, name))
                        return &c->held[i];
        return NULL;
}

static int rindex_call(Cluster *c, const char *name, bool create, uint64_t *ret) {
        struct sanlk_rindex rx = {};
        struct sanlk_rentry re = {};
        int r;

        memcpy(rx.lockspace_name, c->lockspace_name, SANLK_NAME_LEN);
        memcpy(rx.disk.path, c->leases_path, SANLK_PATH_LEN);
        sanlock_name(name, re.name);
        r = create ? sanlock_create_resource(&rx, 0, &re, 0, 0) : sanlock_lookup_rindex(&rx, 0, &re);
        if (r < 0)
                return r;
        *ret = re.offset;
        return 0;
}

/* The offset of the resource `name`, created in the index if it is not there. Two hosts may create one
 * name at once: the index then has it twice, and every host takes the first entry (lookup returns the
 * lowest offset; entries are never removed, so the first one never changes). */
static int resource_offset(Cluster *c, const char *name, uint64_t *ret) {
        Offset *o;
        int r;

        for (size_t i = 0; i < c->n_offsets; i++)
                if (streq(c->offsets[i].name, name)) {
                        *ret = c->offsets[i].offset;
                        return 0;
                }
        r = rindex_call(c, name, false, ret);
        if (r < 0) {
                uint64_t created;
                r = rindex_call(c, name, true, &created);
                if (r < 0)
                        return log_error_errno(EIO, "Cannot create the lease %s in the index of %s: %s (%d)", name,
                                               c->leases_path, r < -200 ? sanlock_strerror(r) : strerror(-r), r);
                r = rindex_call(c, name, false, ret);
                if (r < 0)
                        return log_error_errno(EIO, "Cannot find the lease %s just created in %s (%d)", name, c->leases_path, r);
        }
        o = reallocarray(c->offsets, c->n_offsets + 1, sizeof(Offset));
        if (!o)
                return -ENOMEM;
        c->offsets = o;
        snprintf(o[c->n_offsets].name, sizeof(o->name), "%s", name);
        o[c->n_offsets++].offset = *ret;
        return 0;
}

/* Another host's id among the resource's owners, 0 if sanlock cannot tell. */
static uint64_t resource_owner(Cluster *c, const char *name, uint64_t offset) {
        struct sanlk_host *hosts = NULL;
        Resource res;
        uint64_t owner = 0;
        int n = 0;

        resource_init(c, &res, name, offset, false, false);
        if (sanlock_read_resource_owners(&res.res, 0, &hosts, &n) < 0)
                return 0;
        for (int i = 0; i < n; i++)
                if (hosts[i].host_id != c->host_id) {
                        owner = hosts[i].host_id;
                        break;
                }
        free(hosts);
        return owner;
}

static bool conflict(int r) {
        switch (r) {
        case SANLK_ACQUIRE_IDLIVE:
        case SANLK_ACQUIRE_OWNED:
        case SANLK_ACQUIRE_OTHER:
        case SANLK_ACQUIRE_SHRETRY:
        case SANLK_ACQUIRE_OWNED_RETRY:
        case -EAGAIN:
        case -EBUSY:
                return true;
        default:
                return false;
        }
}

static int sanlock_failed(Cluster *c, const char *what, const char *name, int r, uint64_t offset, uint64_t *ret_owner) {
        if (conflict(r)) {
                if (ret_owner)
                        *ret_owner = resource_owner(c, name, offset);
                return -EBUSY;
        }
        return log_error_errno(EIO, "Cannot %s lease %s: %s (%d)", what, name, r < -200 ? sanlock_strerror(r) : strerror(-r), r);
}

static int held_add(Cluster *c, const char *name, uint64_t offset, bool exclusive, bool persistent) {
        Held *h = reallocarray(c->held, c->n_held + 1, sizeof(Held));

        if (!h)
                return -ENOMEM;
        c->held = h;
        h = &c->held[c->n_held++];
        *h = (Held) { .offset = offset, .exclusive = exclusive, .persistent = persistent, .n_exclusive = exclusive,
                      .n_shared = !exclusive };
        snprintf(h->name, sizeof(h->name), "%s", name);
        return 0;
}

int cluster_acquire(Cluster *c, const char *name, bool exclusive, bool persistent, uint64_t *ret_owner) {
        struct sanlk_resource *list[1];
        Resource res;
        Held *h;
        uint64_t offset;
        int r;

        if (ret_owner)
                *ret_owner = 0;
        if (!c->joined)
                return -EHOSTDOWN;
        if (strlen(name) > CLUSTER_NAME_MAX)
                return -EINVAL;
        if (!cluster_renewal_fresh(c))
                return -ENOLINK;

        h = held_find(c, name);
        if (h) {
                if (exclusive && !h->exclusive) {
                        resource_init(c, &res, name, h->offset, false, h->persistent);
                        r = sanlock_convert(c->sock, -1, SANLK_CONVERT_OWNER_NOWAIT, &res.res);
                        if (r < 0)
                                return sanlock_failed(c, "convert to exclusive the", name, r, h->offset, ret_owner);
                        h->exclusive = true;
                }
                if (exclusive)
                        h->n_exclusive++;
                else
                        h->n_shared++;
                return 0;
        }

        r = resource_offset(c, name, &offset);
        if (r < 0)
                return r;
        resource_init(c, &res, name, offset, !exclusive, persistent);
        list[0] = &res.res;
        r = sanlock_acquire(c->sock, -1, SANLK_ACQUIRE_OWNER_NOWAIT, 1, list, NULL);
        if (r < 0)
                return sanlock_failed(c, "acquire", name, r, offset, ret_owner);
        r = held_add(c, name, offset, exclusive, persistent);
        if (r < 0) {
                (void) sanlock_release(c->sock, -1, 0, 1, list);
                return r;
        }
        return 1;
}

int cluster_acquire_version(Cluster *c, const char *name, uint64_t version, uint64_t *ret_owner) {
        struct sanlk_resource *list[1];
        Resource res;
        uint64_t offset;
        int r;

        if (ret_owner)
                *ret_owner = 0;
        if (!c->joined)
                return -EHOSTDOWN;
        if (strlen(name) > CLUSTER_NAME_MAX || version == 0)
                return -EINVAL;
        if (!cluster_renewal_fresh(c))
                return -ENOLINK;
        if (held_find(c, name))
                return -EBUSY; /* a local user holds it: not a hand-over */
        r = resource_offset(c, name, &offset);
        if (r < 0)
                return r;
        resource_init(c, &res, name, offset, false, true);
        res.res.flags |= SANLK_RES_LVER;
        res.res.lver = version;
        list[0] = &res.res;
        r = sanlock_acquire(c->sock, -1, SANLK_ACQUIRE_OWNER_NOWAIT, 1, list, NULL);
        if (r == SANLK_ACQUIRE_LVER)
                return -ESTALE;
        if (r < 0)
                return sanlock_failed(c, "acquire (hand-over) the", name, r, offset, ret_owner);
        r = held_add(c, name, offset, true, true);
        if (r < 0) {
                (void) sanlock_release(c->sock, -1, 0, 1, list);
                return r;
        }
        return 1;
}

int cluster_version(Cluster *c, const char *name, uint64_t *ret) {
        Resource res;
        uint64_t offset;
        Held *h;
        int r;

        if (!c->joined)
                return -EHOSTDOWN;
        h = held_find(c, name);
        if (h)
                offset = h->offset;
        else {
                r = resource_offset(c, name, &offset);
                if (r < 0)
                        return r;
        }
        resource_init(c, &res, name, offset, false, false);
        r = sanlock_read_resource(&res.res, 0);
        if (r < 0)
                return log_error_errno(EIO, "Cannot read lease %s: %s (%d)", name, r < -200 ? sanlock_strerror(r) : strerror(-r), r);
        *ret = res.res.lver;
        return 0;
}

int cluster_adopt(Cluster *c, const char *name, bool exclusive) {
        struct sanlk_resource *list[1];
        Resource res;
        Held *h;
        uint64_t offset;
        int r;

        if (!c->joined)
                return -EHOSTDOWN;
        if (strlen(name) > CLUSTER_NAME_MAX)
                return -EINVAL;
        h = held_find(c, name);
        if (h) {
                /* Another lease of this host adopted it already (read-only leases of one disk share it). */
                if (exclusive != h->exclusive || !h->persistent)
                        return -EBUSY;
                if (exclusive)
                        h->n_exclusive++;
                else
                        h->n_shared++;
                return 0;
        }
        r = resource_offset(c, name, &offset);
        if (r < 0)
                return r;
        resource_init(c, &res, name, offset, !exclusive, true);
        list[0] = &res.res;
        /* Only an orphan of this host's sanlock daemon (held by the connection of a vdiskd that is gone)
         * is taken over: never a lease free on disk, never one of another host. */
        r = sanlock_acquire(c->sock, -1, SANLK_ACQUIRE_ORPHAN_ONLY, 1, list, NULL);
        if (r == -ENOENT)
                return -ENOENT;
        if (r < 0)
                return log_error_errno(EIO, "Cannot adopt the orphan lease %s: %s (%d)", name,
                                       r < -200 ? sanlock_strerror(r) : strerror(-r), r);
        r = held_add(c, name, offset, exclusive, true);
        if (r < 0) {
                (void) sanlock_release(c->sock, -1, 0, 1, list);
                return r;
        }
        return 1;
}

void cluster_release_orphans(Cluster *c) {
        struct sanlk_resource *list[1];
        Resource res = {};
        int r;

        if (!c->joined)
                return;
        /* An empty resource name: every orphan of this lockspace on this host. */
        memcpy(res.res.lockspace_name, c->lockspace_name, SANLK_NAME_LEN);
        list[0] = &res.res;
        r = sanlock_release(c->sock, -1, SANLK_REL_ORPHAN, 1, list);
        if (r < 0 && r != -ENOENT)
                log_warning("Cannot release the orphan leases of lockspace %s (%d)", c->lockspace_name, r);
}

void cluster_release(Cluster *c, const char *name, bool exclusive) {
        struct sanlk_resource *list[1];
        Resource res;
        Held *h = held_find(c, name);
        int r;

        if (!h)
                return;
        if (exclusive && h->n_exclusive > 0)
                h->n_exclusive--;
        else if (!exclusive && h->n_shared > 0)
                h->n_shared--;

        resource_init(c, &res, name, h->offset, false, h->persistent);
        if (h->n_exclusive + h->n_shared > 0) {
                if (h->exclusive && h->n_exclusive == 0) {
                        res.res.flags |= SANLK_RES_SHARED;
                        r = sanlock_convert(c->sock, -1, 0, &res.res);
                        if (r < 0)
                                log_warning("Cannot convert lease %s to shared (%d); it stays exclusive", name, r);
                        else
                                h->exclusive = false;
                }
                return;
        }
        list[0] = &res.res;
        r = sanlock_release(c->sock, -1, 0, 1, list);
        if (r < 0)
                log_warning("Cannot release lease %s (%d)", name, r);
        *h = c->held[--c->n_held];
}

#else /* !HAVE_SANLOCK */

int cluster_new(const ClusterSettings *s, sd_event *event, Cluster **ret) {
        return log_error_errno(EOPNOTSUPP, "[Cluster] Mode=sanlock: this vdiskd was built without sanlock "
                                           "(meson -Dsanlock=enabled, with libsanlock-dev installed)");
}

Cluster *cluster_free(Cluster *c) {
        return NULL;
}

bool cluster_joined(const Cluster *c) {
        return false;
}

uint64_t cluster_host_id(const Cluster *c) {
        return 0;
}

void cluster_set_joined_handler(Cluster *c, ClusterJoinedHandler handler, void *userdata) {
}

void cluster_set_fence_handler(Cluster *c, ClusterFenceHandler handler, void *userdata) {
}

const char *cluster_lockspace_name(const Cluster *c) {
        return NULL;
}

bool cluster_renewal_fresh(Cluster *c) {
        return true;
}

int cluster_acquire(Cluster *c, const char *name, bool exclusive, bool persistent, uint64_t *ret_owner) {
        return -EHOSTDOWN;
}

int cluster_adopt(Cluster *c, const char *name, bool exclusive) {
        return -EHOSTDOWN;
}

int cluster_acquire_version(Cluster *c, const char *name, uint64_t version, uint64_t *ret_owner) {
        return -EHOSTDOWN;
}

int cluster_version(Cluster *c, const char *name, uint64_t *ret) {
        return -EHOSTDOWN;
}

void cluster_release_orphans(Cluster *c) {
}

void cluster_release(Cluster *c, const char *name, bool exclusive) {
}

#endif
