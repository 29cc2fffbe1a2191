/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image-lock.h"
#include "log.h"
#include "open-disk.h"
#include "util.h"
#include "vdisk-bus.h"

/* What snprintf(ret, size, "%s", src) writes, and what snprintf(ret, size, "%s%zu", prefix, n) writes: a
 * 100-layer OpenDisk formats about a thousand node names and fd paths, and snprintf() was a tenth of its
 * CPU time (B6). */
static void copy_bounded(char *ret, size_t size, const char *src) {
        size_t n = strnlen(src, size - 1);

        memcpy(ret, src, n);
        ret[n] = 0;
}

static void prefix_number(char *ret, size_t size, const char *prefix, size_t n) {
        char digits[24];
        size_t i = sizeof(digits), len;

        do
                digits[--i] = (char) ('0' + n % 10);
        while ((n /= 10) > 0);
        copy_bounded(ret, size, prefix);
        len = strlen(ret);
        for (; i < sizeof(digits) && len + 1 < size; i++)
                ret[len++] = digits[i];
        ret[len] = 0;
}

/* The records of the disk's layers, top first (NULL where one is missing: the caller says so when it
 * matters), looked up once for all the passes below. */
static int chain_layers(Store *s, const Disk *d, Layer ***ret) {
        Layer **layers = calloc(MAX(d->n_chain, (size_t) 1), sizeof(Layer *));

        if (!layers)
                return -ENOMEM;
        for (size_t k = 0; k < d->n_chain; k++)
                layers[k] = store_find_layer(s, d->chain[k]);
        *ret = layers;
        return 0;
}

/* The fds a lease of the disk opens: one per layer, and one per data file. */
static size_t chain_fd_count(const Disk *d, Layer *const *layers) {
        size_t n = 0;
        for (size_t k = 0; k < d->n_chain; k++)
                n += layers[k] && layers[k]->data_file ? 2 : 1;
        return n;
}

static int add_node(struct json_object *nodes, struct json_object *node) {
        if (!node || json_object_array_add(nodes, node) < 0) {
                json_object_put(node);
                return -ENOMEM;
        }
        return 0;
}

/* Keys are string constants, each added once: json-c need not copy them nor look them up first. */
static int add_member(struct json_object *o, const char *key, struct json_object *value) {
        return json_object_object_add_ex(o, key, value, JSON_C_OBJECT_ADD_KEY_IS_NEW | JSON_C_OBJECT_KEY_IS_CONSTANT);
}

/* The file nodes of an export's backing layers are opened read-only (their fds are), but may become
 * writable when a live commit hands the helper a read-write fd of the layer to commit into: QEMU
 * reopens a file node for writing only if it was added with "auto-read-only". Their format nodes stay
 * "read-only": true (QEMU 7.2 refuses a writable format node over a read-only file). */
static int add_mode(struct json_object *o, bool ro, bool reopenable) {
        if (reopenable && ro)
                return add_member(o, "read-only", json_object_new_boolean(false)) < 0 ||
                                       add_member(o, "auto-read-only", json_object_new_boolean(true)) < 0
                               ? -ENOMEM
                               : 0;
        return add_member(o, "read-only", json_object_new_boolean(ro)) < 0 ? -ENOMEM : 0;
}

static struct json_object *file_node(const char *name, size_t fdset, bool ro, bool reopenable) {
        struct json_object *o = json_object_new_object();
        char path[32];

        if (!o)
                return NULL;
        prefix_number(path, sizeof(path), "/dev/fdset/", fdset);
        if (add_member(o, "node-name", json_object_new_string(name)) < 0 ||
            add_member(o, "driver", json_object_new_string("file")) < 0 ||
            add_member(o, "filename", json_object_new_string(path)) < 0 || add_mode(o, ro, reopenable) < 0)
                return json_object_put(o), NULL;
        return o;
}

