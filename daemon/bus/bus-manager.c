/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * org.vdisk1.Manager. Every handler has the same shape: read arguments → validate → authorize →
 * act (ops/) → reply. Errors from ops/ are mapped to D-Bus names in one place (bus-error.c).
 */

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "describe.h"
#include "escape.h"
#include "log.h"
#include "manager.h"
#include "reshape.h"

/* Limits on what a caller can make us parse. */
#define OPTIONS_MAX 16U

int bus_read_options(sd_bus_message *m, const OptionSpec *specs, sd_bus_error *error) {
        unsigned seen = 0, count = 0;
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
                const char *key, *contents;
                const OptionSpec *spec = NULL;
                size_t idx = 0;
                char sig[2] = {};

                if (++count > OPTIONS_MAX)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Too many options");
                r = sd_bus_message_read(m, "s", &key);
                if (r < 0)
                        return r;
                for (const OptionSpec *s = specs; s && s->key; s++, idx++)
                        if (streq(s->key, key)) {
                                spec = s;
                                break;
                        }
                if (!spec)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Unknown option '%s'", ESCAPE_TEXT(key));
                if (seen & (1U << idx))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Option '%s' given twice", key);
                seen |= 1U << idx;

                r = sd_bus_message_peek_type(m, NULL, &contents);
                if (r < 0)
                        return r;
                sig[0] = spec->type;
                if (!streq(contents, sig))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Option '%s' must be of type '%s'", key,
                                                 sig);
                r = sd_bus_message_enter_container(m, 'v', sig);
                if (r < 0)
                        return r;
                if (spec->type == 'b') {
                        int b;
                        r = sd_bus_message_read_basic(m, 'b', &b);
                        *(bool *) spec->ret = b;
                } else
                        r = sd_bus_message_read_basic(m, spec->type, spec->ret);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

int bus_check_name(const char *what, const char *name, sd_bus_error *error) {
        if (name_is_valid(name))
                return 0;
        /* Never echo what might be binary junk or a path: say what was wrong with it. */
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                 "Invalid %s name: must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", what);
}

static int check_format(const char *format, ImageFormat *ret, sd_bus_error *error) {
        ImageFormat f = image_format_from_string(format);
        if (f < 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "Format must be \"raw\" or \"qcow2\"");
        *ret = f;
        return 0;
}

#define CHECK(expr)                          \
        do {                                 \
                int _r = (expr);             \
                if (_r < 0)                  \
                        return _r;           \
        } while (0)

static int op_reply_error(sd_bus_error *error, int r, const OpError *err) {
        return bus_error_from_op(error, r, err->code ? err->reason : NULL);
}

static int method_create_image(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name, *format, *template_name = "blank";
        uint32_t cluster_size = 0;
        uint64_t size;
        ImageFormat f = _IMAGE_FORMAT_INVALID;
        OpError err = {};
        char layer[LAYER_ID_LEN + 1];
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "sst", &name, &format, &size));
        CHECK(bus_read_options(msg, (const OptionSpec[]) { { "template", 's', &template_name },
                                                      { "cluster_size", 'u', &cluster_size },
                                                      {} },
                           error));
        CHECK(bus_check_name("image", name, error));
        CHECK(check_format(format, &f, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));

        r = op_create_image(m->store, &m->config.limits, name, f, size, template_name, cluster_size, layer, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        return sd_bus_reply_method_return(msg, "s", layer);
}

static int method_delete_image(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "s", &name));
        CHECK(bus_check_name("image", name, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));

        r = op_delete_image(m->store, name, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        return sd_bus_reply_method_return(msg, NULL);
}

static int method_list_images(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;

        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(ssstt)"));
        for (size_t i = 0; i < m->store->n_layers; i++) {
                Layer *l = m->store->layers[i];
                if (!l->catalog_name || l->state != LAYER_READY)
                        continue;
                CHECK(sd_bus_message_append(reply, "(ssstt)", l->catalog_name, l->id, image_format_to_string(l->format),
                                            l->virtual_size, store_layer_allocated(m->store, l)));
        }
        CHECK(sd_bus_message_close_container(reply));
        return sd_bus_send(NULL, reply, NULL);
}

static int method_create_vm(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        uint32_t owner;
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "su", &name, &owner));
        CHECK(bus_read_options(msg, NULL, error));
        CHECK(bus_check_name("VM", name, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));

        r = op_create_vm(m->store, &m->config.limits, name, (uid_t) owner, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        return sd_bus_reply_method_return(msg, NULL);
}

static int method_delete_vm(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name;
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "s", &name));
        CHECK(bus_check_name("VM", name, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));
        CHECK(lease_busy_error(m, name, NULL, error));

        r = op_delete_vm(m->store, name, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        return sd_bus_reply_method_return(msg, NULL);
}

