/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Recovery at store_open(): interrupted operations before and after their commit point (a store freed
 * without ending its transaction is what a crash leaves), orphans of every kind, and a corrupt journal
 * entry, which stops the start without changing anything. */

#include "test-store-util.h"
#include "undo.h"

static Store *reopen(Store *s, const char *path) {
        Store *n = NULL;

        store_free(s);
        CHECK_EQ_INT(store_open(path, &n), 0);
        return n;
}

static void put_file(int dir_fd, const char *name, const char *text) {
        int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        CHECK_EQ_INT(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);
}

/* A snapshot interrupted before its commit point: the new layer (record and file) goes, the VM stays. */
static void test_before_commit(void) {
        char path[128];
        Store *s = store_fresh("before", path);
        Layer *base = layer_make(s, NULL, "base", 'b'), *n;
        const char *chain[] = { base->id };
        char new_id[LAYER_ID_LEN + 1], base_id[LAYER_ID_LEN + 1], *new_file;
        Txn *t = NULL;

        memcpy(base_id, base->id, sizeof(base_id));
        vm_make(s, "vm1", chain, 1);
        CHECK_EQ_INT(txn_new(s, "snapshot", INTENT_COMMIT_VM, "vm1", 2, &t), 0);
        n = layer_make(s, "vm1", NULL, 'n'); /* record ready and file: everything but the commit */
        memcpy(new_id, n->id, sizeof(new_id));
        new_file = strdup(n->file);
        CHECK_EQ_INT(txn_add_new(t, new_id), 0);
        CHECK_EQ_INT(txn_start(t), 0);
        t = txn_free(t); /* the crash */

        s = reopen(s, path);
        CHECK(!store_find_layer(s, new_id));
        CHECK(!layer_record_exists(s, new_id));
        CHECK(!file_exists_at(s->images_fd, new_file));
        CHECK(store_find_layer(s, base_id) != NULL);
        CHECK_EQ_INT(store_find_vm(s, "vm1")->generation, 1);
        CHECK_EQ_INT(store_find_vm(s, "vm1")->disks[0].n_chain, 1);
        CHECK_EQ_INT(journal_entries(s), 0);
        free(new_file);
        store_free(s);
}

/* A delete-disk interrupted after its commit point: the dropped private layers go, the new record stays. */
static void test_after_commit(void) {
        char path[128];
        Store *s = store_fresh("after", path);
        Layer *base = layer_make(s, NULL, "base", 'b'), *top = layer_make(s, "vm1", NULL, 't');
        const char *chain[] = { top->id, base->id };
        char top_id[LAYER_ID_LEN + 1], base_id[LAYER_ID_LEN + 1], *top_file = strdup(top->file);
        Vm *v = vm_make(s, "vm1", chain, 2), *next = NULL;
        Txn *t = NULL;

        memcpy(top_id, top->id, sizeof(top_id));
        memcpy(base_id, base->id, sizeof(base_id));
        CHECK_EQ_INT(vm_copy(v, &next), 0);
        disk_done(&next->disks[0]);
        next->n_disks = 0;
        next->generation = 2;
        CHECK_EQ_INT(txn_begin(s, "delete-disk", INTENT_COMMIT_VM, "vm1", 2, NULL, top_id, &t), 0);
        CHECK_EQ_INT(store_put_vm(s, next), 0); /* the commit point, and then the crash */
        t = txn_free(t);
        CHECK(layer_record_exists(s, top_id));

        s = reopen(s, path);
        CHECK(!store_find_layer(s, top_id));
        CHECK(!layer_record_exists(s, top_id));
        CHECK(!file_exists_at(s->images_fd, top_file));
        CHECK(store_find_layer(s, base_id) != NULL); /* a catalog image: no disk needs it, it stays */
        CHECK_EQ_INT(store_find_vm(s, "vm1")->generation, 2);
        CHECK_EQ_INT(store_find_vm(s, "vm1")->n_disks, 0);
        CHECK_EQ_INT(journal_entries(s), 0);
        free(top_file);
        store_free(s);
}

/* A layer changed in place (rebase): before the commit its bytes and record come back from the undo log;
 * after it the record "after" is written and the file is left as the operation made it. */