void export_node_name(char ret[static EXPORT_NODE_NAME_MAX], char kind, const char *layer_id) {
        ret[0] = kind;
        memcpy(ret + 1, layer_id, EXPORT_NODE_NAME_MAX - 2);
        ret[EXPORT_NODE_NAME_MAX - 1] = 0;
}

/* Node names: a launcher's are named after the disk at the top, "vdisk-layer-<k>" (format),
 * "vdisk-file-<k>", "vdisk-data-<k>" below it; a helper's after their layer, which stays the same as the
 * chain grows and shrinks under live operations: "L", "F" or "D" and the layer id's first 30 digits. */
static void node_names(const Disk *d, size_t k, bool for_export, char name[static 48], char file[static 48],
                       char data[static 48], char below[static 48]) {
        if (for_export) {
                export_node_name(name, 'L', d->chain[k]);
                export_node_name(file, 'F', d->chain[k]);
                export_node_name(data, 'D', d->chain[k]);
                if (k + 1 < d->n_chain)
                        export_node_name(below, 'L', d->chain[k + 1]);
                return;
        }
        if (k == 0)
                copy_bounded(name, 48, d->name);
        else
                prefix_number(name, 48, "vdisk-layer-", k);
        prefix_number(file, 48, "vdisk-file-", k);
        prefix_number(data, 48, "vdisk-data-", k);
        prefix_number(below, 48, "vdisk-layer-", k + 1);
}

static struct json_object *format_node(const Disk *d, const Layer *l, size_t k, bool ro, const char *name,
                                       const char *file, const char *data, const char *below) {
        struct json_object *o = json_object_new_object();

        if (!o)
                return NULL;
        if (add_member(o, "node-name", json_object_new_string(name)) < 0 ||
            add_member(o, "driver", json_object_new_string(image_format_to_string(l->format))) < 0 ||
            add_member(o, "file", json_object_new_string(file)) < 0)
                return json_object_put(o), NULL;
        if (l->format == IMAGE_FORMAT_QCOW2) {
                /* The data file in its parent's mode; QEMU never opens the name in the header. */
                if (l->data_file && add_member(o, "data-file", json_object_new_string(data)) < 0)
                        return json_object_put(o), NULL;
                /* Every backing node named explicitly; the deepest has none (null, not absent). */
                if (add_member(o, "backing", k + 1 < d->n_chain ? json_object_new_string(below) : NULL) < 0)
                        return json_object_put(o), NULL;
        }
        if (add_mode(o, ro, false) < 0)
                return json_object_put(o), NULL;
        return o;
}

static int chain_blockdev(const Disk *d, Layer *const *layers, bool read_only, bool for_export, char **ret) {
        _cleanup_free_ size_t *fd_index = NULL;
        struct json_object *nodes;
        const char *text;
        size_t n = 0;
        int r = 0;

        /* fds are top first, each layer's data file right after it. */
        fd_index = calloc(MAX(d->n_chain, (size_t) 1), sizeof(size_t));
        if (!fd_index)
                return -ENOMEM;
        for (size_t k = 0; k < d->n_chain; k++) {
                if (!layers[k])
                        return -EBADMSG;
                fd_index[k] = n;
                n += layers[k]->data_file ? 2 : 1;
        }

        nodes = json_object_new_array();
        if (!nodes)
                return -ENOMEM;
        for (size_t k = d->n_chain; r >= 0 && k-- > 0;) {
                const Layer *l = layers[k];
                bool ro = k > 0 || read_only;
                bool reopenable = for_export && !read_only && k > 0;
                char name[48], file[48], data[48], below[48];

                node_names(d, k, for_export, name, file, data, below);
                r = add_node(nodes, file_node(file, fd_index[k] + 1, ro, reopenable));
                if (r >= 0 && l->data_file)
                        r = add_node(nodes, file_node(data, fd_index[k] + 2, ro, reopenable));
                if (r >= 0)
                        r = add_node(nodes, format_node(d, l, k, ro, name, file, data, below));
        }
        text = r >= 0 ? json_object_to_json_string_ext(nodes, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE) : NULL;
        *ret = text ? strdup(text) : NULL;
        json_object_put(nodes);
        if (r < 0)
                return r;
        return *ret ? 0 : -ENOMEM;
}

