/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* vdiskd: options and configuration, the store, the bus name, privileges, the event loop. */

#include <cap-ng.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>

#include "cluster.h"
#include "cluster-fence.h"
#include "cluster-recover.h"
#include "config.h"
#include "log.h"
#include "bus.h"
#include "manager.h"

#define DEFAULT_CONFIG "/etc/vdisk/vdiskd.conf"
#define DEFAULT_STORE "/var/lib/vdisk"
#define DEFAULT_RUNTIME_DIR "/run/vdisk"

static const char *arg_store;
static const char *arg_config;
static const char *arg_runtime_dir;
static uint64_t arg_exit_on_idle_usec;

/* ---- exit on idle: nothing leased, no job (running or still readable), no call for a while ---- */

typedef struct Idle {
        Manager *manager;
        uint64_t last_activity;
        sd_event_source *timer;
        bool releasing;
} Idle;


static int idle_activity(sd_bus_message *msg, void *userdata, sd_bus_error *ret_error) {
        Idle *idle = userdata;
        uint8_t type;

        /* Calls only: signals on the system bus (NameOwnerChanged of other clients) are not use. */
        if (sd_bus_message_get_type(msg, &type) < 0 || type != SD_BUS_MESSAGE_METHOD_CALL)
                return 0;
        (void) sd_event_now(idle->manager->event, CLOCK_MONOTONIC, &idle->last_activity);
        return 0;
}

static int idle_name_released(sd_bus_message *msg, void *userdata, sd_bus_error *ret_error) {
        Idle *idle = userdata;
        Manager *m = idle->manager;

        idle->releasing = false;
        /* A call that arrived before the name went may have started something: then stay. */
        if (manager_busy(m)) {
                log_info("Busy again while releasing %s; serving on", VDISK_BUS_NAME);
                (void) sd_bus_request_name_async(m->bus, NULL, VDISK_BUS_NAME, 0, NULL, NULL);
                return 0;
        }
        log_info("Idle for %" PRIu64 " s with nothing leased or running; exiting (D-Bus activation restarts vdiskd)",
                 arg_exit_on_idle_usec / 1000000);
        return sd_event_exit(m->event, 0);
}

static int idle_check(sd_event_source *s, uint64_t usec, void *userdata) {
        Idle *idle = userdata;
        Manager *m = idle->manager;

        if (!idle->releasing && !manager_busy(m) && usec >= idle->last_activity + arg_exit_on_idle_usec) {
                idle->releasing = true;
                (void) sd_bus_release_name_async(m->bus, NULL, VDISK_BUS_NAME, idle_name_released, idle);
        }
        return sd_event_source_set_time(s, MAX(usec, idle->last_activity) + arg_exit_on_idle_usec);
}

static int idle_setup(Manager *m, Idle *idle) {
        int r;

        *idle = (Idle) { .manager = m };
        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &idle->last_activity);
        r = sd_bus_add_filter(m->bus, NULL, idle_activity, idle);
        if (r < 0)
                return r;
        r = sd_event_add_time(m->event, &idle->timer, CLOCK_MONOTONIC, idle->last_activity + arg_exit_on_idle_usec, 0,
                              idle_check, idle);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(idle->timer, SD_EVENT_ON);
}

static int name_acquired(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const sd_bus_error *e = sd_bus_message_get_error(m);
        Manager *manager = userdata;

        if (e) {
                log_error("Failed to acquire the bus name %s: %s", VDISK_BUS_NAME, e->message);
                return sd_event_exit(manager->event, EXIT_FAILURE);
        }
        log_info("vdiskd %s ready on %s, store %s", PACKAGE_VERSION, VDISK_BUS_NAME, manager->store->path);
        (void) sd_notify(false, "READY=1\nSTATUS=Serving");
        return 0;
}

static bool job_gate_cluster(void *userdata) {
        return cluster_renewal_fresh(userdata);
}

