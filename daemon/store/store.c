/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <fcntl.h>
#include <search.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "undo.h"

#define IMAGES_DIR "images"
#define RECORDS_DIR "records"
#define JOURNAL_DIR "journal"
#define TMP_PREFIX ".#"

Store *store_free(Store *s) {
        if (!s)
                return NULL;
        for (size_t i = 0; i < s->n_layers; i++)
                layer_free(s->layers[i]);
        free(s->layers);
        free(s->layer_index);
        for (size_t i = 0; i < s->n_vms; i++)
                vm_free(s->vms[i]);
        free(s->vms);
        safe_close(s->dir_fd);
        safe_close(s->images_fd);
        safe_close(s->records_fd);
        safe_close(s->journal_fd);
        free(s->path);
        free(s);
        return NULL;
}

static void store_freep(Store **s) {
        store_free(*s);
}

static size_t layer_id_hash(const char *id) {
        uint64_t h = UINT64_C(14695981039346656037);
        for (; *id; id++)
                h = (h ^ (uint8_t) *id) * UINT64_C(1099511628211);
        return (size_t) h;
}

/* Call whenever s->layers gains, loses or replaces an entry. */
static void layers_changed(Store *s) {
        s->layer_index_stale = true;
}

static int layer_index_rebuild(Store *s) {
        size_t size = 16;
        Layer **index;

        while (size < 2 * s->n_layers)
                size *= 2;
        index = calloc(size, sizeof(Layer *));
        if (!index)
                return -ENOMEM;
        for (size_t i = 0; i < s->n_layers; i++) {
                size_t k = layer_id_hash(s->layers[i]->id) & (size - 1);
                while (index[k])
                        k = (k + 1) & (size - 1);
                index[k] = s->layers[i];
        }
        free(s->layer_index);
        s->layer_index = index;
        s->layer_index_size = size;
        s->layer_index_stale = false;
        return 0;
}

/* Verify and GetChain look up every layer of a chain: an index instead of a scan per lookup, which made
 * them quadratic in the number of layers (B1). */
Layer *store_find_layer(Store *s, const char *id) {
        if ((s->layer_index_stale || !s->layer_index) && layer_index_rebuild(s) < 0) {
                for (size_t i = 0; i < s->n_layers; i++) /* out of memory: the slow way */
                        if (streq(s->layers[i]->id, id))
                                return s->layers[i];
                return NULL;
        }
        for (size_t k = layer_id_hash(id) & (s->layer_index_size - 1);; k = (k + 1) & (s->layer_index_size - 1)) {
                Layer *l = s->layer_index[k];
                if (!l)
                        return NULL;
                if (streq(l->id, id))
                        return l;
        }
}

Layer *store_find_catalog(Store *s, const char *name) {
        for (size_t i = 0; i < s->n_layers; i++)
                if (streq_ptr(s->layers[i]->catalog_name, name))
                        return s->layers[i];
        return NULL;
}

Vm *store_find_vm(Store *s, const char *name) {
        for (size_t i = 0; i < s->n_vms; i++)
                if (streq(s->vms[i]->name, name))
                        return s->vms[i];
        return NULL;
}

Disk *vm_find_disk(Vm *v, const char *name) {
        for (size_t i = 0; i < v->n_disks; i++)
                if (streq(v->disks[i].name, name))
                        return &v->disks[i];
        return NULL;
}

size_t store_count_users(Store *s, const char *layer) {
        size_t n = 0;

        for (size_t i = 0; i < s->n_vms; i++)
                for (size_t d = 0; d < s->vms[i]->n_disks; d++)
                        for (size_t k = 0; k < s->vms[i]->disks[d].n_chain; k++)
                                if (streq(s->vms[i]->disks[d].chain[k], layer))
                                        n++;
        return n;
}

static void layer_record_name(const char *id, char out[static 64]) {
        snprintf(out, 64, "layer-%s.json", id);
}

static void vm_record_name(const char *name, char out[static 96]) {
        snprintf(out, 96, "vm-%s.json", name);
}

static int array_append(void ***array, size_t *n, void *item) {
        void **a = reallocarray(*array, *n + 1, sizeof(void *));
        if (!a)
                return -ENOMEM;
        a[(*n)++] = item;
        *array = a;
        return 0;
}

static void array_remove(void **array, size_t *n, void *item) {
        for (size_t i = 0; i < *n; i++)
                if (array[i] == item) {
                        memmove(array + i, array + i + 1, (*n - i - 1) * sizeof(void *));
                        (*n)--;
                        return;
                }
}

int store_save_layer(Store *s, Layer *l) {
        char name[64];
        struct json_object *o = layer_to_json(l);
        int r;

        layer_record_name(l->id, name);
        r = record_write(s->records_fd, name, o);
        json_object_put(o);
        return r;
}

int store_put_layer(Store *s, Layer *l) {
        int r = store_save_layer(s, l);
        if (r < 0)
                return r;
        if (!store_find_layer(s, l->id)) {
                layers_changed(s);
                return array_append((void ***) &s->layers, &s->n_layers, l);
        }
        return 0;
}

static void unlink_layer_files(Store *s, const char *id) {
        for (int f = 0; f <= _IMAGE_FORMAT_MAX; f++) {
                char name[64];
                snprintf(name, sizeof(name), "%s.%s", id, f < _IMAGE_FORMAT_MAX ? image_format_to_string(f) : "data");
                if (unlinkat(s->images_fd, name, 0) < 0 && errno != ENOENT)
                        log_warning_errno(errno, "Failed to remove image file %s", name);
        }
        (void) fsync_directory(s->images_fd);
}

