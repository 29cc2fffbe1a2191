/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * AdoptDomainXML: the adoption of a chain that a libvirt <disk> element describes explicitly.
 *
 * Adoption reads host paths (root only, by the authorization table). Nothing a file contains is
 * followed: a backing name in a header is only compared with the XML (stat, never open), the format
 * of every layer comes from the XML, and the files are checked like uploads. All checks run before the
 * first change, so a refusal leaves the store and the caller's files as they were.
 */

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "domain-xml.h"
#include "image-lock.h"
#include "log.h"
#include "undo.h"

#define LABEL_MAX DOMAIN_XML_LABEL_MAX

/* Images copied in may exceed their virtual size by this much (metadata, snapshots), like uploads. */
#define ADOPT_FILE_SLACK (UINT64_C(1) << 30)
#define ADOPT_COPY_CHUNK (UINT64_C(1) << 30)
/* The copy runs inside the method call, and the event loop waits for it: at most this much data (about
 * a minute of copying) per adoption. Larger chains can be moved, which copies nothing. */
#define ADOPT_MAX_COPY_BYTES (UINT64_C(16) << 30)
#define ADOPT_STORE_MODE 0600


typedef struct Source {
        const DomainXmlLayer *xml;
        char label[LABEL_MAX];
        int dir_fd;  /* the directory that holds the file */
        char *name;  /* the file's name in it */
        int fd;      /* O_RDONLY, checked and locked: what is copied (or moved) */
        struct stat st;
        uint64_t virtual_size;
        bool rewrite_header; /* qcow2 with a backing name or format to replace */
        Layer *layer;        /* the new record; the store owns it once written */
        bool in_store;
        /* move: the store's name of the same inode. Its mode (in the intent) and header (in an undo log)
         * are given back by the journal's roll-back. */
        int rw_fd;
} Source;

typedef struct Adoption {
        Store *store;
        const Limits *lim;
        const char *vm;
        bool move;
        Txn *txn; /* once the journal entry is written */
        DomainXmlDisk disk;
        Source *src;
        size_t n;
        struct stat images_st;
} Adoption;

static void adoption_done(Adoption *a) {
        for (size_t i = 0; i < a->n; i++) {
                Source *src = &a->src[i];
                safe_close(src->dir_fd);
                safe_close(src->fd);
                safe_close(src->rw_fd);
                free(src->name);
                if (!src->in_store)
                        layer_free(src->layer);
        }
        free(a->src);
        domain_xml_disk_done(&a->disk);
}

/* Opens a layer's file: its directory (following the path as given), then the file itself without
 * following a symlink, with the type checked before the open (opening a device can have effects). */
