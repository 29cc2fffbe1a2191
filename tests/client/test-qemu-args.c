/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* qemu-args.c: the QEMU command line of "vdiskctl open --export": -device rewritten for vhost-user-blk,
 * -chardev / -blockdev per disk, the shared memory backend sized from -m, and the refusals. */

#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "qemu-args.h"

static unsigned failures = 0;

#define CHECK(expr)                                                                      \
        do {                                                                             \
                if (!(expr)) {                                                           \
                        fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, \
                                #expr);                                                  \
                        failures++;                                                      \
                }                                                                        \
        } while (0)

/* vdiskd's descriptions, as the contract of OpenDisk's export option writes them. */
#define VHOST_ATTACH(disk)                                                                              \
        "{\"type\":\"vhost-user-blk\",\"socket\":0,\"read-only\":false,\"size\":1073741824,"             \
        "\"chardev\":{\"id\":\"" disk "\",\"backend\":\"socket\"},"                                     \
        "\"device\":{\"driver\":\"vhost-user-blk-pci\",\"chardev\":\"" disk "\",\"config-wce\":false}," \
        "\"shared-memory\":true}"
#define NBD_BLOCKDEV(disk, str)                                                                          \
        "{\"driver\":\"nbd\",\"node-name\":\"" disk "\",\"export\":\"" disk "\",\"server\":{\"type\":\"fd\"," \
        "\"str\":\"" str "\"},\"read-only\":false}"
#define NBD_ATTACH(disk) \
        "{\"type\":\"nbd\",\"socket\":0,\"read-only\":false,\"size\":1073741824,\"blockdev\":" NBD_BLOCKDEV(disk, "") "}"

static void check_memory(const char *value, int want_r, uint64_t want) {
        uint64_t v = UINT64_C(0xdeadbeef);
        int r = qemu_parse_memory_option(value, &v);

        if (r != want_r || (r == 0 && v != want) || (r < 0 && v != UINT64_C(0xdeadbeef))) {
                fprintf(stderr, "qemu_parse_memory_option(\"%s\") = %d, %" PRIu64 "; expected %d, %" PRIu64 "\n",
                        value, r, v, want_r, want);
                failures++;
        }
}

static void test_memory_option(void) {
        check_memory("512", 0, UINT64_C(512) << 20);
        check_memory("512M", 0, UINT64_C(512) << 20);
        check_memory("1G", 0, UINT64_C(1) << 30);
        check_memory("1.5", 0, UINT64_C(3) << 19); /* MiB, as QEMU reads it */
        check_memory("size=2G,slots=2,maxmem=8G", 0, UINT64_C(2) << 30);
        check_memory("slots=2,maxmem=8G,size=256", 0, UINT64_C(256) << 20);
        check_memory("1000000000B", 0, UINT64_C(1000005632)); /* rounded up to 8 KiB, as QEMU does */
        check_memory("slots=2,maxmem=8G", 0, 0);               /* no size named */

        check_memory("", -EINVAL, 0);
        check_memory("size=", -EINVAL, 0);
        check_memory("0", -EINVAL, 0);
        check_memory("lots", -EINVAL, 0);
        check_memory("1X", -EINVAL, 0);
        check_memory("18446744073709551615B", -ERANGE, 0);
}

static void test_export_names(void) {
        CHECK(qemu_export_from_string("vhost-user-blk") == QEMU_EXPORT_VHOST_USER_BLK);
        CHECK(qemu_export_from_string("nbd") == QEMU_EXPORT_NBD);
        CHECK(qemu_export_from_string("NBD") == _QEMU_EXPORT_INVALID);
        CHECK(qemu_export_from_string("") == _QEMU_EXPORT_INVALID);
        CHECK(qemu_export_from_string(NULL) == _QEMU_EXPORT_INVALID);
        CHECK(strcmp(qemu_export_to_string(QEMU_EXPORT_NBD), "nbd") == 0);
        CHECK(strcmp(qemu_export_to_string(QEMU_EXPORT_VHOST_USER_BLK), "vhost-user-blk") == 0);
        CHECK(qemu_export_to_string(_QEMU_EXPORT_MAX) == NULL);
}

