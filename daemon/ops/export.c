/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <dirent.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "export.h"
#include "live.h"
#include "log.h"
#include "open-disk.h"
#include "util.h"
#include "vdisk-bus.h"

#define EXPORT_SOCKET "export.sock"
#define EXPORT_STATE "state.json"
#define EXPORT_ID "vdisk-export" /* the export's id and the monitor's name of its listening socket */
#define EXPORT_STATE_MAX (64U * 1024U)
#define EXPORT_QMP_TIMEOUT_USEC (10U * 1000000U)
#define EXPORT_STOP_TIMEOUT_USEC (5U * 1000000U)

static const char *const export_type_table[] = {
        [EXPORT_NONE] = "none",
        [EXPORT_VHOST_USER_BLK] = "vhost-user-blk",
        [EXPORT_NBD] = "nbd",
};

const char *export_type_to_string(ExportType t) {
        return t < ELEMENTSOF(export_type_table) ? export_type_table[t] : NULL;
}

int export_type_from_string(const char *s, ExportType *ret) {
        if (!s) {
                *ret = EXPORT_NONE;
                return 0;
        }
        for (size_t i = EXPORT_VHOST_USER_BLK; i < ELEMENTSOF(export_type_table); i++)
                if (streq(s, export_type_table[i])) {
                        *ret = i;
                        return 0;
                }
        return -EINVAL;
}

/* dir/name into buf (PATH_MAX bytes). */
static int dir_file(char *buf, const char *dir, const char *name) {
        int n = snprintf(buf, PATH_MAX, "%s/%s", dir, name);
        return n < 0 || n >= PATH_MAX ? -ENAMETOOLONG : 0;
}


Export *export_free(Export *e) {
        if (!e)
                return NULL;
        helper_free(e->helper);
        for (size_t i = 0; i < e->n_nodes; i++)
                free(e->nodes[i]);
        free(e->nodes);
        free(e->dir);
        free(e->job_op);
        free(e);
        return NULL;
}

/* Removes the helper's directory: its monitor socket, log and state. */
static void export_remove_dir(const char *dir) {
        static const char *const files[] = { HELPER_QMP_SOCKET, HELPER_LOG, EXPORT_STATE, EXPORT_STATE ".tmp", EXPORT_SOCKET };
        char path[PATH_MAX];

        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                if (dir_file(path, dir, files[i]) >= 0)
                        (void) unlink(path);
        }
        if (rmdir(dir) < 0 && errno != ENOENT)
                log_warning("Failed to remove %s: %s", dir, strerror(errno));
}

int export_stop(Export *e) {
        int r = 0;

        if (e->helper)
                r = helper_stop(e->helper, EXPORT_STOP_TIMEOUT_USEC);
        export_remove_dir(e->dir);
        return r;
}

/* One QMP command whose failure is the operation's: the helper's words go to the log, a short reason to
 * the caller. */
static int qmp_result(Export *e, const char *command, json_object *args, int r, const char *text, OpError *err) {
        if (r == -EREMOTEIO) {
                /* With the arguments: the helper's words may not name what it missed. */
                log_error("Helper of lease %s refused %s %s: %s", e->lease->id, command,
                          args ? json_object_to_json_string_ext(args, JSON_C_TO_STRING_PLAIN) : "{}", text ?: "");
                return op_error(err, -EIO, "The storage helper refused %s: %s", command, text ?: "");
        }
        if (r < 0) {
                log_error_errno(r, "Helper of lease %s: %s failed", e->lease->id, command);
                return op_error(err, r == -ENOMEM ? r : -EIO, "The storage helper did not complete %s", command);
        }
        return 0;
}

int export_qmp(Export *e, const char *command, json_object *args, int fd, json_object **ret, OpError *err) {
        _cleanup_free_ char *text = NULL;
        int r;

        r = qmp_client_call(e->helper->qmp, command, args, fd, EXPORT_QMP_TIMEOUT_USEC, ret, &text);
        return qmp_result(e, command, args, r, text, err);
}

