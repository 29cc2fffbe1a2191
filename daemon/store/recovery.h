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

/* The orphan sweep of a shared store (cluster mode; docs/design.md, "The orphan sweep in cluster
 * mode"): what store_recover() removes at start in local mode — layer records no chain names that are
 * private or not ready, files of images/ no record names, undo logs of no entry, and temporaries older
 * than an hour — but read afresh from disk in the order of the proof (the listings, the journal, every
 * record, the journal again), and never anything a journal entry read either time names. Layers left
 * modifying are left alone. The caller holds the catalog lease exclusively, except for a `dry_run`,
 * which removes nothing and only counts. A record or entry that cannot be read stops it (nothing
 * removed, -EBADMSG and the like, logged). */
typedef struct StoreSweep {
        size_t orphans; /* found (removed unless a dry run) */
        size_t removed;
        size_t kept;    /* candidates kept only because a journal entry names them */
        size_t pending; /* journal entries read the first time */
} StoreSweep;
#include <stdbool.h>
int store_sweep_shared(Store *s, bool dry_run, StoreSweep *ret);
