/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <grp.h>
#include <stdio.h>
#include <string.h>

#include "cluster-lease.h"
#include "log.h"
#include "manager.h"
#include "cluster-recover.h"

int manager_new(const Config *config, Manager **ret) {
        Manager *m;
        int r;

        m = calloc(1, sizeof(Manager));
        if (!m)
                return -ENOMEM;
        m->config = *config;
        m->config.store_directory = strdup_or_null(config->store_directory);
        m->config.admin_group = strdup_or_null(config->admin_group);
        m->config.exports.helper = strdup(config->exports.helper ?: EXPORT_DEFAULT_HELPER);
        m->config.exports.runtime_dir = strdup_or_null(config->exports.runtime_dir);
        m->config.cluster.lockspace = strdup_or_null(config->cluster.lockspace);
        m->config.cluster.leases = strdup_or_null(config->cluster.leases);
        if (!m->config.exports.helper || (config->exports.runtime_dir && !m->config.exports.runtime_dir) ||
            (config->cluster.lockspace && !m->config.cluster.lockspace) || (config->cluster.leases && !m->config.cluster.leases)) {
                manager_free(m);
                return -ENOMEM;
        }

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
        job_registry_init(&m->jobs, m->event);
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        job_registry_done(&m->jobs);
        m->spares = export_spares_free(m->spares); /* vdiskd exits: its spares (holding nothing) with it */
        lease_registry_done(&m->leases);
        m->cluster_recovery = cluster_recovery_free(m->cluster_recovery);
        m->cluster = cluster_free(m->cluster); /* after the jobs and leases, which release their cluster leases */
        caller_cache_done(&m->callers);
        sd_bus_flush_close_unref(m->bus);
        store_free(m->store);
        sd_event_unref(m->event);
        config_done(&m->config);
        free(m);
        return NULL;
}

/* A helper exited on its own or its monitor failed: its lease ends (the holder's VM sees its disk fail). */
static void manager_export_gone(Lease *l, const char *why, void *userdata) {
        Manager *m = userdata;
        lease_end(m->store, &m->leases, l, why);
}

ExportContext manager_export_context(Manager *m) {
        return (ExportContext) { .settings = &m->config.exports, .spares = m->spares, .event = m->event,
                                 .gone = manager_export_gone, .userdata = m };
}

int manager_recover_exports(Manager *m) {
        ExportContext c = manager_export_context(m);
        int r;

        r = export_recover(c.settings, m->store, &m->leases, m->event, c.gone, c.userdata);
        if (r >= 0) /* cluster mode: fd-mode leases too; all take their disk leases back once joined */
                r = cluster_leases_recover(m->cluster, m->store, m->config.exports.runtime_dir, &m->leases);
        if (r >= 0)
                cluster_leases_adopt_when_joined(m->cluster, m->store, &m->leases);
        if (r >= 0)
                r = export_spares_new(&m->config.exports, &m->leases, m->event, &m->spares);
        return r;
}

bool manager_busy(const Manager *m) {
        return m->leases.n_leases > 0 || m->jobs.n_jobs > 0;
}

const Caller *caller_cache_get(const CallerCache *c, const char *name) {
        for (size_t i = 0; name && i < c->n_entries; i++)
                if (streq(c->entries[i].name, name))
                        return &c->entries[i].caller;
        return NULL;
}

void caller_cache_forget(CallerCache *c, const char *name) {
        for (size_t i = 0; i < c->n_entries; i++)
                if (streq(c->entries[i].name, name)) {
                        free(c->entries[i].name);
                        c->entries[i] = c->entries[--c->n_entries];
                        return;
                }
}

void caller_cache_done(CallerCache *c) {
        for (size_t i = 0; i < c->n_entries; i++)
                free(c->entries[i].name);
        free(c->entries);
        *c = (CallerCache) {};
}

void caller_cache_put(CallerCache *c, const char *name, const Caller *caller) {
        struct CallerEntry *a;
        char *copy;

        if (!name || name[0] != ':')
                return;
        /* Full (callers that never left?): start over rather than grow without bound. */
        if (c->n_entries >= CALLER_CACHE_MAX)
                caller_cache_done(c);
        copy = strdup(name);
        a = reallocarray(c->entries, c->n_entries + 1, sizeof(struct CallerEntry));
        if (!copy || !a) {
                free(copy);
                if (a)
                        c->entries = a;
                return;
        }
        c->entries = a;
        c->entries[c->n_entries++] = (struct CallerEntry) { .name = copy, .caller = *caller };
}
