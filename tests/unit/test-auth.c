/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The authorization table (daemon/bus/auth.c) against the contract (docs/dbus-api.md, "Authorization")
 * and the interface XML, and the errno → error name map (daemon/bus/bus-error.c). */

#include <dirent.h>
#include <errno.h>

#include "bus.h"
#undef CHECK
#include "test-util.h"

/* Every <method name="X"> of every interface XML must have exactly one row; the table has no row for
 * a method that does not exist (besides the special rows below). */
static void test_table_covers_xml(const char *dir) {
        static const char *const special[] = { "(properties)", "Rebase(unsafe)" };
        size_t methods = 0, special_rows = 0;
        DIR *d = opendir(dir);
        struct dirent *de;

        CHECK(d);
        while (d && (de = readdir(d))) {
                char path[4096], iface[256], buf[65536];
                size_t n, len;
                FILE *f;

                len = strlen(de->d_name);
                if (len < 5 || strcmp(de->d_name + len - 4, ".xml") != 0 || len - 4 >= sizeof(iface))
                        continue;
                memcpy(iface, de->d_name, len - 4);
                iface[len - 4] = 0;
                snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
                f = fopen(path, "re");
                CHECK(f);
                if (!f)
                        continue;
                n = fread(buf, 1, sizeof(buf) - 1, f);
                buf[n] = 0;
                fclose(f);
                for (const char *p = buf; (p = strstr(p, "<method name=\"")); p++) {
                        char member[128];
                        const char *q = p + strlen("<method name=\""), *e = strchr(q, '"');
                        size_t rows = 0;

                        if (!e || (size_t) (e - q) >= sizeof(member))
                                break;
                        memcpy(member, q, (size_t) (e - q));
                        member[e - q] = 0;
                        for (size_t i = 0; i < auth_table_size; i++)
                                rows += streq(auth_table[i].interface, iface) && streq(auth_table[i].member, member);
                        if (rows != 1)
                                fprintf(stderr, "%s.%s: %zu rows\n", iface, member, rows);
                        CHECK_EQ_INT(rows, 1);
                        methods++;
                }
        }
        if (d)
                closedir(d);
        for (size_t i = 0; i < auth_table_size; i++)
                for (size_t k = 0; k < ELEMENTSOF(special); k++)
                        special_rows += streq(auth_table[i].member, special[k]);
        CHECK(methods >= 23);
        CHECK_EQ_INT(auth_table_size, methods + special_rows);
        /* A lookup of something that is not in the table finds nothing: the call is refused. */
        CHECK(!auth_lookup(VDISK_MANAGER_INTERFACE, "Frobnicate"));
        CHECK(!auth_lookup("org.vdisk1.Other", "CreateImage"));
        CHECK(!auth_lookup(NULL, "CreateImage"));
}

static AuthRule rule_of(const char *iface, const char *member) {
        const AuthEntry *e = auth_lookup(iface, member);
        CHECK(e);
        return e ? e->rule : _AUTH_RULE_MAX;
}

