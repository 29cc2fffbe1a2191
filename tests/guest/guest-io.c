/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * guest-io: the I/O helper of the test guest (tests/guest/guest.py puts it, linked statically, into the
 * initramfs as /bin/guest-io). Every subcommand works on a block device (or a file) with O_DIRECT, so
 * what it reports went to the virtual disk and not to the guest's page cache, and it makes every write
 * durable (fdatasync) before it reports it. Output is one JSON object per line; the data layouts
 * (pattern, counter block) are also built by guest.py on the host, which checks images with them.
 *
 *   guest-io size DEV
 *   guest-io fill DEV OFFSET LENGTH SEED
 *   guest-io check DEV OFFSET LENGTH SEED
 *   guest-io hash DEV OFFSET LENGTH
 *   guest-io write-counter DEV BLOCK SEQ [--run-id ID]
 *   guest-io verify-counter DEV BLOCK SEQ [--run-id ID]
 *   guest-io writer DEV [--start-block B] [--blocks N] [--interval-ms MS] [--count N] [--seconds S]
 *                       [--run-id ID] [--log]
 *   guest-io writer-verify DEV LAST-SEQ [--start-block B] [--blocks N] [--run-id ID]
 *   guest-io bench DEV {seqread,seqwrite,randread,randwrite} [--bs SIZE] [--qd N] [--seconds S]
 *                      [--offset O] [--size LEN]
 *
 * OFFSET, LENGTH, BLOCK numbers and sizes take K, M, G suffixes (1024-based); offsets and lengths are
 * multiples of 4096, BLOCK counts 4096-byte blocks. Output (one line each):
 *   size            {"size":BYTES}
 *   fill, check     {"ok":true,"bytes":N,"us":N}    check on a difference: {"ok":false,"mismatch":OFFSET}
 *   hash            {"hash":"<16 hex digits of FNV-1a 64>","bytes":N}
 *   write-counter   {"ok":true,"block":B,"seq":S}
 *   verify-counter  {"ok":BOOL,"block":B,"seq":S,"found":SEQ-ON-DISK or -1}
 *   writer          with --log per acknowledged write {"seq":S,"block":B,"lat_us":L}; at the end
 *                   {"done":BOOL,"writes":N,"last_seq":S,"max_lat_us":L,"avg_lat_us":L}
 *   writer-verify   {"ok":BOOL,"checked":N,"lost":[S,...],"lost_count":N,"max_seq":S}
 *   bench           {"mode":M,"bs":N,"qd":N,"seconds":S,"ios":N,"bytes":N,"mb_s":X,"iops":X,
 *                    "lat_us_avg":X,"lat_us_max":N}
 *
 * Exit status: 0 success, 1 the data did not match (check, verify-counter, writer-verify), 2 usage,
 * 3 an I/O error.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096u          /* counter block size, alignment of every offset and length */
#define CHUNK (1u << 20)     /* fill/check/hash work in pieces of this size */
#define MAX_QD 256

static const char counter_magic[8] = { 'V', 'D', 'G', 'I', 'O', 'C', 'N', 'T' };

static int usage(void) {
        fprintf(stderr,
                "usage: guest-io size DEV\n"
                "       guest-io fill DEV OFFSET LENGTH SEED\n"
                "       guest-io check DEV OFFSET LENGTH SEED\n"
                "       guest-io hash DEV OFFSET LENGTH\n"
                "       guest-io write-counter DEV BLOCK SEQ [--run-id ID]\n"
                "       guest-io verify-counter DEV BLOCK SEQ [--run-id ID]\n"
                "       guest-io writer DEV [--start-block B] [--blocks N] [--interval-ms MS] [--count N]\n"
                "                           [--seconds S] [--run-id ID] [--log]\n"
                "       guest-io writer-verify DEV LAST-SEQ [--start-block B] [--blocks N] [--run-id ID]\n"
                "       guest-io bench DEV {seqread,seqwrite,randread,randwrite} [--bs SIZE] [--qd N]\n"
                "                          [--seconds S] [--offset O] [--size LEN]\n");
        return 2;
}

