/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * "vdiskctl open": takes a lease on each given disk of a VM (OpenDisk), collects all of its file
 * descriptors (at most 16 arrive per message; Lease.GetFds pages the rest) and either becomes the
 * hypervisor (exec with -add-fd and -blockdev arguments) or holds the leases until SIGINT/SIGTERM. A
 * lease lives as long as the bus connection that took it, so in the exec case that connection is handed
 * down to the hypervisor. With --export, vdiskd serves each disk through a storage helper and hands out
 * one socket per disk, with a JSON object that says how to attach it (qemu-args.c writes the options).
 */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "bus-util.h"
#include "i18n.h"
#include "output.h"
#include "qemu-args.h"
#include "string-util.h"
#include "vdiskctl.h"


/* What GetFds hands out per call; the daemon caps it the same way (one message's worth of fds on a
 * stock system bus). */
#define LEASE_FDS_PER_CALL 16U

/* Received fds are moved above stdin/stdout/stderr. */
#define LEASE_FD_MIN 3

typedef struct DiskLease {
        const char *vm;
        const char *disk;
        char *path;
        json_object *blockdev; /* the array of -blockdev nodes, deepest first; with --export, vdiskd's
                                * attach description (an object) */
        int *fds;              /* fd i of the lease is /dev/fdset/<set_offset+i+1> */
        size_t n_fds;
        size_t n_alloc;
        size_t set_offset; /* the fds of the leases before this one, for one hypervisor */
} DiskLease;

/* The leases of one "vdiskctl open": the disks as given (DISK[,DISK...]) and one lease each. */
typedef struct DiskLeases {
        const char *vm;
        const char *disks;
        char *names; /* a copy of `disks`, cut at the commas: what the DiskLease's disk fields point to */
        DiskLease *l;
        size_t n;
} DiskLeases;

static void disk_lease_done(DiskLease *l) {
        for (size_t i = 0; i < l->n_fds; i++)
                safe_close(l->fds[i]);
        free(l->fds);
        free(l->path);
        if (l->blockdev)
                json_object_put(l->blockdev);
        *l = (DiskLease) {};
}

static void disk_leases_done(DiskLeases *ls) {
        for (size_t j = 0; j < ls->n; j++)
                disk_lease_done(&ls->l[j]);
        free(ls->l);
        free(ls->names);
        *ls = (DiskLeases) {};
}

/* DISK[,DISK...]: disk names cannot contain a comma. Returns 0, or EXIT_USAGE after saying why. */
static int disk_leases_parse(DiskLeases *ls, const char *verb, const char *vm, const char *disks) {
        size_t n = 1;

        for (const char *c = disks; *c; c++)
                n += *c == ',';
        ls->vm = vm;
        ls->disks = disks;
        ls->names = strdup(disks);
        ls->l = calloc(n, sizeof(DiskLease));
        if (!ls->names || !ls->l)
                return log_oom();

        for (char *name = ls->names, *next; name; name = next) {
                next = strchr(name, ',');
                if (next)
                        *next++ = '\0';
                if (isempty(name)) {
                        log_usage(verb, _("Invalid disk list '%s': give disk names separated by commas."), disks);
                        return EXIT_USAGE;
                }
                for (size_t j = 0; j < ls->n; j++)
                        if (streq(ls->l[j].disk, name)) {
                                log_usage(verb, _("Disk '%s' is named twice."), name);
                                return EXIT_USAGE;
                        }
                ls->l[ls->n++] = (DiskLease) { .vm = vm, .disk = name };
        }
        return 0;
}

/* Takes over the fds of an "ah" from a reply: checked with fstat and duplicated (O_CLOEXEC) so that
 * they outlive the message. */
