/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * QEMU's option values are lists "key=value,key=value" where ",," is a comma inside a value and a first
 * item without "=" is the implied key (the driver of -device, the size of -m, the type of -machine).
 * -device also takes a JSON object. Every argument that starts with "-" is read as an option: a value
 * that is exactly "-device" (say, a kernel command line) would be misread, which nobody writes.
 */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "i18n.h"
#include "parse.h"
#include "qemu-args.h"
#include "string-util.h"

static const char *const qemu_export_table[_QEMU_EXPORT_MAX] = {
        [QEMU_EXPORT_VHOST_USER_BLK] = "vhost-user-blk",
        [QEMU_EXPORT_NBD] = "nbd",
};

const char *qemu_export_to_string(QemuExport e) {
        if (e < 0 || e >= _QEMU_EXPORT_MAX)
                return NULL;
        return qemu_export_table[e];
}

QemuExport qemu_export_from_string(const char *s) {
        if (!s)
                return _QEMU_EXPORT_INVALID;
        for (QemuExport e = 0; e < _QEMU_EXPORT_MAX; e++)
                if (streq(s, qemu_export_table[e]))
                        return e;
        return _QEMU_EXPORT_INVALID;
}

#define VHOST_DRIVER "vhost-user-blk-pci"
#define VIRTIO_BLK_DRIVER "virtio-blk-pci"

/* The properties of a virtio-blk-pci device that vhost-user-blk-pci has too (QEMU 7.2's
 * "-device vhost-user-blk-pci,help", plus qdev's id and bus). chardev and config-wce are vdiskctl's. */
static const char *const vhost_properties[] = {
        "id", "bus",
        "acpi-index", "addr", "aer", "any_layout", "ats", "bootindex", "class", "disable-legacy",
        "disable-modern", "discard", "event_idx", "failover_pair_id", "indirect_desc", "iommu_platform",
        "migrate-extra", "modern-pio-notify", "multifunction", "notify_on_empty", "num-queues", "packed",
        "page-per-vq", "queue-size", "queue_reset", "rombar", "romfile", "romsize", "use-disabled-flag",
        "use-started", "vectors", "virtio-pci-bus-master-bug-migration", "write-zeroes",
        "x-ats-page-aligned", "x-disable-legacy-check", "x-disable-pcie", "x-ignore-backend-features",
        "x-pcie-deverr-init", "x-pcie-extcap-init", "x-pcie-flr-init", "x-pcie-lnkctl-init",
        "x-pcie-lnksta-dllla", "x-pcie-pm-init",
};

/* The spellings of "off" QEMU accepts for a boolean property. */
static const char *const bool_off[] = { "off", "no", "false", "n" };

static bool in_table(const char *const *table, size_t n, const char *s, size_t len) {
        for (size_t i = 0; i < n; i++)
                if (strlen(table[i]) == len && strncmp(table[i], s, len) == 0)
                        return true;
        return false;
}

void qemu_args_free(char **v) {
        if (!v)
                return;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
}

static void qemu_args_freep(char ***v) {
        qemu_args_free(*v);
}

static void json_object_putp_local(json_object **o) {
        if (*o)
                json_object_put(*o);
}

static const char *json_get_string(json_object *o, const char *key) {
        json_object *v;

        if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v) ||
            !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

static json_object *json_get_object(json_object *o, const char *key) {
        json_object *v;

        if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v) ||
            !json_object_is_type(v, json_type_object))
                return NULL;
        return v;
}

int qemu_export_attach_check(json_object *attach, const char *disk, QemuExport type) {
        json_object *v, *o;

        if (!json_object_is_type(attach, json_type_object) || !streq_ptr(json_get_string(attach, "type"),
                                                                         qemu_export_to_string(type)))
                return -EBADMSG;
        /* The index of the socket in the reply's fds: there is one. */
        if (!json_object_object_get_ex(attach, "socket", &v) || !json_object_is_type(v, json_type_int) ||
            json_object_get_int64(v) != 0)
                return -EBADMSG;
        if (json_object_object_get_ex(attach, "shared-memory", &v) && !json_object_is_type(v, json_type_boolean))
                return -EBADMSG;

        switch (type) {
        case QEMU_EXPORT_VHOST_USER_BLK:
                o = json_get_object(attach, "chardev");
                if (!o || !streq_ptr(json_get_string(o, "id"), disk) || !streq_ptr(json_get_string(o, "backend"), "socket"))
                        return -EBADMSG;
                o = json_get_object(attach, "device");
                if (!o || !streq_ptr(json_get_string(o, "driver"), VHOST_DRIVER) ||
                    !streq_ptr(json_get_string(o, "chardev"), disk))
                        return -EBADMSG;
                return 0;

        case QEMU_EXPORT_NBD:
                o = json_get_object(attach, "blockdev");
                if (!o || !streq_ptr(json_get_string(o, "driver"), "nbd") ||
                    !streq_ptr(json_get_string(o, "node-name"), disk))
                        return -EBADMSG;
                o = json_get_object(o, "server");
                if (!o || !streq_ptr(json_get_string(o, "type"), "fd"))
                        return -EBADMSG;
                return 0;

        default:
                return -EINVAL;
        }
}

