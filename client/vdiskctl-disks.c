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

#include "bus-util.h"
#include "i18n.h"
#include "output.h"
#include "string-util.h"
#include "vdiskctl.h"

/* An XML <disk> element is a few KiB; anything far beyond that is the wrong file. */
#define ADOPT_XML_MAX (UINT64_C(4) * UINT64_C(1024) * UINT64_C(1024))

int verb_list_disks(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_json_ json_object *array = NULL;
        _cleanup_table_ Table *t = NULL;
        const char *name, *layer, *format;
        uint64_t size;
        uint32_t depth;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "ListDisks",
                               &error, &reply, "s", argv[1]);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to list the disks of VM '%s'"), argv[1]);

        array = json_object_new_array();
        t = table_new(_("DISK"), _("TOP LAYER"), _("FORMAT"), _("LAYERS"), _("SIZE"), NULL);
        if (!array || !t)
                return log_oom();
        table_set_align_right(t, 3);
        table_set_align_right(t, 4);

        r = sd_bus_message_enter_container(reply, 'a', "(sssut)");
        if (r < 0)
                return log_bus_parse_error(r);

        while ((r = sd_bus_message_read(reply, "(sssut)", &name, &layer, &format, &depth, &size)) > 0) {
                char a[FORMAT_BYTES_MAX];
                json_object *o = json_object_new_object();

                if (!o ||
                    json_add_string(o, "name", name) < 0 ||
                    json_add_string(o, "top_layer", layer) < 0 ||
                    json_add_string(o, "format", format) < 0 ||
                    json_add_uint64(o, "depth", depth) < 0 ||
                    json_add_uint64(o, "virtual_size", size) < 0) {
                        json_object_put(o);
                        return log_oom();
                }
                if (json_array_append(array, o) < 0 ||
                    table_add_cell(t, name) < 0 ||
                    table_add_cell(t, layer) < 0 ||
                    table_add_cell(t, format) < 0 ||
                    table_add_cellf(t, "%" PRIu32, depth) < 0 ||
                    table_add_cell(t, format_bytes(a, sizeof(a), size)) < 0)
                        return log_oom();
        }
        if (r < 0)
                return log_bus_parse_error(r);

        if (arg_json != JSON_OFF)
                return show_json(array);

        r = show_table(t);
        if (r < 0)
                return r;
        print_footer(ngettext("%zu disk listed.", "%zu disks listed.", table_get_rows(t)), table_get_rows(t));
        return EXIT_OK;
}

int verb_create_disk(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *vm = argv[1], *disk = argv[2];
        int r;

        if (arg_image) {
                if (arg_seen & OPTION_FORMAT) {
                        log_usage(argv[0], _("--format is for blank disks only; a disk on an image takes its format from the image (leave out --format or --image)."));
                        return EXIT_USAGE;
                }
        } else {
                if (arg_seen & OPTION_MODE) {
                        log_usage(argv[0], _("--mode needs --image=NAME: it says how the disk uses that catalog image."));
                        return EXIT_USAGE;
                }
                if (arg_size == 0) {
                        log_usage(argv[0], _("A blank disk needs --size=SIZE (or use --image=NAME to base the disk on a catalog image)."));
                        return EXIT_USAGE;
                }
        }

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = manager_call_new(bus, "CreateDisk", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "ssst", vm, disk, arg_image ?: "", arg_size);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && arg_mode)
                r = sd_bus_message_append(m, "{sv}", "mode", "s", arg_mode);
        if (r >= 0 && arg_format)
                r = sd_bus_message_append(m, "{sv}", "format", "s", arg_format);
        if (r >= 0 && arg_data_file)
                r = sd_bus_message_append(m, "{sv}", "data_file", "b", 1);
        if (r >= 0 && arg_data_file_raw)
                r = sd_bus_message_append(m, "{sv}", "data_file_raw", "b", 1);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_bus_create_error(r);

        /* A copy of a large image takes a while. */
        r = sd_bus_call(bus, m, BUS_TIMEOUT_LONG, &error, NULL);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to create disk '%s' of VM '%s'"), disk, vm);
        return EXIT_OK;
}