static void test_modify(bool committed) {
        char path[128], undo[128];
        Store *s = store_fresh(committed ? "modify-after" : "modify-before", path);
        Layer *base = layer_make(s, NULL, "base", 'b'), *top = layer_make(s, "vm1", NULL, 't'), *after = NULL;
        const char *chain[] = { top->id, base->id }, *new_chain[] = { top->id };
        char top_id[LAYER_ID_LEN + 1];
        uint8_t buf[TEST_FILE_SIZE];
        Vm *v = vm_make(s, "vm1", chain, 2);
        FormatError err = {};
        Txn *t = NULL;
        UndoLog u;
        int fd, log_fd;

        memcpy(top_id, top->id, sizeof(top_id));
        top->backing = strdup(base->id);
        top->backing_format = IMAGE_FORMAT_RAW;
        CHECK_EQ_INT(store_save_layer(s, top), 0);
        CHECK_EQ_INT(layer_copy(top, &after), 0);
        free(after->backing);
        after->backing = NULL;
        after->generation = 5;
        CHECK_EQ_INT(txn_new(s, "rebase", INTENT_COMMIT_CHAIN, "vm1", 0, &t), 0);
        CHECK_EQ_INT(txn_set_commit_chain(t, "vda", (char **) new_chain, 1), 0);
        CHECK_EQ_INT(txn_add_modify(t, top, after), 0);
        CHECK_EQ_INT(txn_start(t), 0);
        top->state = LAYER_MODIFYING;
        CHECK_EQ_INT(store_save_layer(s, top), 0);
        log_fd = txn_undo_create(t, top_id, false);
        fd = store_open_layer(s, top, O_RDWR);
        CHECK(log_fd >= 0 && fd >= 0);
        CHECK_EQ_INT(undo_begin(&u, log_fd, fd, &err), 0);
        CHECK_EQ_INT(undo_save(&u, 0, sizeof(buf), &err), 0);
        CHECK_EQ_INT(undo_sync(&u, &err), 0);
        memset(buf, 'Z', sizeof(buf));
        CHECK_EQ_INT(pwrite(fd, buf, sizeof(buf), 0), (ssize_t) sizeof(buf));
        close(fd);
        close(log_fd);
        snprintf(undo, sizeof(undo), "%s-%s.undo", txn_intent(t)->id, top_id);
        if (committed)
                CHECK_EQ_INT(store_put_vm(s, vm_with_chain(v, new_chain, 1)), 0);
        t = txn_free(t);

        s = reopen(s, path);
        top = store_find_layer(s, top_id);
        CHECK(top != NULL);
        if (top) {
                CHECK_EQ_INT(top->state, LAYER_READY);
                CHECK_EQ_INT(top->generation, committed ? 5 : 1);
                CHECK_EQ_INT(top->backing == NULL, committed);
                CHECK_EQ_INT(layer_byte(s, top->file), committed ? 'Z' : 't');
        }
        CHECK_EQ_INT(store_find_vm(s, "vm1")->disks[0].n_chain, committed ? 1 : 2);
        CHECK(!file_exists_at(s->journal_fd, undo));
        CHECK_EQ_INT(journal_entries(s), 0);
        layer_free(after);
        store_free(s);
}

/* Orphans: files no record names, temporaries, records no operation finished, private layers no disk
 * uses, undo logs of no entry, a layer left "modifying" without an entry. Catalog images stay. */
