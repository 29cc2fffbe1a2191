/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The per-VM write-ahead log: STORE/log/vm-<name>.log, one preallocated file per VM (docs/design.md,
 * "Commit protocol"). An operation that only adds a new layer to a VM (Snapshot) writes ONE log entry
 * that carries everything it changes — the new VM record, the new layer record and the new image
 * file's non-zero bytes — and makes it durable with one fdatasync() of the already durable, already
 * allocated log file: that is its commit point. It then renames its prepared temporaries into place
 * without any sync. The files and directory entries are made durable later, in batches, by
 * wal_checkpoint(), which every other durable change of the store waits for (store.c calls it before
 * any record write, record removal or file removal, and before a layer created by a pending entry is
 * opened, so before its fd can leave the daemon). At start, wal_open() redoes every entry written
 * after its log's last checkpoint, before the records are read.
 */

#include <stdbool.h>

#include "record.h"

typedef struct Store Store;
typedef struct WalState WalState;
typedef int (*StoreFillFunc)(int fd, void *userdata);

/* The log's preallocated size, and the largest entry it takes (bigger ones use the intent journal). */
#define WAL_LOG_SIZE (256U * 1024U)
#define WAL_ENTRY_MAX (WAL_LOG_SIZE - 64U)

/* Opens (creates) STORE/log and redoes the pending entries of every log; before the records are read. */
int wal_open(Store *s);
void wal_free(Store *s);

/* Redoes the pending entries of VM `vm`'s log durably (what wal_open() does for every VM): for a host
 * that takes a VM over from another before reading its records from disk. 0 if there is no log. */
int wal_recover_vm(Store *s, const char *vm);

/* Whether an entry that is not checkpointed yet created layer `id`. */
bool wal_layer_pending(Store *s, const char *id);
/* Whether any entry is not checkpointed yet. */
bool wal_pending(Store *s);
/* Makes every applied entry's files, records and directory entries durable, then marks the logs. */
int wal_checkpoint(Store *s);

/* Adds new layer `l` (its file made by `fill`, which must only write metadata: its non-zero bytes go
 * into the log) and replaces VM `next` (same name) in one log entry. On success the store owns `l` and
 * `next`; on failure nothing changed and the caller still owns both. -E2BIG (nothing done) if the
 * entry would not fit in the log: the caller then uses the intent journal. Crash points
 * "<op>:wal-prepared", "<op>:wal-after-log", "<op>:wal-after-file", "<op>:wal-after-layer-record",
 * "<op>:wal-applied"; those of the checkpoint: "wal-checkpoint:after-sync", "wal-checkpoint:after-mark";
 * those of a redo at start: "wal-redo:after-file", "wal-redo:before-mark". */
int wal_new_layer(Store *s, const char *op, Layer *l, StoreFillFunc fill, void *userdata, Vm *next);