int open_disk_blockdev(Store *s, const Disk *d, bool read_only, bool for_export, char **ret) {
        _cleanup_free_ Layer **layers = NULL;
        int r;

        r = chain_layers(s, d, &layers);
        if (r < 0)
                return r;
        return chain_blockdev(d, layers, read_only, for_export, ret);
}

/* Refusals that need no file opened: quarantine, jobs, limits, the one-writer rule. */
static int check_admissible(const Limits *lim, const LeaseRegistry *leases, const JobRegistry *jobs,
                            const OpenDiskRequest *req, const Disk *d, size_t n_fds, OpError *err) {
        const PendingQuarantine *q;
        const Job *j;
        const Lease *o;

        if (d->quarantine)
                return op_error(err, -EBADMSG, "Disk '%s' of VM '%s' is quarantined: %s", req->disk, req->vm, d->quarantine);
        j = job_registry_find_running(jobs, req->vm, req->disk);
        if (j)
                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' is busy with a %s job (" VDISK_JOB_PREFIX "/%" PRIu64 ")",
                                req->disk, req->vm, j->operation, j->number);
        if (leases->n_leases >= lim->max_leases)
                return op_error(err, -E2BIG, "Too many open leases (limit %" PRIu32 ")", lim->max_leases);
        if (lease_registry_count_holder(leases, req->holder) >= lim->max_leases_per_caller)
                return op_error(err, -E2BIG, "You hold the maximum number of leases (%" PRIu32 ")", lim->max_leases_per_caller);

        /* Fds beyond the first message stay open here until fetched: bounded in total and per caller. */
        if (n_fds > LEASE_MAX_FDS_PER_MESSAGE) {
                size_t held = n_fds - LEASE_MAX_FDS_PER_MESSAGE;

                if (lease_registry_held_fds(leases, NULL) + held > lim->max_lease_fds)
                        return op_error(err, -E2BIG, "Too many file descriptors are held for leases (limit %" PRIu32 ")",
                                        lim->max_lease_fds);
                if (lease_registry_held_fds(leases, req->holder) + held > lim->max_lease_fds_per_caller)
                        return op_error(err, -E2BIG,
                                        "You hold too many file descriptors of leases not yet fetched with GetFds "
                                        "(this lease would keep %zu, limit %" PRIu32 "); fetch or release them first",
                                        held, lim->max_lease_fds_per_caller);
        }

        /* One writer, or any number of readers. */
        o = lease_registry_conflict(leases, req->vm, req->disk, req->read_only);
        if (o)
                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' is open %s by %s (pid %d)", req->disk, req->vm,
                                o->read_only ? "read-only" : "read-write", o->holder, (int) o->holder_pid);
        /* Cluster mode: a quarantine waiting for the VM's lease (its disk lease is this host's meanwhile). */
        q = lease_registry_pending(leases, req->vm, req->disk);
        if (q)
                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' is being quarantined (%s): waiting for the VM's cluster lease",
                                req->disk, req->vm, q->reason);
        return 0;
}

/* Which file of which layer each fd of the lease is, and its mode; nothing is opened yet. Every layer's
 * record must be there now, not only those of the first page. */
static int plan_fds(const OpenDiskRequest *req, const Disk *d, Layer *const *layers, Lease *l, OpError *err) {
        for (size_t k = 0; k < d->n_chain; k++) {
                const Layer *layer = layers[k];
                bool writable = k == 0 && !req->read_only;

                if (!layer)
                        return op_error(err, -EBADMSG, "The record of layer %s is missing", d->chain[k]);
                for (int data = 0; data <= !!layer->data_file; data++) {
                        LeaseFd *f = &l->fds[l->n_fds++];

                        *f = (LeaseFd) { .data_file = data, .writable = writable, .fd = -EBADF };
                        copy_bounded(f->layer, sizeof(f->layer), d->chain[k]);
                }
        }
        return 0;
}

