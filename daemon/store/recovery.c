/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <search.h>
#include <stdio.h>
#include <string.h>
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
