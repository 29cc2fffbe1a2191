/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Read-only questions about the store and the caller's files: lists, chains, owners, Inspect. */

#include "ops.h"

#define UID_ANY ((uid_t) -1)

/* The owner of VM `vm`; -ENOENT if there is none. */
int op_vm_owner(Store *s, const char *vm, uid_t *ret);
/* Whether `uid` owns at least one VM. */
bool op_owns_any_vm(Store *s, uid_t uid);

typedef int (*ImageListFunc)(const Layer *l, uint64_t allocated, void *userdata);
/* Every catalog image that is ready. */
int op_list_images(Store *s, ImageListFunc cb, void *userdata);

typedef int (*VmListFunc)(const Vm *v, void *userdata);
/* Every VM, or only those of `owner` (UID_ANY: all). */
int op_list_vms(Store *s, uid_t owner, VmListFunc cb, void *userdata);

typedef int (*ChainLayerFunc)(const Layer *l, uint64_t allocated, void *userdata);
/* The chain of `disk` of `vm`, top first. -ENOENT naming what is missing; -EBADMSG if a layer's record is. */
int op_get_chain(Store *s, const char *vm, const char *disk, ChainLayerFunc cb, void *userdata, OpError *err);

/* Describes the caller's file (read through a private dup of `caller_fd` only) as JSON: qemu-img info's
 * key names plus vdisk's verdict. */
int op_inspect(int caller_fd, ImageFormat f, const Limits *lim, char **ret_json, OpError *err);
