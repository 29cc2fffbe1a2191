/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "record.h"

static const char *const layer_state_table[_LAYER_STATE_MAX] = {
        [LAYER_CREATING] = "creating",
        [LAYER_READY] = "ready",
        [LAYER_MODIFYING] = "modifying",
};

const char *layer_state_to_string(LayerState s) {
        return s >= 0 && s < _LAYER_STATE_MAX ? layer_state_table[s] : NULL;
}

LayerState layer_state_from_string(const char *s) {
        for (int i = 0; i < _LAYER_STATE_MAX; i++)
                if (s && streq(s, layer_state_table[i]))
                        return (LayerState) i;
        return _LAYER_STATE_INVALID;
}

Layer *layer_free(Layer *l) {
        if (!l)
                return NULL;
        free(l->file);
        free(l->backing);
        free(l->data_file);
        free(l->catalog_name);
        free(l->vm);
        free(l);
        return NULL;
}

void disk_done(Disk *d) {
        free(d->name);
        free(d->quarantine);
        for (size_t i = 0; i < d->n_chain; i++)
                free(d->chain[i]);
        free(d->chain);
        *d = (Disk) {};
}

Vm *vm_free(Vm *v) {
        if (!v)
                return NULL;
        free(v->name);
        for (size_t i = 0; i < v->n_disks; i++)
                disk_done(&v->disks[i]);
        free(v->disks);
        free(v);
        return NULL;
}

static void add_string(struct json_object *o, const char *key, const char *value) {
        json_object_object_add(o, key, value ? json_object_new_string(value) : NULL);
}

static uint64_t record_writer;

void record_set_writer(uint64_t host_id) {
        record_writer = host_id <= RECORD_MAX_WRITER ? host_id : 0;
}

uint64_t record_get_writer(void) {
        return record_writer;
}

/* "writer": {"host_id": N}; none for 0 (local mode). */
static void add_writer(struct json_object *o, uint64_t writer) {
        struct json_object *w;

        if (writer == 0)
                return;
        w = json_object_new_object();
        json_object_object_add(w, "host_id", json_object_new_uint64(writer));
        json_object_object_add(o, "writer", w);
}

struct json_object *layer_to_json(const Layer *l) {
        struct json_object *o = json_object_new_object();

        json_object_object_add(o, "schema", json_object_new_int(RECORD_SCHEMA));
        add_string(o, "layer", l->id);
        add_string(o, "file", l->file);
        add_string(o, "format", image_format_to_string(l->format));
        json_object_object_add(o, "virtual_size", json_object_new_uint64(l->virtual_size));
        add_string(o, "backing_layer", l->backing);
        add_string(o, "backing_format", l->backing ? image_format_to_string(l->backing_format) : NULL);
        add_string(o, "data_file", l->data_file);
        if (l->data_file) {
                json_object_object_add(o, "data_file_raw", json_object_new_boolean(l->data_file_raw));
                json_object_object_add(o, "data_file_inode", json_object_new_uint64(l->data_inode));
        }
        add_string(o, "catalog_name", l->catalog_name);
        add_string(o, "vm", l->vm);
        add_string(o, "state", layer_state_to_string(l->state));
        json_object_object_add(o, "generation", json_object_new_uint64(l->generation));
        add_writer(o, l->writer);
        json_object_object_add(o, "inode", json_object_new_uint64(l->inode));
        return o;
}

/* Typed field access: a missing or mistyped field is -EBADMSG, never a default. */
static int get_string(struct json_object *o, const char *key, bool nullable, const char **ret) {
        struct json_object *v;

        if (!json_object_object_get_ex(o, key, &v))
                return -EBADMSG;
        if (!v) {
                if (!nullable)
                        return -EBADMSG;
                *ret = NULL;
                return 0;
        }
        if (!json_object_is_type(v, json_type_string))
                return -EBADMSG;
        *ret = json_object_get_string(v);
        return 0;
}

static int get_uint(struct json_object *o, const char *key, uint64_t max, uint64_t *ret) {
        struct json_object *v;
        int64_t i;

        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return -EBADMSG;
        /* json-c keeps large unsigned values; negative ones are refused. */
        i = json_object_get_int64(v);
        if (i < 0 && json_object_get_uint64(v) <= INT64_MAX)
                return -EBADMSG;
        if (json_object_get_uint64(v) > max)
                return -EBADMSG;
        *ret = json_object_get_uint64(v);
        return 0;
}

