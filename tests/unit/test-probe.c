/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Unit tests for probe_signatures(), probe_conflicts() and probe_fd(). */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "probe.h"
#include "test-util.h"

#define BIT(s) (1U << (s))
#define M(lit) lit, sizeof(lit) - 1

typedef struct Sig {
        const char *label;
        ProbeSignature sig;
        bool in_tail;  /* offset is then the distance from the end of the tail */
        size_t offset;
        const char *magic;
        size_t len;
} Sig;

static const Sig sigs[] = {
        { "qcow2 v2", PROBE_QCOW2, false, 0, M("QFI\xfb\0\0\0\x02") },
        { "qcow2 v3", PROBE_QCOW2, false, 0, M("QFI\xfb\0\0\0\x03") },
        { "qcow v1", PROBE_QCOW1, false, 0, M("QFI\xfb\0\0\0\x01") },
        /* QEMU's qcow2 probe takes any version >= 2 (and open then fails); version 0 is refused too. */
        { "qcow version 0", PROBE_QCOW2, false, 0, M("QFI\xfb\0\0\0\0") },
        { "qcow version 4", PROBE_QCOW2, false, 0, M("QFI\xfb\0\0\0\x04") },
        { "qcow version 2^24+3", PROBE_QCOW2, false, 0, M("QFI\xfb\x01\0\0\x03") },
        { "qed", PROBE_QED, false, 0, M("QED\0") },
        { "vmdk KDMV", PROBE_VMDK, false, 0, M("KDMV") },
        { "vmdk COWD", PROBE_VMDK, false, 0, M("COWD") },
        { "vmdk descriptor", PROBE_VMDK, false, 0, M("# Disk DescriptorFile") },
        /* Text descriptors QEMU's probe accepts: '#' lines and blank lines, then version=1|2|3. */
        { "vmdk version=1 first", PROBE_VMDK, false, 0, M("version=1\nCID=fffffffe\nRW 2048 FLAT \"canary\" 0\n") },
        { "vmdk version=2 crlf", PROBE_VMDK, false, 0, M("version=2\r\n") },
        { "vmdk comments then version=3", PROBE_VMDK, false, 0, M("# x\n#\nversion=3\n") },
        { "vmdk blank lines then version=1", PROBE_VMDK, false, 0, M("  \n \r\n\nversion=1\r\n") },
        { "vmdk other comment first", PROBE_VMDK, false, 0, M("# Not a Disk Descriptor\nversion=1\n") },
        { "vdi", PROBE_VDI, false, 0x40, M("\x7f\x10\xda\xbe") },
        { "vhdx", PROBE_VHDX, false, 0, M("vhdxfile") },
        { "vpc head", PROBE_VPC, false, 0, M("conectix") },
        { "vpc tail 512", PROBE_VPC, true, 512, M("conectix") },
        { "vpc tail 511", PROBE_VPC, true, 511, M("conectix") },
        { "luks", PROBE_LUKS, false, 0, M("LUKS\xba\xbe") },
        { "iso 0x8001", PROBE_ISO, false, 0x8001, M("CD001") },
        { "iso 0x8801", PROBE_ISO, false, 0x8801, M("CD001") },
        { "iso 0x9001", PROBE_ISO, false, 0x9001, M("CD001") },
        { "bochs", PROBE_BOCHS, false, 0, M("Bochs Virtual HD Image") },
        { "parallels", PROBE_PARALLELS, false, 0, M("WithoutFreeSpace") },
        { "parallels ext", PROBE_PARALLELS, false, 0, M("WithouFreSpacExt") },
        { "cloop v2", PROBE_CLOOP, false, 0, M("#!/bin/sh\n#V2.0 Format\n") },
        { "cloop v3", PROBE_CLOOP, false, 0, M("#!/bin/sh\n#V3.0 Format\n") },
        { "cloop v4", PROBE_CLOOP, false, 0, M("#!/bin/sh\n#V4.0 Format\n") },
        { "dmg", PROBE_DMG, true, 512, M("koly") },
};