static int source_open(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i];
        const char *path = src->xml->path, *slash = strrchr(path, '/');
        _cleanup_free_ char *dir = NULL;
        struct stat st;

        domain_xml_layer_label(i, path, src->label);
        if (!slash || !slash[1] || streq(slash + 1, ".") || streq(slash + 1, ".."))
                return op_error(err, -EINVAL, "%s: the source path does not name a file", src->label);
        dir = strndup(path, slash == path ? 1 : (size_t) (slash - path));
        src->name = strdup(slash + 1);
        if (!dir || !src->name)
                return op_error(err, -ENOMEM, "out of memory");

        src->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (src->dir_fd < 0)
                return op_error(err, errno == ENOENT || errno == ENOTDIR ? -ENOENT : -EINVAL,
                                "%s: cannot open its directory: %s", src->label, strerror(errno));
        if (fstatat(src->dir_fd, src->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return op_error(err, errno == ENOENT ? -ENOENT : -EINVAL, "%s: %s", src->label, strerror(errno));
        if (S_ISLNK(st.st_mode))
                return op_error(err, -EINVAL, "%s is a symbolic link; name the file itself", src->label);
        if (!S_ISREG(st.st_mode))
                return op_error(err, -EINVAL, "%s is not a regular file", src->label);

        src->fd = openat(src->dir_fd, src->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (src->fd < 0)
                return op_error(err, errno == ELOOP ? -EINVAL : errno == ENOENT ? -ENOENT : -EINVAL, "%s: %s", src->label,
                                errno == ELOOP ? "is a symbolic link" : strerror(errno));
        if (fstat(src->fd, &src->st) < 0)
                return op_error(err, negative_errno(), "%s: cannot stat the file", src->label);
        if (!S_ISREG(src->st.st_mode) || src->st.st_dev != st.st_dev || src->st.st_ino != st.st_ino)
                return op_error(err, -EINVAL, "%s changed while it was opened", src->label);

        for (size_t j = 0; j < i; j++)
                if (a->src[j].st.st_dev == src->st.st_dev && a->src[j].st.st_ino == src->st.st_ino)
                        return op_error(err, -EINVAL, "%s and %s are the same file", a->src[j].label, src->label);
        return 0;
}

/* What `move` needs: the file can become the store's without copying, and leave its old name. */
static int source_check_move(Adoption *a, Source *src, OpError *err) {
        struct stat dst;

        if (fstat(src->dir_fd, &dst) < 0)
                return op_error(err, negative_errno(), "%s: cannot stat its directory", src->label);
        if (dst.st_dev == a->images_st.st_dev && dst.st_ino == a->images_st.st_ino)
                return op_error(err, -EINVAL, "%s is already a file of the store", src->label);
        if (src->st.st_dev != a->images_st.st_dev)
                return op_error(err, -EOPNOTSUPP, "%s is on another file system than the store; adopt without \"move\" to copy it",
                                src->label);
        if (src->st.st_nlink != 1)
                return op_error(err, -EOPNOTSUPP, "%s has %ju links; \"move\" needs a file with a single name", src->label,
                                (uintmax_t) src->st.st_nlink);
        if (src->st.st_uid != a->store->uid)
                return op_error(err, -EOPNOTSUPP, "%s is not owned by the store's owner (uid %u); adopt without \"move\" to copy it",
                                src->label, (unsigned) a->store->uid);
        if (faccessat(src->dir_fd, ".", W_OK | X_OK, AT_EACCESS) < 0)
                return op_error(err, -EOPNOTSUPP, "%s cannot be removed from its directory (%s); adopt without \"move\"",
                                src->label, strerror(errno));
        return 0;
}

/*
 * The header's backing name, read as libvirt and QEMU would (relative to the directory of the layer's
 * file), must name the next layer's file, or nothing that exists (a chain whose files were moved: the
 * XML is the authority). The name is only looked up, never opened. A backing format in the header
 * must be the XML's.
 */
static int source_check_backing(Source *src, const Qcow2Header *h, const Source *next, OpError *err) {
        const char *name = h->backing_file, *colon, *slash;
        struct stat st;
        int r;

        if (h->has_backing_file && name[0]) {
                /* "proto:…" and "json:{…}" are not file names to QEMU: they cannot be compared with a file. */
                colon = strchr(name, ':');
                slash = strchr(name, '/');
                if (colon && (!slash || colon < slash))
                        return op_error(err, -EMEDIUMTYPE, "%s: the header's backing name is not a plain file name", src->label);

                r = fstatat(src->dir_fd, name, &st, 0) < 0 ? -errno : 0;
                if (r == -ENOENT || r == -ENOTDIR) {
                        /* Moved away: the XML says what is below. */
                } else if (r < 0)
                        return op_error(err, -EMEDIUMTYPE, "%s: cannot tell which file the header's backing name refers to (%s)",
                                        src->label, strerror(-r));
                else if (!next)
                        return op_error(err, -EMEDIUMTYPE,
                                        "%s: the header names an existing backing file, but the XML ends the chain here", src->label);
                else if (st.st_dev != next->st.st_dev || st.st_ino != next->st.st_ino)
                        return op_error(err, -EMEDIUMTYPE, "%s: the header names an existing backing file other than %s",
                                        src->label, next->label);
        }
        if (next && h->has_backing_format && !streq(h->backing_format, image_format_to_string(next->xml->format)))
                return op_error(err, -EMEDIUMTYPE, "%s: the header's backing format differs from the XML's (%s)", src->label,
                                image_format_to_string(next->xml->format));
        src->rewrite_header = next || h->has_backing_file || h->has_backing_format;
        return 0;
}

static int source_validate(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i], *next = i + 1 < a->n ? &a->src[i + 1] : NULL;
        _cleanup_free_ Qcow2Header *h = NULL;
        OpError e = {};
        int r;

        if ((uint64_t) src->st.st_size > a->lim->max_virtual_size + ADOPT_FILE_SLACK)
                return op_error(err, -E2BIG, "%s has %" PRIu64 " bytes, more than any image of at most %" PRIu64 " bytes (MaxVirtualSize) can take",
                                src->label, (uint64_t) src->st.st_size, a->lim->max_virtual_size);
        r = a->move ? image_lock_for_change(src->fd) : image_lock_for_read(src->fd);
        if (r == -EBUSY)
                return op_error(err, -EBUSY, "%s is in use by a QEMU", src->label);
        if (r < 0)
                return op_error(err, r, "%s: cannot lock the file", src->label);

        h = calloc(1, sizeof(Qcow2Header));
        if (!h)
                return op_error(err, -ENOMEM, "out of memory");
        r = op_validate_chain_layer(src->fd, src->xml->format, a->lim, &src->virtual_size, h, &e);
        if (r < 0)
                return op_error(err, r, "%s: %s", src->label, e.reason);
        if (src->xml->format == IMAGE_FORMAT_QCOW2)
                return source_check_backing(src, h, next, err);
        return 0;
}

static int copy_range(int from, int to, uint64_t start, uint64_t end) {
        while (start < end) {
                loff_t in = (loff_t) start, out = (loff_t) start;
                ssize_t n = copy_file_range(from, &in, to, &out, (size_t) MIN(end - start, ADOPT_COPY_CHUNK), 0);

                if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS)) {
                        /* No in-kernel copy between these files: through a buffer. */
                        uint8_t buf[1 << 16];
                        n = pread(from, buf, (size_t) MIN(end - start, (uint64_t) sizeof(buf)), (off_t) start);
                        if (n > 0 && format_pwrite_full(to, buf, (size_t) n, start) < 0)
                                return -EIO;
                }
                if (n < 0)
                        return negative_errno();
                if (n == 0)
                        return -EIO; /* the file shrank */
                start += (uint64_t) n;
        }
        return 0;
}

