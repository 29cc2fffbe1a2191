/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The per-VM write-ahead log (daemon/store/wal.c, docs/design.md "Commit protocol"). A child process
 * that runs the operation and exits without freeing its store is a crash (store_free() checkpoints);
 * removing or tearing what was not synced before reopening is what a power loss may leave on top. */

#include <sys/wait.h>

#include "test-store-util.h"

typedef struct Op {
        Layer *layer;
        Vm *next;
        uint8_t byte;
        bool write_after;   /* then open the new layer writable and write 'z' into it */
        uint64_t generation; /* then write the VM record with this generation, if not 0 */
} Op;

/* Runs the snapshot (and what follows it) in a child that then dies: the parent's store is stale
 * afterwards, and the caller frees it and reopens the directory. */
static void crash_after(Store *s, Op *op) {
        pid_t pid = fork();
        int status = 0;

        CHECK(pid >= 0);
        if (pid == 0) {
                int ok = wal_new_layer(s, "snapshot", op->layer, fill_byte, &op->byte, op->next) == 0 && wal_pending(s);
                if (ok && op->write_after) {
                        uint8_t buf[TEST_FILE_SIZE];
                        int fd = store_open_layer(s, op->layer, O_RDWR);
                        memset(buf, 'z', sizeof(buf));
                        ok = fd >= 0 && !wal_pending(s) && pwrite(fd, buf, sizeof(buf), 0) == (ssize_t) sizeof(buf);
                }
                if (ok && op->generation) {
                        Vm *later = NULL;
                        ok = vm_copy(op->next, &later) >= 0;
                        if (ok) {
                                later->generation = op->generation;
                                ok = store_put_vm(s, later) >= 0 && !wal_pending(s);
                        }
                }
                _exit(ok ? 0 : 1);
        }
        CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        layer_free(op->layer); /* the child's store took them, the parent's did not */
        vm_free(op->next);
}

static Store *reopen(Store *s, const char *path) {
        Store *n = NULL;

        store_free(s);
        CHECK_EQ_INT(store_open(path, &n), 0);
        return n;
}

static char *read_text(int dir_fd, const char *name) {
        char buf[65536];
        int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
        ssize_t n;

        CHECK(fd >= 0);
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        CHECK(n >= 0);
        buf[n < 0 ? 0 : n] = 0;
        return strdup(buf);
}

