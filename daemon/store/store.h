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

#include "record.h"

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
} Store;

int store_open(const char *path, Store **ret);
Store *store_free(Store *s);

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

/* ---- intent journal ---- */

typedef enum IntentCommit {
        INTENT_COMMIT_VM,            /* VM record `name` written with generation ≥ `generation` */
        INTENT_COMMIT_VM_DELETED,    /* VM record `name` removed */
        INTENT_COMMIT_LAYER_READY,   /* layer record `name` (an id) in state ready */
        INTENT_COMMIT_LAYER_DELETED, /* layer record `name` removed */
        INTENT_COMMIT_CHAIN,         /* VM `name`'s disk `commit_disk` has exactly `commit_chain` */
        _INTENT_COMMIT_MAX,
        _INTENT_COMMIT_INVALID = -EINVAL,
} IntentCommit;

#define INTENT_MAX_LAYERS 4096U
#define MODE_INVALID ((mode_t) -1)
#define INTENT_MAX_MODIFY 4U

/* A layer changed in place: its records before and after, and an undo log of its file in the journal
 * directory (journal/<op-id>-<layer-id>.undo). Rolling back restores the file from the log and the
 * record "before"; rolling forward writes the record "after". Both end in state ready. */
typedef struct IntentModify {
        char layer[LAYER_ID_LEN + 1];
        Layer *before;
        Layer *after;
} IntentModify;

typedef struct Intent {
        char id[LAYER_ID_LEN + 1];
        char *op;
        IntentCommit commit;
        char *commit_name;
        uint64_t commit_generation;
        char **new_layers;  /* created by the operation: removed on roll-back */
        size_t n_new;
        char **drop_layers; /* removed by the operation after its commit point */
        size_t n_drop;
        IntentModify modify[INTENT_MAX_MODIFY];
        size_t n_modify;
        struct IntentUnlink {
                char *path; /* absolute */
                uint64_t dev, inode;
                mode_t mode; /* the file's mode before the move, given back on roll-back (or MODE_INVALID) */
        } *unlink_after; /* names outside the store removed after the commit point (adopt with "move") */
        size_t n_unlink;
        char *commit_disk;   /* INTENT_COMMIT_CHAIN */
        char **commit_chain;
        size_t n_commit_chain;
} Intent;

void intent_done(Intent *i);
int intent_add_new(Intent *i, const char *layer);
int intent_add_drop(Intent *i, const char *layer);
/* For INTENT_COMMIT_CHAIN: the disk and its chain once the operation is done. */
int intent_set_commit_chain(Intent *i, const char *disk, char **chain, size_t n);
/* After the commit point (also when recovery completes the operation), `path` is removed if it is still
 * the same file (device and inode): the old name of a file moved into the store. A roll-back gives the
 * file (through the store's name of it, a new layer of the intent) its `mode` back, and its bytes from
 * the layer's undo log if there is one (journal_undo_create(…, layer, false)). */
int intent_add_unlink(Intent *i, const char *path, uint64_t dev, uint64_t inode, mode_t mode);
void intent_unlink_names(Intent *i);
/* Takes copies of both records. */
int intent_add_modify(Intent *i, const Layer *before, const Layer *after);
/* Parses a journal entry (as read by record_read()); `ret` is set only on success. */
int intent_parse(struct json_object *o, Intent *ret);

/* Fills an intent in memory; add its layers with intent_add_*(), then write it with journal_begin()
 * before the first file or record of the operation is touched. */
int intent_init(Intent *i, const char *op, IntentCommit commit, const char *commit_name, uint64_t commit_generation);
int journal_begin(Store *s, Intent *i);
int journal_end(Store *s, Intent *i);
/* Rolls back an operation that did not reach its commit point, then ends it. */
int journal_abort(Store *s, Intent *i);

/* The undo log of a layer an intent modifies (or of its data file), created empty for undo_begin(). */
int journal_undo_create(Store *s, const Intent *i, const char *layer, bool data);
/* Rolls back each modified layer (file from its undo log, record "before") and removes the logs. */
int journal_undo_modified(Store *s, Intent *i);
/* Writes each modified layer's record "after" and removes the undo logs (those of new layers too). */
int journal_finish_modified(Store *s, Intent *i);

/* Replaces the in-memory layer of the same id by a copy of `l` and writes its record. */
int store_replace_layer(Store *s, const Layer *l);

/* Replays the journal and removes orphans; called by store_open(). */
int store_recover(Store *s);

/* The temporary file of a layer being made: `.#<file>` in images/, renamed into place when complete. */
int store_tmp_create(Store *s, const Layer *l);
int store_tmp_commit(Store *s, Layer *l, int fd); /* fsync, rename (no replace), fsync dir; sets inode */
void store_tmp_discard(Store *s, const Layer *l);

/* Creates a new, empty image file for `l` (O_TMPFILE, linked under its name only when complete). */
typedef int (*StoreFillFunc)(int fd, void *userdata);
int store_create_layer_file(Store *s, Layer *l, StoreFillFunc fill, void *userdata);
