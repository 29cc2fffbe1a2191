/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * The undo log and the in-place qcow2 editor: random edits against a model of every guest cluster,
 * for cluster sizes 512 B to 2 MiB (512 B forces new refcount blocks and a moved refcount table),
 * growth that moves the L1 table, and roll-back to the exact original bytes. Each result must pass
 * our own metadata walk with no error and no leak, map exactly as the model says, and, where
 * qemu-img is installed, pass `qemu-img check`.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bytes.h"
#include "qcow2-edit.h"
#include "qcow2.h"
#include "test-util.h"
#include "undo.h"

#define MiB (UINT64_C(1) << 20)

static char tmpdir[64];
static unsigned counter;
static bool have_qemu_img;

static int new_file(char path[static 128]) {
        int fd;
        snprintf(path, 128, "%s/f-%u", tmpdir, counter++);
        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
                perror("open");
                exit(EXIT_FAILURE);
        }
        return fd;
}

static uint8_t *read_all(int fd, uint64_t *size) {
        struct stat st;
        uint8_t *b;
        if (fstat(fd, &st) < 0)
                abort();
        *size = (uint64_t) st.st_size;
        b = malloc(*size + 1);
        if (!b || format_pread_full(fd, b, *size, 0) < 0)
                abort();
        return b;
}

static uint64_t rnd_state = 42;
static uint64_t rnd(void) {
        rnd_state ^= rnd_state << 13;
        rnd_state ^= rnd_state >> 7;
        rnd_state ^= rnd_state << 17;
        return rnd_state;
}

/* ---- undo log ---- */

static void test_undo(void) {
        char path[128], lpath[128];
        int fd = new_file(path), lfd = new_file(lpath);
        uint8_t *orig, *now, junk[8192];
        uint64_t size, size2;
        UndoLog u;
        FormatError err = {};
        struct stat st;

        for (size_t i = 0; i < 1024; i++) {
                uint8_t b[1024];
                for (size_t k = 0; k < sizeof(b); k++)
                        b[k] = (uint8_t) rnd();
                CHECK(format_pwrite_full(fd, b, sizeof(b), i * sizeof(b)) == 0);
        }
        orig = read_all(fd, &size);
        memset(junk, 0xee, sizeof(junk));

        /* Save, overwrite, extend; roll back: identical. A region saved twice keeps its oldest bytes. */
        CHECK_EQ_INT(undo_begin(&u, lfd, fd, &err), 0);
        CHECK_EQ_INT(undo_save(&u, 0, 4096, &err), 0);
        CHECK_EQ_INT(undo_save(&u, 512 * 1024, 8192, &err), 0);
        CHECK_EQ_INT(undo_save(&u, size - 100, 8192, &err), 0); /* clipped at the original end */
        CHECK_EQ_INT(undo_sync(&u, &err), 0);
        CHECK(format_pwrite_full(fd, junk, 4096, 0) == 0);
        CHECK(format_pwrite_full(fd, junk, 8192, 512 * 1024) == 0);
        CHECK_EQ_INT(undo_save(&u, 0, 4096, &err), 0); /* now junk: must not win */
        CHECK(format_pwrite_full(fd, junk, 8192, size - 100) == 0);
        CHECK(format_pwrite_full(fd, junk, 8192, size + 100000) == 0);
        CHECK_EQ_INT(undo_apply(lfd, fd, &err), 0);
        now = read_all(fd, &size2);
        CHECK_EQ_INT(size2, size);
        CHECK(memcmp(now, orig, size) == 0);
        free(now);

        /* A torn last entry ends the log: the first region comes back, the second is left alone. */
        CHECK(ftruncate(lfd, 0) == 0);
        CHECK_EQ_INT(undo_begin(&u, lfd, fd, &err), 0);
        CHECK_EQ_INT(undo_save(&u, 0, 4096, &err), 0);
        CHECK_EQ_INT(undo_save(&u, 65536, 4096, &err), 0);
        CHECK(fstat(lfd, &st) == 0);
        CHECK(ftruncate(lfd, st.st_size - 10) == 0);
        CHECK(format_pwrite_full(fd, junk, 4096, 0) == 0);
        CHECK(format_pwrite_full(fd, junk, 4096, 65536) == 0);
        CHECK_EQ_INT(undo_apply(lfd, fd, &err), 0);
        now = read_all(fd, &size2);
        CHECK(memcmp(now, orig, 4096) == 0);
        CHECK(memcmp(now + 65536, junk, 4096) == 0);
        free(now);
        CHECK(format_pwrite_full(fd, orig + 65536, 4096, 65536) == 0);

        /* A damaged entry (checksum) ends the log there too. */
        CHECK(ftruncate(lfd, 0) == 0);
        CHECK_EQ_INT(undo_begin(&u, lfd, fd, &err), 0);
        CHECK_EQ_INT(undo_save(&u, 0, 4096, &err), 0);
        CHECK(format_pwrite_full(lfd, "X", 1, 24 + 32 + 100) == 0);
        CHECK(format_pwrite_full(fd, junk, 4096, 0) == 0);
        CHECK_EQ_INT(undo_apply(lfd, fd, &err), 0);
        now = read_all(fd, &size2);
        CHECK(memcmp(now, junk, 4096) == 0);
        free(now);
        CHECK(format_pwrite_full(fd, orig, 4096, 0) == 0);

        /* No valid header: the change never began; the file is not even truncated. */
        CHECK(ftruncate(lfd, 0) == 0);
        CHECK(format_pwrite_full(fd, junk, 8192, size) == 0);
        CHECK_EQ_INT(undo_apply(lfd, fd, &err), 0);
        CHECK(fstat(fd, &st) == 0);
        CHECK_EQ_INT(st.st_size, size + 8192);

        free(orig);
        close(fd);
        close(lfd);
        unlink(path);
        unlink(lpath);
}

