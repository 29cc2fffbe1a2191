/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Compiled only with -Dtest_hooks=true (daemon/meson.build): the one place that reads the test
 * hooks' environment variables. secure_getenv(): never from a set-uid or otherwise secure
 * execution. */

#include <stdlib.h>

#include "test-hooks.h"
#include "util.h"

#if !VDISK_TEST_HOOKS
#error "test-hooks.c is built only with -Dtest_hooks=true"
#endif

bool test_hook_crash_point(const char *point) {
        return streq_ptr(secure_getenv("VDISKD_CRASH_AT"), point);
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
