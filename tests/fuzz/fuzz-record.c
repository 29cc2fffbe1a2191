/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Fuzz target: the record reader — record_read() on a file holding the input (size limit, JSON depth
 * limit, trailing bytes, schema), then the same document as a layer record, a VM record and a journal
 * intent. Records that are accepted must survive a write/read round trip unchanged.
 */

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "record.h"
#include "store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RECORD_NAME "record.json"

static char dir[PATH_MAX];
static int dir_fd = -1, file_fd = -1;

static void cleanup(void) {
        (void) unlinkat(dir_fd, RECORD_NAME, 0);
        (void) rmdir(dir);
}

static void same_json(struct json_object *a, struct json_object *b) {
        const char *x = json_object_to_json_string_ext(a, JSON_C_TO_STRING_PLAIN);
        const char *y = json_object_to_json_string_ext(b, JSON_C_TO_STRING_PLAIN);

        if (!x || !y || strcmp(x, y) != 0)
                abort();
}

static void check_layer(struct json_object *o) {
        Layer *l = NULL, *l2 = NULL;
        struct json_object *j, *j2;

        if (layer_from_json(o, &l) < 0)
                return;
        j = layer_to_json(l);
        if (layer_from_json(j, &l2) < 0)
                abort();
        j2 = layer_to_json(l2);
        same_json(j, j2);
        json_object_put(j);
        json_object_put(j2);
        layer_free(l);
        layer_free(l2);
}

static void check_vm(struct json_object *o) {
        Vm *v = NULL, *v2 = NULL;
        struct json_object *j, *j2;

        if (vm_from_json(o, &v) < 0)
                return;
        if (vm_copy(v, &v2) < 0)
                abort();
        j = vm_to_json(v);
        j2 = vm_to_json(v2);
        same_json(j, j2);
        json_object_put(j);
        json_object_put(j2);
        vm_free(v);
        vm_free(v2);
}

static void check_intent(struct json_object *o) {
        Intent i;

        if (intent_parse(o, &i) < 0)
                return;
        if (!i.op || !i.commit_name || i.n_new > INTENT_MAX_LAYERS || i.n_drop > INTENT_MAX_LAYERS ||
            i.n_modify > INTENT_MAX_MODIFY || (i.commit == INTENT_COMMIT_CHAIN && !i.commit_disk))
                abort();
        for (size_t k = 0; k < i.n_unlink; k++)
                if (i.n_unlink > INTENT_MAX_LAYERS || !i.unlink_after[k].path || i.unlink_after[k].path[0] != '/' ||
                    (i.unlink_after[k].mode != MODE_INVALID && i.unlink_after[k].mode > 07777))
                        abort();
        for (size_t k = 0; k < i.n_modify; k++)
                if (!streq(i.modify[k].before->id, i.modify[k].layer) || !streq(i.modify[k].after->id, i.modify[k].layer))
                        abort();
        intent_done(&i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        struct json_object *o = NULL;
        int r;

        if (dir_fd < 0) {
                /* tmpfs: on a disk file system, truncating and rewriting a file per input waits for I/O. */
                const char *tmp = getenv("TMPDIR") ?: (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");

                if (snprintf(dir, sizeof(dir), "%s/fuzz-record-XXXXXX", tmp) >= (int) sizeof(dir) || !mkdtemp(dir))
                        abort();
                dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                file_fd = openat(dir_fd, RECORD_NAME, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
                if (dir_fd < 0 || file_fd < 0)
                        abort();
                atexit(cleanup);
        }
        /* Past the size limit record_read() only looks at the size: don't write megabytes for that. */
        if (size > RECORD_MAX_SIZE + 1)
                size = RECORD_MAX_SIZE + 1;
        if (ftruncate(file_fd, 0) < 0 || format_pwrite_full(file_fd, data, size, 0) < 0)
                abort();

        r = record_read(dir_fd, RECORD_NAME, &o);
        if (r < 0) {
                if (r != -EBADMSG && r != -EPROTONOSUPPORT && r != -E2BIG)
                        abort();
                return 0;
        }
        if (!json_object_is_type(o, json_type_object))
                abort();

        check_layer(o);
        check_vm(o);
        check_intent(o);
        json_object_put(o);
        return 0;
}