/* Copies data extents only: holes stay holes. */
static int copy_sparse(int from, int to, uint64_t size) {
        uint64_t pos = 0;
        int r;

        while (pos < size) {
                off_t data = lseek(from, (off_t) pos, SEEK_DATA), hole;

                if (data < 0 && errno == ENXIO)
                        break;
                if (data < 0)
                        data = (off_t) pos;
                hole = lseek(from, data, SEEK_HOLE);
                if (hole < 0 || (uint64_t) hole > size)
                        hole = (off_t) size;
                r = copy_range(from, to, (uint64_t) data, (uint64_t) hole);
                if (r < 0)
                        return r;
                pos = (uint64_t) hole;
        }
        if (ftruncate(to, (off_t) size) < 0)
                return negative_errno();
        return 0;
}

typedef struct CopyArgs {
        Adoption *adoption;
        size_t index;
        OpError *err;
} CopyArgs;

/* The new header's backing: the next layer's new file, with its format; none at the bottom. */
static void new_backing(Adoption *a, size_t i, const char **ret_file, const char **ret_format) {
        const Source *next = i + 1 < a->n ? &a->src[i + 1] : NULL;

        *ret_file = next ? next->layer->file : NULL;
        *ret_format = next ? image_format_to_string(next->layer->format) : NULL;
}

/* Fills the store's temporary file: the copy, checked again (the source could have changed since it
 * was checked; the copy cannot), then its backing pointer rewritten. */
static int fill_copy(int fd, void *userdata) {
        CopyArgs *args = userdata;
        Adoption *a = args->adoption;
        Source *src = &a->src[args->index];
        const char *file, *format;
        FormatError ferr = {};
        OpError e = {};
        uint64_t vsize;
        int r;

        r = copy_sparse(src->fd, fd, (uint64_t) src->st.st_size);
        if (r < 0)
                return op_error(args->err, r, "%s: copying failed", src->label);
        r = op_validate_chain_layer(fd, src->layer->format, a->lim, &vsize, NULL, &e);
        if (r < 0)
                return op_error(args->err, r, "%s changed while it was copied: %s", src->label, e.reason);
        if (vsize != src->virtual_size)
                return op_error(args->err, -EBUSY, "%s changed while it was copied", src->label);
        if (!src->rewrite_header)
                return 0;
        new_backing(a, args->index, &file, &format);
        r = qcow2_set_backing(fd, file, format, &ferr);
        if (r < 0)
                return op_error(args->err, r, "%s: cannot rewrite the backing file name: %s", src->label, ferr.reason);
        return 0;
}

