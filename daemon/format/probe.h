/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Format signatures, used only to refuse: vdisk never decides a format from content. Given the
 * declared format and the bytes of a file, probe_conflicts() tells which *other* known formats the
 * content also looks like ("declared raw but it is qcow2", polyglots such as ISO + qcow2).
 */

#include <stddef.h>
#include <stdint.h>

#include "format.h"

typedef enum ProbeSignature {
        PROBE_QCOW2,
        PROBE_QCOW1,
        PROBE_QED,
        PROBE_VMDK,
        PROBE_VDI,
        PROBE_VHDX,
        PROBE_VPC,
        PROBE_LUKS,
        PROBE_ISO,
        PROBE_BOCHS,
        PROBE_PARALLELS,
        PROBE_CLOOP,
        PROBE_DMG,
        _PROBE_SIGNATURE_MAX,
} ProbeSignature;

const char *probe_signature_to_string(ProbeSignature s) _pure_;

/* Bytes of the file's start and end that the probe looks at. */
#define PROBE_HEAD_SIZE (UINT64_C(64) << 10)
#define PROBE_TAIL_SIZE 512U

/* Bit mask (1 << ProbeSignature) of every signature found in head (file start) and tail (last bytes). */
unsigned probe_signatures(const uint8_t *head, size_t head_size, const uint8_t *tail, size_t tail_size);

/*
 * Signatures that conflict with the declared format: for raw, every signature but ISO 9660 (which
 * is raw data to QEMU); for qcow2, every signature but qcow2 itself. Returns 0 if the content
 * matches exactly the declared format; -EMEDIUMTYPE if it does not match the declared format at all
 * (declared qcow2, no qcow2 magic and version; ret_mask then holds every signature found); -EBADMSG
 * if it also matches another format (ret_mask holds those). err names formats, never quotes content.
 */
int probe_conflicts(ImageFormat declared, const uint8_t *head, size_t head_size, const uint8_t *tail,
                    size_t tail_size, unsigned *ret_mask, FormatError *err);

/* Reads head and tail of `fd` and runs probe_conflicts(). */
int probe_fd(int fd, ImageFormat declared, unsigned *ret_mask, FormatError *err);
