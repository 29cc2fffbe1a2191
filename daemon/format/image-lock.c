/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <fcntl.h>

#include "image-lock.h"
#include "macro.h"

#define PERM_BASE 100   /* byte of a permission held */
#define SHARED_BASE 200 /* byte of a permission refused to others */
#define N_PERMS 5

enum {
        PERM_CONSISTENT_READ = 0,
        PERM_WRITE = 1,
        PERM_RESIZE = 3,
};

static int ofd_lock(int fd, short type, int cmd, off_t byte, off_t len, short *ret_type) {
        struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = len };

        if (fcntl(fd, cmd, &fl) < 0)
                return -errno;
        if (ret_type)
                *ret_type = fl.l_type;
        return 0;
}

/* Takes read locks on `hold`, then checks that nobody holds a lock on any byte of `test`. On failure
 * the locks taken are dropped again; EAGAIN/EACCES (a conflicting lock) become -EBUSY. */
static int lock_and_test(int fd, const off_t *hold, size_t n_hold, const off_t *test, size_t n_test) {
        int r = 0;

        for (size_t i = 0; i < n_hold && r >= 0; i++)
                r = ofd_lock(fd, F_RDLCK, F_OFD_SETLK, hold[i], 1, NULL);
        for (size_t i = 0; i < n_test && r >= 0; i++) {
                short type = F_UNLCK;

                r = ofd_lock(fd, F_WRLCK, F_OFD_GETLK, test[i], 1, &type);
                if (r >= 0 && type != F_UNLCK)
                        r = -EBUSY;
        }
        if (r >= 0)
                return 0;
        for (size_t i = 0; i < n_hold; i++)
                (void) ofd_lock(fd, F_UNLCK, F_OFD_SETLK, hold[i], 1, NULL);
        return r == -EAGAIN || r == -EACCES ? -EBUSY : r;
}

int image_lock_for_change(int fd) {
        /* Holding WRITE and RESIZE conflicts with anyone refusing them (200 + p), refusing them conflicts
         * with anyone holding them (100 + p); and whoever refuses CONSISTENT_READ (200) excludes us. */
        static const off_t hold[] = {
                PERM_BASE + PERM_CONSISTENT_READ, PERM_BASE + PERM_WRITE,   PERM_BASE + PERM_RESIZE,
                SHARED_BASE + PERM_WRITE,         SHARED_BASE + PERM_RESIZE,
        };
        static const off_t test[] = {
                SHARED_BASE + PERM_CONSISTENT_READ, SHARED_BASE + PERM_WRITE, SHARED_BASE + PERM_RESIZE,
                PERM_BASE + PERM_WRITE,             PERM_BASE + PERM_RESIZE,
        };

        return lock_and_test(fd, hold, ELEMENTSOF(hold), test, ELEMENTSOF(test));
}

int image_lock_for_read(int fd) {
        static const off_t hold[] = { PERM_BASE + PERM_CONSISTENT_READ, SHARED_BASE + PERM_WRITE,
                                      SHARED_BASE + PERM_RESIZE };
        static const off_t test[] = { PERM_BASE + PERM_WRITE, PERM_BASE + PERM_RESIZE };

        return lock_and_test(fd, hold, ELEMENTSOF(hold), test, ELEMENTSOF(test));
}

int image_lock_test_any(int fd) {
        for (off_t base = PERM_BASE; base <= SHARED_BASE; base += SHARED_BASE - PERM_BASE) {
                short type = F_UNLCK;
                int r = ofd_lock(fd, F_WRLCK, F_OFD_GETLK, base, N_PERMS, &type);

                if (r < 0)
                        return r;
                if (type != F_UNLCK)
                        return 1;
        }
        return 0;
}

int image_lock_test_writer(int fd) {
        static const off_t test[] = { PERM_BASE + PERM_WRITE, PERM_BASE + PERM_RESIZE };

        for (size_t i = 0; i < ELEMENTSOF(test); i++) {
                short type = F_UNLCK;
                int r = ofd_lock(fd, F_WRLCK, F_OFD_GETLK, test[i], 1, &type);

                if (r < 0)
                        return r;
                if (type != F_UNLCK)
                        return 1;
        }
        return 0;
}
