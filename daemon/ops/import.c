/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * ImportImage: copy the caller's file into a temporary file in the store, in steps so that the event
 * loop keeps serving, then validate the *copy* (the caller could change its file meanwhile), then
 * rename it into place and mark the layer ready (the commit point).
 */

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "log.h"
#include "ops.h"

#define IMPORT_CHUNK (UINT64_C(64) << 20)

struct ImportOp {
        Store *store;
        Limits limits;
        Layer *layer; /* owned by the store once its record is written */
        Txn *txn;
        int source_fd;
        int target_fd;
        uint64_t size;
        uint64_t pos;
        uint64_t done;
        bool finished;
};

uint64_t import_bytes_done(const ImportOp *op) {
        return op->done;
}

uint64_t import_bytes_total(const ImportOp *op) {
        return op->size;
}

const char *import_layer(const ImportOp *op) {
        return op->layer ? op->layer->id : NULL;
}

ImportOp *import_free(ImportOp *op) {
        if (!op)
                return NULL;
        safe_close(op->source_fd);
        safe_close(op->target_fd);
        txn_free(op->txn);
        free(op);
        return NULL;
}

void import_abort(ImportOp *op) {
        if (op->finished || !op->layer)
                return;
        store_tmp_discard(op->store, op->layer);
        (void) txn_abort(op->txn); /* removes the layer record, frees the layer */
        op->layer = NULL;
        op->finished = true;
}

int import_begin(Store *s, const Limits *lim, const char *name, ImageFormat f, int source_fd, ImportOp **ret,
                 OpError *err) {
        ImportOp *op;
        struct stat st;
        Layer *l;
        char file[LAYER_ID_LEN + 8];
        int r;

        if (store_find_catalog(s, name))
                return op_error(err, -EEXIST, "image '%s' already exists", name);
        if (s->n_layers >= lim->max_images)
                return op_error(err, -E2BIG, "the store holds the maximum number of layers (%" PRIu32 ")", lim->max_images);
        if (fstat(source_fd, &st) < 0)
                return op_error(err, negative_errno(), "cannot stat the source");
        if ((uint64_t) st.st_size > lim->max_virtual_size + (UINT64_C(1) << 30))
                return op_error(err, -E2BIG, "the source has %" PRIu64 " bytes, more than any image of at most %" PRIu64 " bytes (MaxVirtualSize) can take",
                                (uint64_t) st.st_size, lim->max_virtual_size);
        {
                /* The copy is sparse: it needs what the source allocates, which must fit now. */
                struct statvfs vfs;
                if (fstatvfs(s->images_fd, &vfs) >= 0 &&
                    (uint64_t) st.st_blocks * 512 > (uint64_t) vfs.f_bavail * vfs.f_frsize)
                        return op_error(err, -ENOSPC, "the store has %" PRIu64 " bytes free, the image needs %" PRIu64,
                                        (uint64_t) vfs.f_bavail * vfs.f_frsize, (uint64_t) st.st_blocks * 512);
        }

        op = calloc(1, sizeof(ImportOp));
        l = calloc(1, sizeof(Layer));
        if (!op || !l) {
                free(op);
                free(l);
                return op_error(err, -ENOMEM, "out of memory");
        }
        op->store = s;
        op->limits = *lim;
        op->source_fd = source_fd;
        op->target_fd = -EBADF;
        op->size = (uint64_t) st.st_size;

        r = layer_id_new(l->id);
        snprintf(file, sizeof(file), "%s.%s", l->id, image_format_to_string(f));
        l->file = strdup(file);
        l->catalog_name = strdup(name);
        l->format = f;
        l->state = LAYER_CREATING;
        l->generation = 1;
        if (r < 0 || !l->file || !l->catalog_name) {
                layer_free(l);
                op->source_fd = -EBADF;
                import_free(op);
                return op_error(err, r < 0 ? r : -ENOMEM, "cannot allocate a layer");
        }

        r = txn_begin(s, "import", INTENT_COMMIT_LAYER_READY, l->id, 0, l->id, NULL, &op->txn);
        if (r < 0) {
                layer_free(l);
                op->source_fd = -EBADF;
                import_free(op);
                return op_error(err, r, "cannot write the journal");
        }

        r = store_put_layer(s, l);
        if (r < 0) {
                layer_free(l);
                (void) txn_abort(op->txn); /* nothing to roll back but the entry */
                op->source_fd = -EBADF;
                import_free(op);
                return op_error(err, r, "cannot write the layer record");
        }
        op->layer = l;
        txn_crash_point(op->txn, "after-layer-record");

        op->target_fd = store_tmp_create(s, l);
        if (op->target_fd < 0) {
                r = op->target_fd;
                import_abort(op);
                op->source_fd = -EBADF;
                import_free(op);
                return op_error(err, r, "cannot create the image file");
        }
        if (ftruncate(op->target_fd, (off_t) op->size) < 0) {
                r = negative_errno();
                import_abort(op);
                op->source_fd = -EBADF;
                import_free(op);
                return op_error(err, r, "cannot size the image file");
        }

        *ret = op;
        return 0;
}

