/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * vdiskctl: the command-line client of vdiskd. It only talks D-Bus (org.vdisk1 on the system bus)
 * and never parses an image itself; files are handed to vdiskd as file descriptors.
 */

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#include "bus-util.h"
#include "i18n.h"
#include "output.h"
#include "parse.h"
#include "string-util.h"
#include "vdiskctl.h"

#define HELP_COLUMN 26
#define VERB_SYNOPSIS_MAX 64

static const struct {
        OptionFlag flag;
        const char *name;
} option_names[] = {
        { OPTION_JSON, "--json" },
        { OPTION_NO_LEGEND, "--no-legend" },
        { OPTION_TEMPLATE, "--template" },
        { OPTION_CLUSTER_SIZE, "--cluster-size" },
        { OPTION_NO_WAIT, "--no-wait" },
        { OPTION_OWNER, "--owner" },
        { OPTION_IMAGE, "--image" },
        { OPTION_SIZE, "--size" },
        { OPTION_MODE, "--mode" },
        { OPTION_FORMAT, "--format" },
        { OPTION_UNSAFE, "--unsafe" },
        { OPTION_MOVE, "--move" },
        { OPTION_READ_ONLY, "--read-only" },
        { OPTION_PRINT, "--print" },
        { OPTION_DATA_FILE, "--data-file" },
        { OPTION_DATA_FILE_RAW, "--data-file-raw" },
        { OPTION_DOMAIN, "--domain" },
        { OPTION_CONNECT, "--connect" },
        { OPTION_EXPORT, "--export" },
};

static bool arg_help = false;
static bool arg_version = false;
unsigned arg_seen = 0;
JsonMode arg_json = JSON_OFF;
bool arg_legend = true;
const char *arg_template = NULL;
uint32_t arg_cluster_size = 0;
bool arg_no_wait = false;
uid_t arg_owner = 0;
const char *arg_image = NULL;
uint64_t arg_size = 0;
const char *arg_mode = NULL;
const char *arg_format = NULL;
bool arg_unsafe = false;
bool arg_move = false;
bool arg_data_file = false;
bool arg_data_file_raw = false;
bool arg_read_only = false;
bool arg_print = false;
const char *arg_domain = NULL;
const char *arg_connect = NULL;
const char *arg_export = NULL;

typedef enum VerbSection {
        SECTION_IMAGES,
        SECTION_VMS,
        SECTION_DISKS,
        SECTION_JOBS,
        SECTION_OTHER,
        _SECTION_MAX,
} VerbSection;

static const char *const section_titles[_SECTION_MAX] = {
        [SECTION_IMAGES] = N_("Catalog images:"),
        [SECTION_VMS] = N_("Virtual machines:"),
        [SECTION_DISKS] = N_("Disks and their chains:"),
        [SECTION_JOBS] = N_("Jobs:"),
        [SECTION_OTHER] = N_("Files and service:"),
};

typedef struct VerbOption {
        OptionFlag flag;
        const char *synopsis;
        const char *help;
} VerbOption;

typedef struct Verb {
        const char *name;
        const char *args; /* synopsis of the positional arguments; not translated */
        unsigned min_args;
        unsigned max_args;
        VerbSection section;
        const char *summary;
        const char *description;
        const VerbOption *options; /* ends with flag 0 */
        int (*run)(int argc, char *argv[]);
} Verb;

static int verb_help(int argc, char *argv[]);

#define VERB_OPTION_JSON \
        { OPTION_JSON, "--json[=MODE]", N_("Print JSON instead of text (MODE: pretty, the default, or short)") }
#define VERB_OPTION_NO_LEGEND \
        { OPTION_NO_LEGEND, "--no-legend", N_("Print only the table rows, without header and footer") }
#define VERB_OPTION_NO_WAIT \
        { OPTION_NO_WAIT, "--no-wait", N_("Print the job's object path and return at once") }

static const VerbOption options_table[] = { VERB_OPTION_JSON, VERB_OPTION_NO_LEGEND, {} };
static const VerbOption options_json[] = { VERB_OPTION_JSON, {} };
static const VerbOption options_none[] = { {} };

