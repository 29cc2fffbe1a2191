/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "record-cache.h"

/*
 * The start-up cache (docs/design.md, "Start-up"): STORE/records.cache holds byte-exact copies of the
 * records, written at a clean stop, each with the identity of the file it was copied from (device, inode,
 * size, mtime, ctime, all from one fstat of the open file) and an FNV-1a hash of its name and bytes. At
 * start a copy stands in for its file only if an lstat of records/<name> now gives the same identity;
 * the copy is then parsed and validated exactly as the file would be. Anything else (no cache, a torn
 * or foreign entry, a record changed, replaced or added since, a copy that does not validate) reads the
 * file itself, which alone decides (and names itself if it is corrupt). A write to a file changes its
 * ctime; so that a write in the same clock tick as the copy cannot go unseen, records whose ctime is not
 * older than RECORD_CACHE_MARGIN_SEC before the copy are left out.
 *
 *   "vdisk-record-cache 1\n"
 *   then per record: "<name> <dev> <ino> <size> <mtime s> <mtime ns> <ctime s> <ctime ns> <hash hex>\n"
 *                    <size bytes of the record> "\n"
 */
#define RECORD_CACHE "records.cache"
#define RECORD_CACHE_MAGIC "vdisk-record-cache 1\n"
#define RECORD_CACHE_MARGIN_SEC 2

static size_t name_hash(const char *name) {
        uint64_t h = UINT64_C(14695981039346656037);
        for (; *name; name++)
                h = (h ^ (uint8_t) *name) * UINT64_C(1099511628211);
        return (size_t) h;
}

void record_names_done(RecordNames *rn) {
        while (rn->chunks) {
                RecordNamesChunk *next = rn->chunks->next;
                (void) munmap(rn->chunks, RECORD_NAMES_CHUNK);
                rn->chunks = next;
        }
        free(rn->items);
        free(rn->index);
        *rn = (RecordNames) {};
}

