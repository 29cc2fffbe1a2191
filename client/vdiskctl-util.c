/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>

#include "bus-util.h"
#include "i18n.h"
#include "output.h"
#include "parse.h"
#include "string-util.h"
#include "vdiskctl.h"

void log_usage(const char *verb, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        fputc('\n', stderr);

        if (verb)
                log_error(_("Run 'vdiskctl %s --help' for its arguments and options."), verb);
        else
                log_error(_("Run 'vdiskctl --help' for the list of commands and options."));
}

bool format_is_valid(const char *s) {
        return streq(s, "raw") || streq(s, "qcow2");
}

int parse_size_or_log(const char *verb, const char *s, uint64_t *ret) {
        int r;

        r = parse_size(s, ret);
        if (r < 0) {
                log_usage(verb, _("Invalid size '%s': give a number of bytes, optionally with a binary suffix K, M, G or T (e.g. 20G)."), s);
                return r;
        }
        return 0;
}

int manager_call_new(sd_bus *bus, const char *member, sd_bus_message **ret) {
        return sd_bus_message_new_method_call(bus, ret, VDISK_BUS_NAME, VDISK_MANAGER_PATH,
                                              VDISK_MANAGER_INTERFACE, member);
}

void print_footer(const char *format, ...) {
        va_list ap;

        if (!arg_legend)
                return;

        fputc('\n', stdout);
        va_start(ap, format);
        vprintf(format, ap);
        va_end(ap);
        fputc('\n', stdout);
}

int show_table(const Table *t) {
        int r;

        r = table_print(t, stdout, arg_legend);
        if (r < 0)
                return log_error_errno(r, _("Failed to print the table"));
        return 0;
}

int show_json(json_object *o) {
        int r;

        r = json_print(o, arg_json);
        if (r < 0)
                return log_oom();
        return 0;
}

int show_value(const char *key, const char *value) {
        _cleanup_json_ json_object *o = NULL;

        if (arg_json == JSON_OFF) {
                puts(value);
                return 0;
        }

        o = json_object_new_object();
        if (!o || json_add_string(o, key, value) < 0)
                return log_oom();
        return show_json(o);
}