static void put_text(int dir_fd, const char *name, const char *text) {
        int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        CHECK(fd >= 0);
        CHECK_EQ_INT(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        close(fd);
}

static uint64_t inode_at(int dir_fd, const char *name) {
        struct stat st;

        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return 0;
        return (uint64_t) st.st_ino;
}

static int fill_fail(int fd, void *userdata) {
        uint8_t b = 'x';
        CHECK_EQ_INT(pwrite(fd, &b, 1, 0), 1);
        return -ENOSPC;
}

/* A store with catalog image "base" and VM vm1 (disk vda = [base]); `new_id` and `new_file`: a new private
 * raw layer of bytes 'n', not in the store yet, and vm1's next record with it on top. */
static Store *setup(const char *name, char path[static 128], Layer **ret_new, Vm **ret_next) {
        Store *s = store_fresh(name, path);
        Layer *base = layer_make(s, NULL, "base", 'b'), *n = calloc(1, sizeof(Layer));
        const char *chain[] = { base->id };
        char file[LAYER_ID_LEN + 8];
        const char *next_chain[2];
        Vm *v = vm_make(s, "vm1", chain, 1);

        CHECK(n != NULL);
        CHECK_EQ_INT(layer_id_new(n->id), 0);
        snprintf(file, sizeof(file), "%s.raw", n->id);
        n->file = strdup(file);
        n->vm = strdup("vm1");
        n->format = IMAGE_FORMAT_RAW;
        n->virtual_size = TEST_FILE_SIZE;
        n->state = LAYER_CREATING;
        n->generation = 1;
        next_chain[0] = n->id;
        next_chain[1] = base->id;
        *ret_next = vm_with_chain(v, next_chain, 2);
        *ret_new = n;
        return s;
}

static char images_path[160], records_path[160];

static void dirs_of(const char *path, int *ifd, int *rfd) {
        snprintf(images_path, sizeof(images_path), "%s/images", path);
        snprintf(records_path, sizeof(records_path), "%s/records", path);
        *ifd = open(images_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        *rfd = open(records_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        CHECK(*ifd >= 0 && *rfd >= 0);
}

/* The commit, then a crash and a power loss that takes everything unsynced: the file, the layer record,
 * the VM record's bytes. The start redoes the entry: the new state, exactly once. */
static void test_power_loss_after_commit(void) {
        char path[128], id[LAYER_ID_LEN + 1], file[LAYER_ID_LEN + 8], rec[64];
        Op op = { .byte = 'n' };
        Store *s = setup("after", path, &op.layer, &op.next);
        uint64_t ino;
        int ifd, rfd;

        memcpy(id, op.layer->id, sizeof(id));
        snprintf(file, sizeof(file), "%s", op.layer->file);
        snprintf(rec, sizeof(rec), "layer-%s.json", id);
        crash_after(s, &op);
        store_free(s);

        dirs_of(path, &ifd, &rfd);
        CHECK(file_exists_at(ifd, file)); /* what the child applied */
        CHECK_EQ_INT(unlinkat(ifd, file, 0), 0);
        CHECK_EQ_INT(unlinkat(rfd, rec, 0), 0);
        put_text(rfd, "vm-vm1.json", ""); /* renamed, its bytes lost */
        close(ifd);
        close(rfd);

        CHECK_EQ_INT(store_open(path, &s), 0);
        CHECK(!wal_pending(s));
        CHECK_EQ_INT(journal_entries(s), 0); /* no intent: the log entry was the whole commit */
        CHECK(store_find_layer(s, id) != NULL);
        CHECK_EQ_INT(store_find_layer(s, id)->state, LAYER_READY);
        CHECK_EQ_INT(store_find_vm(s, "vm1")->generation, 2);
        CHECK_EQ_INT(store_find_vm(s, "vm1")->disks[0].n_chain, 2);
        CHECK(streq(store_find_vm(s, "vm1")->disks[0].chain[0], id));
        CHECK_EQ_INT(layer_byte(s, file), 'n');
        ino = inode_at(s->images_fd, file);
        CHECK_EQ_INT(store_find_layer(s, id)->inode, ino);
        {
                int fd = store_open_layer(s, store_find_layer(s, id), O_RDONLY);
                CHECK(fd >= 0);
                close(fd);
        }

        s = reopen(s, path); /* redone once: the file is the same inode */
        CHECK_EQ_INT(inode_at(s->images_fd, file), ino);
        CHECK_EQ_INT(store_find_vm(s, "vm1")->disks[0].n_chain, 2);
        store_free(s);
}

/* Reading a logged layer needs no checkpoint; a writable open makes one first, so what is written into
 * the file afterwards is never overwritten by a redo after a crash. */
static void test_checkpoint_before_write(void) {
        char path[128], id[LAYER_ID_LEN + 1], file[LAYER_ID_LEN + 8];
        Op op = { .byte = 'n', .write_after = true };
        Store *s = setup("write", path, &op.layer, &op.next);
        Layer *copy = NULL;
        Vm *next_copy = NULL;
        int fd;

        memcpy(id, op.layer->id, sizeof(id));
        snprintf(file, sizeof(file), "%s", op.layer->file);
        CHECK_EQ_INT(layer_copy(op.layer, &copy), 0);
        CHECK_EQ_INT(vm_copy(op.next, &next_copy), 0);
        crash_after(s, &op);

        s = reopen(s, path);
        CHECK_EQ_INT(layer_byte(s, file), 'z');
        CHECK_EQ_INT(store_find_vm(s, "vm1")->disks[0].n_chain, 2);
        store_free(s);

        /* In one process: a read-only open leaves the entry pending. */
        s = setup("read", path, &op.layer, &op.next);
        layer_free(copy);
        vm_free(next_copy);
        memcpy(id, op.layer->id, sizeof(id));
        CHECK_EQ_INT(wal_new_layer(s, "snapshot", op.layer, fill_byte, &op.byte, op.next), 0);
        fd = store_open_layer(s, store_find_layer(s, id), O_RDONLY);
        CHECK(fd >= 0);
        close(fd);
        CHECK(wal_pending(s));
        fd = store_open_layer(s, store_find_layer(s, id), O_RDWR);
        CHECK(fd >= 0);
        close(fd);
        CHECK(!wal_pending(s));
        store_free(s);
}

/* Any other durable change checkpoints first: a later record of the same VM is not undone by a redo of
 * the older entry after a crash. */
static void test_checkpoint_before_record(void) {
        char path[128], id[LAYER_ID_LEN + 1];
        Op op = { .byte = 'n', .generation = 7 };
        Store *s = setup("record", path, &op.layer, &op.next);

        memcpy(id, op.layer->id, sizeof(id));
        crash_after(s, &op);

        s = reopen(s, path);
        CHECK_EQ_INT(store_find_vm(s, "vm1")->generation, 7);
        CHECK(store_find_layer(s, id) != NULL);
        store_free(s);
}

/* A clean stop checkpoints: a file changed by path afterwards (the tests' qemu-io) is not redone. */
static void test_clean_stop(void) {
        char path[128], id[LAYER_ID_LEN + 1], file[LAYER_ID_LEN + 8];
        uint8_t byte = 'n', buf[TEST_FILE_SIZE];
        Layer *n;
        Vm *next;
        Store *s = setup("stop", path, &n, &next);
        int ifd, rfd, fd;

        memcpy(id, n->id, sizeof(id));
        snprintf(file, sizeof(file), "%s", n->file);
        CHECK_EQ_INT(wal_new_layer(s, "snapshot", n, fill_byte, &byte, next), 0);
        CHECK(wal_pending(s));
        store_free(s);
        dirs_of(path, &ifd, &rfd);
        fd = openat(ifd, file, O_WRONLY | O_CLOEXEC);
        CHECK(fd >= 0);
        memset(buf, 'q', sizeof(buf));
        CHECK_EQ_INT(pwrite(fd, buf, sizeof(buf), 0), (ssize_t) sizeof(buf));
        close(fd);
        close(ifd);
        close(rfd);
        CHECK_EQ_INT(store_open(path, &s), 0);
        CHECK_EQ_INT(layer_byte(s, file), 'q');
        store_free(s);
}

/* A redo after a crash restores in place what a power loss can take from a file found under its name
 * (blocks never written back read as zeros; a size never written) and overwrites nothing else: bytes
 * written into the file after the commit stay. */
static void test_redo_in_place(void) {
        static const struct {
                const char *what;
                off_t zero_from, zero_len, truncate_to; /* truncate_to < 0: keep the size */
                char write_byte;                         /* 0: none */
                int want;
        } cases[] = {
                { "a lost page", 4096, 4096, -1, 0, 'n' },
                { "a lost size", 0, 0, 0, 0, 'n' },
                { "a later write", 0, 0, -1, 'q', 'q' },
        };

        for (size_t c = 0; c < ELEMENTSOF(cases); c++) {
                char path[128], name[32], file[LAYER_ID_LEN + 8], id[LAYER_ID_LEN + 1];
                Op op = { .byte = 'n' };
                Store *s;
                uint8_t buf[TEST_FILE_SIZE];
                uint64_t ino;
                int ifd, rfd, fd;

                snprintf(name, sizeof(name), "inplace%zu", c);
                s = setup(name, path, &op.layer, &op.next);
                memcpy(id, op.layer->id, sizeof(id));
                snprintf(file, sizeof(file), "%s", op.layer->file);
                crash_after(s, &op);
                store_free(s);

                dirs_of(path, &ifd, &rfd);
                ino = inode_at(ifd, file);
                fd = openat(ifd, file, O_WRONLY | O_CLOEXEC);
                CHECK(fd >= 0);
                if (cases[c].zero_len > 0) {
                        memset(buf, 0, sizeof(buf));
                        CHECK_EQ_INT(pwrite(fd, buf, (size_t) cases[c].zero_len, cases[c].zero_from), cases[c].zero_len);
                }
                if (cases[c].truncate_to >= 0)
                        CHECK_EQ_INT(ftruncate(fd, cases[c].truncate_to), 0);
                if (cases[c].write_byte) {
                        memset(buf, cases[c].write_byte, sizeof(buf));
                        CHECK_EQ_INT(pwrite(fd, buf, sizeof(buf), 0), (ssize_t) sizeof(buf));
                }
                close(fd);
                close(ifd);
                close(rfd);

                CHECK_EQ_INT(store_open(path, &s), 0);
                if (layer_byte(s, file) != cases[c].want)
                        fprintf(stderr, "redo in place, %s:\n", cases[c].what);
                CHECK_EQ_INT(layer_byte(s, file), cases[c].want);
                CHECK_EQ_INT(inode_at(s->images_fd, file), ino); /* in place */
                CHECK_EQ_INT(store_find_layer(s, id)->inode, ino);
                CHECK_EQ_INT(store_find_vm(s, "vm1")->disks[0].n_chain, 2);
                store_free(s);
        }
}

/* A power loss while the entry was written: torn, so the chain ends before it; everything applied after
 * it is gone too (it was never synced). The old state, and no error. */
static void test_torn_entry(void) {
        char path[128], id[LAYER_ID_LEN + 1], file[LAYER_ID_LEN + 8], rec[64], logs[160];
        Op op = { .byte = 'n' };
        Store *s = setup("torn", path, &op.layer, &op.next);
        char *old_vm = read_text(s->records_fd, "vm-vm1.json");
        uint8_t flip;
        int fd, ifd, rfd;

        memcpy(id, op.layer->id, sizeof(id));
        snprintf(file, sizeof(file), "%s", op.layer->file);
        snprintf(rec, sizeof(rec), "layer-%s.json", id);
        crash_after(s, &op);
        store_free(s);
        dirs_of(path, &ifd, &rfd);
        CHECK_EQ_INT(unlinkat(ifd, file, 0), 0);
        CHECK_EQ_INT(unlinkat(rfd, rec, 0), 0);
        put_text(rfd, "vm-vm1.json", old_vm);
        close(ifd);
        close(rfd);
        snprintf(logs, sizeof(logs), "%s/log/vm-vm1.log", path);
        fd = open(logs, O_RDWR | O_CLOEXEC);
        CHECK(fd >= 0);
        CHECK_EQ_INT(pread(fd, &flip, 1, 100), 1);
        flip ^= 0x20;
        CHECK_EQ_INT(pwrite(fd, &flip, 1, 100), 1);
        close(fd);

        CHECK_EQ_INT(store_open(path, &s), 0);
        CHECK(!store_find_layer(s, id));
        CHECK(!layer_record_exists(s, id));
        CHECK(!file_exists_at(s->images_fd, file));
        CHECK_EQ_INT(store_find_vm(s, "vm1")->generation, 1);
        CHECK_EQ_INT(store_find_vm(s, "vm1")->disks[0].n_chain, 1);
        free(old_vm);
        store_free(s);
}

/* A failure before the commit changes nothing: the caller keeps both, the store is byte for byte as
 * before (the log included). */
static void test_prepare_failure(void) {
        char path[128], root[160];
        uint8_t byte = 'n';
        Layer *n, *n2;
        Vm *next, *next2;
        Store *s = setup("fail", path, &n, &next);
        char *before, *after;

        n2 = NULL;

        CHECK_EQ_INT(wal_new_layer(s, "snapshot", n, fill_byte, &byte, next), 0); /* the log exists */
        CHECK_EQ_INT(wal_checkpoint(s), 0);
        CHECK_EQ_INT(layer_copy(n, &n2), 0);
        CHECK_EQ_INT(layer_id_new(n2->id), 0);
        free(n2->file);
        n2->file = malloc(LAYER_ID_LEN + 8);
        snprintf(n2->file, LAYER_ID_LEN + 8, "%s.raw", n2->id);
        n2->state = LAYER_CREATING;
        n2->inode = 0;
        CHECK_EQ_INT(vm_copy(store_find_vm(s, "vm1"), &next2), 0);
        next2->generation++;

        snprintf(root, sizeof(root), "%s", path);
        before = fingerprint(root);
        CHECK_EQ_INT(wal_new_layer(s, "snapshot", n2, fill_fail, NULL, next2), -ENOSPC);
        after = fingerprint(root);
        CHECK(streq(before, after));
        CHECK(!store_find_layer(s, n2->id));
        CHECK_EQ_INT(store_find_vm(s, "vm1")->generation, 2);
        layer_free(n2);
        vm_free(next2);
        free(before);
        free(after);
        store_free(s);
}

int main(void) {
        unsetenv("VDISKD_CRASH_AT");
        test_dir_make("test-wal");

        test_power_loss_after_commit();
        test_checkpoint_before_write();
        test_checkpoint_before_record();
        test_clean_stop();
        test_redo_in_place();
        test_torn_entry();
        test_prepare_failure();

        test_dir_remove();
        TEST_MAIN_END();
}