int record_names_add(RecordNames *rn, const char *name, ino_t ino) {
        size_t len = strlen(name) + 1;
        char *copy;

        if (len > RECORD_NAMES_CHUNK - sizeof(RecordNamesChunk))
                return -ENAMETOOLONG;
        if (rn->n == rn->n_allocated) {
                size_t n = rn->n_allocated ? 2 * rn->n_allocated : 256;
                RecordName *a = reallocarray(rn->items, n, sizeof(RecordName));
                if (!a)
                        return -ENOMEM;
                rn->items = a;
                rn->n_allocated = n;
        }
        if (!rn->chunks || rn->chunks->used + len > RECORD_NAMES_CHUNK - sizeof(RecordNamesChunk)) {
                RecordNamesChunk *c = mmap(NULL, RECORD_NAMES_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (c == MAP_FAILED)
                        return -ENOMEM;
                c->next = rn->chunks;
                c->used = 0;
                rn->chunks = c;
        }
        copy = rn->chunks->data + rn->chunks->used;
        memcpy(copy, name, len);
        rn->chunks->used += len;
        rn->items[rn->n++] = (RecordName) { .name = copy, .ino = ino };
        return 0;
}

static int record_name_cmp_ino(const void *a, const void *b) {
        const RecordName *x = a, *y = b;
        return x->ino < y->ino ? -1 : x->ino > y->ino;
}

int record_names_index(RecordNames *rn) {
        size_t size = 16;

        if (rn->n > 0) /* an empty store has no array at all */
                qsort(rn->items, rn->n, sizeof(RecordName), record_name_cmp_ino);
        while (size < 2 * rn->n)
                size *= 2;
        rn->index = calloc(size, sizeof(size_t));
        if (!rn->index)
                return -ENOMEM;
        rn->index_size = size;
        for (size_t i = 0; i < rn->n; i++) {
                size_t k = name_hash(rn->items[i].name) & (size - 1);
                while (rn->index[k])
                        k = (k + 1) & (size - 1);
                rn->index[k] = i + 1;
        }
        return 0;
}

static RecordName *record_names_find(RecordNames *rn, const char *name) {
        if (!rn->index)
                return NULL;
        for (size_t k = name_hash(name) & (rn->index_size - 1);; k = (k + 1) & (rn->index_size - 1)) {
                if (!rn->index[k])
                        return NULL;
                if (streq(rn->items[rn->index[k] - 1].name, name))
                        return &rn->items[rn->index[k] - 1];
        }
}

static uint64_t record_cache_hash(const char *name, const char *text, size_t size) {
        uint64_t h = UINT64_C(14695981039346656037);

        for (const char *p = name; *p; p++)
                h = (h ^ (uint8_t) *p) * UINT64_C(1099511628211);
        h = (h ^ 0) * UINT64_C(1099511628211);
        for (size_t i = 0; i < size; i++)
                h = (h ^ (uint8_t) text[i]) * UINT64_C(1099511628211);
        return h;
}

typedef struct RecordIdentity {
        uint64_t dev, ino, size;
        int64_t mtime_sec, mtime_nsec, ctime_sec, ctime_nsec;
} RecordIdentity;

static RecordIdentity record_identity(const struct stat *st) {
        return (RecordIdentity) {
                .dev = (uint64_t) st->st_dev, .ino = (uint64_t) st->st_ino, .size = (uint64_t) st->st_size,
                .mtime_sec = st->st_mtim.tv_sec, .mtime_nsec = st->st_mtim.tv_nsec,
                .ctime_sec = st->st_ctim.tv_sec, .ctime_nsec = st->st_ctim.tv_nsec,
        };
}

static bool record_identity_eq(const RecordIdentity *a, const RecordIdentity *b) {
        return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_sec == b->mtime_sec &&
               a->mtime_nsec == b->mtime_nsec && a->ctime_sec == b->ctime_sec && a->ctime_nsec == b->ctime_nsec;
}

/* What is done with a cached copy whose file is still the one it was copied from (`line` is its whole
 * line, newline included): at start, parse and validate it (record_cache_parse); at a stop, copy it
 * into the new cache (record_cache_copy). Returns > 0 if the record needs nothing more. */
typedef int (*RecordCacheFunc)(Store *s, const char *name, const char *line, size_t line_len, const char *text,
                               size_t size, void *userdata);

typedef struct RecordCacheParse {
        RecordLoadFunc load;
        size_t n_loaded;
} RecordCacheParse;

static int record_cache_parse(Store *s, const char *name, const char *line, size_t line_len, const char *text,
                              size_t size, void *userdata) {
        RecordCacheParse *p = userdata;
        struct json_object *o = NULL;
        int r;

        if (record_parse_why(text, size, &o, NULL) < 0)
                return 0; /* the file decides, and names itself */
        r = p->load(s, name, o);
        json_object_put(o);
        if (r == -ENOMEM)
                return r;
        if (r >= 0)
                p->n_loaded++;
        return r >= 0;
}

static int record_cache_copy(Store *s, const char *name, const char *line, size_t line_len, const char *text,
                             size_t size, void *userdata) {
        FILE *f = userdata;

        fwrite(line, 1, line_len, f);
        fwrite(text, 1, size, f);
        fputc('\n', f);
        return 1;
}

static int record_cache_use(Store *s, RecordNames *rn, const char *name, const RecordIdentity *id, const char *line,
                            size_t line_len, const char *text, size_t size, RecordCacheFunc func, void *userdata) {
        RecordName *entry = record_names_find(rn, name);
        RecordIdentity now;
        struct stat st;
        int r;

        if (!entry || entry->loaded)
                return 0;
        if (fstatat(s->records_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode))
                return 0;
        now = record_identity(&st);
        if (!record_identity_eq(id, &now))
                return 0;
        r = func(s, name, line, line_len, text, size, userdata);
        if (r > 0)
                entry->loaded = true;
        return r < 0 ? r : 0;
}

/* Reads the cache in pieces (its size grows with the store; the daemon's memory should not). Stops
 * using it at the first entry that does not parse: the records left are read from their files. */
static int record_cache_load(Store *s, RecordNames *rn, RecordCacheFunc func, void *userdata) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        size_t cap = 64 * 1024, len = 0, pos = 0;
        bool eof = false;
        struct stat st;
        int r;

        fd = openat(s->dir_fd, RECORD_CACHE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0)
                return 0;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != s->uid)
                return 0;
        (void) posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
        buf = malloc(cap + 1);
        if (!buf)
                return -ENOMEM;

        for (bool header = true;;) {
                char *nl, name[256];
                RecordIdentity id;
                unsigned long long hash;
                size_t line;
                int n = 0;

                /* At least one complete line (and then the record after it) in buf[pos, len). */
                nl = memchr(buf + pos, '\n', len - pos);
                if (nl && !header) {
                        int k;

                        *nl = 0; /* sscanf() measures its whole input first */
                        k = sscanf(buf + pos, "%255s %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNd64 " %" SCNd64 " %" SCNd64
                                   " %" SCNd64 " %llx%n", name, &id.dev, &id.ino, &id.size, &id.mtime_sec, &id.mtime_nsec,
                                   &id.ctime_sec, &id.ctime_nsec, &hash, &n);
                        *nl = '\n';
                        if (k != 9 || buf + pos + n != nl || id.size > RECORD_MAX_SIZE)
                                return 0; /* torn or foreign: the files decide */
                        line = (size_t) (nl - (buf + pos)) + 1;
                        if (len - pos >= line + id.size + 1) {
                                const char *text = nl + 1;
                                if (text[id.size] != '\n')
                                        return 0;
                                if (record_cache_hash(name, text, id.size) == (uint64_t) hash) {
                                        r = record_cache_use(s, rn, name, &id, buf + pos, line, text, id.size, func, userdata);
                                        if (r < 0)
                                                return r;
                                }
                                pos += line + id.size + 1;
                                continue;
                        }
                } else if (nl && header) {
                        if ((size_t) (nl - (buf + pos)) + 1 != strlen(RECORD_CACHE_MAGIC) ||
                            memcmp(buf + pos, RECORD_CACHE_MAGIC, strlen(RECORD_CACHE_MAGIC)) != 0)
                                return 0;
                        pos += strlen(RECORD_CACHE_MAGIC);
                        header = false;
                        continue;
                }
                /* Need more: keep the unparsed tail, grow for a large record, read. */
                if (eof)
                        return 0;
                memmove(buf, buf + pos, len - pos);
                len -= pos;
                pos = 0;
                if (len == cap) {
                        char *b;
                        if (cap >= 2 * RECORD_MAX_SIZE + 4096)
                                return 0;
                        b = realloc(buf, 2 * cap + 1);
                        if (!b)
                                return -ENOMEM;
                        buf = b;
                        cap *= 2;
                }
                ssize_t k = read(fd, buf + len, cap - len);
                if (k < 0)
                        return 0;
                if (k == 0)
                        eof = true;
                len += (size_t) k;
                buf[len] = 0; /* sscanf stops at the end of what was read */
        }
}