static int disk_lease_take_fds(DiskLease *l, sd_bus_message *reply, size_t *ret_taken) {
        bool want_socket = arg_export; /* an export's one fd is a socket to the storage helper */
        size_t taken = 0;
        int fd, r;

        r = sd_bus_message_enter_container(reply, 'a', "h");
        if (r < 0)
                return log_bus_parse_error(r);

        while ((r = sd_bus_message_read_basic(reply, 'h', &fd)) > 0) {
                struct stat st;
                int copy;

                /* More than FdCount announced: not the daemon we know. */
                if (l->n_fds >= l->n_alloc)
                        return log_bus_parse_error(-EBADMSG);

                if (fstat(fd, &st) < 0)
                        return log_error_errno(-errno, _("Failed to take over a file descriptor passed by vdiskd"));
                if (want_socket ? !S_ISSOCK(st.st_mode) : !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
                        return log_error_errno(-EBADFD, _("Failed to take over a file descriptor passed by vdiskd"));

                copy = fcntl(fd, F_DUPFD_CLOEXEC, LEASE_FD_MIN);
                if (copy < 0)
                        return log_error_errno(-errno, _("Failed to take over a file descriptor passed by vdiskd"));
                l->fds[l->n_fds++] = copy;
                taken++;
        }
        if (r < 0)
                return log_bus_parse_error(r);

        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return log_bus_parse_error(r);

        *ret_taken = taken;
        return 0;
}

static int disk_lease_parse_blockdev(DiskLease *l, const char *text) {
        enum json_tokener_error jerr;
        json_object *o;

        o = json_tokener_parse_verbose(text, &jerr);
        if (!o)
                return log_bus_parse_error(-EBADMSG);
        l->blockdev = o;

        if (arg_export)
                return qemu_export_attach_check(o, l->disk, qemu_export_from_string(arg_export)) < 0 ?
                               log_bus_parse_error(-EBADMSG) : 0;

        if (!json_object_is_type(o, json_type_array))
                return log_bus_parse_error(-EBADMSG);
        for (size_t i = 0; i < json_object_array_length(o); i++)
                if (!json_object_is_type(json_object_array_get_idx(o, i), json_type_object))
                        return log_bus_parse_error(-EBADMSG);
        return 0;
}

static int json_replace_string(json_object *o, const char *key, const char *value) {
        json_object *v = json_object_new_string(value);

        if (!v || json_object_object_add(o, key, v) < 0) {
                if (v)
                        json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

/* Several disks for one hypervisor: every lease numbers its fd sets from 1 and names its inner nodes
 * as every other lease does (QEMU: "Duplicate nodes with node-name='vdisk-file-0'"). So the leases after
 * the first are shifted: fd sets by the fds of the leases before them, and every node name but the
 * disk's own (the top format node, which a -device refers to) gets the suffix "-<index>", in the nodes
 * and in the references to them. A description naming a file other than /dev/fdset/<1..FdCount> is not
 * vdiskd's: refused. */
static int disk_lease_relabel(DiskLease *l, size_t set_offset, size_t index) {
        static const char *const refs[] = { "node-name", "file", "backing", "data-file" };
        size_t n_nodes = json_object_array_length(l->blockdev);

        l->set_offset = set_offset;
        for (size_t i = 0; i < n_nodes; i++) {
                json_object *node = json_object_array_get_idx(l->blockdev, i), *v;
                char buf[64];

                if (json_object_object_get_ex(node, "filename", &v)) {
                        const char *set = json_object_is_type(v, json_type_string) ?
                                startswith(json_object_get_string(v), "/dev/fdset/") : NULL;
                        unsigned long k;
                        char *end;

                        if (!set || !ascii_isdigit(set[0]))
                                return log_bus_parse_error(-EBADMSG);
                        errno = 0;
                        k = strtoul(set, &end, 10);
                        if (errno != 0 || *end || k == 0 || k > l->n_fds)
                                return log_bus_parse_error(-EBADMSG);
                        snprintf(buf, sizeof(buf), "/dev/fdset/%zu", (size_t) k + set_offset);
                        if (json_replace_string(node, "filename", buf) < 0)
                                return log_oom();
                }

                for (size_t r = 0; r < ELEMENTSOF(refs); r++) {
                        const char *name;

                        if (!json_object_object_get_ex(node, refs[r], &v) || !json_object_is_type(v, json_type_string))
                                continue;
                        name = json_object_get_string(v);
                        if (streq(name, l->disk))
                                continue;
                        if ((size_t) snprintf(buf, sizeof(buf), "%s-%zu", name, index) >= sizeof(buf))
                                return log_bus_parse_error(-EBADMSG);
                        if (json_replace_string(node, refs[r], buf) < 0)
                                return log_oom();
                }
        }
        return 0;
}

/* Returns 0 with the lease in *l, an exit status > 0 if vdiskd refused, or < 0 after logging. */
static int disk_lease_open(sd_bus *bus, DiskLease *l) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        const char *path, *blockdev;
        uint32_t count;
        size_t taken;
        int r;

        r = manager_call_new(bus, "OpenDisk", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", l->vm, l->disk);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && arg_read_only)
                r = sd_bus_message_append(m, "{sv}", "read_only", "b", 1);
        if (r >= 0 && arg_export)
                r = sd_bus_message_append(m, "{sv}", "export", "s", arg_export);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_bus_create_error(r);

        /* vdiskd compares every header of the chain with its records first. */
        r = sd_bus_call(bus, m, BUS_TIMEOUT_LONG, &error, &reply);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to open disk '%s' of VM '%s'"), l->disk, l->vm);

        r = sd_bus_message_read(reply, "os", &path, &blockdev);
        if (r < 0)
                return log_bus_parse_error(r);
        l->path = strdup(path);
        if (!l->path)
                return log_oom();

        r = disk_lease_parse_blockdev(l, blockdev);
        if (r < 0)
                return r;

        r = sd_bus_get_property_trivial(bus, VDISK_BUS_NAME, l->path, VDISK_LEASE_INTERFACE, "FdCount", &error, 'u',
                                        &count);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to get the file descriptors of disk '%s' of VM '%s'"), l->disk,
                                      l->vm);

        /* An export is one socket. */
        if (arg_export && count != 1)
                return log_bus_parse_error(-EBADMSG);

        l->fds = calloc(MAX(count, 1U), sizeof(int));
        if (!l->fds)
                return log_oom();
        l->n_alloc = count;

        r = disk_lease_take_fds(l, reply, &taken);
        if (r < 0)
                return r;

        while (l->n_fds < l->n_alloc) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *more = NULL;
                uint32_t want = (uint32_t) MIN(l->n_alloc - l->n_fds, (size_t) LEASE_FDS_PER_CALL);

                r = sd_bus_call_method(bus, VDISK_BUS_NAME, l->path, VDISK_LEASE_INTERFACE, "GetFds", &error, &more,
                                       "uu", (uint32_t) l->n_fds, want);
                if (r < 0)
                        return log_call_error(&error, r, _("Failed to get the file descriptors of disk '%s' of VM '%s'"),
                                              l->disk, l->vm);

                r = disk_lease_take_fds(l, more, &taken);
                if (r < 0)
                        return r;
                if (taken == 0) /* no progress: do not ask forever */
                        return log_bus_parse_error(-EBADMSG);
        }

        return 0;
}

/* Returns 0, or an exit status > 0 if vdiskd refused. */
static int disk_lease_release(sd_bus *bus, const DiskLease *l) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = sd_bus_call_method(bus, VDISK_BUS_NAME, l->path, VDISK_LEASE_INTERFACE, "Release", &error, NULL, NULL);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to release the lease on disk '%s' of VM '%s'"), l->disk, l->vm);
        return 0;
}

