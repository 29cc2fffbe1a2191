/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <fcntl.h>
#include <search.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "recovery.h"
#include "store.h"

/* Rolls entry `i` (journal/<i->id>.json) forward if the store has reached its commit point, else back,
 * and ends it. */
static int replay_entry(Store *s, Intent *i) {
        int r;

        if (intent_committed(s, i)) {
                log_op(LOG_NOTICE, i->op, NULL, NULL, NULL, "Completing interrupted operation %s %s", i->op, i->id);
                r = journal_finish_modified(s, i);
                if (r >= 0)
                        journal_complete(s, i, false, NULL, NULL);
        } else {
                log_op(LOG_NOTICE, i->op, NULL, NULL, NULL, "Rolling back interrupted operation %s %s", i->op, i->id);
                r = journal_roll_back(s, i);
        }
        if (r < 0)
                return r;
        return journal_end(s, i);
}

/* Whether `name` is the name of a journal entry (<op-id>.json); temporaries are removed on the way when
 * `remove_temporaries`. */
static bool entry_name(Store *s, const char *name, bool remove_temporaries) {
        size_t len = strlen(name);

        if (name[0] == '.') {
                if (remove_temporaries && strncmp(name, STORE_TMP_PREFIX, strlen(STORE_TMP_PREFIX)) == 0)
                        (void) unlinkat(s->journal_fd, name, 0);
                return false;
        }
        if (len > 5 && streq(name + len - 5, ".undo"))
                return false; /* belongs to an entry; leftovers are removed after the replay */
        if (len != LAYER_ID_LEN + 5 || !streq(name + LAYER_ID_LEN, ".json")) {
                if (remove_temporaries)
                        log_warning("Ignoring unexpected file journal/%s", name);
                return false;
        }
        return true;
}

/* Reads entry `name` into `i`: 0, or a negative errno with `*ret_why` (may stay NULL) saying why. */
static int read_entry(Store *s, const char *name, Intent *i, const char **ret_why) {
        struct json_object *o = NULL;
        int r;

        r = record_read_why(s->journal_fd, name, &o, ret_why);
        if (r >= 0)
                r = intent_parse(o, i);
        json_object_put(o);
        if (r >= 0)
                memcpy(i->id, name, LAYER_ID_LEN); /* intent_parse() sets `i` only on success */
        return r;
}

static int replay_journal(Store *s) {
        DIR *d;
        struct dirent *de;
        int r = 0;

        r = store_opendir(s->journal_fd, &d);
        if (r < 0)
                return r;

        while ((de = readdir(d))) {
                const char *why = NULL;
                Intent i = {};

                if (!entry_name(s, de->d_name, true))
                        continue;
                r = read_entry(s, de->d_name, &i, &why);
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
                r = replay_entry(s, &i);
                if (r < 0)
                        log_error_errno(r, "Cannot replay journal entry %s; refusing to start", de->d_name);
                intent_done(&i);
                if (r < 0)
                        break;
        }
        closedir(d);
        return r < 0 ? r : 0;
}

void intent_lease_name(const Intent *i, char *buf, size_t size) {
        switch (i->commit) {
        case INTENT_COMMIT_LAYER_READY:   /* create-image, import */
        case INTENT_COMMIT_LAYER_DELETED: /* delete-image */
                snprintf(buf, size, "catalog");
                break;
        default: /* the VM record's operations */
                snprintf(buf, size, "vm:%s", i->commit_name);
        }
}

int store_recover_lease(Store *s, const char *lease, size_t *ret_n) {
        DIR *d;
        struct dirent *de;
        size_t n = 0;
        int r;

        r = store_opendir(s->journal_fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d))) {
                char name[CLUSTER_LEASE_NAME_MAX + 1];
                const char *why = NULL;
                Intent i = {};

                if (!entry_name(s, de->d_name, false))
                        continue;
                r = read_entry(s, de->d_name, &i, &why);
                if (r == -ENOENT) { /* ended meanwhile by its own host */
                        intent_done(&i);
                        continue;
                }
                if (r < 0) {
                        /* Whose it is cannot be known: it waits for the start of the host that wrote it (or
                         * an administrator). Nothing else is touched. */
                        log_warning("Journal entry %s cannot be read (%s); leaving it", de->d_name, why ?: strerror(-r));
                        intent_done(&i);
                        continue;
                }
                intent_lease_name(&i, name, sizeof(name));
                if (streq(name, lease)) {
                        r = replay_entry(s, &i);
                        if (r < 0) {
                                log_error_errno(r, "Cannot recover journal entry %s (%s)", de->d_name, lease);
                                intent_done(&i);
                                break;
                        }
                        n++;
                }
                intent_done(&i);
                r = 0;
        }
        closedir(d);
        if (ret_n)
                *ret_n = n;
        return r;
}

