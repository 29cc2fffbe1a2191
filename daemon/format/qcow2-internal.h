/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Shared between the metadata walk, the allocation map and the writer; not a public API. */

#include "qcow2.h"

typedef enum Qcow2ClusterType {
        QCOW2_CLUSTER_UNALLOCATED,
        QCOW2_CLUSTER_ZERO_PLAIN,
        QCOW2_CLUSTER_ZERO_ALLOC,
        QCOW2_CLUSTER_NORMAL,
        QCOW2_CLUSTER_COMPRESSED,
} Qcow2ClusterType;

typedef struct Qcow2Entry {
        Qcow2ClusterType type;
        uint64_t host_offset;     /* NORMAL, ZERO_ALLOC: cluster offset; COMPRESSED: byte offset */
        uint64_t compressed_size; /* COMPRESSED: bytes from host_offset */
        bool copied;
        uint32_t alloc_bitmap;    /* extended L2 only */
        uint32_t zero_bitmap;
} Qcow2Entry;

static inline bool qcow2_has_data_file(const Qcow2Header *h) {
        return h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
}

static inline bool qcow2_has_extl2(const Qcow2Header *h) {
        return h->incompatible_features & QCOW2_INCOMPAT_EXTL2;
}

static inline size_t qcow2_l2_entry_size(const Qcow2Header *h) {
        return qcow2_has_extl2(h) ? 16 : 8;
}

/*
 * Decodes L2 entry `idx` of an L2 table buffer for guest offset `guest`. Returns 0, or a negative
 * problem class with `text` describing it: -EBADMSG (invalid entry), -ERANGE (reserved bits set),
 * -EFAULT (misaligned host offset).
 */
int qcow2_entry_decode(const Qcow2Header *h, const uint8_t *l2, uint64_t idx, uint64_t guest, Qcow2Entry *ret,
                       char *text, size_t text_size);

/* Reads a whole cluster-sized table at `offset`, which must be aligned and inside the file. */
int qcow2_read_cluster(int fd, const Qcow2Header *h, uint64_t offset, uint8_t *buf, FormatError *err);