/* Every lease is released even if one fails; returns the first failure's status. */
static int disk_leases_release(sd_bus *bus, const DiskLeases *ls) {
        int ret = 0;

        for (size_t j = 0; j < ls->n; j++) {
                int r = disk_lease_release(bus, &ls->l[j]);
                if (ret == 0)
                        ret = r;
        }
        return ret;
}

static void strv_free(char **v) {
        if (!v)
                return;
        for (char **p = v; *p; p++)
                free(*p);
        free(v);
}

static void strv_freep(char ***v) {
        strv_free(*v);
}

/* The disks as qemu-args.c sees them: names and export types, and once the leases exist their attach
 * descriptions and sockets. */
static int export_disks_new(const DiskLeases *ls, QemuExportDisk **ret) {
        QemuExportDisk *d = calloc(MAX(ls->n, 1U), sizeof(QemuExportDisk));

        if (!d)
                return log_oom();
        for (size_t j = 0; j < ls->n; j++)
                d[j] = (QemuExportDisk) {
                        .disk = ls->l[j].disk,
                        .type = qemu_export_from_string(arg_export),
                        .attach = ls->l[j].blockdev,
                        .fd = ls->l[j].n_fds > 0 ? ls->l[j].fds[0] : -EBADF,
                };
        *ret = d;
        return 0;
}

