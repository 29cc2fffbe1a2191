/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <ctype.h>
#include <grp.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "manager.h"

void config_init_default(Config *c) {
        *c = (Config) {};
        limits_init_default(&c->limits);
}

void config_done(Config *c) {
        free(c->store_directory);
        free(c->admin_group);
        *c = (Config) {};
}

static char *strip(char *s) {
        char *e;

        while (isspace((unsigned char) *s))
                s++;
        e = s + strlen(s);
        while (e > s && isspace((unsigned char) e[-1]))
                *--e = 0;
        return s;
}

static int parse_u64(const char *v, uint64_t *ret) {
        char *end;
        unsigned long long x;

        errno = 0;
        x = strtoull(v, &end, 10);
        if (errno != 0 || end == v || *end != 0 || v[0] == '-')
                return -EINVAL;
        *ret = x;
        return 0;
}

static int parse_u32(const char *v, uint32_t *ret) {
        uint64_t x;
        if (parse_u64(v, &x) < 0 || x > UINT32_MAX)
                return -EINVAL;
        *ret = (uint32_t) x;
        return 0;
}

int config_load(Config *c, const char *path) {
        _cleanup_free_ char *line = NULL;
        char section[64] = "";
        size_t n = 0;
        unsigned lineno = 0;
        FILE *f;
        int r = 0;

        f = fopen(path, "re");
        if (!f)
                return negative_errno();

        while (getline(&line, &n, f) >= 0) {
                char *s = strip(line), *eq, *key, *value;

                lineno++;
                if (*s == 0 || *s == '#' || *s == ';')
                        continue;
                if (*s == '[') {
                        char *e = strchr(s, ']');
                        if (!e || e[1] != 0 || (size_t) (e - s - 1) >= sizeof(section)) {
                                r = log_error_errno(EINVAL, "%s:%u: invalid section header", path, lineno);
                                break;
                        }
                        memcpy(section, s + 1, (size_t) (e - s - 1));
                        section[e - s - 1] = 0;
                        continue;
                }
                eq = strchr(s, '=');
                if (!eq) {
                        r = log_error_errno(EINVAL, "%s:%u: expected KEY=VALUE", path, lineno);
                        break;
                }
                *eq = 0;
                key = strip(s);
                value = strip(eq + 1);

                if (streq(section, "Store") && streq(key, "Directory")) {
                        free(c->store_directory);
                        c->store_directory = strdup(value);
                } else if (streq(section, "Limits") && streq(key, "MaxChainDepth"))
                        r = parse_u32(value, &c->limits.max_chain_depth);
                else if (streq(section, "Limits") && streq(key, "MaxVirtualSize"))
                        r = parse_u64(value, &c->limits.max_virtual_size);
                else if (streq(section, "Limits") && streq(key, "MaxJobs"))
                        r = parse_u32(value, &c->limits.max_jobs);
                else if (streq(section, "Limits") && streq(key, "MaxVMs"))
                        r = parse_u32(value, &c->limits.max_vms);
                else if (streq(section, "Limits") && streq(key, "MaxDisksPerVM"))
                        r = parse_u32(value, &c->limits.max_disks_per_vm);
                else if (streq(section, "Limits") && streq(key, "MaxImages"))
                        r = parse_u32(value, &c->limits.max_images);
                else if (streq(section, "Limits") && streq(key, "MaxLeases"))
                        r = parse_u32(value, &c->limits.max_leases);
                else if (streq(section, "Limits") && streq(key, "MaxLeasesPerCaller"))
                        r = parse_u32(value, &c->limits.max_leases_per_caller);
                else if (streq(section, "Limits") && streq(key, "MaxLeaseFds"))
                        r = parse_u32(value, &c->limits.max_lease_fds);
                else if (streq(section, "Limits") && streq(key, "MaxLeaseFdsPerCaller"))
                        r = parse_u32(value, &c->limits.max_lease_fds_per_caller);
                else if (streq(section, "Access") && streq(key, "AdminGroup")) {
                        free(c->admin_group);
                        c->admin_group = value[0] ? strdup(value) : NULL;
                } else
                        log_warning("%s:%u: unknown setting [%s] %s, ignoring", path, lineno, section, key);
                if (r < 0) {
                        r = log_error_errno(EINVAL, "%s:%u: invalid value for %s", path, lineno, key);
                        break;
                }
        }
        fclose(f);
        if (r < 0)
                return r;
        if (c->limits.max_chain_depth < 1 || c->limits.max_virtual_size < 512 ||
            c->limits.max_virtual_size > FORMAT_DEFAULT_MAX_VIRTUAL_SIZE || c->limits.max_jobs < 1)
                return log_error_errno(EINVAL, "%s: limits out of range", path);
        return 0;
}

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
        job_registry_init(&m->jobs, m->event);
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        job_registry_done(&m->jobs);
        lease_registry_done(&m->leases);
        caller_cache_done(&m->callers);
        sd_bus_flush_close_unref(m->bus);
        store_free(m->store);
        sd_event_unref(m->event);
        config_done(&m->config);
        free(m);
        return NULL;
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
