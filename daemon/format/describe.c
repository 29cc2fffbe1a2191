/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <sys/stat.h>

#include "describe.h"
#include "probe.h"

static void add_problem(struct json_object *problems, const char *text) {
        json_object_array_add(problems, json_object_new_string(text));
}

static struct json_object *qcow2_specific(const Qcow2Header *h) {
        struct json_object *data = json_object_new_object(), *spec = json_object_new_object();

        json_object_object_add(data, "compat", json_object_new_string(h->version >= 3 ? "1.1" : "0.10"));
        json_object_object_add(data, "compression-type",
                               json_object_new_string(h->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd" : "zlib"));
        json_object_object_add(data, "lazy-refcounts",
                               json_object_new_boolean(h->compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS));
        json_object_object_add(data, "refcount-bits", json_object_new_int64(qcow2_refcount_bits(h)));
        json_object_object_add(data, "corrupt", json_object_new_boolean(h->incompatible_features & QCOW2_INCOMPAT_CORRUPT));
        json_object_object_add(data, "extended-l2", json_object_new_boolean(h->incompatible_features & QCOW2_INCOMPAT_EXTL2));
        if (h->has_data_file_name)
                json_object_object_add(data, "data-file", json_object_new_string(h->data_file));
        if (h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE)
                json_object_object_add(data, "data-file-raw",
                                       json_object_new_boolean(h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW));
        if (h->crypt_method != QCOW2_CRYPT_NONE)
                json_object_object_add(data, "encrypt-method",
                                       json_object_new_string(h->crypt_method == QCOW2_CRYPT_LUKS ? "luks" : "aes"));

        json_object_object_add(spec, "type", json_object_new_string("qcow2"));
        json_object_object_add(spec, "data", data);
        return spec;
}

static int describe_qcow2(int fd, const DescribeOptions *opts, struct json_object *obj, struct json_object *problems,
                          bool *valid) {
        Qcow2Header h;
        FormatError err = {};
        int r;

        r = qcow2_header_read(fd, &opts->limits, &h, &err);
        if (r < 0) {
                if (err.code == -EBADF || err.code == -EIO)
                        return r;
                add_problem(problems, err.reason);
                json_object_object_add(obj, "error-class", json_object_new_string(format_errno_class(r)));
                *valid = false;
                return 0;
        }

        json_object_object_add(obj, "virtual-size", json_object_new_int64((int64_t) h.size));
        json_object_object_add(obj, "cluster-size", json_object_new_int64((int64_t) h.cluster_size));
        if (h.has_backing_file)
                json_object_object_add(obj, "backing-filename", json_object_new_string(h.backing_file));
        if (h.has_backing_format)
                json_object_object_add(obj, "backing-filename-format", json_object_new_string(h.backing_format));
        json_object_object_add(obj, "dirty-flag", json_object_new_boolean(h.incompatible_features & QCOW2_INCOMPAT_DIRTY));
        json_object_object_add(obj, "format-specific", qcow2_specific(&h));
        json_object_object_add(obj, "encrypted", json_object_new_boolean(h.crypt_method != QCOW2_CRYPT_NONE));

        /* The same refusals as ImportImage's (op_validate_upload): Inspect and Import agree. */
        if (qcow2_header_verdict(&h, &err) < 0) {
                add_problem(problems, err.reason);
                *valid = false;
                err = (FormatError) {};
        }

        if (opts->check) {
                Qcow2CheckResult res = {};
                struct json_object *check = json_object_new_object();

                r = qcow2_check(fd, &h, &opts->limits, &res, &err);
                if (r < 0) {
                        json_object_put(check);
                        if (r == -EIO)
                                return r;
                        add_problem(problems, err.reason);
                        *valid = false;
                        return 0;
                }
                json_object_object_add(check, "corruptions", json_object_new_int64((int64_t) res.corruptions));
                json_object_object_add(check, "leaks", json_object_new_int64((int64_t) res.leaks));
                json_object_object_add(check, "allocated-clusters", json_object_new_int64((int64_t) res.allocated_clusters));
                json_object_object_add(check, "compressed-clusters",
                                       json_object_new_int64((int64_t) res.compressed_clusters));
                json_object_object_add(obj, "check", check);
                for (uint64_t i = 0; i < res.n_problems; i++)
                        add_problem(problems, res.problems[i].text);
                if (res.corruptions > 0 || res.leaks > 0)
                        *valid = false;
                qcow2_check_result_done(&res);
        }
        return 0;
}

int image_describe(int fd, ImageFormat declared, const DescribeOptions *opts, struct json_object **ret) {
        static const DescribeOptions default_opts = {};
        struct json_object *obj, *problems;
        FormatError err = {};
        struct stat st;
        bool valid = true;
        int r;

        if (!opts)
                opts = &default_opts;
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (!S_ISREG(st.st_mode))
                return -EBADF;

        obj = json_object_new_object();
        problems = json_object_new_array();
        json_object_object_add(obj, "format", json_object_new_string(image_format_to_string(declared)));
        json_object_object_add(obj, "actual-size", json_object_new_int64((int64_t) st.st_blocks * 512));

        r = probe_fd(fd, declared, NULL, &err);
        if (r < 0) {
                if (r != -EBADMSG && r != -EMEDIUMTYPE)
                        goto fail;
                add_problem(problems, err.reason);
                valid = false;
        }

        if (declared == IMAGE_FORMAT_QCOW2) {
                /* A file that is not qcow2 at all is described by the probe's reason alone. */
                if (r != -EMEDIUMTYPE) {
                        r = describe_qcow2(fd, opts, obj, problems, &valid);
                        if (r < 0)
                                goto fail;
                }
        } else {
                json_object_object_add(obj, "virtual-size", json_object_new_int64((int64_t) st.st_size));
                if ((uint64_t) st.st_size % FORMAT_SECTOR_SIZE != 0) {
                        add_problem(problems, "file size is not a multiple of 512");
                        valid = false;
                }
        }

        json_object_object_add(obj, "valid", json_object_new_boolean(valid));
        json_object_object_add(obj, "problems", problems);
        *ret = obj;
        return 0;

fail:
        json_object_put(problems);
        json_object_put(obj);
        return r;
}

struct json_object *extent_map_to_json(const ExtentMap *m) {
        struct json_object *a = json_object_new_array();

        for (size_t i = 0; i < m->n_extents; i++) {
                const Extent *e = &m->extents[i];
                struct json_object *o = json_object_new_object();

                json_object_object_add(o, "start", json_object_new_int64((int64_t) e->start));
                json_object_object_add(o, "length", json_object_new_int64((int64_t) e->length));
                json_object_object_add(o, "state", json_object_new_string(extent_state_to_string(e->state)));
                if (e->has_host_offset)
                        json_object_object_add(o, "offset", json_object_new_int64((int64_t) e->host_offset));
                json_object_array_add(a, o);
        }
        return a;
}