/* One item of a "key=value,..." list starting at s: its length (up to the next single comma). */
static size_t item_length(const char *s) {
        size_t i = 0;

        for (;;) {
                if (s[i] == '\0')
                        return i;
                if (s[i] == ',') {
                        if (s[i + 1] != ',')
                                return i;
                        i += 2;
                        continue;
                }
                i++;
        }
}

typedef struct Item {
        const char *text; /* the whole item, with its ",," escapes */
        size_t length;
        size_t key_length; /* the key, or the whole item if it has no "=" */
        const char *value; /* after the "=", NULL if none */
        size_t value_length;
} Item;

/* Calls item by item; returns false at the end. *p starts at the list. */
static bool item_next(const char **p, Item *ret) {
        const char *s = *p, *eq;
        size_t n;

        if (!s)
                return false;
        n = item_length(s);
        eq = memchr(s, '=', n);
        *ret = (Item) {
                .text = s,
                .length = n,
                .key_length = eq ? (size_t) (eq - s) : n,
                .value = eq ? eq + 1 : NULL,
                .value_length = eq ? n - (size_t) (eq - s) - 1 : 0,
        };
        *p = s[n] ? s + n + 1 : NULL;
        return true;
}

static bool item_key_is(const Item *i, const char *key) {
        return i->value && strlen(key) == i->key_length && strncmp(i->text, key, i->key_length) == 0;
}

/* The value of key in a list (the implied first key counts as `implied`), or NULL; *ret_length set. */
static const char *list_get(const char *list, const char *key, const char *implied, size_t *ret_length) {
        const char *found = NULL, *p = list;
        bool first = true;
        Item i;

        while (item_next(&p, &i)) {
                if (first && !i.value && implied && streq(key, implied)) {
                        found = i.text;
                        *ret_length = i.length;
                } else if (item_key_is(&i, key)) {
                        found = i.value;
                        *ret_length = i.value_length;
                }
                first = false;
        }
        return found; /* the last one counts, as in QEMU */
}

static bool span_is(const char *s, size_t n, const char *what) {
        return s && strlen(what) == n && strncmp(s, what, n) == 0;
}

static const QemuExportDisk *find_disk(const QemuExportDisk *disks, size_t n_disks, QemuExport type, const char *name,
                                       size_t length) {
        for (size_t j = 0; j < n_disks; j++)
                if (disks[j].type == type && span_is(name, length, disks[j].disk))
                        return &disks[j];
        return NULL;
}

static int fail(char **ret_error, const char *format, ...) _printf_(2, 3);
static int fail(char **ret_error, const char *format, ...) {
        va_list ap;
        int r;

        va_start(ap, format);
        r = vasprintf(ret_error, format, ap);
        va_end(ap);
        if (r < 0) {
                *ret_error = NULL;
                return -ENOMEM;
        }
        return -EINVAL;
}

