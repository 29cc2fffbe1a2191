/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The per-VM write-ahead log (wal.h; the protocol and its proof sketch: docs/design.md, "Commit protocol"). */

#include <endian.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "wal-internal.h"

#define LOG_DIR "log"
#define WAL_MAGIC "VDWAL01\n"
#define WAL_HEADER_SIZE 40U

enum {
        WAL_ENTRY_OP = 1,         /* one operation's changes, redone until a later checkpoint entry */
        WAL_ENTRY_CHECKPOINT = 2, /* every entry before it is durable in the files and records */
};

/* An entry whose changes are not known to be durable outside the log yet. */
typedef struct WalPending {
        char layer[LAYER_ID_LEN + 1];
        bool applied;              /* its temporaries were renamed into place */
        struct json_object *entry; /* for a redo if not */
} WalPending;

typedef struct WalLog {
        char *vm;
        uint64_t size;
        uint64_t offset;   /* where the next entry goes */
        uint64_t chain_id; /* of the entries from offset 0; 0: none yet, the next entry starts a chain */
        uint64_t next_seq;
        bool broken;       /* an entry's fate is unknown (its sync failed): no more entries until a start */
        WalPending *pending;
        size_t n_pending;
} WalLog;

struct WalState {
        int dir_fd;
        WalLog **logs;
        size_t n_logs;
        size_t n_pending;
};

/* ---- entries ---- */

static uint32_t crc32_ieee(uint32_t crc, const void *buf, size_t n) {
        static uint32_t table[256];
        const uint8_t *p = buf;

        if (table[1] == 0)
                for (uint32_t i = 0; i < 256; i++) {
                        uint32_t c = i;
                        for (int k = 0; k < 8; k++)
                                c = c & 1 ? 0xedb88320U ^ (c >> 1) : c >> 1;
                        table[i] = c;
                }
        crc = ~crc;
        while (n-- > 0)
                crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
        return ~crc;
}

/* magic[8], chain id le64, seq le64, type le32, length le32, crc32 le32 (of the header with this field
 * zero, then the payload), zero le32. */
static void header_encode(uint8_t h[static WAL_HEADER_SIZE], uint64_t chain_id, uint64_t seq, uint32_t type,
                          const char *payload, uint32_t len) {
        uint64_t v64;
        uint32_t v32;

        memset(h, 0, WAL_HEADER_SIZE);
        memcpy(h, WAL_MAGIC, 8);
        v64 = htole64(chain_id);
        memcpy(h + 8, &v64, 8);
        v64 = htole64(seq);
        memcpy(h + 16, &v64, 8);
        v32 = htole32(type);
        memcpy(h + 24, &v32, 4);
        v32 = htole32(len);
        memcpy(h + 28, &v32, 4);
        v32 = htole32(crc32_ieee(crc32_ieee(0, h, WAL_HEADER_SIZE), payload, len));
        memcpy(h + 32, &v32, 4);
}

/* Reads the entry at `off`: 0 and the payload (NUL-terminated) if it is complete and intact, else < 0. */
static int entry_read(int fd, uint64_t size, uint64_t off, uint64_t *ret_chain, uint64_t *ret_seq, uint32_t *ret_type,
                      char **ret_payload, uint32_t *ret_len) {
        uint8_t h[WAL_HEADER_SIZE];
        uint64_t chain, seq;
        uint32_t type, len, crc, zero = 0;
        char *payload;
        int r;

        if (off + WAL_HEADER_SIZE > size)
                return -EBADMSG;
        r = format_pread_full(fd, h, sizeof(h), off);
        if (r < 0)
                return r;
        if (memcmp(h, WAL_MAGIC, 8) != 0)
                return -EBADMSG;
        memcpy(&chain, h + 8, 8);
        memcpy(&seq, h + 16, 8);
        memcpy(&type, h + 24, 4);
        memcpy(&len, h + 28, 4);
        memcpy(&crc, h + 32, 4);
        chain = le64toh(chain);
        seq = le64toh(seq);
        type = le32toh(type);
        len = le32toh(len);
        crc = le32toh(crc);
        if (len > WAL_ENTRY_MAX || off + WAL_HEADER_SIZE + len > size || chain == 0)
                return -EBADMSG;
        payload = malloc((size_t) len + 1);
        if (!payload)
                return -ENOMEM;
        r = format_pread_full(fd, payload, len, off + WAL_HEADER_SIZE);
        memcpy(h + 32, &zero, 4);
        if (r >= 0 && crc32_ieee(crc32_ieee(0, h, WAL_HEADER_SIZE), payload, len) != crc)
                r = -EBADMSG;
        if (r < 0) {
                free(payload);
                return r;
        }
        payload[len] = 0;
        *ret_chain = chain;
        *ret_seq = seq;
        *ret_type = type;
        *ret_payload = payload;
        *ret_len = len;
        return 0;
}