int store_delete_layer(Store *s, const char *id) {
        Layer *l = store_find_layer(s, id);
        char name[64];
        int r;

        /* Record first: a crash in between leaves an orphan file, which recovery removes, never a record
         * pointing at nothing. */
        layer_record_name(id, name);
        r = record_remove(s->records_fd, name);
        if (r < 0)
                return r;
        unlink_layer_files(s, id);
        if (l) {
                array_remove((void **) s->layers, &s->n_layers, l);
                layers_changed(s);
                layer_free(l);
        }
        return 0;
}

int store_put_vm(Store *s, Vm *v) {
        char name[96];
        struct json_object *o = vm_to_json(v);
        Vm *old;
        int r;

        vm_record_name(v->name, name);
        r = record_write(s->records_fd, name, o);
        json_object_put(o);
        if (r < 0)
                return r;

        old = store_find_vm(s, v->name);
        if (old == v)
                return 0;
        if (old) {
                for (size_t i = 0; i < s->n_vms; i++)
                        if (s->vms[i] == old)
                                s->vms[i] = v;
                vm_free(old);
                return 0;
        }
        return array_append((void ***) &s->vms, &s->n_vms, v);
}

int store_delete_vm(Store *s, const char *vm_name) {
        Vm *v = store_find_vm(s, vm_name);
        char name[96];
        int r;

        vm_record_name(vm_name, name);
        r = record_remove(s->records_fd, name);
        if (r < 0)
                return r;
        if (v) {
                array_remove((void **) s->vms, &s->n_vms, v);
                vm_free(v);
        }
        return 0;
}

int store_open_layer(Store *s, const Layer *l, int flags) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        fd = open_beneath(s->images_fd, l->file, flags, 0);
        if (fd < 0)
                return fd;
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode) || st.st_uid != s->uid || st.st_nlink != 1 ||
            (l->inode != 0 && (uint64_t) st.st_ino != l->inode))
                return -EBADMSG;
        return TAKE_FD(fd);
}

int store_open_data_file(Store *s, const Layer *l, int flags) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;

        if (!l->data_file)
                return -ENOENT;
        fd = open_beneath(s->images_fd, l->data_file, flags, 0);
        if (fd < 0)
                return fd;
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode) || st.st_uid != s->uid || st.st_nlink != 1 ||
            (l->data_inode != 0 && (uint64_t) st.st_ino != l->data_inode))
                return -EBADMSG;
        return TAKE_FD(fd);
}