int verb_delete_disk(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = manager_call_new(bus, "DeleteDisk", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", argv[1], argv[2]);
        if (r < 0)
                return log_bus_create_error(r);

        r = sd_bus_call(bus, m, BUS_TIMEOUT_LONG, &error, NULL);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to delete disk '%s' of VM '%s'"), argv[2], argv[1]);
        return EXIT_OK;
}

/* "vdiskctl chain" draws each backing layer under the layer it backs, indented one step per layer up to
 * this depth; deeper layers (a chain may have up to MaxChainDepth layers) continue at it. */
#define CHAIN_TREE_DEPTH_MAX 8U

/* The catalog: layer id → image name, as a JSON object used as a map. */
static int chain_catalog_names(sd_bus *bus, json_object **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_json_ json_object *names = NULL;
        const char *name, *layer, *format;
        uint64_t size, allocated;
        int r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "ListImages", NULL,
                               &reply, NULL);
        if (r < 0)
                return r;

        names = json_object_new_object();
        if (!names)
                return -ENOMEM;

        r = sd_bus_message_enter_container(reply, 'a', "(ssstt)");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_read(reply, "(ssstt)", &name, &layer, &format, &size, &allocated)) > 0)
                if (json_add_string(names, layer, name) < 0)
                        return -ENOMEM;
        if (r < 0)
                return r;

        *ret = TAKE_PTR(names);
        return 0;
}

/* One entry of GetChain's reply; the strings point into the reply message. */
typedef struct ChainLayer {
        const char *layer, *file, *format, *backing_format;
        uint64_t size, allocated;
        bool catalog;
} ChainLayer;

/* The chain as "vdiskctl chain --json" prints it. */
static int chain_to_json(const ChainLayer *layers, size_t n, json_object **ret) {
        _cleanup_json_ json_object *array = json_object_new_array();

        if (!array)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *o = json_object_new_object();

                if (!o ||
                    json_add_string(o, "layer", layers[i].layer) < 0 ||
                    json_add_string(o, "file", layers[i].file) < 0 ||
                    json_add_string(o, "format", layers[i].format) < 0 ||
                    json_add_string(o, "backing_format", layers[i].backing_format) < 0 ||
                    json_add_uint64(o, "virtual_size", layers[i].size) < 0 ||
                    json_add_uint64(o, "allocated", layers[i].allocated) < 0 ||
                    json_add_bool(o, "catalog", layers[i].catalog) < 0) {
                        json_object_put(o);
                        return -ENOMEM;
                }
                if (json_array_append(array, o) < 0)
                        return -ENOMEM;
        }
        *ret = TAKE_PTR(array);
        return 0;
}

/* One row per layer (top first): the layer id drawn as a tree, format, virtual size, allocated bytes,
 * catalog image name. */
static int chain_tree_fill(Table *t, const ChainLayer *layers, size_t n, json_object *catalog_names) {
        const char *grey = ansi_grey(stdout), *normal = ansi_normal(stdout), *branch = tree_branch();

        for (size_t i = 0; i < n; i++) {
                char a[FORMAT_BYTES_MAX], b[FORMAT_BYTES_MAX];
                size_t depth = MIN(i, (size_t) CHAIN_TREE_DEPTH_MAX);
                const char *catalog = "-";
                int r;

                if (layers[i].catalog) {
                        json_object *name;

                        /* Without the catalog (ListImages failed), say only that it is one. */
                        if (catalog_names && json_object_object_get_ex(catalog_names, layers[i].layer, &name))
                                catalog = json_object_get_string(name);
                        else
                                catalog = _("yes");
                }

                if (depth == 0)
                        r = table_add_cell(t, layers[i].layer);
                else
                        r = table_add_cellf(t, "%*s%s%s%s%s", (int) ((depth - 1) * TREE_INDENT_WIDTH), "", grey, branch,
                                            normal, layers[i].layer);
                if (r < 0 ||
                    table_add_cell(t, layers[i].format) < 0 ||
                    table_add_cell(t, format_bytes(a, sizeof(a), layers[i].size)) < 0 ||
                    table_add_cell(t, format_bytes(b, sizeof(b), layers[i].allocated)) < 0 ||
                    table_add_cell(t, catalog) < 0)
                        return -ENOMEM;
        }

        return 0;
}