static const VerbOption options_create_image[] = {
        { OPTION_TEMPLATE, "--template=TEMPLATE", N_("Content: blank (the default) or swap (a Linux swap signature)") },
        { OPTION_CLUSTER_SIZE, "--cluster-size=SIZE", N_("Cluster size of a qcow2 image, e.g. 64K") },
        VERB_OPTION_JSON,
        {}
};

static const VerbOption options_job[] = { VERB_OPTION_NO_WAIT, VERB_OPTION_JSON, {} };

static const VerbOption options_create_vm[] = {
        { OPTION_OWNER, "--owner=USER", N_("Owner of the VM, a user name or uid (default: the calling user)") },
        {}
};

static const VerbOption options_create_disk[] = {
        { OPTION_IMAGE, "--image=NAME", N_("Catalog image to base the disk on") },
        { OPTION_SIZE, "--size=SIZE", N_("Virtual size: required for a blank disk; with --image, at least the image's size") },
        { OPTION_MODE, "--mode=MODE", N_("With --image: overlay (the default; a qcow2 overlay on the image) or copy") },
        { OPTION_FORMAT, "--format=FORMAT", N_("Format of a blank disk: qcow2 (the default) or raw") },
        { OPTION_DATA_FILE, "--data-file", N_("Keep the guest data of the new qcow2 layer in a separate raw data file") },
        { OPTION_DATA_FILE_RAW, "--data-file-raw", N_("With --data-file, for a blank disk: the data file alone is a valid raw image") },
        {}
};

static const VerbOption options_rebase[] = {
        { OPTION_UNSAFE, "--unsafe", N_("Rewrite the header only, without copying data (root only)") },
        VERB_OPTION_NO_WAIT,
        VERB_OPTION_JSON,
        {}
};

static const VerbOption options_adopt[] = {
        { OPTION_MOVE, "--move", N_("Move the files into the store instead of copying them (same file system only)") },
        VERB_OPTION_JSON,
        {}
};

static const VerbOption options_open[] = {
        { OPTION_READ_ONLY, "--read-only", N_("Open every layer read-only; read-only leases of a disk may coexist") },
        { OPTION_PRINT, "--print", N_("Print the command line instead of running COMMAND, then end the lease") },
        { OPTION_EXPORT, "--export=TYPE", N_("Let vdiskd serve the disk through a socket: vhost-user-blk or nbd") },
        { OPTION_JSON, "--json[=MODE]", N_("Print JSON (MODE short: on one line); with --print, the arguments as a JSON array") },
        {}
};

static const VerbOption options_libvirt[] = {
        { OPTION_DOMAIN, "--domain=FILE", N_("start: the domain XML; its disks name vdisk disks as <source vdisk='DISK'/>") },
        { OPTION_CONNECT, "--connect=URI", N_("The libvirt connection URI (default: libvirt's default, qemu:///system for root)") },
        { OPTION_JSON, "--json[=MODE]", N_("start: print the domain's UUID and the holder's pids as JSON") },
        {}
};

static const VerbOption options_inspect[] = {
        { OPTION_FORMAT, "--format=FORMAT", N_("The format the file is declared to have: raw or qcow2 (required)") },
        { OPTION_JSON, "--json[=MODE]", N_("MODE short prints the JSON on one line") },
        {}
};