static void test_orphans(void) {
        char path[128], stray_undo[128];
        Store *s = store_fresh("orphans", path);
        Layer *img = layer_make(s, NULL, "img", 'i'), *used = layer_make(s, "vm1", NULL, 'u');
        Layer *unused = layer_make(s, "vm1", NULL, 'x'), *creating = layer_make(s, NULL, "half", 'h');
        Layer *modifying = layer_make(s, NULL, "mod", 'm');
        const char *chain[] = { used->id };
        char ids[5][LAYER_ID_LEN + 1], files[5][64];

        vm_make(s, "vm1", chain, 1);
        creating->state = LAYER_CREATING;
        CHECK_EQ_INT(store_save_layer(s, creating), 0);
        modifying->state = LAYER_MODIFYING;
        CHECK_EQ_INT(store_save_layer(s, modifying), 0);
        {
                Layer *all[5] = { img, used, unused, creating, modifying };
                for (size_t k = 0; k < 5; k++) {
                        memcpy(ids[k], all[k]->id, LAYER_ID_LEN + 1);
                        snprintf(files[k], sizeof(files[k]), "%s", all[k]->file);
                }
        }
        put_file(s->images_fd, "99999999999999999999999999999999.qcow2", "no record");
        put_file(s->images_fd, ".#" "88888888888888888888888888888888.raw", "temporary");
        put_file(s->records_fd, ".#vm-vm1.json", "{ half written");
        snprintf(stray_undo, sizeof(stray_undo), "%s-%s.undo", "77777777777777777777777777777777", ids[0]);
        put_file(s->journal_fd, stray_undo, "log of no entry");

        s = reopen(s, path);
        CHECK(store_find_layer(s, ids[0]) && layer_byte(s, files[0]) == 'i'); /* catalog image */
        CHECK(store_find_layer(s, ids[1]) && layer_byte(s, files[1]) == 'u'); /* in a chain */
        CHECK(!store_find_layer(s, ids[2]) && !layer_record_exists(s, ids[2]) && !file_exists_at(s->images_fd, files[2]));
        CHECK(!store_find_layer(s, ids[3]) && !layer_record_exists(s, ids[3]) && !file_exists_at(s->images_fd, files[3]));
        CHECK(store_find_layer(s, ids[4]) && store_find_layer(s, ids[4])->state == LAYER_READY);
        CHECK(!file_exists_at(s->images_fd, "99999999999999999999999999999999.qcow2"));
        CHECK(!file_exists_at(s->images_fd, ".#88888888888888888888888888888888.raw"));
        CHECK(!file_exists_at(s->records_fd, ".#vm-vm1.json"));
        CHECK(!file_exists_at(s->journal_fd, stray_undo)); /* read after the replay read journal/ to its end */
        CHECK(file_exists_at(s->records_fd, "vm-vm1.json"));
        CHECK_EQ_INT(s->n_layers, 3);
        store_free(s);

        /* A second start finds nothing more to do: the tree stays byte for byte. */
        {
                char *a = fingerprint(path), *b;
                CHECK_EQ_INT(store_open(path, &s), 0);
                store_free(s);
                b = fingerprint(path);
                CHECK(streq(a, b));
                free(a), free(b);
        }
}

/* A journal entry that cannot be read stops the start; nothing in the store is changed, not even the
 * orphans. (Entries read before it in directory order are replayed: one entry per test here.) */
static void test_corrupt_entry(void) {
        static const char *const bad[] = {
                "{ not json",
                "{\"schema\":1,\"op\":\"x\",\"commit\":\"nope\",\"commit_name\":\"vm1\",\"commit_generation\":0,"
                "\"new_layers\":[],\"drop_layers\":[]}",
                "{\"schema\":1,\"op\":\"x\",\"commit\":\"vm\",\"commit_name\":\"vm1\",\"commit_generation\":0,"
                "\"new_layers\":[\"../../etc/passwd\"],\"drop_layers\":[]}",
                "{\"schema\":99,\"op\":\"x\"}",
        };
        static const int expect[] = { -EBADMSG, -EBADMSG, -EBADMSG, -EPROTONOSUPPORT };

        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
                char path[128], name[32];
                Store *s = NULL;
                char *before, *after;

                snprintf(name, sizeof(name), "corrupt-%zu", k);
                s = store_fresh(name, path);
                layer_make(s, "vm1", NULL, 'o'); /* an orphan the sweep would remove */
                layer_make(s, NULL, "img", 'c')->state = LAYER_CREATING;
                CHECK_EQ_INT(store_save_layer(s, s->layers[1]), 0); /* a half-made layer, too */
                put_file(s->journal_fd, "ffffffffffffffffffffffffffffffff.json", bad[k]);
                store_free(s);

                before = fingerprint(path);
                s = NULL;
                CHECK_EQ_INT(store_open(path, &s), expect[k]);
                CHECK(s == NULL);
                after = fingerprint(path);
                CHECK(streq(before, after));
                free(before), free(after);
        }
}

int main(void) {
        unsetenv("VDISKD_CRASH_AT");
        test_dir_make("test-recovery");

        test_before_commit();
        test_after_commit();
        test_modify(false);
        test_modify(true);
        test_orphans();
        test_corrupt_entry();

        test_dir_remove();
        TEST_MAIN_END();
}