static void pending_clear(WalState *w, WalLog *g) {
        for (size_t k = 0; k < g->n_pending; k++)
                json_object_put(g->pending[k].entry);
        free(g->pending);
        w->n_pending -= g->n_pending;
        g->pending = NULL;
        g->n_pending = 0;
}

static WalLog *log_free(WalState *w, WalLog *g) {
        if (!g)
                return NULL;
        pending_clear(w, g);
        free(g->vm);
        free(g);
        return NULL;
}

static int pending_add(WalState *w, WalLog *g, const char *layer, struct json_object *entry) {
        WalPending *p = reallocarray(g->pending, g->n_pending + 1, sizeof(WalPending));

        if (!p)
                return -ENOMEM;
        g->pending = p;
        p[g->n_pending] = (WalPending) { .entry = entry };
        snprintf(p[g->n_pending].layer, sizeof(p[g->n_pending].layer), "%s", layer);
        g->n_pending++;
        w->n_pending++;
        return 0;
}

/* Reads the chain of entries from offset 0 (one chain id, seq 0, 1, 2...; it ends at the first entry
 * that is torn, of another chain or out of sequence): where it ends, and the op entries after its last
 * checkpoint entry, in order, in `g->pending` (parsed; `applied` false). */
static int log_scan(WalState *w, WalLog *g, int fd, const char *name) {
        uint64_t off = 0;

        g->chain_id = 0;
        g->next_seq = 0;
        for (;;) {
                _cleanup_free_ char *payload = NULL;
                uint64_t chain, seq;
                uint32_t type, len;
                struct json_object *o;
                int r;

                r = entry_read(fd, g->size, off, &chain, &seq, &type, &payload, &len);
                if (r == -ENOMEM || r == -EIO)
                        return r;
                if (r < 0 || (off > 0 && (chain != g->chain_id || seq != g->next_seq)) || (off == 0 && seq != 0))
                        break;
                if (type == WAL_ENTRY_CHECKPOINT)
                        pending_clear(w, g);
                else if (type == WAL_ENTRY_OP) {
                        o = json_tokener_parse(payload);
                        if (!o || !json_object_is_type(o, json_type_object)) {
                                json_object_put(o);
                                log_error("Entry %" PRIu64 " of log/%s is intact but not a JSON object", seq, name);
                                return -EBADMSG;
                        }
                        r = pending_add(w, g, "", o);
                        if (r < 0) {
                                json_object_put(o);
                                return r;
                        }
                } else {
                        log_error("Entry %" PRIu64 " of log/%s has an unknown type %" PRIu32 "; refusing to start",
                                  seq, name, type);
                        return -EPROTONOSUPPORT;
                }
                g->chain_id = chain;
                g->next_seq = seq + 1;
                off += WAL_HEADER_SIZE + len;
        }
        g->offset = off;
        return 0;
}

static int log_name(const char *vm, char name[static 96]) {
        if (!name_is_valid(vm))
                return -EINVAL;
        snprintf(name, 96, "vm-%s.log", vm);
        return 0;
}

static uint64_t random_chain_id(void) {
        char id[LAYER_ID_LEN + 1];
        uint64_t v = 0;

        if (layer_id_new(id) >= 0)
                v = strtoull(id + LAYER_ID_LEN - 16, NULL, 16);
        return v != 0 ? v : 1;
}

