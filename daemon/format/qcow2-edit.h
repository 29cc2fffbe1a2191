/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Changing an existing qcow2 image in place: mapping guest clusters to new data clusters or to zero
 * flags, growing the virtual size, rewriting the backing pointer.
 *
 * Crash model: nothing that existed when editing began is overwritten without its old bytes in the
 * undo log first. New clusters are only ever taken from the end of the file (never reused), L2
 * tables are copied before they change, and data is never written into an existing cluster; so the
 * only in-place changes are to the header cluster, the L1 table, the refcount table and refcount
 * blocks — small, and all in the undo log. Rolling back (undo_apply()) therefore restores the file
 * byte for byte, and until then the old tables keep describing the old content.
 *
 * Refcounts are kept exact: every new cluster (data, L2, refcount block, relocated tables) gets 1,
 * every cluster no longer referenced is decremented. New refcount blocks and a grown refcount table
 * are placed at the end like everything else.
 *
 * Supported: versions 2 and 3, any refcount width, any cluster size, without internal snapshots,
 * bitmaps, encryption or extended L2 entries (-EOPNOTSUPP otherwise).
 */

#include <stdint.h>

#include "qcow2.h"
#include "undo.h"

typedef struct Qcow2Edit Qcow2Edit;

/* `fd` must be open read-write; the image is expected to have passed qcow2_check() cleanly. */
int qcow2_edit_open(int fd, UndoLog *undo, Qcow2Edit **ret, FormatError *err);
Qcow2Edit *qcow2_edit_free(Qcow2Edit *e);

const Qcow2Header *qcow2_edit_header(const Qcow2Edit *e);

/* Takes `n` new contiguous clusters at the end of the file; returns their host offset. The caller
 * writes their data (they read as zeros until then), then maps them with qcow2_edit_map(). */
int qcow2_edit_alloc(Qcow2Edit *e, uint64_t n, uint64_t *ret_offset, FormatError *err);

/* Points guest cluster `index` at the data cluster `host` (taken with qcow2_edit_alloc()), or, with
 * host == QCOW2_EDIT_ZERO, makes it read as zeros (a zero flag; version 3 only). What it pointed to before loses
 * one reference. With an external data file, `host` is the guest offset (data lies there in the data
 * file, which has no refcounts); the caller writes the data file. */
#define QCOW2_EDIT_ZERO UINT64_MAX
int qcow2_edit_map(Qcow2Edit *e, uint64_t index, uint64_t host, FormatError *err);

/* Grows the virtual size (never shrinks); the new area reads as unallocated. */
int qcow2_edit_grow(Qcow2Edit *e, uint64_t size, FormatError *err);

/* The backing pointer to write at the next flush (both NULL: none). */
int qcow2_edit_set_backing(Qcow2Edit *e, const char *backing_file, const char *backing_format, FormatError *err);

/* Writes every pending table change (undo log first) and flushes the image. */
int qcow2_edit_flush(Qcow2Edit *e, FormatError *err);
/* The same without the final flush: the tables are written, their durability is left to a later
 * qcow2_edit_flush(). Safe while the undo log can roll the image back (it is flushed before any
 * byte is overwritten in place); a crash in between is rolled back, not repaired. */
int qcow2_edit_write_tables(Qcow2Edit *e, FormatError *err);

/* Bytes written to the image by flushes so far (metadata only; data is written by the caller). */
uint64_t qcow2_edit_metadata_bytes(const Qcow2Edit *e);
