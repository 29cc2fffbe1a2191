/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* errno → org.vdisk1.Error.*: the one place where D-Bus error names are chosen. */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "bus.h"
#include "log.h"

const char *bus_error_name(int r) {
        switch (-r) {
        case ENOENT:
                return VDISK_ERROR_NOT_FOUND;
        case EEXIST:
                return VDISK_ERROR_ALREADY_EXISTS;
        case EBUSY:
                return VDISK_ERROR_IN_USE;
        case EMEDIUMTYPE:
                return VDISK_ERROR_UNSAFE_IMAGE;
        case EBADMSG:
                return VDISK_ERROR_CORRUPT;
        case EOPNOTSUPP:
                return VDISK_ERROR_NOT_SUPPORTED;
        case ELOOP:
                return VDISK_ERROR_CHAIN_TOO_DEEP;
        case E2BIG:
        case EMFILE: /* out of fds: a limit, whose message says which */
        case ENFILE:
                return VDISK_ERROR_LIMIT_EXCEEDED;
        case ECANCELED:
                return VDISK_ERROR_CANCELLED;
        case ENOSPC:
        case EDQUOT:
                return VDISK_ERROR_NO_SPACE;
        case EHOSTDOWN: /* cluster mode: the lockspace is not joined yet */
                return VDISK_ERROR_NOT_JOINED;
        case EINVAL:
                return VDISK_ERROR_INVALID_ARGS;
        case EACCES:
        case EPERM:
                return VDISK_ERROR_ACCESS_DENIED;
        default:
                return SD_BUS_ERROR_FAILED;
        }
}

int bus_error_from_op(sd_bus_error *error, int r, const char *reason) {
        const char *name = bus_error_name(r);

        if (streq(name, SD_BUS_ERROR_FAILED))
                log_error_errno(r, "Operation failed: %s", reason && *reason ? reason : "unknown error");
        return sd_bus_error_setf(error, name, "%s", reason && *reason ? reason : strerror(-r));
}

int bus_errorf(sd_bus_error *error, int r, const char *fmt, ...) {
        char text[512];
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(text, sizeof(text), fmt, ap);
        va_end(ap);
        return bus_error_from_op(error, r, text);
}
