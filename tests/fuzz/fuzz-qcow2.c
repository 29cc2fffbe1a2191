/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Fuzz target: the whole read path for an untrusted image — format probe, header parse and, when the
 * header is accepted, the full metadata walk and the allocation map, reading from a memfd that holds
 * the input. Built as a libFuzzer target with -Dfuzzing=true (clang), and always as a seed runner.
 */

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "probe.h"
#include "qcow2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        /* Small limits keep each run fast; they are exercised as limits too. */
        const Qcow2Limits limits = { .max_virtual_size = UINT64_C(1) << 44, .max_host_clusters = UINT64_C(1) << 16 };
        FormatError err = {};
        Qcow2Header h;
        unsigned mask;

        (void) probe_conflicts(IMAGE_FORMAT_RAW, data, size, data, size, &mask, NULL);
        (void) probe_conflicts(IMAGE_FORMAT_QCOW2, data, size, data, size, &mask, NULL);

        if (memfd < 0) {
                memfd = memfd_create("fuzz-qcow2", MFD_CLOEXEC);
                if (memfd < 0)
                        abort();
        }
        if (ftruncate(memfd, 0) < 0 || format_pwrite_full(memfd, data, size, 0) < 0)
                abort();

        /* Reading from a file (first 4 KiB, then the rest of cluster 0 if needed) must agree exactly with
         * parsing the whole buffer. */
        {
                Qcow2Header hr;
                FormatError err2 = {};
                int a = qcow2_header_parse(data, size, size, &limits, &h, &err);
                int b = qcow2_header_read(memfd, &limits, &hr, &err2);

                if (a != b)
                        abort();
                if (a < 0)
                        return 0;
                if (memcmp(&h, &hr, sizeof(h)) != 0)
                        abort();
        }

        Qcow2CheckResult res = {};
        if (qcow2_check(memfd, &h, &limits, &res, &err) >= 0)
                qcow2_check_result_done(&res);

        ExtentMap m = {};
        if (qcow2_map(memfd, &h, &m, &err) >= 0) {
                /* The map must tile [0, size) exactly. */
                uint64_t pos = 0;
                for (size_t i = 0; i < m.n_extents; i++) {
                        if (m.extents[i].start != pos || m.extents[i].length == 0)
                                abort();
                        pos += m.extents[i].length;
                }
                if (pos != h.size)
                        abort();
                extent_map_done(&m);
        }
        return 0;
}