static int method_list_vms(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        size_t shown = 0;
        Caller c;

        CHECK(auth_caller(m, msg, &c, error));
        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(su)"));
        for (size_t i = 0; i < m->store->n_vms; i++) {
                Vm *v = m->store->vms[i];
                if (!c.admin && v->owner_uid != c.uid)
                        continue;
                CHECK(sd_bus_message_append(reply, "(su)", v->name, (uint32_t) v->owner_uid));
                shown++;
        }
        /* The table: VM owners may list their own VMs; anyone else is denied. */
        if (!c.admin && shown == 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Access denied: you own no VM");
        CHECK(sd_bus_message_close_container(reply));
        return sd_bus_send(NULL, reply, NULL);
}

static int method_create_disk(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *vm, *disk, *image, *mode = "overlay", *format = "qcow2";
        bool data_file = false, data_file_raw = false;
        uint64_t size;
        ImageFormat f = _IMAGE_FORMAT_INVALID;
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "ssst", &vm, &disk, &image, &size));
        CHECK(bus_read_options(msg,
                               (const OptionSpec[]) { { "mode", 's', &mode },
                                                      { "format", 's', &format },
                                                      { "data_file", 'b', &data_file },
                                                      { "data_file_raw", 'b', &data_file_raw },
                                                      {} },
                               error));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        if (!isempty(image))
                CHECK(bus_check_name("image", image, error));
        CHECK(check_format(format, &f, error));
        if (!streq(mode, "overlay") && !streq(mode, "copy"))
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "Option 'mode' must be \"overlay\" or \"copy\"");
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));

        r = op_create_disk(m->store, &m->config.limits, vm, disk, image, size, mode, f, data_file, data_file_raw, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        return sd_bus_reply_method_return(msg, NULL);
}

static int method_delete_disk(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *vm, *disk;
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &disk));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));
        CHECK(lease_busy_error(m, vm, disk, error));

        r = op_delete_disk(m->store, vm, disk, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        return sd_bus_reply_method_return(msg, NULL);
}

static int list_disks_add(const char *disk, const Layer *top, uint32_t depth, void *userdata) {
        return sd_bus_message_append(userdata, "(sssut)", disk, top->id, image_format_to_string(top->format), depth,
                                     top->virtual_size);
}

static int method_list_disks(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        const char *vm;
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "s", &vm));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(auth_caller(m, msg, &c, error));
        /* Exactly GetChain's rule and answers: a VM the caller may not see is denied whether it exists or not. */
        CHECK(auth_require_vm(m, &c, vm, error));

        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(sssut)"));
        r = op_list_disks(m->store, vm, list_disks_add, reply, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        CHECK(sd_bus_message_close_container(reply));
        return sd_bus_send(NULL, reply, NULL);
}

static int method_get_chain(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        const char *vm, *disk;
        OpError err = {};
        Disk *d;
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &disk));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_vm(m, &c, vm, error));

        r = op_find_disk(m->store, vm, disk, NULL, &d, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);

        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(ssssttb)"));
        for (size_t k = 0; k < d->n_chain; k++) {
                Layer *l = store_find_layer(m->store, d->chain[k]);
                char file[LAYER_ID_LEN + 16];

                if (!l)
                        return sd_bus_error_setf(error, "org.vdisk1.Error.Corrupt", "The record of layer %s is missing",
                                                 d->chain[k]);
                snprintf(file, sizeof(file), "images/%s", l->file);
                CHECK(sd_bus_message_append(reply, "(ssssttb)", l->id, file, image_format_to_string(l->format),
                                            l->backing ? image_format_to_string(l->backing_format) : "", l->virtual_size,
                                            store_layer_allocated(m->store, l), l->catalog_name != NULL));
        }
        CHECK(sd_bus_message_close_container(reply));
        return sd_bus_send(NULL, reply, NULL);
}

static int method_snapshot(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *vm, *disk;
        char layer[LAYER_ID_LEN + 1];
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &disk));
        CHECK(bus_read_options(msg, NULL, error));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_vm(m, &c, vm, error));
        CHECK(lease_busy_error(m, vm, disk, error));

        r = op_snapshot(m->store, &m->config.limits, vm, disk, layer, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        return sd_bus_reply_method_return(msg, "s", layer);
}

static int verify_add(const char *disk, const char *layer, const char *text, void *userdata) {
        return sd_bus_message_append(userdata, "(sss)", disk, layer, text);
}

static int method_verify(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        const char *vm;
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "s", &vm));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_vm(m, &c, vm, error));

        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(sss)"));
        r = op_verify(m->store, vm, NULL, false, -EBADF, verify_add, reply, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        CHECK(sd_bus_message_close_container(reply));
        return sd_bus_send(NULL, reply, NULL);
}

