/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Test hooks: environment variables that make vdiskd kill itself or slow down on purpose, for the
 * crash, progress and limit tests (vdiskd(8) ENVIRONMENT). They exist only in a build configured
 * with -Dtest_hooks=true (VDISK_TEST_HOOKS in config.h); in any other build these functions return
 * the production behaviour, read no environment, and the variables' names are not in the binary
 * (the test no-test-hooks checks that).
 */

#include <stdbool.h>
#include <stdint.h>

#include "config.h"

#if VDISK_TEST_HOOKS

/* VDISKD_CRASH_AT=<point>: true if it names `point`. */
bool test_hook_crash_point(const char *point);
/* VDISKD_TEST_JOB_LINGER_SEC=SEC: how long a finished job stays on the bus; else `def`. */
uint64_t test_hook_job_linger_usec(uint64_t def);
/* VDISKD_TEST_STEP_DELAY_MS=MS: a pause between job steps (read once); else 0. */
uint64_t test_hook_step_delay_usec(void);
/* VDISKD_TEST_STEP_BYTES=BYTES (at least 512): bytes a rebase, flatten or commit copies per step,
 * and the speed (bytes per second) of a live one's job in an export's helper; else `def`. */
uint64_t test_hook_step_bytes(uint64_t def);
/* VDISKD_TEST_SWEEP_USEC=USEC: the period of the orphan sweep in cluster mode; else `def`. */
uint64_t test_hook_sweep_usec(uint64_t def);

#else

static inline bool test_hook_crash_point(const char *point) {
        return false;
}
static inline uint64_t test_hook_job_linger_usec(uint64_t def) {
        return def;
}
static inline uint64_t test_hook_step_delay_usec(void) {
        return 0;
}
static inline uint64_t test_hook_step_bytes(uint64_t def) {
        return def;
}
static inline uint64_t test_hook_sweep_usec(uint64_t def) {
        return def;
}

#endif
