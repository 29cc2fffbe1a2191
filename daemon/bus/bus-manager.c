/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * org.vdisk1.Manager. Every handler has the same shape: read arguments → validate → act (ops/) →
 * reply; the caller was authorized by the table in auth.c before the handler runs (BUS_AUTHORIZED).
 * Errors from ops/ get their D-Bus names in one place (bus-error.c).
 */

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "bus.h"
#include "cluster-lease.h"
#include "config.h"
#include "live.h"
#include "log.h"
#include "query.h"
#include "reshape.h"

static int op_reply_error(sd_bus_error *error, int r, const OpError *err) {
        return bus_error_from_op(error, r, err->code ? err->reason : NULL);
}

/* Starts a job for `op`. In cluster mode the job holds the leases of `held` (moved into it) until its
 * operation ends. On failure `op` is rolled back and freed. */
static int start_job(Manager *m, const char *operation, const char *vm, const char *disk, uid_t owner, const JobOps *ops,
                     void *op, ClusterLeases *held, Job **ret) {
        const JobOps *o = ops;
        LeasedJob *lj = NULL;
        void *p = op;
        int r;

        if (m->cluster) {
                r = leased_job_new(ops, op, held, &lj, &o);
                if (r < 0) {
                        ops->abort(op);
                        ops->free(op);
                        return r;
                }
                p = lj;
        }
        r = job_start(&m->jobs, operation, vm, disk, owner, o, p, ret);
        if (r < 0) {
                o->abort(p);
                o->free(p);
        }
        return r;
}

static int method_create_image(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        const char *name, *format, *template_name = "blank";
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        uint32_t cluster_size = 0;
        bool has_cluster_size = false;
        uint64_t size;
        ImageFormat f = _IMAGE_FORMAT_INVALID;
        OpError err = {};
        char layer[LAYER_ID_LEN + 1];
        int r;

        CHECK(sd_bus_message_read(msg, "sst", &name, &format, &size));
        CHECK(bus_read_options(msg, (const OptionSpec[]) { { "template", 's', &template_name },
                                                      { "cluster_size", 'u', &cluster_size, &has_cluster_size },
                                                      {} },
                           error));
        CHECK(bus_check_name("image", name, error));
        CHECK(bus_check_format(format, &f, error));

        r = cluster_leases_catalog(&held, m->store, true, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        r = op_create_image(m->store, &m->config.limits, name, f, size, template_name, has_cluster_size ? &cluster_size : NULL, layer,
                            &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_reply_method_return(msg, "s", layer);
}

static int method_delete_image(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        const char *name;
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "s", &name));
        CHECK(bus_check_name("image", name, error));

        r = cluster_leases_catalog(&held, m->store, true, &err);
        if (r >= 0)
                r = op_delete_image(m->store, name, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_reply_method_return(msg, NULL);
}

static int list_images_add(const Layer *l, uint64_t allocated, void *userdata) {
        return sd_bus_message_append(userdata, "(ssstt)", l->catalog_name, l->id, image_format_to_string(l->format),
                                     l->virtual_size, allocated);
}

static int method_list_images(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        OpError err = {};
        int r;

        r = cluster_leases_catalog(&held, m->store, false, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);

        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(ssstt)"));
        CHECK(op_list_images(m->store, list_images_add, reply));
        CHECK(sd_bus_message_close_container(reply));
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_send(NULL, reply, NULL);
}

static int method_create_vm(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        const char *name;
        uint32_t owner;
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "su", &name, &owner));
        CHECK(bus_read_options(msg, NULL, error));
        CHECK(bus_check_name("VM", name, error));

        r = cluster_leases_vm(&held, m->store, name, true, &err);
        if (r >= 0)
                r = op_create_vm(m->store, &m->config.limits, name, (uid_t) owner, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_reply_method_return(msg, NULL);
}

