# SPDX-License-Identifier: LGPL-2.1-or-later
"""ImportImage and Inspect against hostile inputs: unacceptable file descriptors (refused at call time)
and crafted uploads (refused by the job), each with the exact error name, nothing left in the store and
the canary untouched; then real uploads compared with their source by qemu-img, and cancellation of a
running import.

Every crafted image is built here, in the test's temporary directory, and may name only the canary
(or files that do not exist). qemu-img runs only on files built here, or on store files with -f."""

import json
import os
import socket
import struct
import subprocess
import sys
import time

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

from vdisktest import Env, check, check_eq, finish, opts, qemu_img, require

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CAP = 4 * GiB  # MaxVirtualSize of this test's daemon
UNSAFE = "org.vdisk1.Error.UnsafeImage"
CORRUPT = "org.vdisk1.Error.Corrupt"
NOTSUP = "org.vdisk1.Error.NotSupported"
LIMIT = "org.vdisk1.Error.LimitExceeded"
EXISTS = "org.vdisk1.Error.AlreadyExists"
CANCELLED = "org.vdisk1.Error.Cancelled"
INVALID = "org.freedesktop.DBus.Error.InvalidArgs"

require("qemu-io")
env = Env(sys.argv[1], config_extra=f"[Limits]\nMaxVirtualSize={CAP}\nMaxJobs=1\n")


def path(name):
    return os.path.join(env.tmp, name)


def qimg(*args):
    """qemu-img on files built by this test, in the temporary directory (so relative names resolve
    next to the canary); fails the test loudly if it fails."""
    p = qemu_img(*args, cwd=env.tmp)
    if p.returncode != 0:
        raise RuntimeError(f"qemu-img {' '.join(args)}: {p.stderr}")
    return p


