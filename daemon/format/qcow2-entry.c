/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdio.h>

#include "bytes.h"
#include "qcow2-internal.h"

int qcow2_entry_decode(const Qcow2Header *h, const uint8_t *l2, uint64_t idx, uint64_t guest, Qcow2Entry *ret,
                       char *text, size_t text_size) {
        bool extl2 = qcow2_has_extl2(h), data_file = qcow2_has_data_file(h);
        const uint8_t *p = l2 + idx * qcow2_l2_entry_size(h);
        uint64_t e = be64_read(p), bitmap = extl2 ? be64_read(p + 8) : 0;
        Qcow2Entry out = { .copied = e & QCOW2_OFLAG_COPIED };

        out.alloc_bitmap = (uint32_t) bitmap;
        out.zero_bitmap = (uint32_t) (bitmap >> 32);

        if (e & QCOW2_OFLAG_COMPRESSED) {
                uint32_t x = 62 - (h->cluster_bits - 8);
                uint64_t nb_sectors, offset_mask = (UINT64_C(1) << x) - 1;

                if (data_file) {
                        snprintf(text, text_size, "compressed cluster at guest offset 0x%" PRIx64 " with an external data file", guest);
                        return -EBADMSG;
                }
                if (out.copied) {
                        snprintf(text, text_size, "compressed cluster at guest offset 0x%" PRIx64 " has the COPIED flag", guest);
                        return -EBADMSG;
                }
                if (extl2 && bitmap != 0) {
                        snprintf(text, text_size, "compressed cluster at guest offset 0x%" PRIx64 " has a subcluster bitmap", guest);
                        return -EBADMSG;
                }
                out.host_offset = e & offset_mask;
                if (out.host_offset >= QCOW2_MAX_OFFSET) {
                        snprintf(text, text_size, "compressed cluster at guest offset 0x%" PRIx64 " has reserved offset bits set",
                                 guest);
                        return -ERANGE;
                }
                nb_sectors = ((e & ~QCOW2_OFLAG_COPIED & ~QCOW2_OFLAG_COMPRESSED) >> x) + 1;
                out.compressed_size = nb_sectors * 512 - (out.host_offset & 511);
                out.type = QCOW2_CLUSTER_COMPRESSED;
                *ret = out;
                return 0;
        }

        if (e & QCOW2_L2E_STD_RESERVED_MASK) {
                snprintf(text, text_size, "L2 entry for guest offset 0x%" PRIx64 " has reserved bits set", guest);
                return -ERANGE;
        }
        if ((e & QCOW2_OFLAG_ZERO) && (h->version < 3 || extl2)) {
                snprintf(text, text_size, "L2 entry for guest offset 0x%" PRIx64 " has the zero flag, which this image cannot use",
                         guest);
                return -ERANGE;
        }
        /* The mask keeps bits 9-55, so the offset is 512-aligned; the cluster must be too. */
        out.host_offset = e & QCOW2_L2E_OFFSET_MASK;
        if (out.host_offset & (h->cluster_size - 1)) {
                snprintf(text, text_size, "data cluster for guest offset 0x%" PRIx64 " is not cluster-aligned", guest);
                return -EFAULT;
        }

        if (out.host_offset == 0 && !(data_file && out.copied)) {
                if (out.copied) {
                        snprintf(text, text_size, "unallocated L2 entry for guest offset 0x%" PRIx64 " has the COPIED flag", guest);
                        return -EBADMSG;
                }
                if (extl2 && out.alloc_bitmap != 0) {
                        snprintf(text, text_size,
                                 "unallocated cluster at guest offset 0x%" PRIx64 " has allocated subclusters", guest);
                        return -EBADMSG;
                }
                out.type = (e & QCOW2_OFLAG_ZERO) ? QCOW2_CLUSTER_ZERO_PLAIN : QCOW2_CLUSTER_UNALLOCATED;
        } else {
                if (data_file && !out.copied) {
                        snprintf(text, text_size,
                                 "cluster at guest offset 0x%" PRIx64 " in an external data file lacks the COPIED flag", guest);
                        return -EBADMSG;
                }
                if (data_file && out.host_offset != guest) {
                        snprintf(text, text_size,
                                 "cluster at guest offset 0x%" PRIx64 " maps to a different offset of the external data file",
                                 guest);
                        return -EBADMSG;
                }
                out.type = (e & QCOW2_OFLAG_ZERO) ? QCOW2_CLUSTER_ZERO_ALLOC : QCOW2_CLUSTER_NORMAL;
        }

        if (extl2 && (out.alloc_bitmap & out.zero_bitmap)) {
                snprintf(text, text_size, "cluster at guest offset 0x%" PRIx64 " has subclusters both allocated and zero", guest);
                return -EBADMSG;
        }

        *ret = out;
        return 0;
}

int qcow2_read_cluster(int fd, const Qcow2Header *h, uint64_t offset, uint8_t *buf, FormatError *err) {
        int r;

        if (offset & (h->cluster_size - 1))
                return format_error(err, -EBADMSG, "table at 0x%" PRIx64 " is not cluster-aligned", offset);
        if (offset < h->cluster_size || offset >= QCOW2_MAX_OFFSET || offset > h->file_size ||
            h->cluster_size > h->file_size - offset)
                return format_error(err, -EBADMSG, "table at 0x%" PRIx64 " lies outside the file", offset);
        r = format_pread_full(fd, buf, h->cluster_size, offset);
        if (r < 0)
                return format_error(err, r, "cannot read the table at 0x%" PRIx64, offset);
        return 0;
}
