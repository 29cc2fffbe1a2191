/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * vdisk-img: the format engine on the command line, for developers, tests and the demo. It never
 * decides a format from content: every command that reads an image takes --format.
 *
 *   vdisk-img info --format=F [--check] FILE
 *   vdisk-img check FILE                       (qcow2; exit 0 clean, 2 corruptions, 3 leaks only)
 *   vdisk-img map --format=F FILE
 *   vdisk-img probe --format=F FILE            (exit 0 exact match, 1 refused)
 *   vdisk-img create --format=F [--cluster-size=N] [--backing=NAME --backing-format=F]
 *                    [--data-file=NAME [--data-file-raw]] [--template=blank|swap] FILE SIZE
 *   vdisk-img set-backing FILE [NAME FORMAT]
 */

#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "describe.h"
#include "probe.h"
#include "qcow2.h"

enum {
        ARG_FORMAT = 0x100,
        ARG_CHECK,
        ARG_CLUSTER_SIZE,
        ARG_BACKING,
        ARG_BACKING_FORMAT,
        ARG_DATA_FILE,
        ARG_DATA_FILE_RAW,
        ARG_TEMPLATE,
};

static ImageFormat arg_format = _IMAGE_FORMAT_INVALID;
static bool arg_check;
static uint64_t arg_cluster_size;
static const char *arg_backing, *arg_backing_format, *arg_data_file, *arg_template = "blank";
static bool arg_data_file_raw;

static int print_json(struct json_object *o) {
        puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(o);
        return 0;
}

static int open_image(const char *path, int flags) {
        /* A created image gets 0666 minus the umask, like any file a tool creates (without the mode
         * argument, open() with O_CREAT takes whatever is on the stack). */
        int fd = open(path, flags | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW, 0666);
        if (fd < 0)
                fprintf(stderr, "vdisk-img: cannot open %s: %s\n", path, strerror(errno));
        return fd;
}

static int need_format(void) {
        if (arg_format < 0) {
                fprintf(stderr, "vdisk-img: --format=raw|qcow2 is required: formats are never guessed\n");
                return -EINVAL;
        }
        return 0;
}

static int fail(const FormatError *err, int r) {
        fprintf(stderr, "vdisk-img: %s (%s)\n", err->code ? err->reason : strerror(-r), format_errno_class(r));
        return r;
}

static int cmd_info(const char *path) {
        _cleanup_close_ int fd = -EBADF;
        DescribeOptions opts = { .check = arg_check };
        struct json_object *o;
        int r;

        if (need_format() < 0)
                return -EINVAL;
        fd = open_image(path, O_RDONLY);
        if (fd < 0)
                return -errno;
        r = image_describe(fd, arg_format, &opts, &o);
        if (r < 0) {
                fprintf(stderr, "vdisk-img: cannot describe %s: %s\n", path, strerror(-r));
                return r;
        }
        return print_json(o);
}

static int cmd_check(const char *path) {
        _cleanup_close_ int fd = -EBADF;
        FormatError err = {};
        Qcow2CheckResult res = {};
        Qcow2Header h;
        struct json_object *o, *problems;
        int r;

        fd = open_image(path, O_RDONLY);
        if (fd < 0)
                return -errno;
        r = qcow2_header_read(fd, NULL, &h, &err);
        if (r < 0)
                return fail(&err, r);
        r = qcow2_check(fd, &h, NULL, &res, &err);
        if (r < 0)
                return fail(&err, r);

        o = json_object_new_object();
        problems = json_object_new_array();
        json_object_object_add(o, "corruptions", json_object_new_int64((int64_t) res.corruptions));
        json_object_object_add(o, "leaks", json_object_new_int64((int64_t) res.leaks));
        json_object_object_add(o, "allocated-clusters", json_object_new_int64((int64_t) res.allocated_clusters));
        json_object_object_add(o, "l2-tables-read", json_object_new_int64((int64_t) res.l2_tables_read));
        for (uint64_t i = 0; i < res.n_problems; i++) {
                struct json_object *p = json_object_new_object();
                json_object_object_add(p, "kind", json_object_new_string(qcow2_problem_kind_to_string(res.problems[i].kind)));
                json_object_object_add(p, "offset", json_object_new_int64((int64_t) res.problems[i].offset));
                json_object_object_add(p, "text", json_object_new_string(res.problems[i].text));
                json_object_array_add(problems, p);
        }
        json_object_object_add(o, "problems", problems);
        print_json(o);

        r = res.corruptions > 0 ? 2 : res.leaks > 0 ? 3 : 0;
        qcow2_check_result_done(&res);
        return r;
}

