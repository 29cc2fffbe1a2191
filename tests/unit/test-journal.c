/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The intent journal: entries written and read back field by field, every commit kind, undo logs, and
 * transactions (commit with its clean-up, deferred clean-up, a failed commit, abort rolling back exactly). */

#include "test-store-util.h"
#include "undo.h"

static char *layer_json(const Layer *l) {
        struct json_object *o = layer_to_json(l);
        char *s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        return s;
}

static void read_entry(Store *s, const Intent *i, Intent *ret) {
        struct json_object *o = NULL;
        char name[64];

        snprintf(name, sizeof(name), "%s.json", i->id);
        CHECK_EQ_INT(record_read(s->journal_fd, name, &o), 0);
        CHECK_EQ_INT(intent_parse(o, ret), 0);
        json_object_put(o);
}

/* Every field written by journal_begin() comes back from intent_parse(), and journal_end() removes it. */
static void test_entry_roundtrip(void) {
        char path[128], canary[256];
        Store *s = store_fresh("roundtrip", path);
        Layer *a = layer_make(s, "vm1", NULL, 'a'), *after = NULL;
        Intent i = {}, back = {};
        char *chain[] = { a->id, (char *) "0123456789abcdef0123456789abcdef" };

        CHECK_EQ_INT(layer_copy(a, &after), 0);
        after->virtual_size *= 2;
        snprintf(canary, sizeof(canary), "%s/canary", test_dir);

        CHECK_EQ_INT(intent_init(&i, "rebase", INTENT_COMMIT_CHAIN, "vm1", 7), 0);
        CHECK_EQ_INT(intent_add_new(&i, "11111111111111111111111111111111"), 0);
        CHECK_EQ_INT(intent_add_drop(&i, "22222222222222222222222222222222"), 0);
        CHECK_EQ_INT(intent_add_drop(&i, "33333333333333333333333333333333"), 0);
        CHECK_EQ_INT(intent_add_unlink(&i, canary, 5, 77, 0640), 0);
        CHECK_EQ_INT(intent_add_unlink(&i, "/x/y", 6, 78, MODE_INVALID), 0);
        CHECK_EQ_INT(intent_set_commit_chain(&i, "vda", chain, 2), 0);
        CHECK_EQ_INT(intent_add_modify(&i, a, after), 0);
        CHECK_EQ_INT(intent_add_unlink(&i, "relative", 1, 1, 0600), -EINVAL);
        CHECK_EQ_INT(intent_add_unlink(&i, "/x", 1, 1, 010000), -EINVAL);
        CHECK_EQ_INT(intent_add_modify(&i, a, a) >= 0 && i.n_modify == 2, 1);
        i.n_modify--; /* (the second was only to check that it is accepted) */
        layer_free(i.modify[1].before);
        layer_free(i.modify[1].after);
        i.modify[1] = (IntentModify) {};

        CHECK_EQ_INT(journal_begin(s, &i), 0);
        CHECK_EQ_INT(journal_entries(s), 1);
        read_entry(s, &i, &back);
        CHECK(streq(back.op, "rebase"));
        CHECK_EQ_INT(back.commit, INTENT_COMMIT_CHAIN);
        CHECK(streq(back.commit_name, "vm1"));
        CHECK_EQ_INT(back.commit_generation, 7);
        CHECK_EQ_INT(back.n_new, 1);
        CHECK(back.n_new == 1 && streq(back.new_layers[0], "11111111111111111111111111111111"));
        CHECK_EQ_INT(back.n_drop, 2);
        CHECK(back.n_drop == 2 && streq(back.drop_layers[1], "33333333333333333333333333333333"));
        CHECK_EQ_INT(back.n_unlink, 2);
        if (back.n_unlink == 2) {
                CHECK(streq(back.unlink_after[0].path, canary));
                CHECK_EQ_INT(back.unlink_after[0].dev, 5);
                CHECK_EQ_INT(back.unlink_after[0].inode, 77);
                CHECK_EQ_INT(back.unlink_after[0].mode, 0640);
                CHECK_EQ_INT(back.unlink_after[1].mode, MODE_INVALID);
        }
        CHECK(back.commit_disk && streq(back.commit_disk, "vda"));
        CHECK_EQ_INT(back.n_commit_chain, 2);
        CHECK(back.n_commit_chain == 2 && streq(back.commit_chain[0], a->id));
        CHECK_EQ_INT(back.n_modify, 1);
        if (back.n_modify == 1) {
                char *x = layer_json(back.modify[0].before), *y = layer_json(a);
                char *p = layer_json(back.modify[0].after), *q = layer_json(after);
                CHECK(streq(back.modify[0].layer, a->id));
                CHECK(streq(x, y));
                CHECK(streq(p, q));
                free(x), free(y), free(p), free(q);
        }
        intent_done(&back);

        CHECK_EQ_INT(journal_end(s, &i), 0);
        CHECK_EQ_INT(journal_entries(s), 0);
        intent_done(&i);
        layer_free(after);
        store_free(s);
}

