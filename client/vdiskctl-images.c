/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
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

int verb_list_images(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_json_ json_object *array = NULL;
        _cleanup_table_ Table *t = NULL;
        const char *name, *layer, *format;
        uint64_t size, allocated;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "ListImages",
                               &error, &reply, NULL);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to list the catalog images"));

        array = json_object_new_array();
        /* TRANSLATORS: table headers are upper case. */
        t = table_new(_("NAME"), _("LAYER"), _("FORMAT"), _("SIZE"), _("ALLOCATED"), NULL);
        if (!array || !t)
                return log_oom();
        table_set_align_right(t, 3);
        table_set_align_right(t, 4);

        r = sd_bus_message_enter_container(reply, 'a', "(ssstt)");
        if (r < 0)
                return log_bus_parse_error(r);

        while ((r = sd_bus_message_read(reply, "(ssstt)", &name, &layer, &format, &size, &allocated)) > 0) {
                char a[FORMAT_BYTES_MAX], b[FORMAT_BYTES_MAX];
                json_object *o = json_object_new_object();

                if (!o ||
                    json_add_string(o, "name", name) < 0 ||
                    json_add_string(o, "layer", layer) < 0 ||
                    json_add_string(o, "format", format) < 0 ||
                    json_add_uint64(o, "virtual_size", size) < 0 ||
                    json_add_uint64(o, "allocated", allocated) < 0) {
                        json_object_put(o);
                        return log_oom();
                }
                if (json_array_append(array, o) < 0 ||
                    table_add_cell(t, name) < 0 ||
                    table_add_cell(t, layer) < 0 ||
                    table_add_cell(t, format) < 0 ||
                    table_add_cell(t, format_bytes(a, sizeof(a), size)) < 0 ||
                    table_add_cell(t, format_bytes(b, sizeof(b), allocated)) < 0)
                        return log_oom();
        }
        if (r < 0)
                return log_bus_parse_error(r);

        if (arg_json != JSON_OFF)
                return show_json(array);

        r = show_table(t);
        if (r < 0)
                return r;
        print_footer(ngettext("%zu image listed.", "%zu images listed.", table_get_rows(t)), table_get_rows(t));
        return EXIT_OK;
}

int verb_create_image(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *name = argv[1], *format = argv[2], *layer;
        uint64_t size;
        int r;

        if (!format_is_valid(format)) {
                log_usage(argv[0], _("Unknown format '%s': use raw or qcow2."), format);
                return EXIT_USAGE;
        }
        if (parse_size_or_log(argv[0], argv[3], &size) < 0)
                return EXIT_USAGE;
        if ((arg_seen & OPTION_CLUSTER_SIZE) && !streq(format, "qcow2")) {
                log_usage(argv[0], _("--cluster-size applies to qcow2 images only."));
                return EXIT_USAGE;
        }

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = manager_call_new(bus, "CreateImage", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "sst", name, format, size);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && arg_template)
                r = sd_bus_message_append(m, "{sv}", "template", "s", arg_template);
        if (r >= 0 && (arg_seen & OPTION_CLUSTER_SIZE))
                r = sd_bus_message_append(m, "{sv}", "cluster_size", "u", arg_cluster_size);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_bus_create_error(r);

        r = sd_bus_call(bus, m, BUS_TIMEOUT_LONG, &error, &reply);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to create image '%s'"), name);

        r = sd_bus_message_read(reply, "s", &layer);
        if (r < 0)
                return log_bus_parse_error(r);

        r = show_value("layer", layer);
        return r < 0 ? r : EXIT_OK;
}

int verb_import(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *label = NULL, *failure = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *name = argv[1], *format = argv[2], *file = argv[3], *job;
        int r;

        if (!format_is_valid(format)) {
                log_usage(argv[0], _("Unknown format '%s': use raw or qcow2."), format);
                return EXIT_USAGE;
        }

        fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_error_errno(-errno, _("Failed to open '%s' for import"), file);

        if (asprintf(&label, _("Importing '%s'"), name) < 0 ||
            asprintf(&failure, _("Failed to import '%s' as image '%s'"), file, name) < 0)
                return log_oom();

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = manager_call_new(bus, "ImportImage", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "ssha{sv}", name, format, fd, 0);
        if (r < 0)
                return log_bus_create_error(r);
        fd = safe_close(fd); /* the message holds its own copy */

        r = sd_bus_call(bus, m, BUS_TIMEOUT_DEFAULT, &error, &reply);
        if (r < 0)
                return log_call_error(&error, r, "%s", failure);

        r = sd_bus_message_read(reply, "o", &job);
        if (r < 0)
                return log_bus_parse_error(r);

        return handle_job(bus, job, label, failure);
}

int verb_delete_image(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "DeleteImage",
                               &error, NULL, "s", argv[1]);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to delete image '%s'"), argv[1]);
        return EXIT_OK;
}
