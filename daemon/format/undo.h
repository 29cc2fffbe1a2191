/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * An undo log for changing an existing file in place. Before a region that existed when the log was
 * started is overwritten, its old bytes are appended to the log, and the log is flushed before the
 * overwrite (undo_sync()). Rolling back writes the saved regions back (last saved first, so the
 * oldest copy wins) and truncates the file to its original length: the result is byte-identical to
 * the file before the first change. Each entry carries a checksum; a torn entry at the end (a crash
 * while it was being appended, before its overwrite could happen) ends the log.
 *
 * Layout: header { u64 magic, u64 original length, u64 checksum }, then entries
 * { u64 magic, u64 offset, u64 length, u64 checksum of offset+length+data, data }.
 */

#include <stdint.h>

#include "format.h"

typedef struct UndoLog {
        int fd;         /* the log, owned by the caller */
        int target_fd;  /* the file being changed, owned by the caller */
        uint64_t original_size;
        uint64_t pos;   /* append position in the log */
        uint64_t bytes; /* data bytes saved */
} UndoLog;

#define UNDO_MAX_ENTRY (UINT64_C(64) << 20)

/* Starts a log in the empty file `log_fd` for `target_fd` and flushes its header. */
int undo_begin(UndoLog *u, int log_fd, int target_fd, FormatError *err);
/* Saves [offset, offset+length) of the target as it is now; parts beyond the original length are
 * skipped (rolling back truncates them away). Not flushed: call undo_sync() before overwriting. */
int undo_save(UndoLog *u, uint64_t offset, uint64_t length, FormatError *err);
int undo_sync(UndoLog *u, FormatError *err);
/* Restores the target from the log `log_fd` and flushes it. A log without a valid header means
 * nothing was changed yet (the header is flushed before any change): nothing to do. */
int undo_apply(int log_fd, int target_fd, FormatError *err);