/* Writes one entry (a new chain at offset 0 if `restart` or if there is none) and makes it durable. */
static int log_append(WalLog *g, int fd, uint32_t type, const char *payload, uint32_t len, bool restart) {
        uint8_t h[WAL_HEADER_SIZE];
        struct iovec iov[2];
        uint64_t off;
        ssize_t n;
        int r = 0;

        if (g->broken)
                return -EIO;
        if (restart || g->chain_id == 0) {
                g->chain_id = random_chain_id();
                g->next_seq = 0;
                g->offset = 0;
        }
        off = g->offset;
        if (off + WAL_HEADER_SIZE + len > g->size)
                return -ENOSPC;
        header_encode(h, g->chain_id, g->next_seq, type, payload, len);
        iov[0] = (struct iovec) { .iov_base = h, .iov_len = sizeof(h) };
        iov[1] = (struct iovec) { .iov_base = (void *) payload, .iov_len = len };
        n = pwritev(fd, iov, 2, (off_t) off);
        if (n != (ssize_t) (WAL_HEADER_SIZE + len))
                r = n < 0 ? negative_errno() : -EIO;
        else if (fdatasync(fd) < 0)
                r = negative_errno();
        if (r < 0) {
                /* The entry may reach the disk later: take it back (its header zeroed, synced). If that
                 * fails too, its fate is unknown until the next start redoes it or not. */
                memset(h, 0, sizeof(h));
                if (n > 0 && (pwrite(fd, h, sizeof(h), (off_t) off) != (ssize_t) sizeof(h) || fdatasync(fd) < 0))
                        g->broken = true;
                if (off == 0)
                        g->chain_id = 0;
                return r;
        }
        g->offset = off + WAL_HEADER_SIZE + len;
        g->next_seq++;
        return 0;
}

/* ---- logs ---- */

static WalLog *log_find(WalState *w, const char *vm) {
        for (size_t k = 0; k < w->n_logs; k++)
                if (streq(w->logs[k]->vm, vm))
                        return w->logs[k];
        return NULL;
}

/* Creates log/vm-<vm>.log, WAL_LOG_SIZE zero bytes (written, so that an entry's fdatasync() never waits
 * for an allocation), durably: temporary, fsync, rename, fsync of log/. */
