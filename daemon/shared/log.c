/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-journal.h>

#include "log.h"

static int max_level = LOG_INFO;

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

int log_internal(int level, int error, const char *fmt, ...) {
        int saved = errno;
        char buf[1024];
        va_list ap;

        if (error < 0)
                error = -error;
        if (level > max_level) {
                errno = saved;
                return -error;
        }

        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (error > 0)
                fprintf(stderr, "<%d>%s: %s\n", level, buf, strerror(error));
        else
                fprintf(stderr, "<%d>%s\n", level, buf);
        errno = saved;
        return -error;
}

void log_op(int level, const char *op, const char *vm, const char *disk, const char *layer, const char *fmt, ...) {
        char buf[1024];
        va_list ap;

        if (level > max_level)
                return;
        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);

        /* Structured fields where journald listens; plain stderr lines (with a prefix) otherwise. */
        if (getenv("JOURNAL_STREAM"))
                (void) sd_journal_send("MESSAGE=%s", buf, "PRIORITY=%d", level, "VDISK_OP=%s", op ?: "",
                                       "VDISK_VM=%s", vm ?: "", "VDISK_DISK=%s", disk ?: "", "VDISK_LAYER=%s",
                                       layer ?: "", NULL);
        else
                fprintf(stderr, "<%d>%s [op=%s%s%s%s%s%s%s]\n", level, buf, op ?: "", vm ? " vm=" : "", vm ?: "",
                        disk ? " disk=" : "", disk ?: "", layer ? " layer=" : "", layer ?: "");
}
