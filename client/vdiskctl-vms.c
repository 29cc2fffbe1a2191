/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>

#include "bus-util.h"
#include "i18n.h"
#include "output.h"
#include "string-util.h"
#include "vdiskctl.h"

int verb_list_vms(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_json_ json_object *array = NULL;
        _cleanup_table_ Table *t = NULL;
        const char *name;
        uint32_t uid;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "ListVMs",
                               &error, &reply, NULL);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to list the virtual machines"));

        array = json_object_new_array();
        t = table_new(_("NAME"), _("UID"), _("OWNER"), NULL);
        if (!array || !t)
                return log_oom();
        table_set_align_right(t, 1);

        r = sd_bus_message_enter_container(reply, 'a', "(su)");
        if (r < 0)
                return log_bus_parse_error(r);

        while ((r = sd_bus_message_read(reply, "(su)", &name, &uid)) > 0) {
                json_object *o = json_object_new_object();
                struct passwd *pw = getpwuid((uid_t) uid);

                if (!o || json_add_string(o, "name", name) < 0 || json_add_uint64(o, "owner_uid", uid) < 0) {
                        json_object_put(o);
                        return log_oom();
                }
                if (json_array_append(array, o) < 0 ||
                    table_add_cell(t, name) < 0 ||
                    table_add_cellf(t, "%" PRIu32, uid) < 0 ||
                    table_add_cell(t, pw ? pw->pw_name : "-") < 0)
                        return log_oom();
        }
        if (r < 0)
                return log_bus_parse_error(r);

        if (arg_json != JSON_OFF)
                return show_json(array);

        r = show_table(t);
        if (r < 0)
                return r;
        print_footer(ngettext("%zu virtual machine listed.", "%zu virtual machines listed.", table_get_rows(t)),
                     table_get_rows(t));
        return EXIT_OK;
}

int verb_create_vm(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        uid_t owner = (arg_seen & OPTION_OWNER) ? arg_owner : getuid();
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "CreateVM",
                               &error, NULL, "sua{sv}", argv[1], (uint32_t) owner, 0);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to create VM '%s'"), argv[1]);
        return EXIT_OK;
}

int verb_delete_vm(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = manager_call_new(bus, "DeleteVM", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "s", argv[1]);
        if (r < 0)
                return log_bus_create_error(r);

        r = sd_bus_call(bus, m, BUS_TIMEOUT_LONG, &error, NULL);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to delete VM '%s'"), argv[1]);
        return EXIT_OK;
}
