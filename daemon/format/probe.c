/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "bytes.h"
#include "probe.h"

static const char *const probe_signature_table[_PROBE_SIGNATURE_MAX] = {
        [PROBE_QCOW2] = "qcow2",
        [PROBE_QCOW1] = "qcow",
        [PROBE_QED] = "qed",
        [PROBE_VMDK] = "vmdk",
        [PROBE_VDI] = "vdi",
        [PROBE_VHDX] = "vhdx",
        [PROBE_VPC] = "vpc",
        [PROBE_LUKS] = "luks",
        [PROBE_ISO] = "iso9660",
        [PROBE_BOCHS] = "bochs",
        [PROBE_PARALLELS] = "parallels",
        [PROBE_CLOOP] = "cloop",
        [PROBE_DMG] = "dmg",
};

const char *probe_signature_to_string(ProbeSignature s) {
        if (s < 0 || s >= _PROBE_SIGNATURE_MAX)
                return NULL;
        return probe_signature_table[s];
}

static bool has_bytes(const uint8_t *buf, size_t size, size_t offset, const void *magic, size_t len) {
        return offset <= size && len <= size - offset && memcmp(buf + offset, magic, len) == 0;
}

#define HAS(buf, size, offset, lit) has_bytes(buf, size, offset, lit, sizeof(lit) - 1)

/*
 * A VMDK text descriptor as QEMU's probe sees one: lines starting with '#' are skipped, so are blank
 * lines, then the first other line must be "version=1", "2" or "3", ending in "\n" or "\r\n". QEMU
 * skips only blank lines made of spaces; here any line of spaces, tabs and '\r' is blank, and the
 * whole head is scanned (QEMU looks at 2 KiB): a superset, so that no file QEMU takes for VMDK passes.
 */
static bool is_vmdk_descriptor(const uint8_t *buf, size_t size) {
        size_t p = 0;

        while (p < size) {
                size_t q = p;

                if (buf[p] == '#') {
                        while (p < size && buf[p] != '\n')
                                p++;
                        p++;
                        continue;
                }
                while (q < size && (buf[q] == ' ' || buf[q] == '\t' || buf[q] == '\r'))
                        q++;
                if (q < size && buf[q] == '\n') {
                        p = q + 1;
                        continue;
                }
                if (size - p < 10 || memcmp(buf + p, "version=", 8) != 0 || buf[p + 8] < '1' || buf[p + 8] > '3')
                        return false;
                return buf[p + 9] == '\n' || (buf[p + 9] == '\r' && size - p >= 11 && buf[p + 10] == '\n');
        }
        return false;
}

unsigned probe_signatures(const uint8_t *head, size_t head_size, const uint8_t *tail, size_t tail_size) {
        unsigned mask = 0;

        /* QEMU's qcow probe takes version 1, its qcow2 probe any version >= 2: refuse any QFI magic. */
        if (HAS(head, head_size, 0, "QFI\xfb") && head_size >= 8) {
                if (be32_read(head + 4) == 1)
                        mask |= 1U << PROBE_QCOW1;
                else
                        mask |= 1U << PROBE_QCOW2;
        }
        if (HAS(head, head_size, 0, "QED\0"))
                mask |= 1U << PROBE_QED;
        if (HAS(head, head_size, 0, "KDMV") || HAS(head, head_size, 0, "COWD") ||
            HAS(head, head_size, 0, "# Disk DescriptorFile") || is_vmdk_descriptor(head, head_size))
                mask |= 1U << PROBE_VMDK;
        if (head_size >= 0x44 && le32_read(head + 0x40) == UINT32_C(0xbeda107f))
                mask |= 1U << PROBE_VDI;
        if (HAS(head, head_size, 0, "vhdxfile"))
                mask |= 1U << PROBE_VHDX;
        /* Dynamic VHDs start with a footer copy; fixed ones only end with it (511 bytes in old versions). */
        if (HAS(head, head_size, 0, "conectix") ||
            (tail_size >= 512 && HAS(tail, tail_size, tail_size - 512, "conectix")) ||
            (tail_size >= 511 && HAS(tail, tail_size, tail_size - 511, "conectix")))
                mask |= 1U << PROBE_VPC;
        if (HAS(head, head_size, 0, "LUKS\xba\xbe"))
                mask |= 1U << PROBE_LUKS;
        if (HAS(head, head_size, 0x8001, "CD001") || HAS(head, head_size, 0x8801, "CD001") ||
            HAS(head, head_size, 0x9001, "CD001"))
                mask |= 1U << PROBE_ISO;
        if (HAS(head, head_size, 0, "Bochs Virtual HD Image"))
                mask |= 1U << PROBE_BOCHS;
        if (HAS(head, head_size, 0, "WithoutFreeSpace") || HAS(head, head_size, 0, "WithouFreSpacExt"))
                mask |= 1U << PROBE_PARALLELS;
        if (HAS(head, head_size, 0, "#!/bin/sh\n#V2.0 Format\n") || HAS(head, head_size, 0, "#!/bin/sh\n#V3.0 Format\n") ||
            HAS(head, head_size, 0, "#!/bin/sh\n#V4.0 Format\n"))
                mask |= 1U << PROBE_CLOOP;
        if (tail_size >= 512 && HAS(tail, tail_size, tail_size - 512, "koly"))
                mask |= 1U << PROBE_DMG;

        return mask;
}