static int method_inspect(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        _cleanup_close_ int fd = -EBADF;
        DescribeOptions opts = { .check = true };
        struct json_object *o = NULL;
        const char *format;
        ImageFormat f = _IMAGE_FORMAT_INVALID;
        OpError err = {};
        int source, r;

        CHECK(sd_bus_message_read(msg, "hs", &source, &format));
        CHECK(check_format(format, &f, error));
        fd = op_check_caller_fd(source, &err);
        if (fd < 0)
                return op_reply_error(error, fd, &err);

        opts.limits.max_virtual_size = m->config.limits.max_virtual_size;
        r = image_describe(fd, f, &opts, &o);
        if (r < 0)
                return bus_error_from_op(error, r, "Cannot read the image");
        r = sd_bus_reply_method_return(msg, "s", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        return r;
}

static int import_step_cb(void *op, OpError *err) {
        return import_step(op, err);
}
static void import_abort_cb(void *op) {
        import_abort(op);
}
static void *import_free_cb(void *op) {
        return import_free(op);
}
static uint64_t import_done_cb(const void *op) {
        return import_bytes_done(op);
}
static uint64_t import_total_cb(const void *op) {
        return import_bytes_total(op);
}

static const JobOps import_job_ops = {
        .step = import_step_cb,
        .abort = import_abort_cb,
        .free = import_free_cb,
        .bytes_done = import_done_cb,
        .bytes_total = import_total_cb,
};

static int method_import_image(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name, *format, *path;
        ImportOp *op = NULL;
        ImageFormat f = _IMAGE_FORMAT_INVALID;
        OpError err = {};
        Caller c;
        int source, fd, r;

        CHECK(sd_bus_message_read(msg, "ssh", &name, &format, &source));
        CHECK(bus_read_options(msg, NULL, error));
        CHECK(bus_check_name("image", name, error));
        CHECK(check_format(format, &f, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));
        if (manager_running_jobs(m) >= m->config.limits.max_jobs)
                return sd_bus_error_setf(error, "org.vdisk1.Error.LimitExceeded", "Too many jobs are running (limit %" PRIu32 ")",
                                         m->config.limits.max_jobs);

        fd = op_check_caller_fd(source, &err);
        if (fd < 0)
                return op_reply_error(error, fd, &err);
        r = import_begin(m->store, &m->config.limits, name, f, fd, &op, &err);
        if (r < 0) {
                safe_close(fd);
                return op_reply_error(error, r, &err);
        }
        r = job_start(m, "import", "", "", c.uid, &import_job_ops, op, &path);
        if (r < 0) {
                import_abort(op);
                import_free(op);
                return bus_error_from_op(error, r, "Cannot start the job");
        }
        return sd_bus_reply_method_return(msg, "o", path);
}

static int reshape_step_cb(void *op, OpError *err) {
        return reshape_step(op, err);
}
static void reshape_abort_cb(void *op) {
        reshape_abort(op);
}
static void *reshape_free_cb(void *op) {
        return reshape_free(op);
}
static uint64_t reshape_done_cb(const void *op) {
        return reshape_bytes_done(op);
}
static uint64_t reshape_total_cb(const void *op) {
        return reshape_bytes_total(op);
}

static const JobOps reshape_job_ops = {
        .step = reshape_step_cb,
        .abort = reshape_abort_cb,
        .free = reshape_free_cb,
        .bytes_done = reshape_done_cb,
        .bytes_total = reshape_total_cb,
};

static int start_reshape(Manager *m, sd_bus_message *msg, const Caller *c, ReshapeKind kind, const char *vm, const char *disk,
                         const char *layer, sd_bus_error *error) {
        ReshapeOp *op = NULL;
        OpError err = {};
        const char *path;
        int r;

        CHECK(lease_busy_error(m, vm, disk, error));
        if (manager_running_jobs(m) >= m->config.limits.max_jobs)
                return sd_bus_error_setf(error, "org.vdisk1.Error.LimitExceeded", "Too many jobs are running (limit %" PRIu32 ")",
                                         m->config.limits.max_jobs);
        r = reshape_begin(m->store, &m->config.limits, kind, vm, disk, layer, &op, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        r = job_start(m, reshape_operation(op), vm, disk, c->uid, &reshape_job_ops, op, &path);
        if (r < 0) {
                reshape_abort(op);
                reshape_free(op);
                return bus_error_from_op(error, r, "Cannot start the job");
        }
        return sd_bus_reply_method_return(msg, "o", path);
}

static int method_rebase(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *vm, *disk, *backing;
        bool unsafe = false;
        Caller c;

        CHECK(sd_bus_message_read(msg, "sss", &vm, &disk, &backing));
        CHECK(bus_read_options(msg, (const OptionSpec[]) { { "unsafe", 'b', &unsafe }, {} }, error));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        if (!isempty(backing) && !layer_id_is_valid(backing))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Invalid layer id");
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));
        if (unsafe && c.uid != 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Only root may rebase unsafely");
        return start_reshape(m, msg, &c, unsafe ? RESHAPE_UNSAFE_REBASE : RESHAPE_REBASE, vm, disk, backing, error);
}

static int method_commit(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *vm, *disk, *layer;
        Caller c;

        CHECK(sd_bus_message_read(msg, "sss", &vm, &disk, &layer));
        CHECK(bus_read_options(msg, NULL, error));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        if (!layer_id_is_valid(layer))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "Invalid layer id");
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));
        return start_reshape(m, msg, &c, RESHAPE_COMMIT, vm, disk, layer, error);
}

