/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Every authorization decision of the daemon, from the sender's bus credentials (never from a PID):
 * one table, method → who may call, checked before the method's handler runs (BUS_AUTHORIZED in
 * bus.h). A method missing from the table is refused to everyone (tests/unit/test-auth.c checks that
 * the table covers every method of dbus-interfaces/ exactly once).
 */

#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "log.h"
#include "cluster-lease.h"
#include "query.h"

#define MANAGER VDISK_MANAGER_INTERFACE
#define JOB VDISK_JOB_INTERFACE
#define LEASE VDISK_LEASE_INTERFACE
#define PROPERTIES "(properties)"

const AuthEntry auth_table[] = {
        { MANAGER, "CreateImage", AUTH_ADMIN },
        { MANAGER, "ImportImage", AUTH_ADMIN },
        { MANAGER, "DeleteImage", AUTH_ADMIN },
        { MANAGER, "ListImages", AUTH_ANYONE, "catalog images are shared by every VM" },
        { MANAGER, "CreateVM", AUTH_ADMIN },
        { MANAGER, "DeleteVM", AUTH_ADMIN },
        { MANAGER, "ListVMs", AUTH_ANY_VM_OWNER, "a VM owner sees only the VMs it owns" },
        { MANAGER, "CreateDisk", AUTH_ADMIN },
        { MANAGER, "DeleteDisk", AUTH_ADMIN },
        { MANAGER, "ListDisks", AUTH_VM_OWNER },
        { MANAGER, "GetChain", AUTH_VM_OWNER },
        { MANAGER, "Snapshot", AUTH_VM_OWNER },
        { MANAGER, "Rebase", AUTH_ADMIN },
        { MANAGER, "Rebase(unsafe)", AUTH_ROOT, "rewrites a header without checking the guest view" },
        { MANAGER, "Commit", AUTH_ADMIN },
        { MANAGER, "OpenDisk", AUTH_VM_OWNER },
        { MANAGER, "Verify", AUTH_VM_OWNER },
        { MANAGER, "GetDomainXML", AUTH_VM_OWNER },
        { MANAGER, "AdoptDomainXML", AUTH_ROOT, "the XML names host paths that the daemon opens" },
        { MANAGER, "Inspect", AUTH_ANYONE,
          "reads only the fd the caller passes, opened by the caller with its own rights; bounded by "
          "MaxVirtualSize, and jobs keep their turn under a flood" },
        { MANAGER, "ListJobs", AUTH_ADMIN },
        { MANAGER, PROPERTIES, AUTH_ANYONE, "version, store directory and chain depth limit" },
        { JOB, "Cancel", AUTH_JOB_OWNER },
        { JOB, PROPERTIES, AUTH_JOB_OWNER, "a job's properties name VMs, disks and errors" },
        { LEASE, "GetFds", AUTH_LEASE_HOLDER, "the fds are the holder's alone" },
        { LEASE, "Release", AUTH_LEASE_HOLDER },
        { LEASE, "TakeOver", AUTH_LEASE_HOLDER },
        { LEASE, PROPERTIES, AUTH_LEASE_READER },
};
const size_t auth_table_size = ELEMENTSOF(auth_table);

const AuthEntry *auth_lookup(const char *interface, const char *member) {
        for (size_t i = 0; interface && member && i < ELEMENTSOF(auth_table); i++)
                if (streq(auth_table[i].interface, interface) && streq(auth_table[i].member, member))
                        return &auth_table[i];
        return NULL;
}

