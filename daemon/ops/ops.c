/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "escape.h"
#include "log.h"
#include "ops.h"
#include "probe.h"

void limits_init_default(Limits *l) {
        *l = (Limits) {
                .max_chain_depth = LIMITS_DEFAULT_MAX_CHAIN_DEPTH,
                .max_virtual_size = LIMITS_DEFAULT_MAX_VIRTUAL_SIZE,
                .max_jobs = LIMITS_DEFAULT_MAX_JOBS,
                .max_vms = LIMITS_DEFAULT_MAX_VMS,
                .max_disks_per_vm = LIMITS_DEFAULT_MAX_DISKS_PER_VM,
                .max_images = LIMITS_DEFAULT_MAX_IMAGES,
                .max_leases = LIMITS_DEFAULT_MAX_LEASES,
                .max_leases_per_caller = LIMITS_DEFAULT_MAX_LEASES_PER_CALLER,
                .max_lease_fds = LIMITS_DEFAULT_MAX_LEASE_FDS,
                .max_lease_fds_per_caller = LIMITS_DEFAULT_MAX_LEASE_FDS_PER_CALLER,
        };
}

int op_find_disk(Store *s, const char *vm, const char *disk, Vm **ret_vm, Disk **ret_disk, OpError *err) {
        Vm *v = store_find_vm(s, vm);
        Disk *d;

        if (!v)
                return op_error(err, -ENOENT, "no VM '%s'", vm);
        d = vm_find_disk(v, disk);
        if (!d)
                return op_error(err, -ENOENT, "VM '%s' has no disk '%s'", vm, disk);
        if (ret_vm)
                *ret_vm = v;
        *ret_disk = d;
        return 0;
}

static int disk_compare_by_name(const void *a, const void *b) {
        const Disk *const *x = a, *const *y = b;

        return strcmp((*x)->name, (*y)->name);
}

int op_list_disks(Store *s, const char *vm, DiskListFunc cb, void *userdata, OpError *err) {
        _cleanup_free_ const Disk **sorted = NULL;
        Vm *v = store_find_vm(s, vm);
        int r;

        if (!v)
                return op_error(err, -ENOENT, "no VM '%s'", vm);
        if (v->n_disks == 0)
                return 0;

        /* The record keeps disks in creation order; callers (completion, tables) want them by name. */
        sorted = reallocarray(NULL, v->n_disks, sizeof(Disk *));
        if (!sorted)
                return op_error(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < v->n_disks; i++)
                sorted[i] = &v->disks[i];
        qsort(sorted, v->n_disks, sizeof(Disk *), disk_compare_by_name);

        for (size_t i = 0; i < v->n_disks; i++) {
                const Disk *d = sorted[i];
                const Layer *top = d->n_chain > 0 ? store_find_layer(s, d->chain[0]) : NULL;

                if (!top)
                        return op_error(err, -EBADMSG, "the record of the top layer of disk '%s' is missing", d->name);
                /* Chains are capped by MaxChainDepth, a u32. */
                r = cb(d->name, top, (uint32_t) MIN(d->n_chain, (size_t) UINT32_MAX), userdata);
                if (r < 0)
                        return op_error(err, r, "out of memory");
        }
        return 0;
}

static int check_size(const Limits *lim, uint64_t size, OpError *err) {
        if (size == 0)
                return op_error(err, -EINVAL, "size must not be 0");
        if (size % FORMAT_SECTOR_SIZE != 0)
                return op_error(err, -EINVAL, "size %" PRIu64 " is not a multiple of 512", size);
        if (size > lim->max_virtual_size)
                return op_error(err, -E2BIG, "size %" PRIu64 " is above the limit of %" PRIu64, size, lim->max_virtual_size);
        return 0;
}

static int layer_new(ImageFormat f, const char *catalog, const char *vm, Layer **ret) {
        _cleanup_(layer_freep) Layer *l = NULL;
        char file[LAYER_ID_LEN + 8];
        int r;

        l = calloc(1, sizeof(Layer));
        if (!l)
                return -ENOMEM;
        r = layer_id_new(l->id);
        if (r < 0)
                return r;
        snprintf(file, sizeof(file), "%s.%s", l->id, image_format_to_string(f));
        l->file = strdup(file);
        l->catalog_name = strdup_or_null(catalog);
        l->vm = strdup_or_null(vm);
        if (!l->file || (catalog && !l->catalog_name) || (vm && !l->vm))
                return -ENOMEM;
        l->format = f;
        l->state = LAYER_CREATING;
        l->generation = 1;
        *ret = TAKE_PTR(l);
        return 0;
}