/* At a clean stop: copies of the records (read from their files, with their identity) into
 * RECORD_CACHE, replaced atomically. Best effort: without it the next start reads every record. Not
 * fsynced: a torn copy fails its hash, or its identity, and its file is read instead. */
int record_cache_write(Store *s) {
        _cleanup_(record_names_done) RecordNames rn = {};
        _cleanup_free_ char *text = NULL;
        size_t text_cap = 0;
        struct timespec now;
        FILE *f = NULL;
        DIR *d;
        struct dirent *de;
        int fd, r;

        if (clock_gettime(CLOCK_REALTIME, &now) < 0)
                return negative_errno();
        r = store_opendir(s->records_fd, &d);
        if (r < 0)
                return r;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.' && strlen(de->d_name) > 5 &&
                    streq(de->d_name + strlen(de->d_name) - 5, ".json") &&
                    (r = record_names_add(&rn, de->d_name, de->d_ino)) < 0)
                        break;
        closedir(d);
        if (r < 0)
                return r;

        fd = openat(s->dir_fd, STORE_TMP_PREFIX RECORD_CACHE, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        f = fdopen(fd, "w");
        if (!f) {
                r = negative_errno();
                safe_close(fd);
                goto fail;
        }
        fputs(RECORD_CACHE_MAGIC, f);
        /* The copies still current first (without reading their files, which a start from the cache
         * left cold), then the records changed or added since. */
        r = record_names_index(&rn);
        if (r >= 0)
                r = record_cache_load(s, &rn, record_cache_copy, f);
        if (r < 0)
                goto fail;
        for (size_t i = 0; i < rn.n; i++) {
                _cleanup_close_ int rfd = -EBADF;
                RecordIdentity id;
                struct stat st;

                if (rn.items[i].loaded)
                        continue;
                if (strlen(rn.items[i].name) > 255 || strpbrk(rn.items[i].name, " \t\n\v\f\r"))
                        continue; /* not one word of the cache's lines */
                rfd = open_beneath(s->records_fd, rn.items[i].name, O_RDONLY | O_NONBLOCK, 0);
                if (rfd < 0 || fstat(rfd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t) st.st_size > RECORD_MAX_SIZE)
                        continue;
                if (st.st_ctim.tv_sec > now.tv_sec - RECORD_CACHE_MARGIN_SEC)
                        continue; /* changed too recently to tell a later change by its ctime */
                id = record_identity(&st);
                if (id.size + 1 > text_cap) {
                        char *t = realloc(text, id.size + 1);
                        if (!t) {
                                r = -ENOMEM;
                                goto fail;
                        }
                        text = t;
                        text_cap = id.size + 1;
                }
                r = format_pread_full(rfd, text, id.size, 0);
                if (r < 0)
                        continue;
                fprintf(f, "%s %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %016" PRIx64 "\n",
                        rn.items[i].name, id.dev, id.ino, id.size, id.mtime_sec, id.mtime_nsec, id.ctime_sec,
                        id.ctime_nsec, record_cache_hash(rn.items[i].name, text, id.size));
                fwrite(text, 1, id.size, f);
                fputc('\n', f);
        }
        if (fflush(f) != 0 || ferror(f)) {
                r = -EIO;
                goto fail;
        }
        fclose(f);
        f = NULL;
        if (renameat(s->dir_fd, STORE_TMP_PREFIX RECORD_CACHE, s->dir_fd, RECORD_CACHE) < 0) {
                r = negative_errno();
                goto fail;
        }
        return 0;
fail:
        if (f)
                fclose(f);
        (void) unlinkat(s->dir_fd, STORE_TMP_PREFIX RECORD_CACHE, 0);
        return r;
}

int record_cache_read(Store *s, RecordNames *rn, RecordLoadFunc load, size_t *ret_n_loaded) {
        RecordCacheParse p = { .load = load };
        int r = record_cache_load(s, rn, record_cache_parse, &p);

        *ret_n_loaded = p.n_loaded;
        return r;
}