int verb_chain(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_json_ json_object *array = NULL, *catalog_names = NULL;
        _cleanup_free_ ChainLayer *layers = NULL;
        _cleanup_table_ Table *t = NULL;
        size_t n = 0, allocated_n = 0;
        bool any_catalog = false;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "GetChain",
                               &error, &reply, "ss", argv[1], argv[2]);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to get the chain of disk '%s' of VM '%s'"), argv[2], argv[1]);

        r = sd_bus_message_enter_container(reply, 'a', "(ssssttb)");
        if (r < 0)
                return log_bus_parse_error(r);

        for (;;) {
                ChainLayer l;
                int catalog;

                r = sd_bus_message_read(reply, "(ssssttb)", &l.layer, &l.file, &l.format, &l.backing_format, &l.size,
                                        &l.allocated, &catalog);
                if (r <= 0)
                        break;
                l.catalog = catalog;
                if (n >= allocated_n) {
                        size_t m = MAX(allocated_n * 2, (size_t) 16);
                        ChainLayer *a = reallocarray(layers, m, sizeof(ChainLayer));

                        if (!a)
                                return log_oom();
                        layers = a;
                        allocated_n = m;
                }
                layers[n++] = l;
                any_catalog = any_catalog || l.catalog;
        }
        if (r < 0)
                return log_bus_parse_error(r);

        if (arg_json != JSON_OFF) {
                if (chain_to_json(layers, n, &array) < 0)
                        return log_oom();
                return show_json(array);
        }

        /* GetChain says only whether a layer is a catalog image; its name comes from the catalog. */
        if (any_catalog) {
                r = chain_catalog_names(bus, &catalog_names);
                if (r == -ENOMEM)
                        return log_oom();
        }

        t = table_new(_("LAYER"), _("FORMAT"), _("SIZE"), _("ALLOCATED"), _("CATALOG"), NULL);
        if (!t)
                return log_oom();
        table_set_align_right(t, 2);
        table_set_align_right(t, 3);
        if (chain_tree_fill(t, layers, n, catalog_names) < 0)
                return log_oom();

        r = show_table(t);
        if (r < 0)
                return r;
        print_footer(ngettext("%zu layer, the active one first.", "%zu layers, the active one first.",
                              table_get_rows(t)),
                     table_get_rows(t));
        return EXIT_OK;
}

int verb_snapshot(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *layer;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "Snapshot",
                               &error, &reply, "ssa{sv}", argv[1], argv[2], 0);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to take a snapshot of disk '%s' of VM '%s'"), argv[2], argv[1]);

        r = sd_bus_message_read(reply, "s", &layer);
        if (r < 0)
                return log_bus_parse_error(r);

        r = show_value("layer", layer);
        return r < 0 ? r : EXIT_OK;
}

int verb_rebase(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *label = NULL, *failure = NULL;
        const char *vm = argv[1], *disk = argv[2], *backing = argv[3], *job;
        int r;

        /* Layer ids are hex or UUIDs, so "none" cannot be one. */
        if (streq(backing, "none"))
                backing = "";

        if (isempty(backing)) {
                if (asprintf(&label, _("Flattening %s/%s"), vm, disk) < 0 ||
                    asprintf(&failure, _("Failed to flatten disk '%s' of VM '%s'"), disk, vm) < 0)
                        return log_oom();
        } else if (asprintf(&label, _("Rebasing %s/%s"), vm, disk) < 0 ||
                   asprintf(&failure, _("Failed to rebase disk '%s' of VM '%s' onto layer '%s'"), disk, vm, backing) < 0)
                return log_oom();

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = manager_call_new(bus, "Rebase", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "sss", vm, disk, backing);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && arg_unsafe)
                r = sd_bus_message_append(m, "{sv}", "unsafe", "b", 1);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_bus_create_error(r);

        r = sd_bus_call(bus, m, BUS_TIMEOUT_DEFAULT, &error, &reply);
        if (r < 0)
                return log_call_error(&error, r, "%s", failure);

        r = sd_bus_message_read(reply, "o", &job);
        if (r < 0)
                return log_bus_parse_error(r);

        return handle_job(bus, job, label, failure);
}

int verb_commit(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *label = NULL, *failure = NULL;
        const char *vm = argv[1], *disk = argv[2], *layer = argv[3], *job;
        int r;

        if (asprintf(&label, _("Committing %s/%s"), vm, disk) < 0 ||
            asprintf(&failure, _("Failed to commit layer '%s' of disk '%s' of VM '%s'"), layer, disk, vm) < 0)
                return log_oom();

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "Commit",
                               &error, &reply, "sssa{sv}", vm, disk, layer, 0);
        if (r < 0)
                return log_call_error(&error, r, "%s", failure);

        r = sd_bus_message_read(reply, "o", &job);
        if (r < 0)
                return log_bus_parse_error(r);

        return handle_job(bus, job, label, failure);
}

