/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Runs a fuzz target over files or directories of inputs, without libFuzzer: the seed corpus as a test. */

#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(int at, const char *name) {
        int fd = openat(at, name, O_RDONLY | O_CLOEXEC);
        struct stat st;
        uint8_t *buf;
        ssize_t n;

        if (fd < 0 || fstat(fd, &st) < 0) {
                fprintf(stderr, "cannot open %s\n", name);
                return -1;
        }
        if (S_ISDIR(st.st_mode)) {
                DIR *d = fdopendir(fd);
                struct dirent *de;
                int count = 0;

                if (!d)
                        return -1;
                while ((de = readdir(d))) {
                        if (de->d_name[0] == '.')
                                continue;
                        int r = run_file(dirfd(d), de->d_name);
                        if (r < 0) {
                                closedir(d);
                                return r;
                        }
                        count += r;
                }
                closedir(d);
                return count;
        }

        buf = malloc(st.st_size > 0 ? (size_t) st.st_size : 1);
        if (!buf)
                abort();
        n = read(fd, buf, (size_t) st.st_size);
        close(fd);
        if (n != st.st_size) {
                free(buf);
                return -1;
        }
        LLVMFuzzerTestOneInput(buf, (size_t) n);
        free(buf);
        return 1;
}

int main(int argc, char *argv[]) {
        int total = 0;

        for (int i = 1; i < argc; i++) {
                int r = run_file(AT_FDCWD, argv[i]);
                if (r < 0)
                        return EXIT_FAILURE;
                total += r;
        }
        printf("ran %d inputs\n", total);
        /* An empty corpus proves nothing. */
        return total > 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
