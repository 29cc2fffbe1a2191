/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Fuzz target: what is read of an untrusted image before any table is walked — the format probe, the
 * qcow2 header with its extensions and backing name, parsed from a buffer and read from a file (first
 * 4 KiB, then the rest of cluster 0 when needed; both must agree exactly), and Inspect's description
 * of the image without the walk. fuzz-qcow2-walk covers the tables; fuzz-qcow2 both together.
 */

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "describe.h"
#include "probe.h"
#include "qcow2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const Qcow2Limits limits = { .max_virtual_size = UINT64_C(1) << 44, .max_host_clusters = UINT64_C(1) << 16 };
        const size_t tail = MIN(size, (size_t) PROBE_TAIL_SIZE);
        FormatError err = {}, err2 = {};
        Qcow2Header h, hr;
        unsigned mask;
        int a, b;

        (void) probe_signatures(data, MIN(size, (size_t) PROBE_HEAD_SIZE), data + size - tail, tail);
        (void) probe_conflicts(IMAGE_FORMAT_RAW, data, size, data + size - tail, tail, &mask, NULL);
        (void) probe_conflicts(IMAGE_FORMAT_QCOW2, data, size, data + size - tail, tail, &mask, NULL);

        if (memfd < 0) {
                memfd = memfd_create("fuzz-qcow2-header", MFD_CLOEXEC);
                if (memfd < 0)
                        abort();
        }
        if (ftruncate(memfd, 0) < 0 || format_pwrite_full(memfd, data, size, 0) < 0)
                abort();

        a = qcow2_header_parse(data, MIN(size, (size_t) QCOW2_HEADER_READ_SIZE), size, &limits, &h, &err);
        b = qcow2_header_read(memfd, &limits, &hr, &err2);
        if (a != b || (a >= 0 && memcmp(&h, &hr, sizeof(h)) != 0))
                abort();
        if (a < 0 && (err.code != a || !memchr(err.reason, 0, sizeof(err.reason))))
                abort();

        /* Inspect without the walk, as both formats: never fails but on I/O errors. */
        for (ImageFormat f = 0; f < _IMAGE_FORMAT_MAX; f++) {
                const DescribeOptions opts = { .check = false, .limits = limits };
                struct json_object *o = NULL;

                if (image_describe(memfd, f, &opts, &o) < 0 || !o)
                        abort();
                (void) json_object_to_json_string(o);
                json_object_put(o);
        }
        return 0;
}
