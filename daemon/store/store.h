/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The store: one directory owned by the daemon.
 *
 *   STORE/images/<layer-id>.<format>     image files, 0600, named by layer id only
 *   STORE/records/layer-<layer-id>.json  one record per layer
 *   STORE/records/vm-<name>.json         one record per VM: owner and each disk's chain
 *   STORE/journal/<op-id>.json           intent entries of operations in progress
 *
 * Every mutating operation writes an intent first, and names its commit point: the one atomic
 * record write (or removal) after which the operation counts as done. Recovery at start rolls each
 * interrupted operation forward (commit point reached: finish the clean-up) or back (not reached:
 * remove what it created), then removes files and records no operation accounts for.
 */

#include <dirent.h>

#include "journal.h"
#include "record.h"
#include "wal.h"

/* Temporaries (an interrupted write leaves them; recovery removes them): images/.#<file>, .#<record>. */
#define STORE_TMP_PREFIX ".#"

typedef struct Store {
        char *path;
        uid_t uid; /* ours: every file of the store must be owned by it */
        int dir_fd;
        int images_fd;
        int records_fd;
        int journal_fd;
        Layer **layers;
        size_t n_layers;
        /* layers by id (open addressing), rebuilt on the first lookup after `layers` changed */
        Layer **layer_index;
        size_t layer_index_size;
        bool layer_index_stale;
        Vm **vms;
        size_t n_vms;
        WalState *wal; /* the per-VM write-ahead logs (wal.h) */
        /* Opened by store_open_shared() (cluster mode): no recovery at start, and no new entries in the
         * write-ahead logs (their lazy checkpoint is not designed for several hosts yet: docs/design.md). */
        bool shared;
        bool loaded; /* opened completely: a stop writes the start-up cache of the records (store.c) */
} Store;

int store_open(const char *path, Store **ret);
/* The same without the recovery at start (journal replay, orphan sweep): cluster mode, where the journal
 * and the files are shared with other hosts and recovery must run under their leases. */
int store_open_shared(const char *path, Store **ret);
Store *store_free(Store *s); /* checkpoints the write-ahead logs first (wal.h) */

Layer *store_find_layer(Store *s, const char *id);
Layer *store_find_catalog(Store *s, const char *name);
Vm *store_find_vm(Store *s, const char *name);
Disk *vm_find_disk(Vm *v, const char *name);
/* Disks (of any VM) whose chain contains `layer`. */
size_t store_count_users(Store *s, const char *layer);

/* Record I/O; the in-memory list follows. store_put_* take ownership on success. */
int store_put_layer(Store *s, Layer *l);
int store_save_layer(Store *s, Layer *l);
int store_delete_layer(Store *s, const char *id); /* record first (the commit), then the file */
int store_put_vm(Store *s, Vm *v);                 /* replaces a VM of the same name */
int store_delete_vm(Store *s, const char *name);

/* Opens a layer's file beneath images/, checked on the fd: regular, ours, inode as recorded, one link. */
int store_open_layer(Store *s, const Layer *l, int flags);
uint64_t store_layer_allocated(Store *s, const Layer *l); /* with its data file */
/* The same for a layer's external data file (l->data_file). */
int store_open_data_file(Store *s, const Layer *l, int flags);
/* Creates l->data_file (sparse, `size` bytes) and records its inode in `l`. */
int store_create_data_file(Store *s, Layer *l, uint64_t size);

/* A DIR stream over a duplicate of `fd`, which stays ours. */
int store_opendir(int fd, DIR **ret);
/* A deep copy of a layer record. */
int layer_copy(const Layer *l, Layer **ret);

/* Replaces the in-memory layer of the same id by a copy of `l` and writes its record. */
int store_replace_layer(Store *s, const Layer *l);

/* The temporary file of a layer being made: `.#<file>` in images/, renamed into place when complete. */
int store_tmp_create(Store *s, const Layer *l);
int store_tmp_commit(Store *s, Layer *l, int fd); /* fsync, rename (no replace), fsync dir; sets inode */
void store_tmp_discard(Store *s, const Layer *l);

/* Cluster mode (reload.c): records are read again from disk under their lease, validated as at start;
 * a record that fails leaves the in-memory store unchanged. store_reload_vm() replaces VM `name` (or
 * forgets it if its record is gone) and its private layers, and adds catalog images it names that were
 * not known; store_reload_catalog() adds and refreshes catalog images and forgets those whose record is
 * gone and which no disk here uses. Callers make sure no running operation of theirs holds pointers
 * to what is replaced (ops/cluster-lease.c: only when the lease was just acquired). */
int store_reload_vm(Store *s, const char *name);
int store_reload_catalog(Store *s);
/* In memory only, for the write-ahead log (wal.c), whose entry made the change durable: room for one
 * more layer, which store_add_layer_reserved() then cannot fail to add; a VM replacing the one of its
 * name. Both take ownership. */
int store_reserve_layer(Store *s);
void store_add_layer_reserved(Store *s, Layer *l);
void store_replace_vm_in_memory(Store *s, Vm *v);

/* Creates a new, empty image file for `l` (O_TMPFILE, linked under its name only when complete). */
int store_create_layer_file(Store *s, Layer *l, StoreFillFunc fill, void *userdata);
