# SPDX-License-Identifier: LGPL-2.1-or-later
"""Inspect and ImportImage give the same verdict on images compared with QEMU 7.2's (issue 16):
valid images QEMU writes (internal snapshots ending the file) are accepted by both; images QEMU
refuses or cannot read (dirty, corrupt bit, unknown backing format, truncated compressed clusters,
files a format probe would take for VMDK or qcow2) are refused by both, Import with the exact error
name and nothing left in the store.

Images are made by qemu-img/qemu-io in the test's temporary directory; corruptions are written here.
Crafted names only name the canary."""

import json
import os
import struct
import subprocess
import sys

import dbus

from vdisktest import Env, check, check_eq, finish, opts, qemu_img, require

KiB, MiB = 1 << 10, 1 << 20
UNSAFE = "org.vdisk1.Error.UnsafeImage"
CORRUPT = "org.vdisk1.Error.Corrupt"
INVALID = "org.freedesktop.DBus.Error.InvalidArgs"

require("qemu-io")
env = Env(sys.argv[1])


def path(name):
    return os.path.join(env.tmp, name)


def run(argv):
    p = subprocess.run(argv, capture_output=True, text=True, cwd=env.tmp)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {p.stdout} {p.stderr}")
    return p


def qimg(*args):
    return run(["qemu-img", *args])


