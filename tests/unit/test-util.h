/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Minimal test helpers: every check prints where it failed and makes the test exit non-zero. */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures;

#define CHECK(expr)                                                                          \
        do {                                                                                 \
                if (!(expr)) {                                                               \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr); \
                        test_failures++;                                                     \
                }                                                                            \
        } while (0)

#define CHECK_EQ_INT(a, b)                                                                   \
        do {                                                                                 \
                long long _a = (long long) (a), _b = (long long) (b);                        \
                if (_a != _b) {                                                              \
                        fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, #a, _a, #b, _b); \
                        test_failures++;                                                     \
                }                                                                            \
        } while (0)

#define CHECK_CONTAINS(haystack, needle)                                                     \
        do {                                                                                 \
                const char *_h = (haystack), *_n = (needle);                                 \
                if (!_h || !strstr(_h, _n)) {                                                \
                        fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, _h ? _h : "(null)", _n); \
                        test_failures++;                                                     \
                }                                                                            \
        } while (0)

#define TEST_MAIN_END()                                                                      \
        do {                                                                                 \
                if (test_failures) {                                                         \
                        fprintf(stderr, "%d check(s) failed\n", test_failures);              \
                        return EXIT_FAILURE;                                                 \
                }                                                                            \
                return EXIT_SUCCESS;                                                         \
        } while (0)