/* Each commit kind: written under its name, read back as itself, and judged by intent_committed() from the
 * records exactly as its comment in journal.h says. */
static void test_commit_kinds(void) {
        static const char *const names[_INTENT_COMMIT_MAX] = { "vm", "vm-deleted", "layer-ready", "layer-deleted", "chain" };
        char path[128];
        Store *s = store_fresh("kinds", path);
        Layer *base = layer_make(s, NULL, "base", 'b'), *top = layer_make(s, "vm1", NULL, 't');
        const char *chain[] = { top->id, base->id };
        Vm *v = vm_make(s, "vm1", chain, 2);

        for (int k = 0; k < _INTENT_COMMIT_MAX; k++) {
                Intent i = {}, back = {};
                const char *name = k == INTENT_COMMIT_LAYER_READY || k == INTENT_COMMIT_LAYER_DELETED ? top->id : "vm1";
                struct json_object *o = NULL;
                char file[64];

                CHECK(streq(intent_commit_to_string(k), names[k]));
                CHECK_EQ_INT(intent_init(&i, "t", k, name, 1), 0);
                if (k == INTENT_COMMIT_CHAIN)
                        CHECK_EQ_INT(intent_set_commit_chain(&i, "vda", (char **) chain, 2), 0);
                CHECK_EQ_INT(journal_begin(s, &i), 0);
                snprintf(file, sizeof(file), "%s.json", i.id);
                CHECK_EQ_INT(record_read(s->journal_fd, file, &o), 0);
                CHECK(streq(json_object_get_string(json_object_object_get(o, "commit")), names[k]));
                json_object_put(o);
                read_entry(s, &i, &back);
                CHECK_EQ_INT(back.commit, k);
                /* The store as it is: VM vm1 at generation 1 with chain [top, base], top ready. */
                CHECK_EQ_INT(intent_committed(s, &back),
                             k == INTENT_COMMIT_VM || k == INTENT_COMMIT_LAYER_READY || k == INTENT_COMMIT_CHAIN);
                intent_done(&back);
                CHECK_EQ_INT(journal_end(s, &i), 0);
                intent_done(&i);
        }

        {
                Intent i = {};
                const char *other[] = { top->id };

                CHECK_EQ_INT(intent_init(&i, "t", INTENT_COMMIT_VM, "vm1", 2), 0);
                CHECK(!intent_committed(s, &i)); /* generation 1 < 2 */
                v->generation = 2;
                CHECK(intent_committed(s, &i));
                intent_done(&i);
                CHECK_EQ_INT(intent_init(&i, "t", INTENT_COMMIT_CHAIN, "vm1", 0), 0);
                CHECK_EQ_INT(intent_set_commit_chain(&i, "vda", (char **) other, 1), 0);
                CHECK(!intent_committed(s, &i)); /* the chain is longer */
                intent_done(&i);
                CHECK_EQ_INT(intent_init(&i, "t", INTENT_COMMIT_LAYER_READY, top->id, 0), 0);
                top->state = LAYER_MODIFYING;
                CHECK(!intent_committed(s, &i));
                top->state = LAYER_READY;
                intent_done(&i);
        }
        {
                struct json_object *o = json_tokener_parse("{\"op\":\"x\",\"commit\":\"nope\",\"commit_name\":\"a\","
                                                           "\"commit_generation\":0,\"new_layers\":[],\"drop_layers\":[]}");
                Intent i = {};
                CHECK_EQ_INT(intent_parse(o, &i), -EBADMSG);
                json_object_put(o);
        }
        store_free(s);
}

