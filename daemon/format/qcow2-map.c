/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Allocation maps: which guest ranges hold data, zeros, compressed data, or fall through. */

#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bytes.h"
#include "qcow2-internal.h"

static const char *const extent_state_table[_EXTENT_STATE_MAX] = {
        [EXTENT_UNALLOCATED] = "unallocated",
        [EXTENT_ZERO] = "zero",
        [EXTENT_DATA] = "data",
        [EXTENT_COMPRESSED] = "compressed",
};

const char *extent_state_to_string(ExtentState s) {
        if (s < 0 || s >= _EXTENT_STATE_MAX)
                return NULL;
        return extent_state_table[s];
}

void extent_map_done(ExtentMap *m) {
        if (!m)
                return;
        free(m->extents);
        *m = (ExtentMap) {};
}

int extent_map_append(ExtentMap *m, uint64_t start, uint64_t length, ExtentState state, bool has_host,
                      uint64_t host_offset) {
        if (length == 0)
                return 0;

        if (m->n_extents > 0) {
                Extent *last = &m->extents[m->n_extents - 1];

                /* Compressed extents are never merged: each has its own stream. */
                if (last->state == state && state != EXTENT_COMPRESSED && last->start + last->length == start &&
                    last->has_host_offset == has_host &&
                    (!has_host || last->host_offset + last->length == host_offset)) {
                        last->length += length;
                        return 0;
                }
        }

        if (m->n_extents == m->allocated) {
                size_t n = m->allocated ? m->allocated * 2 : 64;
                Extent *e = reallocarray(m->extents, n, sizeof(Extent));
                if (!e)
                        return -ENOMEM;
                m->extents = e;
                m->allocated = n;
        }

        m->extents[m->n_extents++] = (Extent) {
                .start = start,
                .length = length,
                .state = state,
                .has_host_offset = has_host,
                .host_offset = has_host ? host_offset : 0,
        };
        return 0;
}

static int map_entry(ExtentMap *m, const Qcow2Header *h, const Qcow2Entry *e, uint64_t guest, uint64_t len) {
        if (qcow2_has_extl2(h) && e->type != QCOW2_CLUSTER_COMPRESSED) {
                uint64_t sub = h->cluster_size / QCOW2_EXTL2_SUBCLUSTERS;

                for (uint32_t s = 0; s < QCOW2_EXTL2_SUBCLUSTERS && s * sub < len; s++) {
                        uint64_t l = MIN(sub, len - s * sub);
                        int r;

                        if (e->alloc_bitmap & (1U << s))
                                r = extent_map_append(m, guest + s * sub, l, EXTENT_DATA, true, e->host_offset + s * sub);
                        else if (e->zero_bitmap & (1U << s))
                                r = extent_map_append(m, guest + s * sub, l, EXTENT_ZERO, false, 0);
                        else
                                r = extent_map_append(m, guest + s * sub, l, EXTENT_UNALLOCATED, false, 0);
                        if (r < 0)
                                return r;
                }
                return 0;
        }

        switch (e->type) {
        case QCOW2_CLUSTER_NORMAL:
                return extent_map_append(m, guest, len, EXTENT_DATA, true, e->host_offset);
        case QCOW2_CLUSTER_ZERO_ALLOC:
                return extent_map_append(m, guest, len, EXTENT_ZERO, true, e->host_offset);
        case QCOW2_CLUSTER_ZERO_PLAIN:
                return extent_map_append(m, guest, len, EXTENT_ZERO, false, 0);
        case QCOW2_CLUSTER_COMPRESSED:
                return extent_map_append(m, guest, len, EXTENT_COMPRESSED, true, e->host_offset);
        case QCOW2_CLUSTER_UNALLOCATED:
        default:
                return extent_map_append(m, guest, len, EXTENT_UNALLOCATED, false, 0);
        }
}