static int attach_check(const char *text, const char *disk, QemuExport type) {
        json_object *o = json_tokener_parse(text);
        int r;

        if (!o) {
                fprintf(stderr, "test JSON does not parse: %s\n", text);
                failures++;
                return -EIO;
        }
        r = qemu_export_attach_check(o, disk, type);
        json_object_put(o);
        return r;
}

static void test_attach_check(void) {
        CHECK(attach_check(VHOST_ATTACH("d"), "d", QEMU_EXPORT_VHOST_USER_BLK) == 0);
        CHECK(attach_check(NBD_ATTACH("d"), "d", QEMU_EXPORT_NBD) == 0);
        /* Keys a client does not know are ignored. */
        CHECK(attach_check("{\"type\":\"nbd\",\"socket\":0,\"future\":[1,2],\"blockdev\":" NBD_BLOCKDEV("d", "") "}", "d",
                           QEMU_EXPORT_NBD) == 0);

        CHECK(attach_check(VHOST_ATTACH("d"), "d", QEMU_EXPORT_NBD) == -EBADMSG);
        CHECK(attach_check(NBD_ATTACH("d"), "d", QEMU_EXPORT_VHOST_USER_BLK) == -EBADMSG);
        CHECK(attach_check(VHOST_ATTACH("e"), "d", QEMU_EXPORT_VHOST_USER_BLK) == -EBADMSG);
        CHECK(attach_check(NBD_ATTACH("e"), "d", QEMU_EXPORT_NBD) == -EBADMSG);
        CHECK(attach_check("[" NBD_BLOCKDEV("d", "") "]", "d", QEMU_EXPORT_NBD) == -EBADMSG);
        CHECK(attach_check("{\"type\":\"nbd\",\"blockdev\":" NBD_BLOCKDEV("d", "") "}", "d", QEMU_EXPORT_NBD) == -EBADMSG);
        CHECK(attach_check("{\"type\":\"nbd\",\"socket\":1,\"blockdev\":" NBD_BLOCKDEV("d", "") "}", "d",
                           QEMU_EXPORT_NBD) == -EBADMSG);
        CHECK(attach_check("{\"type\":\"nbd\",\"socket\":\"0\",\"blockdev\":" NBD_BLOCKDEV("d", "") "}", "d",
                           QEMU_EXPORT_NBD) == -EBADMSG);
        CHECK(attach_check("{\"type\":\"nbd\",\"socket\":0,\"shared-memory\":\"yes\",\"blockdev\":" NBD_BLOCKDEV("d", "") "}",
                           "d", QEMU_EXPORT_NBD) == -EBADMSG);
        CHECK(attach_check("{\"type\":\"nbd\",\"socket\":0,\"blockdev\":{\"driver\":\"nbd\",\"node-name\":\"d\","
                           "\"server\":{\"type\":\"unix\",\"path\":\"/x\"}}}",
                           "d", QEMU_EXPORT_NBD) == -EBADMSG);
        CHECK(attach_check("{\"type\":\"nbd\",\"socket\":0,\"blockdev\":{\"driver\":\"qcow2\",\"node-name\":\"d\","
                           "\"server\":{\"type\":\"fd\",\"str\":\"\"}}}",
                           "d", QEMU_EXPORT_NBD) == -EBADMSG);
        CHECK(attach_check("{\"type\":\"vhost-user-blk\",\"socket\":0,\"chardev\":{\"id\":\"d\",\"backend\":\"socket\"},"
                           "\"device\":{\"driver\":\"virtio-blk-pci\",\"chardev\":\"d\"}}",
                           "d", QEMU_EXPORT_VHOST_USER_BLK) == -EBADMSG);
        CHECK(attach_check("{\"type\":\"vhost-user-blk\",\"socket\":0,\"chardev\":{\"id\":\"d\",\"backend\":\"pty\"},"
                           "\"device\":{\"driver\":\"vhost-user-blk-pci\",\"chardev\":\"d\"}}",
                           "d", QEMU_EXPORT_VHOST_USER_BLK) == -EBADMSG);
        CHECK(attach_check("{\"type\":\"vhost-user-blk\",\"socket\":0,\"chardev\":{\"id\":\"d\",\"backend\":\"socket\"}}",
                           "d", QEMU_EXPORT_VHOST_USER_BLK) == -EBADMSG);
}

