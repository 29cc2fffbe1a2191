/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vdiskctl's helpers: size parsing and formatting, uids, job paths, tables, the progress line. */

#include <errno.h>
#include <inttypes.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "escape.h"
#include "job.h"
#include "output.h"
#include "parse.h"

static unsigned failures = 0;

#define CHECK(expr)                                                                      \
        do {                                                                             \
                if (!(expr)) {                                                           \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                                #expr);                                                  \
                        failures++;                                                      \
                }                                                                        \
        } while (0)

static void check_size(const char *s, int expect_r, uint64_t expect) {
        uint64_t v = UINT64_C(0xdeadbeef);
        int r = parse_size(s, &v);

        if (r != expect_r || (r == 0 && v != expect)) {
                fprintf(stderr, "parse_size(\"%s\") = %d, %" PRIu64 "; expected %d, %" PRIu64 "\n", s, r, v,
                        expect_r, expect);
                failures++;
        }
        /* ret is untouched on failure */
        if (r < 0 && v != UINT64_C(0xdeadbeef)) {
                fprintf(stderr, "parse_size(\"%s\") changed its output on failure\n", s);
                failures++;
        }
}

static void test_parse_size(void) {
        check_size("0", 0, 0);
        check_size("512", 0, 512);
        check_size("512B", 0, 512);
        check_size("1K", 0, 1024);
        check_size("1k", 0, 1024);
        check_size("64K", 0, 65536);
        check_size("1M", 0, UINT64_C(1) << 20);
        check_size("20G", 0, UINT64_C(20) << 30);
        check_size("20GiB", 0, UINT64_C(20) << 30);
        check_size("20GB", 0, UINT64_C(20) << 30);
        check_size("2T", 0, UINT64_C(2) << 40);
        check_size("1.5G", 0, UINT64_C(3) << 29);
        check_size("0.5K", 0, 512);
        check_size("1.000000G", 0, UINT64_C(1) << 30);
        check_size("16777215T", 0, UINT64_C(16777215) << 40);
        check_size("18446744073709551615", 0, UINT64_MAX);

        check_size("", -EINVAL, 0);
        check_size("G", -EINVAL, 0);
        check_size("-1", -EINVAL, 0);
        check_size("+1", -EINVAL, 0);
        check_size(" 1", -EINVAL, 0);
        check_size("1 ", -EINVAL, 0);
        check_size("1X", -EINVAL, 0);
        check_size("1GG", -EINVAL, 0);
        check_size("1Gi", -EINVAL, 0);
        check_size("1.", -EINVAL, 0);
        check_size(".5G", -EINVAL, 0);
        check_size("1.1G", -EINVAL, 0);     /* not a whole number of bytes */
        check_size("1.5", -EINVAL, 0);      /* a fraction of a byte */
        check_size("1.0000001G", -EINVAL, 0); /* too many fraction digits */
        check_size("16777216T", -ERANGE, 0);
        check_size("18446744073709551616", -ERANGE, 0);
        check_size("99999999999999999999999", -ERANGE, 0);
}

static void check_text(const char *function, uint64_t arg, const char *got, const char *want) {
        if (strcmp(got, want) != 0) {
                fprintf(stderr, "%s(%" PRIu64 ") = \"%s\", expected \"%s\"\n", function, arg, got, want);
                failures++;
        }
}

static void test_format_bytes(void) {
        static const struct {
                uint64_t bytes;
                const char *text;
        } cases[] = {
                { 0, "0B" },
                { 512, "512B" },
                { 1023, "1023B" },
                { 1024, "1.0K" },
                { 1536, "1.5K" },
                { UINT64_C(1) << 30, "1.0G" },
                { UINT64_C(20) << 30, "20.0G" },
                { (UINT64_C(1) << 30) - 1, "1023.9M" },
                { 1288490188, "1.1G" },
                { UINT64_C(3) << 39, "1.5T" },
                { UINT64_MAX, "15.9E" },
        };
        char buf[FORMAT_BYTES_MAX];

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                check_text("format_bytes", cases[i].bytes, format_bytes(buf, sizeof(buf), cases[i].bytes),
                           cases[i].text);
}

