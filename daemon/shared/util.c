/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <linux/openat2.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "log.h"
#include "test-hooks.h"
#include "util.h"

bool disk_name_is_valid(const char *s) {
        size_t n;

        if (!name_is_valid(s))
                return false;
        n = strlen(s);
        /* A disk's name is the node name of its top layer in QEMU: a letter first, at most 31 characters. */
        return n <= DISK_NAME_MAX_LEN && ((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z'));
}

bool name_is_valid(const char *s) {
        size_t n;

        if (!s)
                return false;
        n = strlen(s);
        if (n == 0 || n > NAME_MAX_LEN)
                return false;
        for (size_t i = 0; i < n; i++) {
                char c = s[i];
                bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
                if (!alnum && (i == 0 || (c != '_' && c != '.' && c != '-')))
                        return false;
        }
        return true;
}

int layer_id_new(char ret[static LAYER_ID_LEN + 1]) {
        static const char hex[] = "0123456789abcdef";
        uint8_t b[LAYER_ID_LEN / 2];

        if (getrandom(b, sizeof(b), 0) != (ssize_t) sizeof(b))
                return negative_errno();
        for (size_t i = 0; i < sizeof(b); i++) {
                ret[2 * i] = hex[b[i] >> 4];
                ret[2 * i + 1] = hex[b[i] & 15];
        }
        ret[LAYER_ID_LEN] = 0;
        return 0;
}

bool layer_id_is_valid(const char *s) {
        if (!s || strlen(s) != LAYER_ID_LEN)
                return false;
        for (size_t i = 0; i < LAYER_ID_LEN; i++)
                if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        return true;
}

int fsync_directory(int dirfd) {
        return fsync(dirfd) < 0 ? negative_errno() : 0;
}

int open_beneath(int dirfd, const char *name, int flags, mode_t mode) {
        struct open_how how = {
                .flags = (uint64_t) (flags | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY),
                .mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
                .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV,
        };
        int fd;

        if (strchr(name, '/') || streq(name, "..") || streq(name, "."))
                return -EINVAL;

        fd = (int) syscall(SYS_openat2, dirfd, name, &how, sizeof(how));
        if (fd >= 0)
                return fd;
        if (errno != ENOSYS && errno != EPERM)
                return negative_errno();

        /* No openat2 (or seccomp refuses it): a single component with O_NOFOLLOW is equivalent but for mounts. */
        fd = openat(dirfd, name, flags | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, mode);
        return fd < 0 ? negative_errno() : fd;
}

char *strdup_or_null(const char *s) {
        return s ? strdup(s) : NULL;
}

bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return strcmp(a, b) == 0;
}

void crash_point(const char *point) {
        if (test_hook_crash_point(point)) {
                log_notice("crash point %s reached: killing myself", point);
                (void) raise(SIGKILL);
        }
}

const char *startswith(const char *s, const char *prefix) {
        size_t n = strlen(prefix);
        return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

int strv_push(char ***v, size_t *n, const char *s) {
        char **p = reallocarray(*v, *n + 2, sizeof(char *));

        if (!p)
                return -ENOMEM;
        *v = p;
        p[*n] = strdup(s);
        p[*n + 1] = NULL;
        if (!p[*n])
                return -ENOMEM;
        (*n)++;
        return 0;
}

void strv_free(char **v) {
        for (char **p = v; p && *p; p++)
                free(*p);
        free(v);
}
