/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Copy engines for the daemon's Rebase/Commit/flatten copies, measured on the store's file system:
 * runs of RUN bytes taken every STRIDE bytes of a source file are appended to a new target file (as a
 * reshape appends new clusters), TOTAL bytes in all, then the target is fdatasync'ed (the job flushes
 * before its commit point). Each engine is timed REPS times, interleaved with the others; the median is
 * printed. The source is read once first (warm page cache) unless --cold (evicted before every run).
 *
 * --kick KiB: the engines except io_uring start writeback of the target (sync_file_range WRITE) every KiB.
 *
 * --only "A|B|...": only the engines whose name contains one of these strings (names contain commas).
 *
 * Each engine's untimed first run is checked: the target must hold exactly the source's runs.
 *
 * Printed per engine: the median wall time and the median user+system CPU time of this process (all its
 * threads, from getrusage) over the copy and its fdatasync. The kernel's writeback of buffered writes
 * runs in kworker threads and is not counted; O_DIRECT submits its own I/O and is.
 *
 * Usage: bench-copy-engines DIR [--total MiB] [--run KiB] [--stride KiB] [--reps N] [--kick KiB] [--cold] [--nosync] [--only "A|B"]
 */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#if HAVE_LIBURING
#include <liburing.h>
#endif

#define MiB (UINT64_C(1) << 20)
#define KiB (UINT64_C(1) << 10)

static uint64_t total = 36 * MiB, run = MiB, stride = 2 * MiB;
static uint64_t kick; /* --kick KiB: start writeback (sync_file_range) of what was written every KiB */
static uint64_t kicked;
static int reps = 7;
static bool cold, nosync;
static const char *only;

static bool selected(const char *name) {
        char *list, *save = NULL;
        bool r = false;

        if (!only)
                return true;
        list = strdup(only);
        if (!list)
                return false;
        for (char *t = strtok_r(list, "|", &save); t && !r; t = strtok_r(NULL, "|", &save))
                r = strstr(name, t) != NULL;
        free(list);
        return r;
}

static double cpu_now(void) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        return (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void die(const char *what) {
        perror(what);
        exit(1);
}

static void maybe_kick(int dst, uint64_t written) {
        if (kick == 0 || written - kicked < kick)
                return;
        (void) sync_file_range(dst, (off_t) kicked, (off_t) (written - kicked), SYNC_FILE_RANGE_WRITE);
        kicked = written;
}

typedef int (*Engine)(int src, int dst, uint64_t arg);

/* Each engine copies runs [i*stride, +run) of src to [i*run, +run) of dst, i < total/run. Runs that
 * follow each other in the target are merged into one call where the engine allows (as the daemon
 * merges contiguous pieces): with stride == run everything is one copy. */

static int e_cfr(int src, int dst, uint64_t arg) {
        (void) arg;
        for (uint64_t d = 0; d < total; d += run) {
                loff_t in = (loff_t) (d / run * stride), out = (loff_t) d;
                uint64_t len = run;
                while (len > 0) {
                        ssize_t n = copy_file_range(src, &in, dst, &out, len, 0);
                        if (n <= 0)
                                return -1;
                        len -= (uint64_t) n;
                }
                maybe_kick(dst, d + run);
        }
        return 0;
}

static int e_rw(int src, int dst, uint64_t bufsize) {
        uint8_t *buf = aligned_alloc(4096, bufsize);
        if (!buf)
                return -1;
        for (uint64_t d = 0; d < total; d += run)
                for (uint64_t x = 0; x < run; x += bufsize) {
                        size_t len = (size_t) (run - x < bufsize ? run - x : bufsize);
                        if (pread(src, buf, len, (off_t) (d / run * stride + x)) != (ssize_t) len ||
                            pwrite(dst, buf, len, (off_t) (d + x)) != (ssize_t) len) {
                                free(buf);
                                return -1;
                        }
                        maybe_kick(dst, d + x + len);
                }
        free(buf);
        return 0;
}

static int e_rw_falloc(int src, int dst, uint64_t bufsize) {
        if (fallocate(dst, 0, 0, (off_t) total) < 0)
                return -1;
        return e_rw(src, dst, bufsize);
}

/* pwrite straight from a mapping of the source: one copy (page cache to page cache) instead of two. */
static int e_mmap(int src, int dst, uint64_t populate) {
        for (uint64_t d = 0; d < total; d += run) {
                off_t so = (off_t) (d / run * stride);
                void *m = mmap(NULL, run, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), src, so);
                if (m == MAP_FAILED)
                        return -1;
                if (pwrite(dst, m, run, (off_t) d) != (ssize_t) run) {
                        munmap(m, run);
                        return -1;
                }
                munmap(m, run);
                maybe_kick(dst, d + run);
        }
        return 0;
}

