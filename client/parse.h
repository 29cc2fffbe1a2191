/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include "vdisk-bus.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "macro.h"

#define VDISK_JOB_PATH_PREFIX VDISK_JOB_PREFIX "/"

/* Up to this many digits after a decimal point in a size ("1.5G"); keeps frac × 2^40 below 2^64. */
#define SIZE_FRACTION_DIGITS_MAX 6U

/* "4096", "64K", "1.5G", "20GiB", "2T": binary suffixes K, M, G, T (either case), optionally followed
 * by "B" or "iB". Returns -EINVAL for malformed input or a fraction that is not a whole number of bytes,
 * -ERANGE above 2^64-1. */
int parse_size(const char *s, uint64_t *ret);

/* A decimal uid, or a user name resolved with getpwnam(). -EINVAL, -ERANGE or -ESRCH (no such user). */
int parse_uid(const char *s, uid_t *ret);

/* A D-Bus object path: "/" or "/" followed by non-empty [A-Za-z0-9_] elements separated by single "/". */
bool object_path_is_valid(const char *p) _pure_;

/* "5" → "/org/vdisk1/job/5"; a full object path is taken as it is. */
int job_path_from_string(const char *s, char **ret);

/* The last element of an object path ("/org/vdisk1/job/5" → "5"). */
const char *object_path_last(const char *p) _pure_;