/* Whether COMMAND can be carried over to the export (checked before any lease is taken). Returns 0, or
 * EXIT_USAGE after saying why. */
static int check_export_command(const DiskLeases *ls, char **command, size_t n_command) {
        _cleanup_free_ QemuExportDisk *disks = NULL;
        _cleanup_free_ char *error = NULL;
        int r;

        r = export_disks_new(ls, &disks);
        if (r < 0)
                return r;
        r = qemu_args_check_export(command, n_command, disks, ls->n, &error);
        if (r == -EINVAL) {
                log_usage("open", "%s", error);
                return EXIT_USAGE;
        }
        if (r < 0)
                return log_oom();
        return 0;
}

/* COMMAND ARGS... (-device options rewritten for vhost-user-blk) -chardev .../-blockdev {nbd} ... and a
 * shared memory backend if needed. */
static int build_export_command_line(const DiskLeases *ls, char **command, size_t n_command, char ***ret) {
        _cleanup_free_ QemuExportDisk *disks = NULL;
        _cleanup_free_ char *error = NULL;
        int r;

        r = export_disks_new(ls, &disks);
        if (r < 0)
                return r;
        r = qemu_args_build_export(command, n_command, disks, ls->n, ret, &error);
        if (r == -EINVAL) {
                log_usage("open", "%s", error); /* not reached: checked before the leases */
                return EXIT_USAGE;
        }
        if (r == -EBADMSG)
                return log_bus_parse_error(r);
        if (r < 0)
                return log_oom();
        return 0;
}

/* COMMAND ARGS... -add-fd fd=N,set=1 ... -blockdev {...} ..., disk after disk. */
static int build_command_line(const DiskLeases *ls, char **command, size_t n_command, char ***ret) {
        _cleanup_(strv_freep) char **v = NULL;
        size_t n = n_command + 1, k = 0;

        if (arg_export)
                return build_export_command_line(ls, command, n_command, ret);

        for (size_t j = 0; j < ls->n; j++)
                n += 2 * ls->l[j].n_fds + 2 * json_object_array_length(ls->l[j].blockdev);
        v = calloc(n, sizeof(char *));
        if (!v)
                return log_oom();

        for (size_t i = 0; i < n_command; i++)
                if (!(v[k++] = strdup(command[i])))
                        return log_oom();

        for (size_t j = 0; j < ls->n; j++) {
                const DiskLease *l = &ls->l[j];
                size_t n_nodes = json_object_array_length(l->blockdev);

                for (size_t i = 0; i < l->n_fds; i++) {
                        if (!(v[k++] = strdup("-add-fd")))
                                return log_oom();
                        if (asprintf(&v[k], "fd=%d,set=%zu", l->fds[i], l->set_offset + i + 1) < 0) {
                                v[k] = NULL;
                                return log_oom();
                        }
                        k++;
                }

                for (size_t i = 0; i < n_nodes; i++) {
                        const char *s = json_object_to_json_string_ext(json_object_array_get_idx(l->blockdev, i),
                                                                       JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);

                        if (!s)
                                return log_oom();
                        if (!(v[k++] = strdup("-blockdev")) || !(v[k++] = strdup(s)))
                                return log_oom();
                }
        }

        *ret = TAKE_PTR(v);
        return 0;
}

