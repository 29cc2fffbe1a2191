/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <inttypes.h>
#include <langinfo.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>

#include "output.h"
#include "string-util.h"

static const char *const json_mode_table[_JSON_MODE_MAX] = {
        [JSON_OFF] = "off",
        [JSON_PRETTY] = "pretty",
        [JSON_SHORT] = "short",
};

JsonMode json_mode_from_string(const char *s) {
        if (!s)
                return _JSON_MODE_INVALID;
        for (size_t i = 0; i < ELEMENTSOF(json_mode_table); i++)
                if (streq(s, json_mode_table[i]))
                        return (JsonMode) i;
        return _JSON_MODE_INVALID;
}

char *format_bytes(char *buf, size_t size, uint64_t bytes) {
        static const struct {
                const char *suffix;
                uint64_t factor;
        } units[] = {
                { "E", UINT64_C(1) << 60 },
                { "P", UINT64_C(1) << 50 },
                { "T", UINT64_C(1) << 40 },
                { "G", UINT64_C(1) << 30 },
                { "M", UINT64_C(1) << 20 },
                { "K", UINT64_C(1) << 10 },
        };

        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (bytes >= units[i].factor) {
                        /* The remainder is below 2^60, so ×10 cannot overflow. */
                        (void) snprintf(buf, size, "%" PRIu64 ".%" PRIu64 "%s",
                                        bytes / units[i].factor,
                                        (bytes % units[i].factor) * 10 / units[i].factor,
                                        units[i].suffix);
                        return buf;
                }

        (void) snprintf(buf, size, "%" PRIu64 "B", bytes);
        return buf;
}

char *format_duration(char *buf, size_t size, uint64_t usec) {
        uint64_t s = usec / 1000000 + (usec % 1000000 > 0);

        if (s >= 3600)
                (void) snprintf(buf, size, "%" PRIu64 ":%02" PRIu64 ":%02" PRIu64, s / 3600, s / 60 % 60, s % 60);
        else
                (void) snprintf(buf, size, "%" PRIu64 ":%02" PRIu64, s / 60, s % 60);
        return buf;
}

/* Length of the ANSI control sequence ("ESC [ parameters final-byte") at s, or 0 if none starts there. */
static size_t ansi_sequence_length(const char *s, size_t left) {
        size_t n = 2;

        if (left < 2 || s[0] != '\033' || s[1] != '[')
                return 0;
        while (n < left && s[n] >= 0x20 && s[n] <= 0x3f) /* parameter and intermediate bytes */
                n++;
        if (n < left && s[n] >= 0x40 && s[n] <= 0x7e)
                return n + 1;
        return 0;
}

size_t utf8_width(const char *s) {
        mbstate_t state = {};
        size_t width = 0;
        const char *p = s;
        size_t left = strlen(s);

        while (left > 0) {
                size_t n = ansi_sequence_length(p, left);
                wchar_t wc;
                int w;

                if (n > 0) {
                        p += n;
                        left -= n;
                        continue;
                }
                /* ASCII is one column when printable and none when a control character, in every
                 * locale glibc has: no need to decode it (a 1000-row table is mostly ASCII). */
                if ((unsigned char) *p < 0x80) {
                        width += *p >= 0x20 && *p < 0x7f;
                        p++;
                        left--;
                        continue;
                }
                n = mbrtowc(&wc, p, left, &state);
                if (n == (size_t) -1 || n == (size_t) -2 || n == 0)
                        return strlen(s);
                w = wcwidth(wc);
                width += w > 0 ? (size_t) w : 0;
                p += n;
                left -= n;
        }

        return width;
}

bool locale_is_utf8(void) {
        const char *codeset = nl_langinfo(CODESET);

        return codeset && (streq(codeset, "UTF-8") || streq(codeset, "utf8"));
}

const char *tree_branch(void) {
        return locale_is_utf8() ? "\u2514\u2500 " /* └─ */ : "`- ";
}

bool colors_enabled(FILE *f) {
        /* Asked for every coloured cell: decided once per stream (-1: not yet), not once per row. */
        static int cached[3] = { -1, -1, -1 };
        const char *term;
        int fd = fileno(f);
        bool on;

        if (fd >= 0 && fd < 3 && cached[fd] >= 0)
                return cached[fd];
        term = getenv("TERM");
        on = !getenv("NO_COLOR") && !(term && streq(term, "dumb")) && isatty(fd) > 0;
        if (fd >= 0 && fd < 3)
                cached[fd] = on;
        return on;
}

const char *ansi_bold(FILE *f) {
        return colors_enabled(f) ? "\033[1m" : "";
}

const char *ansi_grey(FILE *f) {
        return colors_enabled(f) ? "\033[90m" : "";
}

const char *ansi_normal(FILE *f) {
        return colors_enabled(f) ? "\033[0m" : "";
}

struct Table {
        size_t n_columns;
        char **cells; /* row-major; the first row is the header */
        size_t n_cells;
        size_t n_allocated;
        bool *align_right;
};

Table *table_free(Table *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n_cells; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t->align_right);
        free(t);
        return NULL;
}