static const Verb verbs[] = {
        { "list-images", "", 0, 0, SECTION_IMAGES,
          /* TRANSLATORS: in the descriptions of the commands, the upper-case argument names of the usage
           * line (NAME, FORMAT, SIZE, FILE, VM, DISK, LAYER, BACKING, JOB, MODE) stay untranslated. */
          N_("List the catalog images"),
          N_("Shows the name, layer id, format, virtual size and allocated bytes of every catalog image."),
          options_table, verb_list_images },
        { "create-image", "NAME FORMAT SIZE", 3, 3, SECTION_IMAGES,
          N_("Create an empty catalog image"),
          N_("Creates catalog image NAME in FORMAT (raw or qcow2) with the virtual size SIZE, a multiple\n"
             "of 512 bytes, and prints its layer id."),
          options_create_image, verb_create_image },
        { "import", "NAME FORMAT FILE", 3, 3, SECTION_IMAGES,
          N_("Import a file as a new catalog image"),
          N_("Copies FILE into the new catalog image NAME. The content must be exactly FORMAT (raw or qcow2);\n"
             "a qcow2 file must be self-contained. vdiskctl opens FILE itself and passes it to vdiskd, then\n"
             "shows the progress of the import until it ends. Ctrl-C stops waiting but does not cancel the\n"
             "import; use 'vdiskctl cancel JOB' for that."),
          options_job, verb_import },
        { "delete-image", "NAME", 1, 1, SECTION_IMAGES,
          N_("Delete a catalog image"),
          N_("Deletes catalog image NAME. vdiskd refuses while a disk uses it."),
          options_none, verb_delete_image },
        { "list-vms", "", 0, 0, SECTION_VMS,
          N_("List the virtual machines"),
          N_("Shows the name and owner of every VM. A user who is not an administrator sees only their own VMs."),
          options_table, verb_list_vms },
        { "create-vm", "NAME", 1, 1, SECTION_VMS,
          N_("Create a virtual machine without disks"),
          N_("Creates VM NAME. It belongs to the calling user unless --owner says otherwise."),
          options_create_vm, verb_create_vm },
        { "delete-vm", "NAME", 1, 1, SECTION_VMS,
          N_("Delete a virtual machine and its disks"),
          N_("Deletes VM NAME and the private layers of its disks. vdiskd refuses while one of its disks is\n"
             "in use."),
          options_none, verb_delete_vm },
        { "list-disks", "VM", 1, 1, SECTION_DISKS,
          N_("List the disks of a virtual machine"),
          N_("Shows every disk of VM VM, sorted by name: the layer id and format of its active (top) layer,\n"
             "the number of layers of its chain and its virtual size. 'vdiskctl chain VM DISK' shows the\n"
             "layers themselves."),
          options_table, verb_list_disks },
        { "create-disk", "VM DISK", 2, 2, SECTION_DISKS,
          N_("Create a disk of a virtual machine"),
          N_("Creates disk DISK of VM VM: with --image, a qcow2 overlay on that catalog image (or a copy of\n"
             "it, with --mode=copy); without --image, a blank disk of --size."),
          options_create_disk, verb_create_disk },
        { "delete-disk", "VM DISK", 2, 2, SECTION_DISKS,
          N_("Delete a disk of a virtual machine"),
          N_("Deletes disk DISK of VM VM and its private layers; catalog images are kept."),
          options_none, verb_delete_disk },
        { "chain", "VM DISK", 2, 2, SECTION_DISKS,
          N_("Show the chain of layers of a disk"),
          N_("Draws the chain of disk DISK of VM VM as a tree, the active layer first and each backing layer\n"
             "below the layer it backs: layer id, format, virtual size, allocated bytes, and the name of a\n"
             "catalog image. With --json: every field of every layer, also its file in the store and the\n"
             "format of its backing layer."),
          options_table, verb_chain },
        { "snapshot", "VM DISK", 2, 2, SECTION_DISKS,
          N_("Take a snapshot of a disk"),
          N_("Adds a new qcow2 overlay as the active layer of disk DISK of VM VM and prints its layer id; the\n"
             "former active layer becomes read-only."),
          options_json, verb_snapshot },
        { "rebase", "VM DISK BACKING", 3, 3, SECTION_DISKS,
          N_("Change the backing layer of a disk"),
          N_("Makes BACKING, the layer id of a lower layer of the chain or of a catalog image, the backing\n"
             "layer of the active layer of disk DISK of VM VM. BACKING '' or 'none' flattens the disk, so that\n"
             "it has no backing layer. What the guest sees stays the same. Shows the progress until the job\n"
             "ends; Ctrl-C stops waiting but does not cancel the job."),
          options_rebase, verb_rebase },
        { "commit", "VM DISK LAYER", 3, 3, SECTION_DISKS,
          N_("Merge a layer into its backing layer"),
          N_("Merges the private layer LAYER of disk DISK of VM VM into its backing layer and removes it from\n"
             "the chain; catalog images are never changed. Shows the progress until the job ends; Ctrl-C stops\n"
             "waiting but does not cancel the job."),
          options_job, verb_commit },
        { "verify", "VM", 1, 1, SECTION_DISKS,
          N_("Compare a VM's records with its image headers"),
          N_("Reads the headers of all layers of all disks of VM VM and reports every difference from\n"
             "vdiskd's records. Exit status 0: no problems; 1: problems found (listed)."),
          options_table, verb_verify },
        { "xml", "VM DISK", 2, 2, SECTION_DISKS,
          N_("Print the libvirt XML of a disk"),
          N_("Prints the libvirt <disk> element of disk DISK of VM VM, with the complete chain of backing\n"
             "stores and their formats."),
          options_json, verb_xml },
        { "open", "VM DISK[,DISK...] [-- COMMAND...]", 2, UINT_MAX, SECTION_DISKS,
          N_("Run a hypervisor on disks, or hold their leases"),
          N_("Opens disk DISK of VM VM through vdiskd and takes a lease on it: vdiskd passes the files of the\n"
             "chain as file descriptors (the active layer read-write unless --read-only, the others read-only)\n"
             "and describes them as QEMU -blockdev nodes. While a read-write lease is held, the disk cannot be\n"
             "changed or deleted (InUse). Several disks of the VM, separated by commas, are opened one after\n"
             "the other for one hypervisor: the fd sets and the inner node names of the second and later disks\n"
             "are renumbered so that they do not collide; each disk's top node keeps the disk's name.\n"
             "\n"
             "With COMMAND, vdiskctl becomes COMMAND (exec) and appends '-add-fd fd=N,set=I' for every file\n"
             "descriptor and '-blockdev JSON' for every node, e.g.\n"
             "  vdiskctl open vm1 root,data -- qemu-system-x86_64 -m 2G \\\n"
             "      -device virtio-blk-pci,drive=root -device virtio-blk-pci,drive=data\n"
             "COMMAND inherits the bus connection that holds the leases, so they live as long as the\n"
             "launched process: they end when COMMAND exits. The exit status is then that of COMMAND; 4 if\n"
             "COMMAND cannot be started. With --print, vdiskctl prints the command line instead, one argument\n"
             "per line and quoted for the shell, and exits: the leases end then, and with them the file\n"
             "descriptors the command line names.\n"
             "\n"
             "With --export=TYPE, vdiskd serves each disk itself through a storage helper and passes one socket\n"
             "per disk instead of the files; COMMAND is written as above. nbd: vdiskctl appends '-blockdev JSON',\n"
             "an nbd node named DISK on the socket. vhost-user-blk: vdiskctl appends '-chardev\n"
             "socket,id=DISK,fd=N', turns '-device virtio-blk-pci,drive=DISK,...' into '-device\n"
             "vhost-user-blk-pci,chardev=DISK,config-wce=off,...' (a property vhost-user-blk-pci does not have\n"
             "is an error) and, unless COMMAND sets -machine memory-backend=, shares the guest's memory (the size\n"
             "of -m, 128M without) with the helper: '-object memory-backend-memfd,id=vdisk-mem,size=BYTES,\n"
             "share=on -machine memory-backend=vdisk-mem'. A backend of COMMAND's own must have share=on.\n"
             "\n"
             "Without COMMAND, vdiskctl prints the nodes and its file descriptors as JSON (one object per disk,\n"
             "in an array when there are several; with --export, the socket's fd and vdiskd's description of\n"
             "how to attach it) and holds the leases until Ctrl-C (SIGINT) or SIGTERM, then releases them."),
          options_open, verb_open },
        { "adopt", "VM FILE", 2, 2, SECTION_DISKS,
          N_("Take an existing disk chain into the store"),
          N_("Reads the libvirt <disk> element in FILE (- for standard input) and takes its chain into the\n"
             "store as a disk of VM VM. Every layer must name its format, and the chain must end in\n"
             "<backingStore/>. The files are checked and copied; prints the name of the new disk. Root only."),
          options_adopt, verb_adopt },
        { "libvirt", "start VM|stop DOMAIN", 2, 2, SECTION_DISKS,
          N_("Run a libvirt domain on vdisk disks"),
          N_("'libvirt start VM --domain=FILE' starts the libvirt domain of FILE on disks of VM VM. Each <disk>\n"
             "of FILE whose <source> has the attribute vdisk='DISK' (e.g. <disk type='file' device='disk'>\n"
             "<source vdisk='root'/><target dev='vda' bus='virtio'/></disk>) is opened through vdiskd\n"
             "(read-only with <readonly/>) and rewritten into its complete chain of layers, passed to libvirt\n"
             "as file descriptors (fdgroup): libvirt and QEMU never open or chown the store's files. The\n"
             "domain is defined (replacing an inactive definition of the same name) and started; libvirt\n"
             "9.0.0 or newer is needed. A holder process keeps the leases for exactly the domain's lifetime:\n"
             "when the domain stops, crashes or is destroyed, it releases them (vdiskd checks the headers\n"
             "again) and exits. If the holder dies, its guardian process destroys the domain before the leases\n"
             "end; if vdiskd stops, the holder destroys the domain. The holder logs to syslog.\n"
             "\n"
             "'libvirt stop DOMAIN' destroys the running domain DOMAIN (like 'virsh destroy') and waits until\n"
             "its holder has released the leases."),
          options_libvirt, verb_libvirt },
        { "jobs", "", 0, 0, SECTION_JOBS,
          N_("List the jobs"),
          N_("Shows every job with its operation, VM, disk, state and progress."),
          options_table, verb_jobs },
        { "cancel", "JOB", 1, 1, SECTION_JOBS,
          N_("Cancel a job"),
          N_("Cancels JOB, given as its id (see 'vdiskctl jobs') or as its object path."),
          options_none, verb_cancel },
        { "inspect", "FILE", 1, 1, SECTION_OTHER,
          N_("Describe an image file"),
          N_("Passes FILE to vdiskd, which describes it as JSON with the key names of 'qemu-img info' plus its\n"
             "verdict (\"valid\", \"problems\"). vdiskd reads the file only through the passed descriptor and\n"
             "opens nothing the image refers to."),
          options_inspect, verb_inspect },
        { "status", "", 0, 0, SECTION_OTHER,
          N_("Show the version and settings of vdiskd"),
          N_("Shows the version of vdiskd, its store directory and the maximum depth of a chain."),
          options_json, verb_status },
        { "help", "[COMMAND]", 0, 1, SECTION_OTHER,
          N_("Show this help, or the help of a command"),
          NULL,
          options_none, verb_help },
};

