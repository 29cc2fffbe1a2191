/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* vdiskd's configuration file (vdiskd(8) CONFIGURATION, data/vdiskd.conf), parsed with libinih.
 * (Not "config.h": that name is meson's generated header.) */

#include "cluster.h"
#include "export.h"
#include "ops.h"

typedef struct Config {
        char *store_directory;
        Limits limits;
        char *admin_group;
        ExportSettings exports; /* runtime_dir unset (NULL) until main.c picks the default */
        ClusterSettings cluster;
} Config;

void config_init_default(Config *c);
void config_done(Config *c);
/* Reads an INI-style file into c: [Store] Directory=, [Limits] Max*=, [Access] AdminGroup=, [Exports],
 * [Cluster]. A missing
 * file is -ENOENT (the caller decides whether that is fine) and logs nothing; a malformed line, an
 * invalid value or limits out of range are -EINVAL, logged with the file and line; an unknown section
 * or key is logged and ignored. On failure c may hold some of the file's values: config_done() it. */
int config_load(Config *c, const char *path);