/* -device DRIVER,PROP=VALUE,... Sets *ret to the rewritten value, or NULL if it stays as it is. */
static int device_rewrite_list(const char *value, const QemuExportDisk *disks, size_t n_disks, char **ret,
                               char **ret_error) {
        const char *driver, *drive, *chardev, *p;
        size_t driver_length = 0, drive_length = 0, chardev_length = 0, length;
        const QemuExportDisk *d = NULL;
        char *out;
        bool first = true;
        Item i;

        driver = list_get(value, "driver", "driver", &driver_length);
        drive = list_get(value, "drive", NULL, &drive_length);
        chardev = list_get(value, "chardev", NULL, &chardev_length);

        if (span_is(driver, driver_length, VIRTIO_BLK_DRIVER))
                d = find_disk(disks, n_disks, QEMU_EXPORT_VHOST_USER_BLK, drive, drive_length);
        else if (span_is(driver, driver_length, VHOST_DRIVER))
                d = find_disk(disks, n_disks, QEMU_EXPORT_VHOST_USER_BLK, chardev, chardev_length);
        else if (drive && (d = find_disk(disks, n_disks, QEMU_EXPORT_VHOST_USER_BLK, drive, drive_length)))
                return fail(ret_error,
                            _("Disk '%s' is exported as vhost-user-blk: '-device %s' cannot attach it. Use "
                              "virtio-blk-pci, which vdiskctl turns into vhost-user-blk-pci."),
                            d->disk, value);
        if (!d) {
                *ret = NULL;
                return 0;
        }

        /* What stays: the properties vhost-user-blk-pci has too, as the user wrote them. */
        length = strlen(VHOST_DRIVER ",chardev=,config-wce=off") + strlen(d->disk) + strlen(value) + 1;
        out = malloc(length);
        if (!out)
                return -ENOMEM;
        snprintf(out, length, VHOST_DRIVER ",chardev=%s,config-wce=off", d->disk);

        for (p = value; item_next(&p, &i); first = false) {
                if ((first && !i.value) || item_key_is(&i, "driver") || item_key_is(&i, "drive") ||
                    item_key_is(&i, "chardev"))
                        continue;
                if (span_is(i.text, i.key_length, "config-wce")) {
                        if (!i.value || !in_table(bool_off, ELEMENTSOF(bool_off), i.value, i.value_length)) {
                                free(out);
                                return fail(ret_error,
                                            _("'-device %s' turns config-wce on: disk '%s' is exported as "
                                              "vhost-user-blk, which needs config-wce=off so that the guest "
                                              "flushes its writes."),
                                            value, d->disk);
                        }
                        continue;
                }
                if (!in_table(vhost_properties, ELEMENTSOF(vhost_properties), i.text, i.key_length)) {
                        int r = fail(ret_error,
                                     _("Property '%.*s' of '-device %s' does not exist in vhost-user-blk-pci, "
                                       "which attaches disk '%s' (--export=vhost-user-blk): remove it."),
                                     (int) i.key_length, i.text, value, d->disk);
                        free(out);
                        return r;
                }
                strcat(out, ",");
                strncat(out, i.text, i.length);
        }

        *ret = out;
        return 0;
}

/* -device {"driver": ..., ...}, QEMU's JSON form. Anything but an object stays for QEMU to judge. */
static int device_rewrite_json(const char *value, const QemuExportDisk *disks, size_t n_disks, char **ret,
                               char **ret_error) {
        _cleanup_(json_object_putp_local) json_object *o = NULL, *out = NULL;
        const char *driver, *drive, *chardev, *s;
        const QemuExportDisk *d = NULL;
        json_object *v;

        o = json_tokener_parse(value);
        if (!json_object_is_type(o, json_type_object)) {
                *ret = NULL;
                return 0;
        }

        driver = json_get_string(o, "driver");
        drive = json_get_string(o, "drive");
        chardev = json_get_string(o, "chardev");
        if (streq_ptr(driver, VIRTIO_BLK_DRIVER) && drive)
                d = find_disk(disks, n_disks, QEMU_EXPORT_VHOST_USER_BLK, drive, strlen(drive));
        else if (streq_ptr(driver, VHOST_DRIVER) && chardev)
                d = find_disk(disks, n_disks, QEMU_EXPORT_VHOST_USER_BLK, chardev, strlen(chardev));
        else if (drive && (d = find_disk(disks, n_disks, QEMU_EXPORT_VHOST_USER_BLK, drive, strlen(drive))))
                return fail(ret_error,
                            _("Disk '%s' is exported as vhost-user-blk: '-device %s' cannot attach it. Use "
                              "virtio-blk-pci, which vdiskctl turns into vhost-user-blk-pci."),
                            d->disk, value);
        if (!d) {
                *ret = NULL;
                return 0;
        }

        out = json_object_new_object();
        if (!out || json_object_object_add(out, "driver", json_object_new_string(VHOST_DRIVER)) < 0 ||
            json_object_object_add(out, "chardev", json_object_new_string(d->disk)) < 0 ||
            json_object_object_add(out, "config-wce", json_object_new_boolean(false)) < 0)
                return -ENOMEM;

        json_object_object_foreach(o, key, val) {
                if (streq(key, "driver") || streq(key, "drive") || streq(key, "chardev"))
                        continue;
                if (streq(key, "config-wce")) {
                        bool off = json_object_is_type(val, json_type_boolean) ? !json_object_get_boolean(val) :
                                   json_object_is_type(val, json_type_string) &&
                                   in_table(bool_off, ELEMENTSOF(bool_off), json_object_get_string(val),
                                            strlen(json_object_get_string(val)));
                        if (!off)
                                return fail(ret_error,
                                            _("'-device %s' turns config-wce on: disk '%s' is exported as "
                                              "vhost-user-blk, which needs config-wce=off so that the guest "
                                              "flushes its writes."),
                                            value, d->disk);
                        continue;
                }
                if (!in_table(vhost_properties, ELEMENTSOF(vhost_properties), key, strlen(key)))
                        return fail(ret_error,
                                    _("Property '%.*s' of '-device %s' does not exist in vhost-user-blk-pci, "
                                      "which attaches disk '%s' (--export=vhost-user-blk): remove it."),
                                    (int) strlen(key), key, value, d->disk);
                v = json_object_get(val);
                if (json_object_object_add(out, key, v) < 0) {
                        json_object_put(v);
                        return -ENOMEM;
                }
        }

        s = json_object_to_json_string_ext(out, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!s || !(*ret = strdup(s)))
                return -ENOMEM;
        return 0;
}

