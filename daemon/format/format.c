/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "format.h"

static const char *const image_format_table[_IMAGE_FORMAT_MAX] = {
        [IMAGE_FORMAT_RAW] = "raw",
        [IMAGE_FORMAT_QCOW2] = "qcow2",
};

const char *image_format_to_string(ImageFormat f) {
        if (f < 0 || f >= _IMAGE_FORMAT_MAX)
                return NULL;
        return image_format_table[f];
}

ImageFormat image_format_from_string(const char *s) {
        if (!s)
                return _IMAGE_FORMAT_INVALID;
        for (size_t i = 0; i < ELEMENTSOF(image_format_table); i++)
                if (strcmp(s, image_format_table[i]) == 0)
                        return (ImageFormat) i;
        return _IMAGE_FORMAT_INVALID;
}

int format_error(FormatError *err, int code, const char *fmt, ...) {
        if (err && err->code == 0) {
                va_list ap;

                err->code = code;
                va_start(ap, fmt);
                (void) vsnprintf(err->reason, sizeof(err->reason), fmt, ap);
                va_end(ap);
        }
        return code;
}

const char *format_errno_class(int code) {
        switch (code) {
        case 0:
                return "ok";
        case -EBADMSG:
                return "malformed";
        case -EOPNOTSUPP:
                return "unsupported";
        case -E2BIG:
                return "limit";
        default:
                return "io";
        }
}

int format_pread_full(int fd, void *buf, size_t size, uint64_t offset) {
        uint8_t *p = buf;

        if (offset > INT64_MAX || size > INT64_MAX - offset)
                return -EOVERFLOW;

        while (size > 0) {
                ssize_t n = pread(fd, p, size, (off_t) offset);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        return -EIO;
                p += n;
                size -= (size_t) n;
                offset += (uint64_t) n;
        }
        return 0;
}

int format_pwrite_full(int fd, const void *buf, size_t size, uint64_t offset) {
        const uint8_t *p = buf;

        if (offset > INT64_MAX || size > INT64_MAX - offset)
                return -EOVERFLOW;

        while (size > 0) {
                ssize_t n = pwrite(fd, p, size, (off_t) offset);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (n == 0)
                        return -EIO;
                p += n;
                size -= (size_t) n;
                offset += (uint64_t) n;
        }
        return 0;
}