#if HAVE_LIBURING
static void uring_pair(struct io_uring *ring, int src, int dst, uint8_t *buf, uint64_t chunk, uint64_t i, uint64_t tag) {
        uint64_t d = i * chunk, s = d / run * stride + d % run;
        struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

        io_uring_prep_read(sqe, src, buf, (unsigned) chunk, s);
        io_uring_sqe_set_data64(sqe, 0);
        sqe->flags |= IOSQE_IO_LINK;
        sqe = io_uring_get_sqe(ring);
        io_uring_prep_write(sqe, dst, buf, (unsigned) chunk, d);
        io_uring_sqe_set_data64(sqe, tag);
}

/* io_uring: up to `qd` chunks in flight, each a read into its buffer linked to the write out of it. */
static int e_uring(int src, int dst, uint64_t qd) {
        const uint64_t chunk = run < MiB ? run : MiB;
        uint64_t next = 0, nchunks = total / chunk;
        struct io_uring ring;
        unsigned inflight = 0;
        uint8_t *bufs;
        int r = 0;

        if (io_uring_queue_init((unsigned) qd * 2, &ring, 0) < 0)
                return -1;
        bufs = aligned_alloc(4096, qd * chunk);
        if (!bufs)
                return -1;
        for (uint64_t slot = 0; slot < qd && next < nchunks; slot++, inflight++)
                uring_pair(&ring, src, dst, bufs + slot * chunk, chunk, next++, slot + 1);
        io_uring_submit(&ring);
        while (inflight > 0) {
                struct io_uring_cqe *cqe;
                uint64_t tag;
                int res;

                if (io_uring_wait_cqe(&ring, &cqe) < 0) {
                        r = -1;
                        break;
                }
                tag = io_uring_cqe_get_data64(cqe);
                res = cqe->res;
                io_uring_cqe_seen(&ring, cqe);
                if (tag == 0 && res == (int) chunk)
                        continue;
                if (res != (int) chunk) {
                        r = -1;
                        break;
                }
                inflight--;
                if (next < nchunks) {
                        uring_pair(&ring, src, dst, bufs + (tag - 1) * chunk, chunk, next++, tag);
                        inflight++;
                        io_uring_submit(&ring);
                }
        }
        io_uring_queue_exit(&ring);
        free(bufs);
        return r;
}
#endif

/* O_DIRECT writes of what pread returns from the (cached) source: no dirty pages left for the final
 * fdatasync, the disk written while copying. qd 1: one synchronous pwrite at a time; more: io_uring. */
