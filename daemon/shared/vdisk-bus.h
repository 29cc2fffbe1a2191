/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The names of vdisk's D-Bus interface (docs/dbus-api.md), shared by vdiskd and vdiskctl. */

#define VDISK_BUS_NAME "org.vdisk1"
#define VDISK_MANAGER_PATH "/org/vdisk1"
#define VDISK_MANAGER_INTERFACE "org.vdisk1.Manager"
#define VDISK_JOB_PREFIX "/org/vdisk1/job"
#define VDISK_JOB_INTERFACE "org.vdisk1.Job"
#define VDISK_LEASE_PREFIX "/org/vdisk1/lease"
#define VDISK_LEASE_INTERFACE "org.vdisk1.Lease"

#define VDISK_ERROR_PREFIX "org.vdisk1.Error."
#define VDISK_ERROR_NOT_FOUND VDISK_ERROR_PREFIX "NotFound"
#define VDISK_ERROR_ALREADY_EXISTS VDISK_ERROR_PREFIX "AlreadyExists"
#define VDISK_ERROR_IN_USE VDISK_ERROR_PREFIX "InUse"
#define VDISK_ERROR_UNSAFE_IMAGE VDISK_ERROR_PREFIX "UnsafeImage"
#define VDISK_ERROR_CORRUPT VDISK_ERROR_PREFIX "Corrupt"
#define VDISK_ERROR_NOT_SUPPORTED VDISK_ERROR_PREFIX "NotSupported"
#define VDISK_ERROR_CHAIN_TOO_DEEP VDISK_ERROR_PREFIX "ChainTooDeep"
#define VDISK_ERROR_LIMIT_EXCEEDED VDISK_ERROR_PREFIX "LimitExceeded"
#define VDISK_ERROR_CANCELLED VDISK_ERROR_PREFIX "Cancelled"
#define VDISK_ERROR_NO_SPACE VDISK_ERROR_PREFIX "NoSpace"
#define VDISK_ERROR_NOT_JOINED VDISK_ERROR_PREFIX "NotJoined"
/* And two standard names: */
#define VDISK_ERROR_INVALID_ARGS "org.freedesktop.DBus.Error.InvalidArgs"
#define VDISK_ERROR_ACCESS_DENIED "org.freedesktop.DBus.Error.AccessDenied"