static json_object *args_new(const char *key, json_object *value) {
        json_object *o = json_object_new_object();

        if (!o || json_object_object_add(o, key, value) < 0) {
                json_object_put(o);
                json_object_put(value);
                return NULL;
        }
        return o;
}

static int args_add(json_object *o, const char *key, json_object *value) {
        if (!o || json_object_object_add(o, key, value) < 0) {
                json_object_put(value);
                return -ENOMEM;
        }
        return 0;
}

int export_set_nodes(Export *e, const Disk *d) {
        char **nodes = calloc(d->n_chain, sizeof(char *));

        if (!nodes)
                return -ENOMEM;
        for (size_t k = 0; k < d->n_chain; k++) {
                char name[EXPORT_NODE_NAME_MAX];

                export_node_name(name, 'L', d->chain[k]);
                nodes[k] = strdup(name);
                if (!nodes[k]) {
                        while (k-- > 0)
                                free(nodes[k]);
                        free(nodes);
                        return -ENOMEM;
                }
        }
        for (size_t i = 0; i < e->n_nodes; i++)
                free(e->nodes[i]);
        free(e->nodes);
        e->nodes = nodes;
        e->n_nodes = d->n_chain;
        return 0;
}

/* Whether the helpers' QEMU refused aio=io_uring once (a kernel without it, or with
 * kernel.io_uring_disabled): then not asked again until vdiskd restarts. */
static bool io_uring_refused = false;

/* blockdev-add of one node. File nodes use io_uring in the helper (measured in B8: the helper's thread
 * pool is what a vhost-user-blk export waits on at 4 KiB QD16; durability is the same, flushes are
 * still fdatasync()). A helper that refuses it gets the node as the chain-fd description has it. */
static int add_node(Export *e, json_object *node, OpError *err) {
        _cleanup_free_ char *text = NULL;
        json_object *drv;
        int r;

        if (io_uring_refused || !json_object_object_get_ex(node, "driver", &drv) || !streq(json_object_get_string(drv), "file"))
                return export_qmp(e, "blockdev-add", node, -EBADF, NULL, err);
        if (json_object_object_add(node, "aio", json_object_new_string("io_uring")) < 0)
                return -ENOMEM;
        r = qmp_client_call(e->helper->qmp, "blockdev-add", node, -EBADF, EXPORT_QMP_TIMEOUT_USEC, NULL, &text);
        if (r != -EREMOTEIO || !text || !strstr(text, "io_uring"))
                return qmp_result(e, "blockdev-add", node, r, text, err);
        log_notice("The storage helper refused aio=io_uring (%s); exports use its thread pool", text ?: "");
        io_uring_refused = true;
        json_object_object_del(node, "aio");
        return export_qmp(e, "blockdev-add", node, -EBADF, NULL, err);
}

/* Every fd of the chain into fd set i+1 (the numbering of OpenDisk's -blockdev description), then the
 * nodes. */
static int hand_over_chain(Export *e, Store *s, const Disk *d, Lease *l, OpError *err) {
        _cleanup_json_ json_object *nodes = NULL;
        _cleanup_free_ char *text = NULL;
        int r;

        for (size_t i = 0; i < l->n_fds; i++) {
                _cleanup_json_ json_object *args = args_new("fdset-id", json_object_new_int64((int64_t) i + 1));

                r = args_add(args, "opaque", json_object_new_string(l->fds[i].layer));
                if (r < 0)
                        return r;
                r = export_qmp(e, "add-fd", args, l->fds[i].fd, NULL, err);
                if (r < 0)
                        return r;
        }
        r = open_disk_blockdev(s, d, l->read_only, true, &text);
        if (r < 0)
                return r;
        nodes = json_tokener_parse(text);
        if (!nodes || !json_object_is_type(nodes, json_type_array))
                return -EINVAL;
        for (size_t i = 0; i < json_object_array_length(nodes); i++) {
                r = add_node(e, json_object_array_get_idx(nodes, i), err);
                if (r < 0)
                        return r;
        }
        return export_set_nodes(e, d);
}

/* A listening socket in the helper's directory, one connection to it, and both names gone at once:
 * nobody else can ever connect. Returns the listener; *ret_client is the caller's end. */
