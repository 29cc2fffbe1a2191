/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Live chain operations under an export lease (ops/live.c). */

#include "export.h"
#include "job.h"
#include "lease.h"
#include "ops.h"

/* The read-write export lease of a disk, if it has one: chain operations on it run live. */
Lease *lease_registry_find_live(const LeaseRegistry *reg, const char *vm, const char *disk);

/* Brings the helper's chain to the records: layers recorded on top of the one it serves are handed to it
 * and switched to (a live snapshot interrupted between its commit and the switch). */
int export_reconcile(Export *e, Store *s, OpError *err);

/* Snapshot of a disk that an export serves: the new layer is recorded as offline, then the helper
 * switches to it (QEMU's blockdev-snapshot) while the guest keeps writing. */
int op_live_snapshot(Store *s, const Limits *lim, const JobRegistry *jobs, Lease *l, char ret_layer[static LAYER_ID_LEN + 1],
                     OpError *err);