static int device_rewrite(const char *value, const QemuExportDisk *disks, size_t n_disks, char **ret,
                          char **ret_error) {
        if (value[0] == '{')
                return device_rewrite_json(value, disks, n_disks, ret, ret_error);
        return device_rewrite_list(value, disks, n_disks, ret, ret_error);
}

int qemu_parse_memory_option(const char *value, uint64_t *ret) {
        const char *size;
        size_t length = 0;
        uint64_t v;
        char *copy;
        int r;

        size = list_get(value, "size", "size", &length);
        if (!size) {
                *ret = 0;
                return 0;
        }
        if (length == 0)
                return -EINVAL;
        /* No suffix: MiB. */
        if (asprintf(&copy, "%.*s%s", (int) length, size, ascii_isdigit(size[length - 1]) ? "M" : "") < 0)
                return -ENOMEM;
        r = parse_size(copy, &v);
        free(copy);
        if (r < 0)
                return r;
        if (v == 0)
                return -EINVAL;
        if (v > UINT64_MAX - (QEMU_RAM_SIZE_ALIGN - 1))
                return -ERANGE;
        *ret = (v + QEMU_RAM_SIZE_ALIGN - 1) / QEMU_RAM_SIZE_ALIGN * QEMU_RAM_SIZE_ALIGN;
        return 0;
}

/* "-device" and "--device" are the same option to QEMU. */
static const char *option_name(const char *arg) {
        if (arg[0] != '-')
                return NULL;
        return arg[1] == '-' ? arg + 2 : arg + 1;
}

static int strv_push(char **v, size_t *k, char *s) {
        if (!s)
                return -ENOMEM;
        v[(*k)++] = s;
        return 0;
}

static int strv_pushf(char **v, size_t *k, const char *format, ...) _printf_(3, 4);
static int strv_pushf(char **v, size_t *k, const char *format, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, format);
        r = vasprintf(&s, format, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        v[(*k)++] = s;
        return 0;
}

static int nbd_blockdev(const QemuExportDisk *d, char **ret) {
        _cleanup_(json_object_putp_local) json_object *copy = NULL;
        json_object *server;
        const char *s;
        char buf[32];

        if (json_object_deep_copy(json_get_object(d->attach, "blockdev"), &copy, NULL) < 0)
                return -ENOMEM;
        server = json_get_object(copy, "server");
        if (!server)
                return -EBADMSG;
        snprintf(buf, sizeof(buf), "%d", d->fd);
        if (json_object_object_add(server, "str", json_object_new_string(buf)) < 0)
                return -ENOMEM;
        s = json_object_to_json_string_ext(copy, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!s || !(*ret = strdup(s)))
                return -ENOMEM;
        return 0;
}

/* The user's part of the command line, into v (if not NULL) with the -device options of vhost-user-blk
 * disks rewritten; also learns whether a memory backend is set and, if shared memory is needed, the RAM
 * size. */