static void test_format_duration(void) {
        static const struct {
                uint64_t usec;
                const char *text;
        } cases[] = {
                { 0, "0:00" },
                { 1, "0:01" }, /* rounded up: time left is never shown as none */
                { 1000000, "0:01" },
                { 1000001, "0:02" },
                { 59000000, "0:59" },
                { 60000000, "1:00" },
                { 3599000000, "59:59" },
                { 3600000000, "1:00:00" },
                { 3723000000, "1:02:03" },
                { UINT64_C(360000) * 1000000, "100:00:00" },
                { UINT64_MAX, "5124095576:01:50" },
        };
        char buf[FORMAT_DURATION_MAX];

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                check_text("format_duration", cases[i].usec, format_duration(buf, sizeof(buf), cases[i].usec),
                           cases[i].text);
}

#define SEC UINT64_C(1000000)
#define MiB (UINT64_C(1) << 20)

static void test_job_rate(void) {
        JobRate r = {};
        uint64_t rate = 7, left = 7;

        /* Nothing before two samples with time and progress between them. */
        CHECK(!job_rate_get(&r, 100 * MiB, &rate, &left));
        job_rate_add(&r, 10 * SEC, 40 * MiB); /* attached to a job that had done 40M already */
        CHECK(!job_rate_get(&r, 100 * MiB, &rate, &left));
        job_rate_add(&r, 10 * SEC, 41 * MiB); /* no time between them */
        CHECK(!job_rate_get(&r, 100 * MiB, &rate, &left));
        job_rate_add(&r, 11 * SEC, 40 * MiB); /* went back: starts afresh */
        CHECK(!job_rate_get(&r, 100 * MiB, &rate, &left));
        job_rate_add(&r, 12 * SEC, 40 * MiB); /* time but no progress */
        CHECK(!job_rate_get(&r, 100 * MiB, &rate, &left));
        CHECK(rate == 7 && left == 7);

        /* 10M/s from the first sample on: the 40M done before do not count. */
        job_rate_add(&r, 13 * SEC, 60 * MiB);
        CHECK(job_rate_get(&r, 100 * MiB, &rate, &left));
        CHECK(rate == 10 * MiB);
        CHECK(left == 4 * SEC);

        /* Progress, but too little time between the samples (read in a burst) for a rate. */
        r = (JobRate) {};
        job_rate_add(&r, 5 * SEC, 0);
        job_rate_add(&r, 5 * SEC + JOB_RATE_MIN_USEC - 1, 50 * MiB);
        CHECK(!job_rate_get(&r, 100 * MiB, &rate, &left));
        job_rate_add(&r, 5 * SEC + JOB_RATE_MIN_USEC, 50 * MiB);
        CHECK(job_rate_get(&r, 100 * MiB, &rate, &left));
        CHECK(rate == 50 * MiB && left == SEC);

        /* A moving window: after a slow start the rate follows the recent samples. */
        r = (JobRate) {};
        job_rate_add(&r, 0, 0);
        job_rate_add(&r, 10 * SEC, MiB); /* 0.1M/s */
        for (uint64_t t = 1; t <= 2 * JOB_RATE_SAMPLES; t++)
                job_rate_add(&r, 10 * SEC + t * JOB_RATE_INTERVAL_USEC, MiB + t * 50 * MiB);
        CHECK(job_rate_get(&r, 0, &rate, &left));
        CHECK(rate == 100 * MiB);
        CHECK(left == UINT64_MAX); /* no total: no time left */

        /* Done (or past the total): nothing left; very slow: no time shown. */
        CHECK(job_rate_get(&r, MiB, &rate, &left) && left == 0);
        r = (JobRate) {};
        job_rate_add(&r, 0, 0);
        job_rate_add(&r, 1000 * SEC, 1);
        CHECK(job_rate_get(&r, UINT64_C(1) << 40, &rate, &left));
        CHECK(rate == 1 && left == UINT64_MAX);
}

static void check_line(const char *label, const JobProgress *p, size_t columns, const char *want) {
        char *line = NULL;

        if (job_progress_format(label, p, columns, &line) < 0) {
                fprintf(stderr, "job_progress_format(\"%s\", %zu) failed\n", label, columns);
                failures++;
                return;
        }
        if (strcmp(line, want) != 0 || utf8_width(line) >= MAX(columns, (size_t) 1)) {
                fprintf(stderr, "job_progress_format(\"%s\", %zu) = \"%s\", expected \"%s\"\n", label, columns, line,
                        want);
                failures++;
        }
        free(line);
}