static int drop_privileges(bool exports, bool cluster) {
        /* The daemon owns its store and receives callers' files as fds: it needs no capability for that.
         * Root keeps its uid (ownership of the store); with exports, CAP_SETUID and CAP_SETGID stay
         * permitted (not effective) for the forked child that becomes a helper's uid, and CAP_KILL for a
         * helper that does not quit when asked (export/helper.c raises each for that one step); in cluster
         * mode CAP_KILL too, for the holders fenced when the lockspace is lost (ops/cluster-fence.c).
         * Everything else goes, bounding set included. */
        if (geteuid() != 0)
                return 0;
        capng_clear(CAPNG_SELECT_BOTH);
        if (exports && capng_updatev(CAPNG_ADD, CAPNG_PERMITTED | CAPNG_BOUNDING_SET, CAP_SETUID, CAP_SETGID, CAP_KILL, -1) < 0)
                return log_error_errno(EPERM, "Failed to keep the capabilities of exports");
        if (cluster && capng_update(CAPNG_ADD, CAPNG_PERMITTED | CAPNG_BOUNDING_SET, CAP_KILL) < 0)
                return log_error_errno(EPERM, "Failed to keep CAP_KILL for fencing");
        if (capng_apply(CAPNG_SELECT_BOTH) < 0)
                return log_error_errno(EPERM, "Failed to drop capabilities");
        capng_clear(CAPNG_SELECT_BOUNDS);
        if (capng_apply(CAPNG_SELECT_BOUNDS) < 0)
                log_debug("Bounding set unchanged (no CAP_SETPCAP left); effective and permitted sets are empty");
        return 0;
}

/* Leases keep fds open until they are fetched (MaxLeaseFds, 16384 by default), far more than the soft
 * limit of 1024 that services start with. vdiskd uses epoll, never select(), so it takes the hard limit
 * as systemd recommends; raising the soft limit needs no capability. */
static void raise_fd_limit(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
                return;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                log_warning("Failed to raise the soft limit of open files to %ju: %s", (uintmax_t) rl.rlim_max,
                            strerror(errno));
}

static void help(void) {
        printf("Usage: vdiskd [--store DIR] [--config FILE] [--runtime-dir DIR] [--exit-on-idle=SEC] [--debug]\n\n"
               "The vdisk storage service for virtual machine disks (bus name %s).\n\n"
               "  --store DIR     store directory (default: $STATE_DIRECTORY, else %s)\n"
               "  --config FILE   configuration file (default: %s; a missing default is fine)\n"
               "  --runtime-dir DIR  runtime directory of the exports' helpers (default: $RUNTIME_DIRECTORY,\n"
               "                  else %s)\n"
               "  --exit-on-idle=SEC  exit after SEC seconds without calls, leases or jobs (0: never, the default)\n"
               "  --debug         log at debug level\n",
               VDISK_BUS_NAME, DEFAULT_STORE, DEFAULT_CONFIG, DEFAULT_RUNTIME_DIR);
}

static int parse_argv(int argc, char *argv[]) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { "store", required_argument, NULL, 's' },
                { "config", required_argument, NULL, 'c' },
                { "runtime-dir", required_argument, NULL, 'r' },
                { "debug", no_argument, NULL, 'd' },
                { "exit-on-idle", required_argument, NULL, 'i' },
                {}
        };
        int c;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case 'V':
                        puts(PACKAGE_VERSION);
                        return 0;
                case 's':
                        arg_store = optarg;
                        break;
                case 'c':
                        arg_config = optarg;
                        break;
                case 'r':
                        arg_runtime_dir = optarg;
                        break;
                case 'd':
                        log_set_max_level(LOG_DEBUG);
                        break;
                case 'i': {
                        char *end;
                        unsigned long long sec = strtoull(optarg, &end, 10);
                        if (!*optarg || *end || sec > 86400 * 365)
                                return log_error_errno(EINVAL, "Invalid --exit-on-idle: %s", optarg);
                        arg_exit_on_idle_usec = sec * 1000000;
                        break;
                }
                default:
                        return -EINVAL;
                }
        if (optind < argc)
                return log_error_errno(EINVAL, "Unexpected argument: %s", argv[optind]);
        return 1;
}