static int materialize_copy(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i];
        CopyArgs args = { .adoption = a, .index = i, .err = err };
        int r;

        r = store_put_layer(a->store, src->layer);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        src->in_store = true;
        txn_crash_point(a->txn, "after-layer-record");

        r = store_create_layer_file(a->store, src->layer, fill_copy, &args);
        if (r < 0)
                return op_error(err, r, "%s: cannot create the image file", src->label);
        txn_crash_point(a->txn, "after-file");

        src->layer->state = LAYER_READY;
        r = store_save_layer(a->store, src->layer);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        return 0;
}

/* move, first half: a second name for the file in the store. Until the commit the file keeps its old
 * name too, so that a roll-back (which removes the store's names) never loses the caller's data. */
static int materialize_link(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i];
        struct stat st;
        int r;

        r = store_put_layer(a->store, src->layer);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        src->in_store = true;
        txn_crash_point(a->txn, "after-layer-record");

        if (linkat(src->dir_fd, src->name, a->store->images_fd, src->layer->file, 0) < 0) {
                r = negative_errno();
                if (r == -EXDEV)
                        return op_error(err, -EOPNOTSUPP, "%s is on another mount than the store; adopt without \"move\"",
                                        src->label);
                return op_error(err, r, "%s: cannot link the file into the store: %s", src->label, strerror(-r));
        }
        if (fstatat(a->store->images_fd, src->layer->file, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return op_error(err, negative_errno(), "cannot stat a linked file");
        if (st.st_dev != src->st.st_dev || st.st_ino != src->st.st_ino)
                return op_error(err, -EBUSY, "%s was replaced while it was adopted", src->label);
        src->layer->inode = (uint64_t) st.st_ino;
        txn_crash_point(a->txn, "after-file");
        return 0;
}

/* move, second half: mode, a last check and the new backing pointer, each undone on failure. */
static int materialize_moved_header(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i];
        _cleanup_free_ uint8_t *header = NULL;
        _cleanup_close_ int log_fd = -EBADF;
        const char *file, *format;
        FormatError ferr = {};
        UndoLog undo;
        OpError e = {};
        struct stat st;
        uint64_t vsize;
        size_t size;
        int r;

        src->rw_fd = open_beneath(a->store->images_fd, src->layer->file, O_RDWR, 0);
        if (src->rw_fd < 0)
                return op_error(err, src->rw_fd, "%s: cannot open the linked file", src->label);
        if (fstat(src->rw_fd, &st) < 0)
                return op_error(err, negative_errno(), "cannot stat a linked file");
        if (st.st_dev != src->st.st_dev || st.st_ino != src->st.st_ino)
                return op_error(err, -EBUSY, "%s was replaced while it was adopted", src->label);
        if ((st.st_mode & 07777) != ADOPT_STORE_MODE && fchmod(src->rw_fd, ADOPT_STORE_MODE) < 0)
                return op_error(err, negative_errno(), "%s: cannot change its mode", src->label);
        r = op_validate_chain_layer(src->rw_fd, src->layer->format, a->lim, &vsize, NULL, &e);
        if (r < 0)
                return op_error(err, r, "%s changed while it was adopted: %s", src->label, e.reason);
        if (vsize != src->virtual_size)
                return op_error(err, -EBUSY, "%s changed while it was adopted", src->label);

        if (src->rewrite_header) {
                new_backing(a, i, &file, &format);
                r = qcow2_build_backing_header(src->rw_fd, file, format, &header, &size, &ferr);
                if (r < 0)
                        return op_error(err, r, "%s: cannot rewrite the backing file name: %s", src->label, ferr.reason);
                /* The caller's bytes go to an undo log first: a roll-back, even after a crash, gives the
                 * file back exactly as it was. */
                log_fd = txn_undo_create(a->txn, src->layer->id, false);
                if (log_fd < 0)
                        return op_error(err, log_fd, "cannot create an undo log in the journal");
                r = undo_begin(&undo, log_fd, src->rw_fd, &ferr);
                if (r >= 0)
                        r = undo_save(&undo, 0, size, &ferr);
                if (r >= 0)
                        r = undo_sync(&undo, &ferr);
                if (r < 0)
                        return op_error(err, r, "%s: cannot save the header in the undo log: %s", src->label, ferr.reason);
                r = format_pwrite_full(src->rw_fd, header, size, 0);
                if (r >= 0 && fdatasync(src->rw_fd) < 0)
                        r = negative_errno();
                if (r < 0)
                        return op_error(err, r, "%s: cannot write the header", src->label);
                txn_crash_point(a->txn, "after-header");
        }

        src->layer->state = LAYER_READY;
        r = store_save_layer(a->store, src->layer);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        return 0;
}