int qcow2_map(int fd, const Qcow2Header *h, ExtentMap *ret, FormatError *err) {
        _cleanup_free_ uint8_t *l1 = NULL, *l2 = NULL;
        ExtentMap m = {};
        uint64_t n = qcow2_l2_entries(h), span = n << h->cluster_bits, l1_used;
        int r;

        /* Only the L1 entries that cover the virtual size matter. */
        if (!qcow2_l1_entries_for(h->size, h->cluster_bits, qcow2_has_extl2(h), &l1_used) || l1_used > h->l1_size)
                return format_error(err, -EBADMSG, "L1 table too small for the virtual size");

        l1 = malloc(MAX(l1_used * 8, (uint64_t) 1));
        l2 = malloc(h->cluster_size);
        if (!l1 || !l2)
                return format_error(err, -ENOMEM, "out of memory");
        if (l1_used > 0) {
                r = format_pread_full(fd, l1, l1_used * 8, h->l1_table_offset);
                if (r < 0)
                        return format_error(err, r, "cannot read the L1 table");
        }

        for (uint64_t i = 0; i < l1_used; i++) {
                uint64_t e = be64_read(l1 + i * 8), off = e & QCOW2_L1E_OFFSET_MASK;
                uint64_t base = i * span, len = MIN(span, h->size - base);

                if (e & QCOW2_L1E_RESERVED_MASK) {
                        r = format_error(err, -EBADMSG, "L1 entry %" PRIu64 " has reserved bits set", i);
                        goto fail;
                }
                if (off == 0) {
                        r = extent_map_append(&m, base, len, EXTENT_UNALLOCATED, false, 0);
                        if (r < 0)
                                goto oom;
                        continue;
                }
                r = qcow2_read_cluster(fd, h, off, l2, err);
                if (r < 0)
                        goto fail;

                for (uint64_t j = 0; j < n && (j << h->cluster_bits) < len; j++) {
                        uint64_t guest = base + (j << h->cluster_bits);
                        uint64_t clen = MIN(h->cluster_size, h->size - guest);
                        char text[160];
                        Qcow2Entry ent;

                        r = qcow2_entry_decode(h, l2, j, guest, &ent, text, sizeof(text));
                        if (r < 0) {
                                r = format_error(err, -EBADMSG, "%s", text);
                                goto fail;
                        }
                        if (ent.type != QCOW2_CLUSTER_COMPRESSED && ent.host_offset != 0 && !qcow2_has_data_file(h) &&
                            ent.host_offset >= h->file_size) {
                                r = format_error(err, -EBADMSG, "data cluster for guest offset 0x%" PRIx64 " lies past the end of the file",
                                                 guest);
                                goto fail;
                        }
                        r = map_entry(&m, h, &ent, guest, clen);
                        if (r < 0)
                                goto oom;
                }
        }

        *ret = m;
        return 0;

oom:
        r = format_error(err, -ENOMEM, "out of memory");
fail:
        extent_map_done(&m);
        return r;
}

int raw_map(int fd, uint64_t size, ExtentMap *ret) {
        ExtentMap m = {};
        uint64_t pos = 0;
        int r;

        while (pos < size) {
                off_t data = lseek(fd, (off_t) pos, SEEK_DATA), hole;

                if (data < 0 && errno == ENXIO)
                        data = (off_t) size; /* no data until the end */
                else if (data < 0) {
                        /* SEEK_DATA unsupported: the whole rest is data. */
                        r = extent_map_append(&m, pos, size - pos, EXTENT_DATA, true, pos);
                        if (r < 0)
                                goto fail;
                        break;
                }
                if ((uint64_t) data > size)
                        data = (off_t) size;
                /* A hole in a raw file reads as zeros: a raw layer has nothing below it. */
                r = extent_map_append(&m, pos, (uint64_t) data - pos, EXTENT_ZERO, false, 0);
                if (r < 0)
                        goto fail;
                pos = (uint64_t) data;
                if (pos >= size)
                        break;

                hole = lseek(fd, (off_t) pos, SEEK_HOLE);
                if (hole < 0 || (uint64_t) hole > size)
                        hole = (off_t) size;
                r = extent_map_append(&m, pos, (uint64_t) hole - pos, EXTENT_DATA, true, pos);
                if (r < 0)
                        goto fail;
                pos = (uint64_t) hole;
        }

        *ret = m;
        return 0;
fail:
        extent_map_done(&m);
        return r;
}