#define HEAD_SIZE ((size_t) PROBE_HEAD_SIZE)
#define TAIL_SIZE ((size_t) PROBE_TAIL_SIZE)

static uint8_t head[HEAD_SIZE];
static uint8_t tail[TAIL_SIZE];

static const uint8_t qcow2_v3[8] = { 'Q', 'F', 'I', 0xfb, 0, 0, 0, 3 };

static void clear(void) {
        memset(head, 0, sizeof(head));
        memset(tail, 0, sizeof(tail));
}

static void place(const Sig *s) {
        if (s->in_tail)
                memcpy(tail + TAIL_SIZE - s->offset, s->magic, s->len);
        else
                memcpy(head + s->offset, s->magic, s->len);
}

static int conflicts(ImageFormat declared, unsigned *mask, FormatError *err) {
        memset(err, 0, sizeof(*err));
        *mask = 0xdeadU;
        return probe_conflicts(declared, head, sizeof(head), tail, sizeof(tail), mask, err);
}

static bool ends_with(const char *s, const char *suffix) {
        size_t n = strlen(s), m = strlen(suffix);
        return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void test_names(void) {
        static const char *const expected[_PROBE_SIGNATURE_MAX] = {
                [PROBE_QCOW2] = "qcow2", [PROBE_QCOW1] = "qcow", [PROBE_QED] = "qed", [PROBE_VMDK] = "vmdk",
                [PROBE_VDI] = "vdi", [PROBE_VHDX] = "vhdx", [PROBE_VPC] = "vpc", [PROBE_LUKS] = "luks",
                [PROBE_ISO] = "iso9660", [PROBE_BOCHS] = "bochs", [PROBE_PARALLELS] = "parallels",
                [PROBE_CLOOP] = "cloop", [PROBE_DMG] = "dmg",
        };

        /* QEMU's driver names, as users know them. */
        for (int i = 0; i < _PROBE_SIGNATURE_MAX; i++) {
                const char *n = probe_signature_to_string((ProbeSignature) i);
                CHECK(n && expected[i] && strcmp(n, expected[i]) == 0);
        }
        for (int i = 0; i < _PROBE_SIGNATURE_MAX; i++) {
                const char *n = probe_signature_to_string((ProbeSignature) i);
                CHECK(n && n[0]);
                for (int j = 0; n && j < i; j++) {
                        const char *o = probe_signature_to_string((ProbeSignature) j);
                        CHECK(o && strcmp(n, o) != 0);
                }
        }
        CHECK(!probe_signature_to_string(_PROBE_SIGNATURE_MAX));
        CHECK(!probe_signature_to_string((ProbeSignature) -1));
        CHECK(strcmp(probe_signature_to_string(PROBE_ISO), "iso9660") == 0);
        CHECK(strcmp(probe_signature_to_string(PROBE_QCOW1), "qcow") == 0);
}

static void test_each_signature(void) {
        for (size_t i = 0; i < ELEMENTSOF(sigs); i++) {
                const Sig *s = &sigs[i];
                const char *name = probe_signature_to_string(s->sig);
                char suffix[64];
                FormatError err;
                unsigned mask, found;
                int r, before = test_failures;

                clear();
                place(s);
                found = probe_signatures(head, sizeof(head), tail, sizeof(tail));
                CHECK_EQ_INT(found, BIT(s->sig));

                /* Declared raw. */
                r = conflicts(IMAGE_FORMAT_RAW, &mask, &err);
                if (s->sig == PROBE_ISO) {
                        CHECK_EQ_INT(r, 0);
                        CHECK_EQ_INT(mask, 0);
                        CHECK_EQ_INT(err.code, 0);
                } else {
                        CHECK_EQ_INT(r, -EBADMSG);
                        CHECK_EQ_INT(err.code, -EBADMSG);
                        CHECK_EQ_INT(mask, BIT(s->sig));
                        CHECK_CONTAINS(err.reason, "declared raw");
                        snprintf(suffix, sizeof(suffix), "signature of: %s", name);
                        CHECK(ends_with(err.reason, suffix));
                        /* Names formats, never quotes the content. */
                        CHECK(!memmem(err.reason, strlen(err.reason), s->magic, s->len));
                }

                /* Declared qcow2. */
                r = conflicts(IMAGE_FORMAT_QCOW2, &mask, &err);
                if (s->sig == PROBE_QCOW2) {
                        CHECK_EQ_INT(r, 0);
                        CHECK_EQ_INT(mask, 0);
                } else {
                        CHECK_EQ_INT(r, -EMEDIUMTYPE);
                        CHECK_EQ_INT(err.code, -EMEDIUMTYPE);
                        CHECK_EQ_INT(mask, BIT(s->sig));
                        CHECK_CONTAINS(err.reason, "content is not qcow2");
                }

                if (test_failures != before)
                        fprintf(stderr, "  ^ signature \"%s\"\n", s->label);
        }
}

/* Near misses: one byte off, wrong version, wrong endianness. */
static void test_near_misses(void) {
        static const struct {
                const char *label;
                bool in_tail;
                size_t offset;
                const char *magic;
                size_t len;
        } misses[] = {
                { "version=4", false, 0, M("version=4\n") },
                { "version=1 with a trailing space", false, 0, M("version=1 \n") },
                { "version=1 indented", false, 0, M(" version=1\n") },
                { "version=1 after a text line", false, 0, M("text\nversion=1\n") },
                { "version=1 without a newline", false, 0, M("version=1") },
                { "version=1 then CR CR LF", false, 0, M("version=1\r\r\n") },
                { "version=10", false, 0, M("version=10\n") },
                { "qcow magic off by one", false, 0, M("QFI\xfa\0\0\0\x03") },
                { "qcow at 1", false, 1, M("QFI\xfb\0\0\0\x03") },
                { "QEDX", false, 0, M("QEDX") },
                { "truncated descriptor", false, 0, M("# Disk Descriptor\n") },
                { "vdi big-endian", false, 0x40, M("\xbe\xda\x10\x7f") },
                { "vdi at 0x41", false, 0x41, M("\x7f\x10\xda\xbe") },
                { "vhdx upper case", false, 0, M("VHDXFILE") },
                { "conectix at 1", false, 1, M("conectix") },
                { "conectix 510 from the end", true, 510, M("conectix") },
                { "conectix 256 from the end", true, 256, M("conectix") },
                { "luks version byte", false, 0, M("LUKS\xba\xbf") },
                { "CD001 at 0x8000", false, 0x8000, M("CD001") },
                { "CD001 at 0x8002", false, 0x8002, M("CD001") },
                { "CD001 at 0x1", false, 0x1, M("CD001") },
                { "CD001 at 0x9801", false, 0x9801, M("CD001") },
                { "bochs truncated", false, 0, M("Bochs Virtual HD Imag") },
                { "parallels truncated", false, 0, M("WithoutFreeSpac") },
                { "cloop v1", false, 0, M("#!/bin/sh\n#V1.0 Format\n") },
                { "koly 511 from the end", true, 511, M("koly") },
                { "koly in the head", false, 0, M("koly") },
        };

        for (size_t i = 0; i < ELEMENTSOF(misses); i++) {
                FormatError err;
                unsigned mask, found;

                clear();
                if (misses[i].in_tail)
                        memcpy(tail + TAIL_SIZE - misses[i].offset, misses[i].magic, misses[i].len);
                else
                        memcpy(head + misses[i].offset, misses[i].magic, misses[i].len);
                found = probe_signatures(head, sizeof(head), tail, sizeof(tail));
                CHECK_EQ_INT(found, 0);
                CHECK_EQ_INT(conflicts(IMAGE_FORMAT_RAW, &mask, &err), 0);
                CHECK_EQ_INT(mask, 0);
                if (found != 0)
                        fprintf(stderr, "  ^ near miss \"%s\"\n", misses[i].label);
        }
}

static void test_conflicts(void) {
        FormatError err;
        unsigned mask;
        int r;

        /* Zeros. */
        clear();
        CHECK_EQ_INT(probe_signatures(head, sizeof(head), tail, sizeof(tail)), 0);
        CHECK_EQ_INT(conflicts(IMAGE_FORMAT_RAW, &mask, &err), 0);
        CHECK_EQ_INT(mask, 0);
        CHECK_EQ_INT(err.code, 0);
        r = conflicts(IMAGE_FORMAT_QCOW2, &mask, &err);
        CHECK_EQ_INT(r, -EMEDIUMTYPE);
        CHECK_EQ_INT(mask, 0);
        CHECK_CONTAINS(err.reason, "content is not qcow2");

        /* qcow2 + ISO 9660 polyglot, at each descriptor offset. */
        for (size_t off = 0x8001; off <= 0x9001; off += 0x800) {
                clear();
                memcpy(head, qcow2_v3, sizeof(qcow2_v3));
                memcpy(head + off, "CD001", 5);
                r = conflicts(IMAGE_FORMAT_QCOW2, &mask, &err);
                CHECK_EQ_INT(r, -EBADMSG);
                CHECK_EQ_INT(err.code, -EBADMSG);
                CHECK_EQ_INT(mask, BIT(PROBE_ISO));
                CHECK_CONTAINS(err.reason, "declared qcow2");
                CHECK(ends_with(err.reason, "signature of: iso9660"));
                CHECK(!strstr(err.reason, "CD001"));
                /* As raw, the ISO part is fine and the qcow2 part is not. */
                r = conflicts(IMAGE_FORMAT_RAW, &mask, &err);
                CHECK_EQ_INT(r, -EBADMSG);
                CHECK_EQ_INT(mask, BIT(PROBE_QCOW2));
                CHECK(ends_with(err.reason, "signature of: qcow2"));
        }

        /* Other polyglots a qcow2 header can carry: VDI at 0x40, VPC and DMG footers. */
        clear();
        memcpy(head, qcow2_v3, sizeof(qcow2_v3));
        memcpy(head + 0x40, "\x7f\x10\xda\xbe", 4);
        CHECK_EQ_INT(conflicts(IMAGE_FORMAT_QCOW2, &mask, &err), -EBADMSG);
        CHECK_EQ_INT(mask, BIT(PROBE_VDI));
        CHECK(ends_with(err.reason, ": vdi"));
        clear();
        memcpy(head, qcow2_v3, sizeof(qcow2_v3));
        memcpy(tail, "koly", 4);
        CHECK_EQ_INT(conflicts(IMAGE_FORMAT_QCOW2, &mask, &err), -EBADMSG);
        CHECK_EQ_INT(mask, BIT(PROBE_DMG));
        CHECK(ends_with(err.reason, ": dmg"));
        clear();
        memcpy(head, qcow2_v3, sizeof(qcow2_v3));
        memcpy(tail + 1, "conectix", 8);
        CHECK_EQ_INT(conflicts(IMAGE_FORMAT_QCOW2, &mask, &err), -EBADMSG);
        CHECK_EQ_INT(mask, BIT(PROBE_VPC));
        CHECK(ends_with(err.reason, ": vpc"));
        /* qcow2 with ISO and DMG: both named, in enum order. */
        clear();
        memcpy(head, qcow2_v3, sizeof(qcow2_v3));
        memcpy(head + 0x8801, "CD001", 5);
        memcpy(tail, "koly", 4);
        CHECK_EQ_INT(conflicts(IMAGE_FORMAT_QCOW2, &mask, &err), -EBADMSG);
        CHECK_EQ_INT(mask, BIT(PROBE_ISO) | BIT(PROBE_DMG));
        CHECK(ends_with(err.reason, "signature of: iso9660, dmg"));

        /* Raw with several signatures: every one but ISO is named. */
        clear();
        memcpy(head, "LUKS\xba\xbe", 6);
        memcpy(head + 0x40, "\x7f\x10\xda\xbe", 4);
        memcpy(head + 0x8001, "CD001", 5);
        memcpy(tail, "koly", 4);
        CHECK_EQ_INT(probe_signatures(head, sizeof(head), tail, sizeof(tail)),
                     BIT(PROBE_LUKS) | BIT(PROBE_VDI) | BIT(PROBE_ISO) | BIT(PROBE_DMG));
        CHECK_EQ_INT(conflicts(IMAGE_FORMAT_RAW, &mask, &err), -EBADMSG);
        CHECK_EQ_INT(mask, BIT(PROBE_LUKS) | BIT(PROBE_VDI) | BIT(PROBE_DMG));
        CHECK(strcmp(err.reason, "declared raw, but the content also carries the signature of: vdi, luks, dmg") == 0);
        /* Declared qcow2 without the magic: -EMEDIUMTYPE and every signature found. */
        CHECK_EQ_INT(conflicts(IMAGE_FORMAT_QCOW2, &mask, &err), -EMEDIUMTYPE);
        CHECK_EQ_INT(mask, BIT(PROBE_LUKS) | BIT(PROBE_VDI) | BIT(PROBE_ISO) | BIT(PROBE_DMG));

        /* A signature in the tail at the qcow2 position is not a qcow2 signature. */
        clear();
        memcpy(tail, qcow2_v3, sizeof(qcow2_v3));
        CHECK_EQ_INT(conflicts(IMAGE_FORMAT_QCOW2, &mask, &err), -EMEDIUMTYPE);
        CHECK_EQ_INT(conflicts(IMAGE_FORMAT_RAW, &mask, &err), 0);

        /* Unknown declared format; NULL mask and error are allowed. */
        clear();
        CHECK_EQ_INT(conflicts(_IMAGE_FORMAT_MAX, &mask, &err), -EINVAL);
        CHECK_CONTAINS(err.reason, "unknown declared format");
        CHECK_EQ_INT(conflicts((ImageFormat) -1, &mask, &err), -EINVAL);
        memcpy(head, "QED\0", 4);
        CHECK_EQ_INT(probe_conflicts(IMAGE_FORMAT_RAW, head, sizeof(head), tail, sizeof(tail), NULL, NULL), -EBADMSG);
        CHECK_EQ_INT(probe_conflicts(IMAGE_FORMAT_QCOW2, head, sizeof(head), tail, sizeof(tail), NULL, NULL),
                     -EMEDIUMTYPE);
        memcpy(head, qcow2_v3, sizeof(qcow2_v3));
        CHECK_EQ_INT(probe_conflicts(IMAGE_FORMAT_QCOW2, head, sizeof(head), tail, sizeof(tail), NULL, NULL), 0);

        /* The error keeps the first reason. */
        clear();
        memset(&err, 0, sizeof(err));
        err.code = -EIO;
        strcpy(err.reason, "earlier");
        CHECK_EQ_INT(probe_conflicts(IMAGE_FORMAT_QCOW2, head, sizeof(head), tail, sizeof(tail), &mask, &err),
                     -EMEDIUMTYPE);
        CHECK_EQ_INT(err.code, -EIO);
        CHECK(strcmp(err.reason, "earlier") == 0);
}

/* Buffers allocated at their exact size: ASan reports any read past them. */
static uint8_t *dup_exact(const void *p, size_t n) {
        uint8_t *b = malloc(n);
        if (b && n > 0)
                memcpy(b, p, n);
        return b;
}

static void test_short_buffers(void) {
        static const size_t sizes[] = { 0, 3, 7 };

        for (size_t i = 0; i < ELEMENTSOF(sigs); i++) {
                const Sig *s = &sigs[i];

                for (size_t a = 0; a < ELEMENTSOF(sizes); a++)
                        for (size_t b = 0; b < ELEMENTSOF(sizes); b++) {
                                size_t hs = sizes[a], ts = sizes[b];
                                uint8_t src[8] = {};
                                uint8_t *h, *t;
                                unsigned expected = 0, found, mask = 0;
                                FormatError err = {};
                                int r;

                                /* The magic's first bytes, at the start of both buffers. */
                                memcpy(src, s->magic, MIN(s->len, sizeof(src)));
                                h = dup_exact(src, hs);
                                t = dup_exact(src, ts);
                                if (hs > 0)
                                        CHECK(h);
                                if (ts > 0)
                                        CHECK(t);
                                if ((hs > 0 && !h) || (ts > 0 && !t)) {
                                        free(h);
                                        free(t);
                                        continue;
                                }
                                /* Only magics at offset 0 of at most hs bytes can match (qcow needs 8). */
                                if (!s->in_tail && s->offset == 0 && s->len <= hs)
                                        expected = BIT(s->sig);
                                found = probe_signatures(h, hs, t, ts);
                                CHECK_EQ_INT(found, expected);
                                r = probe_conflicts(IMAGE_FORMAT_RAW, h, hs, t, ts, &mask, &err);
                                CHECK_EQ_INT(r, expected ? -EBADMSG : 0);
                                memset(&err, 0, sizeof(err));
                                r = probe_conflicts(IMAGE_FORMAT_QCOW2, h, hs, t, ts, &mask, &err);
                                CHECK_EQ_INT(r, -EMEDIUMTYPE);
                                if (found != expected)
                                        fprintf(stderr, "  ^ \"%s\" head %zu tail %zu\n", s->label, hs, ts);
                                free(h);
                                free(t);
                        }
        }
}

/* A magic at `off` in a buffer of exactly `size` bytes (head or tail). */
static unsigned probe_exact(bool in_tail, size_t size, size_t off, const char *magic, size_t len) {
        uint8_t *b = calloc(1, MAX(size, (size_t) 1));
        unsigned found;

        CHECK(b);
        if (!b)
                return UINT32_MAX;
        if (off < size)
                memcpy(b + off, magic, MIN(len, size - off));
        if (in_tail)
                found = probe_signatures(NULL, 0, b, size);
        else
                found = probe_signatures(b, size, NULL, 0);
        free(b);
        return found;
}

static void test_exact_edges(void) {
        CHECK_EQ_INT(probe_exact(false, 8, 0, (const char *) qcow2_v3, 8), BIT(PROBE_QCOW2));
        CHECK_EQ_INT(probe_exact(false, 7, 0, (const char *) qcow2_v3, 8), 0);
        CHECK_EQ_INT(probe_exact(false, 4, 0, M("QED\0")), BIT(PROBE_QED));
        CHECK_EQ_INT(probe_exact(false, 0x44, 0x40, M("\x7f\x10\xda\xbe")), BIT(PROBE_VDI));
        CHECK_EQ_INT(probe_exact(false, 0x43, 0x40, M("\x7f\x10\xda\xbe")), 0);
        CHECK_EQ_INT(probe_exact(false, 0x8006, 0x8001, M("CD001")), BIT(PROBE_ISO));
        CHECK_EQ_INT(probe_exact(false, 0x8005, 0x8001, M("CD001")), 0);
        CHECK_EQ_INT(probe_exact(false, 0x8806, 0x8801, M("CD001")), BIT(PROBE_ISO));
        CHECK_EQ_INT(probe_exact(false, 0x9006, 0x9001, M("CD001")), BIT(PROBE_ISO));
        CHECK_EQ_INT(probe_exact(false, 0x9005, 0x9001, M("CD001")), 0);
        CHECK_EQ_INT(probe_exact(false, 22, 0, M("Bochs Virtual HD Image")), BIT(PROBE_BOCHS));
        CHECK_EQ_INT(probe_exact(false, 21, 0, M("Bochs Virtual HD Image")), 0);
        CHECK_EQ_INT(probe_exact(false, 21, 0, M("# Disk DescriptorFile")), BIT(PROBE_VMDK));
        CHECK_EQ_INT(probe_exact(false, 20, 0, M("# Disk DescriptorFile")), 0);
        CHECK_EQ_INT(probe_exact(false, 23, 0, M("#!/bin/sh\n#V2.0 Format\n")), BIT(PROBE_CLOOP));
        CHECK_EQ_INT(probe_exact(false, 22, 0, M("#!/bin/sh\n#V2.0 Format\n")), 0);
        CHECK_EQ_INT(probe_exact(false, 6, 0, M("LUKS\xba\xbe")), BIT(PROBE_LUKS));
        CHECK_EQ_INT(probe_exact(false, 5, 0, M("LUKS\xba\xbe")), 0);
        /* Tails. */
        CHECK_EQ_INT(probe_exact(true, 512, 0, M("koly")), BIT(PROBE_DMG));
        CHECK_EQ_INT(probe_exact(true, 511, 0, M("koly")), 0);
        CHECK_EQ_INT(probe_exact(true, 1024, 512, M("koly")), BIT(PROBE_DMG));
        CHECK_EQ_INT(probe_exact(true, 512, 0, M("conectix")), BIT(PROBE_VPC));
        CHECK_EQ_INT(probe_exact(true, 512, 1, M("conectix")), BIT(PROBE_VPC));
        CHECK_EQ_INT(probe_exact(true, 511, 0, M("conectix")), BIT(PROBE_VPC));
        CHECK_EQ_INT(probe_exact(true, 510, 0, M("conectix")), 0);
        CHECK_EQ_INT(probe_exact(true, 8, 0, M("conectix")), 0);
        /* Head-only signatures are not looked for in the tail, and the reverse. */
        CHECK_EQ_INT(probe_exact(true, 512, 0, M("LUKS\xba\xbe")), 0);
        CHECK_EQ_INT(probe_exact(false, 512, 0, M("koly")), 0);
}

/* ---- probe_fd ---- */

static int make_file(int dir, const char *name, uint64_t size, uint64_t off, const void *data, size_t len) {
        int fd = openat(dir, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

        CHECK(fd >= 0);
        if (fd < 0)
                return -1;
        CHECK_EQ_INT(ftruncate(fd, (off_t) size), 0);
        if (len > 0)
                CHECK_EQ_INT(pwrite(fd, data, len, (off_t) off), (long long) len);
        return fd;
}

static int fd_conflicts(int fd, ImageFormat declared, unsigned *mask, FormatError *err) {
        memset(err, 0, sizeof(*err));
        *mask = 0xdeadU;
        return probe_fd(fd, declared, mask, err);
}

static const char *const file_names[] = {
        "empty", "qcow2", "polyglot", "iso", "fixed-vhd", "fixed-vhd-511", "dmg", "small-vpc", "small-dmg",
        "far-magic",
};

static void test_probe_fd(void) {
        char dir_path[] = "/tmp/test-probe-XXXXXX";
        FormatError err;
        unsigned mask;
        int dir, fd, p[2];

        CHECK(mkdtemp(dir_path));
        dir = open(dir_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        CHECK(dir >= 0);
        if (dir < 0)
                return;

        /* Empty regular file. */
        fd = make_file(dir, "empty", 0, 0, NULL, 0);
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), 0);
                CHECK_EQ_INT(mask, 0);
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_QCOW2, &mask, &err), -EMEDIUMTYPE);
                CHECK_EQ_INT(mask, 0);
                CHECK_CONTAINS(err.reason, "content is not qcow2");
                close(fd);
        }

        fd = make_file(dir, "qcow2", 0x40000, 0, qcow2_v3, sizeof(qcow2_v3));
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_QCOW2, &mask, &err), 0);
                CHECK_EQ_INT(mask, 0);
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), -EBADMSG);
                CHECK_EQ_INT(mask, BIT(PROBE_QCOW2));
                CHECK(ends_with(err.reason, "signature of: qcow2"));
                close(fd);
        }

        fd = make_file(dir, "polyglot", 0x20000, 0, qcow2_v3, sizeof(qcow2_v3));
        if (fd >= 0) {
                CHECK_EQ_INT(pwrite(fd, "CD001", 5, 0x8001), 5);
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_QCOW2, &mask, &err), -EBADMSG);
                CHECK_EQ_INT(mask, BIT(PROBE_ISO));
                CHECK(ends_with(err.reason, "signature of: iso9660"));
                close(fd);
        }

        fd = make_file(dir, "iso", 0x10000, 0x8001, "CD001", 5);
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), 0);
                CHECK_EQ_INT(mask, 0);
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_QCOW2, &mask, &err), -EMEDIUMTYPE);
                CHECK_EQ_INT(mask, BIT(PROBE_ISO));
                close(fd);
        }

        /* Footers at the end of files larger than the head. */
        fd = make_file(dir, "fixed-vhd", 1 << 20, (1 << 20) - 512, "conectix", 8);
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), -EBADMSG);
                CHECK_EQ_INT(mask, BIT(PROBE_VPC));
                CHECK(ends_with(err.reason, ": vpc"));
                close(fd);
        }
        fd = make_file(dir, "fixed-vhd-511", (1 << 20) + 511, 1 << 20, "conectix", 8);
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), -EBADMSG);
                CHECK_EQ_INT(mask, BIT(PROBE_VPC));
                close(fd);
        }
        fd = make_file(dir, "dmg", 1 << 20, (1 << 20) - 512, "koly", 4);
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), -EBADMSG);
                CHECK_EQ_INT(mask, BIT(PROBE_DMG));
                CHECK(ends_with(err.reason, ": dmg"));
                close(fd);
        }
        /* Files smaller than the head, and than the tail. */
        fd = make_file(dir, "small-vpc", 100, 0, "conectix", 8);
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), -EBADMSG);
                CHECK_EQ_INT(mask, BIT(PROBE_VPC));
                close(fd);
        }
        fd = make_file(dir, "small-dmg", 600, 600 - 512, "koly", 4);
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), -EBADMSG);
                CHECK_EQ_INT(mask, BIT(PROBE_DMG));
                close(fd);
        }
        /* A magic past the head and outside the tail is not seen. */
        fd = make_file(dir, "far-magic", 1 << 20, PROBE_HEAD_SIZE, "LUKS\xba\xbe", 6);
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), 0);
                CHECK_EQ_INT(mask, 0);
                close(fd);
        }

        /* memfd: a regular file too. */
        fd = memfd_create("test-probe", MFD_CLOEXEC);
        CHECK(fd >= 0);
        if (fd >= 0) {
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), 0);
                CHECK_EQ_INT(pwrite(fd, qcow2_v3, sizeof(qcow2_v3), 0), (long long) sizeof(qcow2_v3));
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_QCOW2, &mask, &err), 0);
                CHECK_EQ_INT(fd_conflicts(fd, IMAGE_FORMAT_RAW, &mask, &err), -EBADMSG);
                close(fd);
        }

        /* Not regular files: a pipe, a directory; and no fd at all. */
        CHECK_EQ_INT(pipe2(p, O_CLOEXEC), 0);
        CHECK_EQ_INT(write(p[1], qcow2_v3, sizeof(qcow2_v3)), (long long) sizeof(qcow2_v3));
        CHECK_EQ_INT(fd_conflicts(p[0], IMAGE_FORMAT_QCOW2, &mask, &err), -EBADF);
        CHECK_CONTAINS(err.reason, "not a regular file");
        CHECK_EQ_INT(mask, 0xdeadU);
        CHECK_EQ_INT(fd_conflicts(p[1], IMAGE_FORMAT_RAW, &mask, &err), -EBADF);
        close(p[0]);
        close(p[1]);
        CHECK_EQ_INT(fd_conflicts(dir, IMAGE_FORMAT_RAW, &mask, &err), -EBADF);
        CHECK_CONTAINS(err.reason, "not a regular file");
        CHECK_EQ_INT(fd_conflicts(-1, IMAGE_FORMAT_RAW, &mask, &err), -EBADF);
        CHECK_CONTAINS(err.reason, "cannot stat");

        for (size_t i = 0; i < ELEMENTSOF(file_names); i++)
                CHECK_EQ_INT(unlinkat(dir, file_names[i], 0), 0);
        close(dir);
        CHECK_EQ_INT(rmdir(dir_path), 0);
}

int main(void) {
        test_names();
        test_each_signature();
        test_near_misses();
        test_conflicts();
        test_short_buffers();
        test_exact_edges();
        test_probe_fd();

        TEST_MAIN_END();
}