/* Up to three disks: "d" (vhost-user-blk, fd 7), "e" (nbd, fd 8), "f" (vhost-user-blk, fd 9). */
typedef struct Setup {
        QemuExportDisk disks[3];
        size_t n;
} Setup;

static void setup_init(Setup *s, const char *which) {
        static const struct {
                const char *disk;
                QemuExport type;
                const char *attach;
                int fd;
        } all[] = {
                { "d", QEMU_EXPORT_VHOST_USER_BLK, VHOST_ATTACH("d"), 7 },
                { "e", QEMU_EXPORT_NBD, NBD_ATTACH("e"), 8 },
                { "f", QEMU_EXPORT_VHOST_USER_BLK, VHOST_ATTACH("f"), 9 },
        };

        *s = (Setup) {};
        for (const char *c = which; *c; c++)
                for (size_t i = 0; i < 3; i++)
                        if (all[i].disk[0] == *c)
                                s->disks[s->n++] = (QemuExportDisk) {
                                        .disk = all[i].disk,
                                        .type = all[i].type,
                                        .attach = json_tokener_parse(all[i].attach),
                                        .fd = all[i].fd,
                                };
}

static void setup_done(Setup *s) {
        for (size_t j = 0; j < s->n; j++)
                json_object_put(s->disks[j].attach);
}

static size_t strv_length(const char *const *v) {
        size_t n = 0;

        while (v[n])
                n++;
        return n;
}

/* Builds the command line for the disks `which` from `command` and compares it with `want`, or (want
 * NULL) expects the usage error `error` from both qemu_args_build_export() and qemu_args_check_export(). */
static void check_build(int line, const char *which, const char *const *command, const char *const *want,
                        const char *error) {
        size_t n = strv_length(command);
        char **got = NULL, *err = NULL, *check_err = NULL;
        int r, r_check;
        Setup s;

        setup_init(&s, which);
        r = qemu_args_build_export((char *const *) command, n, s.disks, s.n, &got, &err);
        r_check = qemu_args_check_export((char *const *) command, n, s.disks, s.n, &check_err);

        if (want) {
                bool same = r == 0 && got && r_check == 0;

                for (size_t i = 0; same && (want[i] || got[i]); i++)
                        same = want[i] && got[i] && strcmp(want[i], got[i]) == 0;
                if (!same) {
                        fprintf(stderr, "line %d: r=%d check=%d (%s), got:\n", line, r, r_check, err ?: "");
                        for (size_t i = 0; got && got[i]; i++)
                                fprintf(stderr, "  [%s]%s\n", got[i], want[i] && strcmp(want[i], got[i]) == 0 ? "" : " <-");
                        failures++;
                }
        } else {
                if (r != -EINVAL || got || !err || strcmp(err, error) != 0 || r_check != -EINVAL || !check_err ||
                    strcmp(check_err, error) != 0) {
                        fprintf(stderr, "line %d: expected the error \"%s\", got r=%d \"%s\", check r=%d \"%s\"\n", line,
                                error, r, err ?: "(null)", r_check, check_err ?: "(null)");
                        failures++;
                }
        }

        qemu_args_free(got);
        free(err);
        free(check_err);
        setup_done(&s);
}

#define V(...) ((const char *const[]) { __VA_ARGS__, NULL })
#define MEM128 "-object", "memory-backend-memfd,id=vdisk-mem,size=134217728,share=on", "-machine", "memory-backend=vdisk-mem"
#define MEM(size) "-object", "memory-backend-memfd,id=vdisk-mem,size=" size ",share=on", "-machine", "memory-backend=vdisk-mem"

