/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Fuzz target: the metadata walk of an image whose header is accepted — L1/L2 tables, refcount table
 * and blocks, snapshot table and snapshot L1s, bitmap directory (qcow2_check), and the allocation
 * map (qcow2_map), reading from a memfd that holds the input. Inputs with a refused header end early;
 * fuzz-qcow2-header covers those.
 */

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "qcow2.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        /* Small limits keep each run fast; they are exercised as limits too. */
        const Qcow2Limits limits = { .max_virtual_size = UINT64_C(1) << 44, .max_host_clusters = UINT64_C(1) << 16 };
        FormatError err = {};
        Qcow2CheckResult res = {};
        ExtentMap m = {};
        Qcow2Header h;

        if (qcow2_header_parse(data, MIN(size, (size_t) QCOW2_HEADER_READ_SIZE), size, &limits, &h, &err) < 0)
                return 0;

        if (memfd < 0) {
                memfd = memfd_create("fuzz-qcow2-walk", MFD_CLOEXEC);
                if (memfd < 0)
                        abort();
        }
        if (ftruncate(memfd, 0) < 0 || format_pwrite_full(memfd, data, size, 0) < 0)
                abort();

        if (qcow2_check(memfd, &h, &limits, &res, &err) >= 0) {
                if (res.n_problems > QCOW2_CHECK_MAX_PROBLEMS || res.n_problems > res.corruptions + res.leaks)
                        abort();
                for (uint64_t i = 0; i < res.n_problems; i++)
                        if (!qcow2_problem_kind_to_string(res.problems[i].kind) ||
                            !memchr(res.problems[i].text, 0, sizeof(res.problems[i].text)))
                                abort();
                qcow2_check_result_done(&res);
        }

        if (qcow2_map(memfd, &h, &m, &err) >= 0) {
                /* The map must tile [0, size) exactly, with known states. */
                uint64_t pos = 0;
                for (size_t i = 0; i < m.n_extents; i++) {
                        if (m.extents[i].start != pos || m.extents[i].length == 0 ||
                            !extent_state_to_string(m.extents[i].state))
                                abort();
                        pos += m.extents[i].length;
                }
                if (pos != h.size)
                        abort();
                extent_map_done(&m);
        }
        return 0;
}
