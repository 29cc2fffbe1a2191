/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>

#include "bus-util.h"
#include "i18n.h"
#include "job.h"
#include "output.h"
#include "parse.h"
#include "string-util.h"
#include "vdiskctl.h"

int handle_job(sd_bus *bus, const char *path, const char *label, const char *failure) {
        _cleanup_(job_result_done) JobResult result = {};
        _cleanup_json_ json_object *o = NULL;
        const char *name, *message;
        sd_bus_error e;
        bool progress;
        int r;

        if (arg_no_wait) {
                r = show_value("job", path);
                return r < 0 ? r : EXIT_OK;
        }

        progress = isatty(STDERR_FILENO) > 0 && !streq_ptr(getenv("TERM"), "dumb");

        r = job_follow(bus, path, label, progress, &result);
        if (r == -EINTR) {
                log_error(_("Stopped waiting for job %s; it keeps running in vdiskd."), path);
                log_error(_("Run 'vdiskctl jobs' to follow it, or 'vdiskctl cancel %s' to cancel it."),
                          object_path_last(path));
                return EXIT_ERROR;
        }
        if (r < 0)
                return r;

        if (arg_json != JSON_OFF) {
                o = json_object_new_object();
                if (!o ||
                    json_add_string(o, "job", path) < 0 ||
                    json_add_string(o, "state", result.state) < 0 ||
                    json_add_string(o, "error_name", result.error_name) < 0 ||
                    json_add_string(o, "error_message", result.error_message) < 0)
                        return log_oom();
                r = show_json(o);
                if (r < 0)
                        return r;
        }

        if (streq_ptr(result.state, "done"))
                return EXIT_OK;

        name = result.error_name;
        message = result.error_message;
        if (isempty(name)) {
                if (streq_ptr(result.state, "cancelled")) {
                        name = VDISK_ERROR_CANCELLED;
                        message = _("the job was cancelled");
                } else {
                        name = SD_BUS_ERROR_FAILED;
                        message = _("the job failed without saying why");
                }
        }

        e = (sd_bus_error) SD_BUS_ERROR_MAKE_CONST(name, isempty(message) ? name : message);
        return log_call_error(&e, -EIO, "%s", failure);
}

int verb_jobs(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_json_ json_object *array = NULL;
        _cleanup_table_ Table *t = NULL;
        const char *path, *operation, *vm, *disk;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "ListJobs",
                               &error, &reply, NULL);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to list the jobs"));

        array = json_object_new_array();
        t = table_new(_("JOB"), _("OPERATION"), _("VM"), _("DISK"), _("STATE"), _("PROGRESS"), NULL);
        if (!array || !t)
                return log_oom();
        table_set_align_right(t, 5);

        r = sd_bus_message_enter_container(reply, 'a', "(osss)");
        if (r < 0)
                return log_bus_parse_error(r);

        while ((r = sd_bus_message_read(reply, "(osss)", &path, &operation, &vm, &disk)) > 0) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *props = NULL;
                _cleanup_free_ char *state = NULL;
                double progress = -1.0;
                const BusPropertyMap map[] = {
                        { "State", 's', &state },
                        { "Progress", 'd', &progress },
                        {},
                };
                json_object *o;
                int k;

                /* The job may end between the two calls: then its state stays unknown ("-"). */
                k = sd_bus_call_method(bus, VDISK_BUS_NAME, path, "org.freedesktop.DBus.Properties", "GetAll",
                                       NULL, &props, "s", VDISK_JOB_INTERFACE);
                if (k >= 0)
                        (void) bus_map_properties(props, map);

                o = json_object_new_object();
                if (!o ||
                    json_add_string(o, "job", path) < 0 ||
                    json_add_string(o, "id", object_path_last(path)) < 0 ||
                    json_add_string(o, "operation", operation) < 0 ||
                    json_add_string(o, "vm", vm) < 0 ||
                    json_add_string(o, "disk", disk) < 0 ||
                    (state && json_add_string(o, "state", state) < 0) ||
                    (progress >= 0.0 && json_add_double(o, "progress", progress) < 0)) {
                        json_object_put(o);
                        return log_oom();
                }
                if (json_array_append(array, o) < 0 ||
                    table_add_cell(t, object_path_last(path)) < 0 ||
                    table_add_cell(t, operation) < 0 ||
                    table_add_cell(t, isempty(vm) ? "-" : vm) < 0 ||
                    table_add_cell(t, isempty(disk) ? "-" : disk) < 0 ||
                    table_add_cell(t, state ?: "-") < 0 ||
                    (progress >= 0.0 && progress <= 1.0 ? table_add_cellf(t, "%u%%", (unsigned) (progress * 100.0))
                                                        : table_add_cell(t, "-")) < 0)
                        return log_oom();
        }
        if (r < 0)
                return log_bus_parse_error(r);

        if (arg_json != JSON_OFF)
                return show_json(array);

        r = show_table(t);
        if (r < 0)
                return r;
        print_footer(ngettext("%zu job listed.", "%zu jobs listed.", table_get_rows(t)), table_get_rows(t));
        return EXIT_OK;
}

int verb_cancel(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *path = NULL;
        int r;

        r = job_path_from_string(argv[1], &path);
        if (r == -ENOMEM)
                return log_oom();
        if (r < 0) {
                log_usage(argv[0], _("'%s' is neither a job id (see 'vdiskctl jobs') nor a job's object path."), argv[1]);
                return EXIT_USAGE;
        }

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, path, VDISK_JOB_INTERFACE, "Cancel", &error, NULL, NULL);
        if (r < 0 && sd_bus_error_has_names(&error, SD_BUS_ERROR_UNKNOWN_OBJECT, SD_BUS_ERROR_UNKNOWN_METHOD)) {
                log_error(_("Failed to cancel job %s: there is no such job (%s)."), path, error.name);
                log_error(_("Run 'vdiskctl jobs' for the current jobs; a job that ended is removed after a while."));
                return EXIT_ERROR;
        }
        if (r < 0)
                return log_call_error(&error, r, _("Failed to cancel job %s"), path);
        return EXIT_OK;
}