static int export_socket(const char *dir, int *ret_client) {
        _cleanup_close_ int listener = -EBADF, client = -EBADF;
        struct sockaddr_un sa;
        socklen_t len;
        int r;

        r = helper_socket_address(dir, EXPORT_SOCKET, &sa, &len);
        if (r < 0)
                return r;
        listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        client = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (listener < 0 || client < 0)
                return negative_errno();
        (void) unlink(sa.sun_path);
        if (bind(listener, (struct sockaddr *) &sa, len) < 0 || listen(listener, 1) < 0 ||
            connect(client, (struct sockaddr *) &sa, len) < 0) {
                r = negative_errno();
                (void) unlink(sa.sun_path);
                return r;
        }
        if (unlink(sa.sun_path) < 0)
                return negative_errno();
        *ret_client = TAKE_FD(client);
        return TAKE_FD(listener);
}

static int start_export(Export *e, const char *disk, bool read_only, int listener, OpError *err) {
        _cleanup_json_ json_object *fdname = args_new("fdname", json_object_new_string(EXPORT_ID));
        _cleanup_json_ json_object *args = json_object_new_object();
        json_object *addr;
        int r;

        r = export_qmp(e, "getfd", fdname, listener, NULL, err);
        if (r < 0)
                return r;
        if (e->type == EXPORT_NBD) {
                _cleanup_json_ json_object *server = NULL;

                addr = args_new("type", json_object_new_string("fd"));
                r = args_add(addr, "data", args_new("str", json_object_new_string(EXPORT_ID)));
                server = addr ? args_new("addr", addr) : NULL;
                if (r < 0 || !server)
                        return -ENOMEM;
                r = export_qmp(e, "nbd-server-start", server, -EBADF, NULL, err);
                if (r < 0)
                        return r;
                r = args_add(args, "name", json_object_new_string(disk));
        } else {
                addr = args_new("type", json_object_new_string("fd"));
                r = args_add(addr, "str", json_object_new_string(EXPORT_ID));
                if (r >= 0)
                        r = args_add(args, "addr", addr);
        }
        if (r >= 0)
                r = args_add(args, "type", json_object_new_string(export_type_to_string(e->type)));
        if (r >= 0)
                r = args_add(args, "id", json_object_new_string(EXPORT_ID));
        if (r >= 0)
                r = args_add(args, "node-name", json_object_new_string(e->nodes[0]));
        if (r >= 0)
                r = args_add(args, "writable", json_object_new_boolean(!read_only));
        if (r < 0)
                return r;
        return export_qmp(e, "block-export-add", args, -EBADF, NULL, err);
}

/* What a launcher needs to attach the socket (docs/dbus-api.md, "Exports"). */
static int attach_description(const Export *e, const char *disk, bool read_only, uint64_t size, char **ret) {
        _cleanup_json_ json_object *o = json_object_new_object();
        json_object *dev = NULL;
        const char *text;
        int r;

        r = args_add(o, "type", json_object_new_string(export_type_to_string(e->type)));
        if (r >= 0)
                r = args_add(o, "socket", json_object_new_int(0));
        if (r >= 0)
                r = args_add(o, "read-only", json_object_new_boolean(read_only));
        if (r >= 0)
                r = args_add(o, "size", json_object_new_uint64(size));
        if (r >= 0 && e->type == EXPORT_VHOST_USER_BLK) {
                json_object *chardev = args_new("id", json_object_new_string(disk));

                r = args_add(chardev, "backend", json_object_new_string("socket"));
                if (r >= 0)
                        r = args_add(o, "chardev", chardev);
                dev = args_new("driver", json_object_new_string("vhost-user-blk-pci"));
                if (r >= 0)
                        r = args_add(dev, "chardev", json_object_new_string(disk));
                /* The guest must flush: the helper caches writes (without this, QEMU 7.2 tells the guest
                 * the cache is write-through and a guest's fdatasync is lost with the helper). */
                if (r >= 0)
                        r = args_add(dev, "config-wce", json_object_new_boolean(false));
                if (r >= 0)
                        r = args_add(o, "device", TAKE_PTR(dev));
                if (r >= 0)
                        r = args_add(o, "shared-memory", json_object_new_boolean(true));
                json_object_put(dev);
        } else if (r >= 0) {
                json_object *server = args_new("type", json_object_new_string("fd"));

                dev = args_new("driver", json_object_new_string("nbd"));
                r = args_add(dev, "node-name", json_object_new_string(disk));
                if (r >= 0)
                        r = args_add(dev, "export", json_object_new_string(disk));
                if (r >= 0)
                        r = args_add(server, "str", json_object_new_string(""));
                if (r >= 0)
                        r = args_add(dev, "server", TAKE_PTR(server));
                if (r >= 0)
                        r = args_add(dev, "read-only", json_object_new_boolean(read_only));
                if (r >= 0)
                        r = args_add(o, "blockdev", TAKE_PTR(dev));
                json_object_put(server);
                json_object_put(dev);
        }
        if (r < 0)
                return r;
        text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
        *ret = text ? strdup(text) : NULL;
        return *ret ? 0 : -ENOMEM;
}

