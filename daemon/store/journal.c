/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "undo.h"

/* ---- intent journal ---- */

static const char *const intent_commit_table[_INTENT_COMMIT_MAX] = {
        [INTENT_COMMIT_VM] = "vm",
        [INTENT_COMMIT_VM_DELETED] = "vm-deleted",
        [INTENT_COMMIT_LAYER_READY] = "layer-ready",
        [INTENT_COMMIT_LAYER_DELETED] = "layer-deleted",
        [INTENT_COMMIT_CHAIN] = "chain",
};

static int intent_strv_push(char ***v, size_t *n, const char *s);

const char *intent_commit_to_string(IntentCommit c) {
        return c >= 0 && c < _INTENT_COMMIT_MAX ? intent_commit_table[c] : NULL;
}

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
                int r = intent_strv_push(&i->commit_chain, &i->n_commit_chain, chain[k]);
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
        if (r >= 0)
                m->after->writer = record_get_writer(); /* the new version is this host's */
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

static int intent_strv_push(char ***v, size_t *n, const char *s) {
        if (*n >= INTENT_MAX_LAYERS)
                return -E2BIG;
        return strv_push(v, n, s);
}

int intent_add_new(Intent *i, const char *layer) {
        return intent_strv_push(&i->new_layers, &i->n_new, layer);
}

int intent_add_drop(Intent *i, const char *layer) {
        return intent_strv_push(&i->drop_layers, &i->n_drop, layer);
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
        /* The logged operations before any intent (docs/design.md, "Commit protocol"). */
        int r = wal_checkpoint(s);
        if (r < 0)
                return r;
        return journal_write(s, i);
}

int journal_end(Store *s, Intent *i) {
        char name[64];
        snprintf(name, sizeof(name), "%s.json", i->id);
        return record_remove(s->journal_fd, name);
}

/* The temporaries a new layer's file was being made in (images/.#<id>.<format>, store_tmp_create()): the
 * layer id is the entry's own, so nothing else can be using them. At the start the sweep would remove
 * them too, but in cluster mode recovery happens under a lease, where no sweep runs. */
static void unlink_layer_temporaries(Store *s, const char *id) {
        for (int f = 0; f <= _IMAGE_FORMAT_MAX; f++) {
                char name[96];

                snprintf(name, sizeof(name), STORE_TMP_PREFIX "%s.%s", id,
                         f < _IMAGE_FORMAT_MAX ? image_format_to_string(f) : "data");
                if (unlinkat(s->images_fd, name, 0) < 0 && errno != ENOENT)
                        log_warning_errno(errno, "Failed to remove temporary image file %s", name);
        }
}

int journal_roll_back(Store *s, Intent *i) {
        int r = journal_undo_modified(s, i);
        if (r >= 0)
                r = restore_moved_files(s, i);
        if (r < 0)
                return r; /* the entry stays: the next start rolls back again */
        for (size_t k = 0; k < i->n_new; k++) {
                unlink_layer_temporaries(s, i->new_layers[k]);
                (void) store_delete_layer(s, i->new_layers[k]);
        }
        return 0;
}

int journal_abort(Store *s, Intent *i) {
        int r = journal_roll_back(s, i);
        if (r < 0)
                return r;
        return journal_end(s, i);
}

void journal_complete(Store *s, Intent *i, bool live, void (*unlink_names)(void *userdata), void *userdata) {
        for (size_t k = 0; k < i->n_drop; k++)
                if (!live || store_find_layer(s, i->drop_layers[k]))
                        (void) store_delete_layer(s, i->drop_layers[k]);
        if (i->n_unlink == 0)
                return;
        if (unlink_names)
                unlink_names(userdata);
        else
                intent_unlink_names(i);
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
                r = intent_strv_push(v, n, json_object_get_string(e));
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

bool intent_committed(Store *s, const Intent *i) {
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
