/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * OpenDisk: everything it decides. A disk's chain handed out as freshly opened file descriptions (top
 * read-write unless read-only, backing layers O_RDONLY, each layer's data file right after it) plus an
 * explicit QEMU -blockdev description, under a lease. Refused while the disk is quarantined, busy with
 * a job, leased in a conflicting mode, locked by another QEMU, or different from its records; and
 * when a limit on leases or held fds would be passed.
 */

#include "export.h"
#include "lease.h"
#include "ops.h"

typedef struct OpenDiskRequest {
        const char *vm, *disk;
        bool read_only;
        /* Migration's destination (OpenDisk's "incoming"): the source's QEMU still runs on the top layer
         * and holds QEMU's image locks on it; they are not tested (the destination's QEMU takes its own at
         * `cont`, after the source's inactivated its images). */
        bool incoming;
        ExportType export;  /* EXPORT_NONE: the chain's fds */
        const char *holder; /* unique bus name */
        uid_t holder_uid;
        pid_t holder_pid;
} OpenDiskRequest;

/* On success the new lease is in `leases` (its fds still all held; only the first
 * LEASE_MAX_FDS_PER_MESSAGE are open, for the reply) and `*ret_blockdev` is a JSON array of
 * -blockdev nodes, deepest first, fd i of the lease being "/dev/fdset/<i+1>". */
int op_open_disk(Store *s, const Limits *lim, LeaseRegistry *leases, const JobRegistry *jobs, const ExportContext *ectx,
                 const OpenDiskRequest *req, Lease **ret, char **ret_blockdev, OpError *err);

/* GetFds: fds [first, first + *ret_count) of the lease, *ret_count = min(count, 16, n_fds - first), each
 * opened now if it is not yet, through the same checks as OpenDisk's (a layer failing them is -EBADMSG
 * naming it, and then none of the page is opened). -EINVAL if `first` is past the end or one of them was
 * handed out already. The caller sends them, then calls lease_forget_fds(). */
int op_lease_get_fds(Store *s, Lease *l, uint32_t first, uint32_t count, size_t *ret_count, OpError *err);

/* A helper's node of a layer: `kind` ('L' format, 'F' file, 'D' data file) and the layer id's first 30
 * digits (QEMU's node names have at most 31 characters). */
#define EXPORT_NODE_NAME_MAX 32U
void export_node_name(char ret[static EXPORT_NODE_NAME_MAX], char kind, const char *layer_id);

/* The -blockdev description of disk `d`'s chain: for a launcher, or for an export's helper (nodes named
 * after their layers, backing file nodes reopenable for writing). */
int open_disk_blockdev(Store *s, const Disk *d, bool read_only, bool for_export, char **ret);