int store_create_data_file(Store *s, Layer *l, uint64_t size) {
        _cleanup_close_ int fd = -EBADF;
        char tmp[96];
        struct stat st;
        int r = 0;

        snprintf(tmp, sizeof(tmp), TMP_PREFIX "%s", l->data_file);
        fd = openat(s->images_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        if (ftruncate(fd, (off_t) size) < 0 || fsync(fd) < 0 || fstat(fd, &st) < 0 ||
            renameat2(s->images_fd, tmp, s->images_fd, l->data_file, RENAME_NOREPLACE) < 0) {
                r = negative_errno();
                (void) unlinkat(s->images_fd, tmp, 0);
                return r;
        }
        l->data_inode = (uint64_t) st.st_ino;
        return fsync_directory(s->images_fd);
}

uint64_t store_layer_allocated(Store *s, const Layer *l) {
        struct stat st;
        uint64_t n = 0;

        if (fstatat(s->images_fd, l->file, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return 0;
        n = (uint64_t) st.st_blocks * 512;
        if (l->data_file && fstatat(s->images_fd, l->data_file, &st, AT_SYMLINK_NOFOLLOW) >= 0)
                n += (uint64_t) st.st_blocks * 512;
        return n;
}

int store_tmp_create(Store *s, const Layer *l) {
        char tmp[96];
        int fd;

        /* A named temporary (not O_TMPFILE + linkat, which needs CAP_DAC_READ_SEARCH): recovery removes
         * leftovers, which no record names. */
        snprintf(tmp, sizeof(tmp), TMP_PREFIX "%s", l->file);
        fd = openat(s->images_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        return fd < 0 ? negative_errno() : fd;
}

void store_tmp_discard(Store *s, const Layer *l) {
        char tmp[96];

        snprintf(tmp, sizeof(tmp), TMP_PREFIX "%s", l->file);
        (void) unlinkat(s->images_fd, tmp, 0);
}

int store_tmp_commit(Store *s, Layer *l, int fd) {
        char tmp[96];
        struct stat st;

        snprintf(tmp, sizeof(tmp), TMP_PREFIX "%s", l->file);
        if (fsync(fd) < 0 || fstat(fd, &st) < 0)
                return negative_errno();
        if (renameat2(s->images_fd, tmp, s->images_fd, l->file, RENAME_NOREPLACE) < 0)
                return negative_errno();
        l->inode = (uint64_t) st.st_ino;
        return fsync_directory(s->images_fd);
}

int store_create_layer_file(Store *s, Layer *l, StoreFillFunc fill, void *userdata) {
        _cleanup_close_ int fd = -EBADF;
        int r;

        fd = store_tmp_create(s, l);
        if (fd < 0)
                return fd;
        r = fill(fd, userdata);
        if (r >= 0)
                r = store_tmp_commit(s, l, fd);
        if (r < 0)
                store_tmp_discard(s, l);
        return r;
}

static int open_subdir(int dir_fd, const char *name) {
        int fd;

        if (mkdirat(dir_fd, name, 0700) < 0 && errno != EEXIST)
                return negative_errno();
        fd = open_beneath(dir_fd, name, O_RDONLY | O_DIRECTORY, 0);
        return fd;
}

/* A DIR stream over a duplicate of `fd`, which stays ours. */
static int opendir_fd(int fd, DIR **ret) {
        int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        DIR *d;

        if (copy < 0)
                return negative_errno();
        d = fdopendir(copy);
        if (!d) {
                safe_close(copy);
                return negative_errno();
        }
        *ret = d;
        return 0;
}

static int load_records(Store *s) {
        DIR *d;
        struct dirent *de;
        int r = 0;

        r = opendir_fd(s->records_fd, &d);
        if (r < 0)
                return r;

        while ((de = readdir(d))) {
                struct json_object *o = NULL;
                const char *n = de->d_name, *why = NULL;
                size_t len = strlen(n);

                if (n[0] == '.') {
                        if (strncmp(n, TMP_PREFIX, strlen(TMP_PREFIX)) == 0)
                                (void) unlinkat(s->records_fd, n, 0); /* an interrupted atomic write */
                        continue;
                }
                if (len < 6 || !streq(n + len - 5, ".json")) {
                        log_warning("Ignoring unexpected file records/%s", n);
                        continue;
                }

                r = record_read_why(s->records_fd, n, &o, &why);
                if (r == -EPROTONOSUPPORT) {
                        log_error("Record %s/records/%s has a newer schema than this vdiskd understands (%d); "
                                  "refusing to start. Upgrade vdiskd.", s->path, n, RECORD_SCHEMA);
                        break;
                }
                if (r < 0) {
                        if (why)
                                log_error("Record %s/records/%s cannot be read: %s; refusing to start", s->path, n, why);
                        else
                                log_error_errno(r, "Record %s/records/%s cannot be read; refusing to start", s->path, n);
                        break;
                }

                if (strncmp(n, "layer-", 6) == 0) {
                        Layer *l = NULL;
                        char expect[64];

                        r = layer_from_json(o, &l);
                        if (r >= 0) {
                                layer_record_name(l->id, expect);
                                if (!streq(expect, n))
                                        r = -EBADMSG;
                        }
                        if (r >= 0) {
                                layers_changed(s);
                                r = array_append((void ***) &s->layers, &s->n_layers, l);
                        }
                        if (r < 0)
                                layer_free(l);
                } else if (strncmp(n, "vm-", 3) == 0) {
                        Vm *v = NULL;
                        char expect[96];

                        r = vm_from_json(o, &v);
                        if (r >= 0) {
                                vm_record_name(v->name, expect);
                                if (!streq(expect, n))
                                        r = -EBADMSG;
                        }
                        if (r >= 0)
                                r = array_append((void ***) &s->vms, &s->n_vms, v);
                        if (r < 0)
                                vm_free(v);
                } else
                        log_warning("Ignoring unexpected record %s", n);
                json_object_put(o);
                if (r < 0) {
                        log_error_errno(r, "Record %s/records/%s is malformed; refusing to start", s->path, n);
                        break;
                }
        }
        closedir(d);
        return r < 0 ? r : 0;
}

int store_open(const char *path, Store **ret) {
        _cleanup_(store_freep) Store *s = NULL;
        struct stat st;
        int r;

        s = calloc(1, sizeof(Store));
        if (!s)
                return -ENOMEM;
        s->dir_fd = s->images_fd = s->records_fd = s->journal_fd = -EBADF;
        s->path = strdup(path);
        if (!s->path)
                return -ENOMEM;

        if (mkdir(path, 0700) < 0 && errno != EEXIST)
                return log_error_errno(errno, "Failed to create store directory %s", path);
        s->dir_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (s->dir_fd < 0)
                return log_error_errno(errno, "Failed to open store directory %s", path);
        if (fstat(s->dir_fd, &st) < 0)
                return negative_errno();
        s->uid = geteuid();
        if (st.st_uid != s->uid)
                return log_error_errno(EPERM, "Store directory %s is not owned by the daemon's user", path);
        if ((st.st_mode & 07777) != 0700 && fchmod(s->dir_fd, 0700) < 0)
                return log_error_errno(errno, "Failed to make store directory %s private", path);

        s->images_fd = open_subdir(s->dir_fd, IMAGES_DIR);
        s->records_fd = open_subdir(s->dir_fd, RECORDS_DIR);
        s->journal_fd = open_subdir(s->dir_fd, JOURNAL_DIR);
        if (s->images_fd < 0 || s->records_fd < 0 || s->journal_fd < 0)
                return log_error_errno(EIO, "Failed to open the subdirectories of store %s", path);

        r = load_records(s);
        if (r < 0)
                return r;
        r = store_recover(s);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(s);
        return 0;
}

/* ---- intent journal ---- */

static const char *const intent_commit_table[_INTENT_COMMIT_MAX] = {
        [INTENT_COMMIT_VM] = "vm",
        [INTENT_COMMIT_VM_DELETED] = "vm-deleted",
        [INTENT_COMMIT_LAYER_READY] = "layer-ready",
        [INTENT_COMMIT_LAYER_DELETED] = "layer-deleted",
        [INTENT_COMMIT_CHAIN] = "chain",
};

static int strv_push(char ***v, size_t *n, const char *s);

void intent_done(Intent *i) {
        free(i->op);
        free(i->commit_name);
        for (size_t k = 0; k < i->n_new; k++)
                free(i->new_layers[k]);
        free(i->new_layers);
        for (size_t k = 0; k < i->n_drop; k++)
                free(i->drop_layers[k]);
        free(i->drop_layers);
        for (size_t k = 0; k < i->n_modify; k++) {
                layer_free(i->modify[k].before);
                layer_free(i->modify[k].after);
        }
        for (size_t k = 0; k < i->n_unlink; k++)
                free(i->unlink_after[k].path);
        free(i->unlink_after);
        free(i->commit_disk);
        for (size_t k = 0; k < i->n_commit_chain; k++)
                free(i->commit_chain[k]);
        free(i->commit_chain);
        *i = (Intent) {};
}

static int layer_copy(const Layer *l, Layer **ret) {
        struct json_object *o = layer_to_json(l);
        int r;

        if (!o)
                return -ENOMEM;
        r = layer_from_json(o, ret);
        json_object_put(o);
        return r;
}

int intent_add_unlink(Intent *i, const char *path, uint64_t dev, uint64_t inode, mode_t mode) {
        struct IntentUnlink *u;

        if (path[0] != '/' || i->n_unlink >= INTENT_MAX_LAYERS || (mode != MODE_INVALID && (mode & ~(mode_t) 07777) != 0))
                return -EINVAL;
        u = reallocarray(i->unlink_after, i->n_unlink + 1, sizeof(*u));
        if (!u)
                return -ENOMEM;
        i->unlink_after = u;
        u[i->n_unlink] = (struct IntentUnlink) { .path = strdup(path), .dev = dev, .inode = inode, .mode = mode };
        if (!u[i->n_unlink].path)
                return -ENOMEM;
        i->n_unlink++;
        return 0;
}

void intent_unlink_names(Intent *i) {
        for (size_t k = 0; k < i->n_unlink; k++) {
                const char *path = i->unlink_after[k].path, *slash = strrchr(path, '/');
                _cleanup_free_ char *dir = strndup(path, slash == path ? 1 : (size_t) (slash - path));
                _cleanup_close_ int dfd = -EBADF;
                struct stat st;

                if (!dir)
                        continue;
                dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                if (dfd < 0 || fstatat(dfd, slash + 1, &st, AT_SYMLINK_NOFOLLOW) < 0)
                        continue; /* gone already */
                if (!S_ISREG(st.st_mode) || (uint64_t) st.st_dev != i->unlink_after[k].dev ||
                    (uint64_t) st.st_ino != i->unlink_after[k].inode) {
                        log_warning("%s is no longer the file moved into the store; leaving it", path);
                        continue;
                }
                if (unlinkat(dfd, slash + 1, 0) < 0 || fsync_directory(dfd) < 0)
                        log_error_errno(errno, "Cannot remove the old name %s", path);
        }
}

int intent_set_commit_chain(Intent *i, const char *disk, char **chain, size_t n) {
        i->commit_disk = strdup(disk);
        if (!i->commit_disk)
                return -ENOMEM;
        for (size_t k = 0; k < n; k++) {
                int r = strv_push(&i->commit_chain, &i->n_commit_chain, chain[k]);
                if (r < 0)
                        return r;
        }
        return 0;
}

int intent_add_modify(Intent *i, const Layer *before, const Layer *after) {
        IntentModify *m;
        int r;

        if (i->n_modify >= INTENT_MAX_MODIFY || !streq(before->id, after->id))
                return -EINVAL;
        m = &i->modify[i->n_modify];
        *m = (IntentModify) {};
        memcpy(m->layer, before->id, sizeof(m->layer));
        r = layer_copy(before, &m->before);
        if (r >= 0)
                r = layer_copy(after, &m->after);
        if (r < 0) {
                layer_free(m->before);
                layer_free(m->after);
                *m = (IntentModify) {};
                return r;
        }
        i->n_modify++;
        return 0;
}

#define UNDO_NAME_MAX (2 * LAYER_ID_LEN + 16)

static void undo_log_name(const Intent *i, const char *layer, bool data, char name[static UNDO_NAME_MAX]) {
        snprintf(name, UNDO_NAME_MAX, "%s-%s%s.undo", i->id, layer, data ? ".data" : "");
}

int journal_undo_create(Store *s, const Intent *i, const char *layer, bool data) {
        char name[UNDO_NAME_MAX];
        int fd, r;

        undo_log_name(i, layer, data, name);
        fd = openat(s->journal_fd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        r = fsync_directory(s->journal_fd);
        if (r < 0) {
                safe_close(fd);
                return r;
        }
        return fd;
}

int store_replace_layer(Store *s, const Layer *l) {
        Layer *copy = NULL, *old;
        int r;

        r = layer_copy(l, &copy);
        if (r < 0)
                return r;
        r = store_save_layer(s, copy);
        if (r < 0) {
                layer_free(copy);
                return r;
        }
        old = store_find_layer(s, l->id);
        layers_changed(s);
        if (old) {
                for (size_t k = 0; k < s->n_layers; k++)
                        if (s->layers[k] == old)
                                s->layers[k] = copy;
                layer_free(old);
                return 0;
        }
        return array_append((void ***) &s->layers, &s->n_layers, copy);
}

static void remove_undo_log(Store *s, const Intent *i, const char *layer, bool data) {
        char name[UNDO_NAME_MAX];

        undo_log_name(i, layer, data, name);
        if (unlinkat(s->journal_fd, name, 0) < 0 && errno != ENOENT)
                log_warning_errno(errno, "Failed to remove journal/%s", name);
}

static void remove_undo_logs(Store *s, const Intent *i) {
        for (size_t k = 0; k < i->n_modify; k++) {
                remove_undo_log(s, i, i->modify[k].layer, false);
                remove_undo_log(s, i, i->modify[k].layer, true);
        }
        if (i->n_unlink > 0) /* adopt with "move": the headers of the caller's files */
                for (size_t k = 0; k < i->n_new; k++)
                        remove_undo_log(s, i, i->new_layers[k], false);
}

/* The store's name of a new layer's image file, whatever its format. */
static int open_new_layer_file(Store *s, const char *id) {
        for (int f = 0; f < _IMAGE_FORMAT_MAX; f++) {
                char name[64];
                int fd;

                snprintf(name, sizeof(name), "%s.%s", id, image_format_to_string(f));
                fd = open_beneath(s->images_fd, name, O_RDWR | O_NOFOLLOW, 0);
                if (fd != -ENOENT)
                        return fd;
        }
        return -ENOENT;
}

/* Roll-back of an adoption with "move", before the store's names go: the caller's files were linked into
 * the store (same inodes) and may have had their mode and backing header changed there. Gives each one
 * its mode (from the intent) and its bytes (from the layer's undo log) back. Files that are not one of
 * the caller's inodes (copies) are left to store_delete_layer(). */
static int restore_moved_files(Store *s, Intent *i) {
        int ret = 0;

        for (size_t k = 0; i->n_unlink > 0 && k < i->n_new; k++) {
                const char *id = i->new_layers[k];
                _cleanup_close_ int fd = -EBADF, log_fd = -EBADF;
                const struct IntentUnlink *u = NULL;
                char name[UNDO_NAME_MAX];
                FormatError err = {};
                struct stat st;
                int r = 0;

                fd = open_new_layer_file(s, id);
                if (fd == -ENOENT)
                        continue; /* not linked yet */
                if (fd < 0 || fstat(fd, &st) < 0) {
                        ret = fd < 0 ? fd : negative_errno();
                        log_error_errno(ret, "Cannot open the file of layer %s to give it back", id);
                        continue;
                }
                for (size_t j = 0; j < i->n_unlink && !u; j++)
                        if ((uint64_t) st.st_dev == i->unlink_after[j].dev && (uint64_t) st.st_ino == i->unlink_after[j].inode)
                                u = &i->unlink_after[j];
                if (!u)
                        continue;

                undo_log_name(i, id, false, name);
                log_fd = openat(s->journal_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                if (log_fd < 0 && errno != ENOENT)
                        r = negative_errno();
                else if (log_fd >= 0)
                        r = undo_apply(log_fd, fd, &err);
                if (r >= 0 && u->mode != MODE_INVALID && (st.st_mode & 07777) != u->mode && fchmod(fd, u->mode) < 0)
                        r = negative_errno();
                if (r >= 0 && fsync(fd) < 0)
                        r = negative_errno();
                if (r < 0) {
                        log_error_errno(r, "Cannot give %s its header and mode back: %s", u->path,
                                        err.reason[0] ? err.reason : strerror(-r));
                        ret = r; /* keep the log: the next start tries again */
                        continue;
                }
                if (log_fd >= 0)
                        remove_undo_log(s, i, id, false);
        }
        return ret;
}

/* Restores one file of a modified layer from its undo log, if there is one; then removes the log. */
static int undo_one(Store *s, Intent *i, IntentModify *m, bool data) {
        char name[UNDO_NAME_MAX];
        _cleanup_close_ int log_fd = -EBADF, fd = -EBADF;
        FormatError err = {};
        int r;

        undo_log_name(i, m->layer, data, name);
        log_fd = openat(s->journal_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (log_fd < 0)
                return errno == ENOENT ? 0 : negative_errno();
        fd = data ? store_open_data_file(s, m->before, O_RDWR) : store_open_layer(s, m->before, O_RDWR);
        r = fd < 0 ? fd : undo_apply(log_fd, fd, &err);
        if (r < 0) {
                log_error_errno(r, "Failed to restore layer %s from journal/%s: %s", m->layer, name,
                                err.reason[0] ? err.reason : "cannot open the file");
                return r; /* keep the log: the next start tries again */
        }
        if (unlinkat(s->journal_fd, name, 0) < 0 && errno != ENOENT)
                log_warning_errno(errno, "Failed to remove journal/%s", name);
        return 0;
}

int journal_undo_modified(Store *s, Intent *i) {
        int ret = 0;

        for (size_t k = 0; k < i->n_modify; k++) {
                IntentModify *m = &i->modify[k];
                int r = undo_one(s, i, m, false);
                if (r >= 0 && m->before->data_file)
                        r = undo_one(s, i, m, true);
                if (r >= 0) {
                        m->before->state = LAYER_READY;
                        r = store_replace_layer(s, m->before);
                }
                if (r < 0)
                        ret = r;
        }
        return ret;
}

int journal_finish_modified(Store *s, Intent *i) {
        for (size_t k = 0; k < i->n_modify; k++) {
                int r;
                i->modify[k].after->state = LAYER_READY;
                r = store_replace_layer(s, i->modify[k].after);
                if (r < 0)
                        return r;
        }
        remove_undo_logs(s, i);
        return 0;
}

static int strv_push(char ***v, size_t *n, const char *s) {
        char *c;

        if (*n >= INTENT_MAX_LAYERS)
                return -E2BIG;
        c = strdup(s);
        if (!c || array_append((void ***) v, n, c) < 0) {
                free(c);
                return -ENOMEM;
        }
        return 0;
}

int intent_add_new(Intent *i, const char *layer) {
        return strv_push(&i->new_layers, &i->n_new, layer);
}

int intent_add_drop(Intent *i, const char *layer) {
        return strv_push(&i->drop_layers, &i->n_drop, layer);
}

static struct json_object *strv_to_json(char **v, size_t n) {
        struct json_object *a = json_object_new_array();
        for (size_t k = 0; k < n; k++)
                json_object_array_add(a, json_object_new_string(v[k]));
        return a;
}

static int journal_write(Store *s, Intent *i) {
        struct json_object *o = json_object_new_object();
        char name[64];
        int r;

        json_object_object_add(o, "schema", json_object_new_int(RECORD_SCHEMA));
        json_object_object_add(o, "op", json_object_new_string(i->op));
        json_object_object_add(o, "commit", json_object_new_string(intent_commit_table[i->commit]));
        json_object_object_add(o, "commit_name", json_object_new_string(i->commit_name));
        json_object_object_add(o, "commit_generation", json_object_new_uint64(i->commit_generation));
        json_object_object_add(o, "new_layers", strv_to_json(i->new_layers, i->n_new));
        json_object_object_add(o, "drop_layers", strv_to_json(i->drop_layers, i->n_drop));
        if (i->n_unlink > 0) {
                struct json_object *a = json_object_new_array();
                for (size_t k = 0; k < i->n_unlink; k++) {
                        struct json_object *e = json_object_new_object();
                        json_object_object_add(e, "path", json_object_new_string(i->unlink_after[k].path));
                        json_object_object_add(e, "dev", json_object_new_uint64(i->unlink_after[k].dev));
                        json_object_object_add(e, "inode", json_object_new_uint64(i->unlink_after[k].inode));
                        if (i->unlink_after[k].mode != MODE_INVALID)
                                json_object_object_add(e, "mode", json_object_new_int((int) i->unlink_after[k].mode));
                        json_object_array_add(a, e);
                }
                json_object_object_add(o, "unlink_after", a);
        }
        if (i->commit_disk) {
                json_object_object_add(o, "commit_disk", json_object_new_string(i->commit_disk));
                json_object_object_add(o, "commit_chain", strv_to_json(i->commit_chain, i->n_commit_chain));
        }
        if (i->n_modify > 0) {
                struct json_object *a = json_object_new_array();
                for (size_t k = 0; k < i->n_modify; k++) {
                        struct json_object *e = json_object_new_object();
                        json_object_object_add(e, "layer", json_object_new_string(i->modify[k].layer));
                        json_object_object_add(e, "before", layer_to_json(i->modify[k].before));
                        json_object_object_add(e, "after", layer_to_json(i->modify[k].after));
                        json_object_array_add(a, e);
                }
                json_object_object_add(o, "modify", a);
        }
        snprintf(name, sizeof(name), "%s.json", i->id);
        r = record_write(s->journal_fd, name, o);
        json_object_put(o);
        return r;
}

int intent_init(Intent *i, const char *op, IntentCommit commit, const char *commit_name, uint64_t commit_generation) {
        int r = layer_id_new(i->id);
        if (r < 0)
                return r;
        i->op = strdup(op);
        i->commit_name = strdup(commit_name);
        if (!i->op || !i->commit_name)
                return -ENOMEM;
        i->commit = commit;
        i->commit_generation = commit_generation;
        return 0;
}

int journal_begin(Store *s, Intent *i) {
        return journal_write(s, i);
}

int journal_end(Store *s, Intent *i) {
        char name[64];
        snprintf(name, sizeof(name), "%s.json", i->id);
        return record_remove(s->journal_fd, name);
}

int journal_abort(Store *s, Intent *i) {
        int r = journal_undo_modified(s, i);
        if (r >= 0)
                r = restore_moved_files(s, i);
        if (r < 0)
                return r; /* the entry stays: the next start rolls back again */
        for (size_t k = 0; k < i->n_new; k++)
                (void) store_delete_layer(s, i->new_layers[k]);
        return journal_end(s, i);
}

static int strv_from_json(struct json_object *o, const char *key, char ***v, size_t *n) {
        struct json_object *a;

        if (!json_object_object_get_ex(o, key, &a) || !json_object_is_type(a, json_type_array) ||
            json_object_array_length(a) > INTENT_MAX_LAYERS)
                return -EBADMSG;
        for (size_t k = 0; k < json_object_array_length(a); k++) {
                struct json_object *e = json_object_array_get_idx(a, k);
                int r;

                if (!json_object_is_type(e, json_type_string) || !layer_id_is_valid(json_object_get_string(e)))
                        return -EBADMSG;
                r = strv_push(v, n, json_object_get_string(e));
                if (r < 0)
                        return r;
        }
        return 0;
}

static int intent_from_json(struct json_object *o, Intent *i) {
        struct json_object *v;
        const char *commit;
        int r;

        if (!json_object_object_get_ex(o, "op", &v) || !json_object_is_type(v, json_type_string))
                return -EBADMSG;
        i->op = strdup(json_object_get_string(v));
        if (!json_object_object_get_ex(o, "commit", &v) || !json_object_is_type(v, json_type_string))
                return -EBADMSG;
        commit = json_object_get_string(v);
        i->commit = _INTENT_COMMIT_INVALID;
        for (int k = 0; k < _INTENT_COMMIT_MAX; k++)
                if (streq(commit, intent_commit_table[k]))
                        i->commit = (IntentCommit) k;
        if (i->commit < 0)
                return -EBADMSG;
        if (!json_object_object_get_ex(o, "commit_name", &v) || !json_object_is_type(v, json_type_string))
                return -EBADMSG;
        i->commit_name = strdup(json_object_get_string(v));
        if (!json_object_object_get_ex(o, "commit_generation", &v) || !json_object_is_type(v, json_type_int))
                return -EBADMSG;
        i->commit_generation = json_object_get_uint64(v);
        if (!i->op || !i->commit_name)
                return -ENOMEM;
        r = strv_from_json(o, "new_layers", &i->new_layers, &i->n_new);
        if (r < 0)
                return r;
        r = strv_from_json(o, "drop_layers", &i->drop_layers, &i->n_drop);
        if (r < 0)
                return r;
        if (json_object_object_get_ex(o, "unlink_after", &v)) {
                if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) > INTENT_MAX_LAYERS)
                        return -EBADMSG;
                for (size_t k = 0; k < json_object_array_length(v); k++) {
                        struct json_object *e = json_object_array_get_idx(v, k), *p, *dv, *in, *md;
                        int64_t mode = -1;
                        if (!json_object_is_type(e, json_type_object) || !json_object_object_get_ex(e, "path", &p) ||
                            !json_object_is_type(p, json_type_string) || !json_object_object_get_ex(e, "dev", &dv) ||
                            !json_object_is_type(dv, json_type_int) || !json_object_object_get_ex(e, "inode", &in) ||
                            !json_object_is_type(in, json_type_int) || strlen(json_object_get_string(p)) >= 4096)
                                return -EBADMSG;
                        if (json_object_object_get_ex(e, "mode", &md)) {
                                if (!json_object_is_type(md, json_type_int))
                                        return -EBADMSG;
                                mode = json_object_get_int64(md);
                                if (mode < 0 || mode > 07777)
                                        return -EBADMSG;
                        }
                        r = intent_add_unlink(i, json_object_get_string(p), json_object_get_uint64(dv),
                                              json_object_get_uint64(in), mode < 0 ? MODE_INVALID : (mode_t) mode);
                        if (r < 0)
                                return r == -EINVAL ? -EBADMSG : r;
                }
        }
        if (json_object_object_get_ex(o, "commit_disk", &v)) {
                if (!json_object_is_type(v, json_type_string) || !name_is_valid(json_object_get_string(v)))
                        return -EBADMSG;
                i->commit_disk = strdup(json_object_get_string(v));
                if (!i->commit_disk)
                        return -ENOMEM;
                r = strv_from_json(o, "commit_chain", &i->commit_chain, &i->n_commit_chain);
                if (r < 0)
                        return r;
        }
        if (i->commit == INTENT_COMMIT_CHAIN && !i->commit_disk)
                return -EBADMSG;
        if (json_object_object_get_ex(o, "modify", &v)) {
                if (!json_object_is_type(v, json_type_array) || json_object_array_length(v) > INTENT_MAX_MODIFY)
                        return -EBADMSG;
                for (size_t k = 0; k < json_object_array_length(v); k++) {
                        struct json_object *e = json_object_array_get_idx(v, k), *x, *b, *a;
                        IntentModify *m = &i->modify[i->n_modify];

                        if (!json_object_is_type(e, json_type_object) || !json_object_object_get_ex(e, "layer", &x) ||
                            !json_object_is_type(x, json_type_string) || !layer_id_is_valid(json_object_get_string(x)) ||
                            !json_object_object_get_ex(e, "before", &b) || !json_object_object_get_ex(e, "after", &a))
                                return -EBADMSG;
                        memcpy(m->layer, json_object_get_string(x), LAYER_ID_LEN + 1);
                        r = layer_from_json(b, &m->before);
                        if (r >= 0)
                                r = layer_from_json(a, &m->after);
                        i->n_modify++; /* freed by intent_done() either way */
                        if (r < 0)
                                return r;
                        if (!streq(m->before->id, m->layer) || !streq(m->after->id, m->layer))
                                return -EBADMSG;
                }
        }
        return 0;
}

/* A journal entry as replay_journal() reads it, for the fuzzer and tests. */
int intent_parse(struct json_object *o, Intent *ret) {
        Intent i = {};
        int r;

        r = intent_from_json(o, &i);
        if (r < 0) {
                intent_done(&i);
                return r;
        }
        *ret = i;
        return 0;
}

static bool intent_committed(Store *s, const Intent *i) {
        Vm *v;
        Layer *l;

        switch (i->commit) {
        case INTENT_COMMIT_VM:
                v = store_find_vm(s, i->commit_name);
                return v && v->generation >= i->commit_generation;
        case INTENT_COMMIT_VM_DELETED:
                return !store_find_vm(s, i->commit_name);
        case INTENT_COMMIT_LAYER_READY:
                l = store_find_layer(s, i->commit_name);
                return l && l->state == LAYER_READY;
        case INTENT_COMMIT_LAYER_DELETED:
                return !store_find_layer(s, i->commit_name);
        case INTENT_COMMIT_CHAIN: {
                Disk *d;
                v = store_find_vm(s, i->commit_name);
                d = v ? vm_find_disk(v, i->commit_disk) : NULL;
                if (!d || d->n_chain != i->n_commit_chain)
                        return false;
                for (size_t k = 0; k < d->n_chain; k++)
                        if (!streq(d->chain[k], i->commit_chain[k]))
                                return false;
                return true;
        }
        default:
                return false;
        }
}

static int replay_journal(Store *s) {
        DIR *d;
        struct dirent *de;
        int r = 0;

        r = opendir_fd(s->journal_fd, &d);
        if (r < 0)
                return r;

        while ((de = readdir(d))) {
                struct json_object *o = NULL;
                const char *why = NULL;
                Intent i = {};
                size_t len = strlen(de->d_name);

                if (de->d_name[0] == '.') {
                        if (strncmp(de->d_name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0)
                                (void) unlinkat(s->journal_fd, de->d_name, 0);
                        continue;
                }
                if (len > 5 && streq(de->d_name + len - 5, ".undo"))
                        continue; /* belongs to an entry; leftovers are removed after the replay */
                if (len != LAYER_ID_LEN + 5 || !streq(de->d_name + LAYER_ID_LEN, ".json")) {
                        log_warning("Ignoring unexpected file journal/%s", de->d_name);
                        continue;
                }
                memcpy(i.id, de->d_name, LAYER_ID_LEN);

                r = record_read_why(s->journal_fd, de->d_name, &o, &why);
                if (r >= 0)
                        r = intent_from_json(o, &i);
                json_object_put(o);
                if (r == -EPROTONOSUPPORT) {
                        log_error("Journal entry %s has a newer schema than this vdiskd understands; refusing to start.",
                                  de->d_name);
                        intent_done(&i);
                        break;
                }
                if (r < 0) {
                        if (why)
                                log_error("Journal entry %s cannot be read: %s; refusing to start", de->d_name, why);
                        else
                                log_error_errno(r, "Journal entry %s is malformed; refusing to start", de->d_name);
                        intent_done(&i);
                        break;
                }

                if (intent_committed(s, &i)) {
                        log_op(LOG_NOTICE, i.op, NULL, NULL, NULL, "Completing interrupted operation %s %s", i.op, i.id);
                        r = journal_finish_modified(s, &i);
                        for (size_t k = 0; r >= 0 && k < i.n_drop; k++)
                                (void) store_delete_layer(s, i.drop_layers[k]);
                        if (r >= 0)
                                intent_unlink_names(&i);
                } else {
                        log_op(LOG_NOTICE, i.op, NULL, NULL, NULL, "Rolling back interrupted operation %s %s", i.op, i.id);
                        r = journal_undo_modified(s, &i);
                        if (r >= 0)
                                r = restore_moved_files(s, &i);
                        for (size_t k = 0; r >= 0 && k < i.n_new; k++)
                                (void) store_delete_layer(s, i.new_layers[k]);
                }
                if (r < 0) {
                        log_error_errno(r, "Cannot replay journal entry %s; refusing to start", de->d_name);
                        intent_done(&i);
                        break;
                }
                r = journal_end(s, &i);
                intent_done(&i);
                if (r < 0)
                        break;
        }
        closedir(d);
        return r < 0 ? r : 0;
}

/* A set of strings for the sweep (glibc's hsearch_r): linear in the store's size, not quadratic. The
 * strings are not copied; they must outlive the set. */
typedef struct StringSet {
        struct hsearch_data table;
        bool ok;
} StringSet;

static int string_set_init(StringSet *set, size_t n) {
        *set = (StringSet) {};
        if (hcreate_r(n * 2 + 64, &set->table) == 0)
                return -ENOMEM;
        set->ok = true;
        return 0;
}

static int string_set_add(StringSet *set, const char *s) {
        ENTRY e = { .key = (char *) s }, *found;
        return hsearch_r(e, ENTER, &found, &set->table) ? 0 : -ENOMEM;
}

static bool string_set_contains(StringSet *set, const char *s) {
        ENTRY e = { .key = (char *) s }, *found;
        return hsearch_r(e, FIND, &found, &set->table) != 0;
}

static void string_set_done(StringSet *set) {
        if (set->ok)
                hdestroy_r(&set->table);
        set->ok = false;
}

static int sweep_orphans(Store *s) {
        StringSet used = {}, files = {};
        size_t n_chain = 0;
        DIR *d;
        struct dirent *de;
        int r;

        /* Every layer id that some disk's chain names. */
        for (size_t i = 0; i < s->n_vms; i++)
                for (size_t k = 0; k < s->vms[i]->n_disks; k++)
                        n_chain += s->vms[i]->disks[k].n_chain;
        r = string_set_init(&used, n_chain);
        for (size_t i = 0; r >= 0 && i < s->n_vms; i++)
                for (size_t k = 0; r >= 0 && k < s->vms[i]->n_disks; k++)
                        for (size_t c = 0; r >= 0 && c < s->vms[i]->disks[k].n_chain; c++)
                                r = string_set_add(&used, s->vms[i]->disks[k].chain[c]);
        if (r < 0) {
                string_set_done(&used);
                return r;
        }

        /* Layers that no operation finished, and private layers no disk uses. */
        for (size_t i = 0; i < s->n_layers;) {
                Layer *l = s->layers[i];
                if (l->state == LAYER_MODIFYING) {
                        /* No journal entry explains it (they are replayed first): the operation never began
                         * to change the file, or its entry was removed by hand. Verify judges the file. */
                        log_warning("Layer %s is marked as being modified but no operation is pending; marking it ready", l->id);
                        l->state = LAYER_READY;
                        (void) store_save_layer(s, l);
                }
                if (l->state != LAYER_READY || (l->vm && !string_set_contains(&used, l->id))) {
                        log_warning("Removing orphaned layer %s (%s)", l->id, layer_state_to_string(l->state));
                        (void) store_delete_layer(s, l->id);
                        continue;
                }
                i++;
        }
        string_set_done(&used);

        /* Files no record accounts for, and temporaries of interrupted writes. */
        r = string_set_init(&files, 2 * s->n_layers);
        for (size_t i = 0; r >= 0 && i < s->n_layers; i++) {
                r = string_set_add(&files, s->layers[i]->file);
                if (r >= 0 && s->layers[i]->data_file)
                        r = string_set_add(&files, s->layers[i]->data_file);
        }
        if (r >= 0)
                r = opendir_fd(s->images_fd, &d);
        if (r < 0) {
                string_set_done(&files);
                return r;
        }
        while ((de = readdir(d))) {
                if (streq(de->d_name, ".") || streq(de->d_name, "..") || string_set_contains(&files, de->d_name))
                        continue;
                log_warning("Removing orphaned file images/%s", de->d_name);
                if (unlinkat(s->images_fd, de->d_name, 0) < 0)
                        log_warning_errno(errno, "Failed to remove images/%s", de->d_name);
        }
        closedir(d);
        string_set_done(&files);
        return fsync_directory(s->images_fd);
}

static void sweep_undo_logs(Store *s) {
        DIR *d;
        struct dirent *de;

        if (opendir_fd(s->journal_fd, &d) < 0)
                return;
        while ((de = readdir(d))) {
                size_t len = strlen(de->d_name);
                if (len > 5 && streq(de->d_name + len - 5, ".undo")) {
                        log_warning("Removing undo log journal/%s of no pending operation", de->d_name);
                        (void) unlinkat(s->journal_fd, de->d_name, 0);
                }
        }
        closedir(d);
}

int store_recover(Store *s) {
        int r = replay_journal(s);
        if (r < 0)
                return r;
        sweep_undo_logs(s);
        return sweep_orphans(s);
}
