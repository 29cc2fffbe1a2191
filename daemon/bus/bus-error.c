/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <string.h>

#include "log.h"
#include "manager.h"

/* errno → org.vdisk1.Error.*: the one place where D-Bus error names are chosen. */
static const char *error_name(int r) {
        switch (-r) {
        case ENOENT:
                return "org.vdisk1.Error.NotFound";
        case EEXIST:
                return "org.vdisk1.Error.AlreadyExists";
        case EBUSY:
                return "org.vdisk1.Error.InUse";
        case EMEDIUMTYPE:
                return "org.vdisk1.Error.UnsafeImage";
        case EBADMSG:
                return "org.vdisk1.Error.Corrupt";
        case EOPNOTSUPP:
                return "org.vdisk1.Error.NotSupported";
        case ELOOP:
                return "org.vdisk1.Error.ChainTooDeep";
        case E2BIG:
        case EMFILE: /* out of fds: a limit, whose message says which */
        case ENFILE:
                return "org.vdisk1.Error.LimitExceeded";
        case ECANCELED:
                return "org.vdisk1.Error.Cancelled";
        case ENOSPC:
        case EDQUOT:
                return "org.vdisk1.Error.NoSpace";
        case EINVAL:
                return SD_BUS_ERROR_INVALID_ARGS;
        case EACCES:
        case EPERM:
                return SD_BUS_ERROR_ACCESS_DENIED;
        default:
                return SD_BUS_ERROR_FAILED;
        }
}

int bus_error_from_op(sd_bus_error *error, int r, const char *reason) {
        const char *name = error_name(r);

        if (streq(name, SD_BUS_ERROR_FAILED))
                log_error_errno(r, "Operation failed: %s", reason && *reason ? reason : "unknown error");
        return sd_bus_error_setf(error, name, "%s", reason && *reason ? reason : strerror(-r));
}