int store_pending_entries(Store *s, char ***ret_entries, char ***ret_leases, size_t *ret_n) {
        char **entries = NULL, **leases = NULL;
        size_t n = 0, n_leases = 0;
        DIR *d;
        struct dirent *de;
        int r;

        r = store_opendir(s->journal_fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d))) {
                char name[CLUSTER_LEASE_NAME_MAX + 1];
                Intent i = {};

                if (!entry_name(s, de->d_name, false) || read_entry(s, de->d_name, &i, NULL) < 0) {
                        intent_done(&i);
                        continue;
                }
                intent_lease_name(&i, name, sizeof(name));
                intent_done(&i);
                r = strv_push(&entries, &n, de->d_name);
                if (r >= 0)
                        r = strv_push(&leases, &n_leases, name);
                if (r < 0)
                        break;
        }
        closedir(d);
        if (r < 0) {
                strv_free(entries);
                strv_free(leases);
                return r;
        }
        *ret_entries = entries;
        *ret_leases = leases;
        *ret_n = n;
        return 0;
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

/* The same table as a map: `s` to `data`. */
static int string_map_put(StringSet *set, const char *s, void *data) {
        ENTRY e = { .key = (char *) s, .data = data }, *found;
        return hsearch_r(e, ENTER, &found, &set->table) ? 0 : -ENOMEM;
}

