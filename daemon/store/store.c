/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <search.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "record-cache.h"
#include "recovery.h"

#define IMAGES_DIR "images"
#define RECORDS_DIR "records"
#define JOURNAL_DIR "journal"
#define TMP_PREFIX STORE_TMP_PREFIX

Store *store_free(Store *s) {
        if (!s)
                return NULL;
        /* A clean stop leaves no entry to redo: a redo rewrites the files an entry created, which is
         * harmless for the daemon's own state but would undo writes made past it into a store file by
         * path (the tests' qemu-io). */
        if (wal_checkpoint(s) < 0)
                log_warning("Stopping with logged operations not checkpointed; the next start redoes them");
        else if (!s->shared && s->records_fd >= 0 && s->dir_fd >= 0 && s->loaded) {
                int r = record_cache_write(s);
                if (r < 0)
                        log_debug_errno(r, "Failed to write the start-up cache of the records");
        }
        wal_free(s);
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

static int save_layer(Store *s, Layer *l) {
        char name[64];
        struct json_object *o;
        int r;

        /* Every durable change waits for the logged ones before it (docs/design.md, "Commit protocol"). */
        r = wal_checkpoint(s);
        if (r < 0)
                return r;
        o = layer_to_json(l);
        layer_record_name(l->id, name);
        r = record_write(s->records_fd, name, o);
        json_object_put(o);
        return r;
}

int store_save_layer(Store *s, Layer *l) {
        l->writer = record_get_writer(); /* a new version, this host's */
        return save_layer(s, l);
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

        r = wal_checkpoint(s);
        if (r < 0)
                return r;
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

static int vm_put_in_memory(Store *s, Vm *v) {
        Vm *old = store_find_vm(s, v->name);

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

int store_put_vm(Store *s, Vm *v) {
        char name[96];
        struct json_object *o;
        int r;

        r = wal_checkpoint(s);
        if (r < 0)
                return r;
        v->writer = record_get_writer();
        o = vm_to_json(v);
        vm_record_name(v->name, name);
        r = record_write(s->records_fd, name, o);
        json_object_put(o);
        if (r < 0)
                return r;
        return vm_put_in_memory(s, v);
}

void store_replace_vm_in_memory(Store *s, Vm *v) {
        assert(store_find_vm(s, v->name));
        (void) vm_put_in_memory(s, v); /* replaces: cannot fail */
}

int store_reserve_layer(Store *s) {
        Layer **a = reallocarray(s->layers, s->n_layers + 1, sizeof(Layer *));

        if (!a)
                return -ENOMEM;
        s->layers = a;
        return 0;
}

void store_add_layer_reserved(Store *s, Layer *l) {
        s->layers[s->n_layers++] = l;
        layers_changed(s);
}

int store_delete_vm(Store *s, const char *vm_name) {
        Vm *v = store_find_vm(s, vm_name);
        char name[96];
        int r;

        r = wal_checkpoint(s);
        if (r < 0)
                return r;
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

/* Whether an open of a store file failed because the name is not a regular file of ours (tampering), as
 * opposed to missing (ENOENT) or out of resources (EMFILE, ENOMEM...): a symlink (ELOOP), a socket or
 * device (ENXIO, ENODEV), another mount (EXDEV), a directory (EISDIR), another owner's file (EACCES, EPERM). */
static bool open_error_is_tampering(int r) {
        switch (-r) {
        case ELOOP: case ENXIO: case ENODEV: case EXDEV: case EISDIR: case ENOTDIR:
        case EACCES: case EPERM: case ETXTBSY: case EOPNOTSUPP: case EAGAIN:
                return true;
        default:
                return false;
        }
}

/* Opens images/<file> of layer `id` and checks it on the fd: regular, ours, one link, inode as recorded
 * (if known). Never blocks: a FIFO put in place of the file would stall the whole daemon in open(), so
 * O_NONBLOCK until the fd is known to be a regular file. Whatever fails the checks is -EBADMSG (Corrupt),
 * logged as a warning that names the layer. */
static int open_checked(Store *s, const char *id, const char *what, const char *file, uint64_t inode, int flags) {
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        int fl, r;

        /* A file created by a logged operation is written by nothing but its redo until it is durable
         * (docs/design.md, "Commit protocol"): guest data written into a file whose directory entry could
         * still vanish would be lost, and a redo would overwrite it. Reading it needs nothing: its bytes
         * are the ones the entry carries. */
        if ((flags & O_ACCMODE) != O_RDONLY && wal_layer_pending(s, id)) {
                r = wal_checkpoint(s);
                if (r < 0)
                        return r;
        }
        fd = open_beneath(s->images_fd, file, flags | O_NONBLOCK, 0);
        if (fd < 0 && open_error_is_tampering(fd)) {
                log_warning("The %s of layer %s (images/%s) cannot be opened as a regular file of the store (%s); "
                            "treating it as corrupt", what, id, file, strerror(-fd));
                return -EBADMSG;
        }
        if (fd < 0)
                return fd;
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode) || st.st_uid != s->uid || st.st_nlink != 1 || (inode != 0 && (uint64_t) st.st_ino != inode)) {
                log_warning("The %s of layer %s (images/%s) is not the one recorded (%s); treating it as corrupt", what, id,
                            file,
                            !S_ISREG(st.st_mode) ? "not a regular file" :
                            st.st_uid != s->uid  ? "another owner" :
                            st.st_nlink != 1     ? "more than one link" : "another inode");
                return -EBADMSG;
        }
        fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
                return negative_errno();
        return TAKE_FD(fd);
}

int store_open_layer(Store *s, const Layer *l, int flags) {
        return open_checked(s, l->id, "image file", l->file, l->inode, flags);
}

int store_open_data_file(Store *s, const Layer *l, int flags) {
        if (!l->data_file)
                return -ENOENT;
        return open_checked(s, l->id, "data file", l->data_file, l->data_inode, flags);
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

int store_opendir(int fd, DIR **ret) {
        int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        DIR *d;

        if (copy < 0)
                return negative_errno();
        d = fdopendir(copy);
        if (!d) {
                safe_close(copy);
                return negative_errno();
        }
        /* The copy shares its offset with `fd`: a stream read to the end before would start at the end. */
        rewinddir(d);
        *ret = d;
        return 0;
}

/* Turns one record read from records/<n> (or its cached copy) into a layer or VM of `s`. -EBADMSG if it
 * does not validate or is not named after what it describes. */
static int load_record(Store *s, const char *n, struct json_object *o) {
        int r;

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
                return r;
        }
        if (strncmp(n, "vm-", 3) == 0) {
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
                return r;
        }
        log_warning("Ignoring unexpected record %s", n);
        return 0;
}

static int load_records(Store *s) {
        _cleanup_(record_names_done) RecordNames rn = {};
        size_t n_cached = 0;
        DIR *d;
        struct dirent *de;
        int r = 0;

        r = store_opendir(s->records_fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d))) {
                const char *n = de->d_name;
                size_t len = strlen(n);

                if (n[0] == '.') {
                        /* An interrupted atomic write; in cluster mode possibly another host's write in
                         * progress: left to the orphan sweep, which removes old ones (recovery.c). */
                        if (strncmp(n, TMP_PREFIX, strlen(TMP_PREFIX)) == 0 && !s->shared)
                                (void) unlinkat(s->records_fd, n, 0);
                        continue;
                }
                if (len < 6 || !streq(n + len - 5, ".json")) {
                        log_warning("Ignoring unexpected file records/%s", n);
                        continue;
                }
                r = record_names_add(&rn, n, de->d_ino);
                if (r < 0)
                        break;
        }
        closedir(d);
        if (r >= 0)
                r = record_names_index(&rn);
        /* Cluster mode: other hosts write the records; no cache. */
        if (r >= 0 && !s->shared)
                r = record_cache_read(s, &rn, load_record, &n_cached);
        if (r < 0)
                return r;

        for (size_t i = 0; i < rn.n; i++) {
                struct json_object *o = NULL;
                const char *n = rn.items[i].name, *why = NULL;

                if (rn.items[i].loaded)
                        continue;
                r = record_read_why(s->records_fd, n, &o, &why);
                if (r == -EPROTONOSUPPORT) {
                        log_error("Record %s/records/%s has a newer schema than this vdiskd understands (%d); "
                                  "refusing to start. Upgrade vdiskd.", s->path, n, RECORD_SCHEMA);
                        return r;
                }
                if (r < 0) {
                        if (why)
                                log_error("Record %s/records/%s cannot be read: %s; refusing to start", s->path, n, why);
                        else
                                log_error_errno(r, "Record %s/records/%s cannot be read; refusing to start", s->path, n);
                        return r;
                }
                r = load_record(s, n, o);
                json_object_put(o);
                if (r < 0)
                        return log_error_errno(r, "Record %s/records/%s is malformed; refusing to start", s->path, n);
        }
        if (!s->shared)
                log_info("Loaded %zu records, %zu of them from the start-up cache", rn.n, n_cached);
        return 0;
}