static int cmd_map(const char *path) {
        _cleanup_close_ int fd = -EBADF;
        FormatError err = {};
        ExtentMap m = {};
        int r;

        if (need_format() < 0)
                return -EINVAL;
        fd = open_image(path, O_RDONLY);
        if (fd < 0)
                return -errno;

        if (arg_format == IMAGE_FORMAT_QCOW2) {
                Qcow2Header h;

                r = qcow2_header_read(fd, NULL, &h, &err);
                if (r < 0)
                        return fail(&err, r);
                r = qcow2_map(fd, &h, &m, &err);
                if (r < 0)
                        return fail(&err, r);
        } else {
                off_t size = lseek(fd, 0, SEEK_END);
                if (size < 0)
                        return -errno;
                r = raw_map(fd, (uint64_t) size, &m);
                if (r < 0)
                        return fail(&err, r);
        }
        print_json(extent_map_to_json(&m));
        extent_map_done(&m);
        return 0;
}

static int cmd_probe(const char *path) {
        _cleanup_close_ int fd = -EBADF;
        FormatError err = {};
        unsigned mask = 0;
        struct json_object *o, *a;
        int r;

        if (need_format() < 0)
                return -EINVAL;
        fd = open_image(path, O_RDONLY);
        if (fd < 0)
                return -errno;
        r = probe_fd(fd, arg_format, &mask, &err);
        if (r < 0 && r != -EBADMSG && r != -EMEDIUMTYPE)
                return fail(&err, r);

        o = json_object_new_object();
        a = json_object_new_array();
        for (unsigned s = 0; s < _PROBE_SIGNATURE_MAX; s++)
                if (mask & (1U << s))
                        json_object_array_add(a, json_object_new_string(probe_signature_to_string(s)));
        json_object_object_add(o, "matches", json_object_new_boolean(r == 0));
        json_object_object_add(o, "signatures", a);
        if (r < 0)
                json_object_object_add(o, "reason", json_object_new_string(err.reason));
        print_json(o);
        return r < 0 ? 1 : 0;
}

static int parse_size(const char *s, uint64_t *ret) {
        char *end;
        unsigned long long v;
        uint64_t mul = 1;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0 || end == s)
                return -EINVAL;
        switch (*end) {
        case 0:
                break;
        case 'K': mul = UINT64_C(1) << 10; end++; break;
        case 'M': mul = UINT64_C(1) << 20; end++; break;
        case 'G': mul = UINT64_C(1) << 30; end++; break;
        case 'T': mul = UINT64_C(1) << 40; end++; break;
        default:
                return -EINVAL;
        }
        if (*end != 0 || MUL_OVERFLOW((uint64_t) v, mul, ret))
                return -EINVAL;
        return 0;
}

static int cmd_create(const char *path, const char *size_arg) {
        _cleanup_close_ int fd = -EBADF;
        FormatError err = {};
        uint8_t page[SWAP_PAGE_SIZE], uuid[16] = {};
        const uint8_t *initial = NULL;
        size_t initial_size = 0;
        uint64_t size;
        int r;

        if (need_format() < 0)
                return -EINVAL;
        if (parse_size(size_arg, &size) < 0) {
                fprintf(stderr, "vdisk-img: invalid size\n");
                return -EINVAL;
        }
        if (strcmp(arg_template, "swap") == 0) {
                if (getrandom(uuid, sizeof(uuid), 0) != sizeof(uuid))
                        return -errno;
                if (swap_signature_build(size, uuid, page) < 0) {
                        fprintf(stderr, "vdisk-img: a swap area needs at least %u pages\n", SWAP_MIN_PAGES);
                        return -EINVAL;
                }
                initial = page;
                initial_size = sizeof(page);
        } else if (strcmp(arg_template, "blank") != 0) {
                fprintf(stderr, "vdisk-img: unknown template\n");
                return -EINVAL;
        }

        fd = open_image(path, O_RDWR | O_CREAT | O_EXCL);
        if (fd < 0)
                return -errno;

        if (arg_format == IMAGE_FORMAT_QCOW2) {
                Qcow2CreateParams p = {
                        .size = size,
                        .backing_file = arg_backing,
                        .backing_format = arg_backing_format,
                        .data_file = arg_data_file,
                        .data_file_raw = arg_data_file_raw,
                        .initial_data = initial,
                        .initial_data_size = initial_size,
                };
                if (arg_cluster_size) {
                        if (arg_cluster_size & (arg_cluster_size - 1)) {
                                fprintf(stderr, "vdisk-img: cluster size must be a power of two\n");
                                (void) unlink(path);
                                return -EINVAL;
                        }
                        p.cluster_bits = (uint32_t) __builtin_ctzll(arg_cluster_size);
                }
                r = qcow2_create(fd, &p, &err);
        } else
                r = raw_create(fd, size, initial, initial_size, &err);
        if (r >= 0 && fsync(fd) < 0)
                r = format_error(&err, negative_errno(), "cannot flush the image");
        if (r < 0) {
                (void) unlink(path);
                return fail(&err, r);
        }
        return 0;
}