typedef struct FillArgs {
        ImageFormat format;
        Qcow2CreateParams qcow2;
        const uint8_t *initial;
        size_t initial_size;
        int copy_from;
        FormatError *err;
} FillArgs;

static int copy_sparse(int from, int to, uint64_t size) {
        uint64_t pos = 0;

        while (pos < size) {
                off_t data = lseek(from, (off_t) pos, SEEK_DATA), hole;

                if (data < 0) {
                        if (errno == ENXIO)
                                break;
                        data = (off_t) pos; /* no SEEK_DATA: copy everything */
                }
                hole = lseek(from, data, SEEK_HOLE);
                if (hole < 0)
                        hole = (off_t) size;
                while ((uint64_t) data < (uint64_t) hole) {
                        loff_t in = data, out = data;
                        ssize_t n = copy_file_range(from, &in, to, &out, (size_t) MIN((uint64_t) (hole - data), UINT64_C(1) << 30), 0);
                        if (n < 0)
                                return negative_errno();
                        if (n == 0)
                                return -EIO;
                        data += n;
                }
                pos = (uint64_t) hole;
        }
        if (ftruncate(to, (off_t) size) < 0)
                return negative_errno();
        return 0;
}

static int fill_image(int fd, void *userdata) {
        FillArgs *a = userdata;

        if (a->copy_from >= 0) {
                struct stat st;
                if (fstat(a->copy_from, &st) < 0)
                        return negative_errno();
                /* A raw copy may be larger than its image: the rest reads as zeros. */
                return copy_sparse(a->copy_from, fd, MAX((uint64_t) st.st_size, a->qcow2.size));
        }
        if (a->format == IMAGE_FORMAT_QCOW2)
                return qcow2_create(fd, &a->qcow2, a->err);
        return raw_create(fd, a->qcow2.size, a->initial, a->initial_size, a->err);
}

/* Record before disk: the record (creating), then the file; the record (ready) is the caller's. */
static int layer_materialize(Store *s, Txn *t, Layer *l, FillArgs *args, OpError *err) {
        int r;

        r = store_put_layer(s, l);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        txn_crash_point(t, "after-layer-record");

        if (l->data_file) {
                r = store_create_data_file(s, l, l->virtual_size);
                if (r < 0)
                        return op_error(err, r, "cannot create the data file");
        }

        r = store_create_layer_file(s, l, fill_image, args);
        if (r < 0)
                return op_error(err, r, "cannot create the image file");
        txn_crash_point(t, "after-file");
        return 0;
}