static void test_progress_line(void) {
        JobProgress p = {
                .fraction = 0.45,
                .bytes_done = 45 * MiB,
                .bytes_total = 100 * MiB,
                .rate = 10 * MiB,
                .left_usec = 5500000,
        };
        JobProgress unknown = {
                .fraction = 0.45,
                .bytes_done = 45 * MiB,
                .bytes_total = 100 * MiB,
                .left_usec = UINT64_MAX,
        };
        JobProgress nan = {
                .fraction = 0.0 / 0.0,
                .bytes_done = 1 * MiB,
                .bytes_total = 4 * MiB,
                .left_usec = UINT64_MAX,
        };

        /* Everything; the bar stops at 50 columns. */
        check_line("Flattening vm/disk", &p, 80,
                   "Flattening vm/disk [#########-------------]  45% 45.0M/100.0M 10.0M/s 0:06 left");
        check_line("Flattening vm/disk", &p, 200,
                   "Flattening vm/disk [######################----------------------------]  45% 45.0M/100.0M 10.0M/s 0:06 left");
        /* Narrower: the bar shrinks to 10, then the rate goes, then the time left, then the bar, the bytes, and
         * the label is cut. */
        check_line("Flattening vm/disk", &p, 68, "Flattening vm/disk [####------]  45% 45.0M/100.0M 10.0M/s 0:06 left");
        check_line("Flattening vm/disk", &p, 67, "Flattening vm/disk [#######----------]  45% 45.0M/100.0M 0:06 left");
        check_line("Flattening vm/disk", &p, 60, "Flattening vm/disk [####------]  45% 45.0M/100.0M 0:06 left");
        check_line("Flattening vm/disk", &p, 59, "Flattening vm/disk [########-----------]  45% 45.0M/100.0M");
        check_line("Flattening vm/disk", &p, 50, "Flattening vm/disk [####------]  45% 45.0M/100.0M");
        check_line("Flattening vm/disk", &p, 49, "Flattening vm/disk  45% 45.0M/100.0M");
        check_line("Flattening vm/disk", &p, 37, "Flattening vm/disk  45% 45.0M/100.0M");
        check_line("Flattening vm/disk", &p, 36, "Flattening vm/disk  45%");
        check_line("Flattening vm/disk", &p, 24, "Flattening vm/disk  45%");
        check_line("Flattening vm/disk", &p, 23, "Flattening vm/...  45%");
        check_line("Flattening vm/disk", &p, 10, "F...  45%");
        check_line("Flattening vm/disk", &p, 9, "  45%");
        check_line("Flattening vm/disk", &p, 6, "  45%");
        check_line("Flattening vm/disk", &p, 5, "");
        check_line("Flattening vm/disk", &p, 0, "");
        /* Wide characters count as two columns, and are never cut in half. */
        check_line("Gl\u00e4tten \u4eee\u60f3/disk", &p, 22, "Gl\u00e4tten \u4eee\u60f3/...  45%");
        check_line("Gl\u00e4tten \u4eee\u60f3/disk", &p, 21, "Gl\u00e4tten \u4eee\u60f3...  45%");
        check_line("Gl\u00e4tten \u4eee\u60f3/disk", &p, 20, "Gl\u00e4tten \u4eee...  45%");
        /* No rate yet: the bar takes the room. */
        check_line("Flattening vm/disk", &unknown, 80,
                   "Flattening vm/disk [##################----------------------]  45% 45.0M/100.0M");
        /* The fraction from the bytes when Progress is missing. */
        check_line("x", &nan, 30, "x [##--------]  25% 1.0M/4.0M");
}

static void test_parse_uid(void) {
        uid_t u = 12345;

        CHECK(parse_uid("0", &u) == 0 && u == 0);
        CHECK(parse_uid("1000", &u) == 0 && u == 1000);
        CHECK(parse_uid("root", &u) == 0 && u == 0);
        CHECK(parse_uid("4294967295", &u) == -ERANGE);
        CHECK(parse_uid("65535", &u) == -ERANGE);
        CHECK(parse_uid("4294967296", &u) == -ERANGE);
        CHECK(parse_uid("12a", &u) == -EINVAL);
        CHECK(parse_uid("", &u) == -EINVAL);
        CHECK(parse_uid("no-such-user-for-vdisk-tests", &u) < 0);
}