/* The lease as plain data, so that a restarted vdiskd finds it again. Written atomically (rename). */
int export_save_state(const Export *e) {
        _cleanup_json_ json_object *o = json_object_new_object(), *nodes = json_object_new_array();
        const Lease *l = e->lease;
        char path[PATH_MAX], tmp[PATH_MAX];
        _cleanup_close_ int fd = -EBADF;
        const char *text;
        int r;

        for (size_t i = 0; nodes && i < e->n_nodes; i++)
                if (json_object_array_add(nodes, json_object_new_string(e->nodes[i])) < 0)
                        return -ENOMEM;
        r = args_add(o, "version", json_object_new_int(1));
        if (r >= 0)
                r = args_add(o, "lease", json_object_new_string(l->id));
        if (r >= 0)
                r = args_add(o, "vm", json_object_new_string(l->vm));
        if (r >= 0)
                r = args_add(o, "disk", json_object_new_string(l->disk));
        if (r >= 0)
                r = args_add(o, "read-only", json_object_new_boolean(l->read_only));
        if (r >= 0)
                r = args_add(o, "type", json_object_new_string(export_type_to_string(e->type)));
        if (r >= 0)
                r = args_add(o, "holder", json_object_new_string(l->holder));
        if (r >= 0)
                r = args_add(o, "holder-uid", json_object_new_int64(l->holder_uid));
        if (r >= 0)
                r = args_add(o, "holder-pid", json_object_new_int64(l->holder_pid));
        if (r >= 0)
                r = args_add(o, "helper-pid", json_object_new_int64(e->helper->pid));
        if (r >= 0)
                r = args_add(o, "helper-uid", json_object_new_int64(e->uid));
        if (r >= 0)
                r = args_add(o, "nodes", TAKE_PTR(nodes));
        if (r >= 0)
                r = args_add(o, "starting", json_object_new_boolean(e->starting));
        if (r >= 0 && e->job_op) {
                json_object *job = args_new("operation", json_object_new_string(e->job_op));
                r = args_add(job, "layer", json_object_new_string(e->job_layer));
                if (r >= 0)
                        r = args_add(o, "job", job);
        }
        if (r < 0)
                return r;
        text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
        if (!text)
                return -ENOMEM;
        if (dir_file(path, e->dir, EXPORT_STATE) < 0 || dir_file(tmp, e->dir, EXPORT_STATE ".tmp") < 0)
                return -ENAMETOOLONG;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return negative_errno();
        if (write(fd, text, strlen(text)) != (ssize_t) strlen(text))
                return -EIO;
        if (rename(tmp, path) < 0)
                return negative_errno();
        return 0;
}

static int mkdir_0700(const char *path) {
        if (mkdir(path, 0700) < 0 && errno != EEXIST)
                return negative_errno();
        return 0;
}

