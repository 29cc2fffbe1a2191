# SPDX-License-Identifier: LGPL-2.1-or-later
"""B3 (safe rebase), B4 (commit) and B5 (flatten) of docs/benchmarks.md: vdiskd's Rebase/Commit
jobs against qemu-img 7.2 (Debian 12) and qemu-img 10.0.2 (bookworm-backports, fetched by
fetch-qemu-img.sh without installing), on identical copies of the same chains, interleaved.

Every chain is built once through the daemon's API (CreateImage/ImportImage, CreateVM, CreateDisk,
Snapshot), guest data is written with qemu-io straight into the store's current top, and the store is
saved as a template. The peer works on a copy of the same image files. Each run starts from a fresh
copy (the daemon is stopped, the store restored, the daemon restarted), then `sync` and a page-cache
drop; only the job is measured (the Rebase/Commit call until the job's Finished signal), resp. the
qemu-img process from spawn to exit. Per round: every peer command and vdisk once, in a fixed order
(7.2 ..., vdisk, 10.0.2 ...), one untimed warm-up round, then PAIRS rounds; each figure is the median
of the per-round ratios vdisk / peer. Every result is checked: `qemu-img compare` of the new top
against the untouched pre-op chain and `qemu-img check` of every written image, plus GetChain and
Verify on the daemon's side.

Usage: run-b345.py VDISKD [--quick] [--pairs N] [--only B3a,B3b,B3m,B3c,B4,B5a,B5b] [--baseline-vdiskd OLD]
                          [--qemu10-dir DIR | --no-qemu10] [--workdir DIR] [--results FILE]
Must run as root (qemu-io into the store, page-cache drops)."""

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import dbus  # noqa: E402
import dbus.mainloop.glib  # noqa: E402
from gi.repository import GLib  # noqa: E402
from vdisktest import BUS_NAME, IFACE, PATH, Env, opts  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
SYSTEM_QEMU_IMG = "/usr/bin/qemu-img"
CHECK_QEMU_IMG = SYSTEM_QEMU_IMG  # verification (compare, check) always with Debian's qemu-img


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(argv, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... exited {p.returncode}: {p.stderr[-2000:]}")
    return p.stdout


def fmt_bytes(n):
    if n is None:
        return "–"
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


# ---------------------------------------------------------------- process accounting

def read_io(pid):
    out = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, v = line.split(":")
            out[k.strip()] = int(v)
    return out


def io_delta(a, b):
    return {k: b[k] - a[k] for k in ("rchar", "wchar", "read_bytes", "write_bytes", "cancelled_write_bytes")}


def daemon_cpu_ns(pid):
    """User+system time of every thread of a running process, in ns (schedstat's run time)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total


class CacheDropper:
    def __init__(self):
        self.ok = True
        self.why = ""

    def __call__(self):
        os.sync()
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        except OSError as e:
            if self.ok:
                self.why = str(e)
                log(f"warning: cannot drop the page cache ({e}); both sides run with a warm cache")
            self.ok = False


drop_caches = CacheDropper()


def spawn_measured(argv, cwd, logpath):
    """Runs argv; returns wall seconds, /proc/PID/io read at exit (before reaping) and user+sys ns
    from wait4's rusage (all threads)."""
    fd = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        old = os.getcwd()
        os.chdir(cwd)
        try:
            t0 = time.perf_counter()
            pid = os.posix_spawn(argv[0], argv, os.environ,
                                 file_actions=[(os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)])
        finally:
            os.chdir(old)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        wall = time.perf_counter() - t0
        io = read_io(pid)
        _, status, ru = os.wait4(pid, 0)
    finally:
        os.close(fd)
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {rc}: {open(logpath).read()[-2000:]}")
    return {"wall": wall, "cpu": int((ru.ru_utime + ru.ru_stime) * 1e9), **{k: io[k] for k in io}}


# ---------------------------------------------------------------- the daemon side

class Daemon:
    """vdiskd on a private dbus-daemon (vdisktest.Env), plus a second connection with a GLib main loop
    that receives the jobs' Finished signals."""

    def __init__(self, vdiskd, tmpdir):
        os.environ["TMPDIR"] = tmpdir
        tempfile.tempdir = tmpdir
        self.env = Env(vdiskd)
        self.env_binary = vdiskd
        self.sbus = dbus.bus.BusConnection(self.env.address,
                                           mainloop=dbus.mainloop.glib.DBusGMainLoop(set_as_default=False))
        self.finished = {}
        self.sbus.add_signal_receiver(self._on_finished, signal_name="Finished", dbus_interface="org.vdisk1.Job",
                                      path_keyword="path")
        self.ctx = GLib.MainContext.default()
        GLib.timeout_add(200, lambda: True)  # wakes the loop to check deadlines

    def _on_finished(self, state, ename, emsg, path=None):
        self.finished[str(path)] = (time.perf_counter(), str(state), str(ename), str(emsg))

    @property
    def store(self):
        return self.env.store

    @property
    def pid(self):
        return self.env.daemon.pid

    def start(self):
        self.env.start()

    def use_binary(self, path):
        """The daemon started next runs this binary (copied over the path Env starts)."""
        tmp = self.env_binary + ".new"
        shutil.copy2(path, tmp)
        os.replace(tmp, self.env_binary)

    def stop(self):
        d = self.env.daemon
        if d and d.poll() is None:
            d.send_signal(signal.SIGTERM)
            d.wait(timeout=60)
            if d.returncode != 0:
                raise RuntimeError(f"vdiskd exited {d.returncode}: {self.env.log_text()[-2000:]}")
        self.env.wait_name_gone()

    def close(self):
        try:
            self.sbus.close()
        finally:
            self.env.close()

    def m(self):
        return dbus.Interface(self.sbus.get_object(BUS_NAME, PATH, introspect=False), IFACE)

    def call(self, method, *args, timeout=600):
        return getattr(self.m(), method)(*args, timeout=timeout)

    def wait(self, job, timeout=1800):
        end = time.time() + timeout
        while job not in self.finished:
            if time.time() > end:
                raise RuntimeError(f"job {job} did not finish")
            self.ctx.iteration(True)
        return self.finished.pop(job)

    def job(self, method, *args):
        """Starts a job and waits for it; returns (start, end) perf_counter times."""
        self.finished.clear()
        t0 = time.perf_counter()
        job = str(self.call(method, *args))
        t1, state, ename, emsg = self.wait(job)
        if state != "done":
            raise RuntimeError(f"{method} job {state}: {ename}: {emsg}")
        return t0, t1

    def chain(self, vm, disk):
        return [(str(r[0]), str(r[1])) for r in self.call("GetChain", vm, disk)]

    def import_image(self, name, path, fmt="qcow2"):
        with open(path, "rb") as f:
            self.job("ImportImage", name, fmt, dbus.types.UnixFd(f.fileno()), opts())


def qemu_io(path, cmds):
    """Guest writes into path (a qcow2 whose backing files are its siblings), in batches."""
    for i in range(0, len(cmds), 2000):
        argv = ["qemu-io", "-f", "qcow2"]
        for c in cmds[i:i + 2000]:
            argv += ["-c", c]
        run(argv + [path])


def extents(start, length, stride, count, pattern0, npat=32, limit=None):
    """count writes of `length` bytes every `stride` bytes from `start`, patterns pattern0.."""
    out = []
    for i in range(count):
        off = start + i * stride
        if limit is not None and off + length > limit:
            break
        out.append(f"write -q -P {pattern0 + i % npat} {off} {length}")
    return out


# ---------------------------------------------------------------- workloads

class Workload:
    """A chain in a template store, the same image files in a reference dir, and what to run."""
    name = ""
    title = ""
    warm = False  # True: the page cache is warmed (files read) instead of dropped before each run
    peer_fsync = False  # True: the peer's time includes an fsync of its output file

    def __init__(self, cfg):
        self.cfg = cfg
        self.s = cfg.scale
        self.vm, self.disk = "vm", "d"

    # Filled by build(): self.chain (top first, (layer, file)), the target of the op, etc.
    def build(self, d):
        raise NotImplementedError

    def vdisk_args(self):
        raise NotImplementedError

    def peers(self):
        """[(label, argv tail after qemu-img, output file relative to the peer dir)]"""
        raise NotImplementedError

    def expected_chain(self):
        raise NotImplementedError

    def vdisk_output(self):
        """The file (relative to the store) that holds the guest view after the op, and that changed."""
        return self.chain[0][1]

    def files(self):
        return [f for _, f in self.chain]

    def describe(self):
        return self.title


def top_file(d, vm, disk):
    layer, f = d.chain(vm, disk)[0]
    return os.path.join(d.store, f)


def snapshot(d, vm, disk):
    return str(d.call("Snapshot", vm, disk, opts()))


class B3Drop(Workload):
    """1 GiB catalog base full of data, a middle layer of writes, a top of some writes; drop the middle."""

    def __init__(self, cfg, half_clusters):
        super().__init__(cfg)
        self.half = half_clusters
        self.name = "B3b" if half_clusters else "B3a"
        V = int(GiB * self.s)
        self.V = V
        n_mid = int(256 * self.s)
        if half_clusters:
            self.title = (f"B3 (b) safe rebase, 32 KiB changes inside 64 KiB clusters: base {fmt_bytes(V)} of data "
                          f"(catalog image), middle {n_mid} MiB of clusters each holding a 32 KiB write at its start, "
                          f"top {int(32 * self.s)} MiB of writes; drop the middle")
        else:
            self.title = (f"B3 (a) safe rebase, drop a {n_mid} MiB middle layer of a {fmt_bytes(V)} chain: base "
                          f"{fmt_bytes(V)} of data (catalog image), middle {n_mid} MiB of 1 MiB writes, top "
                          f"{int(32 * self.s)} MiB of 512 KiB writes")

    def build(self, d):
        s, V = self.s, self.V
        tmp = tempfile.mkdtemp(dir=self.cfg.workdir)
        base = os.path.join(tmp, "base.qcow2")
        run([SYSTEM_QEMU_IMG, "create", "-q", "-f", "qcow2", base, str(V)])
        qemu_io(base, extents(0, 64 * MiB if V >= 64 * MiB else V, 64 * MiB, max(1, V // (64 * MiB)), 0x11, 16))
        d.import_image("base", base)
        shutil.rmtree(tmp)
        d.call("CreateVM", self.vm, dbus.UInt32(0), opts())
        d.call("CreateDisk", self.vm, self.disk, "base", dbus.UInt64(0), opts())
        n = int(256 * s)
        if self.half:
            cmds = []
            for i in range(n):
                for c in range(MiB // (64 * KiB)):
                    cmds.append(f"write -q -P {0x41 + (i * 16 + c) % 32} {i * 4 * MiB + c * 64 * KiB} {32 * KiB}")
        else:
            cmds = extents(0, MiB, 4 * MiB, n, 0x41)
        qemu_io(top_file(d, self.vm, self.disk), cmds)
        snapshot(d, self.vm, self.disk)
        qemu_io(top_file(d, self.vm, self.disk), extents(512 * KiB, 512 * KiB, 8 * MiB, int(64 * s), 0xA1))
        self.chain = d.chain(self.vm, self.disk)
        assert len(self.chain) == 3, self.chain

    def vdisk_args(self):
        return ("Rebase", self.vm, self.disk, self.chain[2][0], opts())

    def peers(self):
        top, base = (os.path.basename(self.chain[i][1]) for i in (0, 2))
        return [("rebase", ["rebase", "-b", base, "-F", "qcow2", top], top)]

    def expected_chain(self):
        return [self.chain[0][0], self.chain[2][0]]


class B3Medium(Workload):
    """B3m, the medium difference: a raw catalog base (first half random), a private layer of 1 MiB writes
    every 4 MiB, a second layer of 1 MiB writes every 8 MiB, 32 KiB writes and a 1 MiB zero write, an
    empty top; rebase the top onto the first private layer (the second leaves the chain). Warm page cache
    on both sides; the peer's time includes an fsync of its result (vdisk's job flushes its own)."""
    name = "B3m"
    warm = True
    peer_fsync = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.V = int(256 * MiB * self.s)
        self.title = (f"B3 (m) safe rebase, medium difference: {fmt_bytes(self.V)} raw base (first half random), "
                      f"layer 1: {int(64 * self.s)} x 1 MiB every 4 MiB; layer 2: {int(32 * self.s)} x 1 MiB every 8 MiB "
                      f"+ {int(64 * self.s)} x 32 KiB + a 1 MiB zero write; empty top; drop layer 2; warm page cache, "
                      f"the peer's time includes an fsync of its result")

    def build(self, d):
        s, V = self.s, self.V
        tmp = tempfile.mkdtemp(dir=self.cfg.workdir)
        base = os.path.join(tmp, "base.raw")
        with open(base, "wb") as f:
            f.write(random.Random(3).randbytes(V // 2))
            f.truncate(V)
        d.import_image("base", base, "raw")
        shutil.rmtree(tmp)
        d.call("CreateVM", self.vm, dbus.UInt32(0), opts())
        d.call("CreateDisk", self.vm, self.disk, "base", dbus.UInt64(0), opts())
        qemu_io(top_file(d, self.vm, self.disk), extents(0, MiB, 4 * MiB, int(64 * s), 0x41))
        snapshot(d, self.vm, self.disk)
        cmds = extents(2 * MiB, MiB, 8 * MiB, int(32 * s), 0x81)
        cmds += extents(MiB, 32 * KiB, 4 * MiB, int(64 * s), 0xC1)
        cmds.append(f"write -q -z {V // 4 + 3 * MiB} {MiB}")
        qemu_io(top_file(d, self.vm, self.disk), cmds)
        snapshot(d, self.vm, self.disk)
        self.chain = d.chain(self.vm, self.disk)
        assert len(self.chain) == 4, self.chain

    def vdisk_args(self):
        return ("Rebase", self.vm, self.disk, self.chain[2][0], opts())

    def peers(self):
        top, new = (os.path.basename(self.chain[i][1]) for i in (0, 2))
        return [("rebase", ["rebase", "-b", new, "-F", "qcow2", top], top)]

    def expected_chain(self):
        return [self.chain[0][0]] + [c[0] for c in self.chain[2:]]


class B3Deep(Workload):
    """An empty layer at depth 500: a private disk with data, then depth-1 empty snapshots; rebase the
    top onto the layer two below it."""
    name = "B3c"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.depth = 500 if cfg.scale >= 1 else max(8, int(500 * cfg.scale))
        self.V = int(GiB * self.s)
        self.title = (f"B3 (c) drop one empty layer at depth {self.depth}: a {fmt_bytes(self.V)} private disk with "
                      f"{int(256 * self.s)} MiB of data, then {self.depth - 1} empty snapshots; rebase the top onto the "
                      f"layer two below it")

    def build(self, d):
        d.call("CreateVM", self.vm, dbus.UInt32(0), opts())
        d.call("CreateDisk", self.vm, self.disk, "", dbus.UInt64(self.V), opts())
        qemu_io(top_file(d, self.vm, self.disk), extents(0, MiB, 4 * MiB, int(256 * self.s), 0x21))
        for _ in range(self.depth - 1):
            snapshot(d, self.vm, self.disk)
        self.chain = d.chain(self.vm, self.disk)
        assert len(self.chain) == self.depth, len(self.chain)

    def vdisk_args(self):
        return ("Rebase", self.vm, self.disk, self.chain[2][0], opts())

    def peers(self):
        top, base = (os.path.basename(self.chain[i][1]) for i in (0, 2))
        return [("rebase", ["rebase", "-b", base, "-F", "qcow2", top], top)]

    def expected_chain(self):
        return [self.chain[0][0]] + [c[0] for c in self.chain[2:]]


class B4Commit(Workload):
    """A private 1 GiB disk P with 512 MiB of data, a top layer L of 320 MiB of writes, half of them over
    P's data; commit L into P."""
    name = "B4"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.V = int(GiB * self.s)
        self.title = (f"B4 commit a {int(320 * self.s)} MiB layer (1 MiB writes every 2 MiB, half over data) into its "
                      f"private backing ({fmt_bytes(self.V)} disk, {int(512 * self.s)} MiB of data)")

    def build(self, d):
        s = self.s
        d.call("CreateVM", self.vm, dbus.UInt32(0), opts())
        d.call("CreateDisk", self.vm, self.disk, "", dbus.UInt64(self.V), opts())
        qemu_io(top_file(d, self.vm, self.disk), extents(0, min(64 * MiB, self.V // 2), 64 * MiB, max(1, int(8 * s)), 0x11, 16))
        snapshot(d, self.vm, self.disk)
        qemu_io(top_file(d, self.vm, self.disk), extents(int(256 * MiB * s), MiB, 2 * MiB, int(320 * s), 0x61))
        self.chain = d.chain(self.vm, self.disk)
        assert len(self.chain) == 2

    def vdisk_args(self):
        return ("Commit", self.vm, self.disk, self.chain[0][0], opts())

    def peers(self):
        top, base = (os.path.basename(self.chain[i][1]) for i in (0, 1))
        return [("commit -b", ["commit", "-q", "-b", base, top], base)]

    def expected_chain(self):
        return [self.chain[1][0]]

    def vdisk_output(self):
        return self.chain[1][1]


class B5Flatten(Workload):
    """Flatten: rebase onto nothing."""

    def vdisk_args(self):
        return ("Rebase", self.vm, self.disk, "", opts())

    def peers(self):
        top = os.path.basename(self.chain[0][1])
        return [("convert", ["convert", "-O", "qcow2", top, "converted.qcow2"], "converted.qcow2"),
                ("rebase -b \"\"", ["rebase", "-b", "", top], top)]

    def expected_chain(self):
        return [self.chain[0][0]]


class B5Big(B5Flatten):
    name = "B5a"

    def __init__(self, cfg):
        super().__init__(cfg)
        s = self.s
        self.V = int(2 * GiB * s)
        self.title = (f"B5 flatten {int(1280 * s)} MiB over 3 layers: {fmt_bytes(self.V)} private disk, base "
                      f"{int(1024 * s)} MiB of data, middle {int(160 * s)} MiB and top {int(96 * s)} MiB of 1 MiB writes")

    def build(self, d):
        s = self.s
        d.call("CreateVM", self.vm, dbus.UInt32(0), opts())
        d.call("CreateDisk", self.vm, self.disk, "", dbus.UInt64(self.V), opts())
        qemu_io(top_file(d, self.vm, self.disk), extents(0, int(64 * MiB * s), int(64 * MiB * s), 16, 0x11, 16))
        snapshot(d, self.vm, self.disk)
        qemu_io(top_file(d, self.vm, self.disk), extents(int(768 * MiB * s), MiB, 4 * MiB, int(160 * s), 0x41))
        snapshot(d, self.vm, self.disk)
        qemu_io(top_file(d, self.vm, self.disk), extents(2 * MiB, MiB, 8 * MiB, int(96 * s), 0xA1))
        self.chain = d.chain(self.vm, self.disk)
        assert len(self.chain) == 3


class B5Deep(B5Flatten):
    name = "B5b"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.V = GiB
        self.per = int(4 * MiB * self.s)
        self.title = (f"B5 flatten 50 layers x {fmt_bytes(self.per)} (256 KiB writes at random 256 KiB-aligned offsets "
                      f"of a 1 GiB private disk)")

    def build(self, d):
        rnd = random.Random(50)
        d.call("CreateVM", self.vm, dbus.UInt32(0), opts())
        d.call("CreateDisk", self.vm, self.disk, "", dbus.UInt64(self.V), opts())
        for k in range(50):
            if k:
                snapshot(d, self.vm, self.disk)
            n = max(1, self.per // (256 * KiB))
            cmds = [f"write -q -P {1 + (k * 7 + i) % 254} {rnd.randrange(self.V // (256 * KiB)) * 256 * KiB} {256 * KiB}"
                    for i in range(n)]
            qemu_io(top_file(d, self.vm, self.disk), cmds)
        self.chain = d.chain(self.vm, self.disk)
        assert len(self.chain) == 50


# ---------------------------------------------------------------- the runner

def copy_tree(src, dst):
    if os.path.exists(dst):
        shutil.rmtree(dst)
    run(["cp", "-a", "--sparse=always", src, dst])


def restore_store(tpl, store):
    """A fresh copy of the template store. The layer records name their file by inode as well, and a
    copy has new inodes: the copy's records get them (nothing else in a record changes)."""
    copy_tree(tpl, store)
    rdir = os.path.join(store, "records")
    for n in os.listdir(rdir):
        p = os.path.join(rdir, n)
        with open(p) as f:
            text = f.read()
        try:
            o = json.loads(text)
        except ValueError:
            continue
        if not isinstance(o, dict) or "inode" not in o or not o.get("file"):
            continue
        ino = os.stat(os.path.join(store, "images", o["file"])).st_ino
        if o["inode"] != ino:
            o["inode"] = ino
            with open(p, "w") as f:
                json.dump(o, f)


def warm_cache(directory):
    """Writes back what the copy left dirty, then reads every file of directory into the page cache."""
    os.sync()
    for n in os.listdir(directory):
        with open(os.path.join(directory, n), "rb") as f:
            while f.read(8 * MiB):
                pass


def verify_images(out, ref, what, problems):
    p = subprocess.run([CHECK_QEMU_IMG, "compare", "-q", "-f", "qcow2", "-F", "qcow2", out, ref],
                       capture_output=True, text=True)
    if p.returncode != 0:
        problems.append(f"{what}: qemu-img compare exited {p.returncode} {p.stdout.strip()} {p.stderr.strip()}")
    p = subprocess.run([CHECK_QEMU_IMG, "check", "-q", "-f", "qcow2", out], capture_output=True, text=True)
    if p.returncode != 0:
        problems.append(f"{what}: qemu-img check exited {p.returncode}: {(p.stdout + p.stderr).strip()[-500:]}")


def bench(cfg, d, w, peers):
    """Builds w, runs the warm-up and cfg.pairs rounds; returns rows of measurements."""
    wdir = os.path.join(cfg.workdir, w.name)
    os.makedirs(wdir)
    tpl, ref, pdir = (os.path.join(wdir, x) for x in ("store-template", "ref", "peer"))
    shutil.rmtree(d.store, ignore_errors=True)
    d.start()
    log(f"{w.name}: building the chain through the daemon ...")
    t = time.time()
    w.build(d)
    problems = list(map(str, d.call("Verify", w.vm)))
    if problems:
        raise RuntimeError(f"{w.name}: Verify reports problems before the operation: {problems}")
    d.stop()
    copy_tree(d.store, tpl)
    os.makedirs(ref)
    for f in w.files():
        run(["cp", "--sparse=always", os.path.join(d.store, f), ref])
    log(f"{w.name}: built in {time.time() - t:.0f} s; chain depth {len(w.chain)}, "
        f"store {int(run(['du', '-sb', tpl]).split()[0]) / MiB:.0f} MiB")
    top_name = os.path.basename(w.chain[0][1])
    ref_top = os.path.join(ref, top_name)

    order = []  # (side, peer version label, command label, argv, output)
    for i, (ver, binary) in enumerate(peers):
        for label, tail, out in w.peers():
            order.append(("peer", ver, label, [binary] + tail, out))
        if i == 0:
            if cfg.baseline:
                order.append(("vdisk", "vdisk-before", None, None, None))
            order.append(("vdisk", "vdisk", None, None, None))
    if len(peers) == 0:
        order.append(("vdisk", "vdisk", None, None, None))

    rounds = []
    problems = []
    for rnd in range(cfg.pairs + 1):
        res = {}
        for side, ver, label, argv, out in order:
            if side == "peer":
                copy_tree(ref, pdir)
                subprocess.run([argv[0], "--version"], capture_output=True)  # the tool itself in cache, as the daemon is
                if w.warm:
                    warm_cache(pdir)
                else:
                    drop_caches()
                subprocess.run([argv[0], "--version"], capture_output=True)
                m = spawn_measured(argv, pdir, os.path.join(wdir, "peer.log"))
                if w.peer_fsync:
                    t = time.perf_counter()
                    fd = os.open(os.path.join(pdir, out), os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
                    m["wall"] += time.perf_counter() - t
                t = time.perf_counter()
                os.sync()
                m["sync_after"] = time.perf_counter() - t
                m["wall_sync"] = m["wall"] + m["sync_after"]
                verify_images(os.path.join(pdir, out), ref_top, f"{w.name} round {rnd} qemu-img {ver} {label}", problems)
                res[(ver, label)] = m
            else:
                d.stop()
                restore_store(tpl, d.store)
                d.use_binary(cfg.baseline if ver == "vdisk-before" else cfg.vdiskd_path)
                d.start()
                if w.warm:
                    warm_cache(os.path.join(d.store, "images"))
                else:
                    drop_caches()
                pid = d.pid
                io0, cpu0 = read_io(pid), daemon_cpu_ns(pid)
                t0, t1 = d.job(*w.vdisk_args())
                io1, cpu1 = read_io(pid), daemon_cpu_ns(pid)
                m = {"wall": t1 - t0, "cpu": cpu1 - cpu0, **io_delta(io0, io1)}
                t = time.perf_counter()
                os.sync()
                m["sync_after"] = time.perf_counter() - t
                m["wall_sync"] = m["wall"] + m["sync_after"]
                chain = [c[0] for c in d.chain(w.vm, w.disk)]
                if chain != w.expected_chain():
                    problems.append(f"{w.name} round {rnd} {ver}: chain after the job is {chain[:5]}..., "
                                    f"want {w.expected_chain()[:5]}...")
                vp = list(map(str, d.call("Verify", w.vm)))
                if vp:
                    problems.append(f"{w.name} round {rnd} {ver}: Verify: {vp}")
                verify_images(os.path.join(d.store, w.vdisk_output()), ref_top, f"{w.name} round {rnd} {ver}", problems)
                res[ver] = m
        log(f"{w.name} {'warm-up' if rnd == 0 else f'round {rnd}'}: " +
            ", ".join(f"{k if isinstance(k, str) else ' '.join(k)} {v['wall']:.3f} s" for k, v in res.items()))
        if rnd > 0:
            rounds.append(res)
    d.stop()
    shutil.rmtree(wdir)
    return {"workload": w, "rounds": rounds, "problems": problems}


METRICS = [("wall", "wall"), ("read_bytes", "read_bytes"), ("write_bytes", "write_bytes"),
           ("rchar", "rchar"), ("wchar", "wchar"), ("cpu", "CPU user+sys"), ("wall_sync", "wall + sync after")]


def ratio(a, b):
    if b == 0:
        return None if a else 1.0
    return a / b


def medians(result, vkey="vdisk"):
    """{(ver, label): {metric: median ratio}}, and medians of the absolute figures (of vkey: "vdisk", or
    "vdisk-before" for the --baseline-vdiskd binary)."""
    rounds = result["rounds"]
    keys = [k for k in rounds[0] if not isinstance(k, str)]
    out = {}
    for k in keys:
        row = {}
        for m, _ in METRICS:
            rs = [ratio(r[vkey][m], r[k][m]) for r in rounds]
            rs = [x for x in rs if x is not None]
            row[m] = statistics.median(rs) if rs else None
        row["peer_abs"] = {m: statistics.median(r[k][m] for r in rounds) for m in ("wall", "read_bytes", "write_bytes",
                                                                                    "rchar", "wchar", "cpu", "sync_after")}
        out[k] = row
    vd = {m: statistics.median(r[vkey][m] for r in rounds) for m in ("wall", "read_bytes", "write_bytes", "rchar",
                                                                        "wchar", "cpu", "sync_after")}
    return out, vd


# Targets of docs/benchmarks.md: (workload, peer command label or None for all, metric, kind, value)
TARGETS = [
    ("B3a", None, "write_bytes", "eq", 1.0), ("B3a", None, "read_bytes", "le", 0.6), ("B3a", None, "wall", "le", 0.8),
    ("B3b", None, "write_bytes", "eq", 1.0), ("B3b", None, "read_bytes", "le", 0.6), ("B3b", None, "wall", "le", 0.8),
    ("B3m", None, "wall", "le", 0.8),
    ("B3c", None, "wall", "le", 0.05),
    ("B4", None, "wall", "le", 0.7),
    ("B5a", "convert", "wall", "le", 1.0),
    ("B5b", None, "cpu", "le", 0.1),
]
EQ_TOLERANCE = 0.05


def verdict(kind, value, r):
    if r is None:
        return "n/a"
    if kind == "le":
        return "PASS" if r <= value else "MISS"
    if abs(r - value) <= EQ_TOLERANCE:
        return "PASS"
    return "MISS (fewer)" if r < value else "MISS (more)"


def fr(x):
    return "–" if x is None else f"{x:.3f}"


def render(cfg, results, peers, machine):
    L = []
    L.append("# Benchmark results: B3 (safe rebase), B4 (commit), B5 (flatten)")
    L.append("")
    L.append(f"Generated {datetime.date.today().isoformat()} by `tests/bench/run-b345.py` "
             f"({'--quick: 1/8 sizes, ' if cfg.quick else ''}{cfg.pairs} rounds after one untimed warm-up round).")
    L.append("")
    L.append("Reproduce (as root, from the source tree, after `ninja -C build`):")
    L.append("")
    L.append("```sh")
    L.append("/usr/bin/python3 tests/bench/run-b345.py build/daemon/vdiskd --qemu10-dir build/qemu-img-10"
             + (" --quick" if cfg.quick else "") + (f" --pairs {cfg.pairs}" if cfg.pairs_given else "")
             + (" --baseline-vdiskd OLD-VDISKD" if cfg.baseline else ""))
    L.append("```")
    L.append("")
    L.append("(`tests/bench/fetch-qemu-img.sh DIR` fetches qemu-img 10.0.2 from bookworm-backports into DIR by "
             "the recipe of [docs/benchmarks.md](../../docs/benchmarks.md); the runner calls it.)")
    L.append("")
    L.append("## Machine and peers")
    L.append("")
    for k, v in machine.items():
        L.append(f"- {k}: {v}")
    for ver, binary in peers:
        L.append(f"- peer: qemu-img {ver} (`{binary}`)")
    if cfg.qemu10_error:
        L.append(f"- qemu-img 10.0.2 **could not be fetched**: {cfg.qemu10_error}")
    L.append("")
    L.append("## Method")
    L.append("")
    L.append("""- Each chain is built once through the daemon (ImportImage of a qcow2 base for B3 (a)/(b), else a
  blank private disk from CreateDisk; Snapshot for every further layer); guest data is written with
  `qemu-io` directly into the store's current top. The store is saved as a template; the peer works on
  copies of the same image files (backing files are named by sibling name, so they work unchanged).
- Every run starts from a fresh copy: vdiskd is stopped, the store directory restored (`cp -a`; the
  layer records also name their file's inode, so the copy's records get the copies' inode numbers),
  vdiskd restarted; then `sync` and `echo 3 > /proc/sys/vm/drop_caches` for either side. The peer's
  binary and libraries are read once more after the drop (`qemu-img --version`), as the daemon's code
  is resident. vdisk is measured from the D-Bus call (`Rebase`/`Commit`) to the job's `Finished`
  signal (the daemon restart is not measured); the peer from spawn to exit.
- Round order: the qemu-img 7.2 command(s), the baseline vdisk (with `--baseline-vdiskd`), vdisk, the
  qemu-img 10.0.2 command(s); one warm-up round, then the measured rounds. Ratios are vdisk / peer per
  round; the tables give the median ratio.
- B3m differs: instead of the cache drop, `sync` and then every image file of the run is read once
  (page cache warm on both sides), and the peer's time includes an `fsync` of its result file right
  after it exits (vdisk's job flushes its own before `Finished`).
- Bytes: `/proc/PID/io` — for qemu-img read at exit before reaping (`waitid(WNOWAIT)`), for vdiskd the
  delta around the job. **Targets use `read_bytes`/`write_bytes`** (storage I/O: `read_bytes` counts
  reads that reached the block layer after the cache drop; `write_bytes` counts pages when they are
  dirtied, accounted to the task that dirtied them, so it is complete whether or not writeback has
  happened yet). `rchar`/`wchar` (bytes passed through read/write-type system calls; `copy_file_range`
  is counted in both) are shown for reference; they include header/metadata reads served from cache.
- CPU: `perf stat -e instructions` is not supported in this VM (no PMU), and callgrind cannot see
  kernel copies (`copy_file_range`), so the CPU figure is **user+system CPU time**: for qemu-img from
  `wait4`'s rusage (all threads), for vdiskd the sum of `/proc/PID/task/*/schedstat` run times (ns)
  around the job.
- Checks on every run: `qemu-img compare` (Debian's 7.2) of the resulting top against the untouched
  pre-operation chain, `qemu-img check` of the written image, for vdisk also `GetChain` (the expected
  new chain) and `Verify` (no problems).
- `sync after`: time of a `sync` right after the operation (not part of the measured time); shows
  whether either side left dirty data behind. The `wall + sync after` ratio is given for information;
  the targets use `wall`.
- vdisk's job includes what the daemon does before `Finished`: planning, the journal, the copy, flushes,
  the VM record (commit point) and deleting the private layers that left the chain.
- PASS/MISS compares the median ratio with the target; "bytes written = peer's" is PASS within ±5%.""")
    if not drop_caches.ok:
        L.append(f"- **The page cache could not be dropped** ({drop_caches.why}): both sides ran with a warm cache.")
    L.append("")

    for res in results:
        w = res["workload"]
        L.append(f"## {w.name}: {w.describe()}")
        L.append("")
        if not res["rounds"]:
            L.append(f"**Not run**: {res.get('error', '')}")
            L.append("")
            continue
        L.append(f"Chain depth {len(w.chain)}; vdisk: `{w.vdisk_args()[0]}(vm, disk, "
                 f"{'<layer ' + w.vdisk_args()[3][:12] + '…>' if w.vdisk_args()[3] else chr(34) * 2}, {{}})`; "
                 f"peers: " + "; ".join(f"`qemu-img {' '.join(t if t else chr(34) * 2 for t in tail)}`"
                                         for _, tail, _ in w.peers()))
        L.append("")
        meds, vd = medians(res)
        before = "vdisk-before" in res["rounds"][0]
        bmeds, bvd = medians(res, "vdisk-before") if before else ({}, None)
        L.append("Median ratios vdisk / peer:")
        L.append("")
        L.append("| peer | command | " + " | ".join(h for _, h in METRICS) + " |")
        L.append("|---|---|" + "---|" * len(METRICS))
        for (ver, label), row in meds.items():
            L.append(f"| qemu-img {ver} | {label} | " + " | ".join(fr(row[m]) for m, _ in METRICS) + " |")
        L.append("")
        if before:
            L.append("The same for the baseline build (`--baseline-vdiskd`, \"before\"), measured in the same rounds:")
            L.append("")
            L.append("| peer | command | " + " | ".join(h for _, h in METRICS) + " |")
            L.append("|---|---|" + "---|" * len(METRICS))
            for (ver, label), row in bmeds.items():
                L.append(f"| qemu-img {ver} | {label} | " + " | ".join(fr(row[m]) for m, _ in METRICS) + " |")
            L.append("")
        L.append("Median absolute figures:")
        L.append("")
        L.append("| side | wall s | read_bytes | write_bytes | rchar | wchar | CPU s | sync after s |")
        L.append("|---|---|---|---|---|---|---|---|")

        def absrow(name, a):
            return (f"| {name} | {a['wall']:.3f} | {fmt_bytes(a['read_bytes'])} | {fmt_bytes(a['write_bytes'])} | "
                    f"{fmt_bytes(a['rchar'])} | {fmt_bytes(a['wchar'])} | {a['cpu'] / 1e9:.3f} | {a['sync_after']:.3f} |")
        for (ver, label), row in meds.items():
            L.append(absrow(f"qemu-img {ver} {label}", row["peer_abs"]))
        if before:
            L.append(absrow("vdisk before (baseline)", bvd))
        L.append(absrow("vdisk", vd))
        L.append("")
        tg = [t for t in TARGETS if t[0] == w.name]
        if tg:
            L.append("| target | peer | median ratio | verdict |" + (" before: ratio | verdict |" if before else ""))
            L.append("|---|---|---|---|" + ("---|---|" if before else ""))
            for _, plabel, metric, kind, value in tg:
                for (ver, label), row in meds.items():
                    if plabel and label != plabel:
                        continue
                    r = row[metric]
                    line = (f"| {metric} {'=' if kind == 'eq' else '≤'} {value}× | qemu-img {ver} {label} | {fr(r)} | "
                            f"{verdict(kind, value, r)} |")
                    if before:
                        br = bmeds[(ver, label)][metric]
                        line += f" {fr(br)} | {verdict(kind, value, br)} |"
                    L.append(line)
            L.append("")
        if res["problems"]:
            L.append("**Check failures:**")
            L.append("")
            for p in res["problems"]:
                L.append(f"- {p}")
        else:
            L.append(f"Checks: all {len(res['rounds']) + 1} rounds × {1 + int(before) + len(meds)} results compared equal to the "
                     f"pre-operation chain and passed `qemu-img check`; vdisk's chains and Verify as expected.")
        L.append("")
    return "\n".join(L)


def machine_info(store):
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    fs = run(["df", "--output=fstype", store]).splitlines()[-1].strip()
    dev = run(["df", "--output=source", store]).splitlines()[-1].strip()
    osr = ""
    try:
        osr = [ln.split("=", 1)[1].strip().strip('"') for ln in open("/etc/os-release") if ln.startswith("PRETTY_NAME=")][0]
    except (OSError, IndexError):
        pass
    return {"CPUs (nproc)": os.cpu_count(), "RAM": fmt_bytes(mem), "kernel": platform.release(), "OS": osr,
            "store filesystem": f"{fs} on {dev} (work directory {store})"}


def vdiskd_label(vdiskd):
    """The commit the binary was built from, when its build directory sits in a git work tree."""
    src = os.path.dirname(os.path.dirname(os.path.dirname(vdiskd)))
    p = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    if p.returncode != 0:
        return vdiskd
    dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return f"{vdiskd}, built from {p.stdout.strip()}" + (" plus uncommitted changes" if dirty else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vdiskd")
    ap.add_argument("--quick", action="store_true", help="1/8 sizes, 3 rounds (smoke run)")
    ap.add_argument("--pairs", type=int, help="measured rounds (default 5, --quick 3)")
    ap.add_argument("--only", help="comma-separated subset of B3a,B3b,B3m,B3c,B4,B5a,B5b")
    ap.add_argument("--qemu10-dir", default=None, help="cache directory for qemu-img 10.0.2 (default: BUILD/qemu-img-10 "
                                                        "next to the vdiskd's build directory)")
    ap.add_argument("--no-qemu10", action="store_true", help="run against Debian's qemu-img 7.2 only")
    ap.add_argument("--workdir", default="/var/tmp", help="where the stores and copies live (needs ~8 GiB)")
    ap.add_argument("--json", help="also write every round's raw figures here")
    ap.add_argument("--vdiskd-label", help="what to call the vdiskd build in the report")
    ap.add_argument("--baseline-vdiskd", help="a second vdiskd (\"before\"), run in the same rounds right before VDISKD")
    ap.add_argument("--baseline-label", help="what to call the baseline build in the report")
    ap.add_argument("--results", default=None, help="write the Markdown report here (default: print it)")
    cfg = ap.parse_args()
    cfg.pairs_given = cfg.pairs is not None
    if cfg.pairs is None:
        cfg.pairs = 3 if cfg.quick else 5
    cfg.scale = 1 / 8 if cfg.quick else 1
    cfg.qemu10_error = None
    if os.geteuid() != 0:
        log("run-b345.py must run as root (qemu-io into the store, page-cache drops)")
        sys.exit(77)
    for tool in ("qemu-io", SYSTEM_QEMU_IMG, "dbus-daemon"):
        if not shutil.which(tool):
            log(f"SKIP: {tool} not installed")
            sys.exit(77)

    vdiskd = os.path.abspath(cfg.vdiskd)
    peers = [(run([SYSTEM_QEMU_IMG, "--version"]).split()[2], SYSTEM_QEMU_IMG)]
    if not cfg.no_qemu10:
        qdir = cfg.qemu10_dir or os.path.join(os.path.dirname(os.path.dirname(vdiskd)), "qemu-img-10")
        p = subprocess.run([os.path.join(HERE, "fetch-qemu-img.sh"), qdir], capture_output=True, text=True)
        if p.returncode == 0 and p.stdout.strip():
            q10 = p.stdout.strip().splitlines()[-1]
            peers.append((run([q10, "--version"]).split()[2], q10))
        else:
            cfg.qemu10_error = (p.stderr.strip().splitlines() or ["no output"])[-1]
            log(f"warning: qemu-img 10.0.2 could not be fetched: {p.stderr[-1500:]}")
    log("peers: " + ", ".join(f"{v} ({b})" for v, b in peers))

    all_w = {"B3a": lambda: B3Drop(cfg, False), "B3b": lambda: B3Drop(cfg, True), "B3m": lambda: B3Medium(cfg),
             "B3c": lambda: B3Deep(cfg),
             "B4": lambda: B4Commit(cfg), "B5a": lambda: B5Big(cfg), "B5b": lambda: B5Deep(cfg)}
    names = cfg.only.split(",") if cfg.only else list(all_w)
    cfg.workdir = tempfile.mkdtemp(prefix="vdisk-b345-", dir=cfg.workdir)
    os.chmod(cfg.workdir, 0o755)
    machine = machine_info(cfg.workdir)
    machine["vdiskd"] = cfg.vdiskd_label or vdiskd_label(vdiskd)
    # A private copy: a rebuild of the tree during the run must not change (or remove) the binary measured.
    cfg.vdiskd_path = os.path.join(cfg.workdir, "vdiskd")
    shutil.copy2(vdiskd, cfg.vdiskd_path)
    if cfg.baseline_vdiskd:
        machine["baseline vdiskd (\"before\")"] = cfg.baseline_label or vdiskd_label(os.path.abspath(cfg.baseline_vdiskd))
        cfg.baseline = os.path.join(cfg.workdir, "vdiskd-before")
        shutil.copy2(cfg.baseline_vdiskd, cfg.baseline)
    else:
        cfg.baseline = None
    d = Daemon(os.path.join(cfg.workdir, "vdiskd-run"), cfg.workdir)
    d.use_binary(cfg.vdiskd_path)
    load0 = open("/proc/loadavg").read().split()[:3]
    results = []
    t0 = time.time()
    try:
        for n in names:
            w = all_w[n]()
            log(f"== {w.title}")
            try:
                results.append(bench(cfg, d, w, peers))
            except Exception as e:  # report and go on with the next benchmark
                log(f"{n} failed: {e}")
                w.chain = getattr(w, "chain", [])
                results.append({"workload": w, "rounds": [], "problems": [str(e)], "error": str(e)})
                try:
                    d.stop()
                except Exception:
                    pass
    finally:
        d.close()
        shutil.rmtree(cfg.workdir, ignore_errors=True)
    log(f"total {time.time() - t0:.0f} s")
    machine["load average (1, 5, 15 min) at start / end"] = (f"{' '.join(load0)} / "
                                                             f"{' '.join(open('/proc/loadavg').read().split()[:3])}"
                                                             f" (other processes share the machine; ratios are "
                                                             f"interleaved to cancel it)")
    machine["run time"] = f"{time.time() - t0:.0f} s"
    text = render(cfg, results, peers, machine)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({"machine": machine, "peers": peers, "results": [
                {"workload": r["workload"].name, "title": r["workload"].title, "problems": r["problems"],
                 "rounds": [{k if isinstance(k, str) else " ".join(k): v for k, v in rd.items()} for rd in r["rounds"]]}
                for r in results]}, f, indent=1)
    if cfg.results:
        with open(cfg.results, "w") as f:
            f.write(text + "\n")
    print(text)
    bad = [r for r in results if r["problems"]]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