/* The contract's table: who may call what. */
static void test_rows(void) {
        static const char *const admin_only[] = { "CreateImage", "ImportImage", "DeleteImage", "CreateVM", "DeleteVM",
                                                  "CreateDisk",  "DeleteDisk",  "Rebase",      "Commit",   "ListJobs" };
        static const char *const vm_owner[] = { "ListDisks", "GetChain", "Snapshot", "OpenDisk", "Verify", "GetDomainXML" };

        for (size_t i = 0; i < ELEMENTSOF(admin_only); i++)
                CHECK_EQ_INT(rule_of(VDISK_MANAGER_INTERFACE, admin_only[i]), AUTH_ADMIN);
        for (size_t i = 0; i < ELEMENTSOF(vm_owner); i++)
                CHECK_EQ_INT(rule_of(VDISK_MANAGER_INTERFACE, vm_owner[i]), AUTH_VM_OWNER);
        CHECK_EQ_INT(rule_of(VDISK_MANAGER_INTERFACE, "ListImages"), AUTH_ANYONE);
        CHECK_EQ_INT(rule_of(VDISK_MANAGER_INTERFACE, "Inspect"), AUTH_ANYONE);
        CHECK_EQ_INT(rule_of(VDISK_MANAGER_INTERFACE, "(properties)"), AUTH_ANYONE);
        CHECK_EQ_INT(rule_of(VDISK_MANAGER_INTERFACE, "ListVMs"), AUTH_ANY_VM_OWNER);
        CHECK_EQ_INT(rule_of(VDISK_MANAGER_INTERFACE, "AdoptDomainXML"), AUTH_ROOT);
        CHECK_EQ_INT(rule_of(VDISK_MANAGER_INTERFACE, "Rebase(unsafe)"), AUTH_ROOT);
        CHECK_EQ_INT(rule_of(VDISK_JOB_INTERFACE, "Cancel"), AUTH_JOB_OWNER);
        CHECK_EQ_INT(rule_of(VDISK_JOB_INTERFACE, "(properties)"), AUTH_JOB_OWNER);
        CHECK_EQ_INT(rule_of(VDISK_LEASE_INTERFACE, "GetFds"), AUTH_LEASE_HOLDER);
        CHECK_EQ_INT(rule_of(VDISK_LEASE_INTERFACE, "Release"), AUTH_LEASE_HOLDER);
        CHECK_EQ_INT(rule_of(VDISK_LEASE_INTERFACE, "TakeOver"), AUTH_LEASE_HOLDER);
        CHECK_EQ_INT(rule_of(VDISK_LEASE_INTERFACE, "(properties)"), AUTH_LEASE_READER);
        /* Every open row says why it is open. */
        for (size_t i = 0; i < auth_table_size; i++)
                if (auth_table[i].rule == AUTH_ANYONE)
                        CHECK(auth_table[i].why && auth_table[i].why[0]);
}

static bool allowed(AuthRule rule, const Caller *c, const AuthSubject *s) {
        const char *reason = NULL;
        int r = auth_decide(rule, c, s, &reason);

        CHECK(r == 0 || r == -EACCES);
        CHECK(r == 0 || (reason && reason[0]));
        return r == 0;
}

/* The decisions, for root, an admin, a VM owner (uid 1000) and a stranger (uid 2000). */
static void test_decisions(void) {
        const Caller root = { .uid = 0, .root = true, .admin = true }, admin = { .uid = 500, .admin = true },
                     owner = { .uid = 1000 }, stranger = { .uid = 2000 };
        const AuthSubject vm_of_owner = { .vm = "vm", .vm_exists = true, .vm_owner = 1000 },
                          missing_vm = { .vm = "ghost" },
                          job_of_owner = { .has_job = true, .job_owner = 1000 },
                          lease_of_x = { .sender = ":1.5", .lease_holder = ":1.5" },
                          lease_of_y = { .sender = ":1.6", .lease_holder = ":1.5" }, nothing = {};

        CHECK(allowed(AUTH_ANYONE, &stranger, &nothing));

        CHECK(allowed(AUTH_ADMIN, &root, &nothing));
        CHECK(allowed(AUTH_ADMIN, &admin, &nothing));
        CHECK(!allowed(AUTH_ADMIN, &owner, &nothing));

        CHECK(allowed(AUTH_ROOT, &root, &nothing));
        CHECK(!allowed(AUTH_ROOT, &admin, &nothing));

        CHECK(allowed(AUTH_VM_OWNER, &owner, &vm_of_owner));
        CHECK(allowed(AUTH_VM_OWNER, &admin, &vm_of_owner));
        CHECK(allowed(AUTH_VM_OWNER, &admin, &missing_vm)); /* an admin then learns NotFound */
        CHECK(!allowed(AUTH_VM_OWNER, &stranger, &vm_of_owner));
        /* A VM that does not exist is denied as one of another user: it stays invisible. */
        CHECK(!allowed(AUTH_VM_OWNER, &owner, &missing_vm));

        CHECK(allowed(AUTH_ANY_VM_OWNER, &owner, &(AuthSubject) { .owns_some_vm = true }));
        CHECK(!allowed(AUTH_ANY_VM_OWNER, &stranger, &nothing));
        CHECK(allowed(AUTH_ANY_VM_OWNER, &admin, &nothing));

        CHECK(allowed(AUTH_JOB_OWNER, &owner, &job_of_owner));
        CHECK(allowed(AUTH_JOB_OWNER, &admin, &job_of_owner));
        CHECK(!allowed(AUTH_JOB_OWNER, &stranger, &job_of_owner));
        CHECK(!allowed(AUTH_JOB_OWNER, &owner, &nothing));

        CHECK(allowed(AUTH_LEASE_HOLDER, &stranger, &lease_of_x));
        CHECK(!allowed(AUTH_LEASE_HOLDER, &root, &lease_of_y)); /* not even root takes another's fds */
        CHECK(!allowed(AUTH_LEASE_HOLDER, &owner, &nothing));
        CHECK(allowed(AUTH_LEASE_READER, &admin, &lease_of_y));
        CHECK(allowed(AUTH_LEASE_READER, &stranger, &lease_of_x));
        CHECK(!allowed(AUTH_LEASE_READER, &owner, &lease_of_y));
}

