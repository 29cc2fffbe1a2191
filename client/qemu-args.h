/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The QEMU command line of "vdiskctl open --export=TYPE": the user writes the same command as for the
 * chain's fds (-device virtio-blk-pci,drive=DISK), and this module turns it into one that attaches
 * the storage helper's socket instead. It reads only the options it must (-device, -m, -machine), and
 * says what it cannot carry over instead of dropping it.
 */

#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

#include "macro.h"

typedef enum QemuExport {
        QEMU_EXPORT_VHOST_USER_BLK,
        QEMU_EXPORT_NBD,
        _QEMU_EXPORT_MAX,
        _QEMU_EXPORT_INVALID = -EINVAL,
} QemuExport;

const char *qemu_export_to_string(QemuExport e) _pure_;
QemuExport qemu_export_from_string(const char *s) _pure_;

/* What QEMU 7.2 gives an x86 pc or q35 machine without -m. */
#define QEMU_DEFAULT_RAM_SIZE (UINT64_C(128) << 20)
/* QEMU rounds the RAM size up to this; the memory backend must have exactly the rounded size. */
#define QEMU_RAM_SIZE_ALIGN UINT64_C(8192)
/* The id of the memory backend vdiskctl adds for vhost-user-blk (guest RAM shared with the helper). */
#define QEMU_SHARED_MEMORY_ID "vdisk-mem"

/* One exported disk: vdiskd's attach description and the socket's fd number in QEMU. */
typedef struct QemuExportDisk {
        const char *disk;
        QemuExport type;
        json_object *attach;
        int fd;
} QemuExportDisk;

/* Checks vdiskd's attach description of `disk` (a JSON object) for what a launcher uses; other keys
 * are ignored. Returns 0, or -EBADMSG if it is not a description of that disk with that export. */
int qemu_export_attach_check(json_object *attach, const char *disk, QemuExport type);

/* The RAM size of an -m value: "512" (MiB), "512M", "1G", "size=2G,slots=2,maxmem=8G"... Returns 0 and
 * sets *ret (bytes, rounded up to QEMU_RAM_SIZE_ALIGN as QEMU does; 0 if the value names no size), or
 * -EINVAL / -ERANGE. */
int qemu_parse_memory_option(const char *value, uint64_t *ret);

/* COMMAND with its -device options for vhost-user-blk disks rewritten, followed by what attaches each
 * disk (-chardev socket,id=DISK,fd=N or -blockdev {nbd}) and, if a disk needs guest RAM shared, a
 * shared memory backend unless COMMAND chose one. Returns 0 with a NULL-terminated array in *ret, -EINVAL
 * with a (translated) explanation in *ret_error if COMMAND cannot be carried over, -EBADMSG for an attach
 * description that qemu_export_attach_check() refuses, or -ENOMEM. */
int qemu_args_build_export(char *const *command, size_t n_command, const QemuExportDisk *disks, size_t n_disks,
                           char ***ret, char **ret_error);

/* The same checks of COMMAND as qemu_args_build_export(), before any lease exists (the disks' attach
 * and fd are not read). Returns 0, -EINVAL with *ret_error, or -ENOMEM. */
int qemu_args_check_export(char *const *command, size_t n_command, const QemuExportDisk *disks, size_t n_disks,
                           char **ret_error);

void qemu_args_free(char **v);