def qio(fmt, file, *cmds):
    argv = ["qemu-io", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    p = subprocess.run(argv + [file], capture_output=True, text=True, cwd=env.tmp)
    if p.returncode != 0 or "error" in p.stdout.lower():
        raise RuntimeError(f"qemu-io {cmds}: {p.stdout} {p.stderr}")


def patch(file, offset, data):
    with open(file, "r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(file, offset, n):
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(n)


def be64(file, offset):
    return struct.unpack(">Q", read_at(file, offset, 8))[0]


def be32(file, offset):
    return struct.unpack(">I", read_at(file, offset, 4))[0]


def fresh_qcow2(name, size="1M", *extra, writes=()):
    f = path(name)
    qimg("create", "-f", "qcow2", *extra, f, size)
    if writes:
        qio("qcow2", f, *writes)
    return f


def image_names():
    return {str(i[0]) for i in env.call("ListImages")}


def refused_upload(label, fmt, file, want):
    """Imports `file`, expects error `want` (at call time or on the job), and that nothing changed."""
    refused_upload.n += 1
    name = f"up-{refused_upload.n}"
    before = env.snapshot_store()
    err, msg = env.import_file(name, fmt, file)
    check_eq(err, want, f"{label}: refused with {want}")
    check("\n" not in str(msg) and str(msg) != "", f"{label}: one-line error message ({msg!r})")
    check_eq(env.snapshot_store(), before, f"{label}: no record, journal entry or file left in the store")
    check(name not in image_names(), f"{label}: not listed")
    check(env.canary_unchanged(), f"{label}: canary unchanged")
    return msg


refused_upload.n = 0


def inspect(fd, fmt):
    import json
    err, res = env.try_call("Inspect", dbus.types.UnixFd(fd), fmt)
    return err, (json.loads(str(res)) if err is None else res)


def store_file_of(name):
    for n, layer, fmt, vsize, alloc in env.call("ListImages"):
        if str(n) == name:
            return os.path.join(env.store, "images", f"{layer}.{fmt}"), str(fmt), int(vsize)
    return None, None, None


try:
    env.start()

    # ------------------------------------------------------------------ unacceptable fds, at call time
    regular = path("regular.raw")
    with open(regular, "wb") as f:
        f.write(b"\x11" * MiB)
    fifo = path("fifo")
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bad_fds = {
        "directory fd": lambda: os.open(env.tmp, os.O_RDONLY | os.O_DIRECTORY),
        "FIFO fd": lambda: os.open(fifo, os.O_RDONLY | os.O_NONBLOCK),
        "pipe fd": lambda: os.pipe()[0],
        "O_PATH fd": lambda: os.open(regular, os.O_PATH),
        "write-only fd": lambda: os.open(regular, os.O_WRONLY),
        "socket fd": lambda: os.dup(sock.fileno()),
        "character device fd": lambda: os.open("/dev/null", os.O_RDONLY),
    }
    for label, opener in bad_fds.items():
        fd = opener()
        try:
            before = env.snapshot_store()
            err, msg = env.try_call("ImportImage", "badfd", "raw", dbus.types.UnixFd(fd), opts())
            check_eq(err, INVALID, f"ImportImage with a {label}: InvalidArgs at call time")
            check_eq(env.snapshot_store(), before, f"ImportImage with a {label}: store unchanged")
            err, msg = env.try_call("Inspect", dbus.types.UnixFd(fd), "raw")
            check_eq(err, INVALID, f"Inspect (raw) with a {label}: InvalidArgs")
            err, msg = env.try_call("Inspect", dbus.types.UnixFd(fd), "qcow2")
            check_eq(err, INVALID, f"Inspect (qcow2) with a {label}: InvalidArgs")
        finally:
            os.close(fd)
    check_eq(os.path.getsize(regular), MiB, "the write-only fd was not used to write")
    check("badfd" not in image_names(), "no image from any bad fd")
    sock.close()

    # Bad names and formats with a good fd are refused before anything is created.
    with open(regular, "rb") as f:
        for label, name, fmt, want in [("empty name", "", "raw", INVALID), ("name with /", "a/b", "raw", INVALID),
                                       ("name ..", "..", "raw", INVALID), ("format vmdk", "ok", "vmdk", INVALID),
                                       ("format empty", "ok", "", INVALID)]:
            before = env.snapshot_store()
            err, _ = env.try_call("ImportImage", name, fmt, dbus.types.UnixFd(f.fileno()), opts())
            check_eq(err, want, f"ImportImage {label}: {want}")
            check_eq(env.snapshot_store(), before, f"ImportImage {label}: store unchanged")
        before = env.snapshot_store()
        err, _ = env.try_call("ImportImage", "ok", "raw", dbus.types.UnixFd(f.fileno()), opts(unknown="x"))
        check_eq(err, INVALID, "ImportImage with an unknown option key: InvalidArgs")
        check_eq(env.snapshot_store(), before, "ImportImage with an unknown option key: store unchanged")
        err, _ = env.try_call("Inspect", dbus.types.UnixFd(f.fileno()), "vmdk")
        check_eq(err, INVALID, "Inspect with format vmdk: InvalidArgs")

    # ------------------------------------------------------------------ crafted uploads
    # References outside the file.
    bk = fresh_qcow2("backing-canary.qcow2", "1M", "-u", "-b", "canary", "-F", "raw")
    check_eq(read_at(bk, be64(bk, 8), be32(bk, 16)), b"canary", "crafted image names the canary as backing file")
    refused_upload("qcow2 with a backing file (bare name of the canary)", "qcow2", bk, UNSAFE)
    bka = fresh_qcow2("backing-abs.qcow2", "1M", "-u", "-b", env.canary, "-F", "raw")
    refused_upload("qcow2 with a backing file (absolute path of the canary)", "qcow2", bka, UNSAFE)
    # qemu-img 7.2 insists on -F: write it, then turn its extension into the end-of-extensions marker.
    bkn = fresh_qcow2("backing-noformat.qcow2", "1M", "-u", "-b", "canary", "-F", "raw")
    check_eq(be32(bkn, be32(bkn, 100)), 0xE2792ACA, "crafted image: first extension is the backing format")
    patch(bkn, be32(bkn, 100), b"\0" * 8)
    refused_upload("qcow2 with a backing file and no backing format", "qcow2", bkn, UNSAFE)

    # External data file: qemu-img creates the data file it names, so name a scratch file of the
    # canary's length, then patch the name in the header to the canary's.
    df = fresh_qcow2("datafile.qcow2", "1M", "-o", "data_file=canarx")
    hdr = read_at(df, 0, 65536)
    check(hdr.count(b"canarx") == 1, "crafted data-file name is in the header once")
    patch(df, hdr.index(b"canarx"), b"canary")
    os.unlink(path("canarx"))
    refused_upload("qcow2 with an external data file (the canary)", "qcow2", df, UNSAFE)
    dfr = fresh_qcow2("datafile-raw.qcow2", "1M", "-o", "data_file=canarx,data_file_raw=on")
    hdr = read_at(dfr, 0, 65536)
    patch(dfr, hdr.index(b"canarx"), b"canary")
    os.unlink(path("canarx"))
    refused_upload("qcow2 with a raw external data file (the canary)", "qcow2", dfr, UNSAFE)

    # Content that does not match the declared format.
    plain = fresh_qcow2("plain.qcow2", "1M", writes=["write -P 0x61 0 64k"])
    refused_upload("raw upload that is a qcow2 image", "raw", plain, UNSAFE)
    for fmt in ("vmdk", "qed", "vhdx", "vpc"):
        f = path(f"other.{fmt}")
        qimg("create", "-f", fmt, f, "1M")
        refused_upload(f"raw upload that is a {fmt} image (made by qemu-img)", "raw", f, UNSAFE)
    magics = {
        "VMDK": (0, b"KDMV\x01\x00\x00\x00"),
        "VMDK descriptor": (0, b"# Disk DescriptorFile\nversion=1\n"),
        "QED": (0, b"QED\x00"),
        "LUKS": (0, b"LUKS\xba\xbe\x00\x01"),
        "VHDX": (0, b"vhdxfile"),
        "qcow2 (v3)": (0, b"QFI\xfb\x00\x00\x00\x03"),
    }
    for label, (off, magic) in magics.items():
        f = path("magic-" + label.split()[0] + ".raw")
        with open(f, "wb") as out:
            out.truncate(MiB)
            out.seek(off)
            out.write(magic)
        refused_upload(f"raw upload carrying {label} magic", "raw", f, UNSAFE)
    zeros = path("zeros.img")
    with open(zeros, "wb") as f:
        f.write(b"\0" * MiB)
    refused_upload("qcow2 upload that is plain zeros", "qcow2", zeros, UNSAFE)

    # Invalid metadata.
    f = fresh_qcow2("bad-refcount.qcow2", "1M", writes=["write -P 0x62 0 64k"])
    rt = be64(f, 48)
    rb = be64(f, rt) & ~0x1FF  # refcount block 0
    check_eq(struct.unpack(">H", read_at(f, rb + 2 * 3, 2))[0], 1, "crafted image: L1 cluster has refcount 1")
    patch(f, rb + 2 * 3, struct.pack(">H", 0))  # the L1 table's cluster now counts as free
    refused_upload("qcow2 with a corrupted refcount (0 for a used cluster)", "qcow2", f, CORRUPT)
    f = fresh_qcow2("leak-refcount.qcow2", "1M")
    rb = be64(f, be64(f, 48)) & ~0x1FF
    patch(f, rb + 2 * 10, struct.pack(">H", 1))  # a cluster nothing uses
    refused_upload("qcow2 with a leaked cluster in the refcounts", "qcow2", f, CORRUPT)

    f = fresh_qcow2("l1-reserved.qcow2", "1M", writes=["write -P 0x63 0 64k"])
    l1 = be64(f, 40)
    e = be64(f, l1)
    check(e != 0, "crafted image: L1 entry 0 is allocated")
    patch(f, l1, struct.pack(">Q", e | 0x2))  # bit 1: reserved
    refused_upload("qcow2 with reserved bits set in an L1 entry", "qcow2", f, CORRUPT)
    f = fresh_qcow2("l1-past-eof.qcow2", "1M")
    patch(f, 40, struct.pack(">Q", 1 << 40))
    refused_upload("qcow2 whose L1 table lies past the end of the file", "qcow2", f, CORRUPT)
    f = fresh_qcow2("l2-past-eof.qcow2", "1M", writes=["write -P 0x64 0 64k"])
    l1 = be64(f, 40)
    l2 = be64(f, l1) & 0x00FFFFFFFFFFFE00
    patch(f, l2, struct.pack(">Q", (1 << 63) | (1 << 40)))
    refused_upload("qcow2 with a data cluster past the end of the file", "qcow2", f, CORRUPT)
    f = fresh_qcow2("l1-overlap.qcow2", "1M", writes=["write -P 0x65 0 64k"])
    patch(f, be64(f, 40), struct.pack(">Q", (1 << 63) | 0))  # L2 table "at" the header
    refused_upload("qcow2 whose L2 table overlaps the header", "qcow2", f, CORRUPT)

    f = fresh_qcow2("dirty.qcow2", "1M")
    patch(f, 72, struct.pack(">Q", be64(f, 72) | 1))
    refused_upload("qcow2 with the dirty bit", "qcow2", f, CORRUPT)
    f = fresh_qcow2("corrupt-bit.qcow2", "1M")
    patch(f, 72, struct.pack(">Q", be64(f, 72) | 2))
    refused_upload("qcow2 with the corrupt bit", "qcow2", f, CORRUPT)
    f = fresh_qcow2("refcount-order.qcow2", "1M")
    patch(f, 96, struct.pack(">I", 7))
    refused_upload("qcow2 with refcount_order 7", "qcow2", f, CORRUPT)
    f = fresh_qcow2("vsize-odd.qcow2", "1M")
    patch(f, 24, struct.pack(">Q", MiB - 100))
    refused_upload("qcow2 with a virtual size that is not a multiple of 512", "qcow2", f, CORRUPT)

    # Valid features vdisk does not handle.
    f = fresh_qcow2("cluster-bits-22.qcow2", "1M")
    patch(f, 20, struct.pack(">I", 22))
    refused_upload("qcow2 with cluster_bits 22", "qcow2", f, NOTSUP)
    f = fresh_qcow2("incompat-unknown.qcow2", "1M")
    patch(f, 72, struct.pack(">Q", be64(f, 72) | (1 << 40)))
    refused_upload("qcow2 with an unknown incompatible feature bit", "qcow2", f, NOTSUP)
    enc = path("encrypted.qcow2")
    # qemu-img benchmarks the key derivation and fails with "Unable to get accurate CPU usage" when
    # the CPU is busy; a longer iteration time and a few attempts make it dependable.
    for iter_time in (100, 500, 2000):
        p = qemu_img("create", "-f", "qcow2", "--object", "secret,id=s,data=x", "-o",
                     f"encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time={iter_time}", enc, "1M", cwd=env.tmp)
        if p.returncode == 0:
            break
    else:
        raise RuntimeError(f"qemu-img could not create a LUKS image: {p.stderr}")
    check_eq(be32(enc, 32), 2, "crafted image: crypt_method 2 (LUKS)")
    msg = refused_upload("qcow2 encrypted with LUKS (made by qemu-img)", "qcow2", enc, NOTSUP)
    f = fresh_qcow2("aes.qcow2", "1M")
    patch(f, 32, struct.pack(">I", 1))
    refused_upload("qcow2 with crypt_method 1 (AES)", "qcow2", f, NOTSUP)

    # Limits.
    f = fresh_qcow2("above-cap.qcow2", str(CAP + 64 * KiB))
    refused_upload("qcow2 with a virtual size above MaxVirtualSize", "qcow2", f, LIMIT)
    f = path("above-cap.raw")
    with open(f, "wb") as out:
        out.truncate(CAP + 512)
    refused_upload("sparse raw upload just above MaxVirtualSize", "raw", f, LIMIT)
    with open(f, "wb") as out:
        out.truncate(CAP + 2 * GiB)
    refused_upload("sparse raw upload far above MaxVirtualSize (refused at call time)", "raw", f, LIMIT)
    os.unlink(f)

    # Raw files of an impossible size.
    f = path("odd.raw")
    with open(f, "wb") as out:
        out.write(b"\x42" * 1000)
    refused_upload("raw file whose size is not a multiple of 512", "raw", f, CORRUPT)
    # An empty raw file is an image of size 0, as qemu-img and Inspect say (issue 16, item 2: Inspect and
    # ImportImage agree).
    f = path("empty.raw")
    open(f, "wb").close()
    err, msg = env.import_file("empty-raw", "raw", f)
    check_eq(err, None, f"empty raw file: imported ({msg})")
    listed = {str(i[0]): i for i in env.call("ListImages")}
    check("empty-raw" in listed and int(listed["empty-raw"][3]) == 0, "empty raw file: listed with virtual size 0")
    with open(f, "rb") as ef:
        described = json.loads(str(env.call("Inspect", dbus.types.UnixFd(ef.fileno()), "raw")))
    check_eq(described.get("valid"), True, "empty raw file: Inspect says valid too")
    env.call("DeleteImage", "empty-raw")

    # Inspect tells the same story without refusing: valid false, a problem, nothing referenced opened.
    for label, fmt, file in [("zeros as qcow2", "qcow2", zeros), ("qcow2 as raw", "raw", plain),
                             ("corrupted refcount", "qcow2", path("bad-refcount.qcow2")),
                             ("L1 reserved bits", "qcow2", path("l1-reserved.qcow2")),
                             ("odd-sized raw", "raw", path("odd.raw")), ("VMDK as raw", "raw", path("other.vmdk"))]:
        with open(file, "rb") as fh:
            err, j = inspect(fh.fileno(), fmt)
        check(err is None and j.get("valid") is False and len(j.get("problems", [])) > 0,
              f"Inspect {label}: valid false with a problem ({j})")
    with open(bk, "rb") as fh:
        err, j = inspect(fh.fileno(), "qcow2")
    check(err is None and j.get("backing-filename") == "canary" and j.get("backing-filename-format") == "raw",
          f"Inspect reports the crafted backing file name without following it ({j})")
    check(env.canary_unchanged(), "canary unchanged after Inspect")

    # ------------------------------------------------------------------ uploads that work
    src = path("good.raw")
    with open(src, "wb") as out:
        out.truncate(8 * MiB)
        for off, byte in [(0, 0x01), (MiB + 4096, 0x02), (5 * MiB, 0x03), (8 * MiB - 4096, 0x04)]:
            out.seek(off)
            out.write(bytes([byte]) * 4096)
    goods = [("good-raw", "raw", src)]
    goods.append(("good-qcow2", "qcow2", fresh_qcow2(
        "good.qcow2", "64M", writes=["write -P 0x11 0 64k", "write -P 0x22 1M 192k", "write -z 2M 64k",
                                     "write -P 0x33 63M 1M", "write -P 0x44 40M 4k"])))
    goods.append(("good-qcow2-v2", "qcow2", fresh_qcow2(
        "good-v2.qcow2", "16M", "-o", "compat=0.10", writes=["write -P 0x55 0 128k", "write -P 0x66 15M 64k"])))
    goods.append(("good-qcow2-4k", "qcow2", fresh_qcow2(
        "good-4k.qcow2", "16M", "-o", "cluster_size=4096", writes=["write -P 0x77 4k 60k", "write -P 0x78 9M 4k"])))
    comp = path("good-compressed.qcow2")
    qimg("convert", "-f", "qcow2", "-O", "qcow2", "-c", path("good.qcow2"), comp)
    goods.append(("good-qcow2-compressed", "qcow2", comp))
    for name, fmt, file in goods:
        err, msg = env.import_file(name, fmt, file)
        check_eq(err, None, f"import {name}: done ({msg})")
        stored, sfmt, vsize = store_file_of(name)
        check(stored is not None and os.path.exists(stored), f"import {name}: listed, file in the store")
        if not stored:
            continue
        check_eq(sfmt, fmt, f"import {name}: listed format")
        want_size = os.path.getsize(file) if fmt == "raw" else be64(file, 24)
        check_eq(vsize, want_size, f"import {name}: listed virtual size")
        p = qemu_img("compare", "-f", fmt, "-F", fmt, file, stored)
        check_eq(p.returncode, 0, f"import {name}: qemu-img compare source vs store file ({' '.join(p.stdout.split())})")
        if fmt == "qcow2":
            p = qemu_img("check", "-f", "qcow2", stored)
            summary = (p.stdout.splitlines() or [p.stderr.strip()])[0]
            check_eq(p.returncode, 0, f"import {name}: qemu-img check clean ({summary})")
        else:
            check_eq(open(stored, "rb").read(), open(file, "rb").read(), f"import {name}: byte-for-byte copy")
        check_eq(os.stat(stored).st_mode & 0o777, 0o600, f"import {name}: store file mode 0600")
    # A second import under an existing name: AlreadyExists at call time, nothing changed.
    before = env.snapshot_store()
    err, _ = env.import_file("good-raw", "raw", src)
    check_eq(err, EXISTS, "import under an existing name: AlreadyExists")
    check_eq(env.snapshot_store(), before, "import under an existing name: store unchanged")
    check(not [n for n in os.listdir(os.path.join(env.store, "images")) if n.startswith(".")],
          "no temporaries left in images/")
    check_eq(os.listdir(os.path.join(env.store, "journal")), [], "journal empty")

    # ------------------------------------------------------------------ cancel; MaxJobs
    dbus.mainloop.glib.DBusGMainLoop(set_as_default=False)
    sigbus = dbus.bus.BusConnection(env.address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
    finished = {}
    sigbus.add_signal_receiver(lambda *a, path=None: finished.setdefault(str(path), tuple(str(x) for x in a)),
                               signal_name="Finished", dbus_interface="org.vdisk1.Job", path_keyword="path")
    ctx = GLib.MainContext.default()

    def pump_until(pred, timeout=10):
        end = time.time() + timeout
        while time.time() < end and not pred():
            ctx.iteration(False)
            time.sleep(0.005)
        return pred()

    big = path("big.raw")
    size = GiB
    for attempt in range(3):
        chunk = bytes(range(256)) * 4096  # 1 MiB of data, no holes
        with open(big, "wb") as out:
            for _ in range(size // MiB):
                out.write(chunk)
        before = env.snapshot_store()
        with open(big, "rb") as f:
            err, job = env.try_call("ImportImage", "big", "raw", dbus.types.UnixFd(f.fileno()), opts())
        check_eq(err, None, f"ImportImage of {size >> 20} MiB: a job")
        # MaxJobs=1: a second import while the first runs is refused at call time.
        names_before = env.store_files()
        with open(src, "rb") as f:
            err2, _ = env.try_call("ImportImage", "second", "raw", dbus.types.UnixFd(f.fileno()), opts())
        jobobj = dbus.Interface(env.bus.get_object("org.vdisk1", job, introspect=False), "org.vdisk1.Job")
        try:
            jobobj.Cancel()
            cancel_err = None
        except dbus.exceptions.DBusException as e:
            cancel_err = e.get_dbus_name()
        state = env.wait_job(job)
        if cancel_err is not None and state[0] == "done" and attempt < 2:
            print(f"# the import of {size >> 20} MiB finished before Cancel arrived; trying a bigger file")
            env.call("DeleteImage", "big")
            size *= 2
            continue
        check_eq(err2, LIMIT, "MaxJobs=1: a second ImportImage while one runs is LimitExceeded")
        check("second" not in image_names() and not any("second" in n for n in env.store_files() - names_before),
              "MaxJobs: the refused import left nothing")
        check_eq(cancel_err, None, "Cancel of a running import is accepted")
        check_eq(state[:2], ("cancelled", CANCELLED), "cancelled import: State cancelled, ErrorName Cancelled")
        props = dbus.Interface(env.bus.get_object("org.vdisk1", job, introspect=False), "org.freedesktop.DBus.Properties")
        allp = props.GetAll("org.vdisk1.Job")
        check_eq(int(allp["BytesTotal"]), size, "cancelled import: BytesTotal is the file size")
        check(int(allp["BytesDone"]) < size and float(allp["Progress"]) < 1.0,
              f"cancelled import: stopped part-way ({int(allp['BytesDone'])} of {size})")
        pump_until(lambda: job in finished)
        check_eq(finished.get(job, ("",))[:2], ("cancelled", CANCELLED), "Finished signal: cancelled, Cancelled")
        check_eq(env.snapshot_store(), before, "cancelled import: store exactly as before (no record, file, journal)")
        check("big" not in image_names(), "cancelled import: not listed")
        try:
            jobobj.Cancel()
            again = None
        except dbus.exceptions.DBusException as e:
            again = e.get_dbus_name()
        check_eq(again, INVALID, "Cancel of a cancelled job: InvalidArgs")
        break
    os.unlink(big)
    # The job slot is free again.
    err, msg = env.import_file("after-cancel", "raw", src)
    check_eq(err, None, "an import after the cancelled one succeeds")

    # After a restart nothing of the refused or cancelled uploads reappears.
    names = image_names()
    env.restart()
    check_eq(image_names(), names, "after restart: the same images")
    check(env.canary_unchanged(), "canary unchanged at the end")
    check("Removing orphaned" not in env.log_text(), "no orphan had to be removed at restart")
finally:
    env.close()
finish()
