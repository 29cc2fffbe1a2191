/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "macro.h"

/* Names of VMs, disks and catalog images: ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ */
#define NAME_MAX_LEN 64U
/* Names of new disks: also valid QEMU node names, ^[A-Za-z][A-Za-z0-9_.-]{0,30}$. Disks recorded
 * before this rule keep their names in the records (the store still loads). */
#define DISK_NAME_MAX_LEN 31U
#define DISK_NAME_RULE "^[A-Za-z][A-Za-z0-9_.-]{0,30}$"
bool disk_name_is_valid(const char *s) _pure_;
bool name_is_valid(const char *s) _pure_;

/* Layer ids: 32 lower-case hex digits from getrandom(). */
#define LAYER_ID_LEN 32U
int layer_id_new(char ret[static LAYER_ID_LEN + 1]);
bool layer_id_is_valid(const char *s) _pure_;

int fsync_directory(int dirfd);

/* Opens `name` (one path component) beneath `dirfd`, refusing symlinks, magic links and mounts. */
int open_beneath(int dirfd, const char *name, int flags, mode_t mode);

char *strdup_or_null(const char *s);
bool streq_ptr(const char *a, const char *b) _pure_;

static inline bool isempty(const char *s) {
        return !s || !s[0];
}

static inline bool streq(const char *a, const char *b) {
        return __builtin_strcmp(a, b) == 0;
}

/* Optional fault injection for crash tests: VDISKD_CRASH_AT=<point> makes the daemon SIGKILL itself there.
 * Only in a build with -Dtest_hooks=true (test-hooks.h); otherwise it does nothing. */
void crash_point(const char *point);

/* The rest of `s` after `prefix`, or NULL if it does not start with it. */
const char *startswith(const char *s, const char *prefix) _pure_;


/* A list of strings, NULL-terminated and counted: strv_push() appends a copy of `s`. */
int strv_push(char ***v, size_t *n, const char *s);
/* Frees a NULL-terminated list (NULL is fine). */
void strv_free(char **v);
