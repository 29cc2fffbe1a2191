/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus-util.h"
#include "escape.h"
#include "i18n.h"
#include "string-util.h"

int exit_status_from_error_name(const char *name) {
        if (!name)
                return EXIT_ERROR;
        /* Out of space is the host's problem, not a refusal of the request. */
        if (streq(name, VDISK_ERROR_NO_SPACE))
                return EXIT_ERROR;
        if (startswith(name, VDISK_ERROR_PREFIX) ||
            streq(name, SD_BUS_ERROR_ACCESS_DENIED) ||
            streq(name, SD_BUS_ERROR_INVALID_ARGS))
                return EXIT_REFUSED;
        return EXIT_ERROR;
}

void log_error(const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        fputc('\n', stderr);
}

int log_error_errno(int r, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);
        fprintf(stderr, ": %s\n", strerror(r < 0 ? -r : r));
        return r;
}

int log_oom(void) {
        log_error(_("Out of memory."));
        return -ENOMEM;
}

int log_bus_parse_error(int r) {
        return log_error_errno(r, _("Failed to parse the reply of vdiskd (vdiskctl and vdiskd may have different versions)"));
}

int log_bus_create_error(int r) {
        return log_error_errno(r, _("Failed to build the request to vdiskd"));
}

static const char *hint_for_error_name(const char *name) {
        static const struct {
                const char *name;
                const char *hint;
        } hints[] = {
                { VDISK_ERROR_NOT_FOUND,
                  N_("Check the names with 'vdiskctl list-vms', 'vdiskctl list-disks VM', 'vdiskctl list-images' or "
                     "'vdiskctl chain VM DISK'.") },
                { VDISK_ERROR_ALREADY_EXISTS,
                  N_("Choose another name, or delete the existing object first.") },
                { VDISK_ERROR_IN_USE,
                  N_("Stop the VM that holds the disk, or delete the disks that use the image, then try again.") },
                { VDISK_ERROR_UNSAFE_IMAGE,
                  N_("Check the file's real format and backing files with 'vdiskctl inspect FILE --format=FORMAT'.") },
                { VDISK_ERROR_CORRUPT,
                  N_("Run 'vdiskctl verify VM' and restore the affected image from a backup; an administrator must clear the quarantine.") },
                { VDISK_ERROR_NOT_SUPPORTED,
                  N_("vdisk does not support this; convert the image to a plain qcow2 or raw image first.") },
                { VDISK_ERROR_CHAIN_TOO_DEEP,
                  N_("Shorten the chain with 'vdiskctl commit' or 'vdiskctl rebase' before adding layers (see 'vdiskctl status' for the limit).") },
                { VDISK_ERROR_LIMIT_EXCEEDED,
                  N_("Stay within the service's limits, or ask an administrator to raise them.") },
                { VDISK_ERROR_CANCELLED,
                  N_("The operation was cancelled; run the command again if it is still needed.") },
                { VDISK_ERROR_NO_SPACE,
                  N_("Free space in the store directory (see 'vdiskctl status'), then try again.") },
                { SD_BUS_ERROR_ACCESS_DENIED,
                  N_("Run the command as root or as a member of vdisk's admin group; a VM's owner may only use their own VMs.") },
                { SD_BUS_ERROR_INVALID_ARGS,
                  N_("Check the command's arguments (see 'vdiskctl COMMAND --help').") },
                { SD_BUS_ERROR_SERVICE_UNKNOWN,
                  N_("vdiskd is not running and could not be started; check 'systemctl status vdiskd.service'.") },
                { SD_BUS_ERROR_NAME_HAS_NO_OWNER,
                  N_("vdiskd is not running and could not be started; check 'systemctl status vdiskd.service'.") },
                { SD_BUS_ERROR_NO_REPLY,
                  N_("vdiskd did not answer in time; the operation may still complete. Check 'journalctl -u vdiskd.service'.") },
                { SD_BUS_ERROR_TIMEOUT,
                  N_("vdiskd did not answer in time; the operation may still complete. Check 'journalctl -u vdiskd.service'.") },
                { SD_BUS_ERROR_UNKNOWN_OBJECT,
                  N_("The object does not exist (a job that ended a while ago, for example); see 'vdiskctl jobs'.") },
                { SD_BUS_ERROR_UNKNOWN_METHOD,
                  N_("vdiskd does not know this request; vdiskctl and vdiskd may have different versions (see 'vdiskctl status').") },
                { SD_BUS_ERROR_UNKNOWN_INTERFACE,
                  N_("vdiskd does not know this request; vdiskctl and vdiskd may have different versions (see 'vdiskctl status').") },
                { SD_BUS_ERROR_UNKNOWN_PROPERTY,
                  N_("vdiskd does not know this request; vdiskctl and vdiskd may have different versions (see 'vdiskctl status').") },
        };

        if (!name)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(hints); i++)
                if (streq(name, hints[i].name))
                        return _(hints[i].hint);
        return NULL;
}