int export_pick_uid(const ExportSettings *set, const LeaseRegistry *leases, const ExportSpares *spares, uid_t *ret) {
        for (uint64_t uid = set->uid_first; uid <= set->uid_last; uid++) {
                bool used = export_spares_uses_uid(spares, (uid_t) uid);
                for (size_t i = 0; !used && leases && i < leases->n_leases; i++)
                        used = leases->leases[i]->export && leases->leases[i]->export->uid == uid;
                if (!used) {
                        *ret = (uid_t) uid;
                        return 0;
                }
        }
        return -E2BIG;
}

static int on_helper_event(QmpClient *c, const char *event, json_object *data, void *userdata) {
        Export *e = userdata;

        if (event) {
                log_debug("Helper of lease %s: event %s", e->lease->id, event);
                return 0;
        }
        /* The monitor connection ended: the helper is gone, or vdiskd's client gave up on it (a reply
         * that did not come in time, a message that broke the protocol). Either way its lease ends (the
         * helper is stopped with it); the VM sees its disk fail, never a silent loss. The two are told
         * apart, so that the log and the lease's end say which. */
        char status[64], why[96];
        int dead = qmp_client_dead_reason(c) ?: -EPIPE;
        /* A connection closed by the helper's end: it is exiting (its sockets close before it can be
         * waited for), give it a moment. One that vdiskd's client gave up on: look only. */
        bool exited = helper_wait_exited(e->helper, dead == -ECONNRESET || dead == -EPIPE ? 1000 : 0);

        helper_describe_exit(e->helper, status, sizeof(status));
        if (exited)
                snprintf(why, sizeof(why), "its storage helper %s", status);
        else
                snprintf(why, sizeof(why), "the monitor of its storage helper failed: %s", strerror(-dead));
        log_warning("Helper of lease %s (pid %d): %s (its monitor: %s)", e->lease->id, (int) e->helper->pid,
                    exited ? status : "still running, its monitor failed", strerror(-dead));
        helper_log_tail(e->helper);
        e->gone(e->lease, why, e->userdata);
        return 0;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
}

/* A helper of its own for the export: a spare if one is there, else one started now. */
static int export_helper(const ExportSettings *set, ExportSpares *spares, const LeaseRegistry *leases,
                         const char *exports, Export *e, Lease *l, OpError *err) {
        HelperSpawn spawn;
        char id[LAYER_ID_LEN + 1];
        int r;

        r = export_spares_take(spares, exports, &e->helper, &e->uid, id);
        if (r > 0) {
                /* The lease is not registered yet: it takes the id its helper was started with (its
                 * QEMU -name, checked when vdiskd finds it again after a restart). */
                memcpy(l->id, id, sizeof(id));
                return asprintf(&e->dir, "%s/%s", exports, l->id) < 0 ? -ENOMEM : 1;
        }
        if (r < 0)
                log_warning_errno(r, "No spare helper for lease %s; starting one", l->id);
        if (asprintf(&e->dir, "%s/%s", exports, l->id) < 0)
                return -ENOMEM;
        if (mkdir(e->dir, 0700) < 0)
                return op_error(err, -EIO, "Cannot create the export's directory %s: %s", e->dir, strerror(errno));
        if (geteuid() == 0) {
                r = export_pick_uid(set, leases, spares, &e->uid);
                if (r < 0)
                        return op_error(err, r, "No helper uid is free (all of [Exports] HelperUids= serve exports)");
        }
        spawn = (HelperSpawn) { .binary = set->helper, .dir = e->dir, .name = l->id, .switch_uid = geteuid() == 0,
                                .uid = e->uid, .gid = (gid_t) e->uid };
        r = helper_spawn(&spawn, &e->helper);
        /* A helper that started but whose monitor did not complete its handshake is gone again
         * (helper_spawn stops it): one more try before the caller hears of it. Seen once under
         * valgrind ("Bad message"); the first failure is logged with its reason. */
        if (r == -EBADMSG || r == -ETIMEDOUT || r == -ECONNRESET || r == -EPIPE) {
                log_warning("Storage helper of lease %s failed its monitor handshake (%s); starting it again", l->id,
                            strerror(-r));
                r = helper_spawn(&spawn, &e->helper);
        }
        if (r < 0)
                return op_error(err, -EIO, "Cannot start the storage helper %s: %s", set->helper, strerror(-r));
        return 0;
}

