/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * vdisk's image-format engine: pure, bounded parsing and writing of qcow2 and raw images.
 * No D-Bus, no store, no logging above debug: functions return 0 or a negative errno and, where
 * a FormatError is passed, a one-line human-readable reason that never contains image bytes.
 *
 * Error classes used throughout:
 *   -EBADMSG     malformed: the image violates the format specification or vdisk's rules
 *   -EOPNOTSUPP  unsupported: valid per specification, but a feature vdisk does not handle
 *   -E2BIG       over a limit: a size, count or amount of work above a named limit
 *   -EIO etc.    the underlying read or write failed
 */

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

typedef enum ImageFormat {
        IMAGE_FORMAT_RAW,
        IMAGE_FORMAT_QCOW2,
        _IMAGE_FORMAT_MAX,
        _IMAGE_FORMAT_INVALID = -EINVAL,
} ImageFormat;

const char *image_format_to_string(ImageFormat f) _pure_;
ImageFormat image_format_from_string(const char *s) _pure_;

#define FORMAT_ERROR_REASON_MAX 256

typedef struct FormatError {
        int code; /* negative errno, 0 when unset */
        char reason[FORMAT_ERROR_REASON_MAX];
} FormatError;

/* Records the first error only; returns `code` so that callers can `return format_error(...)`. */
int format_error(FormatError *err, int code, const char *fmt, ...) _printf_(3, 4);

const char *format_errno_class(int code) _pure_;

/* Virtual sizes are multiples of this. */
#define FORMAT_SECTOR_SIZE UINT64_C(512)

/* Default cap on virtual sizes; callers may pass a lower one (configuration). */
#define FORMAT_DEFAULT_MAX_VIRTUAL_SIZE (UINT64_C(64) << 40)

/* Bounded pread: reads exactly `size` bytes at `offset` or fails (-EIO on short read). */
int format_pread_full(int fd, void *buf, size_t size, uint64_t offset);
int format_pwrite_full(int fd, const void *buf, size_t size, uint64_t offset);
