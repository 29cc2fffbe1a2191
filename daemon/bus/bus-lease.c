/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * OpenDisk and org.vdisk1.Lease: a disk's chain handed out as freshly opened file descriptions (top
 * read-write unless read-only, backing layers O_RDONLY) plus an explicit QEMU -blockdev description,
 * under a lease tied to the caller's bus connection. At most 16 fds travel in one message (the stock
 * system bus disconnects a sender of more); GetFds pages the rest. When a read-write lease ends, every
 * header is compared with the records again: a mismatch quarantines the disk.
 */

#include <fcntl.h>
#include <stdio.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "manager.h"

#define LEASE_MAX_FDS_PER_MESSAGE 16U
#define VDISK_LEASE_PREFIX "/org/vdisk1/lease"
#define VDISK_LEASE_INTERFACE "org.vdisk1.Lease"

struct Lease {
        Manager *manager;
        char path[64];
        char *vm, *disk;
        bool read_only;
        char *holder; /* unique bus name */
        uid_t holder_uid;
        pid_t holder_pid;
        int *fds; /* not yet handed out; -EBADF once sent */
        size_t n_fds;
};

static Lease *lease_free(Lease *l) {
        if (!l)
                return NULL;
        for (size_t i = 0; i < l->n_fds; i++)
                safe_close(l->fds[i]);
        free(l->fds);
        free(l->vm);
        free(l->disk);
        free(l->holder);
        free(l);
        return NULL;
}

static void lease_unlink(Lease *l) {
        Manager *m = l->manager;
        for (size_t i = 0; i < m->n_leases; i++)
                if (m->leases[i] == l) {
                        memmove(m->leases + i, m->leases + i + 1, (m->n_leases - i - 1) * sizeof(Lease *));
                        m->n_leases--;
                        return;
                }
}

static int quarantine_problem(const char *disk, const char *layer, const char *text, void *userdata) {
        char **first = userdata;
        if (!*first) {
                *first = strdup(text);
                if (!*first)
                        return -ENOMEM;
        }
        return 0;
}

/* Ends a lease: after a read-write lease, the headers a hypervisor could write are checked again. */
static void lease_end(Lease *l, const char *why) {
        Manager *m = l->manager;

        log_op(LOG_INFO, "lease", l->vm, l->disk, NULL, "Lease %s of disk '%s' of VM '%s' ended (%s)", l->path, l->disk,
               l->vm, why);
        if (!l->read_only && store_find_vm(m->store, l->vm)) {
                _cleanup_free_ char *problem = NULL;
                OpError err = {};

                /* Only the top layer was writable: backing layers went out O_RDONLY. */
                if (op_verify(m->store, l->vm, l->disk, true, -EBADF, quarantine_problem, &problem, &err) >= 0 && problem) {
                        char reason[512];
                        snprintf(reason, sizeof(reason), "headers changed under a read-write lease: %s", problem);
                        (void) op_quarantine(m->store, l->vm, l->disk, reason, &err);
                }
        }
        lease_unlink(l);
        lease_free(l);
}

void leases_holder_gone(Manager *m, const char *name) {
        for (size_t i = 0; i < m->n_leases;) {
                if (streq(m->leases[i]->holder, name)) {
                        lease_end(m->leases[i], "holder left the bus"); /* removes it from the array */
                        continue;
                }
                i++;
        }
}