static bool shell_safe(const char *s) {
        if (isempty(s))
                return false;
        for (; *s; s++)
                if (!ascii_isalnum(*s) && !strchr("_@%+=:,./-", *s))
                        return false;
        return true;
}

static void print_shell_quoted(const char *s) {
        if (shell_safe(s)) {
                puts(s);
                return;
        }
        putchar('\'');
        for (; *s; s++)
                if (*s == '\'')
                        fputs("'\\''", stdout);
                else
                        putchar(*s);
        fputs("'\n", stdout);
}

/* One argument per line, quoted for the shell; or a JSON array of strings with --json. */
static int print_command_line(char **argv) {
        _cleanup_json_ json_object *array = NULL;

        if (arg_json == JSON_OFF) {
                for (char **p = argv; *p; p++)
                        print_shell_quoted(*p);
                return 0;
        }

        array = json_object_new_array();
        if (!array)
                return log_oom();
        for (char **p = argv; *p; p++)
                if (json_array_append(array, json_object_new_string(*p)) < 0)
                        return log_oom();
        return show_json(array);
}

static int fd_set_cloexec(int fd, bool cloexec) {
        int flags = fcntl(fd, F_GETFD);

        if (flags < 0)
                return -errno;
        flags = cloexec ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC;
        if (fcntl(fd, F_SETFD, flags) < 0)
                return -errno;
        return 0;
}

/* Returns only on failure: the process becomes COMMAND, which inherits the fds and the bus connection
 * (and with it the lease, which ends when the last holder of that connection exits). */
static int exec_command(sd_bus *bus, const DiskLeases *ls, char **argv) {
        int fd, r;

        fd = sd_bus_get_fd(bus);
        if (fd < 0)
                return log_error_errno(fd, _("Failed to pass the file descriptors to '%s'"), argv[0]);

        /* Nothing may stay queued in sd-bus: the process image that would send it is about to go. */
        r = sd_bus_flush(bus);
        if (r >= 0)
                r = fd_set_cloexec(fd, false);
        for (size_t j = 0; r >= 0 && j < ls->n; j++)
                for (size_t i = 0; r >= 0 && i < ls->l[j].n_fds; i++)
                        r = fd_set_cloexec(ls->l[j].fds[i], false);
        if (r < 0)
                return log_error_errno(r, _("Failed to pass the file descriptors to '%s'"), argv[0]);

        fflush(stdout);
        fflush(stderr);
        execvp(argv[0], argv);
        r = -errno;

        /* Keep the connection away from anything else this process might start. */
        (void) fd_set_cloexec(fd, true);
        return log_error_errno(r, _("Failed to run '%s'"), argv[0]);
}

/* With --export: the socket's fd number in this process and vdiskd's attach description as it is. */
static int export_lease_to_json(const DiskLease *l, json_object **ret) {
        _cleanup_json_ json_object *o = NULL;

        o = json_object_new_object();
        if (!o ||
            json_add_string(o, "lease", l->path) < 0 ||
            json_add_string(o, "vm", l->vm) < 0 ||
            json_add_string(o, "disk", l->disk) < 0 ||
            json_add_bool(o, "read_only", arg_read_only) < 0 ||
            json_add_uint64(o, "pid", (uint64_t) getpid()) < 0 ||
            json_add_string(o, "export", arg_export) < 0 ||
            json_add_uint64(o, "fd", (uint64_t) l->fds[0]) < 0 ||
            json_object_object_add(o, "attach", json_object_get(l->blockdev)) < 0)
                return log_oom();

        *ret = TAKE_PTR(o);
        return 0;
}