int verb_verify(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_json_ json_object *array = NULL;
        _cleanup_table_ Table *t = NULL;
        const char *disk, *layer, *description;
        size_t n;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = manager_call_new(bus, "Verify", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "s", argv[1]);
        if (r < 0)
                return log_bus_create_error(r);

        /* Reads every header of every disk of the VM. */
        r = sd_bus_call(bus, m, BUS_TIMEOUT_LONG, &error, &reply);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to verify VM '%s'"), argv[1]);

        array = json_object_new_array();
        t = table_new(_("DISK"), _("LAYER"), _("PROBLEM"), NULL);
        if (!array || !t)
                return log_oom();

        r = sd_bus_message_enter_container(reply, 'a', "(sss)");
        if (r < 0)
                return log_bus_parse_error(r);

        while ((r = sd_bus_message_read(reply, "(sss)", &disk, &layer, &description)) > 0) {
                json_object *o = json_object_new_object();

                if (!o ||
                    json_add_string(o, "disk", disk) < 0 ||
                    json_add_string(o, "layer", layer) < 0 ||
                    json_add_string(o, "description", description) < 0) {
                        json_object_put(o);
                        return log_oom();
                }
                if (json_array_append(array, o) < 0 ||
                    table_add_cell(t, isempty(disk) ? "-" : disk) < 0 ||
                    table_add_cell(t, isempty(layer) ? "-" : layer) < 0 ||
                    table_add_cell(t, description) < 0)
                        return log_oom();
        }
        if (r < 0)
                return log_bus_parse_error(r);

        n = table_get_rows(t);

        if (arg_json != JSON_OFF) {
                r = show_json(array);
                if (r < 0)
                        return r;
        } else if (n == 0)
                printf(_("VM '%s' is consistent: its records match the image headers.\n"), argv[1]);
        else {
                r = show_table(t);
                if (r < 0)
                        return r;
                print_footer(ngettext("%zu problem found. Restore the affected images or ask an administrator.",
                                      "%zu problems found. Restore the affected images or ask an administrator.", n),
                             n);
        }

        return n == 0 ? EXIT_OK : EXIT_PROBLEMS;
}

int verb_xml(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *xml;
        size_t l;
        int r;

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, "GetDomainXML",
                               &error, &reply, "ss", argv[1], argv[2]);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to get the libvirt XML of disk '%s' of VM '%s'"), argv[2], argv[1]);

        r = sd_bus_message_read(reply, "s", &xml);
        if (r < 0)
                return log_bus_parse_error(r);

        if (arg_json != JSON_OFF) {
                r = show_value("xml", xml);
                return r < 0 ? r : EXIT_OK;
        }

        l = strlen(xml);
        fputs(xml, stdout);
        if (l == 0 || xml[l - 1] != '\n')
                fputc('\n', stdout);
        return EXIT_OK;
}

static int read_text_file(const char *path, char **ret) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        size_t size = 0, allocated = 0;

        if (streq(path, "-"))
                fd = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
        else
                fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;

        for (;;) {
                ssize_t n;

                if (allocated - size < 4096) {
                        char *p;

                        if (allocated > ADOPT_XML_MAX)
                                return -EFBIG;
                        allocated = allocated * 2 + 8192;
                        p = realloc(buf, allocated + 1);
                        if (!p)
                                return -ENOMEM;
                        buf = p;
                }

                n = read(fd, buf + size, allocated - size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        break;
                size += (size_t) n;
        }

        if (size > ADOPT_XML_MAX)
                return -EFBIG;
        if (memchr(buf ?: "", 0, size))
                return -EBADMSG;

        if (!buf) {
                buf = strdup("");
                if (!buf)
                        return -ENOMEM;
        }
        buf[size] = 0;
        *ret = TAKE_PTR(buf);
        return 0;
}

int verb_adopt(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        _cleanup_free_ char *xml = NULL;
        const char *vm = argv[1], *file = argv[2], *disk;
        int r;

        r = read_text_file(file, &xml);
        if (r == -EFBIG) {
                log_error(_("'%s' is larger than 4 MiB, which is far too large for a libvirt <disk> element; pass the file holding just the <disk> element."),
                          file);
                return EXIT_ERROR;
        }
        if (r == -EBADMSG) {
                log_error(_("'%s' contains NUL bytes, so it is not an XML text file; pass the file holding the <disk> element."), file);
                return EXIT_ERROR;
        }
        if (r < 0)
                return log_error_errno(r, _("Failed to read '%s'"), file);

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        r = manager_call_new(bus, "AdoptDomainXML", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", vm, xml);
        if (r == -EINVAL) {
                log_error(_("'%s' is not valid UTF-8 text; save the XML as UTF-8 and try again."), file);
                return EXIT_ERROR;
        }
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && arg_move)
                r = sd_bus_message_append(m, "{sv}", "move", "b", 1);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_bus_create_error(r);

        /* Checks and copies every file of the chain. */
        r = sd_bus_call(bus, m, BUS_TIMEOUT_LONG, &error, &reply);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to adopt the disk described in '%s' into VM '%s'"), file, vm);

        r = sd_bus_message_read(reply, "s", &disk);
        if (r < 0)
                return log_bus_parse_error(r);

        r = show_value("disk", disk);
        return r < 0 ? r : EXIT_OK;
}