static void *string_map_get(StringSet *set, const char *s) {
        ENTRY e = { .key = (char *) s }, *found;
        return hsearch_r(e, FIND, &found, &set->table) ? found->data : NULL;
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
                r = store_opendir(s->images_fd, &d);
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

        if (store_opendir(s->journal_fd, &d) < 0)
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

/* ---- Cluster mode: the sweep of the shared store (docs/design.md, "The orphan sweep in cluster mode") ---- */

#define SWEEP_TMP_AGE_SEC (60 * 60)

/* What one pass saw, in the order it saw it: L (the listings), J (journal ids), R (the records). */
typedef struct SweepState {
        char **layer_records, **images, **undo_logs; /* L: candidates */
        size_t n_layer_records, n_images, n_undo_logs;
        char **tmp_records, **tmp_journal;           /* L: temporaries of records/ and journal/ */
        size_t n_tmp_records, n_tmp_journal;
        char **protected_ids; /* J1 ∪ J2: every layer id an entry names */
        size_t n_protected_ids;
        char **entry_ids;     /* J1 ∪ J2: the entries' own ids (their undo logs) */
        size_t n_entry_ids;
        char **used;          /* R: every layer id a disk's chain names */
        size_t n_used;
        Layer **layers;       /* R: every layer record */
        size_t n_layers;
        StringSet protected_set, entry_set, used_set, files_set, layer_map;
} SweepState;

static void sweep_state_done(SweepState *st) {
        strv_free(st->layer_records);
        strv_free(st->images);
        strv_free(st->undo_logs);
        strv_free(st->tmp_records);
        strv_free(st->tmp_journal);
        strv_free(st->protected_ids);
        strv_free(st->entry_ids);
        strv_free(st->used);
        for (size_t i = 0; i < st->n_layers; i++)
                layer_free(st->layers[i]);
        free(st->layers);
        string_set_done(&st->protected_set);
        string_set_done(&st->entry_set);
        string_set_done(&st->used_set);
        string_set_done(&st->files_set);
        string_set_done(&st->layer_map);
        *st = (SweepState) {};
}

/* L: names in records/ (layer records, temporaries), images/ (everything) and journal/ (undo logs,
 * temporaries), listed before the journal is read. */
static int sweep_list(Store *s, SweepState *st) {
        struct dirent *de;
        DIR *d;
        int r;

        r = store_opendir(s->records_fd, &d);
        if (r < 0)
                return r;
        while (r >= 0 && (de = readdir(d))) {
                const char *n = de->d_name, *id = startswith(n, "layer-");
                if (startswith(n, STORE_TMP_PREFIX))
                        r = strv_push(&st->tmp_records, &st->n_tmp_records, n);
                else if (id && strlen(id) == LAYER_ID_LEN + 5 && streq(id + LAYER_ID_LEN, ".json"))
                        r = strv_push(&st->layer_records, &st->n_layer_records, n);
        }
        closedir(d);
        if (r < 0)
                return r;

        r = store_opendir(s->images_fd, &d);
        if (r < 0)
                return r;
        while (r >= 0 && (de = readdir(d)))
                if (!streq(de->d_name, ".") && !streq(de->d_name, ".."))
                        r = strv_push(&st->images, &st->n_images, de->d_name);
        closedir(d);
        if (r < 0)
                return r;

        r = store_opendir(s->journal_fd, &d);
        if (r < 0)
                return r;
        while (r >= 0 && (de = readdir(d))) {
                const char *n = de->d_name;
                size_t len = strlen(n);
                if (startswith(n, STORE_TMP_PREFIX))
                        r = strv_push(&st->tmp_journal, &st->n_tmp_journal, n);
                else if (len > LAYER_ID_LEN + 5 && n[LAYER_ID_LEN] == '-' && streq(n + len - 5, ".undo"))
                        r = strv_push(&st->undo_logs, &st->n_undo_logs, n);
        }
        closedir(d);
        return r;
}

/* J: every journal entry; what it names is protected. An entry that cannot be read stops the sweep:
 * what it names cannot be known. */
static int sweep_read_journal(Store *s, SweepState *st, size_t *ret_n) {
        struct dirent *de;
        size_t n = 0;
        DIR *d;
        int r;

        r = store_opendir(s->journal_fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d))) {
                const char *why = NULL;
                Intent i = {};

                if (!entry_name(s, de->d_name, false))
                        continue;
                r = read_entry(s, de->d_name, &i, &why);
                if (r == -ENOENT) { /* ended meanwhile */
                        intent_done(&i);
                        r = 0;
                        continue;
                }
                if (r < 0) {
                        log_warning("Journal entry %s cannot be read (%s): no orphan sweep", de->d_name, why ?: strerror(-r));
                        intent_done(&i);
                        break;
                }
                n++;
                r = strv_push(&st->entry_ids, &st->n_entry_ids, i.id);
                for (size_t k = 0; r >= 0 && k < i.n_new; k++)
                        r = strv_push(&st->protected_ids, &st->n_protected_ids, i.new_layers[k]);
                for (size_t k = 0; r >= 0 && k < i.n_drop; k++)
                        r = strv_push(&st->protected_ids, &st->n_protected_ids, i.drop_layers[k]);
                for (size_t k = 0; r >= 0 && k < i.n_modify; k++)
                        r = strv_push(&st->protected_ids, &st->n_protected_ids, i.modify[k].layer);
                for (size_t k = 0; r >= 0 && k < i.n_commit_chain; k++)
                        r = strv_push(&st->protected_ids, &st->n_protected_ids, i.commit_chain[k]);
                intent_done(&i);
                if (r < 0)
                        break;
        }
        closedir(d);
        if (ret_n)
                *ret_n = n;
        return r < 0 ? r : 0;
}

/* R: every VM record's chains and every layer record, read from disk now (this host's memory may be
 * stale). A record that cannot be read stops the sweep: what it names cannot be known. */
static int sweep_read_records(Store *s, SweepState *st) {
        struct dirent *de;
        DIR *d;
        int r;

        r = store_opendir(s->records_fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d))) {
                const char *n = de->d_name, *why = NULL;
                bool is_vm = startswith(n, "vm-"), is_layer = startswith(n, "layer-");
                struct json_object *o = NULL;
                Layer *l = NULL;
                Vm *v = NULL;

                if (!is_vm && !is_layer)
                        continue;
                r = record_read_why(s->records_fd, n, &o, &why);
                if (r == -ENOENT) { /* removed meanwhile */
                        r = 0;
                        continue;
                }
                if (r >= 0)
                        r = is_vm ? vm_from_json(o, &v) : layer_from_json(o, &l);
                json_object_put(o);
                if (r >= 0 && l && !(strlen(n) == LAYER_ID_LEN + 11 && strncmp(n + 6, l->id, LAYER_ID_LEN) == 0))
                        r = -EBADMSG;
                if (r < 0) {
                        log_warning("Record records/%s cannot be read (%s): no orphan sweep", n, why ?: strerror(-r));
                        layer_free(l);
                        break;
                }
                for (size_t k = 0; v && r >= 0 && k < v->n_disks; k++)
                        for (size_t c = 0; r >= 0 && c < v->disks[k].n_chain; c++)
                                r = strv_push(&st->used, &st->n_used, v->disks[k].chain[c]);
                vm_free(v);
                if (l) {
                        Layer **a = reallocarray(st->layers, st->n_layers + 1, sizeof(Layer *));
                        if (!a) {
                                layer_free(l);
                                r = -ENOMEM;
                        } else {
                                st->layers = a;
                                st->layers[st->n_layers++] = l;
                        }
                }
                if (r < 0)
                        break;
        }
        closedir(d);
        return r < 0 ? r : 0;
}