static int log_create(WalState *w, const char *name) {
        static const uint8_t zeros[16384]; /* no heap: a 256 KiB buffer would stay in the daemon's peak */
        _cleanup_close_ int fd = -EBADF;
        char tmp[128];
        int r = 0;

        snprintf(tmp, sizeof(tmp), STORE_TMP_PREFIX "%s", name);
        (void) unlinkat(w->dir_fd, tmp, 0);
        fd = openat(w->dir_fd, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        for (uint64_t off = 0; r >= 0 && off < WAL_LOG_SIZE; off += sizeof(zeros))
                r = format_pwrite_full(fd, zeros, sizeof(zeros), off);
        if (r >= 0 && fsync(fd) < 0)
                r = negative_errno();
        if (r >= 0 && renameat2(w->dir_fd, tmp, w->dir_fd, name, RENAME_NOREPLACE) < 0)
                r = negative_errno();
        if (r < 0) {
                (void) unlinkat(w->dir_fd, tmp, 0);
                return r;
        }
        return fsync_directory(w->dir_fd);
}

static int log_open_fd(WalState *w, const char *name, struct stat *st) {
        int fd = open_beneath(w->dir_fd, name, O_RDWR | O_NONBLOCK, 0);

        if (fd < 0)
                return fd;
        if (fstat(fd, st) < 0) {
                safe_close(fd);
                return -errno;
        }
        if (!S_ISREG(st->st_mode) || st->st_size < (off_t) WAL_LOG_SIZE) {
                safe_close(fd);
                return -EBADMSG;
        }
        return fd;
}

/* Redoes a log's pending entries, then starts its chain again with a checkpoint entry. */
static int log_recover(Store *s, WalLog *g, int fd, const char *name) {
        WalState *w = s->wal;
        int r;

        if (g->n_pending == 0)
                return 0;
        for (size_t k = 0; k < g->n_pending; k++) {
                log_notice("Redoing entry %zu of %zu of log/%s (an operation committed before vdiskd stopped)", k + 1,
                           g->n_pending, name);
                r = wal_entry_redo(s, g->vm, g->pending[k].entry, false);
                if (r < 0)
                        return log_error_errno(r, "Cannot redo log/%s; refusing to start", name);
        }
        crash_point("wal-redo:before-mark");
        r = log_append(g, fd, WAL_ENTRY_CHECKPOINT, "", 0, true);
        if (r < 0)
                return log_error_errno(r, "Cannot mark log/%s as redone", name);
        pending_clear(w, g);
        return 0;
}

/* The log of VM `vm` in memory (read from its file the first time; created if `create`), with `*ret_fd`
 * open on it. Pending entries found in the file (written by another vdiskd since) are redone first. */
static int log_get(Store *s, const char *vm, bool create, WalLog **ret, int *ret_fd) {
        WalState *w = s->wal;
        _cleanup_close_ int fd = -EBADF;
        char name[96];
        struct stat st;
        WalLog *g;
        int r;

        r = log_name(vm, name);
        if (r < 0)
                return r;
        fd = log_open_fd(w, name, &st);
        if (fd == -ENOENT && create) {
                r = log_create(w, name);
                if (r < 0)
                        return r;
                fd = log_open_fd(w, name, &st);
        }
        if (fd < 0)
                return fd;
        g = log_find(w, vm);
        if (!g) {
                WalLog **a = reallocarray(w->logs, w->n_logs + 1, sizeof(WalLog *));
                if (!a)
                        return -ENOMEM;
                w->logs = a;
                g = calloc(1, sizeof(WalLog));
                if (!g || !(g->vm = strdup(vm))) {
                        free(g);
                        return -ENOMEM;
                }
                g->size = (uint64_t) st.st_size;
                r = log_scan(w, g, fd, name);
                if (r >= 0)
                        r = log_recover(s, g, fd, name);
                if (r < 0) {
                        log_free(w, g);
                        return r;
                }
                w->logs[w->n_logs++] = g;
        }
        *ret = g;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

int wal_recover_vm(Store *s, const char *vm) {
        _cleanup_close_ int fd = -EBADF;
        WalLog *g = log_find(s->wal, vm);

        if (g) /* this vdiskd's own log: up to date in memory */
                return 0;
        {
                int r = log_get(s, vm, false, &g, &fd);
                return r == -ENOENT ? 0 : r;
        }
}

int wal_open(Store *s) {
        WalState *w;
        DIR *d;
        struct dirent *de;
        int r = 0;

        w = calloc(1, sizeof(WalState));
        if (!w)
                return -ENOMEM;
        s->wal = w;
        if (mkdirat(s->dir_fd, LOG_DIR, 0700) >= 0)
                (void) fsync_directory(s->dir_fd);
        else if (errno != EEXIST)
                return negative_errno();
        w->dir_fd = open_beneath(s->dir_fd, LOG_DIR, O_RDONLY | O_DIRECTORY, 0);
        if (w->dir_fd < 0)
                return w->dir_fd;

        r = store_opendir(w->dir_fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d))) {
                const char *n = de->d_name, *vm = startswith(n, "vm-");
                _cleanup_free_ char *name = NULL;
                size_t len = strlen(n);
                WalLog *g;
                int fd = -EBADF;

                if (n[0] == '.') {
                        if (startswith(n, STORE_TMP_PREFIX))
                                (void) unlinkat(w->dir_fd, n, 0);
                        continue;
                }
                if (!vm || len < 8 || !streq(n + len - 4, ".log")) {
                        log_warning("Ignoring unexpected file log/%s", n);
                        continue;
                }
                name = strndup(vm, strlen(vm) - 4);
                if (!name) {
                        r = -ENOMEM;
                        break;
                }
                r = log_get(s, name, false, &g, &fd);
                safe_close(fd);
                if (r == -EBADMSG || r == -EINVAL) {
                        log_error("Log %s/log/%s is not a log of vdiskd; refusing to start", s->path, n);
                        break;
                }
                if (r < 0)
                        break;
        }
        closedir(d);
        return r < 0 ? r : 0;
}

void wal_free(Store *s) {
        WalState *w = s->wal;

        if (!w)
                return;
        for (size_t k = 0; k < w->n_logs; k++)
                log_free(w, w->logs[k]);
        free(w->logs);
        safe_close(w->dir_fd);
        free(w);
        s->wal = NULL;
}

