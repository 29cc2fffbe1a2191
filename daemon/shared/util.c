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

static int ofd_lock(int fd, short type, int cmd, off_t byte, short *ret_type) {
        struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1 };
        if (fcntl(fd, cmd, &fl) < 0)
                return negative_errno();
        if (ret_type)
                *ret_type = fl.l_type;
        return 0;
}

int image_lock_for_change(int fd) {
        /* QEMU's protocol (RAW_LOCK_PERM_BASE 100, RAW_LOCK_SHARED_BASE 200): hold CONSISTENT_READ,
         * WRITE and RESIZE (100, 101, 103), refuse to share WRITE and RESIZE (201, 203); then test
         * whether anyone refuses what we hold (200, 201, 203) or holds what we refuse (101, 103). */
        static const off_t hold[] = { 100, 101, 103, 201, 203 }, test[] = { 200, 201, 203, 101, 103 };
        int r;

        for (size_t i = 0; i < ELEMENTSOF(hold); i++) {
                r = ofd_lock(fd, F_RDLCK, F_OFD_SETLK, hold[i], NULL);
                if (r < 0)
                        goto fail;
        }
        for (size_t i = 0; i < ELEMENTSOF(test); i++) {
                short type;
                r = ofd_lock(fd, F_WRLCK, F_OFD_GETLK, test[i], &type);
                if (r < 0)
                        goto fail;
                if (type != F_UNLCK) {
                        r = -EBUSY;
                        goto fail;
                }
        }
        return 0;
fail:
        for (size_t i = 0; i < ELEMENTSOF(hold); i++)
                (void) ofd_lock(fd, F_UNLCK, F_OFD_SETLK, hold[i], NULL);
        return r == -EAGAIN || r == -EACCES ? -EBUSY : r;
}