static void test_nbd(void) {
        /* The user's -device stays: it names the nbd node. No shared memory. */
        check_build(__LINE__, "e", V("qemu", "-m", "1G", "-device", "virtio-blk-pci,drive=e,serial=abc"),
                    V("qemu", "-m", "1G", "-device", "virtio-blk-pci,drive=e,serial=abc", "-blockdev", NBD_BLOCKDEV("e", "8")),
                    NULL);
        check_build(__LINE__, "e", V("qemu"), V("qemu", "-blockdev", NBD_BLOCKDEV("e", "8")), NULL);
        /* A device of another type may attach an nbd node. */
        check_build(__LINE__, "e", V("qemu", "-device", "scsi-hd,drive=e"),
                    V("qemu", "-device", "scsi-hd,drive=e", "-blockdev", NBD_BLOCKDEV("e", "8")), NULL);
}

static void test_vhost_device(void) {
        check_build(__LINE__, "d", V("qemu", "-device", "virtio-blk-pci,drive=d"),
                    V("qemu", "-device", "vhost-user-blk-pci,chardev=d,config-wce=off", "-chardev", "socket,id=d,fd=7",
                      MEM128),
                    NULL);
        /* Properties vhost-user-blk-pci has are kept, in order; --device is -device. */
        check_build(__LINE__, "d",
                    V("qemu", "--device",
                      "virtio-blk-pci,id=v0,drive=d,bus=pci.0,addr=05.0,bootindex=1,num-queues=2,queue-size=256"),
                    V("qemu", "--device",
                      "vhost-user-blk-pci,chardev=d,config-wce=off,id=v0,bus=pci.0,addr=05.0,bootindex=1,num-queues=2,"
                      "queue-size=256",
                      "-chardev", "socket,id=d,fd=7", MEM128),
                    NULL);
        /* driver= instead of the implied first key. */
        check_build(__LINE__, "d", V("qemu", "-device", "driver=virtio-blk-pci,drive=d,addr=06"),
                    V("qemu", "-device", "vhost-user-blk-pci,chardev=d,config-wce=off,addr=06", "-chardev",
                      "socket,id=d,fd=7", MEM128),
                    NULL);
        /* ",," is a comma inside a value. */
        check_build(__LINE__, "d", V("qemu", "-device", "virtio-blk-pci,drive=d,romfile=a,,b"),
                    V("qemu", "-device", "vhost-user-blk-pci,chardev=d,config-wce=off,romfile=a,,b", "-chardev",
                      "socket,id=d,fd=7", MEM128),
                    NULL);
        /* config-wce=off is what vdiskctl sets anyway: not repeated. */
        check_build(__LINE__, "d", V("qemu", "-device", "virtio-blk-pci,config-wce=off,drive=d"),
                    V("qemu", "-device", "vhost-user-blk-pci,chardev=d,config-wce=off", "-chardev", "socket,id=d,fd=7",
                      MEM128),
                    NULL);
        /* A vhost-user-blk-pci the user wrote gets config-wce=off too. */
        check_build(__LINE__, "d", V("qemu", "-device", "vhost-user-blk-pci,chardev=d,id=x"),
                    V("qemu", "-device", "vhost-user-blk-pci,chardev=d,config-wce=off,id=x", "-chardev",
                      "socket,id=d,fd=7", MEM128),
                    NULL);
        /* QEMU's JSON form. */
        check_build(__LINE__, "d", V("qemu", "-device", "{\"driver\": \"virtio-blk-pci\", \"drive\": \"d\", \"id\": \"v0\"}"),
                    V("qemu", "-device",
                      "{\"driver\":\"vhost-user-blk-pci\",\"chardev\":\"d\",\"config-wce\":false,\"id\":\"v0\"}",
                      "-chardev", "socket,id=d,fd=7", MEM128),
                    NULL);
        /* Other devices, and other disks' virtio-blk-pci, stay as they are. */
        check_build(__LINE__, "de",
                    V("qemu", "-device", "e1000,netdev=n0", "-device", "virtio-blk-pci,drive=e", "-device",
                      "virtio-blk-pci,drive=other", "-device", "virtio-blk-pci,drive=d,id=x"),
                    V("qemu", "-device", "e1000,netdev=n0", "-device", "virtio-blk-pci,drive=e", "-device",
                      "virtio-blk-pci,drive=other", "-device", "vhost-user-blk-pci,chardev=d,config-wce=off,id=x",
                      "-chardev", "socket,id=d,fd=7", "-blockdev", NBD_BLOCKDEV("e", "8"), MEM128),
                    NULL);
        /* No -device for the disk: none is added. One memory backend for two disks. */
        check_build(__LINE__, "df", V("qemu", "-S"),
                    V("qemu", "-S", "-chardev", "socket,id=d,fd=7", "-chardev", "socket,id=f,fd=9", MEM128), NULL);
        /* The command's own name is not an option. */
        check_build(__LINE__, "d", V("-device", "virtio-blk-pci,drive=d"),
                    V("-device", "virtio-blk-pci,drive=d", "-chardev", "socket,id=d,fd=7", MEM128), NULL);
        /* A -device at the end, without a value, is QEMU's to refuse. */
        check_build(__LINE__, "d", V("qemu", "-device"), V("qemu", "-device", "-chardev", "socket,id=d,fd=7", MEM128), NULL);
}

