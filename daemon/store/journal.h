/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The intent journal: STORE/journal/<op-id>.json, one entry per operation in progress, and the undo logs
 * of the layers an operation changes in place (journal/<op-id>-<layer-id>[.data].undo).
 *
 * Operations use transactions (Txn): they declare what they create, drop, change and where their commit
 * point is, do their work, then commit once:
 *
 *         _cleanup_(txn_abortp) Txn *t = NULL;
 *         r = txn_begin(s, "create-image", INTENT_COMMIT_LAYER_READY, l->id, 0, l->id, NULL, &t);
 *         ... create the record and the file, txn_crash_point(t, "after-file") ...
 *         r = txn_commit(t, txn_write_layer_ready, l);
 *
 * txn_begin() writes the entry and passes the crash point "<op>:after-journal"; txn_commit() passes
 * "<op>:before-commit", writes the commit point, passes "<op>:after-commit", then finishes: modified layers'
 * records "after", the dropped layers, the old names of moved files, the entry. Whatever returns before the
 * commit is rolled back by txn_abort() (the cleanup attribute does it), exactly as recovery would.
 */

#include "record.h"

typedef struct Store Store;

typedef enum IntentCommit {
        INTENT_COMMIT_VM,            /* VM record `name` written with generation ≥ `generation` */
        INTENT_COMMIT_VM_DELETED,    /* VM record `name` removed */
        INTENT_COMMIT_LAYER_READY,   /* layer record `name` (an id) in state ready */
        INTENT_COMMIT_LAYER_DELETED, /* layer record `name` removed */
        INTENT_COMMIT_CHAIN,         /* VM `name`'s disk `commit_disk` has exactly `commit_chain` */
        _INTENT_COMMIT_MAX,
        _INTENT_COMMIT_INVALID = -EINVAL,
} IntentCommit;

const char *intent_commit_to_string(IntentCommit c) _pure_;

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
/* Whether the store (records in memory) has reached the intent's commit point. */
bool intent_committed(Store *s, const Intent *i);

/* Fills an intent in memory; add its layers with intent_add_*(), then write it with journal_begin()
 * before the first file or record of the operation is touched. Operations use Txn (below) instead. */
int intent_init(Intent *i, const char *op, IntentCommit commit, const char *commit_name, uint64_t commit_generation);
int journal_begin(Store *s, Intent *i);
int journal_end(Store *s, Intent *i);
/* Rolls back an operation that did not reach its commit point (journal_roll_back()), then ends it. */
int journal_abort(Store *s, Intent *i);
/* Undoes the modified layers, gives moved files back, removes the new layers; the entry stays. */
int journal_roll_back(Store *s, Intent *i);
/* After the commit point and journal_finish_modified(): removes the dropped layers (`live`: those the
 * store still holds in memory, the others are gone already) and the old names of moved files, through
 * `unlink_names` if given, else intent_unlink_names(). The entry stays. */
void journal_complete(Store *s, Intent *i, bool live, void (*unlink_names)(void *userdata), void *userdata);

/* The undo log of a layer an intent modifies (or of its data file), created empty for undo_begin(). */
int journal_undo_create(Store *s, const Intent *i, const char *layer, bool data);
/* Rolls back each modified layer (file from its undo log, record "before") and removes the logs. */
int journal_undo_modified(Store *s, Intent *i);
/* Writes each modified layer's record "after" and removes the undo logs (those of new layers too). */
int journal_finish_modified(Store *s, Intent *i);

/* ---- transactions ---- */

typedef struct Txn Txn;

/* The commit point's one write; `userdata` as given to txn_commit(). */
typedef int (*TxnCommitFunc)(Store *s, void *userdata);

/* Declares an operation `op` (also the prefix of its crash points) and its commit point, in memory. */
int txn_new(Store *s, const char *op, IntentCommit commit, const char *name, uint64_t generation, Txn **ret);
int txn_add_new(Txn *t, const char *layer);
int txn_add_drop(Txn *t, const char *layer);
int txn_add_modify(Txn *t, const Layer *before, const Layer *after);
int txn_add_unlink(Txn *t, const char *path, uint64_t dev, uint64_t inode, mode_t mode);
int txn_set_commit_chain(Txn *t, const char *disk, char **chain, size_t n);
/* How the old names of moved files go after the commit (default: intent_unlink_names(), by path). */
void txn_set_unlink_func(Txn *t, void (*unlink_names)(void *userdata), void *userdata);
/* The drops and the end of the entry wait for txn_finish() (the caller is told first). */
void txn_defer_finish(Txn *t);
/* Writes the journal entry, then passes "<op>:after-journal". */
int txn_start(Txn *t);
/* txn_new() with at most one new and one dropped layer (either may be NULL), then txn_start(). */
int txn_begin(Store *s, const char *op, IntentCommit commit, const char *name, uint64_t generation,
              const char *new_layer, const char *drop_layer, Txn **ret);

const Intent *txn_intent(const Txn *t);
bool txn_started(const Txn *t);
bool txn_committed(const Txn *t);
/* Passes the crash point "<op>:<point>". */
void txn_crash_point(const Txn *t, const char *point);
int txn_undo_create(Txn *t, const char *layer, bool data);

/* "<op>:before-commit", commit(), "<op>:after-commit", then the clean-up (unless deferred). Returns
 * commit()'s error if it fails (the transaction is not committed: txn_abort() rolls it back); 0 once
 * committed, even if a clean-up step fails (the entry then stays and the next start finishes it). */
int txn_commit(Txn *t, TxnCommitFunc commit, void *userdata);
/* The deferred clean-up: dropped layers, old names, the entry. Only once committed; runs once. */
void txn_finish(Txn *t);
/* Rolls back a started, uncommitted transaction and ends its entry (the entry stays if the roll-back
 * fails: the next start tries again). No-op otherwise. */
int txn_abort(Txn *t);
/* Frees without rolling back: an entry still written is replayed at the next start. */
Txn *txn_free(Txn *t);
static inline void txn_freep(Txn **t) {
        txn_free(*t);
}
/* For synchronous operations: whatever was not committed is rolled back on return. */
void txn_abortp(Txn **t);

/* Commit writes for txn_commit(). */
int txn_write_vm(Store *s, void *vm);           /* store_put_vm(): takes the Vm on success */
int txn_write_layer_ready(Store *s, void *layer); /* the layer (in the store) in state ready */
int txn_write_vm_deleted(Store *s, void *name);    /* store_delete_vm() */
int txn_write_layer_deleted(Store *s, void *id);   /* store_delete_layer(): record, then files */