bool wal_pending(Store *s) {
        return s->wal && s->wal->n_pending > 0;
}

bool wal_layer_pending(Store *s, const char *id) {
        WalState *w = s->wal;

        if (!w || w->n_pending == 0)
                return false;
        for (size_t k = 0; k < w->n_logs; k++)
                for (size_t j = 0; j < w->logs[k]->n_pending; j++)
                        if (streq(w->logs[k]->pending[j].layer, id))
                                return true;
        return false;
}

static int fsync_at(int dir_fd, const char *name) {
        _cleanup_close_ int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);

        if (fd < 0)
                return negative_errno();
        return fsync(fd) < 0 ? negative_errno() : 0;
}

int wal_checkpoint(Store *s) {
        WalState *w = s->wal;
        int r;

        if (!w || w->n_pending == 0)
                return 0;
        /* 1. Everything the pending entries changed, durable: the files and records they renamed into
         *    place (redone if that did not happen), then the two directories, once for all. */
        for (size_t k = 0; k < w->n_logs; k++) {
                WalLog *g = w->logs[k];
                char name[96];

                for (size_t j = 0; j < g->n_pending; j++) {
                        WalPending *p = &g->pending[j];
                        Layer *l = store_find_layer(s, p->layer);

                        if (!p->applied) {
                                r = wal_entry_redo(s, g->vm, p->entry, true);
                                if (r < 0)
                                        return log_error_errno(r, "Cannot write the changes of a logged operation of VM '%s'", g->vm);
                                continue;
                        }
                        snprintf(name, sizeof(name), "layer-%s.json", p->layer);
                        r = fsync_at(s->records_fd, name);
                        if (r >= 0 && l)
                                r = fsync_at(s->images_fd, l->file);
                        if (r < 0)
                                return log_error_errno(r, "Cannot make layer %s durable", p->layer);
                }
                if (g->n_pending > 0) {
                        snprintf(name, sizeof(name), "vm-%s.json", g->vm);
                        r = fsync_at(s->records_fd, name);
                        if (r < 0 && r != -ENOENT)
                                return log_error_errno(r, "Cannot make the record of VM '%s' durable", g->vm);
                }
        }
        r = fsync_directory(s->images_fd);
        if (r >= 0)
                r = fsync_directory(s->records_fd);
        if (r < 0)
                return log_error_errno(r, "Cannot make the store's directories durable");
        crash_point("wal-checkpoint:after-sync");

        /* 2. Each log starts again with a checkpoint entry: nothing before it is redone. */
        for (size_t k = 0; k < w->n_logs; k++) {
                WalLog *g = w->logs[k];
                _cleanup_close_ int fd = -EBADF;
                char name[96];
                struct stat st;

                if (g->n_pending == 0)
                        continue;
                r = log_name(g->vm, name);
                if (r >= 0)
                        r = fd = log_open_fd(w, name, &st);
                if (r >= 0)
                        r = log_append(g, fd, WAL_ENTRY_CHECKPOINT, "", 0, true);
                if (r < 0)
                        return log_error_errno(r, "Cannot mark log/%s", name);
                pending_clear(w, g);
        }
        crash_point("wal-checkpoint:after-mark");
        return 0;
}

/* ---- the hot path ---- */

/* A record's text in a temporary of records/, not synced: renamed into place after the commit. */
static int record_prepare(Store *s, const char *name, struct json_object *o, char tmp[static 128]) {
        _cleanup_close_ int fd = -EBADF;
        char rnd[LAYER_ID_LEN + 1];
        const char *text;
        int r;

        r = layer_id_new(rnd);
        if (r < 0)
                return r;
        snprintf(tmp, 128, STORE_TMP_PREFIX "%s.%.16s", name, rnd);
        text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!text)
                return -ENOMEM;
        if (strlen(text) > RECORD_MAX_SIZE)
                return -E2BIG;
        fd = openat(s->records_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        r = format_pwrite_full(fd, text, strlen(text), 0);
        if (r < 0)
                (void) unlinkat(s->records_fd, tmp, 0);
        return r;
}

static void op_crash_point(const char *op, const char *point) {
        char name[128];

        snprintf(name, sizeof(name), "%s:%s", op, point);
        crash_point(name);
}

