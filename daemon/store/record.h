/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The records: one JSON document per layer (records/layer-<id>.json) and one per VM
 * (records/vm-<name>.json). Versioned by "schema"; written atomically; read with size and depth
 * limits and every field type-checked.
 */

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "format.h"
#include "util.h"

#define RECORD_SCHEMA 1
#define RECORD_MAX_SIZE (UINT64_C(1) << 20)
#define RECORD_MAX_DEPTH 8

typedef enum LayerState {
        LAYER_CREATING,  /* record written, file being made: never handed out */
        LAYER_READY,
        LAYER_MODIFYING, /* being changed in place by an operation in the journal (rebase, commit) */
        _LAYER_STATE_MAX,
        _LAYER_STATE_INVALID = -EINVAL,
} LayerState;

const char *layer_state_to_string(LayerState s) _pure_;
LayerState layer_state_from_string(const char *s) _pure_;

typedef struct Layer {
        char id[LAYER_ID_LEN + 1];
        char *file;                /* name inside the store's images/ directory */
        ImageFormat format;
        uint64_t virtual_size;
        char *backing;             /* layer id, NULL at the bottom */
        ImageFormat backing_format;
        char *data_file;           /* qcow2 external data file inside images/ (<id>.data), NULL if none */
        bool data_file_raw;        /* ... with raw data (autoclear bit 1) */
        uint64_t data_inode;
        char *catalog_name;        /* catalog images only */
        char *vm;                  /* private layers: the owning VM */
        LayerState state;
        uint64_t generation;
        uint64_t writer;           /* cluster host id of the vdiskd that last wrote the record; 0: local mode */
        uint64_t inode;
        unsigned pins; /* in memory only: running operations that read this layer outside its disks */
} Layer;

typedef struct Disk {
        char *name;
        char **chain; /* layer ids, top first */
        size_t n_chain;
        char *quarantine; /* why the disk may not be handed out, NULL if it may */
} Disk;

typedef struct Vm {
        char *name;
        uid_t owner_uid;
        uint64_t generation;
        uint64_t writer;           /* as Layer.writer */
        Disk *disks;
        size_t n_disks;
} Vm;

Layer *layer_free(Layer *l);
Vm *vm_free(Vm *v);
void disk_done(Disk *d);
static inline void layer_freep(Layer **l) {
        layer_free(*l);
}
static inline void vm_freep(Vm **v) {
        vm_free(*v);
}

/* Who writes records (cluster mode: this host's id in the lockspace, 1..RECORD_MAX_WRITER; 0, the default:
 * local mode, and no "writer" field). Layer.writer and Vm.writer are serialized as they are; the store
 * stamps every new version of a record it writes with this (store_save_layer, store_put_vm, the "after"
 * of a journal entry), while a record put back from a journal entry (a roll-back, a roll-forward) keeps
 * the writer it had there: restored byte for byte. */
#define RECORD_MAX_WRITER 2000U /* sanlock's largest host id */
void record_set_writer(uint64_t host_id);
uint64_t record_get_writer(void);

struct json_object *layer_to_json(const Layer *l);
int layer_from_json(struct json_object *o, Layer **ret);
struct json_object *vm_to_json(const Vm *v);
int vm_from_json(struct json_object *o, Vm **ret);
int vm_copy(const Vm *v, Vm **ret);

/* Atomic: temporary file in the same directory, fsync, rename, fsync the directory. -E2BIG, writing
 * nothing, if the text would be larger than RECORD_MAX_SIZE: the daemon never writes a record it would
 * refuse to read back. */
int record_write(int dirfd, const char *name, struct json_object *o);
/* -ENOENT if absent, -EPROTONOSUPPORT for a newer schema, -EBADMSG if malformed, -E2BIG if too large;
 * on failure `*ret_why` (if not NULL) says why in words, naming the limit that was hit. */
int record_read_why(int dirfd, const char *name, struct json_object **ret, const char **ret_why);
int record_read(int dirfd, const char *name, struct json_object **ret);
/* The checks of record_read_why() on a record's text already in memory (`size` bytes at `buf`, which
 * need not be NUL-terminated): the start-up cache (store.c) validates its copies with it. */
int record_parse_why(const char *buf, size_t size, struct json_object **ret, const char **ret_why);
int record_remove(int dirfd, const char *name);