/* Opens fd `i` of the lease through the store's checks (regular file, ours, one link, the recorded inode,
 * never blocking), in its mode. Whatever fails them is Corrupt, naming the layer. */
static int open_lease_fd(Store *s, Lease *l, size_t i, OpError *err) {
        LeaseFd *f = &l->fds[i];
        Layer *layer = store_find_layer(s, f->layer);
        int flags = f->writable ? O_RDWR : O_RDONLY;
        int fd;

        if (!layer)
                return op_error(err, -EBADMSG, "The record of layer %s is missing", f->layer);
        fd = f->data_file ? store_open_data_file(s, layer, flags) : store_open_layer(s, layer, flags);
        if (fd == -ENOENT || fd == -EBADMSG)
                return op_error(err, -EBADMSG, "Cannot open %s of layer %s of disk '%s' of VM '%s': %s",
                                f->data_file ? "the data file" : "the image file", layer->id, l->disk, l->vm,
                                fd == -ENOENT ? "it is missing" : "it is not the file recorded (type, owner, links or inode differ)");
        if (fd < 0)
                return op_error(err, fd, "Cannot open %s of layer %s of disk '%s' of VM '%s'",
                                f->data_file ? "the data file" : "the image file", layer->id, l->disk, l->vm);
        f->fd = fd;
        return 0;
}

/* Opens the fds of OpenDisk's reply (the first page); the top is tested for QEMU's locks (unless for an
 * incoming VM: the source's QEMU holds them). The rest are opened when fetched (op_lease_get_fds). */
static int open_first_page(Store *s, const OpenDiskRequest *req, Lease *l, OpError *err) {
        for (size_t i = 0; i < MIN(l->n_fds, (size_t) LEASE_MAX_FDS_PER_MESSAGE); i++) {
                int r = open_lease_fd(s, l, i, err);
                if (r < 0)
                        return r;
                if (i == 0 && l->fds[0].writable && !req->incoming) {
                        r = image_lock_test_any(l->fds[0].fd);
                        if (r < 0)
                                return op_error(err, r, "Cannot test the image locks");
                        if (r > 0)
                                return op_error(err, -EBUSY, "Disk '%s' of VM '%s' is locked by another process (a running QEMU?)",
                                                req->disk, req->vm);
                }
        }
        return 0;
}

int op_lease_get_fds(Store *s, Lease *l, uint32_t first, uint32_t count, size_t *ret_count, OpError *err) {
        size_t n;
        int r = 0;

        if (first >= l->n_fds)
                return op_error(err, -EINVAL, "The lease has %zu fds", l->n_fds);
        /* At most one message's worth, and no more than there is. */
        n = MIN(MIN((size_t) count, (size_t) LEASE_MAX_FDS_PER_MESSAGE), l->n_fds - first);
        for (size_t i = first; i < first + n; i++)
                if (l->fds[i].handed_out)
                        return op_error(err, -EINVAL, "Fd %zu has already been handed out", i);

        /* All of the page or none: a layer that fails its checks now is named, and what this call opened
         * is closed again (those fds stay held, to be asked for again or released). Only fds past the
         * first page can be open and not handed out here: OpenDisk's reply took the others. */
        for (size_t i = first; r >= 0 && i < first + n; i++)
                if (l->fds[i].fd < 0)
                        r = open_lease_fd(s, l, i, err);
        if (r < 0) {
                for (size_t i = first; i < first + n; i++)
                        l->fds[i].fd = safe_close(l->fds[i].fd);
                log_op(LOG_WARNING, "lease", l->vm, l->disk, NULL, "GetFds of lease " VDISK_LEASE_PREFIX "/%s refused: %s", l->id,
                       err->reason);
                return r;
        }
        *ret_count = n;
        return 0;
}

