/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* The start-up cache of the records, STORE/records.cache (record-cache.c, docs/design.md "Start-up"). */

#include <stdbool.h>
#include <sys/types.h>

#include "store.h"

typedef struct RecordName {
        char *name;
        ino_t ino;
        bool loaded;
} RecordName;

/* The names live in chunks mapped for them (not the heap): a start with 20,001 records would otherwise
 * leave 1 MB of heap behind, fragmented by the layers and VMs allocated meanwhile. */
#define RECORD_NAMES_CHUNK (1024 * 1024)

typedef struct RecordNamesChunk {
        struct RecordNamesChunk *next;
        size_t used;
        char data[];
} RecordNamesChunk;

typedef struct RecordNames {
        RecordName *items;
        size_t n, n_allocated;
        size_t *index; /* open addressing: 1 + position in items, 0 empty */
        size_t index_size;
        RecordNamesChunk *chunks;
} RecordNames;

void record_names_done(RecordNames *rn);
int record_names_add(RecordNames *rn, const char *name, ino_t ino);
/* Sorts by inode (the order in which their inodes are cheapest to read from a cold disk) and indexes by name. */
int record_names_index(RecordNames *rn);

/* Loads one record (already parsed and checked by record_parse_why()) into the store. */
typedef int (*RecordLoadFunc)(Store *s, const char *name, struct json_object *o);

/* Hands `load` the copies of the records listed in `rn` whose files are unchanged, and marks those
 * loaded; the others are left for their files. Fails only for lack of memory (or what `load` fails with
 * on ENOMEM). */
int record_cache_read(Store *s, RecordNames *rn, RecordLoadFunc load, size_t *ret_n_loaded);
/* At a clean stop. */
int record_cache_write(Store *s);
