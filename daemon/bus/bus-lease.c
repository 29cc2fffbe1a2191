/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The face of leases (ops/lease.c, ops/open-disk.c): OpenDisk's reply and the org.vdisk1.Lease objects.
 * At most 16 fds travel in one message (the stock system bus disconnects a sender of more); GetFds
 * pages the rest, which ops/open-disk.c opens only when they are asked for.
 */

#include <stdio.h>
#include <string.h>

#include "bus.h"
#include "cluster-lease.h"
#include "log.h"
#include "open-disk.h"

Lease *bus_lease_from_path(Manager *m, const char *path) {
        const char *id = path ? startswith(path, VDISK_LEASE_PREFIX "/") : NULL;
        return id ? lease_registry_find(&m->leases, id) : NULL;
}

static int append_fds(sd_bus_message *reply, const Lease *l, size_t first, size_t count) {
        int r = sd_bus_message_open_container(reply, 'a', "h");
        if (r < 0)
                return r;
        for (size_t i = first; i < first + count; i++) {
                r = sd_bus_message_append(reply, "h", l->fds[i].fd); /* sd-bus dups it */
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

int method_open_disk(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases disk_lease = CLUSTER_LEASES_FOR(m->cluster, c);
        _cleanup_(cluster_leases_release) ClusterLeases record = CLUSTER_LEASES_FOR(m->cluster, c);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ char *blockdev = NULL;
        OpenDiskRequest req = { .holder_uid = c->uid, .holder_pid = c->pid };
        ExportContext ectx = manager_export_context(m);
        const char *export = NULL;
        char path[sizeof(VDISK_LEASE_PREFIX) + LAYER_ID_LEN + 1];
        OpError err = {};
        size_t first_count;
        Lease *l;
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &req.vm, &req.disk));
        CHECK(bus_read_options(msg, (const OptionSpec[]) { { "read_only", 'b', &req.read_only }, { "export", 's', &export },
                                                           { "incoming", 'b', &req.incoming }, {} },
                               error));
        if (export_type_from_string(export, &req.export) < 0)
                return bus_errorf(error, -EINVAL, "Unknown export type: the option 'export' is vhost-user-blk or nbd");
        CHECK(bus_check_name("VM", req.vm, error));
        CHECK(bus_check_name("disk", req.disk, error));
        req.holder = sd_bus_message_get_sender(msg);
        if (!req.holder)
                return bus_errorf(error, -EACCES, "Cannot identify the caller");

        /* Migration (cluster mode): the destination opens the disk for an incoming VM without taking it
         * over; Lease.TakeOver() takes its lease at the switch-over. */
        if (req.incoming && !m->cluster)
                return bus_errorf(error, -EOPNOTSUPP, "The option 'incoming' is for cluster mode ([Cluster] Mode=sanlock)");
        if (req.incoming && (req.read_only || req.export != EXPORT_NONE))
                return bus_errorf(error, -EINVAL, "The option 'incoming' is for a read-write OpenDisk without 'export'");

        /* Cluster mode: the disk for the lease's life (exclusive unless read-only), the VM's record shared
         * while the chain is read. */
        r = req.incoming ? 0 : cluster_leases_disk(&disk_lease, req.vm, req.disk, !req.read_only, &err);
        if (r >= 0)
                r = cluster_leases_vm(&record, m->store, req.vm, false, &err);
        if (r >= 0)
                r = op_open_disk(m->store, &m->config.limits, &m->leases, &m->jobs, &ectx, &req, &l, &blockdev, &err);
        if (r < 0)
                return bus_error_from_op(error, r, err.code ? err.reason : NULL);
        cluster_leases_release(&record);
        if (m->cluster) {
                r = cluster_leases_move(&disk_lease, &l->cluster);
                if (r < 0) {
                        lease_end(m->store, &m->leases, l, "out of memory");
                        return r;
                }
                l->cluster->incoming = req.incoming;
                /* Found again by a restarted vdiskd (an export has its state.json). */
                r = cluster_leases_record(m->config.exports.runtime_dir, l, &err);
                if (r < 0) {
                        lease_end(m->store, &m->leases, l, "its record could not be written");
                        return bus_error_from_op(error, r, err.reason);
                }
        }

        snprintf(path, sizeof(path), VDISK_LEASE_PREFIX "/%s", l->id);
        first_count = MIN(l->n_fds, (size_t) LEASE_MAX_FDS_PER_MESSAGE);
        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = sd_bus_message_append(reply, "os", path, blockdev);
        if (r >= 0)
                r = append_fds(reply, l, 0, first_count);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0) {
                lease_end(m->store, &m->leases, l, "the reply could not be sent");
                return r;
        }
        lease_forget_fds(l, 0, first_count);
        return 1;
}

