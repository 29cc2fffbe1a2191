/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* vdiskd: options and configuration, the store, the bus name, privileges, the event loop. */

#include <cap-ng.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "config.h"
#include "log.h"
#include "manager.h"

#define DEFAULT_CONFIG "/etc/vdisk/vdiskd.conf"
#define DEFAULT_STORE "/var/lib/vdisk"

static const char *arg_store;
static const char *arg_config;

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

static int drop_privileges(void) {
        /* The daemon owns its store and receives callers' files as fds: it needs no capability at all.
         * Root keeps only its uid (ownership of the store); everything else goes, bounding set included. */
        if (geteuid() != 0)
                return 0;
        capng_clear(CAPNG_SELECT_BOTH);
        if (capng_apply(CAPNG_SELECT_BOTH) < 0)
                return log_error_errno(EPERM, "Failed to drop capabilities");
        capng_clear(CAPNG_SELECT_BOUNDS);
        if (capng_apply(CAPNG_SELECT_BOUNDS) < 0)
                log_debug("Bounding set unchanged (no CAP_SETPCAP left); effective and permitted sets are empty");
        return 0;
}

static void help(void) {
        printf("Usage: vdiskd [--store DIR] [--config FILE]\n\n"
               "The vdisk storage service for virtual machine disks (bus name %s).\n\n"
               "  --store DIR     store directory (default: $STATE_DIRECTORY, else %s)\n"
               "  --config FILE   configuration file (default: %s; a missing default is fine)\n"
               "  --debug         log at debug level\n",
               VDISK_BUS_NAME, DEFAULT_STORE, DEFAULT_CONFIG);
}

static int parse_argv(int argc, char *argv[]) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                { "store", required_argument, NULL, 's' },
                { "config", required_argument, NULL, 'c' },
                { "debug", no_argument, NULL, 'd' },
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
                case 'd':
                        log_set_max_level(LOG_DEBUG);
                        break;
                default:
                        return -EINVAL;
                }
        if (optind < argc)
                return log_error_errno(EINVAL, "Unexpected argument: %s", argv[optind]);
        return 1;
}

static int run(int argc, char *argv[]) {
        Manager *m = NULL;
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

        r = manager_new(&config, &m);
        config_done(&config);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the manager");

        r = store_open(store, &m->store);
        if (r < 0) {
                manager_free(m);
                return log_error_errno(r, "Failed to open the store %s", store);
        }

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
                r = manager_watch_names(m);
        if (r >= 0)
                r = sd_bus_add_object_manager(m->bus, NULL, VDISK_MANAGER_PATH);
        if (r >= 0)
                r = sd_bus_request_name_async(m->bus, NULL, VDISK_BUS_NAME, 0, name_acquired, m);
        if (r >= 0)
                r = drop_privileges();
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
        if (r < 0) {
                manager_free(m);
                return log_error_errno(r, "Failed to set up the daemon");
        }

        r = sd_event_loop(m->event);
        (void) sd_notify(false, "STOPPING=1");
        log_info("vdiskd exiting");
        manager_free(m);
        return r < 0 ? r : 0;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);
        return r < 0 ? EXIT_FAILURE : r;
}