static int lease_to_json(const DiskLease *l, json_object **ret) {
        _cleanup_json_ json_object *o = NULL;
        json_object *fds;

        if (arg_export)
                return export_lease_to_json(l, ret);

        o = json_object_new_object();
        fds = json_object_new_array();
        if (!o || !fds) {
                if (fds)
                        json_object_put(fds);
                return log_oom();
        }
        if (json_object_object_add(o, "fds", fds) < 0) {
                json_object_put(fds);
                return log_oom();
        }

        for (size_t i = 0; i < l->n_fds; i++) {
                json_object *f = json_object_new_object();

                if (!f ||
                    json_add_uint64(f, "fd", (uint64_t) l->fds[i]) < 0 ||
                    json_add_uint64(f, "set", l->set_offset + i + 1) < 0) {
                        if (f)
                                json_object_put(f);
                        return log_oom();
                }
                if (json_array_append(fds, f) < 0)
                        return log_oom();
        }

        if (json_add_string(o, "lease", l->path) < 0 ||
            json_add_string(o, "vm", l->vm) < 0 ||
            json_add_string(o, "disk", l->disk) < 0 ||
            json_add_bool(o, "read_only", arg_read_only) < 0 ||
            json_add_uint64(o, "pid", (uint64_t) getpid()) < 0 ||
            json_object_object_add(o, "blockdev", json_object_get(l->blockdev)) < 0)
                return log_oom();

        *ret = TAKE_PTR(o);
        return 0;
}

/* One disk: its object; several: an array of them. */
static int print_leases(const DiskLeases *ls) {
        _cleanup_json_ json_object *out = NULL;
        int r;

        if (ls->n == 1) {
                r = lease_to_json(&ls->l[0], &out);
                if (r < 0)
                        return r;
        } else {
                out = json_object_new_array();
                if (!out)
                        return log_oom();
                for (size_t j = 0; j < ls->n; j++) {
                        json_object *o;

                        r = lease_to_json(&ls->l[j], &o);
                        if (r < 0)
                                return r;
                        if (json_array_append(out, o) < 0)
                                return log_oom();
                }
        }

        /* Not --json=short: pretty, as --json alone. */
        return json_print(out, arg_json == JSON_SHORT ? JSON_SHORT : JSON_PRETTY) < 0 ? log_oom() : 0;
}

static int on_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        return sd_event_exit(sd_event_source_get_event(s), EXIT_OK);
}

/* The lease cannot outlive vdiskd nor the connection: either ending leaves nothing to hold. */
static int on_vdiskd_gone(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const DiskLeases *ls = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || !streq(name, VDISK_BUS_NAME) ||
            !isempty(new_owner))
                return 0;
        log_error(ngettext("vdiskd stopped: the lease on disk '%s' of VM '%s' has ended.",
                           "vdiskd stopped: the leases on disks '%s' of VM '%s' have ended.", ls->n),
                  ls->disks, ls->vm);
        return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)), EXIT_ERROR);
}

static int on_disconnected(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const DiskLeases *ls = userdata;

        if (!sd_bus_message_is_signal(m, "org.freedesktop.DBus.Local", "Disconnected"))
                return 0;
        log_error(ngettext("The connection to the system bus was lost: the lease on disk '%s' of VM '%s' has ended.",
                           "The connection to the system bus was lost: the leases on disks '%s' of VM '%s' have ended.",
                           ls->n),
                  ls->disks, ls->vm);
        return sd_event_exit(sd_bus_get_event(sd_bus_message_get_bus(m)), EXIT_ERROR);
}

