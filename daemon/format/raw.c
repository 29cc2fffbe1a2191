/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <unistd.h>

#include "qcow2.h"

int raw_create(int fd, uint64_t size, const uint8_t *initial_data, size_t initial_data_size, FormatError *err) {
        int r;

        if (size % FORMAT_SECTOR_SIZE != 0)
                return format_error(err, -EINVAL, "virtual size %" PRIu64 " is not a multiple of 512", size);
        if (size > FORMAT_DEFAULT_MAX_VIRTUAL_SIZE)
                return format_error(err, -E2BIG, "virtual size %" PRIu64 " is above the limit", size);
        if (initial_data_size > size)
                return format_error(err, -EINVAL, "initial data is larger than the image");

        /* Sparse: only the initial data occupies blocks. */
        if (ftruncate(fd, (off_t) size) < 0)
                return format_error(err, negative_errno(), "cannot size the image file");
        if (initial_data_size > 0) {
                r = format_pwrite_full(fd, initial_data, initial_data_size, 0);
                if (r < 0)
                        return format_error(err, r, "cannot write the image");
        }
        return 0;
}