static int name_owner_changed(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(msg, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (name[0] == ':' && isempty(new_owner)) {
                leases_holder_gone(m, name);
                auth_forget(m, name);
        }
        return 0;
}

/* One match for the whole daemon: leases end and cached credentials go when their connection does. */
int manager_watch_names(Manager *m) {
        int r = sd_bus_match_signal_async(m->bus, NULL, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                          "org.freedesktop.DBus", "NameOwnerChanged", name_owner_changed, NULL, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch bus names");
        return 0;
}

const Lease *manager_find_rw_lease(Manager *m, const char *vm, const char *disk) {
        for (size_t i = 0; i < m->n_leases; i++) {
                Lease *l = m->leases[i];
                if (!l->read_only && streq(l->vm, vm) && (!disk || streq(l->disk, disk)))
                        return l;
        }
        return NULL;
}

int lease_busy_error(Manager *m, const char *vm, const char *disk, sd_bus_error *error) {
        const Lease *l = manager_find_rw_lease(m, vm, disk);

        for (size_t i = 0; !l && i < m->n_jobs; i++) {
                Job *j = m->jobs[i];
                if (job_is_running(j) && streq(job_vm(j), vm) && (!disk || streq(job_disk(j), disk)))
                        return sd_bus_error_setf(error, "org.vdisk1.Error.InUse", "Disk '%s' of VM '%s' is busy with a %s job (%s)",
                                                 job_disk(j), vm, job_operation(j), job_path(j));
        }
        if (!l)
                return 0;
        return sd_bus_error_setf(error, "org.vdisk1.Error.InUse",
                                 "Disk '%s' of VM '%s' is open read-write by %s (pid %d)", l->disk, l->vm, l->holder,
                                 (int) l->holder_pid);
}

/* Is any QEMU-style image lock (bytes 100-104, 200-204) held on this file by another description? */
static int image_locked(int fd) {
        for (int base = 100; base <= 200; base += 100) {
                struct flock fl = {
                        .l_type = F_WRLCK,
                        .l_whence = SEEK_SET,
                        .l_start = base,
                        .l_len = 5,
                };
                if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
                        return negative_errno();
                if (fl.l_type != F_UNLCK)
                        return 1;
        }
        return 0;
}

static void json_node(FILE *f, bool *first, const char *fmt, ...) _printf_(3, 4);
static void json_node(FILE *f, bool *first, const char *fmt, ...) {
        va_list ap;

        fputs(*first ? "[" : ",", f);
        *first = false;
        va_start(ap, fmt);
        vfprintf(f, fmt, ap);
        va_end(ap);
}

/* The -blockdev nodes, deepest first; fd i of the lease is /dev/fdset/<i+1>. Names are ours or
 * validated disk names ([A-Za-z0-9_.-]), so they need no JSON escaping. */
static int build_blockdev(Manager *m, const Disk *d, bool read_only, char **ret) {
        _cleanup_free_ char *buf = NULL;
        _cleanup_free_ size_t *fd_index = NULL;
        size_t size = 0, n = 0;
        bool first = true;
        FILE *f;

        /* fds are top first, each layer's data file right after it. */
        fd_index = calloc(d->n_chain, sizeof(size_t));
        if (!fd_index)
                return -ENOMEM;
        for (size_t k = 0; k < d->n_chain; k++) {
                Layer *l = store_find_layer(m->store, d->chain[k]);
                fd_index[k] = n;
                n += l->data_file ? 2 : 1;
        }

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        for (size_t k = d->n_chain; k-- > 0;) {
                Layer *l = store_find_layer(m->store, d->chain[k]);
                bool ro = k > 0 || read_only;
                char node[96], below[96], data[96] = "";

                if (k == 0)
                        snprintf(node, sizeof(node), "%s", d->name);
                else
                        snprintf(node, sizeof(node), "vdisk-layer-%zu", k);
                json_node(f, &first,
                          "{\"node-name\":\"vdisk-file-%zu\",\"driver\":\"file\",\"filename\":\"/dev/fdset/%zu\","
                          "\"read-only\":%s}",
                          k, fd_index[k] + 1, ro ? "true" : "false");
                if (l->data_file) {
                        /* The data file in its parent's mode; QEMU never opens the name in the header. */
                        json_node(f, &first,
                                  "{\"node-name\":\"vdisk-data-%zu\",\"driver\":\"file\",\"filename\":\"/dev/fdset/%zu\","
                                  "\"read-only\":%s}",
                                  k, fd_index[k] + 2, ro ? "true" : "false");
                        snprintf(data, sizeof(data), ",\"data-file\":\"vdisk-data-%zu\"", k);
                }
                if (l->format == IMAGE_FORMAT_QCOW2) {
                        if (k + 1 < d->n_chain)
                                snprintf(below, sizeof(below), "\"vdisk-layer-%zu\"", k + 1);
                        else
                                snprintf(below, sizeof(below), "null");
                        json_node(f, &first,
                                  "{\"node-name\":\"%s\",\"driver\":\"qcow2\",\"file\":\"vdisk-file-%zu\"%s,\"backing\":%s,"
                                  "\"read-only\":%s}",
                                  node, k, data, below, ro ? "true" : "false");
                } else
                        json_node(f, &first, "{\"node-name\":\"%s\",\"driver\":\"raw\",\"file\":\"vdisk-file-%zu\",\"read-only\":%s}",
                                  node, k, ro ? "true" : "false");
        }
        fputs("]", f);
        if (fclose(f) != 0)
                return -ENOMEM;
        *ret = TAKE_PTR(buf);
        return 0;
}

static int append_fds(sd_bus_message *reply, Lease *l, size_t first, size_t count) {
        int r = sd_bus_message_open_container(reply, 'a', "h");
        if (r < 0)
                return r;
        for (size_t i = first; i < first + count; i++) {
                r = sd_bus_message_append(reply, "h", l->fds[i]); /* sd-bus dups it */
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static void close_sent(Lease *l, size_t first, size_t count) {
        /* Our copies go as soon as the reply is queued: a hypervisor's image locks live on these open
         * file descriptions and must vanish with the hypervisor, not linger in the daemon. */
        for (size_t i = first; i < first + count; i++)
                l->fds[i] = safe_close(l->fds[i]);
}

/* Fds opened for leases and not yet fetched: of all leases (sender NULL) or of one caller's. */
static size_t held_fds(Manager *m, const char *sender) {
        size_t n = 0;
        for (size_t i = 0; i < m->n_leases; i++)
                if (!sender || streq(m->leases[i]->holder, sender))
                        for (size_t k = 0; k < m->leases[i]->n_fds; k++)
                                n += m->leases[i]->fds[k] >= 0;
        return n;
}

/* The fds a lease of the disk opens: one per layer, and one per data file. */
static size_t lease_fd_count(Manager *m, const Disk *d) {
        size_t n = 0;
        for (size_t k = 0; k < d->n_chain; k++) {
                Layer *layer = store_find_layer(m->store, d->chain[k]);
                n += layer && layer->data_file ? 2 : 1;
        }
        return n;
}

static int caller_lease_count(Manager *m, const char *sender) {
        int n = 0;
        for (size_t i = 0; i < m->n_leases; i++)
                n += streq(m->leases[i]->holder, sender);
        return n;
}

int method_open_disk(sd_bus_message *msg, void *userdata, sd_bus_error *error);
int method_open_disk(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *blockdev = NULL, *problem = NULL;
        Manager *m = userdata;
        const char *vm, *disk, *sender;
        bool read_only = false;
        Lease *l, **leases;
        OpError err = {};
        Caller c;
        Disk *d;
        size_t first_count, n_fds;
        int r;

        r = sd_bus_message_read(msg, "ss", &vm, &disk);
        if (r < 0)
                return r;
        r = bus_read_options(msg, (const OptionSpec[]) { { "read_only", 'b', &read_only }, {} }, error);
        if (r < 0)
                return r;
        r = bus_check_name("VM", vm, error);
        if (r < 0)
                return r;
        r = bus_check_name("disk", disk, error);
        if (r < 0)
                return r;
        r = auth_caller(m, msg, &c, error);
        if (r < 0)
                return r;
        r = auth_require_vm(m, &c, vm, error);
        if (r < 0)
                return r;
        r = op_find_disk(m->store, vm, disk, NULL, &d, &err);
        if (r < 0)
                return bus_error_from_op(error, r, err.reason);
        if (d->quarantine)
                return sd_bus_error_setf(error, "org.vdisk1.Error.Corrupt", "Disk '%s' of VM '%s' is quarantined: %s", disk, vm,
                                         d->quarantine);
        for (size_t i = 0; i < m->n_jobs; i++)
                if (job_is_running(m->jobs[i]) && streq(job_vm(m->jobs[i]), vm) && streq(job_disk(m->jobs[i]), disk))
                        return sd_bus_error_setf(error, "org.vdisk1.Error.InUse", "Disk '%s' of VM '%s' is busy with a %s job (%s)",
                                                 disk, vm, job_operation(m->jobs[i]), job_path(m->jobs[i]));

        sender = sd_bus_message_get_sender(msg);
        if (!sender)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Cannot identify the caller");
        if (m->n_leases >= m->config.limits.max_leases)
                return sd_bus_error_setf(error, "org.vdisk1.Error.LimitExceeded", "Too many open leases (limit %" PRIu32 ")",
                                         m->config.limits.max_leases);
        if ((uint32_t) caller_lease_count(m, sender) >= m->config.limits.max_leases_per_caller)
                return sd_bus_error_setf(error, "org.vdisk1.Error.LimitExceeded",
                                         "You hold the maximum number of leases (%" PRIu32 ")",
                                         m->config.limits.max_leases_per_caller);

        /* Fds beyond the first message stay open here until fetched: bounded in total and per caller. */
        n_fds = lease_fd_count(m, d);
        if (n_fds > LEASE_MAX_FDS_PER_MESSAGE) {
                size_t held = n_fds - LEASE_MAX_FDS_PER_MESSAGE;

                if (held_fds(m, NULL) + held > m->config.limits.max_lease_fds)
                        return sd_bus_error_setf(error, "org.vdisk1.Error.LimitExceeded",
                                                 "Too many file descriptors are held for leases (limit %" PRIu32 ")",
                                                 m->config.limits.max_lease_fds);
                if (held_fds(m, sender) + held > m->config.limits.max_lease_fds_per_caller)
                        return sd_bus_error_setf(error, "org.vdisk1.Error.LimitExceeded",
                                                 "You hold too many file descriptors of leases not yet fetched with GetFds "
                                                 "(this lease would keep %zu, limit %" PRIu32 "); fetch or release them first",
                                                 held, m->config.limits.max_lease_fds_per_caller);
        }

        /* One writer, or any number of readers. */
        for (size_t i = 0; i < m->n_leases; i++) {
                Lease *o = m->leases[i];
                if (streq(o->vm, vm) && streq(o->disk, disk) && (!o->read_only || !read_only))
                        return sd_bus_error_setf(error, "org.vdisk1.Error.InUse",
                                                 "Disk '%s' of VM '%s' is open %s by %s (pid %d)", disk, vm,
                                                 o->read_only ? "read-only" : "read-write", o->holder, (int) o->holder_pid);
        }


        l = calloc(1, sizeof(Lease));
        if (!l)
                return -ENOMEM;
        l->manager = m;
        l->read_only = read_only;
        l->vm = strdup(vm);
        l->disk = strdup(disk);
        l->holder = strdup(sender);
        l->holder_uid = c.uid;
        l->fds = calloc(n_fds, sizeof(int));
        if (!l->vm || !l->disk || !l->holder || !l->fds) {
                lease_free(l);
                return -ENOMEM;
        }
        l->holder_pid = c.pid;
        {
                char id[LAYER_ID_LEN + 1];
                r = layer_id_new(id);
                if (r < 0) {
                        lease_free(l);
                        return r;
                }
                snprintf(l->path, sizeof(l->path), VDISK_LEASE_PREFIX "/%s", id);
        }

        for (size_t k = 0; k < d->n_chain; k++) {
                Layer *layer = store_find_layer(m->store, d->chain[k]);
                int fd = store_open_layer(m->store, layer, k == 0 && !read_only ? O_RDWR : O_RDONLY);

                l->fds[l->n_fds++] = fd;
                if (fd < 0) {
                        lease_free(l);
                        return bus_error_from_op(error, fd == -ENOENT ? -EBADMSG : fd, "Cannot open a layer of the disk");
                }
                if (layer->data_file) {
                        int dfd = store_open_data_file(m->store, layer, k == 0 && !read_only ? O_RDWR : O_RDONLY);
                        l->fds[l->n_fds++] = dfd;
                        if (dfd < 0) {
                                lease_free(l);
                                return bus_error_from_op(error, dfd == -ENOENT ? -EBADMSG : dfd,
                                                         "Cannot open the data file of a layer of the disk");
                        }
                }
                if (k == 0 && !read_only) {
                        r = image_locked(fd);
                        if (r != 0) {
                                lease_free(l);
                                if (r < 0)
                                        return bus_error_from_op(error, r, "Cannot test the image locks");
                                return sd_bus_error_setf(error, "org.vdisk1.Error.InUse",
                                                         "Disk '%s' of VM '%s' is locked by another process (a running QEMU?)",
                                                         disk, vm);
                        }
                }
        }

        /* Hand out only what matches the records. Backing layers are never writable by anyone (catalog
         * images and former tops, all handed out O_RDONLY), so the top layer's header is what can differ;
         * it is read through the very description that is handed out. */
        r = op_verify(m->store, vm, disk, true, l->fds[0], quarantine_problem, &problem, &err);
        if (r < 0 || problem) {
                lease_free(l);
                if (r < 0)
                        return bus_error_from_op(error, r, err.reason);
                return sd_bus_error_setf(error, "org.vdisk1.Error.Corrupt", "Disk '%s' of VM '%s' differs from its records: %s",
                                         disk, vm, problem);
        }

        r = build_blockdev(m, d, read_only, &blockdev);
        if (r < 0) {
                lease_free(l);
                return r;
        }

        leases = reallocarray(m->leases, m->n_leases + 1, sizeof(Lease *));
        if (!leases) {
                lease_free(l);
                return -ENOMEM;
        }
        m->leases = leases;
        m->leases[m->n_leases++] = l;

        first_count = MIN(l->n_fds, (size_t) LEASE_MAX_FDS_PER_MESSAGE);
        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_append(reply, "os", l->path, blockdev);
        if (r >= 0)
                r = append_fds(reply, l, 0, first_count);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0) {
                lease_unlink(l);
                lease_free(l);
                return r;
        }
        close_sent(l, 0, first_count);
        log_op(LOG_INFO, "open", vm, disk, d->chain[0], "Disk '%s' of VM '%s' opened %s by %s (uid %u, pid %d): %zu fds",
               disk, vm, read_only ? "read-only" : "read-write", sender, (unsigned) c.uid, (int) l->holder_pid, l->n_fds);
        return 1;
}

static int lease_require_holder(Lease *l, sd_bus_message *msg, sd_bus_error *error) {
        const char *sender = sd_bus_message_get_sender(msg);
        if (sender && streq(sender, l->holder))
                return 0;
        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Only the holder of a lease may use it");
}

static int method_get_fds(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Lease *l = userdata;
        uint32_t first, count;
        int r;

        r = lease_require_holder(l, msg, error);
        if (r < 0)
                return r;
        r = sd_bus_message_read(msg, "uu", &first, &count);
        if (r < 0)
                return r;
        if (first >= l->n_fds)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "The lease has %zu fds", l->n_fds);
        /* At most one message's worth, and no more than there is. */
        count = (uint32_t) MIN((size_t) MIN(count, LEASE_MAX_FDS_PER_MESSAGE), l->n_fds - first);
        for (size_t i = first; i < first + count; i++)
                if (l->fds[i] < 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Fd %zu has already been handed out", i);

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = append_fds(reply, l, first, count);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0)
                return r;
        close_sent(l, first, count);
        return 1;
}

static int method_release(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Lease *l = userdata;
        int r;

        r = lease_require_holder(l, msg, error);
        if (r < 0)
                return r;
        r = sd_bus_reply_method_return(msg, NULL);
        lease_end(l, "released");
        return r;
}

static int property_string(sd_bus *bus, const char *path, const char *interface, const char *property,
                           sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Lease *l = userdata;
        return sd_bus_message_append(reply, "s", streq(property, "VM") ? l->vm : l->disk);
}

static int property_read_only(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Lease *l = userdata;
        return sd_bus_message_append(reply, "b", l->read_only);
}

static int property_fd_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Lease *l = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) l->n_fds);
}

static const sd_bus_vtable lease_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("VM", "s", property_string, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Disk", "s", property_string, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("ReadOnly", "b", property_read_only, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("FdCount", "u", property_fd_count, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("GetFds", SD_BUS_ARGS("u", first, "u", count), SD_BUS_RESULT("ah", fds), method_get_fds,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Release", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, method_release, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

static int lease_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                      sd_bus_error *error) {
        Manager *m = userdata;
        for (size_t i = 0; i < m->n_leases; i++)
                if (streq(m->leases[i]->path, path)) {
                        *found = m->leases[i];
                        return 1;
                }
        return 0;
}

int bus_lease_register(Manager *m) {
        int r = sd_bus_add_fallback_vtable(m->bus, NULL, VDISK_LEASE_PREFIX, VDISK_LEASE_INTERFACE, lease_vtable, lease_find,
                                           m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the Lease objects");
        return 0;
}

void manager_free_leases(Manager *m) {
        for (size_t i = 0; i < m->n_leases; i++)
                lease_free(m->leases[i]);
        free(m->leases);
        m->leases = NULL;
        m->n_leases = 0;
}