static char dstpath_g[4096];
static int e_direct(int src, int dst, uint64_t qd) {
        const uint64_t chunk = run < MiB ? run : MiB;
        uint64_t nchunks = total / chunk, next = 0;
        int fd = open(dstpath_g, O_WRONLY | O_DIRECT | O_CLOEXEC);
        uint8_t *bufs = aligned_alloc(4096, qd * chunk);
        int r = 0;

        (void) dst;
        if (fd < 0 || !bufs)
                return -1;
        if (qd == 1) {
                for (; next < nchunks && r == 0; next++) {
                        uint64_t d = next * chunk, so = d / run * stride + d % run;
                        if (pread(src, bufs, chunk, (off_t) so) != (ssize_t) chunk ||
                            pwrite(fd, bufs, chunk, (off_t) d) != (ssize_t) chunk)
                                r = -1;
                }
        }
#if HAVE_LIBURING
        else {
                struct io_uring ring;
                unsigned inflight = 0;
                if (io_uring_queue_init((unsigned) qd, &ring, 0) < 0)
                        return -1;
                for (uint64_t slot = 0; r == 0 && (next < nchunks || inflight > 0);) {
                        if (next < nchunks && inflight < qd) {
                                uint64_t d = next * chunk, so = d / run * stride + d % run;
                                struct io_uring_sqe *sqe;
                                if (pread(src, bufs + slot * chunk, chunk, (off_t) so) != (ssize_t) chunk) {
                                        r = -1;
                                        break;
                                }
                                sqe = io_uring_get_sqe(&ring);
                                io_uring_prep_write(sqe, fd, bufs + slot * chunk, (unsigned) chunk, d);
                                io_uring_sqe_set_data64(sqe, slot);
                                io_uring_submit(&ring);
                                inflight++;
                                next++;
                                slot = inflight < qd ? slot + 1 : slot;
                                if (inflight < qd)
                                        continue;
                        }
                        struct io_uring_cqe *cqe;
                        if (io_uring_wait_cqe(&ring, &cqe) < 0 || cqe->res != (int) chunk)
                                r = -1;
                        slot = io_uring_cqe_get_data64(cqe);
                        io_uring_cqe_seen(&ring, cqe);
                        inflight--;
                }
                io_uring_queue_exit(&ring);
        }
#endif
        free(bufs);
        close(fd);
        return r;
}

/* O_DIRECT on both sides: the source read and the target written by DMA, no page cache on either side
 * (a cached source is read from the disk again). qd 0: synchronous pread/pwrite of `chunk` bytes; qd >= 1
 * (with liburing): io_uring, up to qd read->write linked pairs of 1 MiB in flight. The daemon's
 * `src` and `dst` are the buffered descriptors: O_DIRECT ones are opened here, as the daemon would. */
static char srcpath_g[4096];
static int e_direct_both(int src, int dst, uint64_t arg) {
        const uint64_t chunk = arg;
        int dsrc = open(srcpath_g, O_RDONLY | O_DIRECT | O_CLOEXEC), ddst = open(dstpath_g, O_WRONLY | O_DIRECT | O_CLOEXEC);
        uint8_t *buf = aligned_alloc(4096, chunk);
        int r = 0;

        (void) src;
        (void) dst;
        if (dsrc < 0 || ddst < 0 || !buf)
                return -1;
        for (uint64_t d = 0; d < total && r == 0; d += run)
                for (uint64_t x = 0; x < run && r == 0; x += chunk) {
                        size_t len = (size_t) (run - x < chunk ? run - x : chunk);
                        if (pread(dsrc, buf, len, (off_t) (d / run * stride + x)) != (ssize_t) len ||
                            pwrite(ddst, buf, len, (off_t) (d + x)) != (ssize_t) len)
                                r = -1;
                }
        free(buf);
        close(dsrc);
        close(ddst);
        return r;
}

/* The same after fallocate of the whole target: on ext4 an O_DIRECT write that extends the file or
 * allocates takes the inode lock exclusively; writes into preallocated (unwritten) extents need not. */
static int e_direct_both_falloc(int src, int dst, uint64_t arg) {
        if (fallocate(dst, 0, 0, (off_t) total) < 0)
                return -1;
        return e_direct_both(src, dst, arg);
}

#if HAVE_LIBURING
static int e_uring_direct_both(int src, int dst, uint64_t qd) {
        int dsrc = open(srcpath_g, O_RDONLY | O_DIRECT | O_CLOEXEC), ddst = open(dstpath_g, O_WRONLY | O_DIRECT | O_CLOEXEC);
        int r;

        (void) src;
        (void) dst;
        if (dsrc < 0 || ddst < 0)
                return -1;
        r = qd >= 100 && fallocate(dst, 0, 0, (off_t) total) < 0 ? -1 : e_uring(dsrc, ddst, qd % 100);
        close(dsrc);
        close(ddst);
        return r;
}
#endif

/* After an engine's untimed first run: the target holds exactly the runs of the source, in order. */
static bool verify(int src, int dst) {
        uint8_t *a = malloc(run), *b = malloc(run);
        struct stat st;
        bool ok = a && b && fstat(dst, &st) >= 0 && (uint64_t) st.st_size == total;

        for (uint64_t d = 0; ok && d < total; d += run)
                ok = pread(src, a, run, (off_t) (d / run * stride)) == (ssize_t) run &&
                     pread(dst, b, run, (off_t) d) == (ssize_t) run && memcmp(a, b, run) == 0;
        free(a);
        free(b);
        return ok;
}

