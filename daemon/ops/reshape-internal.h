/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* What the parts of reshape (reshape.c: checks, begin, steps; reshape-plan.c: views and the work list;
 * reshape-copy.c: copying) share. Not for use outside daemon/ops/reshape*.c. */

#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "image-lock.h"
#include "log.h"
#include "ops.h"
#include "qcow2-edit.h"
#include "reshape.h"
#include "test-hooks.h"
#include "undo.h"

#define RESHAPE_STEP_BYTES (UINT64_C(256) << 20)
#define COPY_BUFFER (UINT64_C(1) << 20)
/* Copying into a file that does not share extents, its writeback is started every this many bytes:
 * 4 MiB measured best against 1 and 16 MiB (tests/bench/RESULTS-b345.md, "Copy engines"). */
#define COPY_KICK_BYTES (UINT64_C(4) << 20)

typedef struct ViewLayer {
        Layer *layer; /* the store's record; stable while the disk is busy with this job */
        int fd;
        int data_fd; /* the external data file, where data clusters are, or -EBADF */
        bool loaded;
        uint64_t size;
        ExtentMap map;
} ViewLayer;

typedef enum PieceKind {
        PIECE_ZERO,
        PIECE_DATA,
        PIECE_BELOW, /* falls through to the part of the chain that old and new view share */
} PieceKind;

typedef struct Piece {
        uint64_t start, length;
        PieceKind kind;
        size_t layer; /* PIECE_DATA: index in ReshapeOp.layers */
        uint64_t host;
} Piece;

typedef struct Pieces {
        Piece *p;
        size_t n, allocated;
} Pieces;

typedef struct Range {
        uint64_t start, end;
} Range;

typedef struct Target {
        Layer *layer;
        int fd; /* read-write, QEMU-locked for the whole operation */
        int undo_fd;
        UndoLog undo;
        int data_fd; /* its external data file: written in place, through its own undo log */
        int data_undo_fd;
        UndoLog data_undo;
        Qcow2Edit *edit; /* qcow2 targets */
        uint64_t cluster_size;
} Target;

struct ReshapeOp {
        Store *store;
        Limits limits;
        ReshapeKind kind;
        bool unsafe;
        char *op;
        char *vm, *disk;
        char **new_chain;
        size_t n_new_chain;
        Txn *txn;
        bool finished, cleanup;

        /* The disk's chain (top first), then a catalog image that is the new backing, if any. */
        ViewLayer *layers;
        size_t n_layers;
        size_t *old_view, *new_view;
        size_t n_old_view, n_new_view;
        size_t shared; /* rebase onto a lower layer: the layer index where old and new view meet, else SIZE_MAX */

        Target target;    /* rebase: the top; commit: the backing of the committed layer */
        Target upper;     /* commit: the layer above the committed one (its header changes), fd -EBADF if none */
        size_t target_index;
        Layer *new_backing; /* rebase: NULL = flatten */
        Layer *pinned;

        Range *work;
        size_t n_work, work_pos;
        uint64_t work_off;
        uint64_t bytes_total, bytes_done;
        uint64_t step_bytes;
        bool stepped;

        /* Pending copy, extended while source and target stay contiguous. */
        int cp_src, cp_dst;
        uint64_t cp_src_off, cp_dst_off, cp_len;
        int cp_kick_fd;       /* the target whose writeback copy_kick() starts, -EBADF before the first copy */
        bool cp_shares;       /* ... is on a file system that shares extents: no writeback to start */
        uint64_t cp_unkicked; /* bytes copied into it since its writeback was last started */
};

/* reshape-plan.c */
int reshape_view_load(ReshapeOp *op, size_t i, OpError *err);
int reshape_view_resolve(ReshapeOp *op, const size_t *view, size_t n, size_t from, size_t stop, uint64_t a, uint64_t b,
                        Pieces *out, OpError *err);
int reshape_piece_fd(const ReshapeOp *op, const Piece *p);
int reshape_plan_rebase(ReshapeOp *op, OpError *err);
int reshape_plan_commit(ReshapeOp *op, OpError *err);

/* reshape-copy.c */
bool reshape_fs_shares_extents(int64_t f_type);
int reshape_copy_flush(ReshapeOp *op, OpError *err);
int reshape_materialize_qcow2(ReshapeOp *op, const size_t *view, size_t n, uint64_t a, uint64_t b, OpError *err);
int reshape_materialize_raw(ReshapeOp *op, uint64_t a, uint64_t b, OpError *err);
int reshape_materialize_compare(ReshapeOp *op, uint64_t a, uint64_t b, OpError *err);
