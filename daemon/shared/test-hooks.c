/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Compiled only with -Dtest_hooks=true (daemon/meson.build): the one place that reads the test
 * hooks' environment variables. secure_getenv(): never from a set-uid or otherwise secure
 * execution. */

#include <stdlib.h>

#include "test-hooks.h"
#include "util.h"

#if HAVE_VALGRIND_H
#include <valgrind/valgrind.h>
#endif

#if !VDISK_TEST_HOOKS
#error "test-hooks.c is built only with -Dtest_hooks=true"
#endif

bool test_hook_crash_point(const char *point) {
        if (!streq_ptr(secure_getenv("VDISKD_CRASH_AT"), point))
                return false;
#if HAVE_VALGRIND_H
        /* Under memcheck a SIGKILL sent to oneself still ends with a leak summary, taken while the
         * dying thread's stack is no longer scanned: what only the stack held shows as lost. The
         * mark in valgrind's log lets valgrind-test.py tell such a daemon from one that exits. */
        VALGRIND_PRINTF("vdiskd: crash point %s reached: killing myself\n", point);
#endif
        return true;
}

uint64_t test_hook_job_linger_usec(uint64_t def) {
        const char *e = secure_getenv("VDISKD_TEST_JOB_LINGER_SEC");
        return e ? strtoull(e, NULL, 10) * UINT64_C(1000000) : def;
}

uint64_t test_hook_step_delay_usec(void) {
        static int64_t cached = -1;

        if (cached < 0) {
                const char *e = secure_getenv("VDISKD_TEST_STEP_DELAY_MS");
                cached = e ? (int64_t) strtoull(e, NULL, 10) * 1000 : 0;
        }
        return (uint64_t) cached;
}

uint64_t test_hook_step_bytes(uint64_t def) {
        const char *e = secure_getenv("VDISKD_TEST_STEP_BYTES");
        return e && strtoull(e, NULL, 10) >= 512 ? strtoull(e, NULL, 10) : def;
}

uint64_t test_hook_sweep_usec(uint64_t def) {
        const char *e = secure_getenv("VDISKD_TEST_SWEEP_USEC");
        return e && strtoull(e, NULL, 10) > 0 ? strtoull(e, NULL, 10) : def;
}