/* long because: the steps of an export's start, each of which can fail, read best in one place. */
int export_start(const ExportSettings *set, ExportSpares *spares, Store *s, const LeaseRegistry *leases, const Disk *d,
                 Lease *l, ExportType type, sd_event *event, ExportGoneHandler gone, void *userdata, char **ret_attach,
                 OpError *err) {
        _cleanup_close_ int listener = -EBADF, client = -EBADF;
        _cleanup_free_ char *exports = NULL, *attach = NULL;
        Layer *top = store_find_layer(s, d->chain[0]);
        uint64_t t0 = now_usec(), t1, t2;
        bool spare;
        Export *e;
        int r;

        if (!set->enabled)
                return op_error(err, -EOPNOTSUPP, "Exports are disabled ([Exports] Enabled=no)");
        e = calloc(1, sizeof(Export));
        if (!e)
                return -ENOMEM;
        *e = (Export) { .type = type, .lease = l, .gone = gone, .userdata = userdata, .uid = geteuid() };
        l->export = e;
        if (asprintf(&exports, "%s/exports", set->runtime_dir) < 0) {
                l->export = export_free(e);
                return -ENOMEM;
        }
        r = mkdir_0700(set->runtime_dir);
        if (r >= 0)
                r = mkdir_0700(exports);
        if (r < 0) {
                l->export = export_free(e);
                return op_error(err, -EIO, "Cannot create the export's directory under %s: %s", set->runtime_dir, strerror(-r));
        }
        r = export_helper(set, spares, leases, exports, e, l, err);
        if (r < 0) {
                if (!e->dir) {
                        l->export = export_free(e);
                        return r;
                }
                goto fail;
        }
        spare = r > 0;
        t1 = now_usec();
        /* Recorded before the helper gets any file: a vdiskd that dies from here on finds the helper
         * again at its next start and stops it (state "starting"). */
        e->starting = true;
        r = export_save_state(e);
        if (r >= 0)
                r = hand_over_chain(e, s, d, l, err);
        if (r >= 0)
                crash_point("export:after-handover");
        t2 = now_usec();
        if (r >= 0)
                r = listener = export_socket(e->dir, &client);
        if (r >= 0)
                r = start_export(e, d->name, l->read_only, listener, err);
        if (r >= 0)
                r = attach_description(e, d->name, l->read_only, top ? top->virtual_size : 0, &attach);
        if (r < 0) {
                if (!err->code)
                        op_error(err, r, "Cannot export disk '%s' of VM '%s'", d->name, l->vm);
                goto fail;
        }

        /* The daemon's copies of the chain go: the helper holds the files now, the caller gets the socket. */
        for (size_t i = 0; i < l->n_fds; i++)
                safe_close(l->fds[i].fd);
        l->n_fds = 1;
        l->fds[0] = (LeaseFd) { .fd = TAKE_FD(client) };
        e->starting = false;
        r = export_save_state(e);
        if (r >= 0)
                r = qmp_client_attach_event(e->helper->qmp, event, SD_EVENT_PRIORITY_NORMAL, on_helper_event, e);
        if (r < 0) {
                op_error(err, r, "Cannot record the export of disk '%s' of VM '%s'", d->name, l->vm);
                goto fail;
        }
        log_info("Disk '%s' of VM '%s' exported over %s by helper pid %d (uid %u) in %.1f ms: %s helper %.1f ms, "
                 "chain %.1f ms, export %.1f ms", d->name, l->vm, export_type_to_string(type), (int) e->helper->pid,
                 (unsigned) e->uid, (double) (now_usec() - t0) / 1000.0, spare ? "spare" : "new", (double) (t1 - t0) / 1000.0,
                 (double) (t2 - t1) / 1000.0, (double) (now_usec() - t2) / 1000.0);
        *ret_attach = TAKE_PTR(attach);
        return 0;

fail:
        export_stop(e);
        l->export = export_free(e);
        return r;
}

