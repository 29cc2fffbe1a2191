/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>

#include "config.h"

#include "bus-util.h"
#include "i18n.h"
#include "output.h"
#include "string-util.h"
#include "vdiskctl.h"

int verb_inspect(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_json_ json_object *o = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *file = argv[1], *json;
        int r;

        if (!arg_format) {
                log_usage(argv[0], _("'inspect' needs --format=raw or --format=qcow2: vdisk never guesses the format of a file."));
                return EXIT_USAGE;
        }

        fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_error_errno(-errno, _("Failed to open '%s' for inspection"), file);

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = manager_call_new(bus, "Inspect", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "hs", fd, arg_format);
        if (r < 0)
                return log_bus_create_error(r);
        fd = safe_close(fd);

        /* A full metadata walk of a large image takes a moment. */
        r = sd_bus_call(bus, m, BUS_TIMEOUT_LONG, &error, &reply);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to inspect '%s'"), file);

        r = sd_bus_message_read(reply, "s", &json);
        if (r < 0)
                return log_bus_parse_error(r);

        o = json_tokener_parse(json);
        if (!o) {
                log_error(_("vdiskd returned a description of '%s' that is not valid JSON; vdiskctl and vdiskd may have different versions."), file);
                return EXIT_ERROR;
        }

        r = json_print(o, arg_json == JSON_SHORT ? JSON_SHORT : JSON_PRETTY);
        if (r < 0)
                return log_oom();
        return EXIT_OK;
}

static void print_field(size_t width, const char *label, const char *value) {
        size_t w = utf8_width(label);

        printf("%*s%s: %s\n", (int) (width > w ? width - w : 0), "", label, value);
}

int verb_status(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_json_ json_object *o = NULL;
        _cleanup_free_ char *version = NULL, *store = NULL;
        uint32_t max_depth = 0;
        const BusPropertyMap map[] = {
                { "Version", 's', &version },
                { "StoreDirectory", 's', &store },
                { "MaxChainDepth", 'u', &max_depth },
                {},
        };
        const char *labels[4];
        char depth[16];
        size_t width = 0;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, "org.freedesktop.DBus.Properties", "GetAll",
                               &error, &reply, "s", VDISK_MANAGER_INTERFACE);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to read the status of vdiskd"));

        r = bus_map_properties(reply, map);
        if (r < 0)
                return log_bus_parse_error(r);

        if (arg_json != JSON_OFF) {
                o = json_object_new_object();
                if (!o ||
                    json_add_string(o, "version", version) < 0 ||
                    json_add_string(o, "store_directory", store) < 0 ||
                    json_add_uint64(o, "max_chain_depth", max_depth) < 0 ||
                    json_add_string(o, "client_version", PACKAGE_VERSION) < 0)
                        return log_oom();
                return show_json(o);
        }

        labels[0] = _("vdiskd version");
        labels[1] = _("vdiskctl version");
        labels[2] = _("Store directory");
        labels[3] = _("Maximum chain depth");
        for (size_t i = 0; i < ELEMENTSOF(labels); i++)
                width = MAX(width, utf8_width(labels[i]));

        (void) snprintf(depth, sizeof(depth), "%" PRIu32, max_depth);
        print_field(width, labels[0], isempty(version) ? "-" : version);
        print_field(width, labels[1], PACKAGE_VERSION);
        print_field(width, labels[2], isempty(store) ? "-" : store);
        print_field(width, labels[3], depth);
        return EXIT_OK;
}
