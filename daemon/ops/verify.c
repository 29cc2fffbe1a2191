/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Checks: records against the files (Verify, quarantine), and files handed in by callers (uploads,
 * adopted layers, Inspect's fd). */

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "escape.h"
#include "log.h"
#include "ops.h"
#include "probe.h"

/* Repeated Verify of an unchanged chain (docs/design.md, "Verify"): the backing layers' headers are read
 * again only when something they depend on changed since a check by this daemon found them clean. What
 * a clean check depended on is summed up in one fingerprint per disk: every backing layer's record
 * fields that the checks compare, and what statx() says of its file (and of its data file) before the
 * headers are read: device, inode, type, owner, links, size, mtime and ctime. ctime is set by the kernel
 * on every change of content or metadata and cannot be set by anyone; a change made after the statx()
 * gives a newer ctime, provided the one seen was already older than the clock's and the filesystem's
 * granularity (VERIFY_MEMO_SETTLE_NSEC: files changed just before a check are not remembered). The
 * fingerprint is SipHash-2-4 under a key drawn at the first use: nobody without the key can make two
 * states collide. The top layer, the one a guest writes, is always read. A remembered check is at most
 * VERIFY_MEMO_MAX_AGE_NSEC old: what leaves no ctime behind (root writing the block device, stores
 * through a shared writable mapping made before the check, which the kernel times only at the first
 * write fault) is found within that time. Not in cluster mode, where another host's writes reach this
 * one's attributes through caches. */

#define VERIFY_MEMO_SLOTS 1024U                             /* disks remembered (direct-mapped) */
#define VERIFY_MEMO_SETTLE_NSEC (UINT64_C(1000000000))       /* ctime older than this before the check */
#define VERIFY_MEMO_MAX_AGE_NSEC (UINT64_C(60) * 1000000000) /* read again at least this often */

typedef struct SipHash {
        uint64_t v0, v1, v2, v3;
        uint64_t tail; /* pending bytes, little-endian */
        size_t n;      /* bytes fed so far */
} SipHash;

typedef struct VerifyMemo {
        uint64_t disk;   /* fingerprint of the VM and disk names: which disk the slot holds */
        uint64_t state;  /* fingerprint of what the clean check depended on */
        uint64_t when;   /* CLOCK_MONOTONIC ns of that check; 0: empty slot */
} VerifyMemo;

static VerifyMemo verify_memo[VERIFY_MEMO_SLOTS];
static uint64_t verify_memo_key[2];
static bool verify_memo_keyed;

static inline uint64_t rotl64(uint64_t x, unsigned b) {
        return (x << b) | (x >> (64 - b));
}

static void sip_round(SipHash *h) {
        h->v0 += h->v1;
        h->v1 = rotl64(h->v1, 13) ^ h->v0;
        h->v0 = rotl64(h->v0, 32);
        h->v2 += h->v3;
        h->v3 = rotl64(h->v3, 16) ^ h->v2;
        h->v0 += h->v3;
        h->v3 = rotl64(h->v3, 21) ^ h->v0;
        h->v2 += h->v1;
        h->v1 = rotl64(h->v1, 17) ^ h->v2;
        h->v2 = rotl64(h->v2, 32);
}

static void sip_block(SipHash *h, uint64_t m) {
        h->v3 ^= m;
        sip_round(h);
        sip_round(h);
        h->v0 ^= m;
}

static void sip_init(SipHash *h) {
        *h = (SipHash) {
                .v0 = verify_memo_key[0] ^ UINT64_C(0x736f6d6570736575),
                .v1 = verify_memo_key[1] ^ UINT64_C(0x646f72616e646f6d),
                .v2 = verify_memo_key[0] ^ UINT64_C(0x6c7967656e657261),
                .v3 = verify_memo_key[1] ^ UINT64_C(0x7465646279746573),
        };
}

static void sip_bytes(SipHash *h, const void *p, size_t len) {
        const uint8_t *b = p;

        for (size_t i = 0; i < len; i++) {
                h->tail |= (uint64_t) b[i] << (8 * (h->n % 8));
                if (++h->n % 8 == 0) {
                        sip_block(h, h->tail);
                        h->tail = 0;
                }
        }
}

static void sip_u64(SipHash *h, uint64_t v) {
        uint8_t b[8];

        for (size_t i = 0; i < 8; i++)
                b[i] = (uint8_t) (v >> (8 * i));
        sip_bytes(h, b, sizeof(b));
}

/* Strings with their terminator, so that ("ab", "c") and ("a", "bc") differ; NULL differs from "". */
static void sip_str(SipHash *h, const char *s) {
        if (!s)
                sip_u64(h, UINT64_MAX);
        else
                sip_bytes(h, s, strlen(s) + 1);
}

static uint64_t sip_final(SipHash *h) {
        sip_block(h, h->tail | ((uint64_t) (h->n & 0xff) << 56));
        h->v2 ^= 0xff;
        for (int i = 0; i < 4; i++)
                sip_round(h);
        return h->v0 ^ h->v1 ^ h->v2 ^ h->v3;
}

static uint64_t clock_ns(clockid_t c) {
        struct timespec ts;

        if (clock_gettime(c, &ts) < 0)
                return 0;
        return (uint64_t) ts.tv_sec * UINT64_C(1000000000) + (uint64_t) ts.tv_nsec;
}

static bool verify_memo_ready(void) {
        if (!verify_memo_keyed)
                verify_memo_keyed = getrandom(verify_memo_key, sizeof(verify_memo_key), GRND_NONBLOCK) ==
                                    (ssize_t) sizeof(verify_memo_key);
        return verify_memo_keyed;
}

/* What statx() says of images/`name`, into the fingerprint; false if it is not a file a clean check can
 * have seen (the checks of store_open_layer()), or if it changed too recently to be remembered. */
static bool memo_add_file(SipHash *h, Store *s, const char *name, uint64_t settled_before) {
        const unsigned need = STATX_TYPE | STATX_MODE | STATX_NLINK | STATX_UID | STATX_INO | STATX_SIZE |
                              STATX_MTIME | STATX_CTIME;
        struct statx sx;
        uint64_t ctime_ns;

        if (statx(s->images_fd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, need, &sx) < 0 ||
            (sx.stx_mask & need) != need)
                return false;
        if (!S_ISREG(sx.stx_mode) || sx.stx_uid != s->uid || sx.stx_nlink != 1)
                return false;
#ifdef STATX_ATTR_MOUNT_ROOT
        if (sx.stx_attributes & sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT)
                return false; /* open_beneath() refuses mounts */
#endif
        if (sx.stx_ctime.tv_sec < 0)
                return false;
        ctime_ns = (uint64_t) sx.stx_ctime.tv_sec * UINT64_C(1000000000) + sx.stx_ctime.tv_nsec;
        if (ctime_ns >= settled_before)
                return false;
        sip_u64(h, ((uint64_t) sx.stx_dev_major << 32) | sx.stx_dev_minor);
        sip_u64(h, sx.stx_ino);
        sip_u64(h, sx.stx_mode);
        sip_u64(h, sx.stx_size);
        sip_u64(h, (uint64_t) sx.stx_mtime.tv_sec);
        sip_u64(h, sx.stx_mtime.tv_nsec);
        sip_u64(h, (uint64_t) sx.stx_ctime.tv_sec);
        sip_u64(h, sx.stx_ctime.tv_nsec);
        return true;
}

/* The fingerprint of `d`'s backing layers (chain[1] and below) as they are now, taken before any header
 * is read; false if there is nothing a clean check could remember. */
static bool memo_fingerprint(Store *s, const Disk *d, uint64_t *ret) {
        uint64_t now = clock_ns(CLOCK_REALTIME);
        SipHash h;

        if (now < VERIFY_MEMO_SETTLE_NSEC)
                return false;
        sip_init(&h);
        sip_u64(&h, s->uid);
        sip_u64(&h, d->n_chain);
        for (size_t k = 1; k < d->n_chain; k++) {
                const Layer *l = store_find_layer(s, d->chain[k]);

                if (!l)
                        return false;
                sip_str(&h, l->id);
                sip_str(&h, l->file);
                sip_u64(&h, (uint64_t) l->format);
                sip_u64(&h, l->virtual_size);
                sip_u64(&h, l->inode);
                sip_str(&h, l->backing);
                sip_str(&h, l->data_file);
                sip_u64(&h, l->data_inode);
                sip_u64(&h, l->data_file_raw);
                if (!memo_add_file(&h, s, l->file, now - VERIFY_MEMO_SETTLE_NSEC))
                        return false;
                if (l->data_file && !memo_add_file(&h, s, l->data_file, now - VERIFY_MEMO_SETTLE_NSEC))
                        return false;
        }
        *ret = sip_final(&h);
        return true;
}

static uint64_t memo_disk_key(const char *vm, const char *disk) {
        SipHash h;

        sip_init(&h);
        sip_str(&h, vm);
        sip_str(&h, disk);
        return sip_final(&h);
}

typedef struct MemoCheck {
        VerifyMemo *slot; /* NULL: nothing to remember for this disk */
        uint64_t key, state, now;
        bool remember; /* the fingerprint could be taken */
        bool hit;      /* ... and matches a clean check: the backing layers need no reading */
} MemoCheck;

static void memo_begin(Store *s, const char *vm, const Disk *d, bool top_only, MemoCheck *ret) {
        *ret = (MemoCheck) {};
        if (top_only || d->n_chain < 2 || s->shared || !verify_memo_ready())
                return;
        ret->key = memo_disk_key(vm, d->name);
        ret->slot = &verify_memo[ret->key % VERIFY_MEMO_SLOTS];
        ret->now = clock_ns(CLOCK_MONOTONIC);
        ret->remember = memo_fingerprint(s, d, &ret->state);
        ret->hit = ret->remember && ret->slot->when != 0 && ret->slot->disk == ret->key &&
                   ret->slot->state == ret->state && ret->now - ret->slot->when < VERIFY_MEMO_MAX_AGE_NSEC;
}

/* After the backing layers were checked (not on a hit): `clean` if they showed no problem. */
static void memo_end(const MemoCheck *m, bool clean) {
        if (!m->slot || m->hit)
                return;
        if (m->remember && clean)
                *m->slot = (VerifyMemo) { .disk = m->key, .state = m->state, .when = m->now };
        else if (m->slot->disk == m->key)
                *m->slot = (VerifyMemo) {};
}

int op_verify(Store *s, const char *vm, const char *only_disk, bool top_only, int top_fd, VerifyProblemFunc cb,
              void *userdata, OpError *err) {
        Vm *v = store_find_vm(s, vm);
        size_t n_problems = 0;
        char text[512];
        int r;

        if (!v)
                return op_error(err, -ENOENT, "no VM '%s'", vm);

#define PROBLEM(...)                                                                 \
        do {                                                                         \
                snprintf(text, sizeof(text), __VA_ARGS__);                           \
                n_problems++;                                                        \
                r = cb(d->name, id, text, userdata);                                 \
                if (r < 0)                                                           \
                        return op_error(err, r, "out of memory");                    \
        } while (0)

        for (size_t i = 0; i < v->n_disks; i++) {
                Disk *d = &v->disks[i];
                size_t backing_problems = 0;
                MemoCheck memo;

                if (only_disk && !streq(only_disk, d->name))
                        continue;
                if (d->quarantine) {
                        const char *id = d->chain[0];
                        PROBLEM("disk is quarantined: %s", d->quarantine);
                }
                memo_begin(s, vm, d, top_only, &memo);
                for (size_t k = 0; k < (top_only ? MIN(d->n_chain, (size_t) 1) : d->n_chain); k++) {
                        const char *id = d->chain[k];
                        Layer *l = store_find_layer(s, id), *below = NULL;
                        _cleanup_close_ int owned = -EBADF;
                        FormatError ferr = {};
                        int fd;

                        /* The backing layers unchanged since a check found them clean: their records (part of
                         * the fingerprint) and files need not be compared again. */
                        if (k > 0 && memo.hit)
                                break;
                        if (k == 1)
                                backing_problems = n_problems;
                        if (!l) {
                                PROBLEM("layer record is missing");
                                continue;
                        }
                        if (k + 1 < d->n_chain) {
                                below = store_find_layer(s, d->chain[k + 1]);
                                if (!streq_ptr(l->backing, d->chain[k + 1]))
                                        PROBLEM("record's backing layer differs from the disk's chain");
                        } else if (l->backing)
                                PROBLEM("bottom layer's record names a backing layer");

                        /* The caller may already hold the top layer open (and checked) as `top_fd`: borrowed,
                         * the reads below are positioned and leave the description as it was. */
                        if (k == 0 && top_fd >= 0)
                                fd = top_fd;
                        else
                                fd = owned = store_open_layer(s, l, O_RDONLY);
                        if (fd == -ENOENT) {
                                PROBLEM("image file is missing");
                                continue;
                        }
                        if (fd < 0) {
                                PROBLEM("image file is not the one recorded (type, owner, links or inode differ)");
                                continue;
                        }
                        if (l->format == IMAGE_FORMAT_RAW) {
                                struct stat st;

                                if (fstat(fd, &st) < 0)
                                        return op_error(err, negative_errno(), "cannot stat a layer");
                                if ((uint64_t) st.st_size != l->virtual_size)
                                        PROBLEM("raw file size %" PRIu64 " differs from the recorded size %" PRIu64,
                                                (uint64_t) st.st_size, l->virtual_size);
                                continue;
                        }

                        Qcow2Header h;
                        r = qcow2_header_read(fd, NULL, &h, &ferr);
                        if (r < 0) {
                                PROBLEM("qcow2 header is invalid: %s", ferr.reason);
                                continue;
                        }
                        if (h.size != l->virtual_size)
                                PROBLEM("header size %" PRIu64 " differs from the recorded size %" PRIu64, h.size,
                                        l->virtual_size);
                        if (below) {
                                if (!h.has_backing_file || !streq(h.backing_file, below->file))
                                        PROBLEM("header's backing file name differs from the record (expected %s)",
                                                below->file);
                                if (!h.has_backing_format || !streq(h.backing_format, image_format_to_string(below->format)))
                                        PROBLEM("header's backing format differs from the record (expected %s)",
                                                image_format_to_string(below->format));
                        } else if (h.has_backing_file)
                                PROBLEM("header names a backing file, the record has none");
                        if (l->data_file) {
                                _cleanup_close_ int dfd = store_open_data_file(s, l, O_RDONLY);
                                if (!(h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE) || !h.has_data_file_name ||
                                    !streq(h.data_file, l->data_file))
                                        PROBLEM("header's external data file differs from the record (expected %s)", l->data_file);
                                if (!!(h.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW) != l->data_file_raw)
                                        PROBLEM("header's raw-data-file flag differs from the record");
                                if (dfd == -ENOENT)
                                        PROBLEM("data file is missing");
                                else if (dfd < 0)
                                        PROBLEM("data file is not the one recorded (type, owner, links or inode differ)");
                        } else if (h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
                                PROBLEM("header uses an external data file that is not recorded");
                        if (h.incompatible_features & (QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DIRTY))
                                PROBLEM("header is marked %s",
                                        (h.incompatible_features & QCOW2_INCOMPAT_CORRUPT) ? "corrupt" : "dirty");
                }
                memo_end(&memo, n_problems == backing_problems);
        }
#undef PROBLEM
        return 0;
}

int op_verify_first_problem(const char *disk, const char *layer, const char *text, void *userdata) {
        char **first = userdata;

        if (!*first) {
                *first = strdup(text);
                if (!*first)
                        return -ENOMEM;
        }
        return 0;
}

int op_check_caller_fd(int fd, OpError *err) {
        struct stat st;
        int flags, copy;

        flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return op_error(err, -EINVAL, "invalid file descriptor");
        if (flags & O_PATH)
                return op_error(err, -EINVAL, "an O_PATH file descriptor cannot be read");
        if ((flags & O_ACCMODE) == O_WRONLY)
                return op_error(err, -EINVAL, "the file descriptor is not open for reading");
        if (fstat(fd, &st) < 0)
                return op_error(err, -EINVAL, "cannot stat the file descriptor");
        if (!S_ISREG(st.st_mode))
                return op_error(err, -EINVAL, "the file descriptor is not a regular file");
        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0)
                return op_error(err, negative_errno(), "cannot duplicate the file descriptor");
        return copy;
}

/* The checks of an upload; `allow_backing`: a backing file name may be present (the caller compares it
 * with the chain). `ret_header` (qcow2 only, may be NULL): the parsed header. */
static int validate_image(int fd, ImageFormat f, const Limits *lim, bool allow_backing, uint64_t *ret_virtual_size,
                          Qcow2Header *ret_header, OpError *err) {
        Qcow2Limits qlim = { .max_virtual_size = lim->max_virtual_size };
        Qcow2CheckResult res = {};
        FormatError ferr = {};
        Qcow2Header h;
        struct stat st;
        int r;

        r = probe_fd(fd, f, NULL, &ferr);
        if (r == -EBADMSG || r == -EMEDIUMTYPE)
                return op_error(err, -EMEDIUMTYPE, "%s", ferr.reason);
        if (r < 0)
                return op_error(err, r, "%s", ferr.reason);

        if (f == IMAGE_FORMAT_RAW) {
                if (fstat(fd, &st) < 0)
                        return op_error(err, negative_errno(), "cannot stat the image");
                if ((uint64_t) st.st_size % FORMAT_SECTOR_SIZE != 0)
                        return op_error(err, -EBADMSG, "raw image size %" PRIu64 " is not a multiple of 512", (uint64_t) st.st_size);
                /* An empty raw file is a valid image of size 0, to qemu-img and to Inspect alike. */
                if ((uint64_t) st.st_size > lim->max_virtual_size)
                        return op_error(err, -E2BIG, "raw image is larger than the limit of %" PRIu64, lim->max_virtual_size);
                *ret_virtual_size = (uint64_t) st.st_size;
                return 0;
        }

        r = qcow2_header_read(fd, &qlim, &h, &ferr);
        if (r < 0)
                return op_error(err, r == -EIO ? -EIO : r, "%s", ferr.reason);
        /* Uploads are self-contained: nothing outside the file, nothing vdisk cannot hand QEMU safely. */
        if (h.has_backing_file && !allow_backing)
                return op_error(err, -EMEDIUMTYPE, "image has a backing file; uploads must be self-contained");
        if (h.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
                return op_error(err, -EMEDIUMTYPE, "image uses an external data file; %s",
                                allow_backing ? "vdisk takes over none it did not create" : "uploads must be self-contained");
        if (h.crypt_method != QCOW2_CRYPT_NONE)
                return op_error(err, -EOPNOTSUPP, "encrypted images are not supported");
        /* Corrupt or dirty bit, unknown backing format: what Inspect also calls invalid. */
        r = qcow2_header_verdict(&h, &ferr);
        if (r < 0)
                return op_error(err, r, "%s", ferr.reason);

        r = qcow2_check(fd, &h, &qlim, &res, &ferr);
        if (r < 0)
                return op_error(err, r, "%s", ferr.reason);
        if (res.corruptions > 0 || res.leaks > 0) {
                r = op_error(err, -EBADMSG, "image metadata is inconsistent (%" PRIu64 " errors, %" PRIu64 " leaks)%s%s",
                             res.corruptions, res.leaks, res.n_problems > 0 ? ": " : "",
                             res.n_problems > 0 ? res.problems[0].text : "");
                qcow2_check_result_done(&res);
                return r;
        }
        qcow2_check_result_done(&res);
        *ret_virtual_size = h.size;
        if (ret_header)
                *ret_header = h;
        return 0;
}

int op_validate_upload(int fd, ImageFormat f, const Limits *lim, uint64_t *ret_virtual_size, OpError *err) {
        return validate_image(fd, f, lim, false, ret_virtual_size, NULL, err);
}

int op_validate_chain_layer(int fd, ImageFormat f, const Limits *lim, uint64_t *ret_virtual_size, Qcow2Header *ret_header,
                            OpError *err) {
        return validate_image(fd, f, lim, true, ret_virtual_size, ret_header, err);
}

int op_quarantine(Store *s, const char *vm, const char *disk, const char *reason, OpError *err) {
        Vm *v = store_find_vm(s, vm), *next = NULL;
        Disk *d;
        int r;

        if (!v || !vm_find_disk(v, disk))
                return op_error(err, -ENOENT, "no disk '%s' of VM '%s'", disk, vm);
        r = vm_copy(v, &next);
        if (r < 0)
                return op_error(err, r, "out of memory");
        d = vm_find_disk(next, disk);
        free(d->quarantine);
        d->quarantine = strdup_or_null(reason);
        next->generation++;
        r = store_put_vm(s, next);
        if (r < 0) {
                vm_free(next);
                return op_record_error(err, r, "VM");
        }
        log_op(LOG_WARNING, "quarantine", vm, disk, NULL, "Disk '%s' of VM '%s' %s%s", disk, vm,
               reason ? "quarantined: " : "released from quarantine", reason ?: "");
        return 0;
}