/* Longer error messages are cut ("..."). */
#define LOG_CALL_ERROR_MAX 4096U

int log_call_error(const sd_bus_error *error, int r, const char *format, ...) {
        const char *hint;
        va_list ap;

        va_start(ap, format);
        vfprintf(stderr, format, ap);
        va_end(ap);

        if (error && error->name) {
                /* The daemon's text is English by contract. It may echo what someone else sent (and a job's
                 * error reaches vdiskctl in a signal): control characters are shown escaped, on one line. */
                char message[LOG_CALL_ERROR_MAX], name[LOG_CALL_ERROR_MAX];

                fprintf(stderr, ": %s (%s)\n", escape_text(error->message ?: error->name, message, sizeof(message)),
                        escape_text(error->name, name, sizeof(name)));
                hint = hint_for_error_name(error->name);
                if (!hint)
                        hint = _("See 'journalctl -u vdiskd.service' for details.");
                fprintf(stderr, "%s\n", hint);
                return exit_status_from_error_name(error->name);
        }

        fprintf(stderr, ": %s\n", strerror(r < 0 ? -r : EIO));
        fprintf(stderr, "%s\n", _("Check that the system bus and vdiskd are running: 'systemctl status dbus.service vdiskd.service'."));
        return EXIT_ERROR;
}

int bus_connect(sd_bus **ret) {
        sd_bus *bus = NULL;
        const char *address;
        int r;

        r = sd_bus_open_system(&bus);
        if (r < 0) {
                log_error_errno(r, _("Failed to connect to the system bus"));
                address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
                if (!isempty(address))
                        log_error(_("Check that DBUS_SYSTEM_BUS_ADDRESS (%s) names a running bus."), address);
                else
                        log_error(_("Check that the D-Bus system bus is running: 'systemctl status dbus.service'."));
                return r;
        }

        *ret = bus;
        return 0;
}

static int free_and_strdup(char **p, const char *s) {
        char *t = strdup(s);

        if (!t)
                return -ENOMEM;
        free(*p);
        *p = t;
        return 0;
}

int bus_map_properties(sd_bus_message *m, const BusPropertyMap *map) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;

        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const BusPropertyMap *p;
                const char *name, *contents;
                char type;

                r = sd_bus_message_read(m, "s", &name);
                if (r < 0)
                        return r;

                for (p = map; p->name; p++)
                        if (streq(p->name, name))
                                break;

                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;

                if (!p->name || type != 'v' || !contents || contents[0] != p->type || contents[1] != 0)
                        r = sd_bus_message_skip(m, "v");
                else {
                        char signature[2] = { p->type, 0 };

                        r = sd_bus_message_enter_container(m, 'v', signature);
                        if (r < 0)
                                return r;

                        switch (p->type) {
                        case 's': {
                                const char *s;

                                r = sd_bus_message_read_basic(m, 's', &s);
                                if (r >= 0)
                                        r = free_and_strdup(p->ptr, s);
                                break;
                        }
                        case 'b': {
                                int b;

                                r = sd_bus_message_read_basic(m, 'b', &b);
                                if (r >= 0)
                                        *(bool *) p->ptr = b;
                                break;
                        }
                        case 'd':
                        case 't':
                        case 'u':
                                r = sd_bus_message_read_basic(m, p->type, p->ptr);
                                break;
                        default:
                                return -EINVAL;
                        }
                        if (r < 0)
                                return r;

                        r = sd_bus_message_exit_container(m);
                }
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
