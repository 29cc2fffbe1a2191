/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Rebase (safe and unsafe), flatten and commit, run in steps by a job; see reshape.c. */

#include "ops.h"

typedef enum ReshapeKind {
        RESHAPE_REBASE,        /* `layer`: new backing (lower layer or catalog image), "" = flatten */
        RESHAPE_UNSAFE_REBASE, /* the header pointer and the records only */
        RESHAPE_COMMIT,        /* `layer`: the private layer to merge into its backing */
} ReshapeKind;

typedef struct ReshapeOp ReshapeOp;

/* Checks, plans, locks and journals; nothing is written to an image yet. */
int reshape_begin(Store *s, const Limits *lim, ReshapeKind kind, const char *vm, const char *disk, const char *layer,
                  ReshapeOp **ret, OpError *err);
/* > 0: more to do; 0: done and committed; < 0: failed and rolled back. */
int reshape_step(ReshapeOp *op, OpError *err);
/* Rolls back an operation that has not reached its commit point: every file byte for byte. */
void reshape_abort(ReshapeOp *op);
ReshapeOp *reshape_free(ReshapeOp *op);
static inline void reshape_freep(ReshapeOp **op) {
        reshape_free(*op);
}
uint64_t reshape_bytes_done(const ReshapeOp *op);
uint64_t reshape_bytes_total(const ReshapeOp *op);
const char *reshape_operation(const ReshapeOp *op);
