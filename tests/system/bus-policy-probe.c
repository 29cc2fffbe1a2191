/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A stand-in for vdiskd on a private bus, used by test-bus-policy-live.py to see which
 * messages dbus-daemon lets through data/org.vdisk1.conf.
 *
 *   bus-policy-probe serve ADDRESS            own org.vdisk1, print "READY <unique name>",
 *                                             answer every method call with the error
 *                                             org.vdisk1.Test.Reached until killed
 *   bus-policy-probe call ADDRESS DEST IFACE MEMBER
 *                                             call DEST /org/vdisk1 IFACE.MEMBER (IFACE "-":
 *                                             no interface field), print the error name of
 *                                             the reply, or "OK" for a method return
 *   bus-policy-probe own ADDRESS NAME         request NAME, print "OWNED", "EXISTS" or the
 *                                             error name
 *
 * The bus address is always given explicitly: this never connects to the system bus.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <systemd/sd-bus.h>

#include "macro.h"

#define PROBE_BUS_NAME "org.vdisk1"
#define PROBE_REACHED_ERROR "org.vdisk1.Test.Reached"
#define PROBE_TIMEOUT_USEC (10U * 1000000U)

static inline bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}

static inline const char *strna(const char *s) {
        return s ?: "n/a";
}

static int connect_to(const char *address, sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        r = sd_bus_new(&bus);
        if (r < 0)
                return r;
        r = sd_bus_set_address(bus, address);
        if (r < 0)
                return r;
        r = sd_bus_set_bus_client(bus, 1);
        if (r < 0)
                return r;
        r = sd_bus_negotiate_fds(bus, 0);
        if (r < 0)
                return r;
        r = sd_bus_start(bus);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(bus);
        return 0;
}

static int on_message(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        uint8_t type;
        int r;

        r = sd_bus_message_get_type(m, &type);
        if (r < 0 || type != SD_BUS_MESSAGE_METHOD_CALL)
                return 0;

        r = sd_bus_reply_method_errorf(m, PROBE_REACHED_ERROR, "reached %s.%s",
                                       strna(sd_bus_message_get_interface(m)),
                                       strna(sd_bus_message_get_member(m)));
        if (r < 0)
                fprintf(stderr, "bus-policy-probe: cannot reply: %s\n", strerror(-r));
        return 1;
}

static int run_serve(const char *address) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        const char *unique;
        int r;

        r = connect_to(address, &bus);
        if (r < 0) {
                fprintf(stderr, "bus-policy-probe: cannot connect to %s: %s\n", address, strerror(-r));
                return 1;
        }
        r = sd_bus_add_filter(bus, NULL, on_message, NULL);
        if (r < 0)
                return 1;
        r = sd_bus_request_name(bus, PROBE_BUS_NAME, 0);
        if (r < 0) {
                fprintf(stderr, "bus-policy-probe: cannot own %s: %s\n", PROBE_BUS_NAME, strerror(-r));
                return 1;
        }
        r = sd_bus_get_unique_name(bus, &unique);
        if (r < 0)
                return 1;
        printf("READY %s\n", unique);
        fflush(stdout);

        for (;;) {
                r = sd_bus_process(bus, NULL);
                if (r < 0) {
                        fprintf(stderr, "bus-policy-probe: %s\n", strerror(-r));
                        return 1;
                }
                if (r > 0)
                        continue;
                r = sd_bus_wait(bus, UINT64_MAX);
                if (r < 0 && r != -EINTR)
                        return 1;
        }
}

static int run_call(const char *address, const char *destination, const char *interface, const char *member) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = connect_to(address, &bus);
        if (r < 0) {
                fprintf(stderr, "bus-policy-probe: cannot connect to %s: %s\n", address, strerror(-r));
                return 1;
        }
        r = sd_bus_message_new_method_call(bus, &m, destination, "/org/vdisk1",
                                           streq(interface, "-") ? NULL : interface, member);
        if (r < 0)
                return 1;
        r = sd_bus_call(bus, m, PROBE_TIMEOUT_USEC, &error, &reply);
        if (r >= 0)
                printf("OK\n");
        else if (sd_bus_error_is_set(&error))
                printf("%s\n", error.name);
        else {
                fprintf(stderr, "bus-policy-probe: call failed: %s\n", strerror(-r));
                return 1;
        }
        return 0;
}

static int run_own(const char *address, const char *name) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = connect_to(address, &bus);
        if (r < 0) {
                fprintf(stderr, "bus-policy-probe: cannot connect to %s: %s\n", address, strerror(-r));
                return 1;
        }
        /* Called directly rather than through sd_bus_request_name() to see the bus's error name. */
        r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "RequestName", &error, &reply, "su", name, UINT32_C(4) /* DO_NOT_QUEUE */);
        if (r < 0) {
                if (!sd_bus_error_is_set(&error)) {
                        fprintf(stderr, "bus-policy-probe: RequestName failed: %s\n", strerror(-r));
                        return 1;
                }
                printf("%s\n", error.name);
                return 0;
        }

        uint32_t ret;
        r = sd_bus_message_read(reply, "u", &ret);
        if (r < 0)
                return 1;
        /* 1: primary owner, 3: exists (owned by someone else), 4: already owner */
        printf("%s\n", ret == 1 || ret == 4 ? "OWNED" : ret == 3 ? "EXISTS" : "UNEXPECTED");
        return 0;
}

int main(int argc, char *argv[]) {
        if (argc == 3 && streq(argv[1], "serve"))
                return run_serve(argv[2]);
        if (argc == 6 && streq(argv[1], "call"))
                return run_call(argv[2], argv[3], argv[4], argv[5]);
        if (argc == 4 && streq(argv[1], "own"))
                return run_own(argv[2], argv[3]);

        fprintf(stderr,
                "usage: %1$s serve ADDRESS\n"
                "       %1$s call ADDRESS DEST IFACE|- MEMBER\n"
                "       %1$s own ADDRESS NAME\n",
                argv[0]);
        return 2;
}
