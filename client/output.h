/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <json-c/json.h>

#include "macro.h"

typedef enum JsonMode {
        JSON_OFF,
        JSON_PRETTY,
        JSON_SHORT,
        _JSON_MODE_MAX,
        _JSON_MODE_INVALID = -EINVAL,
} JsonMode;

JsonMode json_mode_from_string(const char *s) _pure_;

/* "1.0G": binary units, one (truncated) decimal; plain bytes below 1 KiB. */
#define FORMAT_BYTES_MAX 32U
char *format_bytes(char *buf, size_t size, uint64_t bytes);

/* "0:07", "12:34", "1:02:03": a duration like a clock, in whole seconds rounded up (so that time
 * still left never shows as "0:00"). */
#define FORMAT_DURATION_MAX 32U
char *format_duration(char *buf, size_t size, uint64_t usec);

/* Terminal columns a UTF-8 string takes, not counting ANSI colour sequences (falls back to its length
 * if it cannot be decoded). */
size_t utf8_width(const char *s);

/* Whether the locale's character set is UTF-8, so that box-drawing characters can be printed. */
bool locale_is_utf8(void);

/* Tree drawing: the connector of a child ("└─ " or "`- "), which is as wide as one level of indentation. */
const char *tree_branch(void);
#define TREE_INDENT_WIDTH 3U

/* Colours only on a terminal, and never when $NO_COLOR is set (https://no-color.org) or TERM=dumb. */
bool colors_enabled(FILE *f);
const char *ansi_bold(FILE *f);
const char *ansi_grey(FILE *f);
const char *ansi_normal(FILE *f);

/* A table of strings with a header row, printed with aligned columns. */
typedef struct Table Table;

Table *table_new(const char *first_header, ...);
Table *table_free(Table *t);
static inline void table_freep(Table **t) {
        table_free(*t);
}
#define _cleanup_table_ _cleanup_(table_freep)

void table_set_align_right(Table *t, size_t column);
int table_add_cell(Table *t, const char *s);
_printf_(2, 3) int table_add_cellf(Table *t, const char *format, ...);
size_t table_get_rows(const Table *t);
int table_print(const Table *t, FILE *f, bool header);

/* json-c helpers: each returns 0 or -ENOMEM; the object is not modified on failure. */
static inline void json_object_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}
#define _cleanup_json_ _cleanup_(json_object_putp)

int json_add_string(json_object *o, const char *key, const char *value);
int json_add_uint64(json_object *o, const char *key, uint64_t value);
int json_add_bool(json_object *o, const char *key, bool value);
int json_add_double(json_object *o, const char *key, double value);
/* Takes ownership of `value` in all cases. */
int json_array_append(json_object *array, json_object *value);
int json_print(json_object *o, JsonMode mode);