/* SIGINT and SIGTERM are blocked already (before the lease was taken, so that none is lost). */
static int hold_leases(sd_bus *bus, const DiskLeases *ls) {
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *filter_slot = NULL;
        int r, code = EXIT_OK;

        r = sd_event_new(&event);
        if (r >= 0)
                r = sd_event_add_signal(event, NULL, SIGINT, on_signal, NULL);
        if (r >= 0)
                r = sd_event_add_signal(event, NULL, SIGTERM, on_signal, NULL);
        if (r < 0)
                return log_error_errno(r, _("Failed to set up the event loop"));

        r = sd_bus_add_filter(bus, &filter_slot, on_disconnected, (void *) ls);
        if (r < 0)
                return log_error_errno(r, _("Failed to set up the event loop"));

        /* The connection must survive the end of the loop: Release goes over it. */
        r = sd_bus_set_close_on_exit(bus, false);
        if (r >= 0)
                r = sd_bus_attach_event(bus, event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, _("Failed to attach the bus connection to the event loop"));

        r = print_leases(ls);
        if (r < 0)
                goto finish;
        if (fflush(stdout) != 0) {
                log_error(_("Failed to write the output."));
                r = -EIO;
                goto finish;
        }
        log_error(ngettext("Holding the lease on disk '%s' of VM '%s' until Ctrl-C or SIGTERM.",
                           "Holding the leases on disks '%s' of VM '%s' until Ctrl-C or SIGTERM.", ls->n),
                  ls->disks, ls->vm);

        r = sd_event_loop(event);
        if (r < 0) {
                r = log_error_errno(r, ngettext("Failed to hold the lease on disk '%s' of VM '%s'",
                                                "Failed to hold the leases on disks '%s' of VM '%s'", ls->n),
                                    ls->disks, ls->vm);
                goto finish;
        }
        code = r;

finish:
        (void) sd_bus_detach_event(bus);
        if (r < 0)
                return r;
        if (code != EXIT_OK)
                return code; /* the leases are gone already */
        return disk_leases_release(bus, ls);
}

int verb_open(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *gone_slot = NULL;
        _cleanup_(strv_freep) char **command_line = NULL;
        _cleanup_(disk_leases_done) DiskLeases ls = {};
        char **command = argv + 3;
        size_t n_command = (size_t) (argc - 3);
        sigset_t mask;
        int r;

        r = disk_leases_parse(&ls, argv[0], argv[1], argv[2]);
        if (r != 0)
                return r;

        if (arg_print && n_command == 0) {
                log_usage(argv[0], _("--print needs a COMMAND after '--': it prints the command line that would run it."));
                return EXIT_USAGE;
        }

        if (arg_export && n_command > 0) {
                r = check_export_command(&ls, command, n_command);
                if (r != 0)
                        return r;
        }

        if (n_command == 0) {
                /* Blocked before the lease exists, so that a Ctrl-C at any time releases it. */
                sigemptyset(&mask);
                sigaddset(&mask, SIGINT);
                sigaddset(&mask, SIGTERM);
                if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                        return log_error_errno(-errno, _("Failed to block signals"));
        }

        r = bus_connect(&bus);
        if (r < 0)
                return r;

        if (n_command == 0) {
                /* Only when holding: a launched hypervisor never reads the connection it inherits. */
                r = sd_bus_add_match(bus, &gone_slot,
                                     "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                                     "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                                     "arg0='" VDISK_BUS_NAME "'",
                                     on_vdiskd_gone, &ls);
                if (r < 0)
                        return log_error_errno(r, _("Failed to set up the event loop"));
        }

        /* One after the other: a refusal ends them all, as the connection that holds them closes. */
        for (size_t j = 0, fds = 0; j < ls.n; fds += ls.l[j].n_fds, j++) {
                r = disk_lease_open(bus, &ls.l[j]);
                if (r != 0)
                        return r;
                if (j > 0 && !arg_export) {
                        r = disk_lease_relabel(&ls.l[j], fds, j);
                        if (r < 0)
                                return r;
                }
        }

        if (n_command == 0)
                return hold_leases(bus, &ls);

        r = build_command_line(&ls, command, n_command, &command_line);
        if (r != 0)
                return r;

        if (arg_print) {
                /* The fd numbers are this process's: they, and the lease, end when vdiskctl exits. */
                r = print_command_line(command_line);
                if (r < 0)
                        return r;
                return disk_leases_release(bus, &ls);
        }

        return exec_command(bus, &ls, command_line);
}