/* The operation entry of a new layer `l` (its file of `size` bytes, `extents` taken) and VM record `next`;
 * `*ret_vmo` is the VM record's tree, shared with the entry. */
static int entry_build(const char *op, const Layer *l, const Vm *next, uint64_t size, struct json_object *extents,
                       struct json_object **ret_e, struct json_object **ret_vmo) {
        struct json_object *e = json_object_new_object(), *files = json_object_new_array(),
                           *f = json_object_new_object(), *layers = json_object_new_array(), *vmo = vm_to_json(next);

        if (!e || !files || !f || !layers || !vmo) {
                json_object_put(extents);
                json_object_put(e);
                json_object_put(files);
                json_object_put(f);
                json_object_put(layers);
                json_object_put(vmo);
                return -ENOMEM;
        }
        json_object_object_add(f, "layer", json_object_new_string(l->id));
        json_object_object_add(f, "size", json_object_new_uint64(size));
        json_object_object_add(f, "extents", extents);
        json_object_array_add(files, f);
        json_object_array_add(layers, layer_to_json(l));
        json_object_object_add(e, "schema", json_object_new_int(RECORD_SCHEMA));
        json_object_object_add(e, "op", json_object_new_string(op));
        json_object_object_add(e, "vm", json_object_get(vmo));
        json_object_object_add(e, "layers", layers);
        json_object_object_add(e, "files", files);
        *ret_e = e;
        *ret_vmo = vmo;
        return 0;
}

/* The VM record is overwritten in place after the commit (a new inode costs more than the fdatasync on
 * ext4): its file opened and its blocks allocated for `len` bytes now, so that the overwrite cannot run
 * out of space; torn by a crash, it is rewritten by the redo before the records are read. */
static int vm_record_reserve(Store *s, const char *name, size_t len, struct stat *ret_st) {
        _cleanup_close_ int fd = -EBADF;

        if (len > RECORD_MAX_SIZE)
                return -E2BIG;
        fd = open_beneath(s->records_fd, name, O_WRONLY | O_NONBLOCK, 0);
        if (fd < 0)
                return fd;
        if (fstat(fd, ret_st) < 0 || !S_ISREG(ret_st->st_mode) || ret_st->st_uid != s->uid || ret_st->st_nlink != 1)
                return -EBADMSG;
        if ((uint64_t) ret_st->st_blocks * 512 < len && fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t) len) < 0)
                return negative_errno();
        return TAKE_FD(fd);
}

static int entry_apply(Store *s, const char *op, const Layer *l, const char *layer_tmp, const char *layer_name, int vm_fd,
                       const char *vm_text, size_t vm_len, uint64_t vm_old_size) {
        char tmp[96];
        int r = 0;

        snprintf(tmp, sizeof(tmp), STORE_TMP_PREFIX "%s", l->file);
        if (renameat2(s->images_fd, tmp, s->images_fd, l->file, RENAME_NOREPLACE) < 0)
                r = negative_errno();
        if (r >= 0)
                op_crash_point(op, "wal-after-file");
        if (r >= 0 && renameat(s->records_fd, layer_tmp, s->records_fd, layer_name) < 0)
                r = negative_errno();
        if (r >= 0)
                op_crash_point(op, "wal-after-layer-record");
        if (r >= 0)
                r = format_pwrite_full(vm_fd, vm_text, vm_len, 0);
        if (r >= 0 && vm_old_size > vm_len && ftruncate(vm_fd, (off_t) vm_len) < 0)
                r = negative_errno();
        if (r < 0) {
                log_warning_errno(r, "Cannot put the files of %s in place; the checkpoint writes them", op);
                (void) unlinkat(s->images_fd, tmp, 0);
                (void) unlinkat(s->records_fd, layer_tmp, 0);
        }
        return r;
}