/* Overwrites the first `len` bytes of a layer's file with `byte`, saving them in the transaction's undo log first. */
static void change_with_undo(Store *s, Txn *t, Layer *l, uint8_t byte, size_t len) {
        uint8_t buf[TEST_FILE_SIZE];
        FormatError err = {};
        UndoLog u;
        int log_fd, fd;

        log_fd = txn_undo_create(t, l->id, false);
        CHECK(log_fd >= 0);
        fd = store_open_layer(s, l, O_RDWR);
        CHECK(fd >= 0);
        CHECK_EQ_INT(undo_begin(&u, log_fd, fd, &err), 0);
        CHECK_EQ_INT(undo_save(&u, 0, len, &err), 0);
        CHECK_EQ_INT(undo_sync(&u, &err), 0);
        memset(buf, byte, len);
        CHECK_EQ_INT(pwrite(fd, buf, len, 0), (ssize_t) len);
        close(fd);
        close(log_fd);
}

static char *undo_name(const Txn *t, const Layer *l) {
        static char name[128];
        snprintf(name, sizeof(name), "%s-%s.undo", txn_intent(t)->id, l->id);
        return name;
}

/* Abort: the new layer's record and file go, the modified layer gets its bytes and record back, the undo
 * log and the entry go; everything else is byte for byte as before the transaction. */
static void test_abort_exact(void) {
        char path[128], store_path[128];
        Store *s = store_fresh("abort", store_path);
        Layer *base = layer_make(s, NULL, "base", 'b'), *top = layer_make(s, "vm1", NULL, 't'), *n, *after = NULL;
        char top_id[LAYER_ID_LEN + 1], base_id[LAYER_ID_LEN + 1];
        const char *chain[] = { top_id, base_id };
        Txn *t = NULL;
        char *before_fp, *after_fp, *new_file, *top_before;
        char new_id[LAYER_ID_LEN + 1];

        /* Copies: the roll-back replaces the in-memory records (top is freed). */
        memcpy(top_id, top->id, sizeof(top_id));
        memcpy(base_id, base->id, sizeof(base_id));

        vm_make(s, "vm1", chain, 2);
        snprintf(path, sizeof(path), "%s", store_path);
        before_fp = fingerprint(path);
        top_before = layer_json(top);

        CHECK_EQ_INT(layer_copy(top, &after), 0);
        after->generation = 9;
        CHECK_EQ_INT(txn_new(s, "t", INTENT_COMMIT_VM, "vm1", 2, &t), 0);
        CHECK_EQ_INT(txn_add_modify(t, top, after), 0);
        CHECK_EQ_INT(txn_add_drop(t, base->id), 0); /* declared, never reached: stays */
        n = layer_make(s, "vm1", NULL, 'n');          /* (made before the entry only to know its id) */
        memcpy(new_id, n->id, sizeof(new_id));
        new_file = strdup(n->file);
        CHECK_EQ_INT(txn_add_new(t, new_id), 0);
        CHECK_EQ_INT(txn_start(t), 0);
        CHECK(txn_started(t) && !txn_committed(t));
        CHECK_EQ_INT(journal_entries(s), 1);
        top->state = LAYER_MODIFYING;
        CHECK_EQ_INT(store_save_layer(s, top), 0);
        change_with_undo(s, t, top, 'X', 100);
        CHECK_EQ_INT(layer_byte(s, top->file), -2); /* changed in place */
        CHECK(file_exists_at(s->journal_fd, undo_name(t, top)));

        CHECK_EQ_INT(txn_abort(t), 0);
        CHECK(!txn_started(t));
        CHECK_EQ_INT(txn_abort(t), 0); /* twice: nothing more */
        CHECK(!store_find_layer(s, new_id));
        CHECK(!layer_record_exists(s, new_id));
        CHECK(!file_exists_at(s->images_fd, new_file));
        CHECK_EQ_INT(layer_byte(s, store_find_layer(s, top_id)->file), 't');
        CHECK_EQ_INT(store_find_layer(s, top_id)->state, LAYER_READY);
        CHECK(store_find_layer(s, base_id) != NULL);
        {
                char *now = layer_json(store_find_layer(s, top_id));
                CHECK(streq(now, top_before));
                free(now);
        }
        CHECK_EQ_INT(journal_entries(s), 0);
        after_fp = fingerprint(path);
        CHECK(streq(before_fp, after_fp));
        if (!streq(before_fp, after_fp))
                fprintf(stderr, "before:\n%safter:\n%s", before_fp, after_fp);

        txn_free(t);
        layer_free(after);
        free(before_fp), free(after_fp), free(new_file), free(top_before);
        store_free(s);
}

