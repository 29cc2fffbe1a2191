/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _pure_ __attribute__((pure))
#define _noreturn_ __attribute__((noreturn))
#define _warn_unused_result_ __attribute__((warn_unused_result))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void) close(fd);
                errno = saved;
        }
        return -EBADF;
}

static inline void closep(int *fd) {
        safe_close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

#define TAKE_PTR(p)                              \
        ({                                       \
                __typeof__(p) _tmp_ = (p);       \
                (p) = NULL;                      \
                _tmp_;                           \
        })

#define TAKE_FD(fd)                              \
        ({                                       \
                int _tmp_ = (fd);                \
                (fd) = -EBADF;                   \
                _tmp_;                           \
        })

/* Overflow-checked arithmetic on untrusted values: returns true on overflow. */
#define ADD_OVERFLOW(a, b, r) __builtin_add_overflow(a, b, r)
#define MUL_OVERFLOW(a, b, r) __builtin_mul_overflow(a, b, r)

static inline int negative_errno(void) {
        return errno > 0 ? -errno : -EIO;
}