int wal_new_layer(Store *s, const char *op, Layer *l, StoreFillFunc fill, void *userdata, Vm *next) {
        struct json_object *e = NULL, *extents = NULL;
        char layer_name[64], vm_name[96], layer_tmp[128] = "";
        _cleanup_close_ int fd = -EBADF, log_fd = -EBADF, vm_fd = -EBADF;
        struct json_object *vmo = NULL; /* the new VM record: in the entry, and its text (vm_text) for the record */
        struct stat vst = {};
        size_t vm_len = 0;
        bool have_file = false;
        WalLog *g = NULL;
        const char *text, *vm_text;
        struct stat st;
        size_t total;
        WalPending *p;
        int r;

        if (!s->wal || l->data_file || !l->vm || !streq(l->vm, next->name) || !store_find_vm(s, next->name))
                return -E2BIG; /* not for the log: the caller uses the intent journal */

        r = log_get(s, next->name, true, &g, &log_fd);
        if (r < 0)
                return r;

        /* Prepared: the new file and both records as temporaries, nothing synced, nothing in place. */
        fd = store_tmp_create(s, l);
        if (fd < 0)
                return fd;
        have_file = true;
        r = fill(fd, userdata);
        if (r >= 0 && fstat(fd, &st) < 0)
                r = negative_errno();
        if (r >= 0 && (uint64_t) st.st_size > WAL_FILE_MAX_SIZE)
                r = -E2BIG;
        if (r >= 0)
                r = wal_file_extents(fd, (uint64_t) st.st_size, &extents, &total);
        if (r < 0)
                goto fail;
        l->inode = (uint64_t) st.st_ino;
        l->state = LAYER_READY;

        r = entry_build(op, l, next, (uint64_t) st.st_size, TAKE_PTR(extents), &e, &vmo);
        if (r < 0)
                goto fail;
        /* Both texts live in their trees' buffers: serializing `e` leaves vm_text alone. */
        vm_text = json_object_to_json_string_ext(vmo, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE);
        text = json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        if (!vm_text || !text) {
                r = -ENOMEM;
                goto fail;
        }
        if (strlen(text) > WAL_ENTRY_MAX) {
                r = -E2BIG;
                goto fail;
        }

        snprintf(layer_name, sizeof(layer_name), "layer-%s.json", l->id);
        snprintf(vm_name, sizeof(vm_name), "vm-%s.json", next->name);
        {
                struct json_object *o = layer_to_json(l);
                r = record_prepare(s, layer_name, o, layer_tmp);
                json_object_put(o);
                if (r < 0) {
                        layer_tmp[0] = 0;
                        goto fail;
                }
                vm_len = strlen(vm_text);
                vm_fd = vm_record_reserve(s, vm_name, vm_len, &vst);
                if (vm_fd < 0) {
                        r = vm_fd;
                        goto fail;
                }
        }
        /* Room in the memory of the store for the new layer, so that nothing can fail after the commit. */
        r = store_reserve_layer(s);
        if (r < 0)
                goto fail;
        op_crash_point(op, "wal-prepared");

        /* The commit point: the entry, durable with one fdatasync() of the log. */
        if (g->offset + WAL_HEADER_SIZE + strlen(text) > g->size) {
                r = wal_checkpoint(s);
                if (r < 0)
                        goto fail;
        }
        r = pending_add(s->wal, g, l->id, NULL);
        if (r < 0)
                goto fail;
        r = log_append(g, log_fd, WAL_ENTRY_OP, text, (uint32_t) strlen(text), false);
        if (r < 0) {
                g->n_pending--;
                s->wal->n_pending--;
                goto fail;
        }
        p = &g->pending[g->n_pending - 1];
        op_crash_point(op, "wal-after-log");

        /* Applied: the temporaries renamed into place and the VM record overwritten, no sync
         * (wal_checkpoint() makes them durable). */
        if (entry_apply(s, op, l, layer_tmp, layer_name, vm_fd, vm_text, vm_len, (uint64_t) vst.st_size) < 0)
                /* Committed all the same: the checkpoint redoes the entry, so does a start. */
                p->entry = json_object_get(e);
        else
                p->applied = true;
        json_object_put(e);
        json_object_put(vmo);
        store_add_layer_reserved(s, l);
        store_replace_vm_in_memory(s, next);
        op_crash_point(op, "wal-applied");
        return 0;

fail:
        json_object_put(vmo);
        json_object_put(extents);
        json_object_put(e);
        if (layer_tmp[0])
                (void) unlinkat(s->records_fd, layer_tmp, 0);
        if (have_file)
                store_tmp_discard(s, l);
        l->inode = 0;
        return r;
}