static int store_open_full(const char *path, bool recover, Store **ret) {
        _cleanup_(store_freep) Store *s = NULL;
        struct stat st;
        int r;

        s = calloc(1, sizeof(Store));
        if (!s)
                return -ENOMEM;
        s->dir_fd = s->images_fd = s->records_fd = s->journal_fd = -EBADF;
        s->shared = !recover;
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

        /* The logged operations first: their records may be torn until they are redone. */
        r = wal_open(s);
        if (r < 0)
                return log_error_errno(r, "Failed to redo the write-ahead logs of store %s", path);

        r = load_records(s);
        if (r < 0)
                return r;
        r = recover ? store_recover(s) : 0;
        if (r < 0)
                return r;
        s->loaded = true;

        *ret = TAKE_PTR(s);
        return 0;
}

int store_open(const char *path, Store **ret) {
        return store_open_full(path, true, ret);
}

int store_open_shared(const char *path, Store **ret) {
        return store_open_full(path, false, ret);
}

int layer_copy(const Layer *l, Layer **ret) {
        struct json_object *o = layer_to_json(l);
        int r;

        if (!o)
                return -ENOMEM;
        r = layer_from_json(o, ret);
        json_object_put(o);
        return r;
}

int store_replace_layer(Store *s, const Layer *l) {
        Layer *copy = NULL, *old;
        int r;

        r = layer_copy(l, &copy);
        if (r < 0)
                return r;
        r = save_layer(s, copy); /* as it was recorded, its writer included */
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
