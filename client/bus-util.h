/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <systemd/sd-bus.h>

#include "macro.h"

#include "vdisk-bus.h" /* the bus and error names, shared with vdiskd */

/* Calls that copy or walk whole images may take long; everything else uses sd-bus' default (25 s). */
#define BUS_TIMEOUT_DEFAULT UINT64_C(0)
#define BUS_TIMEOUT_LONG (UINT64_C(3600) * UINT64_C(1000000))

/* vdiskctl's exit statuses; documented in "vdiskctl --help". */
enum {
        EXIT_OK = 0,
        EXIT_PROBLEMS = 1, /* "verify" found differences */
        EXIT_USAGE = 2,    /* bad arguments, unknown command */
        EXIT_REFUSED = 3,  /* vdiskd refused: org.vdisk1.Error.* but NoSpace, AccessDenied, InvalidArgs */
        EXIT_ERROR = 4,    /* anything else: no bus, NoSpace, unexpected errors */
};

int exit_status_from_error_name(const char *name) _pure_;

_printf_(1, 2) void log_error(const char *format, ...);
/* Prints "<format>: <strerror(-r)>" and returns r. */
_printf_(2, 3) int log_error_errno(int r, const char *format, ...);
int log_oom(void);
int log_bus_parse_error(int r);
int log_bus_create_error(int r);

/* Prints "<format>: <daemon's message> (<error name>)" and a line saying what to do next; returns the
 * exit status for the error. Falls back to strerror(-r) if no error name is set. */
_printf_(3, 4) int log_call_error(const sd_bus_error *error, int r, const char *format, ...);

int bus_connect(sd_bus **ret);

/* Reads an a{sv} (GetAll, PropertiesChanged) into the variables of `map`, which ends with an entry
 * whose name is NULL. Types: 's' (char **, replaced), 'd' (double *), 't' (uint64_t *), 'u'
 * (uint32_t *), 'b' (bool *). Unknown properties and unexpected types are skipped. */
typedef struct BusPropertyMap {
        const char *name;
        char type;
        void *ptr;
} BusPropertyMap;

int bus_map_properties(sd_bus_message *m, const BusPropertyMap *map);