static int cmd_set_backing(const char *path, const char *name, const char *format) {
        _cleanup_close_ int fd = -EBADF;
        FormatError err = {};
        int r;

        fd = open_image(path, O_RDWR);
        if (fd < 0)
                return -errno;
        r = qcow2_set_backing(fd, name, format, &err);
        if (r < 0)
                return fail(&err, r);
        return 0;
}

static void help(void) {
        printf("Usage: vdisk-img COMMAND ...\n\n"
               "  info --format=F [--check] FILE\n"
               "  check FILE\n"
               "  map --format=F FILE\n"
               "  probe --format=F FILE\n"
               "  create --format=F [--cluster-size=N] [--backing=NAME --backing-format=F]\n"
               "         [--data-file=NAME [--data-file-raw]] [--template=blank|swap] FILE SIZE\n"
               "  set-backing FILE [NAME FORMAT]\n");
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "format", required_argument, NULL, ARG_FORMAT },
                { "check", no_argument, NULL, ARG_CHECK },
                { "cluster-size", required_argument, NULL, ARG_CLUSTER_SIZE },
                { "backing", required_argument, NULL, ARG_BACKING },
                { "backing-format", required_argument, NULL, ARG_BACKING_FORMAT },
                { "data-file", required_argument, NULL, ARG_DATA_FILE },
                { "data-file-raw", no_argument, NULL, ARG_DATA_FILE_RAW },
                { "template", required_argument, NULL, ARG_TEMPLATE },
                {}
        };
        const char *cmd;
        int c, r;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_FORMAT:
                        arg_format = image_format_from_string(optarg);
                        if (arg_format < 0) {
                                fprintf(stderr, "vdisk-img: unknown format\n");
                                return 1;
                        }
                        break;
                case ARG_CHECK:
                        arg_check = true;
                        break;
                case ARG_CLUSTER_SIZE:
                        if (parse_size(optarg, &arg_cluster_size) < 0) {
                                fprintf(stderr, "vdisk-img: invalid cluster size\n");
                                return 1;
                        }
                        break;
                case ARG_BACKING:
                        arg_backing = optarg;
                        break;
                case ARG_BACKING_FORMAT:
                        arg_backing_format = optarg;
                        break;
                case ARG_DATA_FILE:
                        arg_data_file = optarg;
                        break;
                case ARG_DATA_FILE_RAW:
                        arg_data_file_raw = true;
                        break;
                case ARG_TEMPLATE:
                        arg_template = optarg;
                        break;
                default:
                        return 1;
                }

        if (optind >= argc) {
                help();
                return 1;
        }
        cmd = argv[optind++];
        argc -= optind;
        argv += optind;

        if (strcmp(cmd, "info") == 0 && argc == 1)
                r = cmd_info(argv[0]);
        else if (strcmp(cmd, "check") == 0 && argc == 1)
                r = cmd_check(argv[0]);
        else if (strcmp(cmd, "map") == 0 && argc == 1)
                r = cmd_map(argv[0]);
        else if (strcmp(cmd, "probe") == 0 && argc == 1)
                r = cmd_probe(argv[0]);
        else if (strcmp(cmd, "create") == 0 && argc == 2)
                r = cmd_create(argv[0], argv[1]);
        else if (strcmp(cmd, "set-backing") == 0 && (argc == 1 || argc == 3))
                r = cmd_set_backing(argv[0], argc == 3 ? argv[1] : NULL, argc == 3 ? argv[2] : NULL);
        else {
                help();
                return 1;
        }
        return r < 0 ? 1 : r;
}