static void test_vhost_errors(void) {
        check_build(__LINE__, "d", V("qemu", "-device", "virtio-blk-pci,drive=d,serial=abc"), NULL,
                    "Property 'serial' of '-device virtio-blk-pci,drive=d,serial=abc' does not exist in "
                    "vhost-user-blk-pci, which attaches disk 'd' (--export=vhost-user-blk): remove it.");
        check_build(__LINE__, "d", V("qemu", "-device", "virtio-blk-pci,logical_block_size=4096,drive=d"), NULL,
                    "Property 'logical_block_size' of '-device virtio-blk-pci,logical_block_size=4096,drive=d' does "
                    "not exist in vhost-user-blk-pci, which attaches disk 'd' (--export=vhost-user-blk): remove it.");
        check_build(__LINE__, "d", V("qemu", "-device", "virtio-blk-pci,drive=d,scsi"), NULL,
                    "Property 'scsi' of '-device virtio-blk-pci,drive=d,scsi' does not exist in vhost-user-blk-pci, "
                    "which attaches disk 'd' (--export=vhost-user-blk): remove it.");
        check_build(__LINE__, "d", V("qemu", "-device", "{\"driver\":\"virtio-blk-pci\",\"drive\":\"d\",\"serial\":\"x\"}"),
                    NULL,
                    "Property 'serial' of '-device {\"driver\":\"virtio-blk-pci\",\"drive\":\"d\",\"serial\":\"x\"}' does "
                    "not exist in vhost-user-blk-pci, which attaches disk 'd' (--export=vhost-user-blk): remove it.");
        check_build(__LINE__, "d", V("qemu", "-device", "virtio-blk-pci,drive=d,config-wce=on"), NULL,
                    "'-device virtio-blk-pci,drive=d,config-wce=on' turns config-wce on: disk 'd' is exported as "
                    "vhost-user-blk, which needs config-wce=off so that the guest flushes its writes.");
        check_build(__LINE__, "d", V("qemu", "-device", "vhost-user-blk-pci,chardev=d,config-wce"), NULL,
                    "'-device vhost-user-blk-pci,chardev=d,config-wce' turns config-wce on: disk 'd' is exported as "
                    "vhost-user-blk, which needs config-wce=off so that the guest flushes its writes.");
        check_build(__LINE__, "d", V("qemu", "-device", "{\"driver\":\"virtio-blk-pci\",\"drive\":\"d\",\"config-wce\":true}"),
                    NULL,
                    "'-device {\"driver\":\"virtio-blk-pci\",\"drive\":\"d\",\"config-wce\":true}' turns config-wce on: "
                    "disk 'd' is exported as vhost-user-blk, which needs config-wce=off so that the guest flushes its "
                    "writes.");
        check_build(__LINE__, "d", V("qemu", "-device", "scsi-hd,drive=d"), NULL,
                    "Disk 'd' is exported as vhost-user-blk: '-device scsi-hd,drive=d' cannot attach it. Use "
                    "virtio-blk-pci, which vdiskctl turns into vhost-user-blk-pci.");
        check_build(__LINE__, "d", V("qemu", "-device", "{\"driver\":\"ide-hd\",\"drive\":\"d\"}"), NULL,
                    "Disk 'd' is exported as vhost-user-blk: '-device {\"driver\":\"ide-hd\",\"drive\":\"d\"}' cannot "
                    "attach it. Use virtio-blk-pci, which vdiskctl turns into vhost-user-blk-pci.");
        check_build(__LINE__, "d", V("qemu", "-m", "lots"), NULL, "Invalid memory size in '-m lots'.");
        check_build(__LINE__, "df", V("qemu", "-m", "0"), NULL, "Invalid memory size in '-m 0'.");
        /* nbd does not read -m. */
        check_build(__LINE__, "e", V("qemu", "-m", "0"), V("qemu", "-m", "0", "-blockdev", NBD_BLOCKDEV("e", "8")), NULL);
}

