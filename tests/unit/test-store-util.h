/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Fixtures for the store's unit tests: a store in a temporary directory, layers with known bytes, VMs,
 * and a fingerprint of every file under a directory (name, type, size, mode, bytes) to compare states. */

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store.h"
#include "test-util.h"

#define TEST_FILE_SIZE 8192

static char test_dir[64];

static void test_dir_make(const char *name) {
        snprintf(test_dir, sizeof(test_dir), "/tmp/vdisk-%s-XXXXXX", name);
        if (!mkdtemp(test_dir)) {
                perror("mkdtemp");
                exit(EXIT_FAILURE);
        }
}

static void test_dir_remove(void) {
        char cmd[128];

        snprintf(cmd, sizeof(cmd), "rm -rf %s", test_dir);
        CHECK_EQ_INT(system(cmd), 0);
}

/* A fresh store directory test_dir/<name>. */
static Store *store_fresh(const char *name, char path[static 128]) {
        Store *s = NULL;

        snprintf(path, 128, "%s/%s", test_dir, name);
        CHECK_EQ_INT(store_open(path, &s), 0);
        return s;
}

static int fill_byte(int fd, void *userdata) {
        uint8_t buf[TEST_FILE_SIZE];

        memset(buf, *(uint8_t *) userdata, sizeof(buf));
        return pwrite(fd, buf, sizeof(buf), 0) == (ssize_t) sizeof(buf) ? 0 : -EIO;
}

/* A raw layer of TEST_FILE_SIZE bytes `byte`, record ready; private to `vm` if not NULL, else a catalog
 * image `name`. The store owns it. */
static Layer *layer_make(Store *s, const char *vm, const char *name, uint8_t byte) {
        Layer *l = calloc(1, sizeof(Layer));
        char file[LAYER_ID_LEN + 8];

        CHECK(l != NULL);
        CHECK_EQ_INT(layer_id_new(l->id), 0);
        snprintf(file, sizeof(file), "%s.raw", l->id);
        l->file = strdup(file);
        l->vm = vm ? strdup(vm) : NULL;
        l->catalog_name = name ? strdup(name) : NULL;
        l->format = IMAGE_FORMAT_RAW;
        l->virtual_size = TEST_FILE_SIZE;
        l->state = LAYER_CREATING;
        l->generation = 1;
        CHECK_EQ_INT(store_put_layer(s, l), 0);
        CHECK_EQ_INT(store_create_layer_file(s, l, fill_byte, &byte), 0);
        l->state = LAYER_READY;
        CHECK_EQ_INT(store_save_layer(s, l), 0);
        return l;
}

/* A VM `name` (generation 1) with one disk "vda" of chain `chain` (top first), if n > 0. */
static Vm *vm_make(Store *s, const char *name, const char *const *chain, size_t n) {
        Vm *v = calloc(1, sizeof(Vm));

        CHECK(v != NULL);
        v->name = strdup(name);
        v->owner_uid = 1000;
        v->generation = 1;
        if (n > 0) {
                v->disks = calloc(1, sizeof(Disk));
                v->n_disks = 1;
                v->disks[0].name = strdup("vda");
                v->disks[0].chain = calloc(n, sizeof(char *));
                for (size_t k = 0; k < n; k++)
                        v->disks[0].chain[v->disks[0].n_chain++] = strdup(chain[k]);
        }
        CHECK_EQ_INT(store_put_vm(s, v), 0);
        return v;
}

/* `v` (in the store) with disk vda's chain replaced, generation + 1: a new Vm to write. */
static Vm *vm_with_chain(const Vm *v, const char *const *chain, size_t n) {
        Vm *next = NULL;

        CHECK_EQ_INT(vm_copy(v, &next), 0);
        for (size_t k = 0; k < next->disks[0].n_chain; k++)
                free(next->disks[0].chain[k]);
        free(next->disks[0].chain);
        next->disks[0].chain = calloc(n, sizeof(char *));
        next->disks[0].n_chain = 0;
        for (size_t k = 0; k < n; k++)
                next->disks[0].chain[next->disks[0].n_chain++] = strdup(chain[k]);
        next->generation++;
        return next;
}

static bool file_exists_at(int dir_fd, const char *name) {
        struct stat st;
        return fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

static bool layer_record_exists(Store *s, const char *id) {
        char name[64];
        snprintf(name, sizeof(name), "layer-%s.json", id);
        return file_exists_at(s->records_fd, name);
}

/* The first byte of a layer's file and whether all TEST_FILE_SIZE bytes equal it; -1 if unreadable. */
static int layer_byte(Store *s, const char *file) {
        uint8_t buf[TEST_FILE_SIZE];
        int fd = openat(s->images_fd, file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        ssize_t n;

        if (fd < 0)
                return -1;
        n = pread(fd, buf, sizeof(buf), 0);
        close(fd);
        if (n != (ssize_t) sizeof(buf))
                return -1;
        for (size_t k = 1; k < sizeof(buf); k++)
                if (buf[k] != buf[0])
                        return -2;
        return buf[0];
}

static size_t journal_entries(Store *s) {
        DIR *d = NULL;
        struct dirent *de;
        size_t n = 0;

        /* A directory stream of its own (a duplicate of journal_fd would share its offset). */
        d = fdopendir(openat(s->journal_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        CHECK(d != NULL);
        while (d && (de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        if (d)
                closedir(d);
        return n;
}

/* A fingerprint of a tree: every entry's relative name, type, size, mode and an FNV-1a hash of its bytes. */
static char *fingerprint_buf;
static size_t fingerprint_len, fingerprint_root_len;

static int fingerprint_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        uint64_t h = UINT64_C(14695981039346656037);
        char line[512];
        int n;

        if (S_ISREG(st->st_mode)) {
                int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
                uint8_t buf[4096];
                ssize_t k;
                while (fd >= 0 && (k = read(fd, buf, sizeof(buf))) > 0)
                        for (ssize_t i = 0; i < k; i++)
                                h = (h ^ buf[i]) * UINT64_C(1099511628211);
                if (fd >= 0)
                        close(fd);
        }
        n = snprintf(line, sizeof(line), "%s %o %lld %016llx\n", path + fingerprint_root_len, (unsigned) st->st_mode,
                     S_ISDIR(st->st_mode) ? 0LL : (long long) st->st_size, (unsigned long long) h);
        fingerprint_buf = realloc(fingerprint_buf, fingerprint_len + (size_t) n + 1);
        memcpy(fingerprint_buf + fingerprint_len, line, (size_t) n + 1);
        fingerprint_len += (size_t) n;
        return 0;
}

static int fingerprint_cmp(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* Sorted, so that the order of readdir() does not matter. The caller frees it. */
static char *fingerprint(const char *root) {
        char *lines[4096], *out, *p, *save = NULL;
        size_t n = 0, len;

        fingerprint_buf = NULL;
        fingerprint_len = 0;
        fingerprint_root_len = strlen(root);
        CHECK_EQ_INT(nftw(root, fingerprint_one, 16, FTW_PHYS), 0);
        if (!fingerprint_buf)
                return strdup("");
        for (p = strtok_r(fingerprint_buf, "\n", &save); p && n < 4096; p = strtok_r(NULL, "\n", &save))
                lines[n++] = p;
        qsort(lines, n, sizeof(char *), fingerprint_cmp);
        len = fingerprint_len + 2;
        out = calloc(1, len);
        for (size_t k = 0; k < n; k++) {
                strcat(out, lines[k]);
                strcat(out, "\n");
        }
        free(fingerprint_buf);
        fingerprint_buf = NULL;
        return out;
}
