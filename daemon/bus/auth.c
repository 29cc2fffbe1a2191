/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Every authorization decision of the daemon, from the sender's bus credentials (never from a PID). */

#include <string.h>

#include "log.h"
#include "manager.h"

/* Credentials of a connection cannot change while it exists, and unique names are never reused on a
 * bus: so they are asked for once per connection, which saves a round trip to the bus per call. */
#define CALLER_CACHE_MAX 4096U

struct CallerEntry {
        char *name;
        Caller caller;
};

void auth_forget(Manager *m, const char *name) {
        for (size_t i = 0; i < m->n_callers; i++)
                if (streq(m->callers[i].name, name)) {
                        free(m->callers[i].name);
                        m->callers[i] = m->callers[--m->n_callers];
                        return;
                }
}

void auth_free_cache(Manager *m) {
        for (size_t i = 0; i < m->n_callers; i++)
                free(m->callers[i].name);
        free(m->callers);
        m->callers = NULL;
        m->n_callers = 0;
}

static void cache_put(Manager *m, const char *name, const Caller *c) {
        CallerEntry *a;
        char *copy;

        if (!name || name[0] != ':')
                return;
        if (m->n_callers >= CALLER_CACHE_MAX) {
                /* Full (callers that never left?): start over rather than grow without bound. */
                auth_free_cache(m);
        }
        copy = strdup(name);
        a = reallocarray(m->callers, m->n_callers + 1, sizeof(CallerEntry));
        if (!copy || !a) {
                free(copy);
                if (a)
                        m->callers = a;
                return;
        }
        m->callers = a;
        m->callers[m->n_callers++] = (CallerEntry) { .name = copy, .caller = *c };
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
        const gid_t *gids = NULL;
        uid_t uid;
        int r, n;

        for (size_t i = 0; sender && i < m->n_callers; i++)
                if (streq(m->callers[i].name, sender)) {
                        *ret = m->callers[i].caller;
                        return 0;
                }

        r = sd_bus_query_sender_creds(msg, SD_BUS_CREDS_EUID | SD_BUS_CREDS_PID | SD_BUS_CREDS_SUPPLEMENTARY_GIDS, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, &uid);
        if (r < 0) {
                /* Any doubt about who is calling is a denial. */
                log_warning_errno(r, "Cannot determine the caller's credentials");
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Cannot determine the caller's credentials");
        }

        *ret = (Caller) { .uid = uid, .root = uid == 0, .admin = uid == 0 };
        if (!ret->admin && m->has_admin_gid) {
                n = sd_bus_creds_get_supplementary_gids(creds, &gids);
                for (int i = 0; i < n; i++)
                        if (gids[i] == m->admin_gid)
                                ret->admin = true;
                if (n == -ENODATA)
                        ret->admin = bus_sender_in_group(sd_bus_message_get_bus(msg), sd_bus_message_get_sender(msg),
                                                         m->admin_gid);
        }
        (void) sd_bus_creds_get_pid(creds, &ret->pid);
        cache_put(m, sender, ret);
        return 0;
}

int auth_require_admin(const Caller *c, sd_bus_error *error) {
        if (c->admin)
                return 0;
        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "This operation needs administrator rights");
}

int auth_require_root(const Caller *c, sd_bus_error *error) {
        if (c->root)
                return 0;
        return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "This operation is reserved to root");
}

int auth_require_vm(Manager *m, const Caller *c, const char *vm, sd_bus_error *error) {
        Vm *v;

        if (c->admin)
                return 0;
        v = store_find_vm(m->store, vm);
        if (v && v->owner_uid == c->uid)
                return 0;
        /* The same answer whether the VM exists or not: other users' VMs stay invisible. */
        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED, "Access to VM '%s' denied", vm);
}