/* Optional (records of local mode, and of versions before it, have none); if there, well-formed. */
static int get_writer(struct json_object *o, uint64_t *ret) {
        struct json_object *w;
        int r;

        *ret = 0;
        if (!json_object_object_get_ex(o, "writer", &w))
                return 0;
        if (!w || !json_object_is_type(w, json_type_object) || json_object_object_length(w) != 1)
                return -EBADMSG;
        r = get_uint(w, "host_id", RECORD_MAX_WRITER, ret);
        if (r < 0)
                return r;
        return *ret == 0 ? -EBADMSG : 0;
}

int layer_from_json(struct json_object *o, Layer **ret) {
        _cleanup_(layer_freep) Layer *l = NULL;
        const char *id, *file, *format, *backing, *bformat, *data_file, *catalog, *vm, *state;
        int r;

        l = calloc(1, sizeof(Layer));
        if (!l)
                return -ENOMEM;

        if ((r = get_string(o, "layer", false, &id)) < 0 || (r = get_string(o, "file", false, &file)) < 0 ||
            (r = get_string(o, "format", false, &format)) < 0 ||
            (r = get_string(o, "backing_layer", true, &backing)) < 0 ||
            (r = get_string(o, "backing_format", true, &bformat)) < 0 ||
            (r = get_string(o, "data_file", true, &data_file)) < 0 ||
            (r = get_string(o, "catalog_name", true, &catalog)) < 0 || (r = get_string(o, "vm", true, &vm)) < 0 ||
            (r = get_string(o, "state", false, &state)) < 0 ||
            (r = get_uint(o, "virtual_size", UINT64_MAX, &l->virtual_size)) < 0 ||
            (r = get_uint(o, "generation", UINT64_MAX, &l->generation)) < 0 ||
            (r = get_writer(o, &l->writer)) < 0 ||
            (r = get_uint(o, "inode", UINT64_MAX, &l->inode)) < 0)
                return r;

        if (!layer_id_is_valid(id) || (backing && !layer_id_is_valid(backing)) || !!backing != !!bformat ||
            (catalog && !name_is_valid(catalog)) || (vm && !name_is_valid(vm)) || !!catalog == !!vm)
                return -EBADMSG;
        if (data_file) {
                /* Only vdisk's own, next to the layer: <id>.data; only private qcow2 layers have one. */
                char expected[LAYER_ID_LEN + 8];
                struct json_object *v;

                snprintf(expected, sizeof(expected), "%s.data", id);
                if (!streq(data_file, expected) || catalog || !streq(format, "qcow2"))
                        return -EBADMSG;
                if (!json_object_object_get_ex(o, "data_file_raw", &v) || !json_object_is_type(v, json_type_boolean))
                        return -EBADMSG;
                l->data_file_raw = json_object_get_boolean(v);
                if ((r = get_uint(o, "data_file_inode", UINT64_MAX, &l->data_inode)) < 0)
                        return r;
                l->data_file = strdup(data_file);
                if (!l->data_file)
                        return -ENOMEM;
        }
        memcpy(l->id, id, sizeof(l->id));
        l->format = image_format_from_string(format);
        l->backing_format = bformat ? image_format_from_string(bformat) : IMAGE_FORMAT_RAW;
        l->state = layer_state_from_string(state);
        if (l->format < 0 || l->backing_format < 0 || l->state < 0)
                return -EBADMSG;
        /* The file name is derived from the id; a record naming anything else is not ours. */
        {
                char expected[LAYER_ID_LEN + 8];
                snprintf(expected, sizeof(expected), "%s.%s", l->id, image_format_to_string(l->format));
                if (!streq(file, expected))
                        return -EBADMSG;
        }

        l->file = strdup(file);
        l->backing = strdup_or_null(backing);
        l->catalog_name = strdup_or_null(catalog);
        l->vm = strdup_or_null(vm);
        if (!l->file || (backing && !l->backing) || (catalog && !l->catalog_name) || (vm && !l->vm))
                return -ENOMEM;

        *ret = TAKE_PTR(l);
        return 0;
}

