/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Checks: records against the files (Verify, quarantine), and files handed in by callers (uploads,
 * adopted layers, Inspect's fd). */

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

int op_verify(Store *s, const char *vm, const char *only_disk, bool top_only, int top_fd, VerifyProblemFunc cb,
              void *userdata, OpError *err) {
        Vm *v = store_find_vm(s, vm);
        char text[512];
        int r;

        if (!v)
                return op_error(err, -ENOENT, "no VM '%s'", vm);

#define PROBLEM(...)                                                                 \
        do {                                                                         \
                snprintf(text, sizeof(text), __VA_ARGS__);                           \
                r = cb(d->name, id, text, userdata);                                 \
                if (r < 0)                                                           \
                        return op_error(err, r, "out of memory");                    \
        } while (0)

        for (size_t i = 0; i < v->n_disks; i++) {
                Disk *d = &v->disks[i];

                if (only_disk && !streq(only_disk, d->name))
                        continue;
                if (d->quarantine) {
                        const char *id = d->chain[0];
                        PROBLEM("disk is quarantined: %s", d->quarantine);
                }
                for (size_t k = 0; k < (top_only ? MIN(d->n_chain, (size_t) 1) : d->n_chain); k++) {
                        const char *id = d->chain[k];
                        Layer *l = store_find_layer(s, id), *below = NULL;
                        _cleanup_close_ int owned = -EBADF;
                        FormatError ferr = {};
                        int fd;

                        if (!l) {
                                PROBLEM("layer record is missing");
                                continue;
                        }
                        if (k + 1 < d->n_chain) {
                                below = store_find_layer(s, d->chain[k + 1]);
                                if (!streq_ptr(l->backing, d->chain[k + 1]))
                                        PROBLEM("record's backing layer differs from the disk's chain");
                        } else if (l->backing)
                                PROBLEM("bottom layer's record names a backing layer");

                        /* The caller may already hold the top layer open (and checked) as `top_fd`: borrowed,
                         * the reads below are positioned and leave the description as it was. */
                        if (k == 0 && top_fd >= 0)
                                fd = top_fd;
                        else
                                fd = owned = store_open_layer(s, l, O_RDONLY);
                        if (fd == -ENOENT) {
                                PROBLEM("image file is missing");
                                continue;
                        }
                        if (fd < 0) {
                                PROBLEM("image file is not the one recorded (type, owner, links or inode differ)");
                                continue;
                        }
                        if (l->format == IMAGE_FORMAT_RAW) {
                                struct stat st;

                                if (fstat(fd, &st) < 0)
                                        return op_error(err, negative_errno(), "cannot stat a layer");
                                if ((uint64_t) st.st_size != l->virtual_size)
                                        PROBLEM("raw file size %" PRIu64 " differs from the recorded size %" PRIu64,
                                                (uint64_t) st.st_size, l->virtual_size);
                                continue;
                        }

                        Qcow2Header h;
                        r = qcow2_header_read(fd, NULL, &h, &ferr);
                        if (r < 0) {
                                PROBLEM("qcow2 header is invalid: %s", ferr.reason);
                                continue;
                        }
                        if (h.size != l->virtual_size)
                                PROBLEM("header size %" PRIu64 " differs from the recorded size %" PRIu64, h.size,
                                        l->virtual_size);
                        if (below) {
                                if (!h.has_backing_file || !streq(h.backing_file, below->file))
                                        PROBLEM("header's backing file name differs from the record (expected %s)",
                                                below->file);
                                if (!h.has_backing_format || !streq(h.backing_format, image_format_to_string(below->format)))
                                        PROBLEM("header's backing format differs from the record (expected %s)",
                                                image_format_to_string(below->format));
                        } else if (h.has_backing_file)
                                PROBLEM("header names a backing file, the record has none");
                        if (l->data_file) {
                                _cleanup_close_ int dfd = store_open_data_file(s, l, O_RDONLY);
                                if (!(h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) || !h.has_data_file_name ||
                                    !streq(h.data_file, l->data_file))
                                        PROBLEM("header's external data file differs from the record (expected %s)", l->data_file);
                                if (!!(h.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) != l->data_file_raw)
                                        PROBLEM("header's raw-data-file flag differs from the record");
                                if (dfd == -ENOENT)
                                        PROBLEM("data file is missing");
                                else if (dfd < 0)
                                        PROBLEM("data file is not the one recorded (type, owner, links or inode differ)");
                        } else if (h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
                                PROBLEM("header uses an external data file that is not recorded");
                        if (h.incompatible_features & (QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DIRTY))
                                PROBLEM("header is marked %s",
                                        (h.incompatible_features & QCOW2_INCOMPAT_CORRUPT) ? "corrupt" : "dirty");
                }
        }
#undef PROBLEM
        return 0;
}

int op_verify_first_problem(const char *disk, const char *layer, const char *text, void *userdata) {
        char **first = userdata;

        if (!*first) {
                *first = strdup(text);
                if (!*first)
                        return -ENOMEM;
        }
        return 0;
}

int op_check_caller_fd(int fd, OpError *err) {
        struct stat st;
        int flags, copy;

        flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return op_error(err, -EINVAL, "invalid file descriptor");
        if (flags & O_PATH)
                return op_error(err, -EINVAL, "an O_PATH file descriptor cannot be read");
        if ((flags & O_ACCMODE) == O_WRONLY)
                return op_error(err, -EINVAL, "the file descriptor is not open for reading");
        if (fstat(fd, &st) < 0)
                return op_error(err, -EINVAL, "cannot stat the file descriptor");
        if (!S_ISREG(st.st_mode))
                return op_error(err, -EINVAL, "the file descriptor is not a regular file");
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0)
                return op_error(err, negative_errno(), "cannot duplicate the file descriptor");
        return copy;
}

/* The checks of an upload; `allow_backing`: a backing file name may be present (the caller compares it
 * with the chain). `ret_header` (qcow2 only, may be NULL): the parsed header. */
static int validate_image(int fd, ImageFormat f, const Limits *lim, bool allow_backing, uint64_t *ret_virtual_size,
                          Qcow2Header *ret_header, OpError *err) {
        Qcow2Limits qlim = { .max_virtual_size = lim->max_virtual_size };
        Qcow2CheckResult res = {};
        FormatError ferr = {};
        Qcow2Header h;
        struct stat st;
        int r;

        r = probe_fd(fd, f, NULL, &ferr);
        if (r == -EBADMSG || r == -EMEDIUMTYPE)
                return op_error(err, -EMEDIUMTYPE, "%s", ferr.reason);
        if (r < 0)
                return op_error(err, r, "%s", ferr.reason);

        if (f == IMAGE_FORMAT_RAW) {
                if (fstat(fd, &st) < 0)
                        return op_error(err, negative_errno(), "cannot stat the image");
                if ((uint64_t) st.st_size % FORMAT_SECTOR_SIZE != 0)
                        return op_error(err, -EBADMSG, "raw image size %" PRIu64 " is not a multiple of 512", (uint64_t) st.st_size);
                /* An empty raw file is a valid image of size 0, to qemu-img and to Inspect alike. */
                if ((uint64_t) st.st_size > lim->max_virtual_size)
                        return op_error(err, -E2BIG, "raw image is larger than the limit of %" PRIu64, lim->max_virtual_size);
                *ret_virtual_size = (uint64_t) st.st_size;
                return 0;
        }

        r = qcow2_header_read(fd, &qlim, &h, &ferr);
        if (r < 0)
                return op_error(err, r == -EIO ? -EIO : r, "%s", ferr.reason);
        /* Uploads are self-contained: nothing outside the file, nothing vdisk cannot hand QEMU safely. */
        if (h.has_backing_file && !allow_backing)
                return op_error(err, -EMEDIUMTYPE, "image has a backing file; uploads must be self-contained");
        if (h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
                return op_error(err, -EMEDIUMTYPE, "image uses an external data file; %s",
                                allow_backing ? "vdisk takes over none it did not create" : "uploads must be self-contained");
        if (h.crypt_method != QCOW2_CRYPT_NONE)
                return op_error(err, -EOPNOTSUPP, "encrypted images are not supported");
        /* Corrupt or dirty bit, unknown backing format: what Inspect also calls invalid. */
        r = qcow2_header_verdict(&h, &ferr);
        if (r < 0)
                return op_error(err, r, "%s", ferr.reason);

        r = qcow2_check(fd, &h, &qlim, &res, &ferr);
        if (r < 0)
                return op_error(err, r, "%s", ferr.reason);
        if (res.corruptions > 0 || res.leaks > 0) {
                r = op_error(err, -EBADMSG, "image metadata is inconsistent (%" PRIu64 " errors, %" PRIu64 " leaks)%s%s",
                             res.corruptions, res.leaks, res.n_problems > 0 ? ": " : "",
                             res.n_problems > 0 ? res.problems[0].text : "");
                qcow2_check_result_done(&res);
                return r;
        }
        qcow2_check_result_done(&res);
        *ret_virtual_size = h.size;
        if (ret_header)
                *ret_header = h;
        return 0;
}

int op_validate_upload(int fd, ImageFormat f, const Limits *lim, uint64_t *ret_virtual_size, OpError *err) {
        return validate_image(fd, f, lim, false, ret_virtual_size, NULL, err);
}

int op_validate_chain_layer(int fd, ImageFormat f, const Limits *lim, uint64_t *ret_virtual_size, Qcow2Header *ret_header,
                            OpError *err) {
        return validate_image(fd, f, lim, true, ret_virtual_size, ret_header, err);
}

int op_quarantine(Store *s, const char *vm, const char *disk, const char *reason, OpError *err) {
        Vm *v = store_find_vm(s, vm), *next = NULL;
        Disk *d;
        int r;

        if (!v || !vm_find_disk(v, disk))
                return op_error(err, -ENOENT, "no disk '%s' of VM '%s'", disk, vm);
        r = vm_copy(v, &next);
        if (r < 0)
                return op_error(err, r, "out of memory");
        d = vm_find_disk(next, disk);
        free(d->quarantine);
        d->quarantine = strdup_or_null(reason);
        next->generation++;
        r = store_put_vm(s, next);
        if (r < 0) {
                vm_free(next);
                return op_record_error(err, r, "VM");
        }
        log_op(LOG_WARNING, "quarantine", vm, disk, NULL, "Disk '%s' of VM '%s' %s%s", disk, vm,
               reason ? "quarantined: " : "released from quarantine", reason ?: "");
        return 0;
}