static const char *state_string(json_object *o, const char *key) {
        json_object *v;
        return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static bool state_int(json_object *o, const char *key, int64_t min, int64_t max, int64_t *ret) {
        json_object *v;
        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return false;
        *ret = json_object_get_int64(v);
        return *ret >= min && *ret <= max;
}

static int read_state(const char *dir, json_object **ret) {
        _cleanup_free_ char *text = NULL;
        _cleanup_close_ int fd = -EBADF;
        char path[PATH_MAX];
        ssize_t n;

        if (dir_file(path, dir, EXPORT_STATE) < 0)
                return -ENAMETOOLONG;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
                return negative_errno();
        text = malloc(EXPORT_STATE_MAX + 1);
        if (!text)
                return -ENOMEM;
        n = read(fd, text, EXPORT_STATE_MAX + 1);
        if (n < 0)
                return negative_errno();
        if (n > (ssize_t) EXPORT_STATE_MAX)
                return -EFBIG;
        text[n] = 0;
        *ret = json_tokener_parse(text);
        return *ret && json_object_is_type(*ret, json_type_object) ? 0 : -EBADMSG;
}

/* The lease of one export directory, as its state says; the helper not attached yet. */
static int lease_from_state(const char *dir, const char *id, json_object *st, Lease **ret) {
        const char *vm = state_string(st, "vm"), *disk = state_string(st, "disk"), *holder = state_string(st, "holder");
        const char *type = state_string(st, "type"), *lease = state_string(st, "lease");
        int64_t version, holder_uid, holder_pid, helper_pid, helper_uid;
        json_object *ro, *nodes, *job;
        ExportType t;
        Export *e;
        Lease *l;

        if (!state_int(st, "version", 1, 1, &version) || !vm || !disk || !holder || !lease || !streq(lease, id) ||
            !state_int(st, "holder-uid", 0, UINT32_MAX - 1, &holder_uid) || !state_int(st, "holder-pid", 0, INT32_MAX, &holder_pid) ||
            !state_int(st, "helper-pid", 1, INT32_MAX, &helper_pid) || !state_int(st, "helper-uid", 0, UINT32_MAX - 1, &helper_uid) ||
            !json_object_object_get_ex(st, "read-only", &ro) || !json_object_is_type(ro, json_type_boolean) ||
            !json_object_object_get_ex(st, "nodes", &nodes) || !json_object_is_type(nodes, json_type_array) ||
            json_object_array_length(nodes) == 0 || export_type_from_string(type, &t) < 0 || t == EXPORT_NONE)
                return -EBADMSG;

        l = calloc(1, sizeof(Lease));
        e = calloc(1, sizeof(Export));
        if (!l || !e) {
                free(l);
                free(e);
                return -ENOMEM;
        }
        *l = (Lease) { .vm = strdup(vm), .disk = strdup(disk), .holder = strdup(holder), .read_only = json_object_get_boolean(ro),
                       .holder_uid = (uid_t) holder_uid, .holder_pid = (pid_t) holder_pid, .fds = calloc(1, sizeof(LeaseFd)),
                       .n_fds = 1, .export = e };
        memcpy(l->id, id, LAYER_ID_LEN); /* a valid layer id: exactly that long */
        l->id[LAYER_ID_LEN] = 0;
        *e = (Export) { .type = t, .dir = strdup(dir), .uid = (uid_t) helper_uid, .lease = l,
                        .nodes = calloc(json_object_array_length(nodes), sizeof(char *)) };
        if (!l->vm || !l->disk || !l->holder || !l->fds || !e->dir || !e->nodes) {
                lease_free(l);
                return -ENOMEM;
        }
        l->fds[0] = (LeaseFd) { .fd = -EBADF, .handed_out = true };
        for (size_t i = 0; i < json_object_array_length(nodes); i++) {
                json_object *n = json_object_array_get_idx(nodes, i);
                if (!json_object_is_type(n, json_type_string) || !(e->nodes[i] = strdup(json_object_get_string(n)))) {
                        lease_free(l);
                        return -EBADMSG;
                }
                e->n_nodes++;
        }
        if (json_object_object_get_ex(st, "job", &job)) {
                const char *op = state_string(job, "operation"), *layer = state_string(job, "layer");
                if (!op || !layer || (!isempty(layer) && !layer_id_is_valid(layer)) || !(e->job_op = strdup(op))) {
                        lease_free(l);
                        return -EBADMSG;
                }
                snprintf(e->job_layer, sizeof(e->job_layer), "%s", layer);
        }
        e->helper = calloc(1, sizeof(Helper)); /* pid only, until attached */
        if (!e->helper) {
                lease_free(l);
                return -ENOMEM;
        }
        *e->helper = (Helper) { .pid = (pid_t) helper_pid, .pidfd = -EBADF };
        *ret = l;
        return 0;
}

/* One export directory after a restart: a lease again, or ended. */
static void recover_one(const ExportSettings *set, Store *s, LeaseRegistry *leases, sd_event *event, const char *dir,
                        const char *id, ExportGoneHandler gone, void *userdata) {
        _cleanup_json_ json_object *st = NULL;
        json_object *starting;
        Helper *h = NULL;
        Lease *l = NULL;
        int r;

        r = read_state(dir, &st);
        if (r >= 0 && json_object_object_get_ex(st, "starting", &starting) && json_object_get_boolean(starting))
                r = -EINPROGRESS;
        if (r >= 0)
                r = lease_from_state(dir, id, st, &l);
        if (r < 0) {
                /* vdiskd died while starting it (OpenDisk had not answered: the helper never served
                 * anyone), or not one of ours: whatever helper answers on its monitor quits. */
                log_warning("Export directory %s: %s; its helper (if any) is stopped and the directory removed", dir,
                            r == -EINPROGRESS ? "the export's start was interrupted" : "no usable state");
                (void) helper_quit_dir(dir);
                export_remove_dir(dir);
                return;
        }
        l->export->gone = gone;
        l->export->userdata = userdata;
        if (lease_registry_add(leases, l) < 0) {
                lease_free(l);
                return;
        }
        r = helper_attach(dir, id, l->export->helper->pid, &h);
        if (r < 0) {
                lease_end(s, leases, l, "its storage helper exited while vdiskd was not running");
                return;
        }
        helper_free(l->export->helper);
        l->export->helper = h;
        r = qmp_client_attach_event(h->qmp, event, SD_EVENT_PRIORITY_NORMAL, on_helper_event, l->export);
        if (r < 0 || !store_find_vm(s, l->vm)) {
                lease_end(s, leases, l, r < 0 ? "cannot watch its storage helper" : "its VM is gone");
                return;
        }
        log_info("Lease " VDISK_LEASE_PREFIX "/%s of disk '%s' of VM '%s' found again: helper pid %d serves it", l->id,
                 l->disk, l->vm, (int) h->pid);
        /* A live snapshot recorded before vdiskd stopped, but not switched to yet. */
        if (!l->read_only) {
                OpError err = {};
                if (export_reconcile(l->export, s, &err) < 0)
                        log_error("Export of disk '%s' of VM '%s' does not serve its recorded chain: %s", l->disk, l->vm,
                                  err.reason);
        }
}

int export_recover(const ExportSettings *set, Store *s, LeaseRegistry *leases, sd_event *event, ExportGoneHandler gone,
                   void *userdata) {
        _cleanup_free_ char *exports = NULL;
        DIR *d;
        struct dirent *de;

        /* Spares of a previous vdiskd hold nothing: they are stopped, new ones started. */
        export_spares_cleanup(set);
        if (asprintf(&exports, "%s/exports", set->runtime_dir) < 0)
                return -ENOMEM;
        d = opendir(exports);
        if (!d)
                return errno == ENOENT ? 0 : log_error_errno(errno, "Failed to read %s", exports);
        while ((de = readdir(d))) {
                char dir[PATH_MAX];

                if (de->d_name[0] == '.' || dir_file(dir, exports, de->d_name) < 0)
                        continue;
                if (!layer_id_is_valid(de->d_name)) {
                        log_warning("Ignoring %s: not an export directory", dir);
                        continue;
                }
                recover_one(set, s, leases, event, dir, de->d_name, gone, userdata);
        }
        closedir(d);
        return 0;
}