static void test_job_paths(void) {
        char *p = NULL;

        CHECK(object_path_is_valid("/"));
        CHECK(object_path_is_valid("/org/vdisk1/job/5"));
        CHECK(!object_path_is_valid(""));
        CHECK(!object_path_is_valid("org/vdisk1"));
        CHECK(!object_path_is_valid("/org//vdisk1"));
        CHECK(!object_path_is_valid("/org/vdisk1/"));
        CHECK(!object_path_is_valid("/org/vdisk-1"));

        CHECK(job_path_from_string("5", &p) == 0 && p && strcmp(p, "/org/vdisk1/job/5") == 0);
        free(p);
        p = NULL;
        CHECK(job_path_from_string("/org/vdisk1/job/ab_12", &p) == 0 && p &&
              strcmp(p, "/org/vdisk1/job/ab_12") == 0);
        free(p);
        p = NULL;
        CHECK(job_path_from_string("a/b", &p) == -EINVAL);
        CHECK(job_path_from_string("5-1", &p) == -EINVAL);
        CHECK(job_path_from_string("", &p) == -EINVAL);
        CHECK(job_path_from_string("/org/vdisk1/job/", &p) == -EINVAL);
        CHECK(p == NULL);

        CHECK(strcmp(object_path_last("/org/vdisk1/job/42"), "42") == 0);
        CHECK(strcmp(object_path_last("42"), "42") == 0);
}

static void test_json_mode(void) {
        CHECK(json_mode_from_string("pretty") == JSON_PRETTY);
        CHECK(json_mode_from_string("short") == JSON_SHORT);
        CHECK(json_mode_from_string("off") == JSON_OFF);
        CHECK(json_mode_from_string("fancy") == _JSON_MODE_INVALID);
        CHECK(json_mode_from_string(NULL) == _JSON_MODE_INVALID);
}

static void test_table(void) {
        Table *t;
        char *buf = NULL;
        size_t size = 0;
        FILE *f;

        t = table_new("NAME", "SIZE", "GRÖSSE", NULL);
        CHECK(t);
        if (!t)
                return;
        table_set_align_right(t, 1);
        CHECK(table_add_cell(t, "debian") == 0);
        CHECK(table_add_cell(t, "20.0G") == 0);
        CHECK(table_add_cell(t, "x") == 0);
        CHECK(table_add_cell(t, "a") == 0);
        CHECK(table_add_cellf(t, "%d.%dK", 4, 0) == 0);
        CHECK(table_add_cell(t, "ü") == 0);
        CHECK(table_get_rows(t) == 2);

        f = open_memstream(&buf, &size);
        CHECK(f);
        if (f) {
                CHECK(table_print(t, f, true) == 0);
                fclose(f);
                /* "GRÖSSE" is 6 columns wide although 7 bytes long; no trailing blanks. */
                if (strcmp(buf, "NAME     SIZE  GRÖSSE\n"
                                "debian  20.0G  x\n"
                                "a        4.0K  ü\n") != 0) {
                        fprintf(stderr, "unexpected table:\n%s", buf);
                        failures++;
                }
                free(buf);
        }

        buf = NULL;
        f = open_memstream(&buf, &size);
        CHECK(f);
        if (f) {
                CHECK(table_print(t, f, false) == 0);
                fclose(f);
                if (strcmp(buf, "debian  20.0G  x\n"
                                "a        4.0K  ü\n") != 0) {
                        fprintf(stderr, "unexpected table without header:\n%s", buf);
                        failures++;
                }
                free(buf);
        }

        /* an incomplete row is refused */
        CHECK(table_add_cell(t, "half") == 0);
        f = fopen("/dev/null", "we");
        if (f) {
                CHECK(table_print(t, f, true) == -EINVAL);
                fclose(f);
        }

        table_free(t);
}

/* Colour sequences take no columns, so coloured cells stay aligned (the tree of "vdiskctl chain"). */
static void test_width(void) {
        Table *t;
        char *buf = NULL;
        size_t size = 0;
        FILE *f;

        CHECK(utf8_width("abc") == 3);
        CHECK(utf8_width("\u2514\u2500 x") == 4);
        CHECK(utf8_width("\033[90m\u2514\u2500 \033[0mx") == 4);
        CHECK(utf8_width("\033[1mLAYER\033[0m") == 5);
        CHECK(utf8_width("\033[") == 1); /* not a complete sequence: "[" is text, ESC takes no column */
        CHECK(utf8_width("") == 0);
        /* ASCII is counted without decoding: control characters take no column, and text around a
         * double-width character is still counted. */
        CHECK(utf8_width("a\tb\x7f\x01") == 2);
        CHECK(utf8_width("x\u6f22y") == 4);
        CHECK(utf8_width("\u6f22\033[1mab") == 4);
        CHECK(locale_is_utf8());
        CHECK(strcmp(tree_branch(), "\u2514\u2500 ") == 0);
        CHECK(utf8_width(tree_branch()) == TREE_INDENT_WIDTH);

        t = table_new("LAYER", "FORMAT", NULL);
        CHECK(t);
        if (!t)
                return;
        CHECK(table_add_cell(t, "top") == 0);
        CHECK(table_add_cell(t, "qcow2") == 0);
        CHECK(table_add_cell(t, "\033[90m\u2514\u2500 \033[0mbase") == 0);
        CHECK(table_add_cell(t, "raw") == 0);
        f = open_memstream(&buf, &size);
        CHECK(f);
        if (f) {
                CHECK(table_print(t, f, true) == 0);
                fclose(f);
                if (strcmp(buf, "LAYER    FORMAT\n"
                                "top      qcow2\n"
                                "\033[90m\u2514\u2500 \033[0mbase  raw\n") != 0) {
                        fprintf(stderr, "unexpected table with colours:\n%s", buf);
                        failures++;
                }
                free(buf);
        }
        table_free(t);

        CHECK(setlocale(LC_ALL, "C"));
        CHECK(!locale_is_utf8());
        CHECK(strcmp(tree_branch(), "`- ") == 0);
        CHECK(utf8_width(tree_branch()) == TREE_INDENT_WIDTH);
        CHECK(setlocale(LC_ALL, "C.UTF-8"));
}