def qio(file, *cmds, fmt="qcow2"):
    argv = ["qemu-io", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    p = run(argv + [file])
    if "error" in p.stdout.lower() or "failed" in p.stdout.lower():
        raise RuntimeError(f"qemu-io {cmds}: {p.stdout}")


def patch(file, offset, data):
    with open(file, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(file, offset, n):
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(n)


def qcow2(name, size="1M", *extra, writes=()):
    f = path(name)
    qimg("create", "-f", "qcow2", *extra, f, size)
    if writes:
        qio(f, *writes)
    return f


def inspect(file, fmt):
    with open(file, "rb") as fh:
        err, res = env.try_call("Inspect", dbus.types.UnixFd(fh.fileno()), fmt)
    check_eq(err, None, f"Inspect {file}: no error")
    return json.loads(str(res)) if err is None else {}


def image_names():
    return {str(i[0]) for i in env.call("ListImages")}


n_imports = 0


def upload(file, fmt):
    global n_imports
    n_imports += 1
    name = f"img-{n_imports}"
    before = env.snapshot_store()
    err, msg = env.import_file(name, fmt, file)
    return name, before, err, msg


def accepted(label, file, fmt="qcow2"):
    """Inspect says valid without problems, and ImportImage accepts the file."""
    j = inspect(file, fmt)
    check_eq((j.get("valid"), j.get("problems")), (True, []), f"{label}: Inspect valid, no problems")
    name, _, err, msg = upload(file, fmt)
    check_eq((err, msg if err else None), (None, None), f"{label}: ImportImage accepts it")
    check(name in image_names(), f"{label}: imported image listed")
    check(env.canary_unchanged(), f"{label}: canary unchanged")


def refused(label, file, fmt, want, reason):
    """Inspect says not valid and lists `reason` among its problems; ImportImage fails with `want`, its
    message contains `reason`, and nothing changed in the store."""
    j = inspect(file, fmt)
    check(j.get("valid") is False and any(reason in p for p in j.get("problems", [])),
          f"{label}: Inspect not valid, problem mentions {reason!r} ({j.get('valid')}, {j.get('problems')})")
    name, before, err, msg = upload(file, fmt)
    check_eq(err, want, f"{label}: ImportImage refused with {want} ({msg})")
    check(reason in str(msg), f"{label}: Import's message mentions {reason!r} ({msg!r})")
    check_eq(env.snapshot_store(), before, f"{label}: nothing left in the store")
    check(name not in image_names(), f"{label}: not listed")
    check(env.canary_unchanged(), f"{label}: canary unchanged")


try:
    env.start()

    # ------------------------------------------------------------------ 1. internal snapshots
    # QEMU pads snapshot table entries to 8 bytes except the last; the table often ends the file.
    f = qcow2("snap1.qcow2", writes=["write -P 0x11 0 64k"])
    qimg("snapshot", "-c", "s1", f)
    size = os.path.getsize(f)
    check(size % 8 != 0, f"snapshot after data: the file ends inside the last entry's padding ({size})")
    accepted("snapshot after writing data", f)

    f = qcow2("snap20.qcow2", writes=["write -P 0x11 0 64k"])
    for i in range(20):
        qimg("snapshot", "-c", f"s{i}", f)
    accepted("20 snapshots", f)

    f = qcow2("snapdel.qcow2", writes=["write -P 0x11 0 64k"])
    for i in range(3):
        qimg("snapshot", "-c", f"s{i}", f)
    qimg("snapshot", "-d", "s1", f)
    accepted("3 snapshots, the middle one deleted", f)

    f = qcow2("snapvm.qcow2")
    qio(f, "write -b -P 0x22 0 64k")
    qimg("snapshot", "-c", "s1", f)
    accepted("vmstate written, then a snapshot", f)

    # 40 + 24 bytes of extra data + id "1" + a 7-byte name: exactly 72 bytes, no padding at all.
    f = qcow2("snap72.qcow2", writes=["write -P 0x11 0 64k"])
    qimg("snapshot", "-c", "snap-72", f)
    off = struct.unpack(">Q", read_at(f, 64, 8))[0]
    extra, = struct.unpack(">I", read_at(f, off + 36, 4))
    idl, nl = struct.unpack(">HH", read_at(f, off + 12, 4))
    check_eq(40 + extra + idl + nl, 72, "snapshot entry of exactly 72 bytes")
    accepted("snapshot entry of exactly 72 bytes", f)

    # ... and a table cut inside the last name is still refused.
    f = qcow2("snapcut.qcow2", writes=["write -P 0x11 0 64k"])
    qimg("snapshot", "-c", "s1", f)
    os.truncate(f, os.path.getsize(f) - 1)
    refused("snapshot table cut inside the last name", f, "qcow2", CORRUPT, "snapshot 0 extends past the end of the file")

    # ------------------------------------------------------------------ 3. raw files a probe takes for another format
    # VMDK text descriptors need not start with "# Disk DescriptorFile": QEMU's probe skips '#' lines and
    # blank lines and accepts version=1|2|3. A tool probing such a "raw" image would open the extents it
    # names (here the canary). Any QFI magic is qcow (version 1) or qcow2 (any other) to QEMU's probes.
    crafted = [
        ("VMDK descriptor starting with version=1", "vmdk",
         b'version=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "canary" 0\n'),
        ("VMDK descriptor after a comment and a blank line, CRLF", "vmdk",
         b'# hello\n  \r\nversion=2\r\nRW 2048 FLAT "canary" 0\r\n'),
        ("qcow2 magic with version 4", "qcow2", b"QFI\xfb\0\0\0\x04"),
        ("qcow2 magic with version 0", "qcow2", b"QFI\xfb\0\0\0\0"),
    ]
    for i, (label, sig, data) in enumerate(crafted):
        f = path(f"probe-{i}.raw")
        with open(f, "wb") as out:
            out.write(data.ljust(MiB, b"\0"))
        if sig == "vmdk" or data[7] == 4:
            # The premise: QEMU's probe (no -f) picks the other format for this file.
            p = subprocess.run(["qemu-img", "info", "--output=json", f], capture_output=True, text=True, cwd=env.tmp)
            said = p.stdout + p.stderr
            check(('"format": "vmdk"' in said or "VMDK" in said) if sig == "vmdk" else "qcow2 version" in said,
                  f"{label}: qemu-img's probe takes it for {sig} ({said.strip()[:120]!r})")
        refused(f"raw upload: {label}", f, "raw", UNSAFE, f"signature of: {sig}")

    # ------------------------------------------------------------------ 2. dirty bit, virtual size 0
    # Refused by both, with how to repair: the store never keeps a dirty image.
    f = qcow2("lazy-dirty.qcow2", "1M", "-o", "lazy_refcounts=on", writes=["write -P 0x11 0 64k"])
    p = subprocess.run(["qemu-img", "check", f], capture_output=True, text=True)
    check_eq(p.returncode, 0, "lazy-refcounts image: qemu-img check finds nothing")
    patch(f, 79, bytes([read_at(f, 79, 1)[0] | 1]))  # incompatible bit 0: dirty
    refused("lazy-refcounts image with the dirty bit and exact refcounts", f, "qcow2", CORRUPT, "qemu-img check -r all")

    f = path("lazy-crash.qcow2")
    qimg("create", "-f", "qcow2", "-o", "lazy_refcounts=on", f, "1M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 64k", "-c", "abort", f], capture_output=True, cwd=env.tmp)
    check(read_at(f, 79, 1)[0] & 1, "lazy-refcounts image after a crash: dirty bit set")
    refused("lazy-refcounts image left dirty by a crash", f, "qcow2", CORRUPT, "marked dirty")

    # A qcow2 of virtual size 0 is valid to QEMU (and to the interop suites): accepted by both.
    f = qcow2("zero-size.qcow2", "0")
    accepted("qcow2 of virtual size 0", f)

    # ------------------------------------------------------------------ 5. corrupt bit, unknown backing format
    f = qcow2("corrupt-bit.qcow2", "1M", writes=["write -P 0x11 0 64k"])
    patch(f, 79, bytes([read_at(f, 79, 1)[0] | 2]))  # incompatible bit 1: corrupt
    p = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read 0 4k", f], capture_output=True, text=True, cwd=env.tmp)
    check("image is corrupt; cannot be opened read/write" in (p.stdout + p.stderr).lower(),
          f"corrupt bit: QEMU refuses to open it read-write ({(p.stdout + p.stderr).strip()[:100]!r})")
    refused("image with only the corrupt bit", f, "qcow2", CORRUPT, "marked corrupt")

    # iotest 114: a backing format QEMU has no driver for. With the backing name (the canary), Import
    # refuses the backing file first; without it, the format name alone is refused.
    f = path("backing-foo.qcow2")
    qimg("create", "-f", "qcow2", "-u", "-b", "canary", "-F", "raw", f, "1M")
    data = read_at(f, 0, 4096)
    ext = data.index(struct.pack(">II", 0xE2792ACA, 3))
    patch(f, ext + 8, b"foo")
    p = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-c", "read 0 4k", f], capture_output=True, text=True, cwd=env.tmp)
    check("foo" in p.stdout + p.stderr, f"backing format foo: QEMU cannot open it ({(p.stdout + p.stderr).strip()[:100]!r})")
    j = inspect(f, "qcow2")
    check(j.get("valid") is False and "backing file format is neither raw nor qcow2" in j.get("problems", []),
          f"backing format foo: Inspect not valid with the reason ({j.get('problems')})")
    check_eq(j.get("backing-filename-format"), "foo", "backing format foo: reported as qemu-img info does")
    name, before, err, msg = upload(f, "qcow2")
    check_eq(err, UNSAFE, f"backing format foo with a backing file: ImportImage UnsafeImage ({msg})")
    check_eq(env.snapshot_store(), before, "backing format foo with a backing file: nothing left in the store")
    patch(f, 8, bytes(12))  # backing_file_offset and backing_file_size: no backing name
    refused("backing format foo without a backing name", f, "qcow2", UNSAFE, "backing file format is neither raw nor qcow2")
    check(env.canary_unchanged(), "canary unchanged after the backing-format cases")

    # ------------------------------------------------------------------ 4. compressed clusters (iotest 214)
    # Two compressed 2 MiB clusters; QEMU's own last one already reaches past the end of the file.
    base = qcow2("compressed.qcow2", "8M", "-o", "cluster_size=2M,compression_type=zlib",
                 writes=["write -c -P 0x11 0 2M", "write -c -P 0x11 2M 2M"])
    check_eq(struct.unpack(">QQ", read_at(base, 0x800000, 16)), (0x4008000000a00000, 0x4008000000a00802),
             "iotest 214 layout: the two compressed L2 entries, 5 sectors each")
    accepted("two compressed clusters written by qemu-io", base)
    f = path("compressed-mixed.qcow2")
    src = path("mixed.raw")
    with open(src, "wb") as out:
        out.write(os.urandom(MiB) + bytes(range(256)) * 4096 + b"\0" * MiB)
    qimg("convert", "-c", "-O", "qcow2", "-o", "cluster_size=4096", src, f)
    accepted("qemu-img convert -c with 4 KiB clusters", f)

    # Size field reduced to 4 sectors: the stream is cut, QEMU's read fails with EIO, and qemu-img check
    # sees nothing wrong (its refcounts are right). vdisk inflates it as QEMU does.
    f = path("compressed-short.qcow2")
    with open(base, "rb") as i, open(f, "wb") as o:
        o.write(i.read())
    patch(f, 0x800000, b"\x40\x06")
    p = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x11 0 4M", f], capture_output=True, text=True, cwd=env.tmp)
    check("Input/output error" in p.stdout + p.stderr, f"iotest 214, 4 sectors: QEMU's read fails ({p.stdout.strip()[:80]!r})")
    check_eq(subprocess.run(["qemu-img", "check", f], capture_output=True).returncode, 0,
             "iotest 214, 4 sectors: qemu-img check finds nothing")
    refused("compressed cluster whose size field cuts its data", f, "qcow2", CORRUPT,
            "does not decompress to a whole cluster")

    # Size field at its maximum (8192 sectors): the data would reach past the end of the file.
    f = path("compressed-long.qcow2")
    with open(base, "rb") as i, open(f, "wb") as o:
        o.write(i.read())
    patch(f, 0x800000, b"\x7f\xfe")
    patch(f, 0x800008, b"\x7f\xfe")
    refused("compressed cluster whose size field reaches past the end of the file", f, "qcow2", CORRUPT,
            "extends past the end of the file")

    # ------------------------------------------------------------------ 14. CreateImage cluster_size 0
    # A power of two from 512: 0 is InvalidArgs, not "the default" (which is the absent option).
    # Nor is any other value outside the rule, 4294967295 included (no value stands for "absent").
    for fmt, cs in (("qcow2", 0), ("raw", 0), ("qcow2", 0xFFFFFFFF), ("qcow2", 256), ("qcow2", 3 * 4096)):
        before = env.snapshot_store()
        err, msg = env.try_call("CreateImage", f"cs{cs}-{fmt}", fmt, dbus.UInt64(MiB), opts(cluster_size=cs))
        check_eq(err, INVALID, f"CreateImage {fmt} with cluster_size {cs}: InvalidArgs ({msg})")
        check_eq(env.snapshot_store(), before, f"CreateImage {fmt} with cluster_size {cs}: store unchanged")
        check(f"cs{cs}-{fmt}" not in image_names(), f"CreateImage {fmt} with cluster_size {cs}: not listed")
    for label, o, want in [("absent", opts(), 65536), ("512", opts(cluster_size=512), 512)]:
        err, layer = env.try_call("CreateImage", f"cs-{label}", "qcow2", dbus.UInt64(MiB), o)
        check_eq(err, None, f"CreateImage qcow2 with cluster_size {label}: created")
        if err is None:
            f = os.path.join(env.store, "images", f"{layer}.qcow2")
            check_eq(1 << struct.unpack(">I", read_at(f, 20, 4))[0], want,
                     f"CreateImage qcow2 with cluster_size {label}: cluster size {want}")

finally:
    env.close()
finish()
