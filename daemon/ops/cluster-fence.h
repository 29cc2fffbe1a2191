/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Fencing in cluster mode (docs/design.md, "Losing the lockspace"): when sanlock runs vdiskd's kill path
 * (cluster.h), this host must stop using everything its leases protect before they are dropped:
 *
 *   1. every running job is cancelled: it has not reached its commit point (that is one record write
 *      inside one step of the event loop), so it rolls back as a Cancel does, and its leases go with it;
 *   2. every holder that may write is fenced: an export's storage helper is killed (the VM loses its
 *      disk, not its data), the process that holds a read-write lease's fds is killed (SIGKILL, by the
 *      pid its bus connection had when it called OpenDisk; the lease exists, so that connection does);
 *   3. every lease ends (read-only ones too, without killing their holders: they cannot write), which
 *      releases its disk lease.
 *
 * Nothing in local mode (`c` NULL).
 */

#include "cluster.h"
#include "job.h"
#include "lease.h"
#include "store.h"

void cluster_fence_setup(Cluster *c, Store *s, LeaseRegistry *leases, JobRegistry *jobs);