typedef struct {
        const char *name;
        Engine fn;
        uint64_t arg;
        double t[64];
        double cpu[64]; /* user+system CPU time of this process (all its threads) */
} Case;

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
        const char *dir;
        char srcpath[4096], dstpath[4096];
        Case cases[] = {
                { .name = "copy_file_range", .fn = e_cfr, .arg = 0 },
                { .name = "pread/pwrite 256 KiB", .fn = e_rw, .arg = 256 * KiB },
                { .name = "pread/pwrite 1 MiB", .fn = e_rw, .arg = MiB },
                { .name = "pread/pwrite 4 MiB", .fn = e_rw, .arg = 4 * MiB },
                { .name = "fallocate + pread/pwrite 1 MiB", .fn = e_rw_falloc, .arg = MiB },
                { .name = "mmap + pwrite", .fn = e_mmap, .arg = 0 },
                { .name = "mmap(POPULATE) + pwrite", .fn = e_mmap, .arg = 1 },
                { .name = "O_DIRECT pwrite 1 MiB", .fn = e_direct, .arg = 1 },
                { .name = "O_DIRECT both, pread/pwrite 1 MiB", .fn = e_direct_both, .arg = MiB },
                { .name = "O_DIRECT both, pread/pwrite 4 MiB", .fn = e_direct_both, .arg = 4 * MiB },
                { .name = "O_DIRECT both, fallocate, pread/pwrite 4 MiB", .fn = e_direct_both_falloc, .arg = 4 * MiB },
#if HAVE_LIBURING
                { .name = "O_DIRECT io_uring QD4", .fn = e_direct, .arg = 4 },
                { .name = "O_DIRECT io_uring QD8", .fn = e_direct, .arg = 8 },
                { .name = "O_DIRECT both, io_uring QD2", .fn = e_uring_direct_both, .arg = 2 },
                { .name = "O_DIRECT both, io_uring QD4", .fn = e_uring_direct_both, .arg = 4 },
                { .name = "O_DIRECT both, io_uring QD8", .fn = e_uring_direct_both, .arg = 8 },
                { .name = "O_DIRECT both, fallocate, io_uring QD4", .fn = e_uring_direct_both, .arg = 104 },
                { .name = "io_uring QD1", .fn = e_uring, .arg = 1 },
                { .name = "io_uring QD4", .fn = e_uring, .arg = 4 },
                { .name = "io_uring QD16", .fn = e_uring, .arg = 16 },
#endif
        };
        size_t n = sizeof cases / sizeof cases[0];
        uint64_t srcsize;
        int src;

        if (argc < 2) {
                fprintf(stderr, "usage: %s DIR [--total MiB] [--run KiB] [--stride KiB] [--reps N] [--kick KiB] [--cold] [--nosync] [--only \"A|B\"]\n", argv[0]);
                return 2;
        }
        dir = argv[1];
        for (int i = 2; i < argc; i++) {
                if (!strcmp(argv[i], "--total") && i + 1 < argc)
                        total = strtoull(argv[++i], NULL, 10) * MiB;
                else if (!strcmp(argv[i], "--run") && i + 1 < argc)
                        run = strtoull(argv[++i], NULL, 10) * KiB;
                else if (!strcmp(argv[i], "--stride") && i + 1 < argc)
                        stride = strtoull(argv[++i], NULL, 10) * KiB;
                else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
                        reps = atoi(argv[++i]);
                else if (!strcmp(argv[i], "--kick") && i + 1 < argc)
                        kick = strtoull(argv[++i], NULL, 10) * KiB;
                else if (!strcmp(argv[i], "--cold"))
                        cold = true;
                else if (!strcmp(argv[i], "--nosync"))
                        nosync = true;
                else if (!strcmp(argv[i], "--only") && i + 1 < argc)
                        only = argv[++i];
                else {
                        fprintf(stderr, "unknown argument %s\n", argv[i]);
                        return 2;
                }
        }
        if (reps < 1 || reps > 64 || run == 0 || stride < run || total % run)
                return 2;
        srcsize = total / run * stride;
        snprintf(srcpath, sizeof srcpath, "%s/copy-engines.src", dir);
        snprintf(dstpath, sizeof dstpath, "%s/copy-engines.dst", dir);
        memcpy(dstpath_g, dstpath, sizeof dstpath_g);
        memcpy(srcpath_g, srcpath, sizeof srcpath_g);
        src = open(srcpath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (src < 0)
                die("source");
        {
                uint8_t *b = malloc(MiB);
                for (uint64_t x = 0; x < srcsize; x += MiB) {
                        for (size_t k = 0; k < MiB; k++)
                                b[k] = (uint8_t) (rand() >> 7);
                        if (pwrite(src, b, MiB, (off_t) x) != (ssize_t) MiB)
                                die("write source");
                }
                free(b);
                if (fsync(src) < 0)
                        die("fsync source");
        }
        {
                /* Does the file system share extents? (FICLONERANGE of one block into a new file.) */
                int t = open(dstpath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                struct file_clone_range fcr = { .src_fd = src, .src_offset = 0, .src_length = 4096, .dest_offset = 0 };
                int r = ioctl(t, FICLONERANGE, &fcr);
                printf("FICLONERANGE: %s\n", r < 0 ? strerror(errno) : "supported");
                close(t);
                unlink(dstpath);
        }
        printf("total %llu MiB in runs of %llu KiB every %llu KiB, %s source, %s, writeback kicked every %llu KiB, median of %d\n",
               (unsigned long long) (total / MiB), (unsigned long long) (run / KiB), (unsigned long long) (stride / KiB),
               cold ? "cold" : "warm", nosync ? "no fdatasync" : "then fdatasync", (unsigned long long) (kick / KiB), reps);
        for (int rep = -1; rep < reps; rep++)
                for (size_t c = 0; c < n; c++) {
                        int dst;
                        double t0, c0;
                        if (!selected(cases[c].name))
                                continue;
                        if (cold)
                                (void) posix_fadvise(src, 0, 0, POSIX_FADV_DONTNEED);
                        else {
                                uint8_t *b = malloc(MiB);
                                for (uint64_t x = 0; x < srcsize; x += MiB)
                                        (void) !pread(src, b, MiB, (off_t) x);
                                free(b);
                        }
                        dst = open(dstpath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                        if (dst < 0)
                                die("target");
                        kicked = 0;
                        t0 = now();
                        c0 = cpu_now();
                        if (cases[c].fn(src, dst, cases[c].arg) < 0) {
                                fprintf(stderr, "%s failed: %m\n", cases[c].name);
                                return 1;
                        }
                        if (!nosync && fdatasync(dst) < 0)
                                die("fdatasync");
                        if (rep < 0 && !verify(src, dst)) {
                                fprintf(stderr, "%s: the target differs from the source's runs\n", cases[c].name);
                                return 1;
                        }
                        if (rep >= 0) {
                                cases[c].t[rep] = now() - t0;
                                cases[c].cpu[rep] = cpu_now() - c0;
                        }
                        close(dst);
                        unlink(dstpath);
                        sync();
                }
        for (size_t c = 0; c < n; c++) {
                if (!selected(cases[c].name))
                        continue;
                qsort(cases[c].t, (size_t) reps, sizeof(double), cmp_double);
                qsort(cases[c].cpu, (size_t) reps, sizeof(double), cmp_double);
                printf("%-46s %8.1f ms  (min %.1f, max %.1f)  %6.0f MB/s  CPU %7.1f ms (min %.1f, max %.1f)\n", cases[c].name,
                       cases[c].t[reps / 2] * 1e3, cases[c].t[0] * 1e3, cases[c].t[reps - 1] * 1e3,
                       (double) total / cases[c].t[reps / 2] / 1e6, cases[c].cpu[reps / 2] * 1e3, cases[c].cpu[0] * 1e3,
                       cases[c].cpu[reps - 1] * 1e3);
        }
        close(src);
        unlink(srcpath);
        return 0;
}