static void check_escape(const char *s, size_t size, const char *expect) {
        char buf[64];

        if (strcmp(escape_text(s, buf, size), expect) != 0 || strlen(buf) > size - 1) {
                fprintf(stderr, "escape_text(\"%s\", %zu) = \"%s\"; expected \"%s\"\n", s, size, buf, expect);
                failures++;
        }
}

static void test_escape(void) {
        char big[ESCAPE_TEXT_MAX * 2];

        check_escape("plain name-1.qcow2", 64, "plain name-1.qcow2");
        check_escape("", 64, "");
        check_escape(NULL, 64, "(null)");
        check_escape("a\x1b[2Jb", 64, "a\\x1b[2Jb");
        check_escape("one\ntwo\r\t", 64, "one\\x0atwo\\x0d\\x09");
        check_escape("del\x7f", 64, "del\\x7f");
        check_escape("back\\slash", 64, "back\\\\slash");
        check_escape("caf\xc3\xa9 \xe2\x82\xac", 64, "caf\xc3\xa9 \xe2\x82\xac"); /* é € kept */
        check_escape("c1\xc2\x9b" "2J", 64, "c1\\xc2\\x9b2J");                     /* CSI as C1 */
        check_escape("ls\xe2\x80\xa8x", 64, "ls\\xe2\\x80\\xa8x");                 /* U+2028 */
        check_escape("bad\xff\xc3", 64, "bad\\xff\\xc3");
        check_escape("over\xc0\xaf", 64, "over\\xc0\\xaf");                        /* overlong '/' */
        check_escape("sur\xed\xa0\x80", 64, "sur\\xed\\xa0\\x80");                 /* surrogate */
        /* Cut at a character boundary with "...": never inside an escape or a UTF-8 sequence. */
        check_escape("abcdefghij", 11, "abcdefghij");
        check_escape("abcdefghijk", 11, "abcdefg...");
        check_escape("abcdef\x1b" "ghijk", 11, "abcdef...");
        check_escape("abcde\xc3\xa9zzzz", 10, "abcde...");
        check_escape("abcdefgh", 3, "ab");
        check_escape("abc", 1, "");

        memset(big, '\n', sizeof(big) - 1);
        big[sizeof(big) - 1] = 0;
        CHECK(strlen(ESCAPE_TEXT(big)) <= ESCAPE_TEXT_MAX - 1);
        CHECK(strncmp(ESCAPE_TEXT(big), "\\x0a\\x0a", 8) == 0);
        CHECK(strcmp(ESCAPE_TEXT(big) + strlen(ESCAPE_TEXT(big)) - 3, "...") == 0);
}

int main(void) {
        /* Width of non-ASCII text needs a UTF-8 locale; C.UTF-8 exists on every glibc ≥ 2.35. */
        if (!setlocale(LC_ALL, "C.UTF-8")) {
                fprintf(stderr, "C.UTF-8 locale not available\n");
                return 77;
        }

        test_parse_size();
        test_format_bytes();
        test_format_duration();
        test_job_rate();
        test_progress_line();
        test_parse_uid();
        test_job_paths();
        test_json_mode();
        test_table();
        test_width();
        test_escape();

        if (failures > 0) {
                fprintf(stderr, "%u checks failed\n", failures);
                return EXIT_FAILURE;
        }
        printf("all checks passed\n");
        return EXIT_SUCCESS;
}
