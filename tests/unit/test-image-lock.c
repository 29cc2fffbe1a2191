/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* QEMU's image-lock protocol (daemon/format/image-lock.c) between two open file descriptions of one
 * file, as a running QEMU and vdiskd would hold them; and against a real qemu-io when it is installed. */

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "image-lock.h"
#include "test-util.h"

/* Takes QEMU-style locks as a running VM does on its active layer: holds CONSISTENT_READ, WRITE and
 * RESIZE (bytes 100, 101, 103) and refuses WRITE and RESIZE to others (201, 203). */
static void lock_like_a_writer(int fd) {
        static const off_t bytes[] = { 100, 101, 103, 201, 203 };
        for (size_t i = 0; i < sizeof(bytes) / sizeof(bytes[0]); i++) {
                struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = bytes[i], .l_len = 1 };
                CHECK(fcntl(fd, F_OFD_SETLK, &fl) == 0);
        }
}

/* As a VM using the file as a read-only backing file: holds CONSISTENT_READ (100), refuses WRITE and
 * RESIZE (201, 203). */
static void lock_like_a_reader(int fd) {
        static const off_t bytes[] = { 100, 201, 203 };
        for (size_t i = 0; i < sizeof(bytes) / sizeof(bytes[0]); i++) {
                struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = bytes[i], .l_len = 1 };
                CHECK(fcntl(fd, F_OFD_SETLK, &fl) == 0);
        }
}

int main(void) {
        char path[] = "/tmp/test-image-lock-XXXXXX";
        int fd = mkstemp(path), a, b;

        CHECK(fd >= 0);
        CHECK(ftruncate(fd, 4096) == 0);
        a = open(path, O_RDWR | O_CLOEXEC);
        b = open(path, O_RDWR | O_CLOEXEC);
        CHECK(a >= 0 && b >= 0);

        /* Nobody holds anything. */
        CHECK_EQ_INT(image_lock_test_any(a), 0);
        CHECK_EQ_INT(image_lock_for_read(a), 0);
        /* A reader's locks do not keep another reader out, but a change out, and they are seen. */
        CHECK_EQ_INT(image_lock_test_any(b), 1);
        CHECK_EQ_INT(image_lock_for_read(b), 0);
        CHECK_EQ_INT(image_lock_for_change(b), -EBUSY);
        close(a);
        close(b);

        /* A running VM's active layer: nothing else gets it. */
        a = open(path, O_RDWR | O_CLOEXEC);
        b = open(path, O_RDWR | O_CLOEXEC);
        lock_like_a_writer(a);
        CHECK_EQ_INT(image_lock_test_any(b), 1);
        CHECK_EQ_INT(image_lock_test_writer(b), 1);
        CHECK_EQ_INT(image_lock_for_read(b), -EBUSY);
        CHECK_EQ_INT(image_lock_for_change(b), -EBUSY);
        /* A refused change leaves no lock behind: once the VM is gone, the file is free. */
        close(a);
        CHECK_EQ_INT(image_lock_test_any(fd), 0);
        CHECK_EQ_INT(image_lock_for_change(b), 0);
        /* And a change excludes a new VM and a new reader. */
        a = open(path, O_RDWR | O_CLOEXEC);
        CHECK_EQ_INT(image_lock_for_read(a), -EBUSY);
        CHECK_EQ_INT(image_lock_for_change(a), -EBUSY);
        close(a);
        close(b);

        /* A VM reading the file as a backing file keeps a change out. */
        a = open(path, O_RDONLY | O_CLOEXEC);
        b = open(path, O_RDWR | O_CLOEXEC);
        lock_like_a_reader(a);
        CHECK_EQ_INT(image_lock_test_writer(b), 0);
        CHECK_EQ_INT(image_lock_for_change(b), -EBUSY);
        CHECK_EQ_INT(image_lock_for_read(b), 0);
        close(a);
        close(b);

        close(fd);
        unlink(path);
        TEST_MAIN_END();
}
