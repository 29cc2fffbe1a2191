/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <libintl.h>

/* The client's own strings are translated (po/); vdiskd's error texts are English and printed as
 * received. */
#define _(s) gettext(s)
#define N_(s) (s)
