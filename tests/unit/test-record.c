/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Records: atomic writes, the defensive reader (size, depth, schema, types) and the typed decoders. */

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "record.h"
#include "store.h"
#include "test-util.h"

static int dirfd_tmp = -1;
static char tmpdir[] = "/tmp/vdisk-test-record-XXXXXX";

static void put(const char *name, const char *text) {
        int fd = openat(dirfd_tmp, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        CHECK_EQ_INT(write(fd, text, strlen(text)), (long long) strlen(text));
        close(fd);
}

static int read_text(const char *text) {
        struct json_object *o = NULL;
        int r;

        put("r.json", text);
        r = record_read(dirfd_tmp, "r.json", &o);
        json_object_put(o);
        return r;
}

static const char *valid_layer =
        "{\"schema\":1,\"layer\":\"0123456789abcdef0123456789abcdef\",\"file\":\"0123456789abcdef0123456789abcdef.qcow2\","
        "\"format\":\"qcow2\",\"virtual_size\":1073741824,\"backing_layer\":null,\"backing_format\":null,\"data_file\":null,"
        "\"catalog_name\":\"base\",\"vm\":null,\"state\":\"ready\",\"generation\":1,\"inode\":42}";

static int layer_text(const char *text) {
        struct json_object *o = json_tokener_parse(text);
        Layer *l = NULL;
        int r;

        CHECK(o != NULL);
        r = layer_from_json(o, &l);
        json_object_put(o);
        layer_free(l);
        return r;
}

static char *replace(const char *s, const char *from, const char *to) {
        const char *p = strstr(s, from);
        char *out;

        CHECK(p != NULL);
        if (!p)
                return strdup(s);
        out = malloc(strlen(s) - strlen(from) + strlen(to) + 1);
        sprintf(out, "%.*s%s%s", (int) (p - s), s, to, p + strlen(from));
        return out;
}

static void test_reader(void) {
        char *big, *deep;

        CHECK_EQ_INT(read_text("{\"schema\":1}"), 0);
        CHECK_EQ_INT(read_text("{\"schema\":2}"), -EPROTONOSUPPORT); /* newer than this daemon */
        CHECK_EQ_INT(read_text("{\"schema\":0}"), -EBADMSG);
        CHECK_EQ_INT(read_text("{\"schema\":\"1\"}"), -EBADMSG);
        CHECK_EQ_INT(read_text("{}"), -EBADMSG);
        CHECK_EQ_INT(read_text("[1]"), -EBADMSG);
        CHECK_EQ_INT(read_text("{\"schema\":1"), -EBADMSG);
        CHECK_EQ_INT(read_text("{\"schema\":1} trailing"), -EBADMSG);
        CHECK_EQ_INT(read_text(""), -EBADMSG);

        /* Depth limit: 8 levels accepted, 40 refused. */
        deep = calloc(1, 256);
        strcpy(deep, "{\"schema\":1,\"x\":");
        for (int i = 0; i < 40; i++)
                strcat(deep, "[");
        for (int i = 0; i < 40; i++)
                strcat(deep, "]");
        strcat(deep, "}");
        CHECK_EQ_INT(read_text(deep), -EBADMSG);
        free(deep);
        CHECK_EQ_INT(read_text("{\"schema\":1,\"x\":[[[[[[1]]]]]]}"), 0);

        /* Size limit. */
        big = malloc(RECORD_MAX_SIZE + 64);
        memset(big, ' ', RECORD_MAX_SIZE + 63);
        memcpy(big, "{\"schema\":1}", 12);
        big[RECORD_MAX_SIZE + 63] = 0;
        CHECK_EQ_INT(read_text(big), -E2BIG);
        free(big);

        /* Not a regular file, a symlink, absent. */
        CHECK_EQ_INT(mkdirat(dirfd_tmp, "dir.json", 0700), 0);
        CHECK(record_read(dirfd_tmp, "dir.json", &(struct json_object *) { NULL }) < 0);
        CHECK_EQ_INT(symlinkat("r.json", dirfd_tmp, "link.json"), 0);
        CHECK_EQ_INT(record_read(dirfd_tmp, "link.json", &(struct json_object *) { NULL }), -ELOOP);
        CHECK_EQ_INT(record_read(dirfd_tmp, "absent.json", &(struct json_object *) { NULL }), -ENOENT);
}

static void test_layer_decoder(void) {
        static const struct {
                const char *from, *to;
        } bad[] = {
                { "\"layer\":\"0123456789abcdef0123456789abcdef\"", "\"layer\":\"../etc\"" },
                { "\"file\":\"0123456789abcdef0123456789abcdef.qcow2\"", "\"file\":\"/etc/passwd\"" },
                { "\"file\":\"0123456789abcdef0123456789abcdef.qcow2\"", "\"file\":\"0123456789abcdef0123456789abcdef.raw\"" },
                { "\"format\":\"qcow2\"", "\"format\":\"vmdk\"" },
                { "\"virtual_size\":1073741824", "\"virtual_size\":-1" },
                { "\"virtual_size\":1073741824", "\"virtual_size\":\"1G\"" },
                { "\"backing_layer\":null", "\"backing_layer\":\"0123456789abcdef0123456789abcdee\"" }, /* no format */
                { "\"data_file\":null", "\"data_file\":\"x\"" },
                { "\"catalog_name\":\"base\"", "\"catalog_name\":null" }, /* neither catalog nor VM */
                { "\"vm\":null", "\"vm\":\"web\"" },                        /* both */
                { "\"state\":\"ready\"", "\"state\":\"whatever\"" },
                { ",\"inode\":42", "" },                                    /* missing field */
                /* The writer (cluster mode): optional, but well-formed if there. */
                { "\"generation\":1,", "\"generation\":1,\"writer\":2," },
                { "\"generation\":1,", "\"generation\":1,\"writer\":null," },
                { "\"generation\":1,", "\"generation\":1,\"writer\":{}," },
                { "\"generation\":1,", "\"generation\":1,\"writer\":{\"host_id\":0}," },
                { "\"generation\":1,", "\"generation\":1,\"writer\":{\"host_id\":2001}," },
                { "\"generation\":1,", "\"generation\":1,\"writer\":{\"host_id\":\"2\"}," },
                { "\"generation\":1,", "\"generation\":1,\"writer\":{\"host_id\":2,\"x\":1}," },
        };

        CHECK_EQ_INT(layer_text(valid_layer), 0);
        {
                char *t = replace(valid_layer, "\"generation\":1,", "\"generation\":1,\"writer\":{\"host_id\":2000},");
                CHECK_EQ_INT(layer_text(t), 0);
                free(t);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char *t = replace(valid_layer, bad[i].from, bad[i].to);
                if (layer_text(t) != -EBADMSG)
                        fprintf(stderr, "accepted bad layer record %zu: %s\n", i, t);
                CHECK_EQ_INT(layer_text(t), -EBADMSG);
                free(t);
        }
}

static void test_roundtrip(void) {
        struct json_object *o, *back = NULL;
        Vm *v = NULL, *v2 = NULL;
        const char *text = "{\"schema\":1,\"name\":\"web\",\"owner_uid\":1000,\"generation\":3,"
                           "\"disks\":[{\"name\":\"root\",\"chain\":[\"0123456789abcdef0123456789abcdef\","
                           "\"fedcba9876543210fedcba9876543210\"]}]}";

        o = json_tokener_parse(text);
        CHECK_EQ_INT(vm_from_json(o, &v), 0);
        json_object_put(o);
        if (!v)
                return;
        CHECK_EQ_INT(v->owner_uid, 1000);
        CHECK_EQ_INT(v->n_disks, 1);
        CHECK_EQ_INT(v->disks[0].n_chain, 2);

        /* Written atomically, read back identical; no temporary left behind. */
        o = vm_to_json(v);
        CHECK_EQ_INT(record_write(dirfd_tmp, "vm-web.json", o), 0);
        json_object_put(o);
        CHECK_EQ_INT(record_read(dirfd_tmp, "vm-web.json", &back), 0);
        CHECK_EQ_INT(vm_from_json(back, &v2), 0);
        json_object_put(back);
        CHECK(v2 && streq(v2->disks[0].chain[1], "fedcba9876543210fedcba9876543210"));
        CHECK_EQ_INT(v2 ? v2->generation : 0, 3);
        CHECK(faccessat(dirfd_tmp, ".#vm-web.json", F_OK, 0) < 0);
        CHECK_EQ_INT(v2 ? v2->writer : 1, 0);
        CHECK(!json_object_object_get_ex(o = vm_to_json(v), "writer", NULL)); /* local mode: no writer */
        json_object_put(o);
        vm_free(v2);
        v2 = NULL;

        /* Cluster mode: a record names its writer, read back as such. */
        v->writer = 7;
        o = vm_to_json(v);
        CHECK_EQ_INT(record_write(dirfd_tmp, "vm-web.json", o), 0);
        json_object_put(o);
        CHECK_EQ_INT(record_read(dirfd_tmp, "vm-web.json", &back), 0);
        CHECK_EQ_INT(vm_from_json(back, &v2), 0);
        json_object_put(back);
        CHECK_EQ_INT(v2 ? v2->writer : 0, 7);
        CHECK_EQ_INT(v2 ? v2->generation : 0, 3);
        vm_free(v);
        vm_free(v2);

        /* Bad VM records. */
        static const char *bad_vms[] = {
                "{\"schema\":1,\"name\":\"a/b\",\"owner_uid\":1,\"generation\":1,\"disks\":[]}",
                "{\"schema\":1,\"name\":\"a\",\"owner_uid\":4294967295,\"generation\":1,\"disks\":[]}",
                "{\"schema\":1,\"name\":\"a\",\"owner_uid\":1,\"generation\":1,\"disks\":[{\"name\":\"d\",\"chain\":[]}]}",
                "{\"schema\":1,\"name\":\"a\",\"owner_uid\":1,\"generation\":1,\"disks\":[{\"name\":\"d\",\"chain\":[\"x\"]}]}",
                "{\"schema\":1,\"name\":\"a\",\"owner_uid\":1,\"generation\":1,\"disks\":{}}",
                "{\"schema\":1,\"name\":\"a\",\"owner_uid\":1,\"generation\":1,\"writer\":{\"host_id\":-1},\"disks\":[]}",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad_vms); i++) {
                Vm *bv = NULL;
                o = json_tokener_parse(bad_vms[i]);
                CHECK_EQ_INT(vm_from_json(o, &bv), -EBADMSG);
                json_object_put(o);
                vm_free(bv);
        }
}

