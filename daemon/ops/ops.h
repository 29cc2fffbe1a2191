/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Operations over the store and the format engine. Each returns 0 or a negative errno with a
 * one-line reason in `err` (FormatError). The errno says what kind of failure it is (ENOENT: not
 * found, EBUSY: in use, EBADMSG: corrupt, …); the bus face gives it its D-Bus error name in one place,
 * daemon/bus/bus-error.c (tested by tests/unit/test-auth.c).
 */

#include <sys/types.h>

#include "format.h"
#include "qcow2.h"
#include "store.h"

typedef struct Limits {
        uint32_t max_chain_depth;
        uint64_t max_virtual_size;
        uint32_t max_jobs;
        uint32_t max_vms;
        uint32_t max_disks_per_vm;
        uint32_t max_images;
        uint32_t max_leases;
        uint32_t max_leases_per_caller;
        uint32_t max_lease_fds; /* fds opened for leases and not yet handed out, in total */
        uint32_t max_lease_fds_per_caller; /* the same, of one bus client */
} Limits;

#define LIMITS_DEFAULT_MAX_CHAIN_DEPTH 1024U
#define LIMITS_DEFAULT_MAX_VIRTUAL_SIZE FORMAT_DEFAULT_MAX_VIRTUAL_SIZE
#define LIMITS_DEFAULT_MAX_JOBS 8U
#define LIMITS_DEFAULT_MAX_VMS 100000U
#define LIMITS_DEFAULT_MAX_DISKS_PER_VM 64U
#define LIMITS_DEFAULT_MAX_IMAGES 100000U
#define LIMITS_DEFAULT_MAX_LEASES 1024U
#define LIMITS_DEFAULT_MAX_LEASES_PER_CALLER 64U
#define LIMITS_DEFAULT_MAX_LEASE_FDS 16384U
#define LIMITS_DEFAULT_MAX_LEASE_FDS_PER_CALLER 4096U

void limits_init_default(Limits *l);

typedef FormatError OpError;
#define op_error format_error
/* A record could not be written; -E2BIG: it would have outgrown RECORD_MAX_SIZE. */
#define op_record_error(err, r, what)                                                                          \
        ((r) == -E2BIG ? op_error(err, r, "the " what " record would be larger than the limit of %" PRIu64 " bytes", \
                                  (uint64_t) RECORD_MAX_SIZE)                                                  \
                       : op_error(err, r, "cannot write the " what " record"))

/* `cluster_size`: NULL for the default (qcow2 only; 0 is a value, and refused). */
int op_create_image(Store *s, const Limits *lim, const char *name, ImageFormat f, uint64_t size, const char *template_name,
                    const uint32_t *cluster_size, char ret_layer[static LAYER_ID_LEN + 1], OpError *err);
int op_delete_image(Store *s, const char *name, OpError *err);
int op_create_vm(Store *s, const Limits *lim, const char *name, uid_t owner, OpError *err);
int op_delete_vm(Store *s, const char *name, OpError *err);
int op_create_disk(Store *s, const Limits *lim, const char *vm, const char *disk, const char *image, uint64_t size,
                   const char *mode, ImageFormat blank_format, bool data_file, bool data_file_raw, OpError *err);
int op_delete_disk(Store *s, const char *vm, const char *disk, OpError *err);
int op_snapshot(Store *s, const Limits *lim, const char *vm, const char *disk, char ret_layer[static LAYER_ID_LEN + 1],
                OpError *err);

/* The disk `disk` of VM `vm`, or -ENOENT naming which is missing. */
int op_find_disk(Store *s, const char *vm, const char *disk, Vm **ret_vm, Disk **ret_disk, OpError *err);

typedef int (*DiskListFunc)(const char *disk, const Layer *top, uint32_t depth, void *userdata);
/* Calls `cb` for every disk of `vm`, sorted by name, with its top layer and the number of layers of its
 * chain. Reads records only. -ENOENT if there is no such VM. */
int op_list_disks(Store *s, const char *vm, DiskListFunc cb, void *userdata, OpError *err);

typedef int (*VerifyProblemFunc)(const char *disk, const char *layer, const char *text, void *userdata);
/* Compares every layer (or only the top layer) of every disk of `vm` (or of `only_disk`) with its record.
 * `top_fd`: the top layer already opened through store_open_layer(), or -EBADF. */
int op_verify(Store *s, const char *vm, const char *only_disk, bool top_only, int top_fd, VerifyProblemFunc cb,
              void *userdata, OpError *err);
/* A VerifyProblemFunc that keeps the text of the first problem in *(char **) userdata (strdup'd). */
int op_verify_first_problem(const char *disk, const char *layer, const char *text, void *userdata);

/* Marks a disk as not to be handed out (NULL: lifts it); persisted in the VM record. */
int op_quarantine(Store *s, const char *vm, const char *disk, const char *reason, OpError *err);

/* Checks an image file about to become a catalog image: exactly the declared format, self-contained,
 * fully valid. Returns the virtual size. */
int op_validate_upload(int fd, ImageFormat f, const Limits *lim, uint64_t *ret_virtual_size, OpError *err);
/* The same checks for a layer of an existing chain (AdoptDomainXML): a qcow2 image may name a backing
 * file, which the caller compares with the chain. `ret_header` (qcow2 only, may be NULL): its header. */
int op_validate_chain_layer(int fd, ImageFormat f, const Limits *lim, uint64_t *ret_virtual_size, Qcow2Header *ret_header,
                            OpError *err);

/* Checks a caller-supplied fd: a regular file opened for reading (not O_PATH). Returns a private dup. */
int op_check_caller_fd(int fd, OpError *err);

/* ---- import: a copy in steps, driven by a job ---- */

typedef struct ImportOp ImportOp;

int import_begin(Store *s, const Limits *lim, const char *name, ImageFormat f, int source_fd, ImportOp **ret,
                 OpError *err);
/* Copies the next chunk. > 0: more to do; 0: finished and committed (ret layer in import_layer()). */
int import_step(ImportOp *op, OpError *err);
/* Rolls back an import that has not finished (cancel, or failure). */
void import_abort(ImportOp *op);
ImportOp *import_free(ImportOp *op);
uint64_t import_bytes_done(const ImportOp *op);
uint64_t import_bytes_total(const ImportOp *op);
const char *import_layer(const ImportOp *op);