static uint64_t splitmix64(uint64_t x) {
        x += UINT64_C(0x9e3779b97f4a7c15);
        x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
        return x ^ (x >> 31);
}

/* The pattern: the 8 bytes at disk offset 8*i (i counted from 0 at the start of the disk) are
 * splitmix64(seed ^ i), little endian. It depends on the offset, so data written to the wrong place
 * does not pass for right. */
static void pattern(uint8_t *buf, uint64_t offset, size_t length, uint64_t seed) {
        for (size_t k = 0; k < length; k += 8) {
                uint64_t v = splitmix64(seed ^ ((offset + k) / 8));
                memcpy(buf + k, &v, 8);
        }
}

/* FNV-1a, 64 bit (guest.py's fnv1a64() computes the same on the host). */
static uint64_t fnv1a64(uint64_t h, const uint8_t *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                h ^= p[i];
                h *= UINT64_C(0x100000001b3);
        }
        return h;
}
#define FNV_INIT UINT64_C(0xcbf29ce484222325)

/* Counter block (BLOCK bytes): magic[8], seq u64, block u64, run_id u64, then the pattern of seed
 * seq ^ run_id for the rest of the block, and the last 8 bytes the FNV-1a of everything before. */
static void counter_block(uint8_t *buf, uint64_t block, uint64_t seq, uint64_t run_id) {
        pattern(buf, block * BLOCK, BLOCK, seq ^ (run_id << 32));
        memcpy(buf, counter_magic, 8);
        memcpy(buf + 8, &seq, 8);
        memcpy(buf + 16, &block, 8);
        memcpy(buf + 24, &run_id, 8);
        uint64_t h = fnv1a64(FNV_INIT, buf, BLOCK - 8);
        memcpy(buf + BLOCK - 8, &h, 8);
}

/* Reads a counter block: its seq, or -1 if the block is not an intact counter block of this run
 * and position (a torn, foreign or never written block). */
static int64_t counter_seq(const uint8_t *buf, uint64_t block, uint64_t run_id) {
        uint64_t seq, b, r, h;

        if (memcmp(buf, counter_magic, 8) != 0)
                return -1;
        memcpy(&seq, buf + 8, 8);
        memcpy(&b, buf + 16, 8);
        memcpy(&r, buf + 24, 8);
        memcpy(&h, buf + BLOCK - 8, 8);
        if (b != block || r != run_id || h != fnv1a64(FNV_INIT, buf, BLOCK - 8) || seq > INT64_MAX)
                return -1;
        return (int64_t) seq;
}

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static int parse_u64(const char *s, uint64_t *ret) {
        char *end;
        unsigned long long v;

        if (!s || !*s || *s == '-')
                return -EINVAL;
        errno = 0;
        v = strtoull(s, &end, 0);
        if (errno != 0)
                return -errno;
        /* Size suffixes: K, M, G (powers of 1024). */
        uint64_t mult = 1;
        if (*end == 'K' || *end == 'k')
                mult = 1024, end++;
        else if (*end == 'M' || *end == 'm')
                mult = 1024 * 1024, end++;
        else if (*end == 'G' || *end == 'g')
                mult = 1024 * 1024 * 1024, end++;
        if (*end)
                return -EINVAL;
        if (mult > 1 && v > UINT64_MAX / mult)
                return -ERANGE;
        *ret = v * mult;
        return 0;
}

static void *alloc_aligned(size_t n) {
        void *p = NULL;
        if (posix_memalign(&p, BLOCK, n) != 0)
                return NULL;
        memset(p, 0, n);
        return p;
}