int auth_decide(AuthRule rule, const Caller *c, const AuthSubject *s, const char **ret_reason) {
        const char *reason = NULL;

        switch (rule) {
        case AUTH_ANYONE:
                return 0;
        case AUTH_ADMIN:
                if (c->admin)
                        return 0;
                reason = "This operation needs administrator rights";
                break;
        case AUTH_ROOT:
                if (c->root)
                        return 0;
                reason = "This operation is reserved to root";
                break;
        case AUTH_VM_OWNER:
                if (c->admin || (s->vm_exists && s->vm_owner == c->uid))
                        return 0;
                /* The same answer whether the VM exists or not: other users' VMs stay invisible. */
                reason = "Access to VM denied";
                break;
        case AUTH_ANY_VM_OWNER:
                if (c->admin || s->owns_some_vm)
                        return 0;
                reason = "Access denied: you own no VM";
                break;
        case AUTH_JOB_OWNER:
                if (c->admin || (s->has_job && s->job_owner == c->uid))
                        return 0;
                reason = "Only the job's starter or an administrator may use it";
                break;
        case AUTH_LEASE_READER:
        case AUTH_LEASE_HOLDER:
                if (rule == AUTH_LEASE_READER && c->admin)
                        return 0;
                if (s->sender && s->lease_holder && streq(s->sender, s->lease_holder))
                        return 0;
                reason = "Only the holder of a lease may use it";
                break;
        default:
                reason = "Access denied";
                break;
        }
        if (ret_reason)
                *ret_reason = reason;
        return -EACCES;
}

/* Whether the bus says that `sender` has `gid` among its groups. libsystemd before v254 does not parse
 * UnixGroupIDs from GetConnectionCredentials (sd_bus_creds_get_supplementary_gids() is -ENODATA on a
 * dbus-daemon bus), so ask the bus driver ourselves: it took the groups from the socket
 * (SO_PEERGROUPS) when the caller connected, never from a PID. Any error: not a member. */
static bool bus_sender_in_group(sd_bus *bus, const char *sender, gid_t gid) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        bool found = false;
        int r;

        if (!sender)
                return false;
        r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "GetConnectionCredentials", NULL, &reply, "s", sender);
        if (r < 0)
                return false;
        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        while (r >= 0 && (r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *key;

                r = sd_bus_message_read(reply, "s", &key);
                if (r >= 0 && streq(key, "UnixGroupIDs")) {
                        const uint32_t *gids;
                        size_t size = 0;

                        r = sd_bus_message_enter_container(reply, 'v', "au");
                        if (r > 0)
                                r = sd_bus_message_read_array(reply, 'u', (const void **) &gids, &size);
                        for (size_t i = 0; r >= 0 && i < size / sizeof(uint32_t); i++)
                                if (gids[i] == (uint32_t) gid)
                                        found = true;
                        if (r >= 0)
                                r = sd_bus_message_exit_container(reply);
                } else if (r >= 0)
                        r = sd_bus_message_skip(reply, "v");
                if (r >= 0)
                        r = sd_bus_message_exit_container(reply);
        }
        return r >= 0 && found;
}

int auth_caller(Manager *m, sd_bus_message *msg, Caller *ret, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        const char *sender = sd_bus_message_get_sender(msg);
        const Caller *cached = caller_cache_get(&m->callers, sender);
        const gid_t *gids = NULL;
        uid_t uid;
        int r, n;

        if (cached) {
                *ret = *cached;
                return 0;
        }

        r = sd_bus_query_sender_creds(msg, SD_BUS_CREDS_EUID | SD_BUS_CREDS_PID | SD_BUS_CREDS_SUPPLEMENTARY_GIDS, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, &uid);
        if (r < 0) {
                /* Any doubt about who is calling is a denial. */
                log_warning_errno(r, "Cannot determine the caller's credentials");
                return bus_errorf(error, -EACCES, "Cannot determine the caller's credentials");
        }

        *ret = (Caller) { .uid = uid, .root = uid == 0, .admin = uid == 0 };
        if (!ret->admin && m->has_admin_gid) {
                n = sd_bus_creds_get_supplementary_gids(creds, &gids);
                for (int i = 0; i < n; i++)
                        if (gids[i] == m->admin_gid)
                                ret->admin = true;
                if (n == -ENODATA)
                        ret->admin = bus_sender_in_group(sd_bus_message_get_bus(msg), sender, m->admin_gid);
        }
        (void) sd_bus_creds_get_pid(creds, &ret->pid);
        caller_cache_put(&m->callers, sender, ret);
        return 0;
}