static const Verb *verb_find(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (streq(verbs[i].name, name))
                        return verbs + i;
        return NULL;
}

static unsigned verb_option_mask(const Verb *verb) {
        unsigned mask = 0;

        for (const VerbOption *o = verb->options; o->flag != 0; o++)
                mask |= o->flag;
        return mask;
}

static void print_option(const char *synopsis, const char *help) {
        /* Long-only options line up with the long form of "-h --help". */
        const char *indent = synopsis[0] == '-' && synopsis[1] == '-' ? "   " : "";
        int pad = HELP_COLUMN - (int) (strlen(indent) + strlen(synopsis));

        printf("  %s%s%*s %s\n", indent, synopsis, MAX(pad, 1), "", help);
}

/* "create-image NAME FORMAT SIZE", or just "status" for a command without arguments. */
static const char *verb_synopsis(const Verb *v, char *buf, size_t size) {
        (void) snprintf(buf, size, "%s%s%s", v->name, isempty(v->args) ? "" : " ", v->args);
        return buf;
}

static void help_main(void) {
        size_t width = 0;

        printf(_("Usage: vdiskctl [OPTIONS...] COMMAND [ARGUMENTS...]\n"));
        putchar('\n');
        printf(_("Manages the disk images of virtual machines through the vdisk service (vdiskd).\n"));

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                char synopsis[VERB_SYNOPSIS_MAX];

                width = MAX(width, strlen(verb_synopsis(verbs + i, synopsis, sizeof(synopsis))));
        }

        for (VerbSection s = 0; s < _SECTION_MAX; s++) {
                printf("\n%s%s%s\n", ansi_bold(stdout), _(section_titles[s]), ansi_normal(stdout));
                for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                        const Verb *v = verbs + i;

                        if (v->section != s)
                                continue;
                        char synopsis[VERB_SYNOPSIS_MAX];

                        printf("  %-*s  %s\n", (int) width, verb_synopsis(v, synopsis, sizeof(synopsis)),
                               _(v->summary));
                }
        }

        printf("\n%s%s%s\n", ansi_bold(stdout), _("Options:"), ansi_normal(stdout));
        print_option("-h --help", _("Show this help; after a command, the help of that command"));
        print_option("--version", _("Show the version"));
        print_option("--json[=MODE]", _("Print JSON instead of text (MODE: pretty, the default, or short)"));
        print_option("--no-legend", _("Print only the table rows, without header and footer"));

        putchar('\n');
        printf(_("SIZE is a number of bytes, optionally with a binary suffix K, M, G or T (e.g. 20G).\n"
                 "Run 'vdiskctl COMMAND --help' for the arguments and options of a command.\n"));

        printf("\n%s%s%s\n", ansi_bold(stdout), _("Exit status:"), ansi_normal(stdout));
        printf(_("  0  success\n"
                 "  1  'verify' found problems\n"
                 "  2  usage error: bad arguments or an unknown command\n"
                 "  3  vdiskd refused the request: an org.vdisk1.Error other than NoSpace, or\n"
                 "     org.freedesktop.DBus.Error.AccessDenied or InvalidArgs\n"
                 "  4  any other failure: no connection to the bus or to vdiskd, a file that cannot be\n"
                 "     read, NoSpace, an unexpected error, or Ctrl-C while waiting for a job (the job\n"
                 "     keeps running)\n"));
}