static int method_list_jobs(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Manager *m = userdata;
        Caller c;

        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_admin(&c, error));
        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(osss)"));
        for (size_t i = 0; i < m->n_jobs; i++)
                CHECK(sd_bus_message_append(reply, "(osss)", job_path(m->jobs[i]), job_operation(m->jobs[i]), job_vm(m->jobs[i]),
                                            job_disk(m->jobs[i])));
        CHECK(sd_bus_message_close_container(reply));
        return sd_bus_send(NULL, reply, NULL);
}

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", PACKAGE_VERSION);
}

static int property_get_store(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "s", m->store->path);
}

static int property_get_depth(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        return sd_bus_message_append(reply, "u", m->config.limits.max_chain_depth);
}

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("StoreDirectory", "s", property_get_store, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxChainDepth", "u", property_get_depth, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("CreateImage",
                                SD_BUS_ARGS("s", name, "s", format, "t", size, "a{sv}", options),
                                SD_BUS_RESULT("s", layer),
                                method_create_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ImportImage",
                                SD_BUS_ARGS("s", name, "s", format, "h", source, "a{sv}", options),
                                SD_BUS_RESULT("o", job),
                                method_import_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteImage", SD_BUS_ARGS("s", name), SD_BUS_NO_RESULT, method_delete_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListImages", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(ssstt)", images), method_list_images, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CreateVM",
                                SD_BUS_ARGS("s", name, "u", owner_uid, "a{sv}", options),
                                SD_BUS_NO_RESULT,
                                method_create_vm, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteVM", SD_BUS_ARGS("s", name), SD_BUS_NO_RESULT, method_delete_vm, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListVMs", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(su)", vms), method_list_vms, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CreateDisk",
                                SD_BUS_ARGS("s", vm, "s", disk, "s", image, "t", size, "a{sv}", options),
                                SD_BUS_NO_RESULT,
                                method_create_disk, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteDisk", SD_BUS_ARGS("s", vm, "s", disk), SD_BUS_NO_RESULT, method_delete_disk, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListDisks", SD_BUS_ARGS("s", vm), SD_BUS_RESULT("a(sssut)", disks), method_list_disks, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetChain",
                                SD_BUS_ARGS("s", vm, "s", disk),
                                SD_BUS_RESULT("a(ssssttb)", layers),
                                method_get_chain, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Snapshot",
                                SD_BUS_ARGS("s", vm, "s", disk, "a{sv}", options),
                                SD_BUS_RESULT("s", layer),
                                method_snapshot, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Rebase",
                                SD_BUS_ARGS("s", vm, "s", disk, "s", backing, "a{sv}", options),
                                SD_BUS_RESULT("o", job),
                                method_rebase, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Commit",
                                SD_BUS_ARGS("s", vm, "s", disk, "s", layer, "a{sv}", options),
                                SD_BUS_RESULT("o", job),
                                method_commit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("OpenDisk",
                                SD_BUS_ARGS("s", vm, "s", disk, "a{sv}", options),
                                SD_BUS_RESULT("o", lease, "s", blockdev, "ah", fds),
                                method_open_disk, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Verify", SD_BUS_ARGS("s", vm), SD_BUS_RESULT("a(sss)", problems), method_verify, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetDomainXML",
                                SD_BUS_ARGS("s", vm, "s", disk),
                                SD_BUS_RESULT("s", xml),
                                method_get_domain_xml, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("AdoptDomainXML",
                                SD_BUS_ARGS("s", vm, "s", xml, "a{sv}", options),
                                SD_BUS_RESULT("s", disk),
                                method_adopt_domain_xml, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Inspect", SD_BUS_ARGS("h", image, "s", format), SD_BUS_RESULT("s", json), method_inspect, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListJobs", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(osss)", jobs), method_list_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("JobRemoved", SD_BUS_ARGS("o", job, "s", state), 0),
        SD_BUS_VTABLE_END,
};

int bus_manager_register(Manager *m) {
        int r = sd_bus_add_object_vtable(m->bus, NULL, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, manager_vtable, m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the Manager object");
        return 0;
}
