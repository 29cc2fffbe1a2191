/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "escape.h"

/* The length of the valid UTF-8 sequence at s (1 to 4), or 0 if there is none: overlong forms,
 * surrogates and code points beyond U+10FFFF are not valid. */
static size_t utf8_sequence(const unsigned char *s, uint32_t *ret_cp) {
        uint32_t cp, min;
        size_t n;

        if (s[0] < 0x80) {
                *ret_cp = s[0];
                return 1;
        }
        if ((s[0] & 0xe0) == 0xc0) {
                n = 2;
                cp = s[0] & 0x1f;
                min = 0x80;
        } else if ((s[0] & 0xf0) == 0xe0) {
                n = 3;
                cp = s[0] & 0x0f;
                min = 0x800;
        } else if ((s[0] & 0xf8) == 0xf0) {
                n = 4;
                cp = s[0] & 0x07;
                min = 0x10000;
        } else
                return 0;

        for (size_t i = 1; i < n; i++) {
                if ((s[i] & 0xc0) != 0x80) /* also stops at the terminating NUL */
                        return 0;
                cp = (cp << 6) | (s[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;

        *ret_cp = cp;
        return n;
}

static bool code_point_is_control(uint32_t cp) {
        /* C0, DEL, C1, and the Unicode line and paragraph separators (they break lines too). */
        return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029;
}

/* The printable form of the character (or invalid byte) at p: its length in piece, and in *ret_n how
 * many bytes of p it stands for. */
static size_t escape_piece(const unsigned char *p, char piece[static 16], size_t *ret_n) {
        static const char hex[] = "0123456789abcdef";
        size_t n, len = 0;
        uint32_t cp;

        n = utf8_sequence(p, &cp);
        if (n > 0 && cp == '\\') {
                memcpy(piece, "\\\\", 2);
                len = 2;
        } else if (n > 0 && !code_point_is_control(cp)) {
                memcpy(piece, p, n);
                len = n;
        } else {
                /* Each byte of a control character or of an invalid sequence on its own. */
                if (n == 0)
                        n = 1;
                for (size_t i = 0; i < n; i++) {
                        piece[len++] = '\\';
                        piece[len++] = 'x';
                        piece[len++] = hex[p[i] >> 4];
                        piece[len++] = hex[p[i] & 15];
                }
        }

        *ret_n = n;
        return len;
}

char *escape_text(const char *s, char *buf, size_t size) {
        static const char ellipsis[] = "...";
        const size_t ellipsis_len = sizeof(ellipsis) - 1;
        const unsigned char *p;
        size_t total = 0, limit, used = 0;
        char piece[16];

        if (size == 0)
                return buf;
        if (!s)
                s = "(null)";

        /* Whether all of it fits; if not, room is kept for "...". */
        for (p = (const unsigned char *) s; *p && total <= size - 1;) {
                size_t n;

                total += escape_piece(p, piece, &n);
                p += n;
        }
        limit = total > size - 1 && size - 1 >= ellipsis_len ? size - 1 - ellipsis_len : size - 1;

        for (p = (const unsigned char *) s; *p;) {
                size_t n, len;

                len = escape_piece(p, piece, &n);
                if (len > limit - used)
                        break;
                memcpy(buf + used, piece, len);
                used += len;
                p += n;
        }
        if (*p && size - 1 - used >= ellipsis_len) {
                memcpy(buf + used, ellipsis, ellipsis_len);
                used += ellipsis_len;
        }
        buf[used] = 0;
        return buf;
}
