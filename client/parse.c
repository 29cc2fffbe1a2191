/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parse.h"
#include "string-util.h"

int parse_size(const char *s, uint64_t *ret) {
        static const struct {
                char suffix;
                unsigned shift;
        } units[] = {
                { 'K', 10 },
                { 'M', 20 },
                { 'G', 30 },
                { 'T', 40 },
        };
        uint64_t whole = 0, frac = 0, frac_div = 1, factor = 1, result;
        const char *p = s;

        if (!s || !ascii_isdigit(*p)) /* no sign, no blanks, not empty */
                return -EINVAL;

        for (; ascii_isdigit(*p); p++)
                if (MUL_OVERFLOW(whole, (uint64_t) 10, &whole) ||
                    ADD_OVERFLOW(whole, (uint64_t) (*p - '0'), &whole))
                        return -ERANGE;

        if (*p == '.') {
                unsigned digits = 0;

                p++;
                if (!ascii_isdigit(*p))
                        return -EINVAL;
                for (; ascii_isdigit(*p); p++) {
                        if (++digits > SIZE_FRACTION_DIGITS_MAX)
                                return -EINVAL;
                        frac = frac * 10 + (uint64_t) (*p - '0');
                        frac_div *= 10;
                }
        }

        if (*p) {
                bool found = false;

                for (size_t i = 0; i < ELEMENTSOF(units); i++)
                        if (*p == units[i].suffix || *p == units[i].suffix - 'A' + 'a') {
                                factor = UINT64_C(1) << units[i].shift;
                                found = true;
                                p++;
                                break;
                        }

                if (found) {
                        if (!streq(p, "") && !streq(p, "B") && !streq(p, "iB"))
                                return -EINVAL;
                } else if (!streq(p, "B"))
                        return -EINVAL;
        }

        if (MUL_OVERFLOW(whole, factor, &result))
                return -ERANGE;

        if (frac > 0) {
                uint64_t f = frac * factor; /* < 10^6 × 2^40 < 2^64 */

                if (f % frac_div != 0)
                        return -EINVAL;
                if (ADD_OVERFLOW(result, f / frac_div, &result))
                        return -ERANGE;
        }

        *ret = result;
        return 0;
}

int parse_uid(const char *s, uid_t *ret) {
        struct passwd *pw;

        if (isempty(s))
                return -EINVAL;

        if (ascii_isdigit(s[0])) {
                unsigned long long u = 0;

                for (const char *p = s; *p; p++) {
                        if (!ascii_isdigit(*p))
                                return -EINVAL;
                        u = u * 10 + (unsigned long long) (*p - '0');
                        if (u > UINT32_MAX)
                                return -ERANGE;
                }
                /* (uid_t) -1 means "no uid" to the kernel; 65535 is the 16-bit variant of that. */
                if (u == UINT32_MAX || u == 65535)
                        return -ERANGE;
                *ret = (uid_t) u;
                return 0;
        }

        errno = 0;
        pw = getpwnam(s);
        if (!pw)
                return errno > 0 ? -errno : -ESRCH;

        *ret = pw->pw_uid;
        return 0;
}

bool object_path_is_valid(const char *p) {
        bool slash = true;

        if (!p || p[0] != '/')
                return false;
        if (p[1] == 0)
                return true;

        for (const char *q = p + 1; *q; q++) {
                if (*q == '/') {
                        if (slash)
                                return false;
                        slash = true;
                } else if (ascii_isalnum(*q) || *q == '_')
                        slash = false;
                else
                        return false;
        }

        return !slash;
}

int job_path_from_string(const char *s, char **ret) {
        char *p;

        if (isempty(s))
                return -EINVAL;

        if (s[0] == '/') {
                if (!object_path_is_valid(s))
                        return -EINVAL;
                p = strdup(s);
        } else {
                for (const char *q = s; *q; q++)
                        if (!ascii_isalnum(*q) && *q != '_')
                                return -EINVAL;
                if (asprintf(&p, "%s%s", VDISK_JOB_PATH_PREFIX, s) < 0)
                        p = NULL;
        }
        if (!p)
                return -ENOMEM;

        *ret = p;
        return 0;
}

const char *object_path_last(const char *p) {
        const char *slash = strrchr(p, '/');

        return slash && slash[1] ? slash + 1 : p;
}