static int open_dev(const char *path, bool write) {
        int fd = open(path, (write ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC);
        if (fd < 0)
                fprintf(stderr, "guest-io: open %s: %m\n", path);
        return fd;
}

static int dev_size(int fd, uint64_t *ret) {
        struct stat st;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (S_ISBLK(st.st_mode))
                return ioctl(fd, BLKGETSIZE64, ret) < 0 ? -errno : 0;
        *ret = (uint64_t) st.st_size;
        return 0;
}

static int pread_full(int fd, void *buf, size_t n, uint64_t off) {
        size_t done = 0;
        while (done < n) {
                ssize_t r = pread(fd, (uint8_t *) buf + done, n - done, (off_t) (off + done));
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (r == 0)
                        return -EIO; /* past the end */
                done += (size_t) r;
        }
        return 0;
}

static int pwrite_full(int fd, const void *buf, size_t n, uint64_t off) {
        size_t done = 0;
        while (done < n) {
                ssize_t r = pwrite(fd, (const uint8_t *) buf + done, n - done, (off_t) (off + done));
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (r == 0)
                        return -EIO;
                done += (size_t) r;
        }
        return 0;
}

static int io_error(const char *what, int r) {
        fprintf(stderr, "guest-io: %s: %s\n", what, strerror(-r));
        return 3;
}

static bool aligned(uint64_t v) {
        return v % BLOCK == 0;
}

/* Options "--name VALUE" (or "--name=VALUE") after the positional arguments. */
struct opt {
        const char *name;
        uint64_t *value;     /* NULL: a flag */
        bool *flag;
};

static int parse_opts(int argc, char **argv, const struct opt *opts) {
        for (int i = 0; i < argc; i++) {
                const char *a = argv[i], *eq = strchr(a, '=');
                size_t len = eq ? (size_t) (eq - a) : strlen(a);
                const struct opt *o;

                for (o = opts; o->name; o++)
                        if (strlen(o->name) == len && strncmp(a, o->name, len) == 0)
                                break;
                if (!o->name) {
                        fprintf(stderr, "guest-io: unknown argument %s\n", a);
                        return -EINVAL;
                }
                if (!o->value) {
                        if (eq)
                                return -EINVAL;
                        *o->flag = true;
                        continue;
                }
                const char *v = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
                if (parse_u64(v, o->value) < 0) {
                        fprintf(stderr, "guest-io: bad value for %s\n", o->name);
                        return -EINVAL;
                }
        }
        return 0;
}

static int cmd_size(int argc, char **argv) {
        uint64_t size;
        int fd, r;

        if (argc != 1)
                return usage();
        fd = open_dev(argv[0], false);
        if (fd < 0)
                return 3;
        r = dev_size(fd, &size);
        close(fd);
        if (r < 0)
                return io_error("size", r);
        printf("{\"size\":%" PRIu64 "}\n", size);
        return 0;
}

/* fill, check, hash: OFFSET LENGTH [SEED], all multiples of BLOCK. */
static int cmd_range(const char *cmd, int argc, char **argv) {
        bool fill = strcmp(cmd, "fill") == 0, hash = strcmp(cmd, "hash") == 0;
        uint64_t off, len, seed = 0, h = FNV_INIT;
        uint8_t *buf, *want = NULL;
        int fd, r = 0, ret = 0;

        if (argc != (hash ? 3 : 4) || parse_u64(argv[1], &off) < 0 || parse_u64(argv[2], &len) < 0 ||
            (!hash && parse_u64(argv[3], &seed) < 0) || !aligned(off) || !aligned(len))
                return usage();
        fd = open_dev(argv[0], fill);
        if (fd < 0)
                return 3;
        buf = alloc_aligned(CHUNK);
        want = alloc_aligned(CHUNK);
        if (!buf || !want) {
                close(fd);
                return io_error(cmd, -ENOMEM);
        }
        uint64_t start = now_ns();
        for (uint64_t done = 0; done < len && ret == 0; ) {
                size_t n = len - done < CHUNK ? (size_t) (len - done) : CHUNK;
                if (fill) {
                        pattern(buf, off + done, n, seed);
                        r = pwrite_full(fd, buf, n, off + done);
                } else
                        r = pread_full(fd, buf, n, off + done);
                if (r < 0) {
                        ret = io_error(cmd, r);
                        break;
                }
                if (hash)
                        h = fnv1a64(h, buf, n);
                else if (!fill) {
                        pattern(want, off + done, n, seed);
                        if (memcmp(buf, want, n) != 0) {
                                size_t k = 0;
                                while (buf[k] == want[k])
                                        k++;
                                printf("{\"ok\":false,\"mismatch\":%" PRIu64 "}\n", off + done + k);
                                ret = 1;
                        }
                }
                done += n;
        }
        if (ret == 0 && fill && fdatasync(fd) < 0)
                ret = io_error("fdatasync", -errno);
        uint64_t us = (now_ns() - start) / 1000;
        if (ret == 0) {
                if (hash)
                        printf("{\"hash\":\"%016" PRIx64 "\",\"bytes\":%" PRIu64 "}\n", h, len);
                else
                        printf("{\"ok\":true,\"bytes\":%" PRIu64 ",\"us\":%" PRIu64 "}\n", len, us);
        }
        free(buf);
        free(want);
        close(fd);
        return ret;
}

static int cmd_counter(bool write, int argc, char **argv) {
        uint64_t block, seq, run_id = 0;
        uint8_t *buf;
        int fd, r, ret = 0;

        if (argc < 3 || parse_u64(argv[1], &block) < 0 || parse_u64(argv[2], &seq) < 0 || seq > INT64_MAX ||
            parse_opts(argc - 3, argv + 3, (const struct opt[]) { { "--run-id", &run_id, NULL }, {} }) < 0)
                return usage();
        fd = open_dev(argv[0], write);
        if (fd < 0)
                return 3;
        buf = alloc_aligned(BLOCK);
        if (!buf) {
                close(fd);
                return io_error("alloc", -ENOMEM);
        }
        if (write) {
                counter_block(buf, block, seq, run_id);
                r = pwrite_full(fd, buf, BLOCK, block * BLOCK);
                if (r == 0 && fdatasync(fd) < 0)
                        r = -errno;
                if (r < 0)
                        ret = io_error("write-counter", r);
                else
                        printf("{\"ok\":true,\"block\":%" PRIu64 ",\"seq\":%" PRIu64 "}\n", block, seq);
        } else {
                r = pread_full(fd, buf, BLOCK, block * BLOCK);
                if (r < 0)
                        ret = io_error("verify-counter", r);
                else {
                        int64_t got = counter_seq(buf, block, run_id);
                        ret = got == (int64_t) seq ? 0 : 1;
                        printf("{\"ok\":%s,\"block\":%" PRIu64 ",\"seq\":%" PRIu64 ",\"found\":%" PRId64 "}\n",
                               ret ? "false" : "true", block, seq, got);
                }
        }
        free(buf);
        close(fd);
        return ret;
}

static volatile sig_atomic_t writer_stop;

static void on_stop_signal(int sig) {
        (void) sig;
        writer_stop = 1;
}

/* writer: writes seq 1, 2, ... to blocks start, start+1, ... (wrapping after --blocks), each one
 * fdatasync'ed; with --log prints every acknowledged write as it completes: {"seq":N,"block":B,"lat_us":L}
 * (the latency of pwrite + fdatasync). Stops after --count writes or --seconds, else runs until SIGTERM or
 * SIGINT (finishes the write in flight, then the summary) or SIGKILL (no summary; every line printed is
 * still a write that was acknowledged). At the end prints
 * {"done":true,"writes":N,"last_seq":N,"max_lat_us":L,"avg_lat_us":A}. */
static int cmd_writer(int argc, char **argv) {
        uint64_t start_block = 0, blocks = 1024, interval_ms = 100, count = 0, seconds = 0, run_id = 0;
        bool log = false;
        uint64_t max_lat = 0, sum_lat = 0, seq = 0;
        uint8_t *buf;
        int fd, ret = 0;

        if (argc < 1 ||
            parse_opts(argc - 1, argv + 1, (const struct opt[]) {
                                { "--start-block", &start_block, NULL }, { "--blocks", &blocks, NULL },
                                { "--interval-ms", &interval_ms, NULL }, { "--count", &count, NULL },
                                { "--seconds", &seconds, NULL }, { "--run-id", &run_id, NULL },
                                { "--log", NULL, &log }, {} }) < 0 ||
            blocks == 0)
                return usage();
        fd = open_dev(argv[0], true);
        if (fd < 0)
                return 3;
        buf = alloc_aligned(BLOCK);
        if (!buf) {
                close(fd);
                return io_error("alloc", -ENOMEM);
        }
        setvbuf(stdout, NULL, _IOLBF, 0);
        struct sigaction sa = { .sa_handler = on_stop_signal };   /* no SA_RESTART: ends the sleep */
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        uint64_t t0 = now_ns(), next = t0;
        while (!writer_stop && (count == 0 || seq < count) && (seconds == 0 || now_ns() - t0 < seconds * 1000000000u)) {
                uint64_t block = start_block + seq % blocks, t, lat;
                int r;

                seq++;
                counter_block(buf, block, seq, run_id);
                t = now_ns();
                r = pwrite_full(fd, buf, BLOCK, block * BLOCK);
                if (r == 0 && fdatasync(fd) < 0)
                        r = -errno;
                if (r < 0) {
                        ret = io_error("writer", r);
                        seq--;
                        break;
                }
                lat = (now_ns() - t) / 1000;
                max_lat = lat > max_lat ? lat : max_lat;
                sum_lat += lat;
                if (log)
                        printf("{\"seq\":%" PRIu64 ",\"block\":%" PRIu64 ",\"lat_us\":%" PRIu64 "}\n", seq, block, lat);
                next += interval_ms * 1000000u;
                uint64_t n = now_ns();
                if (next > n) {
                        struct timespec ts = { .tv_sec = (time_t) ((next - n) / 1000000000u),
                                               .tv_nsec = (long) ((next - n) % 1000000000u) };
                        nanosleep(&ts, NULL);
                } else
                        next = n;
        }
        printf("{\"done\":%s,\"writes\":%" PRIu64 ",\"last_seq\":%" PRIu64 ",\"max_lat_us\":%" PRIu64
               ",\"avg_lat_us\":%" PRIu64 "}\n",
               ret ? "false" : "true", seq, seq, max_lat, seq ? sum_lat / seq : 0);
        free(buf);
        close(fd);
        return ret;
}

/* writer-verify DEV LAST-SEQ: every write the writer acknowledged up to LAST-SEQ and not overwritten
 * since by a later seq (the last min(LAST-SEQ, blocks) ones) is on the disk: block start + (s-1) % blocks
 * holds seq s, or a later seq of the same block (the writer may have gone on after LAST-SEQ was seen).
 * Prints {"ok":B,"checked":N,"lost":[seqs, at most 20],"lost_count":N,"max_seq":M}. */
static int cmd_writer_verify(int argc, char **argv) {
        uint64_t last, start_block = 0, blocks = 1024, run_id = 0;
        uint64_t checked = 0, lost_count = 0;
        int64_t max_seq = 0;
        uint8_t *buf;
        int fd, ret = 0;
        char lost[20 * 24] = "";

        if (argc < 2 || parse_u64(argv[1], &last) < 0 ||
            parse_opts(argc - 2, argv + 2, (const struct opt[]) {
                                { "--start-block", &start_block, NULL }, { "--blocks", &blocks, NULL },
                                { "--run-id", &run_id, NULL }, {} }) < 0 ||
            blocks == 0)
                return usage();
        fd = open_dev(argv[0], false);
        if (fd < 0)
                return 3;
        buf = alloc_aligned(BLOCK);
        if (!buf) {
                close(fd);
                return io_error("alloc", -ENOMEM);
        }
        uint64_t first = last > blocks ? last - blocks + 1 : 1;
        for (uint64_t s = first; s <= last && last > 0; s++) {
                uint64_t block = start_block + (s - 1) % blocks;
                int r = pread_full(fd, buf, BLOCK, block * BLOCK);
                if (r < 0) {
                        ret = io_error("writer-verify", r);
                        break;
                }
                int64_t got = counter_seq(buf, block, run_id);
                checked++;
                if (got > max_seq)
                        max_seq = got;
                /* A later write to the same block has seq s + k*blocks. */
                if (got < (int64_t) s || (uint64_t) (got - (int64_t) s) % blocks != 0) {
                        if (lost_count < 20) {
                                size_t l = strlen(lost);
                                snprintf(lost + l, sizeof(lost) - l, "%s%" PRIu64, l ? "," : "", s);
                        }
                        lost_count++;
                }
        }
        if (ret == 0) {
                ret = lost_count ? 1 : 0;
                printf("{\"ok\":%s,\"checked\":%" PRIu64 ",\"lost\":[%s],\"lost_count\":%" PRIu64
                       ",\"max_seq\":%" PRId64 "}\n",
                       ret ? "false" : "true", checked, lost, lost_count, max_seq);
        }
        free(buf);
        close(fd);
        return ret;
}

/* bench: qd threads, each doing synchronous O_DIRECT I/O of bs bytes, for the given seconds. Sequential
 * modes hand out successive offsets from one shared cursor (wrapping at the end of the region), random
 * modes pick bs-aligned offsets in the region. Writes write a non-zero pattern, without fdatasync (the
 * device's cache is what a guest's plain O_DIRECT writes hit); one fdatasync at the end is counted in the
 * time. Prints {"mode":M,"bs":N,"qd":N,"seconds":S,"ios":N,"bytes":N,"mb_s":X,"iops":X,"lat_us_avg":X,
 * "lat_us_max":N}. */
struct bench {
        int fd;
        bool write, random;
        uint64_t bs, offset, size, deadline;
        pthread_mutex_t lock;
        uint64_t cursor;
        int error;
        /* results, under lock */
        uint64_t ios, lat_sum, lat_max;
};

struct worker {
        struct bench *b;
        unsigned index;
};

static void *bench_worker(void *arg) {
        struct worker *w = arg;
        struct bench *b = w->b;
        uint64_t rnd = splitmix64(now_ns() ^ w->index), ios = 0, lat_sum = 0, lat_max = 0;
        uint64_t nblocks = b->size / b->bs;
        uint8_t *buf = alloc_aligned(b->bs);
        int error = 0;

        if (!buf)
                error = -ENOMEM;
        else
                pattern(buf, w->index * b->bs, b->bs, 0x5eed ^ w->index);
        while (!error) {
                uint64_t t = now_ns(), off;
                if (t >= b->deadline)
                        break;
                if (b->random) {
                        rnd = splitmix64(rnd);
                        off = b->offset + (rnd % nblocks) * b->bs;
                } else {
                        pthread_mutex_lock(&b->lock);
                        off = b->offset + b->cursor * b->bs;
                        b->cursor = (b->cursor + 1) % nblocks;
                        pthread_mutex_unlock(&b->lock);
                }
                error = b->write ? pwrite_full(b->fd, buf, b->bs, off) : pread_full(b->fd, buf, b->bs, off);
                uint64_t lat = now_ns() - t;
                ios++;
                lat_sum += lat;
                lat_max = lat > lat_max ? lat : lat_max;
        }
        pthread_mutex_lock(&b->lock);
        b->ios += ios;
        b->lat_sum += lat_sum;
        b->lat_max = lat_max > b->lat_max ? lat_max : b->lat_max;
        if (error && !b->error)
                b->error = error;
        pthread_mutex_unlock(&b->lock);
        free(buf);
        return NULL;
}

static int cmd_bench(int argc, char **argv) {
        uint64_t bs = 4096, qd = 1, seconds = 5, offset = 0, size = 0, dsize;
        struct bench b = { .lock = PTHREAD_MUTEX_INITIALIZER };
        pthread_t threads[MAX_QD];
        struct worker workers[MAX_QD];
        const char *mode;
        int r;

        if (argc < 2 ||
            parse_opts(argc - 2, argv + 2, (const struct opt[]) {
                                { "--bs", &bs, NULL }, { "--qd", &qd, NULL }, { "--seconds", &seconds, NULL },
                                { "--offset", &offset, NULL }, { "--size", &size, NULL }, {} }) < 0)
                return usage();
        mode = argv[1];
        if (strcmp(mode, "seqread") == 0)
                ;
        else if (strcmp(mode, "seqwrite") == 0)
                b.write = true;
        else if (strcmp(mode, "randread") == 0)
                b.random = true;
        else if (strcmp(mode, "randwrite") == 0)
                b.write = b.random = true;
        else
                return usage();
        if (bs == 0 || !aligned(bs) || qd == 0 || qd > MAX_QD || seconds == 0 || !aligned(offset))
                return usage();
        b.fd = open_dev(argv[0], b.write);
        if (b.fd < 0)
                return 3;
        r = dev_size(b.fd, &dsize);
        if (r < 0) {
                close(b.fd);
                return io_error("size", r);
        }
        if (size == 0)
                size = offset < dsize ? dsize - offset : 0;
        if (offset + size > dsize || size < bs) {
                fprintf(stderr, "guest-io: region %" PRIu64 "+%" PRIu64 " does not fit the device (%" PRIu64 ")\n",
                        offset, size, dsize);
                close(b.fd);
                return 2;
        }
        b.bs = bs;
        b.offset = offset;
        b.size = size - size % bs;
        uint64_t start = now_ns();
        b.deadline = start + seconds * 1000000000u;
        unsigned started = 0;
        for (unsigned i = 0; i < qd; i++) {
                workers[i] = (struct worker) { .b = &b, .index = i };
                if (pthread_create(&threads[i], NULL, bench_worker, &workers[i]) != 0) {
                        b.deadline = 0;
                        b.error = -EAGAIN;
                        break;
                }
                started++;
        }
        for (unsigned i = 0; i < started; i++)
                pthread_join(threads[i], NULL);
        if (!b.error && b.write && fdatasync(b.fd) < 0)
                b.error = -errno;
        double secs = (double) (now_ns() - start) / 1e9;
        close(b.fd);
        if (b.error)
                return io_error("bench", b.error);
        printf("{\"mode\":\"%s\",\"bs\":%" PRIu64 ",\"qd\":%" PRIu64 ",\"seconds\":%.3f,\"ios\":%" PRIu64
               ",\"bytes\":%" PRIu64 ",\"mb_s\":%.2f,\"iops\":%.1f,\"lat_us_avg\":%.1f,\"lat_us_max\":%" PRIu64 "}\n",
               mode, bs, qd, secs, b.ios, b.ios * bs, (double) (b.ios * bs) / secs / 1e6, (double) b.ios / secs,
               b.ios ? (double) b.lat_sum / (double) b.ios / 1000.0 : 0.0, b.lat_max / 1000);
        return 0;
}

int main(int argc, char **argv) {
        if (argc < 3)
                return usage();
        const char *cmd = argv[1];
        if (strcmp(cmd, "size") == 0)
                return cmd_size(argc - 2, argv + 2);
        if (strcmp(cmd, "fill") == 0 || strcmp(cmd, "check") == 0 || strcmp(cmd, "hash") == 0)
                return cmd_range(cmd, argc - 2, argv + 2);
        if (strcmp(cmd, "write-counter") == 0)
                return cmd_counter(true, argc - 2, argv + 2);
        if (strcmp(cmd, "verify-counter") == 0)
                return cmd_counter(false, argc - 2, argv + 2);
        if (strcmp(cmd, "writer") == 0)
                return cmd_writer(argc - 2, argv + 2);
        if (strcmp(cmd, "writer-verify") == 0)
                return cmd_writer_verify(argc - 2, argv + 2);
        if (strcmp(cmd, "bench") == 0)
                return cmd_bench(argc - 2, argv + 2);
        return usage();
}