/* An export's helper gets every fd of the chain now: the ones past the first page too. */
static int open_rest(Store *s, Lease *l, OpError *err) {
        for (size_t i = LEASE_MAX_FDS_PER_MESSAGE; i < l->n_fds; i++) {
                int r = open_lease_fd(s, l, i, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

int op_open_disk(Store *s, const Limits *lim, LeaseRegistry *leases, const JobRegistry *jobs, const ExportContext *ectx,
                 const OpenDiskRequest *req, Lease **ret, char **ret_blockdev, OpError *err) {
        _cleanup_free_ char *blockdev = NULL, *problem = NULL;
        _cleanup_free_ Layer **layers = NULL;
        Lease *l;
        Disk *d;
        size_t n_fds;
        int r;

        if (req->export != EXPORT_NONE && !ectx->settings->enabled)
                return op_error(err, -EOPNOTSUPP, "Exports are disabled ([Exports] Enabled=no)");
        r = op_find_disk(s, req->vm, req->disk, NULL, &d, err);
        if (r < 0)
                return r;
        r = chain_layers(s, d, &layers);
        if (r < 0)
                return r;
        n_fds = chain_fd_count(d, layers);
        r = check_admissible(lim, leases, jobs, req, d, req->export != EXPORT_NONE ? 1 : n_fds, err);
        if (r < 0)
                return r;

        l = calloc(1, sizeof(Lease));
        if (!l)
                return -ENOMEM;
        *l = (Lease) {
                .read_only = req->read_only,
                .vm = strdup(req->vm),
                .disk = strdup(req->disk),
                .holder = strdup(req->holder),
                .holder_uid = req->holder_uid,
                .holder_pid = req->holder_pid,
                .fds = calloc(n_fds, sizeof(LeaseFd)),
        };
        if (!l->vm || !l->disk || !l->holder || !l->fds) {
                lease_free(l);
                return -ENOMEM;
        }
        r = plan_fds(req, d, layers, l, err);
        if (r >= 0)
                r = layer_id_new(l->id);
        if (r >= 0)
                r = open_first_page(s, req, l, err);
        if (r < 0) {
                lease_free(l);
                return r;
        }

        /* Hand out only what matches the records. Backing layers are never writable by anyone (catalog
         * images and former tops, all handed out O_RDONLY), so the top layer's header is what can differ;
         * it is read through the very description that is handed out. */
        r = op_verify(s, req->vm, req->disk, true, l->fds[0].fd, op_verify_first_problem, &problem, err);
        if (r >= 0 && problem)
                r = op_error(err, -EBADMSG, "Disk '%s' of VM '%s' differs from its records: %s", req->disk, req->vm, problem);
        if (r >= 0 && req->export == EXPORT_NONE)
                r = chain_blockdev(d, layers, req->read_only, false, &blockdev);
        if (r >= 0 && req->export != EXPORT_NONE)
                r = open_rest(s, l, err);
        if (r >= 0 && req->export != EXPORT_NONE)
                r = export_start(ectx->settings, ectx->spares, s, leases, d, l, req->export, ectx->event, ectx->gone, ectx->userdata,
                                 &blockdev, err);
        if (r >= 0)
                r = lease_registry_add(leases, l);
        if (r < 0) {
                if (l->export)
                        export_stop(l->export);
                lease_free(l);
                return r;
        }
        log_op(LOG_INFO, "open", req->vm, req->disk, d->chain[0], "Disk '%s' of VM '%s' opened %s by %s (uid %u, pid %d): %s",
               req->disk, req->vm, req->read_only ? "read-only" : "read-write", req->holder, (unsigned) req->holder_uid,
               (int) req->holder_pid, req->export != EXPORT_NONE ? export_type_to_string(req->export) : "chain fds");
        *ret = l;
        *ret_blockdev = TAKE_PTR(blockdev);
        return 0;
}