int op_create_image(Store *s, const Limits *lim, const char *name, ImageFormat f, uint64_t size, const char *template_name,
                    const uint32_t *cluster_size, char ret_layer[static LAYER_ID_LEN + 1], OpError *err) {
        _cleanup_(layer_freep) Layer *l = NULL;
        uint8_t page[SWAP_PAGE_SIZE], uuid[16];
        FillArgs args = { .format = f, .copy_from = -EBADF, .err = err };
        _cleanup_(txn_abortp) Txn *t = NULL;
        Layer *owned;
        int r;

        if (store_find_catalog(s, name))
                return op_error(err, -EEXIST, "image '%s' already exists", name);
        if (s->n_layers >= lim->max_images)
                return op_error(err, -E2BIG, "the store holds the maximum number of layers (%" PRIu32 ")", lim->max_images);
        r = check_size(lim, size, err);
        if (r < 0)
                return r;
        if (cluster_size) {
                uint32_t cs = *cluster_size;

                if (f != IMAGE_FORMAT_QCOW2)
                        return op_error(err, -EINVAL, "cluster_size applies to qcow2 only");
                if (cs == 0 || cs & (cs - 1) || cs < 512 || cs > (2U << 20))
                        return op_error(err, -EINVAL, "cluster_size must be a power of two from 512 to 2097152");
                args.qcow2.cluster_bits = (uint32_t) __builtin_ctz(cs);
        }
        args.qcow2.size = size;

        if (streq(template_name, "swap")) {
                if (getrandom(uuid, sizeof(uuid), 0) != sizeof(uuid))
                        return op_error(err, -EIO, "cannot generate a UUID");
                if (swap_signature_build(size, uuid, page) < 0)
                        return op_error(err, -EINVAL, "a swap image needs at least %u pages of %u bytes", SWAP_MIN_PAGES,
                                        SWAP_PAGE_SIZE);
                args.initial = args.qcow2.initial_data = page;
                args.initial_size = args.qcow2.initial_data_size = sizeof(page);
        } else if (!streq(template_name, "blank"))
                return op_error(err, -EINVAL, "unknown template '%s'", ESCAPE_TEXT(template_name));

        r = layer_new(f, name, NULL, &l);
        if (r < 0)
                return op_error(err, r, "cannot allocate a layer");
        l->virtual_size = size;

        r = txn_begin(s, "create-image", INTENT_COMMIT_LAYER_READY, l->id, 0, l->id, NULL, &t);
        if (r < 0)
                return op_error(err, r, "cannot write the journal");

        owned = l;
        r = layer_materialize(s, t, l, &args, err);
        if (store_find_layer(s, owned->id))
                TAKE_PTR(l); /* the store owns it now */
        if (r < 0)
                return r; /* rolled back by txn_abortp() */
        r = txn_commit(t, txn_write_layer_ready, owned);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");

        memcpy(ret_layer, owned->id, LAYER_ID_LEN + 1);
        log_op(LOG_INFO, "create-image", NULL, NULL, owned->id, "Created %s image '%s' of %" PRIu64 " bytes",
               image_format_to_string(f), name, size);
        return 0;
}

int op_delete_image(Store *s, const char *name, OpError *err) {
        Layer *l = store_find_catalog(s, name);
        _cleanup_(txn_abortp) Txn *t = NULL;
        char id[LAYER_ID_LEN + 1];
        size_t users;
        int r;

        if (!l)
                return op_error(err, -ENOENT, "no image '%s'", name);
        users = store_count_users(s, l->id);
        if (users > 0)
                return op_error(err, -EBUSY, "image '%s' is used by %zu disk(s)", name, users);
        if (l->pins > 0)
                return op_error(err, -EBUSY, "image '%s' is the new backing of a running rebase", name);
        memcpy(id, l->id, sizeof(id));

        r = txn_begin(s, "delete-image", INTENT_COMMIT_LAYER_DELETED, id, 0, NULL, id, &t);
        if (r < 0)
                return op_error(err, r, "cannot write the journal");
        r = txn_commit(t, txn_write_layer_deleted, id);
        if (r < 0)
                return op_error(err, r, "cannot delete the image");
        log_op(LOG_INFO, "delete-image", NULL, NULL, id, "Deleted image '%s'", name);
        return 0;
}

int op_create_vm(Store *s, const Limits *lim, const char *name, uid_t owner, OpError *err) {
        _cleanup_(vm_freep) Vm *v = NULL;
        int r;

        if (store_find_vm(s, name))
                return op_error(err, -EEXIST, "VM '%s' already exists", name);
        if (s->n_vms >= lim->max_vms)
                return op_error(err, -E2BIG, "the store holds the maximum number of VMs (%" PRIu32 ")", lim->max_vms);
        if (owner == (uid_t) -1)
                return op_error(err, -EINVAL, "invalid owner uid");

        v = calloc(1, sizeof(Vm));
        if (!v || !(v->name = strdup(name)))
                return op_error(err, -ENOMEM, "out of memory");
        v->owner_uid = owner;
        v->generation = 1;
        r = store_put_vm(s, v);
        if (r < 0)
                return op_record_error(err, r, "VM");
        TAKE_PTR(v);
        log_op(LOG_INFO, "create-vm", name, NULL, NULL, "Created VM '%s' owned by uid %u", name, (unsigned) owner);
        return 0;
}