static int intent_text(const char *text, Intent *ret) {
        struct json_object *o = json_tokener_parse(text);
        int r;

        CHECK(o != NULL);
        r = intent_parse(o, ret);
        json_object_put(o);
        return r;
}

/* adopt with "move": each old name carries the file's mode, which a roll-back gives back. */
static void test_intent_unlink_mode(void) {
        static const char *head =
                "{\"schema\":1,\"op\":\"adopt\",\"commit\":\"vm\",\"commit_name\":\"web\",\"commit_generation\":2,"
                "\"new_layers\":[\"0123456789abcdef0123456789abcdef\"],\"drop_layers\":[],\"unlink_after\":"
                "[{\"path\":\"/srv/t.qcow2\",\"dev\":2049,\"inode\":77";
        static const struct {
                const char *tail;
                int r;
                mode_t mode;
        } cases[] = {
                { ",\"mode\":416}]}", 0, 0640 },
                { ",\"mode\":0}]}", 0, 0 },
                { ",\"mode\":4095}]}", 0, 07777 },
                { "}]}", 0, MODE_INVALID }, /* entries written before the mode was recorded */
                { ",\"mode\":4096}]}", -EBADMSG, 0 },
                { ",\"mode\":-1}]}", -EBADMSG, 0 },
                { ",\"mode\":\"0640\"}]}", -EBADMSG, 0 },
        };

        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
                char text[512];
                Intent i = {};

                snprintf(text, sizeof(text), "%s%s", head, cases[k].tail);
                CHECK_EQ_INT(intent_text(text, &i), cases[k].r);
                if (cases[k].r == 0) {
                        CHECK_EQ_INT(i.n_unlink, 1);
                        CHECK_EQ_INT(i.unlink_after[0].inode, 77);
                        CHECK_EQ_INT(i.unlink_after[0].mode, cases[k].mode);
                        intent_done(&i);
                }
        }
}

int main(void) {
        CHECK(mkdtemp(tmpdir) != NULL);
        dirfd_tmp = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        CHECK(dirfd_tmp >= 0);

        test_reader();
        test_layer_decoder();
        test_roundtrip();
        test_intent_unlink_mode();

        close(dirfd_tmp);
        {
                char cmd[128];
                snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
                CHECK_EQ_INT(system(cmd), 0);
        }
        TEST_MAIN_END();
}
