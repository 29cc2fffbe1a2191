/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Cluster mode: records another host may have changed are read again from disk under their lease (the
 * in-memory copies are a hint). Each record is read and validated exactly as at start (record_read_why,
 * layer_from_json, vm_from_json, the file name matching the record's name); a record that fails leaves
 * the in-memory store unchanged and the caller's operation fails.
 */

#include <inttypes.h>
#include <dirent.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "store.h"

typedef struct LayerList {
        Layer **items;
        size_t n;
} LayerList;

static void layer_list_done(LayerList *l) {
        for (size_t i = 0; i < l->n; i++)
                layer_free(l->items[i]);
        free(l->items);
        *l = (LayerList) {};
}

static int ptr_append(void ***array, size_t *n, void *item) {
        void **a = reallocarray(*array, *n + 1, sizeof(void *));
        if (!a)
                return -ENOMEM;
        a[(*n)++] = item;
        *array = a;
        return 0;
}

static Layer *layer_list_find(const LayerList *l, const char *id) {
        for (size_t i = 0; i < l->n; i++)
                if (streq(l->items[i]->id, id))
                        return l->items[i];
        return NULL;
}

/* Reads records/<name> as at start: -ENOENT if absent, -EBADMSG (logged) if it cannot be used. */
static int read_record(Store *s, const char *name, struct json_object **ret) {
        const char *why = NULL;
        int r;

        r = record_read_why(s->records_fd, name, ret, &why);
        if (r == -ENOENT)
                return r;
        if (r < 0) {
                log_error("Record %s/records/%s cannot be read again: %s", s->path, name, why ?: strerror(-r));
                return r == -EPROTONOSUPPORT || r == -E2BIG ? r : -EBADMSG;
        }
        return 0;
}

static int read_layer(Store *s, const char *file, const char *want_id, Layer **ret) {
        struct json_object *o = NULL;
        char expect[64];
        Layer *l = NULL;
        int r;

        r = read_record(s, file, &o);
        if (r < 0)
                return r;
        r = layer_from_json(o, &l);
        json_object_put(o);
        if (r >= 0) {
                snprintf(expect, sizeof(expect), "layer-%s.json", l->id);
                if (!streq(expect, file) || (want_id && !streq(l->id, want_id)))
                        r = -EBADMSG;
        }
        if (r < 0) {
                layer_free(l);
                return log_error_errno(EBADMSG, "Record %s/records/%s is malformed", s->path, file);
        }
        *ret = l;
        return 0;
}

/* Puts `l` into the store in place of the layer of its id (keeping that one's pins), or appends it. */
static int layer_install(Store *s, Layer *l) {
        for (size_t i = 0; i < s->n_layers; i++)
                if (streq(s->layers[i]->id, l->id)) {
                        l->pins = s->layers[i]->pins;
                        layer_free(s->layers[i]);
                        s->layers[i] = l;
                        s->layer_index_stale = true;
                        return 0;
                }
        s->layer_index_stale = true;
        return ptr_append((void ***) &s->layers, &s->n_layers, l);
}

static void layer_drop(Store *s, size_t i) {
        layer_free(s->layers[i]);
        memmove(s->layers + i, s->layers + i + 1, (s->n_layers - i - 1) * sizeof(Layer *));
        s->n_layers--;
        s->layer_index_stale = true;
}

static int read_vm(Store *s, const char *name, Vm **ret) {
        struct json_object *o = NULL;
        char file[96], expect[96];
        Vm *v = NULL;
        int r;

        snprintf(file, sizeof(file), "vm-%s.json", name);
        r = read_record(s, file, &o);
        if (r < 0)
                return r;
        r = vm_from_json(o, &v);
        json_object_put(o);
        if (r >= 0) {
                snprintf(expect, sizeof(expect), "vm-%s.json", v->name);
                if (!streq(expect, file))
                        r = -EBADMSG;
        }
        if (r < 0) {
                vm_free(v);
                return log_error_errno(EBADMSG, "Record %s/records/%s is malformed", s->path, file);
        }
        *ret = v;
        return 0;
}

int store_reload_vm(Store *s, const char *name) {
        _cleanup_(vm_freep) Vm *v = NULL;
        _cleanup_(layer_list_done) LayerList fresh = {};
        Vm *old;
        int r;

        r = read_vm(s, name, &v);
        if (r < 0 && r != -ENOENT)
                return r;

        /* Every layer its chains name: private layers (ours) always, catalog images this store did not
         * know yet (a catalog image never changes once ready; the catalog's own reload refreshes them). */
        for (size_t d = 0; v && d < v->n_disks; d++)
                for (size_t k = 0; k < v->disks[d].n_chain; k++) {
                        const char *id = v->disks[d].chain[k];
                        const Layer *known = store_find_layer(s, id);
                        char file[64];
                        Layer *l = NULL;

                        if (layer_list_find(&fresh, id) || (known && known->catalog_name))
                                continue;
                        snprintf(file, sizeof(file), "layer-%s.json", id);
                        r = read_layer(s, file, id, &l);
                        if (r == -ENOENT)
                                return log_error_errno(EBADMSG, "VM %s names layer %s, which has no record", name, id);
                        if (r < 0)
                                return r;
                        if (!l->catalog_name && !streq_ptr(l->vm, name)) {
                                layer_free(l);
                                return log_error_errno(EBADMSG, "VM %s names layer %s of another VM", name, id);
                        }
                        r = ptr_append((void ***) &fresh.items, &fresh.n, l);
                        if (r < 0) {
                                layer_free(l);
                                return r;
                        }
                }

        /* Everything read: now the in-memory store follows, and cannot fail half-way but for memory. */
        for (size_t i = 0; i < s->n_layers;) {
                Layer *l = s->layers[i];
                if (streq_ptr(l->vm, name) && !l->catalog_name && !layer_list_find(&fresh, l->id)) {
                        layer_drop(s, i);
                        continue;
                }
                i++;
        }
        while (fresh.n > 0) {
                r = layer_install(s, fresh.items[fresh.n - 1]);
                if (r < 0)
                        return r;
                fresh.n--;
        }

        old = store_find_vm(s, name);
        if (!v) {
                if (old) {
                        for (size_t i = 0; i < s->n_vms; i++)
                                if (s->vms[i] == old) {
                                        memmove(s->vms + i, s->vms + i + 1, (s->n_vms - i - 1) * sizeof(Vm *));
                                        s->n_vms--;
                                        break;
                                }
                        vm_free(old);
                }
                return 0;
        }
        if (old) {
                if (v->generation != old->generation && v->writer)
                        log_debug("VM %s: record generation %" PRIu64 " -> %" PRIu64 ", written by cluster host %" PRIu64, name,
                                  old->generation, v->generation, v->writer);
                for (size_t i = 0; i < s->n_vms; i++)
                        if (s->vms[i] == old)
                                s->vms[i] = TAKE_PTR(v);
                vm_free(old);
                return 0;
        }
        r = ptr_append((void ***) &s->vms, &s->n_vms, v);
        if (r < 0)
                return r;
        TAKE_PTR(v);
        return 0;
}

int store_reload_catalog(Store *s) {
        _cleanup_(layer_list_done) LayerList fresh = {};
        struct dirent *de;
        DIR *d;
        int r;

        r = store_opendir(s->records_fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d))) {
                const char *n = de->d_name;
                Layer *l = NULL;

                if (strncmp(n, "layer-", 6) != 0)
                        continue;
                r = read_layer(s, n, NULL, &l);
                if (r == -ENOENT) /* removed meanwhile by this host's own clean-up: not a catalog image */
                        continue;
                if (r < 0)
                        break;
                if (!l->catalog_name) {
                        layer_free(l);
                        continue;
                }
                r = ptr_append((void ***) &fresh.items, &fresh.n, l);
                if (r < 0) {
                        layer_free(l);
                        break;
                }
        }
        closedir(d);
        if (r < 0)
                return r;

        /* Catalog images gone from disk leave memory unless something here still uses them. */
        for (size_t i = 0; i < s->n_layers;) {
                Layer *l = s->layers[i];
                if (l->catalog_name && !layer_list_find(&fresh, l->id) && l->pins == 0 && store_count_users(s, l->id) == 0) {
                        layer_drop(s, i);
                        continue;
                }
                i++;
        }
        /* New ones come in; known ones are replaced when another host changed them (an import became
         * ready), unless a running operation here holds on to them. */
        while (fresh.n > 0) {
                Layer *l = fresh.items[--fresh.n];
                const Layer *known = store_find_layer(s, l->id);

                if (known && (known->pins > 0 || (known->state == l->state && known->generation == l->generation))) {
                        layer_free(l);
                        continue;
                }
                r = layer_install(s, l);
                if (r < 0) {
                        layer_free(l);
                        return r;
                }
        }
        return 0;
}