struct json_object *vm_to_json(const Vm *v) {
        struct json_object *o = json_object_new_object(), *disks = json_object_new_array();

        json_object_object_add(o, "schema", json_object_new_int(RECORD_SCHEMA));
        add_string(o, "name", v->name);
        json_object_object_add(o, "owner_uid", json_object_new_uint64(v->owner_uid));
        json_object_object_add(o, "generation", json_object_new_uint64(v->generation));
        add_writer(o, v->writer);
        for (size_t i = 0; i < v->n_disks; i++) {
                struct json_object *d = json_object_new_object(), *chain = json_object_new_array();

                add_string(d, "name", v->disks[i].name);
                for (size_t k = 0; k < v->disks[i].n_chain; k++)
                        json_object_array_add(chain, json_object_new_string(v->disks[i].chain[k]));
                json_object_object_add(d, "chain", chain);
                if (v->disks[i].quarantine)
                        add_string(d, "quarantine", v->disks[i].quarantine);
                json_object_array_add(disks, d);
        }
        json_object_object_add(o, "disks", disks);
        return o;
}

int vm_from_json(struct json_object *o, Vm **ret) {
        _cleanup_(vm_freep) Vm *v = NULL;
        struct json_object *disks;
        const char *name;
        uint64_t uid;
        size_t n;
        int r;

        v = calloc(1, sizeof(Vm));
        if (!v)
                return -ENOMEM;
        if ((r = get_string(o, "name", false, &name)) < 0 || (r = get_uint(o, "owner_uid", UINT32_MAX - 1, &uid)) < 0 ||
            (r = get_uint(o, "generation", UINT64_MAX, &v->generation)) < 0 || (r = get_writer(o, &v->writer)) < 0)
                return r;
        if (!name_is_valid(name))
                return -EBADMSG;
        v->name = strdup(name);
        if (!v->name)
                return -ENOMEM;
        v->owner_uid = (uid_t) uid;

        if (!json_object_object_get_ex(o, "disks", &disks) || !json_object_is_type(disks, json_type_array))
                return -EBADMSG;
        n = json_object_array_length(disks);
        v->disks = calloc(MAX(n, (size_t) 1), sizeof(Disk));
        if (!v->disks)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                struct json_object *d = json_object_array_get_idx(disks, i), *chain;
                Disk *disk = &v->disks[v->n_disks];
                const char *dname;

                if (!json_object_is_type(d, json_type_object) || get_string(d, "name", false, &dname) < 0 ||
                    !name_is_valid(dname) || !json_object_object_get_ex(d, "chain", &chain) ||
                    !json_object_is_type(chain, json_type_array) || json_object_array_length(chain) == 0)
                        return -EBADMSG;
                disk->name = strdup(dname);
                if (!disk->name)
                        return -ENOMEM;
                v->n_disks++;
                {
                        struct json_object *q;
                        if (json_object_object_get_ex(d, "quarantine", &q)) {
                                if (!json_object_is_type(q, json_type_string))
                                        return -EBADMSG;
                                disk->quarantine = strdup(json_object_get_string(q));
                                if (!disk->quarantine)
                                        return -ENOMEM;
                        }
                }
                disk->chain = calloc(json_object_array_length(chain), sizeof(char *));
                if (!disk->chain)
                        return -ENOMEM;
                for (size_t k = 0; k < json_object_array_length(chain); k++) {
                        struct json_object *c = json_object_array_get_idx(chain, k);
                        if (!json_object_is_type(c, json_type_string) || !layer_id_is_valid(json_object_get_string(c)))
                                return -EBADMSG;
                        disk->chain[disk->n_chain] = strdup(json_object_get_string(c));
                        if (!disk->chain[disk->n_chain])
                                return -ENOMEM;
                        disk->n_chain++;
                }
        }

        *ret = TAKE_PTR(v);
        return 0;
}

int vm_copy(const Vm *v, Vm **ret) {
        struct json_object *o = vm_to_json(v);
        int r = vm_from_json(o, ret);
        json_object_put(o);
        return r;
}

