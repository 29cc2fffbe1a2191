/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Between wal.c (the logs) and wal-redo.c (the entries' contents). */

#include "wal.h"

#define WAL_EXTENT_BLOCK 512U
#define WAL_FILE_MAX_SIZE (UINT64_C(1) << 30) /* a new layer's file that the log may carry: metadata only */

/* The non-zero WAL_EXTENT_BLOCK-byte blocks of `fd` (its data regions), as the entry's "extents";
 * -E2BIG if they would not fit in an entry. */
int wal_file_extents(int fd, uint64_t size, struct json_object **ret, size_t *total);
/* Makes an entry's changes durable (the redo; see wal-redo.c). */
int wal_entry_redo(Store *s, const char *vm, struct json_object *e, bool memory);