static int method_get_fds(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Lease *l = bus_lease_from_path(m, sd_bus_message_get_path(msg));
        uint32_t first, count;
        OpError err = {};
        size_t n;
        int r;

        if (!l) /* released between the authorization and now cannot happen: one thread */
                return bus_errorf(error, -ENOENT, "No such lease");
        r = sd_bus_message_read(msg, "uu", &first, &count);
        if (r < 0)
                return r;
        r = op_lease_get_fds(m->store, l, first, count, &n, &err);
        if (r < 0)
                return bus_error_from_op(error, r, err.code ? err.reason : NULL);

        r = sd_bus_message_new_method_return(msg, &reply);
        if (r >= 0)
                r = append_fds(reply, l, first, n);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        if (r < 0)
                return r;
        lease_forget_fds(l, first, n);
        return 1;
}

static int method_release(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        Lease *l = bus_lease_from_path(m, sd_bus_message_get_path(msg));
        int r;

        if (!l)
                return bus_errorf(error, -ENOENT, "No such lease");
        if (m->cluster) {
                /* Cluster mode: the lease ends, its cluster lease last (after the end-of-lease header
                 * check), before the reply, so that the caller may take the disk on another host at once. */
                lease_end(m->store, &m->leases, l, "released");
                return sd_bus_reply_method_return(msg, NULL);
        }
        r = sd_bus_reply_method_return(msg, NULL);
        lease_end(m->store, &m->leases, l, "released");
        return r;
}

static int method_take_over(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        Lease *l = bus_lease_from_path(m, sd_bus_message_get_path(msg));
        OpError err = {};
        uint64_t version;
        int r;

        if (!l)
                return bus_errorf(error, -ENOENT, "No such lease");
        r = sd_bus_message_read(msg, "t", &version);
        if (r < 0)
                return r;
        r = cluster_leases_take_over(m->config.exports.runtime_dir, l, version, &err);
        if (r < 0)
                return bus_error_from_op(error, r, err.reason);
        return sd_bus_reply_method_return(msg, NULL);
}

static int property_get(sd_bus *bus, const char *path, const char *interface, const char *property, sd_bus_message *reply,
                        void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        Lease *l = bus_lease_from_path(m, path);

        if (!l)
                return bus_errorf(error, -ENOENT, "No such lease");
        CHECK(bus_authorize_property(m, bus, interface, path, error));
        if (streq(property, "VM"))
                return sd_bus_message_append(reply, "s", l->vm);
        if (streq(property, "Disk"))
                return sd_bus_message_append(reply, "s", l->disk);
        if (streq(property, "ReadOnly"))
                return sd_bus_message_append(reply, "b", l->read_only);
        if (streq(property, "LeaseVersion")) {
                uint64_t version = 0;
                if (l->cluster && cluster_leases_version(l->cluster, &version) < 0)
                        return bus_errorf(error, -EIO, "Cannot read the version of the disk's cluster lease");
                return sd_bus_message_append(reply, "t", version);
        }
        return sd_bus_message_append(reply, "u", (uint32_t) l->n_fds);
}

BUS_AUTHORIZED(authorized_get_fds, method_get_fds)
BUS_AUTHORIZED(authorized_release, method_release)
BUS_AUTHORIZED(authorized_take_over, method_take_over)

static const sd_bus_vtable lease_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("VM", "s", property_get, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Disk", "s", property_get, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("ReadOnly", "b", property_get, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("FdCount", "u", property_get, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("GetFds", SD_BUS_ARGS("u", first, "u", count), SD_BUS_RESULT("ah", fds), authorized_get_fds,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Release", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, authorized_release, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("LeaseVersion", "t", property_get, 0, 0),
        SD_BUS_METHOD_WITH_ARGS("TakeOver", SD_BUS_ARGS("t", version), SD_BUS_NO_RESULT, authorized_take_over,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

/* The objects exist as long as their lease; every callback gets the manager and finds the lease by path. */
static int lease_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **found,
                      sd_bus_error *error) {
        Manager *m = userdata;

        if (!bus_lease_from_path(m, path))
                return 0;
        *found = m;
        return 1;
}

int bus_lease_register(Manager *m) {
        int r = sd_bus_add_fallback_vtable(m->bus, NULL, VDISK_LEASE_PREFIX, VDISK_LEASE_INTERFACE, lease_vtable, lease_find,
                                           m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the Lease objects");
        return 0;
}