/* move, after the commit: the old names go. If we die before, recovery removes them (the journal entry
 * names them, with device and inode); the data is safe either way. */
static void remove_old_names(void *userdata) {
        Adoption *a = userdata;

        for (size_t i = 0; i < a->n; i++) {
                Source *src = &a->src[i];
                struct stat st;

                if (fstatat(src->dir_fd, src->name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != src->st.st_dev ||
                    st.st_ino != src->st.st_ino) {
                        log_warning("%s was renamed or replaced during the adoption; leaving it", src->label);
                        continue;
                }
                if (unlinkat(src->dir_fd, src->name, 0) < 0 || fsync_directory(src->dir_fd) < 0)
                        log_error("Cannot remove the old name of %s: %s", src->label, strerror(errno));
        }
}

static int new_layers(Adoption *a, OpError *err) {
        for (size_t i = 0; i < a->n; i++) {
                Source *src = &a->src[i];
                Layer *l;
                char file[LAYER_ID_LEN + 8];
                int r;

                l = src->layer = calloc(1, sizeof(Layer));
                if (!l)
                        return op_error(err, -ENOMEM, "out of memory");
                r = layer_id_new(l->id);
                if (r < 0)
                        return op_error(err, r, "cannot generate a layer id");
                snprintf(file, sizeof(file), "%s.%s", l->id, image_format_to_string(src->xml->format));
                l->file = strdup(file);
                l->vm = strdup(a->vm);
                if (!l->file || !l->vm)
                        return op_error(err, -ENOMEM, "out of memory");
                l->format = src->xml->format;
                l->virtual_size = src->virtual_size;
                l->state = LAYER_CREATING;
                l->generation = 1;
        }
        for (size_t i = 0; i + 1 < a->n; i++) {
                Layer *l = a->src[i].layer, *below = a->src[i + 1].layer;
                l->backing = strdup(below->id);
                l->backing_format = below->format;
                if (!l->backing)
                        return op_error(err, -ENOMEM, "out of memory");
        }
        return 0;
}

/* The VM record once the disk is added: the commit point. */
static int next_vm(Adoption *a, const Vm *v, Vm **ret, OpError *err) {
        _cleanup_(vm_freep) Vm *next = NULL;
        Disk *disks, *d;
        int r;

        r = vm_copy(v, &next);
        if (r < 0)
                return op_error(err, r, "out of memory");
        disks = reallocarray(next->disks, next->n_disks + 1, sizeof(Disk));
        if (!disks)
                return op_error(err, -ENOMEM, "out of memory");
        next->disks = disks;
        d = &next->disks[next->n_disks++];
        *d = (Disk) {};
        d->name = strdup(a->disk.target);
        d->chain = calloc(a->n, sizeof(char *));
        if (!d->name || !d->chain)
                return op_error(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < a->n; i++) {
                d->chain[i] = strdup(a->src[i].layer->id);
                if (!d->chain[i])
                        return op_error(err, -ENOMEM, "out of memory");
                d->n_chain++;
        }
        next->generation++;
        *ret = TAKE_PTR(next);
        return 0;
}

static int adopt_checks(Adoption *a, Vm *v, OpError *err) {
        uint64_t needed = 0;
        struct statvfs vfs;
        int r;

        if (vm_find_disk(v, a->disk.target))
                return op_error(err, -EEXIST, "VM '%s' already has a disk '%s'", a->vm, a->disk.target);
        if (v->n_disks >= a->lim->max_disks_per_vm)
                return op_error(err, -E2BIG, "VM '%s' has the maximum number of disks (%" PRIu32 ")", a->vm,
                                a->lim->max_disks_per_vm);
        if (a->store->n_layers + a->disk.n_layers > a->lim->max_images)
                return op_error(err, -E2BIG, "the store cannot hold %zu more layers (limit %" PRIu32 ")", a->disk.n_layers,
                                a->lim->max_images);
        if (fstat(a->store->images_fd, &a->images_st) < 0)
                return op_error(err, negative_errno(), "cannot stat the store");

        a->src = calloc(a->disk.n_layers, sizeof(Source));
        if (!a->src)
                return op_error(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < a->disk.n_layers; i++) {
                a->src[i] = (Source) { .xml = &a->disk.layers[i], .dir_fd = -EBADF, .fd = -EBADF, .rw_fd = -EBADF };
                a->n++;
                r = source_open(a, i, err);
                if (r < 0)
                        return r;
                if (a->move) {
                        r = source_check_move(a, &a->src[i], err);
                        if (r < 0)
                                return r;
                }
        }
        /* Once every file is open: the backing checks compare each header with the next file. */
        for (size_t i = 0; i < a->n; i++) {
                r = source_validate(a, i, err);
                if (r < 0)
                        return r;
                needed += (uint64_t) a->src[i].st.st_blocks * 512;
        }
        if (!a->move && needed > ADOPT_MAX_COPY_BYTES)
                return op_error(err, -E2BIG, "the chain holds %" PRIu64 " bytes of data; an adoption copies at most %" PRIu64
                                " (use \"move\" to adopt it without copying)", needed, ADOPT_MAX_COPY_BYTES);
        if (!a->move && fstatvfs(a->store->images_fd, &vfs) >= 0 && needed > (uint64_t) vfs.f_bavail * vfs.f_frsize)
                return op_error(err, -ENOSPC, "the store has %" PRIu64 " bytes free, the chain needs %" PRIu64,
                                (uint64_t) vfs.f_bavail * vfs.f_frsize, needed);
        return 0;
}

int op_adopt_domain_xml(Store *s, const Limits *lim, const char *vm, const char *xml, bool move,
                        char ret_disk[static NAME_MAX_LEN + 1], OpError *err) {
        _cleanup_(adoption_done) Adoption a = { .store = s, .lim = lim, .vm = vm, .move = move };
        _cleanup_(vm_freep) Vm *next = NULL;
        _cleanup_(txn_abortp) Txn *t = NULL;
        Vm *v;
        int r;

        v = store_find_vm(s, vm);
        if (!v)
                return op_error(err, -ENOENT, "no VM '%s'", vm);
        r = domain_xml_parse(xml, strlen(xml), lim->max_chain_depth, &a.disk, err);
        if (r < 0)
                return r;
        r = adopt_checks(&a, v, err);
        if (r < 0)
                return r;
        r = new_layers(&a, err);
        if (r < 0)
                return r;
        r = next_vm(&a, v, &next, err);
        if (r < 0)
                return r;

        /* Nothing has changed so far. From here on the journal accounts for every new layer. */
        r = txn_new(s, "adopt", INTENT_COMMIT_VM, vm, next->generation, &t);
        for (size_t i = 0; r >= 0 && i < a.n; i++)
                r = txn_add_new(t, a.src[i].layer->id);
        /* move: the old names go after the commit point (through the directories we checked), by
         * recovery too if we die in between. */
        for (size_t i = 0; move && r >= 0 && i < a.n; i++)
                r = txn_add_unlink(t, a.src[i].xml->path, (uint64_t) a.src[i].st.st_dev,
                                   (uint64_t) a.src[i].st.st_ino, a.src[i].st.st_mode & 07777);
        if (r >= 0) {
                txn_set_unlink_func(t, remove_old_names, &a);
                r = txn_start(t);
        }
        if (r < 0)
                return op_error(err, r, "cannot write the journal");
        a.txn = t;

        /* Bottom up, so that every layer's backing file exists before the layer. */
        for (size_t i = a.n; r >= 0 && i-- > 0;)
                r = move ? materialize_link(&a, i, err) : materialize_copy(&a, i, err);
        if (move && r >= 0)
                r = fsync_directory(s->images_fd);
        for (size_t i = a.n; move && r >= 0 && i-- > 0;)
                r = materialize_moved_header(&a, i, err);
        if (r >= 0) {
                /* Also removes the old names and the undo logs of the headers. */
                r = txn_commit(t, txn_write_vm, next);
                if (r < 0)
                        op_record_error(err, r, "VM");
                else
                        next = NULL; /* the store owns it */
        }
        if (r < 0)
                /* txn_abortp() gives moved files their header and mode back, removes the new records and the
                 * store's names. */
                return r;

        memcpy(ret_disk, a.disk.target, strlen(a.disk.target) + 1);
        log_op(LOG_INFO, "adopt", vm, a.disk.target, a.src[0].layer->id, "Adopted a chain of %zu layer(s) as disk '%s' of VM '%s'%s",
               a.n, a.disk.target, vm, move ? " (moved)" : "");
        return 0;
}
