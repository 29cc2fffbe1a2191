/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "daemon-config.h"
#include "ops.h"
#include "store.h"

typedef struct Job Job;
typedef struct Lease Lease;

typedef struct CallerEntry CallerEntry;

typedef struct Manager {
        sd_event *event;
        sd_bus *bus;
        Store *store;
        Config config;
        bool has_admin_gid;
        gid_t admin_gid;
        Job **jobs;
        size_t n_jobs;
        Lease **leases;
        size_t n_leases;
        CallerEntry *callers; /* credentials by unique bus name, dropped when the name leaves */
        size_t n_callers;
        uint64_t job_counter;
} Manager;

#define VDISK_BUS_NAME "org.vdisk1"
#define VDISK_MANAGER_PATH "/org/vdisk1"
#define VDISK_MANAGER_INTERFACE "org.vdisk1.Manager"
#define VDISK_JOB_PREFIX "/org/vdisk1/job"
#define VDISK_JOB_INTERFACE "org.vdisk1.Job"

int manager_new(const Config *config, Manager **ret);
Manager *manager_free(Manager *m);
int manager_connect_bus(Manager *m);
size_t manager_running_jobs(Manager *m);

/* bus-manager.c */
int bus_manager_register(Manager *m);

/* bus-job.c */
typedef struct JobOps {
        int (*step)(void *op, OpError *err); /* > 0 more to do, 0 done, < 0 failed (already rolled back) */
        void (*abort)(void *op);
        void *(*free)(void *op);
        uint64_t (*bytes_done)(const void *op);
        uint64_t (*bytes_total)(const void *op);
} JobOps;

int job_start(Manager *m, const char *operation, const char *vm, const char *disk, uid_t owner, const JobOps *ops,
              void *op, const char **ret_path);
int bus_job_register(Manager *m);
const char *job_path(const Job *j);
const char *job_operation(const Job *j);
const char *job_vm(const Job *j);
const char *job_disk(const Job *j);
bool job_is_running(const Job *j);

/* bus-xml.c */
int method_get_domain_xml(sd_bus_message *msg, void *userdata, sd_bus_error *error);
int method_adopt_domain_xml(sd_bus_message *msg, void *userdata, sd_bus_error *error);

/* bus-lease.c */
int bus_lease_register(Manager *m);
int method_open_disk(sd_bus_message *msg, void *userdata, sd_bus_error *error);
void manager_free_leases(Manager *m);
const Lease *manager_find_rw_lease(Manager *m, const char *vm, const char *disk);
/* InUse, naming the holder, while `disk` of `vm` (any disk if NULL) has a read-write lease; else 0. */
int lease_busy_error(Manager *m, const char *vm, const char *disk, sd_bus_error *error);

/* auth.c: who is calling, and what they may do. All authorization decisions live here. */
typedef struct Caller {
        uid_t uid;
        pid_t pid;
        bool root;
        bool admin; /* root or a member of the admin group */
} Caller;

int auth_caller(Manager *m, sd_bus_message *msg, Caller *ret, sd_bus_error *error);
/* A unique name left the bus: forget its credentials (unique names are never reused). */
void auth_forget(Manager *m, const char *name);
void auth_free_cache(Manager *m);
void leases_holder_gone(Manager *m, const char *name);
int manager_watch_names(Manager *m);
int auth_require_admin(const Caller *c, sd_bus_error *error);
int auth_require_root(const Caller *c, sd_bus_error *error);
/* Admin, or the VM's owner; a VM the caller may not see is AccessDenied, never NotFound. */
int auth_require_vm(Manager *m, const Caller *c, const char *vm, sd_bus_error *error);

/* bus-manager.c: argument helpers shared by the bus objects */
typedef struct OptionSpec {
        const char *key;
        char type; /* 's', 'u', 'b' (into a bool), 't' */
        void *ret;
} OptionSpec;

/* Reads an a{sv}; unknown keys, wrong types, duplicates and too many entries are InvalidArgs. */
int bus_read_options(sd_bus_message *m, const OptionSpec *specs, sd_bus_error *error);
/* InvalidArgs unless `name` is a valid VM, disk or image name; never echoes the name. */
int bus_check_name(const char *what, const char *name, sd_bus_error *error);

/* bus-error.c */
int bus_error_from_op(sd_bus_error *error, int r, const char *reason);
