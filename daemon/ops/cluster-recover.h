/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Cluster mode: a timer that recovers interrupted operations of hosts that stopped (and of this vdiskd
 * before it restarted) under their leases (docs/design.md, "Recovery under leases"), so that they do not
 * wait for the next operation on their VM or the catalog, which would recover them too.
 */

#include <systemd/sd-event.h>

#include "cluster.h"
#include "store.h"

typedef struct ClusterRecovery ClusterRecovery;

int cluster_recovery_start(Cluster *c, Store *s, sd_event *event, ClusterRecovery **ret);
ClusterRecovery *cluster_recovery_free(ClusterRecovery *rec);