static int run(int argc, char *argv[]) {
        Manager *m = NULL;
        Idle idle = {};
        Config config;
        const char *store;
        int r;

        r = parse_argv(argc, argv);
        if (r <= 0)
                return r;

        config_init_default(&config);
        r = config_load(&config, arg_config ?: DEFAULT_CONFIG);
        if (r == -ENOENT && !arg_config)
                r = 0;
        else if (r < 0) {
                config_done(&config);
                return log_error_errno(r, "Failed to load configuration %s", arg_config ?: DEFAULT_CONFIG);
        }

        store = arg_store ?: config.store_directory ?: getenv("STATE_DIRECTORY") ?: DEFAULT_STORE;
        if (arg_runtime_dir || !config.exports.runtime_dir) {
                free(config.exports.runtime_dir);
                config.exports.runtime_dir = strdup(arg_runtime_dir ?: getenv("RUNTIME_DIRECTORY") ?: DEFAULT_RUNTIME_DIR);
                if (!config.exports.runtime_dir) {
                        config_done(&config);
                        return log_error_errno(ENOMEM, "Out of memory");
                }
        }

        r = manager_new(&config, &m);
        config_done(&config);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the manager");

        if (m->config.cluster.mode == CLUSTER_MODE_SANLOCK) {
                /* Other hosts share the store: its journal and files are recovered under leases, never
                 * blindly at start (docs/design.md, "Cluster mode"). */
                if (!cluster_supported()) {
                        manager_free(m);
                        return log_error_errno(EOPNOTSUPP, "[Cluster] Mode=sanlock, but this vdiskd was built without sanlock "
                                                           "(meson -Dsanlock=enabled with libsanlock-dev); refusing to start");
                }
                r = cluster_new(&m->config.cluster, m->event, &m->cluster);
                if (r < 0) {
                        manager_free(m);
                        return log_error_errno(r, "Failed to start cluster mode (sanlock); refusing to start");
                }
                record_set_writer(m->config.cluster.host_id); /* every record names its writer */
                r = store_open_shared(store, &m->store);
                if (r >= 0)
                        r = cluster_recovery_start(m->cluster, m->store, m->event, &m->cluster_recovery);
                if (r >= 0) /* sanlock's kill path: jobs cancelled, writers fenced, leases dropped */
                        cluster_fence_setup(m->cluster, m->store, &m->leases, &m->jobs);
                if (r >= 0) /* no job step while this host's lease renewal is late */
                        job_registry_set_gate(&m->jobs, job_gate_cluster, m->cluster);
        } else
                r = store_open(store, &m->store);
        if (r < 0) {
                manager_free(m);
                return log_error_errno(r, "Failed to open the store %s", store);
        }

        raise_fd_limit();
        r = sd_bus_open_system(&m->bus);
        if (r < 0) {
                manager_free(m);
                return log_error_errno(r, "Failed to connect to the system bus");
        }
        r = sd_bus_attach_event(m->bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r >= 0)
                r = bus_manager_register(m);
        if (r >= 0)
                r = bus_job_register(m);
        if (r >= 0)
                r = bus_lease_register(m);
        if (r >= 0)
                r = bus_watch_names(m);
        if (r >= 0)
                r = manager_recover_exports(m);
        if (r >= 0)
                r = bus_check_lease_holders(m);
        if (r >= 0)
                r = sd_bus_add_object_manager(m->bus, NULL, VDISK_MANAGER_PATH);
        if (r >= 0)
                r = sd_bus_request_name_async(m->bus, NULL, VDISK_BUS_NAME, 0, name_acquired, m);
        if (r >= 0)
                r = drop_privileges(m->config.exports.enabled || m->leases.n_leases > 0, m->cluster != NULL);
        if (r >= 0) {
                sigset_t ss;
                sigemptyset(&ss);
                sigaddset(&ss, SIGTERM);
                sigaddset(&ss, SIGINT);
                r = sigprocmask(SIG_BLOCK, &ss, NULL) < 0 ? negative_errno() : 0;
        }
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGTERM, NULL, NULL);
        if (r >= 0)
                r = sd_event_add_signal(m->event, NULL, SIGINT, NULL, NULL);
        if (r >= 0 && arg_exit_on_idle_usec > 0)
                r = idle_setup(m, &idle);
        if (r < 0) {
                manager_free(m);
                return log_error_errno(r, "Failed to set up the daemon");
        }

        r = sd_event_loop(m->event);
        (void) sd_notify(false, "STOPPING=1");
        log_info("vdiskd exiting");
        idle.timer = sd_event_source_disable_unref(idle.timer);
        manager_free(m);
        return r < 0 ? r : 0;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);
        return r < 0 ? EXIT_FAILURE : r;
}
