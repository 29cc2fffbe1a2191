/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <stddef.h>

/* Text that came from someone else (a caller's name or option key echoed in an error, a daemon's
 * error message shown on a terminal) made safe to print on one line: valid, printable UTF-8 is kept;
 * control characters (C0, DEL, C1), bytes that are not valid UTF-8 and the backslash itself are
 * written as "\xNN" (backslash as "\\"). If the result does not fit in `size` bytes it is cut at a
 * character boundary and ends with "...". NULL is written as "(null)". Returns buf. */
char *escape_text(const char *s, char *buf, size_t size);

/* For echoes in error messages: at most ESCAPE_TEXT_MAX - 1 bytes, in a buffer that lives until the
 * end of the enclosing block, e.g. sd_bus_error_setf(..., "Unknown key '%s'", ESCAPE_TEXT(key)). Small
 * enough that a message with one echo fits FORMAT_ERROR_REASON_MAX (256) whole: a message cut there by
 * vsnprintf() could end in half a UTF-8 character, which the bus does not carry. */
#define ESCAPE_TEXT_MAX 128U
#define ESCAPE_TEXT(s) escape_text((s), (char[ESCAPE_TEXT_MAX]) {}, ESCAPE_TEXT_MAX)