/* Fills in what the rule needs to know about the object of the call. */
static int auth_subject(Manager *m, sd_bus_message *msg, AuthRule rule, const char *path, AuthSubject *s,
                        sd_bus_error *error) {
        *s = (AuthSubject) { .sender = sd_bus_message_get_sender(msg) };

        switch (rule) {
        case AUTH_VM_OWNER: {
                const char *vm;
                int r;

                /* The VM is the first argument of every such method; the handler reads it again. */
                r = sd_bus_message_read(msg, "s", &vm);
                if (r < 0)
                        return r;
                r = bus_check_name("VM", vm, error);
                if (r >= 0)
                        r = sd_bus_message_rewind(msg, true);
                if (r < 0)
                        return r;
                s->vm = vm;
                s->vm_exists = op_vm_owner(m->store, vm, &s->vm_owner) >= 0;
                return 0;
        }
        case AUTH_ANY_VM_OWNER:
                s->owns_some_vm = false; /* filled in only for non-admins, see below */
                return 0;
        case AUTH_JOB_OWNER: {
                Job *j = bus_job_from_path(m, path);
                s->has_job = j;
                s->job_owner = j ? j->owner : 0;
                return 0;
        }
        case AUTH_LEASE_HOLDER:
        case AUTH_LEASE_READER: {
                Lease *l = bus_lease_from_path(m, path);
                s->lease_holder = l ? l->holder : NULL;
                return 0;
        }
        default:
                return 0;
        }
}

static int authorize(Manager *m, sd_bus_message *msg, const char *interface, const char *member, const char *path,
                     Caller *ret, sd_bus_error *error) {
        const AuthEntry *e = auth_lookup(interface, member);
        const char *reason = NULL;
        AuthSubject s;
        int r;

        if (!e) {
                log_warning("No authorization rule for %s.%s: refused", interface ?: "?", member ?: "?");
                return bus_errorf(error, -EACCES, "Access denied");
        }
        r = auth_caller(m, msg, ret, error);
        if (r < 0)
                return r;
        if (e->rule == AUTH_ANYONE)
                return 0;
        r = auth_subject(m, msg, e->rule, path, &s, error);
        if (r < 0)
                return r;
        if (e->rule == AUTH_VM_OWNER && !ret->admin && m->cluster) {
                /* Cluster mode: the owner as the VM's record says now (another host may have made,
                 * deleted or made again the VM); the handler checks it again under its own lease. */
                _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_INIT(m->cluster);
                OpError err = {};

                r = cluster_leases_vm(&held, m->store, s.vm, false, &err);
                if (r < 0)
                        return bus_error_from_op(error, r, err.code ? err.reason : NULL);
                s.vm_exists = op_vm_owner(m->store, s.vm, &s.vm_owner) >= 0;
        }
        if (e->rule == AUTH_ANY_VM_OWNER && !ret->admin)
                s.owns_some_vm = op_owns_any_vm(m->store, ret->uid);
        r = auth_decide(e->rule, ret, &s, &reason);
        if (r >= 0)
                return 0;
        if (e->rule == AUTH_VM_OWNER)
                return bus_errorf(error, r, "Access to VM '%s' denied", s.vm);
        return bus_errorf(error, r, "%s", reason);
}

int bus_authorize(Manager *m, sd_bus_message *msg, Caller *ret, sd_bus_error *error) {
        return authorize(m, msg, sd_bus_message_get_interface(msg), sd_bus_message_get_member(msg),
                         sd_bus_message_get_path(msg), ret, error);
}

int bus_authorize_extra(const Caller *c, const char *interface, const char *member, sd_bus_error *error) {
        const AuthEntry *e = auth_lookup(interface, member);
        const char *reason = NULL;
        int r;

        if (!e)
                return bus_errorf(error, -EACCES, "Access denied");
        r = auth_decide(e->rule, c, &(AuthSubject) {}, &reason);
        if (r < 0)
                return bus_errorf(error, r, "%s", reason);
        return 0;
}

int bus_authorize_property(Manager *m, sd_bus *bus, const char *interface, const char *path, sd_bus_error *error) {
        sd_bus_message *msg = sd_bus_get_current_message(bus);
        Caller c;

        uint8_t type = 0;

        /* A read outside any incoming call is the daemon's own PropertiesChanged. */
        if (!msg || sd_bus_message_get_type(msg, &type) < 0 || type != SD_BUS_MESSAGE_METHOD_CALL)
                return 0;
        return authorize(m, msg, interface, PROPERTIES, path, &c, error);
}
