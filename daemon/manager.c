/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <grp.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "manager.h"

int manager_new(const Config *config, Manager **ret) {
        Manager *m;
        int r;

        m = calloc(1, sizeof(Manager));
        if (!m)
                return -ENOMEM;
        m->config = *config;
        m->config.store_directory = strdup_or_null(config->store_directory);
        m->config.admin_group = strdup_or_null(config->admin_group);

        if (m->config.admin_group) {
                struct group *g = getgrnam(m->config.admin_group);
                if (!g)
                        log_warning("Admin group '%s' does not exist; only root is an administrator", m->config.admin_group);
                else {
                        m->has_admin_gid = true;
                        m->admin_gid = g->gr_gid;
                }
        }

        r = sd_event_default(&m->event);
        if (r < 0) {
                manager_free(m);
                return r;
        }
        *ret = m;
        return 0;
}

void manager_free_jobs(Manager *m);

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        manager_free_jobs(m);
        manager_free_leases(m);
        auth_free_cache(m);
        sd_bus_flush_close_unref(m->bus);
        store_free(m->store);
        sd_event_unref(m->event);
        config_done(&m->config);
        free(m);
        return NULL;
}