static void help_verb(const Verb *v) {
        char synopsis[VERB_SYNOPSIS_MAX];
        const char *command = strstr(v->args, " [-- ");

        /* Options go before "--": what follows it belongs to the command that is run. */
        if (command)
                printf(_("Usage: vdiskctl %s %.*s [OPTIONS...] %s\n"), v->name, (int) (command - v->args), v->args,
                       command + 1);
        else
                printf(_("Usage: vdiskctl %s [OPTIONS...]\n"), verb_synopsis(v, synopsis, sizeof(synopsis)));
        putchar('\n');
        printf("%s.\n", _(v->summary));
        if (v->description)
                printf("\n%s\n", _(v->description));

        printf("\n%s%s%s\n", ansi_bold(stdout), _("Options:"), ansi_normal(stdout));
        print_option("-h --help", _("Show this help"));
        for (const VerbOption *o = v->options; o->flag != 0; o++)
                print_option(o->synopsis, _(o->help));

        putchar('\n');
        printf(_("See 'vdiskctl --help' for the exit status.\n"));
}

static int verb_help(int argc, char *argv[]) {
        const Verb *v;

        if (argc < 2) {
                help_main();
                return EXIT_OK;
        }

        v = verb_find(argv[1]);
        if (!v) {
                log_usage(NULL, _("Unknown command '%s'."), argv[1]);
                return EXIT_USAGE;
        }
        help_verb(v);
        return EXIT_OK;
}