static int method_delete_vm(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        const char *name;
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "s", &name));
        CHECK(bus_check_name("VM", name, error));
        /* In cluster mode: the VM's record, then every disk of it as it is on disk now. */
        r = cluster_leases_vm(&held, m->store, name, true, &err);
        if (r >= 0)
                r = cluster_leases_vm_disks(&held, m->store, name, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        /* Any lease, read-only ones included: a leased disk must not be replaced by another of its name. */
        r = lease_check_idle(m->store, &m->leases, &m->jobs, name, NULL, true, &err);
        if (r >= 0)
                r = op_delete_vm(m->store, name, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_reply_method_return(msg, NULL);
}

static int list_vms_add(const Vm *v, void *userdata) {
        return sd_bus_message_append(userdata, "(su)", v->name, (uint32_t) v->owner_uid);
}

static int method_list_vms(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;

        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(su)"));
        /* Authorized as an admin or a VM owner (auth.c); an owner sees only its own VMs. */
        CHECK(op_list_vms(m->store, c->admin ? UID_ANY : c->uid, list_vms_add, reply));
        CHECK(sd_bus_message_close_container(reply));
        return sd_bus_send(NULL, reply, NULL);
}

static int method_create_disk(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        const char *vm, *disk, *image, *mode = "overlay", *format = "qcow2";
        bool data_file = false, data_file_raw = false;
        uint64_t size;
        ImageFormat f = _IMAGE_FORMAT_INVALID;
        OpError err = {};
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
        CHECK(bus_check_format(format, &f, error));
        if (!streq(mode, "overlay") && !streq(mode, "copy"))
                return bus_errorf(error, -EINVAL, "Option 'mode' must be \"overlay\" or \"copy\"");

        /* The image stays while the disk is made from it (DeleteImage takes the catalog exclusively). */
        r = isempty(image) ? 0 : cluster_leases_catalog(&held, m->store, false, &err);
        if (r >= 0)
                r = cluster_leases_vm(&held, m->store, vm, true, &err);
        if (r >= 0)
                r = cluster_leases_disk(&held, vm, disk, true, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        r = op_create_disk(m->store, &m->config.limits, vm, disk, image, size, mode, f, data_file, data_file_raw, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_reply_method_return(msg, NULL);
}

static int method_delete_disk(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        const char *vm, *disk;
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &disk));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        r = cluster_leases_vm(&held, m->store, vm, true, &err);
        if (r >= 0)
                r = cluster_leases_disk(&held, vm, disk, true, &err);
        if (r >= 0)
                r = lease_check_idle(m->store, &m->leases, &m->jobs, vm, disk, true, &err);
        if (r >= 0)
                r = op_delete_disk(m->store, vm, disk, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_reply_method_return(msg, NULL);
}

static int list_disks_add(const char *disk, const Layer *top, uint32_t depth, void *userdata) {
        return sd_bus_message_append(userdata, "(sssut)", disk, top->id, image_format_to_string(top->format), depth,
                                     top->virtual_size);
}

static int method_list_disks(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *vm;
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "s", &vm));
        CHECK(bus_check_name("VM", vm, error));
        /* Exactly GetChain's rule and answers: a VM the caller may not see is denied whether it exists or not. */

        r = cluster_leases_vm(&held, m->store, vm, false, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(sssut)"));
        r = op_list_disks(m->store, vm, list_disks_add, reply, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        CHECK(sd_bus_message_close_container(reply));
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_send(NULL, reply, NULL);
}

static int chain_layer_add(const Layer *l, uint64_t allocated, void *userdata) {
        char file[LAYER_ID_LEN + 16];

        snprintf(file, sizeof(file), "images/%s", l->file);
        return sd_bus_message_append(userdata, "(ssssttb)", l->id, file, image_format_to_string(l->format),
                                     l->backing ? image_format_to_string(l->backing_format) : "", l->virtual_size, allocated,
                                     l->catalog_name != NULL);
}

static int method_get_chain(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *vm, *disk;
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &disk));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));

        r = cluster_leases_vm(&held, m->store, vm, false, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(ssssttb)"));
        r = op_get_chain(m->store, vm, disk, chain_layer_add, reply, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        CHECK(sd_bus_message_close_container(reply));
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_send(NULL, reply, NULL);
}

static int method_snapshot(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        const char *vm, *disk;
        Lease *live;
        char layer[LAYER_ID_LEN + 1];
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &disk));
        CHECK(bus_read_options(msg, NULL, error));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        /* Shared on the disk: a snapshot only adds a layer above, readers elsewhere keep theirs. */
        r = cluster_leases_disk(&held, vm, disk, false, &err);
        if (r >= 0)
                r = cluster_leases_vm(&held, m->store, vm, true, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        live = lease_registry_find_live(&m->leases, vm, disk);
        if (live)
                r = op_live_snapshot(m->store, &m->config.limits, &m->jobs, live, layer, &err);
        else
                r = lease_check_idle(m->store, &m->leases, &m->jobs, vm, disk, false, &err);
        if (r >= 0 && !live)
                r = op_snapshot(m->store, &m->config.limits, vm, disk, layer, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_reply_method_return(msg, "s", layer);
}

static int verify_add(const char *disk, const char *layer, const char *text, void *userdata) {
        return sd_bus_message_append(userdata, "(sss)", disk, layer, text);
}

static int method_verify(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        const char *vm;
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "s", &vm));
        CHECK(bus_check_name("VM", vm, error));

        r = cluster_leases_vm(&held, m->store, vm, false, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(sss)"));
        r = op_verify(m->store, vm, NULL, false, -EBADF, verify_add, reply, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        CHECK(sd_bus_message_close_container(reply));
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_send(NULL, reply, NULL);
}

static int method_inspect(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_free_ char *json = NULL;
        const char *format;
        ImageFormat f = _IMAGE_FORMAT_INVALID;
        OpError err = {};
        int source, r;

        CHECK(sd_bus_message_read(msg, "hs", &source, &format));
        CHECK(bus_check_format(format, &f, error));
        r = op_inspect(source, f, &m->config.limits, &json, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        return sd_bus_reply_method_return(msg, "s", json);
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

static int reply_job(sd_bus_message *msg, const Job *j) {
        char path[64];

        snprintf(path, sizeof(path), VDISK_JOB_PREFIX "/%" PRIu64, j->number);
        return sd_bus_reply_method_return(msg, "o", path);
}

static int method_import_image(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        const char *name, *format;
        ImportOp *op = NULL;
        Job *job;
        ImageFormat f = _IMAGE_FORMAT_INVALID;
        OpError err = {};
        int source, fd, r;

        CHECK(sd_bus_message_read(msg, "ssh", &name, &format, &source));
        CHECK(bus_read_options(msg, NULL, error));
        CHECK(bus_check_name("image", name, error));
        CHECK(bus_check_format(format, &f, error));
        if (job_registry_running(&m->jobs) >= m->config.limits.max_jobs)
                return bus_errorf(error, -E2BIG, "Too many jobs are running (limit %" PRIu32 ")", m->config.limits.max_jobs);

        r = cluster_leases_catalog(&held, m->store, true, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        fd = op_check_caller_fd(source, &err);
        if (fd < 0)
                return op_reply_error(error, fd, &err);
        r = import_begin(m->store, &m->config.limits, name, f, fd, &op, &err);
        if (r < 0) {
                safe_close(fd);
                return op_reply_error(error, r, &err);
        }
        r = start_job(m, "import", "", "", c->uid, &import_job_ops, op, &held, &job);
        if (r < 0)
                return bus_error_from_op(error, r, "Cannot start the job");
        return reply_job(msg, job);
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

static int live_step_cb(void *op, OpError *err) {
        return live_job_step(op, err);
}
static void live_abort_cb(void *op) {
        live_job_abort(op);
}
static void *live_free_cb(void *op) {
        return live_job_free(op);
}
static uint64_t live_done_cb(const void *op) {
        return live_job_bytes_done(op);
}
static uint64_t live_total_cb(const void *op) {
        return live_job_bytes_total(op);
}

static const JobOps live_job_ops = {
        .step = live_step_cb,
        .abort = live_abort_cb,
        .free = live_free_cb,
        .bytes_done = live_done_cb,
        .bytes_total = live_total_cb,
        .wait_usec = LIVE_JOB_POLL_USEC,
};

/* Under a read-write export lease: the helper does it while the VM runs (ops/live-job.c). */
static int start_live(Manager *m, sd_bus_message *msg, const Caller *c, Lease *l, ReshapeKind kind, const char *layer,
                      ClusterLeases *held, sd_bus_error *error) {
        const Job *running = job_registry_find_running(&m->jobs, l->vm, l->disk);
        LiveJob *op = NULL;
        OpError err = {};
        Job *job;
        int r;

        if (running)
                return bus_errorf(error, -EBUSY, "Disk '%s' of VM '%s' is busy with a %s job", l->disk, l->vm, running->operation);
        if (job_registry_running(&m->jobs) >= m->config.limits.max_jobs)
                return bus_errorf(error, -E2BIG, "Too many jobs are running (limit %" PRIu32 ")", m->config.limits.max_jobs);
        r = live_job_begin(m->store, &m->leases, l, kind, layer, &op, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        r = start_job(m, live_job_operation(op), l->vm, l->disk, c->uid, &live_job_ops, op, held, &job);
        if (r < 0)
                return bus_error_from_op(error, r, "Cannot start the job");
        return reply_job(msg, job);
}

static int start_reshape(Manager *m, sd_bus_message *msg, const Caller *c, ReshapeKind kind, const char *vm, const char *disk,
                         const char *layer, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        Lease *live;
        ReshapeOp *op = NULL;
        OpError err = {};
        Job *job;
        int r;

        /* The whole job: the disk exclusively (its layers change in place), the VM's record. */
        r = cluster_leases_disk(&held, vm, disk, true, &err);
        if (r >= 0)
                r = cluster_leases_vm(&held, m->store, vm, true, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        live = lease_registry_find_live(&m->leases, vm, disk);
        if (live)
                return start_live(m, msg, c, live, kind, layer, &held, error);
        r = lease_check_idle(m->store, &m->leases, &m->jobs, vm, disk, false, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        if (job_registry_running(&m->jobs) >= m->config.limits.max_jobs)
                return bus_errorf(error, -E2BIG, "Too many jobs are running (limit %" PRIu32 ")", m->config.limits.max_jobs);
        r = reshape_begin(m->store, &m->config.limits, kind, vm, disk, layer, &op, &err);
        if (r < 0)
                return op_reply_error(error, r, &err);
        r = start_job(m, reshape_operation(op), vm, disk, c->uid, &reshape_job_ops, op, &held, &job);
        if (r < 0)
                return bus_error_from_op(error, r, "Cannot start the job");
        return reply_job(msg, job);
}

static int method_rebase(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        const char *vm, *disk, *backing;
        bool unsafe = false;

        CHECK(sd_bus_message_read(msg, "sss", &vm, &disk, &backing));
        CHECK(bus_read_options(msg, (const OptionSpec[]) { { "unsafe", 'b', &unsafe }, {} }, error));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        if (!isempty(backing) && !layer_id_is_valid(backing))
                return bus_errorf(error, -EINVAL, "Invalid layer id");
        if (unsafe)
                CHECK(bus_authorize_extra(c, VDISK_MANAGER_INTERFACE, "Rebase(unsafe)", error));
        return start_reshape(m, msg, c, unsafe ? RESHAPE_UNSAFE_REBASE : RESHAPE_REBASE, vm, disk, backing, error);
}

static int method_commit(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        const char *vm, *disk, *layer;

        CHECK(sd_bus_message_read(msg, "sss", &vm, &disk, &layer));
        CHECK(bus_read_options(msg, NULL, error));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        if (!layer_id_is_valid(layer))
                return bus_errorf(error, -EINVAL, "Invalid layer id");
        return start_reshape(m, msg, c, RESHAPE_COMMIT, vm, disk, layer, error);
}

static int method_list_jobs(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;

        CHECK(sd_bus_message_new_method_return(msg, &reply));
        CHECK(sd_bus_message_open_container(reply, 'a', "(osss)"));
        for (size_t i = 0; i < m->jobs.n_jobs; i++) {
                const Job *j = m->jobs.jobs[i];
                char path[64];

                snprintf(path, sizeof(path), VDISK_JOB_PREFIX "/%" PRIu64, j->number);
                CHECK(sd_bus_message_append(reply, "(osss)", path, j->operation, j->vm, j->disk));
        }
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

/* Each method runs after the authorization table allowed the caller (auth.c). */
BUS_AUTHORIZED(authorized_create_image, method_create_image)
BUS_AUTHORIZED(authorized_import_image, method_import_image)
BUS_AUTHORIZED(authorized_delete_image, method_delete_image)
BUS_AUTHORIZED(authorized_list_images, method_list_images)
BUS_AUTHORIZED(authorized_create_vm, method_create_vm)
BUS_AUTHORIZED(authorized_delete_vm, method_delete_vm)
BUS_AUTHORIZED(authorized_list_vms, method_list_vms)
BUS_AUTHORIZED(authorized_create_disk, method_create_disk)
BUS_AUTHORIZED(authorized_delete_disk, method_delete_disk)
BUS_AUTHORIZED(authorized_list_disks, method_list_disks)
BUS_AUTHORIZED(authorized_get_chain, method_get_chain)
BUS_AUTHORIZED(authorized_snapshot, method_snapshot)
BUS_AUTHORIZED(authorized_rebase, method_rebase)
BUS_AUTHORIZED(authorized_commit, method_commit)
BUS_AUTHORIZED(authorized_open_disk, method_open_disk)
BUS_AUTHORIZED(authorized_verify, method_verify)
BUS_AUTHORIZED(authorized_get_domain_xml, method_get_domain_xml)
BUS_AUTHORIZED(authorized_adopt_domain_xml, method_adopt_domain_xml)
BUS_AUTHORIZED(authorized_inspect, method_inspect)
BUS_AUTHORIZED(authorized_list_jobs, method_list_jobs)

static const sd_bus_vtable manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("StoreDirectory", "s", property_get_store, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxChainDepth", "u", property_get_depth, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("CreateImage",
                                SD_BUS_ARGS("s", name, "s", format, "t", size, "a{sv}", options),
                                SD_BUS_RESULT("s", layer),
                                authorized_create_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ImportImage",
                                SD_BUS_ARGS("s", name, "s", format, "h", source, "a{sv}", options),
                                SD_BUS_RESULT("o", job),
                                authorized_import_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteImage", SD_BUS_ARGS("s", name), SD_BUS_NO_RESULT, authorized_delete_image, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListImages", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(ssstt)", images), authorized_list_images, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CreateVM",
                                SD_BUS_ARGS("s", name, "u", owner_uid, "a{sv}", options),
                                SD_BUS_NO_RESULT,
                                authorized_create_vm, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteVM", SD_BUS_ARGS("s", name), SD_BUS_NO_RESULT, authorized_delete_vm, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListVMs", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(su)", vms), authorized_list_vms, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CreateDisk",
                                SD_BUS_ARGS("s", vm, "s", disk, "s", image, "t", size, "a{sv}", options),
                                SD_BUS_NO_RESULT,
                                authorized_create_disk, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DeleteDisk", SD_BUS_ARGS("s", vm, "s", disk), SD_BUS_NO_RESULT, authorized_delete_disk, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListDisks", SD_BUS_ARGS("s", vm), SD_BUS_RESULT("a(sssut)", disks), authorized_list_disks, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetChain",
                                SD_BUS_ARGS("s", vm, "s", disk),
                                SD_BUS_RESULT("a(ssssttb)", layers),
                                authorized_get_chain, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Snapshot",
                                SD_BUS_ARGS("s", vm, "s", disk, "a{sv}", options),
                                SD_BUS_RESULT("s", layer),
                                authorized_snapshot, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Rebase",
                                SD_BUS_ARGS("s", vm, "s", disk, "s", backing, "a{sv}", options),
                                SD_BUS_RESULT("o", job),
                                authorized_rebase, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Commit",
                                SD_BUS_ARGS("s", vm, "s", disk, "s", layer, "a{sv}", options),
                                SD_BUS_RESULT("o", job),
                                authorized_commit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("OpenDisk",
                                SD_BUS_ARGS("s", vm, "s", disk, "a{sv}", options),
                                SD_BUS_RESULT("o", lease, "s", blockdev, "ah", fds),
                                authorized_open_disk, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Verify", SD_BUS_ARGS("s", vm), SD_BUS_RESULT("a(sss)", problems), authorized_verify, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetDomainXML",
                                SD_BUS_ARGS("s", vm, "s", disk),
                                SD_BUS_RESULT("s", xml),
                                authorized_get_domain_xml, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("AdoptDomainXML",
                                SD_BUS_ARGS("s", vm, "s", xml, "a{sv}", options),
                                SD_BUS_RESULT("s", disk),
                                authorized_adopt_domain_xml, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Inspect", SD_BUS_ARGS("h", image, "s", format), SD_BUS_RESULT("s", json), authorized_inspect, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListJobs", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(osss)", jobs), authorized_list_jobs, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("JobRemoved", SD_BUS_ARGS("o", job, "s", state), 0),
        SD_BUS_VTABLE_END,
};

int bus_manager_register(Manager *m) {
        int r = sd_bus_add_object_vtable(m->bus, NULL, VDISK_MANAGER_PATH, VDISK_MANAGER_INTERFACE, manager_vtable, m);
        if (r < 0)
                return log_error_errno(r, "Failed to register the Manager object");
        return 0;
}

static int name_owner_changed(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(msg, "sss", &name, &old_owner, &new_owner) < 0)
                return 0;
        if (name[0] == ':' && isempty(new_owner)) {
                lease_registry_holder_gone(m->store, &m->leases, name);
                caller_cache_forget(&m->callers, name);
        }
        return 0;
}

/* One match for the whole daemon: leases end and cached credentials go when their connection does. */
int bus_watch_names(Manager *m) {
        int r = sd_bus_match_signal_async(m->bus, NULL, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                          "org.freedesktop.DBus", "NameOwnerChanged", name_owner_changed, NULL, m);
        if (r < 0)
                return log_error_errno(r, "Failed to watch bus names");
        return 0;
}

/* After a restart, leases found again (exports) whose holder left the bus while vdiskd was away end now;
 * the NameOwnerChanged match, asked for before, catches those that leave later. */
int bus_check_lease_holders(Manager *m) {
        for (size_t i = 0; i < m->leases.n_leases;) {
                _cleanup_(sd_bus_error_free) sd_bus_error e = SD_BUS_ERROR_NULL;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
                Lease *l = m->leases.leases[i];
                int has = 0, r;

                r = sd_bus_call_method(m->bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                       "NameHasOwner", &e, &reply, "s", l->holder);
                if (r >= 0)
                        r = sd_bus_message_read(reply, "b", &has);
                if (r < 0)
                        return log_error_errno(r, "Failed to ask the bus about lease holder %s", l->holder);
                if (!has) {
                        lease_end(m->store, &m->leases, l, "holder left the bus while vdiskd was not running");
                        continue;
                }
                i++;
        }
        return 0;
}
