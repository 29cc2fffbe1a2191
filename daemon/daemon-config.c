/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The configuration file, parsed with libinih.
 *
 * inih does the INI syntax: sections, comment lines, "name = value" with blanks stripped. Its options
 * are set so that the syntax is exactly the documented one (vdiskd(8) CONFIGURATION): no inline
 * comments ("Key=a ; b" is the value "a ; b"), no continuation lines (an indented line is a line of
 * its own), no byte-order mark, lines of any length up to CONFIG_LINE_MAX, and the first error stops.
 * Those are run-time variables in Debian's libinih (ini.h: ini_allow_multiline, ...).
 *
 * inih hands us each line through config_read_line(), which counts lines (for the messages) and refuses
 * the shapes that inih would take but the documented syntax does not: text after a section's "]", a
 * section name of 64 bytes or more, and "Key: Value" (inih also splits at ':'; "Ke:y=Value" is an
 * unknown key "Ke:y", as a key never contains ':').
 */

#include <ctype.h>
#include <ini.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "daemon-config.h"
#include "log.h"
#include "util.h"

#define CONFIG_LINE_MAX (1024 * 1024)
#define CONFIG_SECTION_MAX 64

void config_init_default(Config *c) {
        *c = (Config) {};
        limits_init_default(&c->limits);
        cluster_settings_init_default(&c->cluster);
        c->exports = (ExportSettings) { .enabled = true, .uid_first = EXPORT_DEFAULT_UID_FIRST,
                                        .uid_last = EXPORT_DEFAULT_UID_LAST,
                                        .spare_helpers = EXPORT_DEFAULT_SPARE_HELPERS };
}