/* errno → error name, as org.vdisk1(5) lists it. */
static void test_error_map(void) {
        static const struct {
                int r;
                const char *name;
        } map[] = {
                { -ENOENT, VDISK_ERROR_NOT_FOUND },
                { -EEXIST, VDISK_ERROR_ALREADY_EXISTS },
                { -EBUSY, VDISK_ERROR_IN_USE },
                { -EMEDIUMTYPE, VDISK_ERROR_UNSAFE_IMAGE },
                { -EBADMSG, VDISK_ERROR_CORRUPT },
                { -EOPNOTSUPP, VDISK_ERROR_NOT_SUPPORTED },
                { -ELOOP, VDISK_ERROR_CHAIN_TOO_DEEP },
                { -E2BIG, VDISK_ERROR_LIMIT_EXCEEDED },
                { -EMFILE, VDISK_ERROR_LIMIT_EXCEEDED },
                { -ENFILE, VDISK_ERROR_LIMIT_EXCEEDED },
                { -ECANCELED, VDISK_ERROR_CANCELLED },
                { -ENOSPC, VDISK_ERROR_NO_SPACE },
                { -EDQUOT, VDISK_ERROR_NO_SPACE },
                { -EHOSTDOWN, VDISK_ERROR_NOT_JOINED },
                { -EINVAL, VDISK_ERROR_INVALID_ARGS },
                { -EACCES, VDISK_ERROR_ACCESS_DENIED },
                { -EPERM, VDISK_ERROR_ACCESS_DENIED },
                { -EIO, "org.freedesktop.DBus.Error.Failed" },
                { -ENOMEM, "org.freedesktop.DBus.Error.Failed" },
        };
        sd_bus_error e = SD_BUS_ERROR_NULL;

        for (size_t i = 0; i < ELEMENTSOF(map); i++)
                CHECK(streq(bus_error_name(map[i].r), map[i].name));

        /* The reason becomes the message as it is; without one, strerror. */
        CHECK(bus_errorf(&e, -EBUSY, "Disk '%s' is busy", "vda") < 0);
        CHECK(streq(e.name, VDISK_ERROR_IN_USE));
        CHECK(streq(e.message, "Disk 'vda' is busy"));
        sd_bus_error_free(&e);
        CHECK(bus_error_from_op(&e, -ENOENT, NULL) < 0);
        CHECK(streq(e.name, VDISK_ERROR_NOT_FOUND));
        CHECK(streq(e.message, strerror(ENOENT)));
        sd_bus_error_free(&e);
}

int main(int argc, char **argv) {
        if (argc != 2) {
                fprintf(stderr, "usage: %s DBUS-INTERFACES-DIR\n", argv[0]);
                return EXIT_FAILURE;
        }
        test_table_covers_xml(argv[1]);
        test_rows();
        test_decisions();
        test_error_map();
        TEST_MAIN_END();
}
