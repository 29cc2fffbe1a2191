/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The bus face of vdiskd: it reads and validates arguments, authorizes the caller (auth.c, one table),
 * calls ops/ and replies. It decides nothing else. Errors from ops/ (negative errno + one-line reason)
 * get their D-Bus names in exactly one place, bus-error.c.
 */

#include <systemd/sd-bus.h>

#include "manager.h"
#include "vdisk-bus.h"

/* Registration of the objects, and of the watch on callers leaving the bus. */
int bus_manager_register(Manager *m);
int bus_job_register(Manager *m);
int bus_lease_register(Manager *m);
int bus_watch_names(Manager *m);
int bus_check_lease_holders(Manager *m);

/* Methods of org.vdisk1.Manager implemented beside their topic (bus-xml.c, bus-lease.c). */
int method_get_domain_xml(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error);
int method_adopt_domain_xml(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error);
int method_open_disk(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error);

/* ---- bus-error.c ---- */
/* The D-Bus error name of a negative errno from ops/. */
const char *bus_error_name(int r);
/* Sets `error` from an ops/ failure; returns a negative value for the handler to return. */
int bus_error_from_op(sd_bus_error *error, int r, const char *reason);
int bus_errorf(sd_bus_error *error, int r, const char *fmt, ...) _printf_(3, 4);

/* ---- bus-util.c: arguments ---- */
typedef struct OptionSpec {
        const char *key;
        char type; /* 's', 'u', 'b' (into a bool), 't' */
        void *ret;
        bool *present; /* if not NULL: set when the option was given */
} OptionSpec;

/* Reads an a{sv}; unknown keys, wrong types and duplicates are InvalidArgs. */
int bus_read_options(sd_bus_message *m, const OptionSpec *specs, sd_bus_error *error);
/* InvalidArgs unless `name` is a valid VM, disk or image name; never echoes the name. */
int bus_check_name(const char *what, const char *name, sd_bus_error *error);
int bus_check_format(const char *format, ImageFormat *ret, sd_bus_error *error);

#define CHECK(expr)                          \
        do {                                 \
                int _r = (expr);             \
                if (_r < 0)                  \
                        return _r;           \
        } while (0)

/* ---- auth.c: the authorization table ---- */
typedef enum AuthRule {
        AUTH_ANYONE,
        AUTH_ADMIN,         /* root or a member of the admin group */
        AUTH_ROOT,          /* uid 0 only */
        AUTH_VM_OWNER,      /* an admin, or the owner of the VM the call's first argument names */
        AUTH_ANY_VM_OWNER,  /* an admin, or the owner of at least one VM */
        AUTH_JOB_OWNER,     /* an admin, or the uid that started the job */
        AUTH_LEASE_HOLDER,  /* the connection holding the lease, nobody else */
        AUTH_LEASE_READER,  /* the lease's holder or an admin */
        _AUTH_RULE_MAX,
} AuthRule;

typedef struct AuthEntry {
        const char *interface;
        const char *member; /* a method, or "(properties)" for every property read */
        AuthRule rule;
        const char *why; /* for rules that are not self-evident */
} AuthEntry;

/* What a decision needs to know besides the caller. */
typedef struct AuthSubject {
        const char *vm;       /* AUTH_VM_OWNER */
        bool vm_exists;
        uid_t vm_owner;
        bool owns_some_vm;    /* AUTH_ANY_VM_OWNER */
        bool has_job;         /* AUTH_JOB_OWNER */
        uid_t job_owner;
        const char *sender;   /* AUTH_LEASE_* */
        const char *lease_holder;
} AuthSubject;

extern const AuthEntry auth_table[];
extern const size_t auth_table_size;
const AuthEntry *auth_lookup(const char *interface, const char *member);
/* The pure decision: 0, or -EACCES with the reason's text in `ret_reason` (static). */
int auth_decide(AuthRule rule, const Caller *c, const AuthSubject *s, const char **ret_reason);

/* Who is calling (cached per connection); AccessDenied if the bus cannot tell. */
int auth_caller(Manager *m, sd_bus_message *msg, Caller *ret, sd_bus_error *error);
/* The table's check of the call `msg` before its handler runs; fills in the caller. */
int bus_authorize(Manager *m, sd_bus_message *msg, Caller *ret, sd_bus_error *error);
/* A second rule that depends on an argument (Rebase's "unsafe": root only). */
int bus_authorize_extra(const Caller *c, const char *interface, const char *member, sd_bus_error *error);
/* Property reads of a Job or Lease object, by the rule of its "(properties)" row. */
int bus_authorize_property(Manager *m, sd_bus *bus, const char *interface, const char *path, sd_bus_error *error);

/* Objects on the bus by path: jobs are /org/vdisk1/job/<number>, leases /org/vdisk1/lease/<id>. */
Job *bus_job_from_path(Manager *m, const char *path);
Lease *bus_lease_from_path(Manager *m, const char *path);

/* A method handler after authorization. */
typedef int (*BusHandler)(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error);
/* Defines `name`, an sd-bus method handler that runs bus_authorize() and then `handler`. */
#define BUS_AUTHORIZED(name, handler)                                                                 \
        static int name(sd_bus_message *msg, void *userdata, sd_bus_error *error) {                  \
                Caller _c;                                                                            \
                int _r = bus_authorize(userdata, msg, &_c, error);                                    \
                if (_r < 0)                                                                           \
                        return _r;                                                                    \
                return handler(msg, userdata, &_c, error);                                            \
        }