static int commit_fails(Store *s, void *userdata) {
        return -EIO;
}

/* Commit: the commit write, then the records "after", the drops, the undo logs and the entry go. A failed
 * commit write is returned and leaves the transaction to roll back (txn_abortp()). */
static void test_commit(void) {
        char store_path[128];
        Store *s = store_fresh("commit", store_path);
        Layer *base = layer_make(s, NULL, "base", 'b'), *mid = layer_make(s, "vm1", NULL, 'm');
        Layer *top = layer_make(s, "vm1", NULL, 't'), *after = NULL;
        char top_id[LAYER_ID_LEN + 1], base_id[LAYER_ID_LEN + 1], mid_id[LAYER_ID_LEN + 1];
        const char *chain[] = { top_id, mid_id, base_id }, *new_chain[] = { top_id, base_id };
        char *mid_file = strdup(mid->file), *undo;
        Vm *v, *next;
        Txn *t = NULL;

        /* Copies: the commit replaces the in-memory records (top is freed). */
        memcpy(mid_id, mid->id, sizeof(mid_id));
        memcpy(top_id, top->id, sizeof(top_id));
        memcpy(base_id, base->id, sizeof(base_id));
        v = vm_make(s, "vm1", chain, 3);

        /* A commit write that fails: nothing committed, the clean-up not done; abort rolls back. */
        {
                _cleanup_(txn_abortp) Txn *f = NULL;
                CHECK_EQ_INT(txn_begin(s, "t", INTENT_COMMIT_VM, "vm1", 2, NULL, mid_id, &f), 0);
                CHECK_EQ_INT(txn_commit(f, commit_fails, NULL), -EIO);
                CHECK(!txn_committed(f));
                CHECK(store_find_layer(s, mid_id) != NULL);
                CHECK_EQ_INT(journal_entries(s), 1);
        }
        CHECK_EQ_INT(journal_entries(s), 0);
        CHECK(store_find_layer(s, mid_id) != NULL);

        CHECK_EQ_INT(layer_copy(top, &after), 0);
        free(after->backing);
        after->backing = strdup(base->id);
        CHECK_EQ_INT(txn_new(s, "t", INTENT_COMMIT_CHAIN, "vm1", 0, &t), 0);
        CHECK_EQ_INT(txn_set_commit_chain(t, "vda", (char **) new_chain, 2), 0);
        CHECK_EQ_INT(txn_add_modify(t, top, after), 0);
        CHECK_EQ_INT(txn_add_drop(t, mid_id), 0);
        txn_defer_finish(t);
        CHECK_EQ_INT(txn_start(t), 0);
        top->state = LAYER_MODIFYING;
        CHECK_EQ_INT(store_save_layer(s, top), 0);
        change_with_undo(s, t, top, 'Y', TEST_FILE_SIZE);
        undo = strdup(undo_name(t, top));

        next = vm_with_chain(v, new_chain, 2);
        CHECK_EQ_INT(txn_commit(t, txn_write_vm, next), 0);
        CHECK(txn_committed(t));
        CHECK_EQ_INT(store_find_vm(s, "vm1")->generation, 2);
        CHECK(streq_ptr(store_find_layer(s, top_id)->backing, base_id)); /* the record "after" */
        CHECK_EQ_INT(store_find_layer(s, new_chain[0])->state, LAYER_READY);
        CHECK(!file_exists_at(s->journal_fd, undo));
        CHECK_EQ_INT(layer_byte(s, store_find_layer(s, new_chain[0])->file), 'Y'); /* not rolled back */
        /* Deferred: the dropped layer and the entry wait for txn_finish(). */
        CHECK(store_find_layer(s, mid_id) != NULL);
        CHECK_EQ_INT(journal_entries(s), 1);
        CHECK_EQ_INT(txn_abort(t), 0); /* committed: no roll-back */
        CHECK_EQ_INT(layer_byte(s, store_find_layer(s, new_chain[0])->file), 'Y');
        txn_finish(t);
        CHECK(!store_find_layer(s, mid_id));
        CHECK(!layer_record_exists(s, mid_id));
        CHECK(!file_exists_at(s->images_fd, mid_file));
        CHECK_EQ_INT(journal_entries(s), 0);
        txn_free(t);
        layer_free(after);
        free(mid_file), free(undo);

        /* Not deferred, with the default commit writes of the other kinds. */
        {
                Layer *img = layer_make(s, NULL, "img", 'i');
                char id[LAYER_ID_LEN + 1];

                memcpy(id, img->id, sizeof(id));
                CHECK_EQ_INT(txn_begin(s, "t", INTENT_COMMIT_LAYER_DELETED, id, 0, NULL, id, &t), 0);
                CHECK_EQ_INT(txn_commit(t, txn_write_layer_deleted, id), 0);
                CHECK(!store_find_layer(s, id) && !layer_record_exists(s, id));
                CHECK_EQ_INT(journal_entries(s), 0);
                t = txn_free(t);

                CHECK_EQ_INT(txn_begin(s, "t", INTENT_COMMIT_VM_DELETED, "vm1", 0, NULL, NULL, &t), 0);
                CHECK_EQ_INT(txn_commit(t, txn_write_vm_deleted, (void *) "vm1"), 0);
                CHECK(!store_find_vm(s, "vm1") && !file_exists_at(s->records_fd, "vm-vm1.json"));
                CHECK_EQ_INT(journal_entries(s), 0);
                t = txn_free(t);
        }
        store_free(s);
}

