/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* vdiskctl's helpers: size parsing and formatting, uids, job paths, tables. */

#include <errno.h>
#include <inttypes.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                const char *s = format_bytes(buf, sizeof(buf), cases[i].bytes);

                if (strcmp(s, cases[i].text) != 0) {
                        fprintf(stderr, "format_bytes(%" PRIu64 ") = \"%s\", expected \"%s\"\n", cases[i].bytes, s,
                                cases[i].text);
                        failures++;
                }
        }
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

int main(void) {
        /* Width of non-ASCII text needs a UTF-8 locale; C.UTF-8 exists on every glibc ≥ 2.35. */
        if (!setlocale(LC_ALL, "C.UTF-8")) {
                fprintf(stderr, "C.UTF-8 locale not available\n");
                return 77;
        }

        test_parse_size();
        test_format_bytes();
        test_parse_uid();
        test_job_paths();
        test_json_mode();
        test_table();
        test_width();

        if (failures > 0) {
                fprintf(stderr, "%u checks failed\n", failures);
                return EXIT_FAILURE;
        }
        printf("all checks passed\n");
        return EXIT_SUCCESS;
}