static void mask_to_names(unsigned mask, char *out, size_t out_size) {
        size_t pos = 0;

        out[0] = 0;
        for (unsigned s = 0; s < _PROBE_SIGNATURE_MAX; s++) {
                if (!(mask & (1U << s)))
                        continue;
                int n = snprintf(out + pos, out_size - pos, "%s%s", pos ? ", " : "", probe_signature_table[s]);
                if (n < 0 || (size_t) n >= out_size - pos)
                        break;
                pos += (size_t) n;
        }
}

int probe_conflicts(ImageFormat declared, const uint8_t *head, size_t head_size, const uint8_t *tail,
                    size_t tail_size, unsigned *ret_mask, FormatError *err) {
        unsigned mask = probe_signatures(head, head_size, tail, tail_size), conflicts;
        char names[256];

        switch (declared) {
        case IMAGE_FORMAT_RAW:
                /* An ISO 9660 file system is raw data to QEMU; everything else would be parsed by someone. */
                conflicts = mask & ~(1U << PROBE_ISO);
                break;
        case IMAGE_FORMAT_QCOW2:
                if (!(mask & (1U << PROBE_QCOW2))) {
                        if (ret_mask)
                                *ret_mask = mask;
                        return format_error(err, -EMEDIUMTYPE, "content is not qcow2");
                }
                conflicts = mask & ~(1U << PROBE_QCOW2);
                break;
        default:
                return format_error(err, -EINVAL, "unknown declared format");
        }

        if (ret_mask)
                *ret_mask = conflicts;
        if (conflicts) {
                mask_to_names(conflicts, names, sizeof(names));
                return format_error(err, -EBADMSG, "declared %s, but the content also carries the signature of: %s",
                                    image_format_to_string(declared), names);
        }
        return 0;
}

int probe_fd(int fd, ImageFormat declared, unsigned *ret_mask, FormatError *err) {
        _cleanup_free_ uint8_t *head = NULL;
        uint8_t tail[PROBE_TAIL_SIZE];
        size_t head_size, tail_size;
        struct stat st;
        int r;

        if (fstat(fd, &st) < 0)
                return format_error(err, negative_errno(), "cannot stat the image");
        if (!S_ISREG(st.st_mode))
                return format_error(err, -EBADF, "not a regular file");

        head_size = (size_t) MIN((uint64_t) st.st_size, PROBE_HEAD_SIZE);
        tail_size = (size_t) MIN((uint64_t) st.st_size, (uint64_t) PROBE_TAIL_SIZE);
        head = malloc(MAX(head_size, (size_t) 1));
        if (!head)
                return format_error(err, -ENOMEM, "out of memory");
        r = format_pread_full(fd, head, head_size, 0);
        if (r >= 0)
                r = format_pread_full(fd, tail, tail_size, (uint64_t) st.st_size - tail_size);
        if (r < 0)
                return format_error(err, r, "cannot read the image");

        return probe_conflicts(declared, head, head_size, tail, tail_size, ret_mask, err);
}