/* The old names of moved files: removed after the commit if still the same inode, left otherwise. */
static void test_unlink_names(void) {
        char store_path[128], same[256], other[256];
        Store *s = store_fresh("unlink", store_path);
        Txn *t = NULL;
        struct stat st_same, st_other;
        int fd;

        snprintf(same, sizeof(same), "%s/moved.img", test_dir);
        snprintf(other, sizeof(other), "%s/replaced.img", test_dir);
        fd = open(same, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        CHECK(fd >= 0 && fstat(fd, &st_same) == 0);
        close(fd);
        fd = open(other, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        CHECK(fd >= 0 && fstat(fd, &st_other) == 0);
        close(fd);

        vm_make(s, "vm1", NULL, 0);
        CHECK_EQ_INT(txn_new(s, "adopt", INTENT_COMMIT_VM, "vm1", 2, &t), 0);
        CHECK_EQ_INT(txn_add_unlink(t, same, (uint64_t) st_same.st_dev, (uint64_t) st_same.st_ino, 0600), 0);
        CHECK_EQ_INT(txn_add_unlink(t, other, (uint64_t) st_other.st_dev, (uint64_t) st_other.st_ino + 1, 0600), 0);
        CHECK_EQ_INT(txn_start(t), 0);
        {
                Vm *next = NULL;
                CHECK_EQ_INT(vm_copy(store_find_vm(s, "vm1"), &next), 0);
                next->generation = 2;
                CHECK_EQ_INT(txn_commit(t, txn_write_vm, next), 0);
        }
        CHECK_EQ_INT(access(same, F_OK), -1);
        CHECK_EQ_INT(access(other, F_OK), 0);
        CHECK_EQ_INT(journal_entries(s), 0);
        txn_free(t);
        store_free(s);
}

int main(void) {
        unsetenv("VDISKD_CRASH_AT");
        test_dir_make("test-journal");

        test_entry_roundtrip();
        test_commit_kinds();
        test_abort_exact();
        test_commit();
        test_unlink_names();

        test_dir_remove();
        TEST_MAIN_END();
}