static void test_memory(void) {
        check_build(__LINE__, "d", V("qemu", "-m", "512"),
                    V("qemu", "-m", "512", "-chardev", "socket,id=d,fd=7", MEM("536870912")), NULL);
        check_build(__LINE__, "d", V("qemu", "-m", "2G"),
                    V("qemu", "-m", "2G", "-chardev", "socket,id=d,fd=7", MEM("2147483648")), NULL);
        check_build(__LINE__, "d", V("qemu", "--m", "size=1G,slots=2,maxmem=4G"),
                    V("qemu", "--m", "size=1G,slots=2,maxmem=4G", "-chardev", "socket,id=d,fd=7", MEM("1073741824")),
                    NULL);
        /* Repeated -m: the last size counts; one without size changes nothing. */
        check_build(__LINE__, "d", V("qemu", "-m", "1G", "-m", "768M", "-m", "slots=2,maxmem=4G"),
                    V("qemu", "-m", "1G", "-m", "768M", "-m", "slots=2,maxmem=4G", "-chardev", "socket,id=d,fd=7",
                      MEM("805306368")),
                    NULL);
        check_build(__LINE__, "d", V("qemu", "-m", "1000000000B"),
                    V("qemu", "-m", "1000000000B", "-chardev", "socket,id=d,fd=7", MEM("1000005632")), NULL);
        /* A memory backend chosen by the user: nothing added. */
        check_build(__LINE__, "d",
                    V("qemu", "-m", "1G", "-object", "memory-backend-memfd,id=m0,size=1G,share=on", "-machine",
                      "q35,memory-backend=m0"),
                    V("qemu", "-m", "1G", "-object", "memory-backend-memfd,id=m0,size=1G,share=on", "-machine",
                      "q35,memory-backend=m0", "-chardev", "socket,id=d,fd=7"),
                    NULL);
        check_build(__LINE__, "d", V("qemu", "-M", "pc", "-M", "memory-backend=m0"),
                    V("qemu", "-M", "pc", "-M", "memory-backend=m0", "-chardev", "socket,id=d,fd=7"), NULL);
        /* nbd needs no shared memory, whatever -m says. */
        check_build(__LINE__, "e", V("qemu", "-m", "4G"), V("qemu", "-m", "4G", "-blockdev", NBD_BLOCKDEV("e", "8")), NULL);
}

static void test_bad_attach(void) {
        const char *command[] = { "qemu", NULL };
        char **got = NULL, *err = NULL;
        Setup s;

        setup_init(&s, "d");
        json_object_put(s.disks[0].attach);
        s.disks[0].attach = json_tokener_parse(NBD_ATTACH("d"));
        CHECK(qemu_args_build_export((char *const *) command, 1, s.disks, s.n, &got, &err) == -EBADMSG);
        CHECK(!got && !err);
        setup_done(&s);
}

int main(void) {
        test_export_names();
        test_memory_option();
        test_attach_check();
        test_nbd();
        test_vhost_device();
        test_vhost_errors();
        test_memory();
        test_bad_attach();

        if (failures > 0) {
                fprintf(stderr, "%u checks failed\n", failures);
                return EXIT_FAILURE;
        }
        printf("all checks passed\n");
        return EXIT_SUCCESS;
}