int record_write(int dirfd, const char *name, struct json_object *o) {
        _cleanup_close_ int fd = -EBADF;
        char tmp[256];
        const char *text;
        char rnd[LAYER_ID_LEN + 1];
        int r;

        r = layer_id_new(rnd);
        if (r < 0)
                return r;
        snprintf(tmp, sizeof(tmp), ".#%s.%.16s", name, rnd);
        text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!text)
                return -ENOMEM;
        if (strlen(text) > RECORD_MAX_SIZE)
                return -E2BIG;

        fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        r = format_pwrite_full(fd, text, strlen(text), 0);
        if (r >= 0 && fsync(fd) < 0)
                r = negative_errno();
        if (r >= 0 && renameat(dirfd, tmp, dirfd, name) < 0)
                r = negative_errno();
        if (r < 0) {
                (void) unlinkat(dirfd, tmp, 0);
                return r;
        }
        return fsync_directory(dirfd);
}

/* The reasons below spell the limits out. */
_Static_assert(RECORD_MAX_SIZE == 1048576 && RECORD_MAX_DEPTH == 8, "update the reasons of record_read_why()");

#define RECORD_WHY(r, text) (*ret_why = (text), (r))

int record_parse_why(const char *buf, size_t size, struct json_object **ret, const char **ret_why) {
        const char *ignored;
        struct json_tokener *tok;
        struct json_object *o, *schema;
        enum json_tokener_error e;
        int r;

        if (!ret_why)
                ret_why = &ignored;
        *ret_why = NULL;
        if (size > RECORD_MAX_SIZE)
                return RECORD_WHY(-E2BIG, "it is larger than the limit of 1048576 bytes (RECORD_MAX_SIZE)");

        tok = json_tokener_new_ex(RECORD_MAX_DEPTH);
        if (!tok)
                return -ENOMEM;
        o = json_tokener_parse_ex(tok, buf, (int) size);
        e = json_tokener_get_error(tok);
        r = e == json_tokener_success && tok->char_offset == (int) size ? 0 : -EBADMSG;
        json_tokener_free(tok);
        if (e == json_tokener_error_depth) {
                json_object_put(o);
                return RECORD_WHY(-EBADMSG, "its JSON is nested deeper than the limit of 8 levels (RECORD_MAX_DEPTH)");
        }
        if (r < 0 || !o || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                return RECORD_WHY(-EBADMSG, "it is not one complete JSON object");
        }

        if (!json_object_object_get_ex(o, "schema", &schema) || !json_object_is_type(schema, json_type_int) ||
            json_object_get_int64(schema) < 1) {
                json_object_put(o);
                return RECORD_WHY(-EBADMSG, "it has no valid \"schema\" number");
        }
        if (json_object_get_int64(schema) > RECORD_SCHEMA) {
                json_object_put(o);
                return RECORD_WHY(-EPROTONOSUPPORT, "it has a newer schema than this vdiskd understands");
        }

        *ret = o;
        return 0;
}

int record_read_why(int dirfd, const char *name, struct json_object **ret, const char **ret_why) {
        const char *ignored;
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        struct stat st;
        int r;

        if (!ret_why)
                ret_why = &ignored;
        *ret_why = NULL;

        fd = open_beneath(dirfd, name, O_RDONLY | O_NONBLOCK, 0); /* a FIFO must not block the daemon */
        if (fd < 0)
                return fd;
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode))
                return RECORD_WHY(-EBADMSG, "it is not a regular file");
        if ((uint64_t) st.st_size > RECORD_MAX_SIZE)
                return RECORD_WHY(-E2BIG, "it is larger than the limit of 1048576 bytes (RECORD_MAX_SIZE)");
        buf = malloc((size_t) st.st_size + 1);
        if (!buf)
                return -ENOMEM;
        r = format_pread_full(fd, buf, (size_t) st.st_size, 0);
        if (r < 0)
                return r;
        buf[st.st_size] = 0;
        return record_parse_why(buf, (size_t) st.st_size, ret, ret_why);
}

int record_read(int dirfd, const char *name, struct json_object **ret) {
        return record_read_why(dirfd, name, ret, NULL);
}

int record_remove(int dirfd, const char *name) {
        if (unlinkat(dirfd, name, 0) < 0 && errno != ENOENT)
                return negative_errno();
        return fsync_directory(dirfd);
}
