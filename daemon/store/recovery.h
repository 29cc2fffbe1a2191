/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Recovery at start: each journal entry is rolled forward (its commit point was reached: the clean-up is
 * finished) or back (not reached: what it created goes, what it changed in place is restored from its undo
 * logs); then undo logs of no entry, layers no operation finished, private layers no disk uses, and files
 * no record names are removed. A journal entry that cannot be read stops the start (nothing is changed).
 */

typedef struct Store Store;

/* Replays the journal and removes orphans; called by store_open() once the records are loaded. */
int store_recover(Store *s);

/* Cluster mode (docs/design.md, "Recovery under leases"): recovery entry by entry, by the host that holds
 * the lease the interrupted operation held, instead of everything at start.
 *
 * The lease an entry's operation held for its whole life: "catalog" for the catalog's operations, else
 * "vm:NAME" (the VM record's). */
#include <stddef.h>
#define CLUSTER_LEASE_NAME_MAX 127U
typedef struct Intent Intent;
void intent_lease_name(const Intent *i, char *buf, size_t size);
/* Rolls forward or back every journal entry whose lease is `lease`, which the caller holds exclusively
 * and acquired from outside this vdiskd (so that no operation of its own holds it), records read again
 * under it. Unreadable entries are left (logged). `*ret_n`: how many were recovered. */
int store_recover_lease(Store *s, const char *lease, size_t *ret_n);
/* The readable journal entries: `*ret_entries[k]` is an entry's file name, `*ret_leases[k]` its lease
 * (one lease may name several entries). */
int store_pending_entries(Store *s, char ***ret_entries, char ***ret_leases, size_t *ret_n);
