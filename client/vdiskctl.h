/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Shared by vdiskctl's command files: the parsed options and small output helpers. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <json-c/json.h>
#include <systemd/sd-bus.h>

#include "macro.h"
#include "output.h"

typedef enum OptionFlag {
        OPTION_JSON = 1 << 0,
        OPTION_NO_LEGEND = 1 << 1,
        OPTION_TEMPLATE = 1 << 2,
        OPTION_CLUSTER_SIZE = 1 << 3,
        OPTION_NO_WAIT = 1 << 4,
        OPTION_OWNER = 1 << 5,
        OPTION_IMAGE = 1 << 6,
        OPTION_SIZE = 1 << 7,
        OPTION_MODE = 1 << 8,
        OPTION_FORMAT = 1 << 9,
        OPTION_UNSAFE = 1 << 10,
        OPTION_MOVE = 1 << 11,
        OPTION_READ_ONLY = 1 << 12,
        OPTION_PRINT = 1 << 13,
        OPTION_DATA_FILE = 1 << 14,
        OPTION_DATA_FILE_RAW = 1 << 15,
        OPTION_DOMAIN = 1 << 16,
        OPTION_CONNECT = 1 << 17,
        OPTION_EXPORT = 1 << 18,
} OptionFlag;

/* Accepted by every command; commands that print nothing ignore them. */
#define OPTIONS_GLOBAL (OPTION_JSON | OPTION_NO_LEGEND)

extern unsigned arg_seen; /* OptionFlag bits given on the command line */
extern JsonMode arg_json;
extern bool arg_legend;
extern const char *arg_template;
extern uint32_t arg_cluster_size;
extern bool arg_no_wait;
extern uid_t arg_owner;
extern const char *arg_image;
extern uint64_t arg_size;
extern const char *arg_mode;
extern const char *arg_format;
extern bool arg_unsafe;
extern bool arg_move;
extern bool arg_read_only;
extern bool arg_print;
extern bool arg_data_file;
extern bool arg_data_file_raw;
extern const char *arg_domain;
extern const char *arg_connect;
extern const char *arg_export; /* "vhost-user-blk" or "nbd"; NULL: the chain's fds */

/* vdiskctl-util.c */
void log_usage(const char *verb, const char *format, ...) _printf_(2, 3);
bool format_is_valid(const char *s);
int parse_size_or_log(const char *verb, const char *s, uint64_t *ret);
int manager_call_new(sd_bus *bus, const char *member, sd_bus_message **ret);
void print_footer(const char *format, ...) _printf_(1, 2);
int show_table(const Table *t);
int show_json(json_object *o);
/* Prints a single value: as it is, or as {"key": "value"} with --json. */
int show_value(const char *key, const char *value);

/* vdiskctl-images.c */
int verb_list_images(int argc, char *argv[]);
int verb_create_image(int argc, char *argv[]);
int verb_import(int argc, char *argv[]);
int verb_delete_image(int argc, char *argv[]);

/* vdiskctl-jobs.c: prints the job path (--no-wait), or follows the job to its end and reports how it
 * ended; `failure` says what failed, e.g. "Failed to import 'f.img' as image 'debian'". */
int handle_job(sd_bus *bus, const char *path, const char *label, const char *failure);
int verb_jobs(int argc, char *argv[]);
int verb_cancel(int argc, char *argv[]);

/* vdiskctl-vms.c */
int verb_list_vms(int argc, char *argv[]);
int verb_create_vm(int argc, char *argv[]);
int verb_delete_vm(int argc, char *argv[]);

/* vdiskctl-disks.c */
int verb_list_disks(int argc, char *argv[]);
int verb_create_disk(int argc, char *argv[]);
int verb_delete_disk(int argc, char *argv[]);
int verb_chain(int argc, char *argv[]);
int verb_snapshot(int argc, char *argv[]);
int verb_rebase(int argc, char *argv[]);
int verb_commit(int argc, char *argv[]);
int verb_verify(int argc, char *argv[]);
int verb_xml(int argc, char *argv[]);
int verb_adopt(int argc, char *argv[]);

/* vdiskctl-open.c */
int verb_open(int argc, char *argv[]);

/* vdiskctl-libvirt.c (only with libvirt) */
int verb_libvirt(int argc, char *argv[]);

/* vdiskctl-service.c */
int verb_inspect(int argc, char *argv[]);
int verb_status(int argc, char *argv[]);
