/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Live chain operations under an export lease (ops/live.c). */

#include "export.h"
#include "job.h"
#include "lease.h"
#include "open-disk.h"
#include "ops.h"
#include "reshape.h"

/* The read-write export lease of a disk, if it has one: chain operations on it run live. */
Lease *lease_registry_find_live(const LeaseRegistry *reg, const char *vm, const char *disk);

/* Brings the helper's chain to the records: layers recorded on top of the one it serves are handed to it
 * and switched to (a live snapshot interrupted between its commit and the switch). */
int export_reconcile(Export *e, Store *s, OpError *err);

/* Snapshot of a disk that an export serves: the new layer is recorded as offline, then the helper
 * switches to it (QEMU's blockdev-snapshot) while the guest keeps writing. */
int op_live_snapshot(Store *s, const Limits *lim, const JobRegistry *jobs, Lease *l, char ret_layer[static LAYER_ID_LEN + 1],
                     OpError *err);

/* The node the helper's export serves now. */
int export_active_node(Export *e, char ret[static EXPORT_NODE_NAME_MAX], OpError *err);

/* Live Commit, Rebase onto a lower layer of the chain and flatten (ops/live-job.c): QEMU's job in the
 * helper, stepped (polled) as an org.vdisk1.Job; the records follow once it has completed. */
typedef struct LiveJob LiveJob;

/* Checks as offline (plus what a live job cannot do: -EOPNOTSUPP naming why), then starts the helper's
 * job. `leases` is looked up at each step: the lease may end while the job runs. */
int live_job_begin(Store *s, const LeaseRegistry *leases, Lease *l, ReshapeKind kind, const char *layer, LiveJob **ret,
                   OpError *err);
/* > 0 while the helper's job runs; 0 once it completed and the records follow; < 0 failed (the records
 * unchanged). */
int live_job_step(LiveJob *j, OpError *err);
/* Cancels the helper's job and waits for its end; the records stay (or follow, if it had completed). */
void live_job_abort(LiveJob *j);
LiveJob *live_job_free(LiveJob *j);
uint64_t live_job_bytes_done(const LiveJob *j);
uint64_t live_job_bytes_total(const LiveJob *j);
const char *live_job_operation(const LiveJob *j);
#define LIVE_JOB_POLL_USEC (UINT64_C(100) * 1000)

/* The records brought to the chain the helper serves once its job (Export.job_op) has ended: unchanged,
 * or rolled forward to the chain without the dropped layers (*ret_changed). Clears the job. */
int live_job_settle(Export *e, Store *s, bool *ret_changed, OpError *err);
/* After a restart, or when the lease ends: a job still running in the helper is cancelled and waited
 * for, then settled. Returns 1 if the job had completed (the records now follow the helper), 0 if the
 * chain is unchanged (or there was no job). */
int live_job_recover(Export *e, Store *s, OpError *err);