/* The private layers of a disk, which go with it. */
static int add_private_layers(Store *s, Txn *t, const Disk *d) {
        for (size_t k = 0; k < d->n_chain; k++) {
                Layer *l = store_find_layer(s, d->chain[k]);
                if (l && l->vm) {
                        int r = txn_add_drop(t, l->id);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

int op_delete_vm(Store *s, const char *name, OpError *err) {
        Vm *v = store_find_vm(s, name);
        _cleanup_(txn_abortp) Txn *t = NULL;
        int r;

        if (!v)
                return op_error(err, -ENOENT, "no VM '%s'", name);

        r = txn_new(s, "delete-vm", INTENT_COMMIT_VM_DELETED, name, 0, &t);
        for (size_t i = 0; r >= 0 && i < v->n_disks; i++)
                r = add_private_layers(s, t, &v->disks[i]);
        if (r == -E2BIG)
                return op_error(err, r, "VM '%s' has more private layers than the limit of %u one operation may remove "
                                "(INTENT_MAX_LAYERS); delete its disks one by one first", name, INTENT_MAX_LAYERS);
        if (r >= 0)
                r = txn_start(t);
        if (r < 0)
                return op_error(err, r, "cannot write the journal");

        r = txn_commit(t, txn_write_vm_deleted, (void *) name);
        if (r < 0)
                return op_error(err, r, "cannot remove the VM record");
        log_op(LOG_INFO, "delete-vm", name, NULL, NULL, "Deleted VM '%s'", name);
        return 0;
}

static int disk_add(Vm *v, const char *name, const char *top, const char *base) {
        Disk *disks = reallocarray(v->disks, v->n_disks + 1, sizeof(Disk));
        Disk *d;

        if (!disks)
                return -ENOMEM;
        v->disks = disks;
        d = &v->disks[v->n_disks];
        *d = (Disk) {};
        d->name = strdup(name);
        d->chain = calloc(2, sizeof(char *));
        if (!d->name || !d->chain) {
                disk_done(d);
                return -ENOMEM;
        }
        v->n_disks++;
        d->chain[d->n_chain++] = strdup(top);
        if (base)
                d->chain[d->n_chain++] = strdup(base);
        for (size_t k = 0; k < d->n_chain; k++)
                if (!d->chain[k])
                        return -ENOMEM;
        return 0;
}

/* Runs a "new layer, then new VM record" operation under one intent. */
static int new_layer_op(Store *s, Vm *v, Layer *l, FillArgs *args, Vm *next, const char *op, OpError *err) {
        _cleanup_(txn_abortp) Txn *t = NULL;
        Layer *owned = l;
        int r;

        /* A snapshot's changes fit in one entry of the VM's write-ahead log: one durable write. Not in
         * cluster mode (yet): another host must find the records themselves up to date once the VM's
         * lease is released, and a log entry redone by a restarting host could undo its later changes. */
        if (streq(op, "snapshot") && !s->shared) {
                r = wal_new_layer(s, op, l, fill_image, args, next);
                if (r >= 0)
                        return 0;
                if (r != -E2BIG) {
                        layer_free(l);
                        vm_free(next);
                        return op_error(err, r, "cannot write the log");
                }
        }

        r = txn_begin(s, op, INTENT_COMMIT_VM, v->name, next->generation, l->id, NULL, &t);
        if (r < 0) {
                layer_free(l);
                vm_free(next);
                return op_error(err, r, "cannot write the journal");
        }

        r = layer_materialize(s, t, l, args, err);
        if (r >= 0) {
                r = txn_write_layer_ready(s, l);
                if (r < 0)
                        op_error(err, r, "cannot write the layer record");
        }
        if (!store_find_layer(s, owned->id))
                layer_free(owned);
        if (r >= 0) {
                r = txn_commit(t, txn_write_vm, next);
                if (r < 0)
                        op_record_error(err, r, "VM");
        }
        if (r < 0) {
                vm_free(next);
                return r; /* rolled back by txn_abortp() */
        }
        return 0;
}

/* Gives a new private qcow2 layer an external data file <id>.data (created with the layer). */
static int layer_add_data_file(Layer *l, FillArgs *args, bool raw, OpError *err) {
        char name[LAYER_ID_LEN + 8];

        snprintf(name, sizeof(name), "%s.data", l->id);
        l->data_file = strdup(name);
        if (!l->data_file)
                return op_error(err, -ENOMEM, "out of memory");
        l->data_file_raw = raw;
        args->qcow2.data_file = l->data_file;
        args->qcow2.data_file_raw = raw;
        return 0;
}

int op_create_disk(Store *s, const Limits *lim, const char *vm, const char *disk, const char *image, uint64_t size,
                   const char *mode, ImageFormat blank_format, bool data_file, bool data_file_raw, OpError *err) {
        Vm *v = store_find_vm(s, vm), *next = NULL;
        Layer *base = NULL, *l = NULL;
        FillArgs args = { .copy_from = -EBADF, .err = err };
        _cleanup_close_ int base_fd = -EBADF;
        char id[LAYER_ID_LEN + 1];
        int r;

        if (!v)
                return op_error(err, -ENOENT, "no VM '%s'", vm);
        if (vm_find_disk(v, disk))
                return op_error(err, -EEXIST, "VM '%s' already has a disk '%s'", vm, disk);
        if (v->n_disks >= lim->max_disks_per_vm)
                return op_error(err, -E2BIG, "VM '%s' has the maximum number of disks (%" PRIu32 ")", vm, lim->max_disks_per_vm);

        if (!isempty(image)) {
                base = store_find_catalog(s, image);
                if (!base)
                        return op_error(err, -ENOENT, "no image '%s'", image);
                if (size == 0)
                        size = base->virtual_size;
                if (size < base->virtual_size)
                        return op_error(err, -EINVAL, "size %" PRIu64 " is smaller than image '%s' (%" PRIu64 ")", size, image,
                                        base->virtual_size);
        }
        r = check_size(lim, size, err);
        if (r < 0)
                return r;
        if (data_file_raw && !data_file)
                return op_error(err, -EINVAL, "option 'data_file_raw' needs 'data_file'");
        if (data_file && ((base && !streq(mode, "overlay")) || (!base && blank_format != IMAGE_FORMAT_QCOW2)))
                return op_error(err, -EINVAL, "an external data file is for new qcow2 layers: blank qcow2 disks and overlays");
        if (data_file_raw && base)
                return op_error(err, -EINVAL, "a raw external data file excludes a backing file; use it for blank disks");

        if (base && streq(mode, "overlay")) {
                if (lim->max_chain_depth < 2)
                        return op_error(err, -ELOOP, "an overlay needs a chain depth of 2, the limit is %" PRIu32,
                                        lim->max_chain_depth);
                r = layer_new(IMAGE_FORMAT_QCOW2, NULL, vm, &l);
                if (r < 0)
                        return op_error(err, r, "cannot allocate a layer");
                l->backing = strdup(base->id);
                l->backing_format = base->format;
                if (!l->backing) {
                        layer_free(l);
                        return op_error(err, -ENOMEM, "out of memory");
                }
                args.format = IMAGE_FORMAT_QCOW2;
                args.qcow2.size = size;
                args.qcow2.backing_file = base->file;
                args.qcow2.backing_format = image_format_to_string(base->format);
        } else if (base && streq(mode, "copy")) {
                if (size != base->virtual_size && base->format == IMAGE_FORMAT_QCOW2)
                        return op_error(err, -EOPNOTSUPP, "a qcow2 copy cannot be larger than its image yet; use an overlay");
                base_fd = store_open_layer(s, base, O_RDONLY);
                if (base_fd < 0)
                        return op_error(err, base_fd, "cannot open the file of image '%s'", image);
                r = layer_new(base->format, NULL, vm, &l);
                if (r < 0)
                        return op_error(err, r, "cannot allocate a layer");
                args.copy_from = base_fd;
                args.format = base->format;
                args.qcow2.size = base->format == IMAGE_FORMAT_RAW ? size : 0;
        } else if (base)
                return op_error(err, -EINVAL, "unknown mode '%s'", ESCAPE_TEXT(mode));
        else {
                r = layer_new(blank_format, NULL, vm, &l);
                if (r < 0)
                        return op_error(err, r, "cannot allocate a layer");
                args.format = blank_format;
                args.qcow2.size = size;
        }
        l->virtual_size = size;
        memcpy(id, l->id, sizeof(id));
        if (data_file) {
                r = layer_add_data_file(l, &args, data_file_raw, err);
                if (r < 0) {
                        layer_free(l);
                        return r;
                }
        }

        r = vm_copy(v, &next);
        if (r >= 0)
                r = disk_add(next, disk, id, base && streq(mode, "overlay") ? base->id : NULL);
        if (r < 0) {
                vm_free(next);
                layer_free(l);
                return op_error(err, r, "out of memory");
        }
        next->generation++;

        r = new_layer_op(s, v, l, &args, next, "create-disk", err);
        if (r < 0)
                return r;
        log_op(LOG_INFO, "create-disk", vm, disk, id, "Created disk '%s' of VM '%s'%s%s", disk, vm, base ? " from " : "",
               base ? image : "");
        return 0;
}

int op_delete_disk(Store *s, const char *vm, const char *disk, OpError *err) {
        Vm *v, *next = NULL;
        Disk *d;
        _cleanup_(txn_abortp) Txn *t = NULL;
        int r;

        r = op_find_disk(s, vm, disk, &v, &d, err);
        if (r < 0)
                return r;

        r = vm_copy(v, &next);
        if (r < 0)
                return op_error(err, r, "out of memory");
        for (size_t i = 0; i < next->n_disks; i++)
                if (streq(next->disks[i].name, disk)) {
                        disk_done(&next->disks[i]);
                        memmove(next->disks + i, next->disks + i + 1, (next->n_disks - i - 1) * sizeof(Disk));
                        next->n_disks--;
                        break;
                }
        next->generation++;

        r = txn_new(s, "delete-disk", INTENT_COMMIT_VM, vm, next->generation, &t);
        if (r >= 0)
                r = add_private_layers(s, t, d);
        if (r >= 0)
                r = txn_start(t);
        if (r < 0) {
                vm_free(next);
                return op_error(err, r, "cannot write the journal");
        }
        r = txn_commit(t, txn_write_vm, next);
        if (r < 0) {
                vm_free(next);
                return op_record_error(err, r, "VM");
        }
        log_op(LOG_INFO, "delete-disk", vm, disk, NULL, "Deleted disk '%s' of VM '%s'", disk, vm);
        return 0;
}

int op_snapshot(Store *s, const Limits *lim, const char *vm, const char *disk, char ret_layer[static LAYER_ID_LEN + 1],
                OpError *err) {
        Vm *v, *next = NULL;
        Disk *d, *nd;
        Layer *top, *l = NULL;
        FillArgs args = { .format = IMAGE_FORMAT_QCOW2, .copy_from = -EBADF, .err = err };
        char **chain;
        int r;

        r = op_find_disk(s, vm, disk, &v, &d, err);
        if (r < 0)
                return r;
        if (d->n_chain + 1 > lim->max_chain_depth)
                return op_error(err, -ELOOP, "disk '%s' has %zu layers, the limit is %" PRIu32, disk, d->n_chain,
                                lim->max_chain_depth);
        top = store_find_layer(s, d->chain[0]);
        if (!top)
                return op_error(err, -EBADMSG, "the record of the active layer of disk '%s' is missing", disk);

        /* Metadata only: one new file whose header names the current top; nothing else is read or written. */
        r = layer_new(IMAGE_FORMAT_QCOW2, NULL, vm, &l);
        if (r < 0)
                return op_error(err, r, "cannot allocate a layer");
        l->backing = strdup(top->id);
        l->backing_format = top->format;
        l->virtual_size = top->virtual_size;
        if (!l->backing) {
                layer_free(l);
                return op_error(err, -ENOMEM, "out of memory");
        }
        args.qcow2.size = top->virtual_size;
        args.qcow2.backing_file = top->file;
        args.qcow2.backing_format = image_format_to_string(top->format);
        memcpy(ret_layer, l->id, LAYER_ID_LEN + 1);

        r = vm_copy(v, &next);
        if (r < 0) {
                layer_free(l);
                return op_error(err, r, "out of memory");
        }
        nd = vm_find_disk(next, disk);
        chain = reallocarray(nd->chain, nd->n_chain + 1, sizeof(char *));
        if (!chain) {
                layer_free(l);
                vm_free(next);
                return op_error(err, -ENOMEM, "out of memory");
        }
        nd->chain = chain;
        memmove(chain + 1, chain, nd->n_chain * sizeof(char *));
        chain[0] = strdup(l->id);
        nd->n_chain++;
        next->generation++;
        if (!chain[0]) {
                layer_free(l);
                vm_free(next);
                return op_error(err, -ENOMEM, "out of memory");
        }

        r = new_layer_op(s, v, l, &args, next, "snapshot", err);
        if (r < 0)
                return r;
        log_op(LOG_INFO, "snapshot", vm, disk, ret_layer, "Snapshot of disk '%s' of VM '%s'", disk, vm);
        return 0;
}
