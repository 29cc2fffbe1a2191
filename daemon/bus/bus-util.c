/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Reading and validating arguments: the helpers every bus object uses. */

#include <string.h>

#include "bus.h"
#include "escape.h"

int bus_read_options(sd_bus_message *m, const OptionSpec *specs, sd_bus_error *error) {
        unsigned seen = 0;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key, *contents;
                const OptionSpec *spec = NULL;
                size_t idx = 0;
                char sig[2] = {};

                r = sd_bus_message_read(m, "s", &key);
                if (r < 0)
                        return r;
                for (const OptionSpec *s = specs; s && s->key; s++, idx++)
                        if (streq(s->key, key)) {
                                spec = s;
                                break;
                        }
                if (!spec)
                        return bus_errorf(error, -EINVAL, "Unknown option '%s'", ESCAPE_TEXT(key));
                /* Each known key at most once: so no more entries than keys can get this far. */
                if (seen & (1U << idx))
                        return bus_errorf(error, -EINVAL, "Option '%s' given twice", key);
                seen |= 1U << idx;
                if (spec->present)
                        *spec->present = true;

                r = sd_bus_message_peek_type(m, NULL, &contents);
                if (r < 0)
                        return r;
                sig[0] = spec->type;
                if (!streq(contents, sig))
                        return bus_errorf(error, -EINVAL, "Option '%s' must be of type '%s'", key, sig);
                r = sd_bus_message_enter_container(m, 'v', sig);
                if (r < 0)
                        return r;
                if (spec->type == 'b') {
                        int b;
                        r = sd_bus_message_read_basic(m, 'b', &b);
                        *(bool *) spec->ret = b;
                } else
                        r = sd_bus_message_read_basic(m, spec->type, spec->ret);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

int bus_check_name(const char *what, const char *name, sd_bus_error *error) {
        if (streq(what, "disk")) {
                if (disk_name_is_valid(name))
                        return 0;
                /* A disk's name is its top node's name in QEMU's -blockdev. */
                return bus_errorf(error, -EINVAL, "Invalid disk name: must match " DISK_NAME_RULE
                                  " (a QEMU node name: a letter first, at most 31 characters)");
        }
        if (name_is_valid(name))
                return 0;
        /* Never echo what might be binary junk or a path: say what was wrong with it. */
        return bus_errorf(error, -EINVAL, "Invalid %s name: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", what);
}

int bus_check_format(const char *format, ImageFormat *ret, sd_bus_error *error) {
        ImageFormat f = image_format_from_string(format);
        if (f < 0)
                return bus_errorf(error, -EINVAL, "%s", "Format must be \"raw\" or \"qcow2\"");
        *ret = f;
        return 0;
}