static int rewrite_command(char *const *command, size_t n_command, const QemuExportDisk *disks, size_t n_disks,
                           bool shared, char **v, size_t *k, uint64_t *ret_ram_size, bool *ret_have_backend,
                           char **ret_error) {
        uint64_t ram_size = QEMU_DEFAULT_RAM_SIZE;
        bool have_backend = false;
        int r;

        for (size_t i = 0; i < n_command; i++) {
                const char *name = i > 0 ? option_name(command[i]) : NULL;
                char *rewritten = NULL;

                if (v) {
                        r = strv_push(v, k, strdup(command[i]));
                        if (r < 0)
                                return r;
                }
                if (!name || i + 1 >= n_command)
                        continue;

                if (streq(name, "device")) {
                        r = device_rewrite(command[i + 1], disks, n_disks, &rewritten, ret_error);
                        if (r < 0)
                                return r;
                } else if (streq(name, "m")) {
                        uint64_t size;

                        if (!shared)
                                goto value;
                        r = qemu_parse_memory_option(command[i + 1], &size);
                        if (r == -ENOMEM)
                                return r;
                        if (r < 0)
                                return fail(ret_error, _("Invalid memory size in '-m %s'."), command[i + 1]);
                        if (size > 0)
                                ram_size = size;
                } else if (streq(name, "machine") || streq(name, "M")) {
                        size_t length;

                        if (list_get(command[i + 1], "memory-backend", NULL, &length))
                                have_backend = true;
                } else
                        continue;

        value:
                /* The option's value: taken as it is, or rewritten. */
                if (v) {
                        r = strv_push(v, k, rewritten ?: strdup(command[i + 1]));
                        if (r < 0)
                                return r;
                } else
                        free(rewritten);
                i++;
        }

        *ret_ram_size = ram_size;
        *ret_have_backend = have_backend;
        return 0;
}

int qemu_args_check_export(char *const *command, size_t n_command, const QemuExportDisk *disks, size_t n_disks,
                           char **ret_error) {
        uint64_t ram_size;
        bool have_backend, shared = false;

        /* vhost-user-blk is the export that needs the guest's RAM. */
        for (size_t j = 0; j < n_disks; j++)
                shared = shared || disks[j].type == QEMU_EXPORT_VHOST_USER_BLK;
        *ret_error = NULL;
        return rewrite_command(command, n_command, disks, n_disks, shared, NULL, NULL, &ram_size, &have_backend,
                               ret_error);
}

int qemu_args_build_export(char *const *command, size_t n_command, const QemuExportDisk *disks, size_t n_disks,
                           char ***ret, char **ret_error) {
        _cleanup_(qemu_args_freep) char **v = NULL;
        uint64_t ram_size;
        bool have_backend, shared = false;
        size_t k = 0;
        int r;

        *ret_error = NULL;
        for (size_t j = 0; j < n_disks; j++) {
                json_object *s;

                r = qemu_export_attach_check(disks[j].attach, disks[j].disk, disks[j].type);
                if (r < 0)
                        return r;
                if (json_object_object_get_ex(disks[j].attach, "shared-memory", &s) && json_object_get_boolean(s))
                        shared = true;
        }

        v = calloc(n_command + 2 * n_disks + 4 + 1, sizeof(char *));
        if (!v)
                return -ENOMEM;

        r = rewrite_command(command, n_command, disks, n_disks, shared, v, &k, &ram_size, &have_backend, ret_error);
        if (r < 0)
                return r;

        for (size_t j = 0; j < n_disks; j++) {
                const QemuExportDisk *d = &disks[j];
                char *blockdev = NULL;

                if (d->type == QEMU_EXPORT_VHOST_USER_BLK) {
                        r = strv_push(v, &k, strdup("-chardev"));
                        if (r >= 0)
                                r = strv_pushf(v, &k, "socket,id=%s,fd=%d", d->disk, d->fd);
                } else {
                        r = strv_push(v, &k, strdup("-blockdev"));
                        if (r >= 0)
                                r = nbd_blockdev(d, &blockdev);
                        if (r >= 0)
                                r = strv_push(v, &k, blockdev);
                }
                if (r < 0)
                        return r;
        }

        if (shared && !have_backend) {
                r = strv_push(v, &k, strdup("-object"));
                if (r >= 0)
                        r = strv_pushf(v, &k, "memory-backend-memfd,id=" QEMU_SHARED_MEMORY_ID ",size=%" PRIu64 ",share=on",
                                       ram_size);
                if (r >= 0)
                        r = strv_push(v, &k, strdup("-machine"));
                if (r >= 0)
                        r = strv_push(v, &k, strdup("memory-backend=" QEMU_SHARED_MEMORY_ID));
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(v);
        return 0;
}