/* ---- editor ---- */

enum { M_UNALLOC, M_ZERO, M_DATA };
typedef struct Model {
        uint8_t *state;
        uint8_t *pattern;
        uint64_t n;
} Model;

static int run_qemu_img_check(const char *path) {
        pid_t pid;
        int status;

        if (!have_qemu_img)
                return 0;
        pid = fork();
        if (pid == 0) {
                int null = open("/dev/null", O_WRONLY);
                dup2(null, 1);
                execlp("qemu-img", "qemu-img", "check", "-f", "qcow2", path, (char *) NULL);
                _exit(127);
        }
        if (pid < 0 || waitpid(pid, &status, 0) < 0)
                return -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void verify(int fd, const char *path, const Model *m, uint64_t cs, const char *label) {
        Qcow2Limits lim = {};
        Qcow2Header h;
        Qcow2CheckResult res = {};
        ExtentMap map = {};
        FormatError err = {};
        uint8_t *buf = malloc(cs);
        int r;

        r = qcow2_header_read(fd, &lim, &h, &err);
        CHECK_EQ_INT(r, 0);
        if (r < 0) {
                fprintf(stderr, "%s: %s\n", label, err.reason);
                free(buf);
                return;
        }
        CHECK_EQ_INT(qcow2_check(fd, &h, &lim, &res, &err), 0);
        if (res.corruptions || res.leaks)
                fprintf(stderr, "%s: %" PRIu64 " corruptions, %" PRIu64 " leaks, first: %s\n", label, res.corruptions,
                        res.leaks, res.n_problems ? res.problems[0].text : "-");
        CHECK_EQ_INT(res.corruptions, 0);
        CHECK_EQ_INT(res.leaks, 0);
        qcow2_check_result_done(&res);

        CHECK_EQ_INT(qcow2_map(fd, &h, &map, &err), 0);
        for (size_t i = 0; i < map.n_extents; i++) {
                const Extent *e = &map.extents[i];
                for (uint64_t g = e->start; g < e->start + e->length; g += cs) {
                        uint64_t c = g / cs;
                        int want = c < m->n ? m->state[c] : M_UNALLOC;
                        int got = e->state == EXTENT_DATA ? M_DATA : e->state == EXTENT_ZERO ? M_ZERO : M_UNALLOC;
                        if (want != got) {
                                fprintf(stderr, "%s: cluster %" PRIu64 " is %d, expected %d\n", label, c, got, want);
                                test_failures++;
                                goto out;
                        }
                        if (got == M_DATA) {
                                CHECK(format_pread_full(fd, buf, cs, e->host_offset + (g - e->start)) == 0);
                                for (uint64_t k = 0; k < cs; k += 97)
                                        if (buf[k] != m->pattern[c]) {
                                                fprintf(stderr, "%s: cluster %" PRIu64 " holds 0x%02x, expected 0x%02x\n", label,
                                                        c, buf[k], m->pattern[c]);
                                                test_failures++;
                                                goto out;
                                        }
                        }
                }
        }
        r = run_qemu_img_check(path);
        if (r != 0)
                fprintf(stderr, "%s: qemu-img check exited with %d\n", label, r);
        CHECK_EQ_INT(r, 0);
out:
        extent_map_done(&map);
        free(buf);
}

static void edit_session(int fd, Model *m, uint64_t cs, unsigned ops, uint64_t grow_to, bool v3, const char *label) {
        char lpath[128];
        int lfd = new_file(lpath);
        UndoLog u;
        Qcow2Edit *e = NULL;
        FormatError err = {};
        uint8_t *buf = malloc(cs);

        CHECK_EQ_INT(undo_begin(&u, lfd, fd, &err), 0);
        CHECK_EQ_INT(qcow2_edit_open(fd, &u, &e, &err), 0);
        if (!e) {
                fprintf(stderr, "%s: %s\n", label, err.reason);
                exit(EXIT_FAILURE);
        }
        if (grow_to) {
                uint64_t n = grow_to / cs;
                CHECK_EQ_INT(qcow2_edit_grow(e, grow_to, &err), 0);
                m->state = realloc(m->state, n);
                m->pattern = realloc(m->pattern, n);
                memset(m->state + m->n, M_UNALLOC, n - m->n);
                m->n = n;
        }
        for (unsigned i = 0; i < ops; i++) {
                uint64_t c = rnd() % m->n, host;
                if (v3 && rnd() % 4 == 0) {
                        CHECK_EQ_INT(qcow2_edit_map(e, c, QCOW2_EDIT_ZERO, &err), 0);
                        m->state[c] = M_ZERO;
                } else {
                        uint8_t p = (uint8_t) (1 + rnd() % 250);
                        CHECK_EQ_INT(qcow2_edit_alloc(e, 1, &host, &err), 0);
                        memset(buf, p, cs);
                        CHECK(format_pwrite_full(fd, buf, cs, host) == 0);
                        CHECK_EQ_INT(qcow2_edit_map(e, c, host, &err), 0);
                        m->state[c] = M_DATA;
                        m->pattern[c] = p;
                }
                if (rnd() % 512 == 0)
                        CHECK_EQ_INT(qcow2_edit_flush(e, &err), 0);
        }
        CHECK_EQ_INT(qcow2_edit_flush(e, &err), 0);
        if (err.reason[0])
                fprintf(stderr, "%s: %s\n", label, err.reason);
        qcow2_edit_free(e);
        close(lfd);
        unlink(lpath);
        free(buf);
}

static void test_editor(uint32_t cluster_bits, uint64_t size, unsigned ops, bool v3) {
        char path[128], label[64], lpath[128];
        int fd = new_file(path), lfd;
        uint64_t cs = UINT64_C(1) << cluster_bits, osize, nsize;
        Qcow2CreateParams p = { .size = size, .cluster_bits = cluster_bits };
        FormatError err = {};
        Model m = { .n = size / cs };
        uint8_t *orig, *now;
        UndoLog u;
        Qcow2Edit *e = NULL;

        m.state = calloc(m.n, 1);
        m.pattern = calloc(m.n, 1);
        CHECK_EQ_INT(qcow2_create(fd, &p, &err), 0);
        if (!v3) {
                /* A version 2 image: header fields QEMU's compat=0.10 writes. */
                uint8_t h[72];
                CHECK(format_pread_full(fd, h, sizeof(h), 0) == 0);
                be32_write(h + 4, 2);
                CHECK(format_pwrite_full(fd, h, sizeof(h), 0) == 0);
                /* v2 has no extensions area beyond 72 bytes: end marker right there */
                CHECK(format_pwrite_full(fd, (uint8_t[8]) {}, 8, 72) == 0);
        }

        snprintf(label, sizeof(label), "v%d cluster %" PRIu64 " session 1", v3 ? 3 : 2, cs);
        {
                Qcow2Header h0, h1;
                Qcow2Limits lim = {};
                CHECK_EQ_INT(qcow2_header_read(fd, &lim, &h0, &err), 0);
                edit_session(fd, &m, cs, ops, 0, v3, label);
                verify(fd, path, &m, cs, label);
                CHECK_EQ_INT(qcow2_header_read(fd, &lim, &h1, &err), 0);
                /* 30000 clusters of 512 B need more refcount blocks than one table cluster holds. */
                if (cluster_bits == 9)
                        CHECK(h1.refcount_table_offset != h0.refcount_table_offset && h1.refcount_table_clusters > 1);
        }

        /* Session 2 grows (moving L1 for small clusters), then is rolled back byte for byte. */
        orig = read_all(fd, &osize);
        {
                Model copy = { .n = m.n };
                copy.state = malloc(m.n);
                copy.pattern = malloc(m.n);
                memcpy(copy.state, m.state, m.n);
                memcpy(copy.pattern, m.pattern, m.n);

                lfd = new_file(lpath);
                CHECK_EQ_INT(undo_begin(&u, lfd, fd, &err), 0);
                CHECK_EQ_INT(qcow2_edit_open(fd, &u, &e, &err), 0);
                CHECK_EQ_INT(qcow2_edit_grow(e, size * 2, &err), 0);
                for (unsigned i = 0; i < ops / 2; i++) {
                        uint64_t host;
                        CHECK_EQ_INT(qcow2_edit_alloc(e, 1, &host, &err), 0);
                        CHECK_EQ_INT(qcow2_edit_map(e, rnd() % (2 * m.n), host, &err), 0);
                }
                CHECK_EQ_INT(qcow2_edit_set_backing(e, "base.qcow2", "qcow2", &err), 0);
                CHECK_EQ_INT(qcow2_edit_flush(e, &err), 0);
                qcow2_edit_free(e);
                CHECK_EQ_INT(undo_apply(lfd, fd, &err), 0);
                now = read_all(fd, &nsize);
                CHECK_EQ_INT(nsize, osize);
                CHECK(nsize == osize && memcmp(now, orig, osize) == 0);
                free(now);
                close(lfd);
                unlink(lpath);
                free(copy.state);
                free(copy.pattern);
        }
        free(orig);
        snprintf(label, sizeof(label), "v%d cluster %" PRIu64 " after roll-back", v3 ? 3 : 2, cs);
        verify(fd, path, &m, cs, label);

        /* Session 3 grows and keeps it. */
        snprintf(label, sizeof(label), "v%d cluster %" PRIu64 " session 3 (grown)", v3 ? 3 : 2, cs);
        edit_session(fd, &m, cs, ops, size * 2, v3, label);
        verify(fd, path, &m, cs, label);
        {
                Qcow2Header h;
                Qcow2Limits lim = {};
                CHECK_EQ_INT(qcow2_header_read(fd, &lim, &h, &err), 0);
                CHECK_EQ_INT(h.size, size * 2);
        }

        free(m.state);
        free(m.pattern);
        close(fd);
        unlink(path);
}

int main(void) {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-qcow2-edit-XXXXXX");
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return EXIT_FAILURE;
        }
        have_qemu_img = system("qemu-img --version >/dev/null 2>&1") == 0;
        if (!have_qemu_img)
                fprintf(stderr, "qemu-img not found: checking with vdisk's own walk only\n");

        test_undo();
        test_editor(9, 16 * MiB, 30000, true); /* 512 B: many new refcount blocks, the refcount table moves */
        test_editor(12, 64 * MiB, 3000, true);
        test_editor(16, 256 * MiB, 1500, true);
        test_editor(16, 64 * MiB, 300, false);
        test_editor(21, 512 * MiB, 60, true);

        rmdir(tmpdir);
        TEST_MAIN_END();
}
