/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Exports: the second way to hand out a disk. The chain's fds go to a storage helper (export/helper.h)
 * instead of the caller; the helper serves the chain over vhost-user-blk or NBD on one socket whose
 * other end is the only fd the caller gets. The helper's directory under vdiskd's runtime directory
 * holds its monitor socket, its log and state.json, the lease as plain data, so that a restarted vdiskd
 * finds its exports again (export_recover) while the VMs keep running.
 */

#include <stdbool.h>
#include <sys/types.h>

#include <json-c/json.h>
#include <systemd/sd-event.h>

#include "helper.h"
#include "lease.h"
#include "ops.h"

typedef enum ExportType {
        EXPORT_NONE,
        EXPORT_VHOST_USER_BLK,
        EXPORT_NBD,
} ExportType;

const char *export_type_to_string(ExportType t);
/* EXPORT_NONE for NULL; -EINVAL for an unknown name. */
int export_type_from_string(const char *s, ExportType *ret);

/* [Exports] of vdiskd.conf. */
typedef struct ExportSettings {
        bool enabled;
        char *helper;      /* the helper binary */
        char *runtime_dir; /* vdiskd's runtime directory; exports live in <runtime_dir>/exports/<lease> */
        uid_t uid_first, uid_last; /* helper uids, one per export, when vdiskd is root */
        uint32_t spare_helpers;    /* helpers started ahead of OpenDisk (export-spare.c) */
} ExportSettings;

/* Two: a second export started right after the first (VMs started together, B8's OpenDisk series) finds
 * one ready too; each costs about 30 MB while it waits. */
#define EXPORT_DEFAULT_SPARE_HELPERS 2U
#define EXPORT_SPARE_HELPERS_MAX 16U

/* Spare helpers (ops/export-spare.c): helpers started ahead, holding nothing, that OpenDisk takes. */
typedef struct ExportSpares ExportSpares;

#define EXPORT_DEFAULT_HELPER "/usr/bin/qemu-system-x86_64"
#define EXPORT_DEFAULT_UID_FIRST 2113929216U /* 0x7e000000 */
#define EXPORT_DEFAULT_UID_LAST 2113994751U  /* 0x7e00ffff */

/* Called when a helper dies on its own, or its monitor fails: the lease must end, for `why`. */
typedef void (*ExportGoneHandler)(Lease *l, const char *why, void *userdata);

/* What OpenDisk needs to start exports. */
typedef struct ExportContext {
        const ExportSettings *settings;
        ExportSpares *spares; /* NULL: none (SpareHelpers=0, or exports disabled) */
        sd_event *event;
        ExportGoneHandler gone;
        void *userdata;
} ExportContext;

typedef struct Export {
        ExportType type;
        char *dir;
        uid_t uid;
        Helper *helper;
        char **nodes; /* the helper's format node of each layer, top first */
        size_t n_nodes;
        Lease *lease; /* back pointer: the lease that owns this export */
        bool starting; /* the helper is being given the chain: OpenDisk has not answered yet */
        /* A live commit, rebase or flatten given to the helper (ops/live-job.c) and not settled in the
         * records yet: its operation and layer (the committed layer, the new backing, "" to flatten). */
        char *job_op;
        char job_layer[LAYER_ID_LEN + 1];
        ExportGoneHandler gone;
        void *userdata;
} Export;

/* Starts the helper of lease `l`, whose chain fds are all open (l->fds); hands them over and replaces
 * them by the one socket the caller gets (l->fds[0], not a layer). `*ret_attach` is the JSON object
 * that tells a launcher how to attach it. The helper is a spare of `spares` if one is there: then the
 * lease's id (not yet registered) becomes the spare's. */
int export_start(const ExportSettings *set, ExportSpares *spares, Store *s, const LeaseRegistry *leases, const Disk *d,
                 Lease *l, ExportType type, sd_event *event, ExportGoneHandler gone, void *userdata, char **ret_attach,
                 OpError *err);
/* Ends the export of a lease that ends: stops the helper and removes its directory. < 0 if the helper
 * could not be stopped (it may still write: the caller quarantines the disk). */
int export_stop(Export *e);
/* Frees the daemon's side only: the helper keeps serving (vdiskd stops, a VM keeps its disk). */
Export *export_free(Export *e);

/* After a restart: every export directory whose helper still serves becomes a lease again in `leases`;
 * the others are ended (their disks' headers checked as at the end of any read-write lease). The bus
 * face then checks that each holder is still on the bus. */
int export_recover(const ExportSettings *set, Store *s, LeaseRegistry *leases, sd_event *event, ExportGoneHandler gone,
                   void *userdata);

/* One QMP command to the export's helper; a refusal is logged with the helper's words and is -EIO for
 * the caller, with a short reason in `err`. */
int export_qmp(Export *e, const char *command, json_object *args, int fd, json_object **ret, OpError *err);
/* The helper's format node names of disk `d`'s chain, top first, into e->nodes (replacing them). */
int export_set_nodes(Export *e, const Disk *d);
/* Writes the export's state.json again (after its chain changed). */
int export_save_state(const Export *e);

/* A uid of [Exports] HelperUids= that no export's helper and no spare has; -E2BIG if none is left. */
int export_pick_uid(const ExportSettings *set, const LeaseRegistry *leases, const ExportSpares *spares, uid_t *ret);

/* The pool of SpareHelpers= spares, started from the event loop; *ret = NULL if exports are disabled or
 * SpareHelpers=0. */
int export_spares_new(const ExportSettings *set, const LeaseRegistry *leases, sd_event *event, ExportSpares **ret);
/* Stops every spare (vdiskd exits) and frees the pool. */
ExportSpares *export_spares_free(ExportSpares *p);
/* Takes a spare for one lease: 1 with its helper (handshake done, holding no file, no event handler),
 * its uid and id, its directory moved to <exports_dir>/<id>; 0 if there is none (start one instead).
 * Another spare is started in the background. */
int export_spares_take(ExportSpares *p, const char *exports_dir, Helper **ret_helper, uid_t *ret_uid,
                       char ret_id[static LAYER_ID_LEN + 1]);
bool export_spares_uses_uid(const ExportSpares *p, uid_t uid);
/* At a start: stops the spares a previous vdiskd left in <runtime_dir>/spares and removes them. */
void export_spares_cleanup(const ExportSettings *set);