static int import_finish(ImportOp *op, OpError *err) {
        uint64_t vsize;
        int r;

        r = op_validate_upload(op->target_fd, op->layer->format, &op->limits, &vsize, err);
        if (r < 0)
                return r;
        txn_crash_point(op->txn, "before-rename");
        r = store_tmp_commit(op->store, op->layer, op->target_fd);
        if (r < 0)
                return op_error(err, r, "cannot move the image into place");
        txn_crash_point(op->txn, "after-file");

        op->layer->virtual_size = vsize;
        r = txn_commit(op->txn, txn_write_layer_ready, op->layer);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        op->finished = true;
        log_op(LOG_INFO, "import", NULL, NULL, op->layer->id, "Imported %s image '%s' (%" PRIu64 " bytes)",
               image_format_to_string(op->layer->format), op->layer->catalog_name, vsize);
        return 0;
}

int import_step(ImportOp *op, OpError *err) {
        uint64_t budget = IMPORT_CHUNK;
        struct stat st;
        int r;

        if (op->finished)
                return 0;

        /* Copy only data: holes of the source stay holes. The caller keeps its file and may change it
         * meanwhile: content is validated on the copy, but a source that shrinks would look like one
         * that ends in a hole (SEEK_DATA fails with ENXIO past the end, reads return 0) and give an
         * image with zeros where data was. So the end of the data is believed only at the size the
         * source had at the start, and any error reading the source fails the import. */
        while (budget > 0 && op->pos < op->size) {
                off_t data = lseek(op->source_fd, (off_t) op->pos, SEEK_DATA), hole;
                loff_t in, out;
                ssize_t n;

                if (data < 0 && errno == ENXIO) {
                        if (fstat(op->source_fd, &st) < 0)
                                return op_error(err, negative_errno(), "cannot stat the source");
                        if ((uint64_t) st.st_size != op->size)
                                goto changed_size;
                        op->done += op->size - op->pos;
                        op->pos = op->size;
                        break;
                }
                if (data < 0 && errno != EINVAL && errno != EOPNOTSUPP) {
                        r = negative_errno();
                        return op_error(err, r, "cannot read the source: %s", strerror(-r));
                }
                if (data < 0) /* no SEEK_DATA here: all of it is data */
                        data = (off_t) op->pos;
                if ((uint64_t) data > op->pos) {
                        op->done += MIN((uint64_t) data, op->size) - op->pos;
                        op->pos = MIN((uint64_t) data, op->size);
                        continue;
                }
                hole = lseek(op->source_fd, data, SEEK_HOLE);
                if (hole < 0 && errno != EINVAL && errno != EOPNOTSUPP && errno != ENXIO) {
                        r = negative_errno();
                        return op_error(err, r, "cannot read the source: %s", strerror(-r));
                }
                if (hole < 0 || (uint64_t) hole > op->size) /* it grew: noticed at the end */
                        hole = (off_t) op->size;

                in = out = data;
                n = copy_file_range(op->source_fd, &in, op->target_fd, &out, (size_t) MIN((uint64_t) (hole - data), budget), 0);
                if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP)) {
                        /* Fallback for file systems without copy_file_range between these files. */
                        uint8_t buf[1 << 16];
                        size_t want = (size_t) MIN((uint64_t) (hole - data), (uint64_t) sizeof(buf));
                        n = pread(op->source_fd, buf, want, data);
                        if (n < 0) {
                                r = negative_errno();
                                return op_error(err, r, "cannot read the source: %s", strerror(-r));
                        }
                        if (n > 0) {
                                r = format_pwrite_full(op->target_fd, buf, (size_t) n, (uint64_t) data);
                                if (r < 0)
                                        return op_error(err, r, "cannot write the image file: %s", strerror(-r));
                        }
                }
                if (n < 0) {
                        r = negative_errno(); /* ENOSPC and EDQUOT give NoSpace */
                        return op_error(err, r, "copying the image failed: %s", strerror(-r));
                }
                if (n == 0) /* end of file before the size it had */
                        goto changed_size;
                op->pos += (uint64_t) n;
                op->done += (uint64_t) n;
                budget -= MIN(budget, (uint64_t) n);
        }

        if (op->pos >= op->size) {
                /* All copied: the source must still have its size, or what was copied is not its content. */
                if (fstat(op->source_fd, &st) < 0)
                        return op_error(err, negative_errno(), "cannot stat the source");
                if ((uint64_t) st.st_size != op->size)
                        goto changed_size;
        }

        if (op->pos < op->size)
                return 1;
        txn_crash_point(op->txn, "after-copy");
        r = import_finish(op, err);
        return r < 0 ? r : 0;

changed_size:
        if (fstat(op->source_fd, &st) < 0)
                return op_error(err, negative_errno(), "cannot stat the source");
        return op_error(err, -EBADMSG,
                        "the source file changed size while it was copied (%" PRIu64 " bytes at the start, %" PRIu64
                        " now): nothing was imported; import it again once nothing writes to it",
                        op->size, (uint64_t) st.st_size);
}
