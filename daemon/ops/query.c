/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <json-c/json.h>
#include <string.h>

#include "describe.h"
#include "query.h"
#include "util.h"

int op_vm_owner(Store *s, const char *vm, uid_t *ret) {
        Vm *v = store_find_vm(s, vm);
        if (!v)
                return -ENOENT;
        *ret = v->owner_uid;
        return 0;
}

bool op_owns_any_vm(Store *s, uid_t uid) {
        for (size_t i = 0; i < s->n_vms; i++)
                if (s->vms[i]->owner_uid == uid)
                        return true;
        return false;
}

int op_list_images(Store *s, ImageListFunc cb, void *userdata) {
        for (size_t i = 0; i < s->n_layers; i++) {
                Layer *l = s->layers[i];
                int r;

                if (!l->catalog_name || l->state != LAYER_READY)
                        continue;
                r = cb(l, store_layer_allocated(s, l), userdata);
                if (r < 0)
                        return r;
        }
        return 0;
}

int op_list_vms(Store *s, uid_t owner, VmListFunc cb, void *userdata) {
        for (size_t i = 0; i < s->n_vms; i++) {
                int r;

                if (owner != UID_ANY && s->vms[i]->owner_uid != owner)
                        continue;
                r = cb(s->vms[i], userdata);
                if (r < 0)
                        return r;
        }
        return 0;
}

int op_get_chain(Store *s, const char *vm, const char *disk, ChainLayerFunc cb, void *userdata, OpError *err) {
        Disk *d;
        int r;

        r = op_find_disk(s, vm, disk, NULL, &d, err);
        if (r < 0)
                return r;
        for (size_t k = 0; k < d->n_chain; k++) {
                Layer *l = store_find_layer(s, d->chain[k]);

                if (!l)
                        return op_error(err, -EBADMSG, "The record of layer %s is missing", d->chain[k]);
                r = cb(l, store_layer_allocated(s, l), userdata);
                if (r < 0)
                        return r;
        }
        return 0;
}

int op_inspect(int caller_fd, ImageFormat f, const Limits *lim, char **ret_json, OpError *err) {
        _cleanup_close_ int fd = -EBADF;
        DescribeOptions opts = { .check = true, .limits.max_virtual_size = lim->max_virtual_size };
        struct json_object *o = NULL;
        int r;

        fd = op_check_caller_fd(caller_fd, err);
        if (fd < 0)
                return fd;
        r = image_describe(fd, f, &opts, &o);
        if (r < 0)
                return op_error(err, r, "Cannot read the image");
        *ret_json = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
        json_object_put(o);
        return *ret_json ? 0 : -ENOMEM;
}