void config_done(Config *c) {
        free(c->store_directory);
        free(c->admin_group);
        free(c->exports.helper);
        free(c->exports.runtime_dir);
        cluster_settings_done(&c->cluster);
        *c = (Config) {};
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

typedef enum ConfigType {
        CONFIG_PATH,         /* a string, kept as given (also empty) */
        CONFIG_STRING_EMPTY, /* a string; empty means unset (NULL) */
        CONFIG_U32,
        CONFIG_U64,
        CONFIG_BOOL,
        CONFIG_UID_RANGE, /* FIRST-LAST, two uids, neither 0 nor -1 */
        CONFIG_CLUSTER_MODE,
} ConfigType;

static int parse_bool(const char *v, bool *ret) {
        if (streq(v, "yes") || streq(v, "true") || streq(v, "1") || streq(v, "on"))
                *ret = true;
        else if (streq(v, "no") || streq(v, "false") || streq(v, "0") || streq(v, "off"))
                *ret = false;
        else
                return -EINVAL;
        return 0;
}

static int parse_uid_range(const char *v, ExportSettings *e) {
        _cleanup_free_ char *first = NULL;
        const char *dash = strchr(v, '-');
        uint32_t a, b;

        if (!dash || !(first = strndup(v, dash - v)))
                return -EINVAL;
        if (parse_u32(first, &a) < 0 || parse_u32(dash + 1, &b) < 0 || a == 0 || b == UINT32_MAX || a > b)
                return -EINVAL;
        e->uid_first = a;
        e->uid_last = b;
        return 0;
}

static const struct {
        const char *section;
        const char *key;
        ConfigType type;
        size_t offset;
} config_table[] = {
        { "Store",  "Directory",            CONFIG_PATH,         offsetof(Config, store_directory) },
        { "Limits", "MaxChainDepth",        CONFIG_U32,          offsetof(Config, limits.max_chain_depth) },
        { "Limits", "MaxVirtualSize",       CONFIG_U64,          offsetof(Config, limits.max_virtual_size) },
        { "Limits", "MaxJobs",              CONFIG_U32,          offsetof(Config, limits.max_jobs) },
        { "Limits", "MaxVMs",               CONFIG_U32,          offsetof(Config, limits.max_vms) },
        { "Limits", "MaxDisksPerVM",        CONFIG_U32,          offsetof(Config, limits.max_disks_per_vm) },
        { "Limits", "MaxImages",            CONFIG_U32,          offsetof(Config, limits.max_images) },
        { "Limits", "MaxLeases",            CONFIG_U32,          offsetof(Config, limits.max_leases) },
        { "Limits", "MaxLeasesPerCaller",   CONFIG_U32,          offsetof(Config, limits.max_leases_per_caller) },
        { "Limits", "MaxLeaseFds",          CONFIG_U32,          offsetof(Config, limits.max_lease_fds) },
        { "Limits", "MaxLeaseFdsPerCaller", CONFIG_U32,          offsetof(Config, limits.max_lease_fds_per_caller) },
        { "Access", "AdminGroup",           CONFIG_STRING_EMPTY, offsetof(Config, admin_group) },
        { "Exports", "Enabled",             CONFIG_BOOL,         offsetof(Config, exports.enabled) },
        { "Exports", "Helper",              CONFIG_STRING_EMPTY, offsetof(Config, exports.helper) },
        { "Exports", "HelperUids",          CONFIG_UID_RANGE,    offsetof(Config, exports) },
        { "Exports", "RuntimeDirectory",    CONFIG_STRING_EMPTY, offsetof(Config, exports.runtime_dir) },
        { "Cluster", "Mode",                CONFIG_CLUSTER_MODE, offsetof(Config, cluster.mode) },
        { "Cluster", "HostId",              CONFIG_U64,          offsetof(Config, cluster.host_id) },
        { "Cluster", "Lockspace",           CONFIG_STRING_EMPTY, offsetof(Config, cluster.lockspace) },
        { "Cluster", "Leases",              CONFIG_STRING_EMPTY, offsetof(Config, cluster.leases) },
        { "Cluster", "IoTimeout",           CONFIG_U32,          offsetof(Config, cluster.io_timeout) },
        { "Exports", "SpareHelpers",        CONFIG_U32,          offsetof(Config, exports.spare_helpers) },
};

/* 0 if set, -ENOENT for an unknown section or key, -EINVAL for an invalid value, -ENOMEM. A later
 * line with the same key replaces the value. */
static int config_set(Config *c, const char *section, const char *key, const char *value) {
        for (size_t i = 0; i < ELEMENTSOF(config_table); i++) {
                void *field = (uint8_t *) c + config_table[i].offset;
                char *s = NULL;

                if (!streq(config_table[i].section, section) || !streq(config_table[i].key, key))
                        continue;

                switch (config_table[i].type) {
                case CONFIG_U32:
                        return parse_u32(value, field);
                case CONFIG_U64:
                        return parse_u64(value, field);
                case CONFIG_BOOL:
                        return parse_bool(value, field);
                case CONFIG_UID_RANGE:
                        return parse_uid_range(value, field);
                case CONFIG_CLUSTER_MODE: {
                        ClusterMode m = cluster_mode_from_string(value);
                        if (m < 0)
                                return -EINVAL;
                        *(ClusterMode *) field = m;
                        return 0;
                }
                case CONFIG_PATH:
                case CONFIG_STRING_EMPTY:
                        if (value[0] || config_table[i].type == CONFIG_PATH) {
                                s = strdup(value);
                                if (!s)
                                        return -ENOMEM;
                        }
                        free(*(char **) field);
                        *(char **) field = s;
                        return 0;
                }
        }
        return -ENOENT;
}

typedef struct ConfigParser {
        Config *config;
        const char *path;
        FILE *f;
        char *line; /* the current line, ending in '\n' */
        size_t line_size, line_len, handed;
        unsigned lineno;
        char *colon_key; /* the key of the current line if it contains ':' */
        int error; /* the first error, already logged: ends the parse */
} ConfigParser;

static int config_check_line(ConfigParser *p) {
        const char *s = p->line, *e = p->line + p->line_len, *close, *eq;

        while (s < e && isspace((unsigned char) *s))
                s++;
        while (e > s && isspace((unsigned char) e[-1]))
                e--;
        if (s == e || *s == '#' || *s == ';')
                return 0;
        if (*s == '[') {
                close = memchr(s, ']', (size_t) (e - s));
                if (!close || close + 1 != e || close - s - 1 >= CONFIG_SECTION_MAX)
                        return log_error_errno(EINVAL, "%s:%u: invalid section header", p->path, p->lineno);
                return 0;
        }
        eq = memchr(s, '=', (size_t) (e - s));
        if (!eq)
                return log_error_errno(EINVAL, "%s:%u: expected KEY=VALUE", p->path, p->lineno);
        /* inih splits at the first '=' or ':'; a key never contains ':', so such a line names an
         * unknown key: its whole text before the '='. */
        if (memchr(s, ':', (size_t) (eq - s))) {
                while (eq > s && isspace((unsigned char) eq[-1]))
                        eq--;
                p->colon_key = strndup(s, (size_t) (eq - s));
                if (!p->colon_key)
                        return log_error_errno(ENOMEM, "%s:%u: out of memory", p->path, p->lineno);
        }
        return 0;
}

/* inih's fgets-like reader: a whole line is read, checked, and handed out in pieces of at most num - 1
 * bytes (inih grows its buffer and asks again until it has the '\n'). */
static char *config_read_line(char *str, int num, void *userdata) {
        ConfigParser *p = userdata;
        size_t k;
        ssize_t n;

        if (p->error < 0 || num < 2)
                return NULL;
        if (p->handed >= p->line_len) {
                n = getline(&p->line, &p->line_size, p->f);
                if (n < 0)
                        return NULL; /* the end, or a read error that config_load() finds with ferror() */
                p->lineno++;
                /* Like a C string: a NUL byte ends the line. Every line ends in '\n', the last one too. */
                p->line_len = strlen(p->line);
                if (p->line_len == 0 || p->line[p->line_len - 1] != '\n') {
                        if (p->line_len + 2 > p->line_size) {
                                char *l = realloc(p->line, p->line_len + 2);
                                if (!l) {
                                        p->error = log_error_errno(ENOMEM, "%s:%u: out of memory", p->path, p->lineno);
                                        return NULL;
                                }
                                p->line = l;
                                p->line_size = p->line_len + 2;
                        }
                        p->line[p->line_len++] = '\n';
                        p->line[p->line_len] = 0;
                }
                p->handed = 0;
                free(p->colon_key);
                p->colon_key = NULL;
                if (p->line_len >= CONFIG_LINE_MAX - 2) {
                        p->error = log_error_errno(EINVAL, "%s:%u: line too long", p->path, p->lineno);
                        return NULL;
                }
                p->error = config_check_line(p);
                if (p->error < 0)
                        return NULL;
        }
        k = MIN(p->line_len - p->handed, (size_t) num - 1);
        memcpy(str, p->line + p->handed, k);
        str[k] = 0;
        p->handed += k;
        return str;
}

static int config_handler(void *userdata, const char *section, const char *key, const char *value) {
        ConfigParser *p = userdata;
        int r;

        r = p->colon_key ? -ENOENT : config_set(p->config, section, key, value);
        if (r == -ENOENT) {
                log_warning("%s:%u: unknown setting [%s] %s, ignoring", p->path, p->lineno, section,
                            p->colon_key ?: key);
                return 1;
        }
        if (r == -ENOMEM)
                p->error = log_error_errno(ENOMEM, "%s:%u: out of memory", p->path, p->lineno);
        else if (r < 0)
                p->error = log_error_errno(EINVAL, "%s:%u: invalid value for %s", p->path, p->lineno, key);
        return r >= 0;
}

int config_load(Config *c, const char *path) {
        ConfigParser p = { .config = c, .path = path };
        const char *why = NULL;
        int r;

        p.f = fopen(path, "re");
        if (!p.f)
                return negative_errno();

        ini_allow_multiline = false;
        ini_allow_inline_comments = false;
        ini_allow_bom = false;
        ini_allow_no_value = false;
        ini_stop_on_first_error = true;
        ini_use_stack = false;
        ini_allow_realloc = true;
        ini_initial_alloc = 256;
        ini_max_line = CONFIG_LINE_MAX;

        r = ini_parse_stream(config_read_line, &p, config_handler, &p);
        if (p.error >= 0 && ferror(p.f))
                p.error = log_error_errno(EIO, "%s: read error", path);
        fclose(p.f);
        free(p.line);
        free(p.colon_key);
        if (p.error < 0)
                return p.error;
        if (r == -2)
                return log_error_errno(ENOMEM, "%s: out of memory", path);
        if (r != 0) /* a line inih refused that config_check_line() let through */
                return log_error_errno(EINVAL, "%s:%d: syntax error", path, r);

        if (c->exports.helper && c->exports.helper[0] != '/')
                return log_error_errno(EINVAL, "%s: [Exports] Helper= must be an absolute path", path);
        if (c->exports.runtime_dir && c->exports.runtime_dir[0] != '/')
                return log_error_errno(EINVAL, "%s: [Exports] RuntimeDirectory= must be an absolute path", path);
        if (cluster_settings_check(&c->cluster, &why) < 0)
                return log_error_errno(EINVAL, "%s: %s", path, why);
        if (c->exports.spare_helpers > EXPORT_SPARE_HELPERS_MAX)
                return log_error_errno(EINVAL, "%s: [Exports] SpareHelpers= must be at most %u", path, EXPORT_SPARE_HELPERS_MAX);
        if (c->limits.max_chain_depth < 1 || c->limits.max_virtual_size < 512 ||
            c->limits.max_virtual_size > FORMAT_DEFAULT_MAX_VIRTUAL_SIZE || c->limits.max_jobs < 1)
                return log_error_errno(EINVAL, "%s: limits out of range", path);
        return 0;
}