static int set_of(StringSet *set, char **v, size_t n) {
        int r = string_set_init(set, n);
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = string_set_add(set, v[i]);
        return r;
}

static int sweep_index(SweepState *st) {
        int r;

        if ((r = set_of(&st->protected_set, st->protected_ids, st->n_protected_ids)) < 0 ||
            (r = set_of(&st->entry_set, st->entry_ids, st->n_entry_ids)) < 0 ||
            (r = set_of(&st->used_set, st->used, st->n_used)) < 0)
                return r;
        r = string_set_init(&st->files_set, 2 * st->n_layers);
        for (size_t i = 0; r >= 0 && i < st->n_layers; i++) {
                r = string_set_add(&st->files_set, st->layers[i]->file);
                if (r >= 0 && st->layers[i]->data_file)
                        r = string_set_add(&st->files_set, st->layers[i]->data_file);
        }
        if (r >= 0)
                r = string_set_init(&st->layer_map, st->n_layers);
        for (size_t i = 0; r >= 0 && i < st->n_layers; i++)
                r = string_map_put(&st->layer_map, st->layers[i]->id, st->layers[i]);
        return r;
}

/* Whether the first LAYER_ID_LEN characters of `name` are a layer id some entry names. */
static bool names_protected(SweepState *st, const char *name) {
        char id[LAYER_ID_LEN + 1];

        if (strlen(name) < LAYER_ID_LEN)
                return false;
        memcpy(id, name, LAYER_ID_LEN);
        id[LAYER_ID_LEN] = 0;
        return string_set_contains(&st->protected_set, id);
}

static bool entry_named(SweepState *st, const char *name) {
        char id[LAYER_ID_LEN + 1];

        if (strlen(name) < LAYER_ID_LEN)
                return false;
        memcpy(id, name, LAYER_ID_LEN);
        id[LAYER_ID_LEN] = 0;
        return string_set_contains(&st->entry_set, id);
}

static Layer *sweep_find_layer(SweepState *st, const char *id) {
        return string_map_get(&st->layer_map, id);
}

/* A temporary of an interrupted atomic write: only once it is old (an atomic write of a live host
 * ends within one call; a host stopped for longer than its lease's expiry is fenced). */
static bool old_enough(int dir_fd, const char *name) {
        struct stat st;

        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return false;
        return st.st_mtime + SWEEP_TMP_AGE_SEC < time(NULL);
}

static void sweep_remove(int dir_fd, const char *dir, const char *name, bool *removed) {
        if (unlinkat(dir_fd, name, 0) < 0) {
                if (errno != ENOENT)
                        log_warning_errno(errno, "Failed to remove %s/%s", dir, name);
                return;
        }
        *removed = true;
}

/* A layer record (as read in R) no entry names that is an orphan: not in any chain, and not ready or
 * private. A layer left modifying is not (its entry, if any, is its VM's to recover; the record is
 * written only under its VM's lease). */
static bool orphan_layer(SweepState *st, const Layer *l) {
        return l->state != LAYER_MODIFYING && !string_set_contains(&st->used_set, l->id) &&
                !(l->state == LAYER_READY && l->catalog_name);
}