static int parse_enum_option(const char *option, const char *value, const char *a, const char *b) {
        if (streq(value, a) || streq(value, b))
                return 0;
        log_usage(NULL, _("Invalid value '%s' for %s: use %s or %s."), value, option, a, b);
        return -EINVAL;
}

/* Returns 1 to run *ret_verb with the arguments from optind on, 0 when done (help, version), or
 * -EINVAL after printing a usage error. */
static int parse_argv(int argc, char *argv[], const Verb **ret_verb) {
        enum {
                ARG_VERSION = 0x100,
                ARG_JSON,
                ARG_NO_LEGEND,
                ARG_TEMPLATE,
                ARG_CLUSTER_SIZE,
                ARG_NO_WAIT,
                ARG_OWNER,
                ARG_IMAGE,
                ARG_SIZE,
                ARG_MODE,
                ARG_FORMAT,
                ARG_UNSAFE,
                ARG_MOVE,
                ARG_READ_ONLY,
                ARG_PRINT,
                ARG_DATA_FILE,
                ARG_DATA_FILE_RAW,
                ARG_DOMAIN,
                ARG_CONNECT,
                ARG_EXPORT,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "json", optional_argument, NULL, ARG_JSON },
                { "no-legend", no_argument, NULL, ARG_NO_LEGEND },
                { "template", required_argument, NULL, ARG_TEMPLATE },
                { "cluster-size", required_argument, NULL, ARG_CLUSTER_SIZE },
                { "no-wait", no_argument, NULL, ARG_NO_WAIT },
                { "owner", required_argument, NULL, ARG_OWNER },
                { "image", required_argument, NULL, ARG_IMAGE },
                { "size", required_argument, NULL, ARG_SIZE },
                { "mode", required_argument, NULL, ARG_MODE },
                { "format", required_argument, NULL, ARG_FORMAT },
                { "unsafe", no_argument, NULL, ARG_UNSAFE },
                { "move", no_argument, NULL, ARG_MOVE },
                { "read-only", no_argument, NULL, ARG_READ_ONLY },
                { "print", no_argument, NULL, ARG_PRINT },
                { "data-file", no_argument, NULL, ARG_DATA_FILE },
                { "data-file-raw", no_argument, NULL, ARG_DATA_FILE_RAW },
                { "domain", required_argument, NULL, ARG_DOMAIN },
                { "connect", required_argument, NULL, ARG_CONNECT },
                { "export", required_argument, NULL, ARG_EXPORT },
                {}
        };
        const Verb *verb;
        unsigned extra, n_args;
        uint64_t u;
        int c, r;

        opterr = 0; /* our own, translated messages */

        while ((c = getopt_long(argc, argv, ":h", options, NULL)) >= 0)
                switch (c) {

                case 'h':
                        arg_help = true;
                        break;

                case ARG_VERSION:
                        arg_version = true;
                        break;

                case ARG_JSON:
                        arg_seen |= OPTION_JSON;
                        if (!optarg) {
                                arg_json = JSON_PRETTY;
                                break;
                        }
                        arg_json = json_mode_from_string(optarg);
                        if (arg_json < 0) {
                                log_usage(NULL, _("Invalid value '%s' for --json: use pretty, short or off."), optarg);
                                return -EINVAL;
                        }
                        break;

                case ARG_NO_LEGEND:
                        arg_seen |= OPTION_NO_LEGEND;
                        arg_legend = false;
                        break;

                case ARG_TEMPLATE:
                        arg_seen |= OPTION_TEMPLATE;
                        if (parse_enum_option("--template", optarg, "blank", "swap") < 0)
                                return -EINVAL;
                        arg_template = optarg;
                        break;

                case ARG_CLUSTER_SIZE:
                        arg_seen |= OPTION_CLUSTER_SIZE;
                        r = parse_size(optarg, &u);
                        if (r < 0 || u == 0 || u > UINT32_MAX) {
                                log_usage(NULL, _("Invalid cluster size '%s': give a power of two from 512 to 2M, e.g. 64K."), optarg);
                                return -EINVAL;
                        }
                        arg_cluster_size = (uint32_t) u;
                        break;

                case ARG_NO_WAIT:
                        arg_seen |= OPTION_NO_WAIT;
                        arg_no_wait = true;
                        break;

                case ARG_OWNER:
                        arg_seen |= OPTION_OWNER;
                        r = parse_uid(optarg, &arg_owner);
                        if (r < 0) {
                                log_usage(NULL, _("Invalid owner '%s': give an existing user name or a uid."), optarg);
                                return -EINVAL;
                        }
                        break;

                case ARG_IMAGE:
                        arg_seen |= OPTION_IMAGE;
                        if (isempty(optarg)) {
                                log_usage(NULL, _("--image needs the name of a catalog image."));
                                return -EINVAL;
                        }
                        arg_image = optarg;
                        break;

                case ARG_SIZE:
                        arg_seen |= OPTION_SIZE;
                        if (parse_size_or_log(NULL, optarg, &arg_size) < 0)
                                return -EINVAL;
                        break;

                case ARG_MODE:
                        arg_seen |= OPTION_MODE;
                        if (parse_enum_option("--mode", optarg, "overlay", "copy") < 0)
                                return -EINVAL;
                        arg_mode = optarg;
                        break;

                case ARG_FORMAT:
                        arg_seen |= OPTION_FORMAT;
                        if (parse_enum_option("--format", optarg, "qcow2", "raw") < 0)
                                return -EINVAL;
                        arg_format = optarg;
                        break;

                case ARG_UNSAFE:
                        arg_seen |= OPTION_UNSAFE;
                        arg_unsafe = true;
                        break;

                case ARG_MOVE:
                        arg_seen |= OPTION_MOVE;
                        arg_move = true;
                        break;

                case ARG_DATA_FILE:
                        arg_seen |= OPTION_DATA_FILE;
                        arg_data_file = true;
                        break;

                case ARG_DATA_FILE_RAW:
                        arg_seen |= OPTION_DATA_FILE_RAW;
                        arg_data_file_raw = true;
                        break;

                case ARG_DOMAIN:
                        arg_seen |= OPTION_DOMAIN;
                        if (isempty(optarg)) {
                                log_usage(NULL, _("--domain needs the name of a domain XML file."));
                                return -EINVAL;
                        }
                        arg_domain = optarg;
                        break;

                case ARG_CONNECT:
                        arg_seen |= OPTION_CONNECT;
                        if (isempty(optarg)) {
                                log_usage(NULL, _("--connect needs a libvirt URI."));
                                return -EINVAL;
                        }
                        arg_connect = optarg;
                        break;

                case ARG_EXPORT:
                        arg_seen |= OPTION_EXPORT;
                        if (parse_enum_option("--export", optarg, "vhost-user-blk", "nbd") < 0)
                                return -EINVAL;
                        arg_export = optarg;
                        break;

                case ARG_READ_ONLY:
                        arg_seen |= OPTION_READ_ONLY;
                        arg_read_only = true;
                        break;

                case ARG_PRINT:
                        arg_seen |= OPTION_PRINT;
                        arg_print = true;
                        break;

                case ':':
                        log_usage(NULL, _("Option '%s' needs a value."), argv[optind - 1]);
                        return -EINVAL;

                case '?':
                        if (optopt > 0 && optopt < 0x100)
                                log_usage(NULL, _("Unknown option '-%c'."), optopt);
                        else
                                log_usage(NULL, _("Unknown option '%s'."), argv[optind - 1]);
                        return -EINVAL;

                default:
                        return -EINVAL;
                }

        if (arg_version) {
                printf("vdiskctl %s\n", PACKAGE_VERSION);
                return 0;
        }

        if (optind >= argc) {
                if (arg_help) {
                        help_main();
                        return 0;
                }
                log_usage(NULL, _("No command given."));
                return -EINVAL;
        }

        verb = verb_find(argv[optind]);
        if (!verb) {
                log_usage(NULL, _("Unknown command '%s'."), argv[optind]);
                return -EINVAL;
        }

        if (arg_help) {
                help_verb(verb);
                return 0;
        }

        extra = arg_seen & ~(verb_option_mask(verb) | OPTIONS_GLOBAL);
        for (size_t i = 0; i < ELEMENTSOF(option_names); i++)
                if (extra & option_names[i].flag) {
                        log_usage(verb->name, _("Option %s cannot be used with '%s'."), option_names[i].name, verb->name);
                        return -EINVAL;
                }

        n_args = (unsigned) (argc - optind - 1);
        if (n_args < verb->min_args || n_args > verb->max_args) {
                char synopsis[VERB_SYNOPSIS_MAX];

                log_usage(verb->name, _("Wrong number of arguments for '%s'. Usage: vdiskctl %s"),
                          verb->name, verb_synopsis(verb, synopsis, sizeof(synopsis)));
                return -EINVAL;
        }

        *ret_verb = verb;
        return 1;
}

int main(int argc, char *argv[]) {
        const Verb *verb = NULL;
        const char *localedir;
        int r;

        (void) setlocale(LC_ALL, "");
        /* Tests point this at the freshly built catalogs in build/po/. */
        localedir = secure_getenv("VDISKCTL_LOCALEDIR");
        (void) bindtextdomain(GETTEXT_PACKAGE, isempty(localedir) ? LOCALEDIR : localedir);
        (void) textdomain(GETTEXT_PACKAGE);

        r = parse_argv(argc, argv, &verb);
        if (r <= 0)
                return r < 0 ? EXIT_USAGE : EXIT_OK;

        r = verb->run(argc - optind, argv + optind);
        if (r < 0)
                r = EXIT_ERROR;

        if (fflush(stdout) != 0 || ferror(stdout)) {
                log_error(_("Failed to write the output."));
                if (r == EXIT_OK)
                        r = EXIT_ERROR;
        }

        return r;
}
