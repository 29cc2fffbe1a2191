/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Transactions: an operation's journal entry, crash points, commit and roll-back in one place (journal.h). */

#include <assert.h>
#include <stdio.h>

#include "log.h"
#include "store.h"

struct Txn {
        Store *store;
        Intent intent;
        bool started;   /* the entry is written */
        bool committed; /* the commit point is written */
        bool finishable; /* committed and the modified layers' records "after" are written */
        bool defer;
        void (*unlink_names)(void *userdata);
        void *unlink_userdata;
};

int txn_new(Store *s, const char *op, IntentCommit commit, const char *name, uint64_t generation, Txn **ret) {
        Txn *t;
        int r;

        t = calloc(1, sizeof(Txn));
        if (!t)
                return -ENOMEM;
        t->store = s;
        r = intent_init(&t->intent, op, commit, name, generation);
        if (r < 0) {
                txn_free(t);
                return r;
        }
        *ret = t;
        return 0;
}

Txn *txn_free(Txn *t) {
        if (!t)
                return NULL;
        intent_done(&t->intent);
        free(t);
        return NULL;
}

void txn_abortp(Txn **t) {
        if (!*t)
                return;
        (void) txn_abort(*t);
        *t = txn_free(*t);
}

int txn_add_new(Txn *t, const char *layer) {
        return intent_add_new(&t->intent, layer);
}

int txn_add_drop(Txn *t, const char *layer) {
        return intent_add_drop(&t->intent, layer);
}

int txn_add_modify(Txn *t, const Layer *before, const Layer *after) {
        return intent_add_modify(&t->intent, before, after);
}

int txn_add_unlink(Txn *t, const char *path, uint64_t dev, uint64_t inode, mode_t mode) {
        return intent_add_unlink(&t->intent, path, dev, inode, mode);
}

int txn_set_commit_chain(Txn *t, const char *disk, char **chain, size_t n) {
        return intent_set_commit_chain(&t->intent, disk, chain, n);
}

void txn_set_unlink_func(Txn *t, void (*unlink_names)(void *userdata), void *userdata) {
        t->unlink_names = unlink_names;
        t->unlink_userdata = userdata;
}

void txn_defer_finish(Txn *t) {
        t->defer = true;
}

const Intent *txn_intent(const Txn *t) {
        return &t->intent;
}

bool txn_started(const Txn *t) {
        return t && t->started;
}

bool txn_committed(const Txn *t) {
        return t && t->committed;
}

void txn_crash_point(const Txn *t, const char *point) {
        char name[128];

        snprintf(name, sizeof(name), "%s:%s", t->intent.op, point);
        crash_point(name);
}

int txn_undo_create(Txn *t, const char *layer, bool data) {
        return journal_undo_create(t->store, &t->intent, layer, data);
}

int txn_start(Txn *t) {
        int r;

        assert(!t->started);
        r = journal_begin(t->store, &t->intent);
        if (r < 0)
                return r;
        t->started = true;
        txn_crash_point(t, "after-journal");
        return 0;
}

int txn_begin(Store *s, const char *op, IntentCommit commit, const char *name, uint64_t generation,
              const char *new_layer, const char *drop_layer, Txn **ret) {
        Txn *t = NULL;
        int r;

        r = txn_new(s, op, commit, name, generation, &t);
        if (r >= 0 && new_layer)
                r = txn_add_new(t, new_layer);
        if (r >= 0 && drop_layer)
                r = txn_add_drop(t, drop_layer);
        if (r >= 0)
                r = txn_start(t);
        if (r < 0) {
                txn_free(t);
                return r;
        }
        *ret = t;
        return 0;
}

int txn_commit(Txn *t, TxnCommitFunc commit, void *userdata) {
        int r;

        assert(t->started && !t->committed);
        txn_crash_point(t, "before-commit");
        r = commit(t->store, userdata);
        if (r < 0)
                return r;
        t->committed = true;
        if (!intent_committed(t->store, &t->intent))
                /* What recovery would decide must be what happened: a bug if not. */
                log_error("Operation %s %s wrote its commit point but its intent does not say so", t->intent.op,
                          t->intent.id);
        txn_crash_point(t, "after-commit");

        r = journal_finish_modified(t->store, &t->intent);
        if (r < 0) {
                log_warning_errno(r, "Cannot finish the records of %s; the next start does", t->intent.op);
                return 0;
        }
        t->finishable = true;
        if (!t->defer)
                txn_finish(t);
        return 0;
}

void txn_finish(Txn *t) {
        if (!t->finishable)
                return;
        journal_complete(t->store, &t->intent, true, t->unlink_names, t->unlink_userdata);
        (void) journal_end(t->store, &t->intent);
        t->finishable = false;
}

int txn_abort(Txn *t) {
        int r;

        if (!t->started || t->committed)
                return 0;
        r = journal_abort(t->store, &t->intent);
        if (r < 0)
                return r;
        t->started = false;
        return 0;
}

int txn_write_vm(Store *s, void *vm) {
        return store_put_vm(s, vm);
}

int txn_write_layer_ready(Store *s, void *layer) {
        Layer *l = layer;

        l->state = LAYER_READY;
        return store_save_layer(s, l);
}

int txn_write_vm_deleted(Store *s, void *name) {
        return store_delete_vm(s, name);
}

int txn_write_layer_deleted(Store *s, void *id) {
        return store_delete_layer(s, id);
}
