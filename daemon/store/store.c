/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <assert.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <search.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "recovery.h"

#define IMAGES_DIR "images"
#define RECORDS_DIR "records"
#define JOURNAL_DIR "journal"
#define TMP_PREFIX STORE_TMP_PREFIX

static int record_cache_write(Store *s);

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

int store_save_layer(Store *s, Layer *l) {
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

/*
 * The start-up cache (docs/design.md, "Start-up"): STORE/records.cache holds byte-exact copies of the
 * records, written at a clean stop, each with the identity of the file it was copied from (device, inode,
 * size, mtime, ctime, all from one fstat of the open file) and an FNV-1a hash of its name and bytes. At
 * start a copy stands in for its file only if an lstat of records/<name> now gives the same identity;
 * the copy is then parsed and validated exactly as the file would be. Anything else (no cache, a torn
 * or foreign entry, a record changed, replaced or added since, a copy that does not validate) reads the
 * file itself, which alone decides (and names itself if it is corrupt). A write to a file changes its
 * ctime; so that a write in the same clock tick as the copy cannot go unseen, records whose ctime is not
 * older than RECORD_CACHE_MARGIN_SEC before the copy are left out.
 *
 *   "vdisk-record-cache 1\n"
 *   then per record: "<name> <dev> <ino> <size> <mtime s> <mtime ns> <ctime s> <ctime ns> <hash hex>\n"
 *                    <size bytes of the record> "\n"
 */
#define RECORD_CACHE "records.cache"
#define RECORD_CACHE_MAGIC "vdisk-record-cache 1\n"
#define RECORD_CACHE_MARGIN_SEC 2

typedef struct RecordName {
        char *name;
        ino_t ino;
        bool loaded;
} RecordName;

/* The names live in chunks mapped for them (not the heap): a start with 20,001 records would otherwise
 * leave 1 MB of heap behind, fragmented by the layers and VMs allocated meanwhile. */
#define RECORD_NAMES_CHUNK (1024 * 1024)

typedef struct RecordNamesChunk {
        struct RecordNamesChunk *next;
        size_t used;
        char data[];
} RecordNamesChunk;

typedef struct RecordNames {
        RecordName *items;
        size_t n, n_allocated;
        size_t *index; /* open addressing: 1 + position in items, 0 empty */
        size_t index_size;
        RecordNamesChunk *chunks;
} RecordNames;

static void record_names_done(RecordNames *rn) {
        while (rn->chunks) {
                RecordNamesChunk *next = rn->chunks->next;
                (void) munmap(rn->chunks, RECORD_NAMES_CHUNK);
                rn->chunks = next;
        }
        free(rn->items);
        free(rn->index);
        *rn = (RecordNames) {};
}

static int record_names_add(RecordNames *rn, const char *name, ino_t ino) {
        size_t len = strlen(name) + 1;
        char *copy;

        if (len > RECORD_NAMES_CHUNK - sizeof(RecordNamesChunk))
                return -ENAMETOOLONG;
        if (rn->n == rn->n_allocated) {
                size_t n = rn->n_allocated ? 2 * rn->n_allocated : 256;
                RecordName *a = reallocarray(rn->items, n, sizeof(RecordName));
                if (!a)
                        return -ENOMEM;
                rn->items = a;
                rn->n_allocated = n;
        }
        if (!rn->chunks || rn->chunks->used + len > RECORD_NAMES_CHUNK - sizeof(RecordNamesChunk)) {
                RecordNamesChunk *c = mmap(NULL, RECORD_NAMES_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (c == MAP_FAILED)
                        return -ENOMEM;
                c->next = rn->chunks;
                c->used = 0;
                rn->chunks = c;
        }
        copy = rn->chunks->data + rn->chunks->used;
        memcpy(copy, name, len);
        rn->chunks->used += len;
        rn->items[rn->n++] = (RecordName) { .name = copy, .ino = ino };
        return 0;
}

static int record_name_cmp_ino(const void *a, const void *b) {
        const RecordName *x = a, *y = b;
        return x->ino < y->ino ? -1 : x->ino > y->ino;
}

/* Sorts by inode (the order in which their inodes are cheapest to read from a cold disk) and indexes by name. */
static int record_names_index(RecordNames *rn) {
        size_t size = 16;

        qsort(rn->items, rn->n, sizeof(RecordName), record_name_cmp_ino);
        while (size < 2 * rn->n)
                size *= 2;
        rn->index = calloc(size, sizeof(size_t));
        if (!rn->index)
                return -ENOMEM;
        rn->index_size = size;
        for (size_t i = 0; i < rn->n; i++) {
                size_t k = layer_id_hash(rn->items[i].name) & (size - 1);
                while (rn->index[k])
                        k = (k + 1) & (size - 1);
                rn->index[k] = i + 1;
        }
        return 0;
}

static RecordName *record_names_find(RecordNames *rn, const char *name) {
        if (!rn->index)
                return NULL;
        for (size_t k = layer_id_hash(name) & (rn->index_size - 1);; k = (k + 1) & (rn->index_size - 1)) {
                if (!rn->index[k])
                        return NULL;
                if (streq(rn->items[rn->index[k] - 1].name, name))
                        return &rn->items[rn->index[k] - 1];
        }
}

static uint64_t record_cache_hash(const char *name, const char *text, size_t size) {
        uint64_t h = UINT64_C(14695981039346656037);

        for (const char *p = name; *p; p++)
                h = (h ^ (uint8_t) *p) * UINT64_C(1099511628211);
        h = (h ^ 0) * UINT64_C(1099511628211);
        for (size_t i = 0; i < size; i++)
                h = (h ^ (uint8_t) text[i]) * UINT64_C(1099511628211);
        return h;
}

typedef struct RecordIdentity {
        uint64_t dev, ino, size;
        int64_t mtime_sec, mtime_nsec, ctime_sec, ctime_nsec;
} RecordIdentity;

static RecordIdentity record_identity(const struct stat *st) {
        return (RecordIdentity) {
                .dev = (uint64_t) st->st_dev, .ino = (uint64_t) st->st_ino, .size = (uint64_t) st->st_size,
                .mtime_sec = st->st_mtim.tv_sec, .mtime_nsec = st->st_mtim.tv_nsec,
                .ctime_sec = st->st_ctim.tv_sec, .ctime_nsec = st->st_ctim.tv_nsec,
        };
}

static bool record_identity_eq(const RecordIdentity *a, const RecordIdentity *b) {
        return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_sec == b->mtime_sec &&
               a->mtime_nsec == b->mtime_nsec && a->ctime_sec == b->ctime_sec && a->ctime_nsec == b->ctime_nsec;
}

/* What is done with a cached copy whose file is still the one it was copied from (`line` is its whole
 * line, newline included): at start, parse and validate it (record_cache_parse); at a stop, copy it
 * into the new cache (record_cache_copy). Returns > 0 if the record needs nothing more. */
typedef int (*RecordCacheFunc)(Store *s, const char *name, const char *line, size_t line_len, const char *text,
                               size_t size, void *userdata);

static int record_cache_parse(Store *s, const char *name, const char *line, size_t line_len, const char *text,
                              size_t size, void *userdata) {
        struct json_object *o = NULL;
        int r;

        if (record_parse_why(text, size, &o, NULL) < 0)
                return 0; /* the file decides, and names itself */
        r = load_record(s, name, o);
        json_object_put(o);
        if (r == -ENOMEM)
                return r;
        if (r >= 0)
                (*(size_t *) userdata)++;
        return r >= 0;
}

static int record_cache_copy(Store *s, const char *name, const char *line, size_t line_len, const char *text,
                             size_t size, void *userdata) {
        FILE *f = userdata;

        fwrite(line, 1, line_len, f);
        fwrite(text, 1, size, f);
        fputc('\n', f);
        return 1;
}

static int record_cache_use(Store *s, RecordNames *rn, const char *name, const RecordIdentity *id, const char *line,
                            size_t line_len, const char *text, size_t size, RecordCacheFunc func, void *userdata) {
        RecordName *entry = record_names_find(rn, name);
        RecordIdentity now;
        struct stat st;
        int r;

        if (!entry || entry->loaded)
                return 0;
        if (fstatat(s->records_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                return 0;
        now = record_identity(&st);
        if (!record_identity_eq(id, &now))
                return 0;
        r = func(s, name, line, line_len, text, size, userdata);
        if (r > 0)
                entry->loaded = true;
        return r < 0 ? r : 0;
}

/* Reads the cache in pieces (its size grows with the store; the daemon's memory should not). Stops
 * using it at the first entry that does not parse: the records left are read from their files. */
static int record_cache_load(Store *s, RecordNames *rn, RecordCacheFunc func, void *userdata) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        size_t cap = 64 * 1024, len = 0, pos = 0;
        bool eof = false;
        struct stat st;
        int r;

        fd = openat(s->dir_fd, RECORD_CACHE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0)
                return 0;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != s->uid)
                return 0;
        (void) posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        buf = malloc(cap + 1);
        if (!buf)
                return -ENOMEM;

        for (bool header = true;;) {
                char *nl, name[256];
                RecordIdentity id;
                unsigned long long hash;
                size_t line;
                int n = 0;

                /* At least one complete line (and then the record after it) in buf[pos, len). */
                nl = memchr(buf + pos, '\n', len - pos);
                if (nl && !header) {
                        int k;

                        *nl = 0; /* sscanf() measures its whole input first */
                        k = sscanf(buf + pos, "%255s %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNd64 " %" SCNd64 " %" SCNd64
                                   " %" SCNd64 " %llx%n", name, &id.dev, &id.ino, &id.size, &id.mtime_sec, &id.mtime_nsec,
                                   &id.ctime_sec, &id.ctime_nsec, &hash, &n);
                        *nl = '\n';
                        if (k != 9 || buf + pos + n != nl || id.size > RECORD_MAX_SIZE)
                                return 0; /* torn or foreign: the files decide */
                        line = (size_t) (nl - (buf + pos)) + 1;
                        if (len - pos >= line + id.size + 1) {
                                const char *text = nl + 1;
                                if (text[id.size] != '\n')
                                        return 0;
                                if (record_cache_hash(name, text, id.size) == (uint64_t) hash) {
                                        r = record_cache_use(s, rn, name, &id, buf + pos, line, text, id.size, func, userdata);
                                        if (r < 0)
                                                return r;
                                }
                                pos += line + id.size + 1;
                                continue;
                        }
                } else if (nl && header) {
                        if ((size_t) (nl - (buf + pos)) + 1 != strlen(RECORD_CACHE_MAGIC) ||
                            memcmp(buf + pos, RECORD_CACHE_MAGIC, strlen(RECORD_CACHE_MAGIC)) != 0)
                                return 0;
                        pos += strlen(RECORD_CACHE_MAGIC);
                        header = false;
                        continue;
                }
                /* Need more: keep the unparsed tail, grow for a large record, read. */
                if (eof)
                        return 0;
                memmove(buf, buf + pos, len - pos);
                len -= pos;
                pos = 0;
                if (len == cap) {
                        char *b;
                        if (cap >= 2 * RECORD_MAX_SIZE + 4096)
                                return 0;
                        b = realloc(buf, 2 * cap + 1);
                        if (!b)
                                return -ENOMEM;
                        buf = b;
                        cap *= 2;
                }
                ssize_t k = read(fd, buf + len, cap - len);
                if (k < 0)
                        return 0;
                if (k == 0)
                        eof = true;
                len += (size_t) k;
                buf[len] = 0; /* sscanf stops at the end of what was read */
        }
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
                        if (strncmp(n, TMP_PREFIX, strlen(TMP_PREFIX)) == 0)
                                (void) unlinkat(s->records_fd, n, 0); /* an interrupted atomic write */
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
                r = record_cache_load(s, &rn, record_cache_parse, &n_cached);
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

/* At a clean stop: copies of the records (read from their files, with their identity) into
 * RECORD_CACHE, replaced atomically. Best effort: without it the next start reads every record. Not
 * fsynced: a torn copy fails its hash, or its identity, and its file is read instead. */
static int record_cache_write(Store *s) {
        _cleanup_(record_names_done) RecordNames rn = {};
        _cleanup_free_ char *text = NULL;
        size_t text_cap = 0;
        struct timespec now;
        FILE *f = NULL;
        DIR *d;
        struct dirent *de;
        int fd, r;

        if (clock_gettime(CLOCK_REALTIME, &now) < 0)
                return negative_errno();
        r = store_opendir(s->records_fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.' && strlen(de->d_name) > 5 &&
                    streq(de->d_name + strlen(de->d_name) - 5, ".json") &&
                    (r = record_names_add(&rn, de->d_name, de->d_ino)) < 0)
                        break;
        closedir(d);
        if (r < 0)
                return r;

        fd = openat(s->dir_fd, TMP_PREFIX RECORD_CACHE, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        f = fdopen(fd, "w");
        if (!f) {
                r = negative_errno();
                safe_close(fd);
                goto fail;
        }
        fputs(RECORD_CACHE_MAGIC, f);
        /* The copies still current first (without reading their files, which a start from the cache
         * left cold), then the records changed or added since. */
        r = record_names_index(&rn);
        if (r >= 0)
                r = record_cache_load(s, &rn, record_cache_copy, f);
        if (r < 0)
                goto fail;
        for (size_t i = 0; i < rn.n; i++) {
                _cleanup_close_ int rfd = -EBADF;
                RecordIdentity id;
                struct stat st;

                if (rn.items[i].loaded)
                        continue;
                if (strlen(rn.items[i].name) > 255 || strpbrk(rn.items[i].name, " \t\n\v\f\r"))
                        continue; /* not one word of the cache's lines */
                rfd = open_beneath(s->records_fd, rn.items[i].name, O_RDONLY | O_NONBLOCK, 0);
                if (rfd < 0 || fstat(rfd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t) st.st_size > RECORD_MAX_SIZE)
                        continue;
                if (st.st_ctim.tv_sec > now.tv_sec - RECORD_CACHE_MARGIN_SEC)
                        continue; /* changed too recently to tell a later change by its ctime */
                id = record_identity(&st);
                if (id.size + 1 > text_cap) {
                        char *t = realloc(text, id.size + 1);
                        if (!t) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        text = t;
                        text_cap = id.size + 1;
                }
                r = format_pread_full(rfd, text, id.size, 0);
                if (r < 0)
                        continue;
                fprintf(f, "%s %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %016" PRIx64 "\n",
                        rn.items[i].name, id.dev, id.ino, id.size, id.mtime_sec, id.mtime_nsec, id.ctime_sec,
                        id.ctime_nsec, record_cache_hash(rn.items[i].name, text, id.size));
                fwrite(text, 1, id.size, f);
                fputc('\n', f);
        }
        if (fflush(f) != 0 || ferror(f)) {
                r = -EIO;
                goto fail;
        }
        fclose(f);
        f = NULL;
        if (renameat(s->dir_fd, TMP_PREFIX RECORD_CACHE, s->dir_fd, RECORD_CACHE) < 0) {
                r = negative_errno();
                goto fail;
        }
        return 0;
fail:
        if (f)
                fclose(f);
        (void) unlinkat(s->dir_fd, TMP_PREFIX RECORD_CACHE, 0);
        return r;
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