static int table_append(Table *t, char *s) {
        if (t->n_cells >= t->n_allocated) {
                size_t n = MAX(t->n_allocated * 2, (size_t) 16);
                char **c;

                if (n > SIZE_MAX / sizeof(char *))
                        return -ENOMEM;
                c = realloc(t->cells, n * sizeof(char *));
                if (!c)
                        return -ENOMEM;
                t->cells = c;
                t->n_allocated = n;
        }
        t->cells[t->n_cells++] = s;
        return 0;
}

Table *table_new(const char *first_header, ...) {
        Table *t;
        va_list ap;
        size_t n = 0;

        t = calloc(1, sizeof(Table));
        if (!t)
                return NULL;

        va_start(ap, first_header);
        for (const char *h = first_header; h; h = va_arg(ap, const char *)) {
                char *c = strdup(h);

                if (!c || table_append(t, c) < 0) {
                        free(c);
                        va_end(ap);
                        return table_free(t);
                }
                n++;
        }
        va_end(ap);

        t->n_columns = n;
        t->align_right = calloc(MAX(n, (size_t) 1), sizeof(bool));
        if (!t->align_right)
                return table_free(t);
        return t;
}

void table_set_align_right(Table *t, size_t column) {
        if (column < t->n_columns)
                t->align_right[column] = true;
}

int table_add_cell(Table *t, const char *s) {
        char *c = strdup(s ?: "");
        int r;

        if (!c)
                return -ENOMEM;
        r = table_append(t, c);
        if (r < 0)
                free(c);
        return r;
}

int table_add_cellf(Table *t, const char *format, ...) {
        char *c;
        va_list ap;
        int r;

        va_start(ap, format);
        r = vasprintf(&c, format, ap);
        va_end(ap);
        if (r < 0)
                return -ENOMEM;
        r = table_append(t, c);
        if (r < 0)
                free(c);
        return r;
}

size_t table_get_rows(const Table *t) {
        if (t->n_columns == 0)
                return 0;
        return t->n_cells / t->n_columns - 1;
}

int table_print(const Table *t, FILE *f, bool header) {
        _cleanup_free_ size_t *widths = NULL, *cell_widths = NULL;

        if (t->n_columns == 0)
                return 0;
        if (t->n_cells % t->n_columns != 0)
                return -EINVAL; /* incomplete last row: a bug in the caller */

        widths = calloc(t->n_columns, sizeof(size_t));
        cell_widths = calloc(MAX(t->n_cells, (size_t) 1), sizeof(size_t));
        if (!widths || !cell_widths)
                return -ENOMEM;

        /* Each cell measured once. */
        for (size_t i = header ? 0 : t->n_columns; i < t->n_cells; i++) {
                cell_widths[i] = utf8_width(t->cells[i]);
                widths[i % t->n_columns] = MAX(widths[i % t->n_columns], cell_widths[i]);
        }

        for (size_t i = header ? 0 : t->n_columns; i < t->n_cells; i += t->n_columns) {
                bool is_header = i == 0;

                if (is_header)
                        fputs(ansi_bold(f), f);

                for (size_t c = 0; c < t->n_columns; c++) {
                        const char *s = t->cells[i + c];
                        size_t pad = widths[c] - cell_widths[i + c];
                        bool last = c + 1 == t->n_columns;

                        if (c > 0)
                                fputs("  ", f);
                        if (t->align_right[c])
                                fprintf(f, "%*s%s", (int) pad, "", s);
                        else if (last) /* no trailing blanks */
                                fputs(s, f);
                        else
                                fprintf(f, "%s%*s", s, (int) pad, "");
                }

                if (is_header)
                        fputs(ansi_normal(f), f);
                fputc('\n', f);
        }

        return 0;
}

static int json_add(json_object *o, const char *key, json_object *value) {
        if (!value)
                return -ENOMEM;
        if (json_object_object_add(o, key, value) < 0) {
                json_object_put(value);
                return -ENOMEM;
        }
        return 0;
}

int json_add_string(json_object *o, const char *key, const char *value) {
        return json_add(o, key, json_object_new_string(value ?: ""));
}

int json_add_uint64(json_object *o, const char *key, uint64_t value) {
        return json_add(o, key, json_object_new_uint64(value));
}

int json_add_bool(json_object *o, const char *key, bool value) {
        return json_add(o, key, json_object_new_boolean(value));
}

int json_add_double(json_object *o, const char *key, double value) {
        return json_add(o, key, json_object_new_double(value));
}

int json_array_append(json_object *array, json_object *value) {
        if (!value)
                return -ENOMEM;
        if (json_object_array_add(array, value) < 0) {
                json_object_put(value);
                return -ENOMEM;
        }
        return 0;
}

int json_print(json_object *o, JsonMode mode) {
        int flags = JSON_C_TO_STRING_NOSLASHESCAPE;
        const char *s;

        if (mode == JSON_SHORT)
                flags |= JSON_C_TO_STRING_PLAIN;
        else
                flags |= JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED;

        s = json_object_to_json_string_ext(o, flags);
        if (!s)
                return -ENOMEM;
        fputs(s, stdout);
        fputc('\n', stdout);
        return 0;
}