/* The decisions, from L, J1 ∪ J2 and R; nothing removed when `dry_run`. */
static void sweep_decide(Store *s, SweepState *st, bool dry_run, StoreSweep *res) {
        bool rm_records = false, rm_images = false, rm_journal = false;
        Layer **orphans = NULL, **a;
        size_t n_orphans = 0;

        /* Layer records: the record first (as store_delete_layer(): a crash leaves only files). */
        for (size_t i = 0; i < st->n_layer_records; i++) {
                const char *name = st->layer_records[i];
                char id[LAYER_ID_LEN + 1] = {};
                Layer *l;

                memcpy(id, name + strlen("layer-"), LAYER_ID_LEN); /* listed as layer-<id>.json */
                if (names_protected(st, id)) {
                        res->kept++;
                        continue;
                }
                l = sweep_find_layer(st, id);
                if (!l || !orphan_layer(st, l))
                        continue; /* gone meanwhile, or not an orphan */
                res->orphans++;
                if (dry_run)
                        continue;
                log_warning("Removing orphaned layer %s (%s)", l->id, layer_state_to_string(l->state));
                sweep_remove(s->records_fd, "records", name, &rm_records);
                res->removed++;
                a = reallocarray(orphans, n_orphans + 1, sizeof(Layer *));
                if (!a)
                        continue; /* its files go as orphaned files next time */
                orphans = a;
                orphans[n_orphans++] = l;
        }
        if (rm_records)
                (void) fsync_directory(s->records_fd);
        for (size_t i = 0; i < n_orphans; i++) {
                sweep_remove(s->images_fd, "images", orphans[i]->file, &rm_images);
                if (orphans[i]->data_file)
                        sweep_remove(s->images_fd, "images", orphans[i]->data_file, &rm_images);
        }
        free(orphans);

        /* Files no record of R accounts for and no entry names (the files of the orphans just removed
         * are accounted for); temporaries only once old. */
        for (size_t i = 0; i < st->n_images; i++) {
                const char *name = st->images[i], *tmp = startswith(name, STORE_TMP_PREFIX);

                if (names_protected(st, tmp ?: name)) {
                        res->kept++;
                        continue;
                }
                if (tmp ? !old_enough(s->images_fd, name) : string_set_contains(&st->files_set, name))
                        continue;
                res->orphans++;
                if (dry_run)
                        continue;
                log_warning("Removing orphaned file images/%s", name);
                sweep_remove(s->images_fd, "images", name, &rm_images);
                res->removed++;
        }
        if (rm_images)
                (void) fsync_directory(s->images_fd);

        /* Undo logs of no entry in J1 or J2 (an entry is written before its undo logs). */
        for (size_t i = 0; i < st->n_undo_logs; i++) {
                const char *name = st->undo_logs[i];
                if (entry_named(st, name)) {
                        res->kept++;
                        continue;
                }
                res->orphans++;
                if (dry_run)
                        continue;
                log_warning("Removing undo log journal/%s of no pending operation", name);
                sweep_remove(s->journal_fd, "journal", name, &rm_journal);
                res->removed++;
        }
        /* Temporaries of records/ and journal/: atomic writes, old ones only. */
        for (size_t i = 0; i < st->n_tmp_journal + st->n_tmp_records; i++) {
                bool journal = i < st->n_tmp_journal;
                const char *name = journal ? st->tmp_journal[i] : st->tmp_records[i - st->n_tmp_journal];
                int fd = journal ? s->journal_fd : s->records_fd;

                if (!old_enough(fd, name))
                        continue;
                res->orphans++;
                if (dry_run)
                        continue;
                log_warning("Removing temporary %s/%s of an interrupted write", journal ? "journal" : "records", name);
                sweep_remove(fd, journal ? "journal" : "records", name, journal ? &rm_journal : &rm_records);
                res->removed++;
        }
        if (rm_journal)
                (void) fsync_directory(s->journal_fd);
        if (rm_records)
                (void) fsync_directory(s->records_fd);
}

int store_sweep_shared(Store *s, bool dry_run, StoreSweep *ret) {
        _cleanup_(sweep_state_done) SweepState st = {};
        StoreSweep res = {};
        int r;

        /* The order is the proof (docs/design.md): L, then J1, then R, then J2. */
        r = sweep_list(s, &st);
        if (r >= 0)
                r = sweep_read_journal(s, &st, &res.pending);
        if (r >= 0)
                r = sweep_read_records(s, &st);
        if (r >= 0)
                r = sweep_read_journal(s, &st, NULL);
        if (r >= 0)
                r = sweep_index(&st);
        if (r < 0)
                return r;
        sweep_decide(s, &st, dry_run, &res);
        if (ret)
                *ret = res;
        return 0;
}
