#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Live migration of a real QEMU between two cluster hosts (clustertest.py: three simulated hosts on one
store; tests/guest/guest.py: a Linux guest under TCG), in libvirt's lease order (docs/design.md, "Live
migration"): host 1 opens disk vda (two layers) read-write (fd mode) and runs the guest on its fds; host 2 opens the
disk with OpenDisk's "incoming" and starts a second QEMU on its own fds with -S, -incoming defer and the
capability late-block-activate (as libvirt does), listening on a unix socket; the test migrates over QMP, waits for the source to complete, releases host 1's lease, calls
TakeOver(the version host 1's lease had) on host 2 and only then `cont`s the destination.

Run 1, the hand-over:
- host 2's incoming OpenDisk works while the source QEMU runs on host 1 and holds QEMU's image locks
  on the top layer (vdiskd must not refuse it as "locked by another process");
- while both QEMUs are inactive between completion and `cont`, nobody holds QEMU's WRITE lock byte of the
  top layer; after `cont` the destination QEMU holds it (QEMU's locks handed over on vdisk's fds);
- after TakeOver, host 3 and host 1 get InUse naming host 2;
- the guest goes on on host 2: the pattern it wrote on host 1 reads back, its counter-block writer
  (writing and fdatasyncing every 50 ms through the migration) lost no acknowledged write and goes on
  writing; a pattern written after the migration reads back; after the power-off, the chain read on the
  host (qemu-img compare) is exactly the pattern, the counter blocks and the second pattern.

Run 2, a third host in between: after the source completed and released, host 3 takes the disk and
writes 1 MiB, then releases (before, while the stopped source QEMU still lives, host 3's read-write
OpenDisk is refused for QEMU's image locks: the source keeps a shared one); the destination's TakeOver answers InUse ("changed hands"); the test kills
the destination QEMU without continuing it: the chain is exactly as host 3 left it.

Usage: test-cluster-migrate-qemu.py VDISKD yes|no (sanlock built). Exits 77 without sanlock or without
what the guest needs (qemu-system-x86_64, a kernel with modules, busybox-static, gcc)."""

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import dbus

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "guest"))

import clustertest  # noqa: E402
import guest  # noqa: E402
from clustertest import SKIP, check, check_eq, finish, opts  # noqa: E402

IN_USE = "org.vdisk1.Error.InUse"
MiB = 1 << 20
SIZE = 8 * MiB
SEED_A, SEED_B = 0xA11CE, 0xB0B
A_OFF, B_OFF, THIRD_OFF = 0, 3 * MiB, 5 * MiB
# The counter-block writer: 64 blocks from 1 MiB on (it wraps; the last write of each block stays).
W_BLOCK, W_BLOCKS, W_RUN = 256, 64, 5
W_ARGS = f"--start-block {W_BLOCK} --blocks {W_BLOCKS} --run-id {W_RUN}"
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)


class Qmp:
    """A QMP client on a unix socket: commands, with events set aside."""

    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        end = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(120)
        self.f = self.sock.makefile("rw")
        self.events = []
        greeting = json.loads(self.f.readline())
        assert "QMP" in greeting, greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise guest.GuestError(f"QMP closed during {name}")
            r = json.loads(line)
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise guest.GuestError(f"QMP {name}: {r['error']}")
            return r["return"]

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


class VM(guest.Guest):
    """A guest whose QEMU gets the lease's fds; an incoming one (attach=True) does not wait for the guest's
    shell, which it gets with the migrated RAM: its console starts empty and commands go on from the
    source's."""

    def __init__(self, argv, fds, log, cwd):
        super().__init__(argv, log=log, cwd=cwd)
        self.fds = fds

    def start_fds(self, incoming=False, timeout=60):
        """Guest.start() with the fds passed to QEMU."""
        self._log = open(self.log_path, "a")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=self.cwd, pass_fds=self.fds)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not incoming:
            self._wait_for(lambda: guest.READY in self._buf, timeout, "the guest's shell")
            self._pos = self._buf.index(guest.READY) + len(guest.READY)
            self.boot_seconds = time.monotonic() - t0
        return self


def lease_obj(host, path):
    return host.env.bus.get_object("org.vdisk1", path, introspect=False)


def lease_version(host, path):
    """Read from the lease area: like any sanlock I/O it can time out on a loaded machine (IoTimeout=1),
    and is then read again."""
    for attempt in range(5):
        try:
            return int(lease_obj(host, path).Get("org.vdisk1.Lease", "LeaseVersion",
                                                 dbus_interface="org.freedesktop.DBus.Properties"))
        except dbus.exceptions.DBusException as e:
            if "Cannot read the version" not in e.get_dbus_message() or attempt == 4:
                raise
            time.sleep(0.5)


def release(host, path):
    lease_obj(host, path).Release(dbus_interface="org.vdisk1.Lease")


def take_over(host, path, v):
    """Tried again only for sanlock's transient I/O failure under load, as Host.try_call does."""
    for attempt in range(5):
        try:
            lease_obj(host, path).TakeOver(dbus.UInt64(v), dbus_interface="org.vdisk1.Lease")
            return None, None
        except dbus.exceptions.DBusException as e:
            if host.TRANSIENT not in e.get_dbus_message() or attempt == 4:
                return e.get_dbus_name(), e.get_dbus_message()
            time.sleep(0.5)


def open_disk(host, **kw):
    """OpenDisk(vm, vda): (error name, message) or (None, (lease path, blockdev nodes, fds as ints))."""
    err, res = host.try_call("OpenDisk", "vm", "vda", opts(**kw))
    if err is not None:
        return err, res
    return None, (str(res[0]), json.loads(str(res[1])), [fd.take() for fd in res[2]])


def qemu_cmd(tmp, name, blockdev, fds, extra=()):
    args = []
    for i, fd in enumerate(fds):
        args += ["-add-fd", f"fd={fd},set={i + 1}"]
    for node in blockdev:
        args += ["-blockdev", json.dumps(node)]
    return guest.qemu_argv([*args, "-device", "virtio-blk-pci,drive=vda", *extra], memory=128,
                           qmp=os.path.join(tmp, f"{name}.qmp"))


def write_lock_held(path):
    """Whether any open file description holds QEMU's WRITE lock byte (101) of `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        lk = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 101, 1, 0)
        return struct.unpack("hhqqi4x", fcntl.fcntl(fd, F_OFD_GETLK, lk))[0] != fcntl.F_UNLCK
    finally:
        os.close(fd)


def wait_completed(src):
    end = time.monotonic() + 120
    while time.monotonic() < end:
        st = src.cmd("query-migrate").get("status")
        if st in ("completed", "failed", "cancelled"):
            return st
        time.sleep(0.1)
    return "timeout"


def wait_incoming_done(dst):
    """Until the destination left "inmigrate" (with -S it stays paused): its run state."""
    end = time.monotonic() + 120
    while time.monotonic() < end:
        st = dst.cmd("query-status")["status"]
        if st != "inmigrate":
            return st
        time.sleep(0.1)
    return "timeout"


def migrate(c, run, third):
    """One migration of a fresh boot from host 1 to host 2; `third`: host 3 takes the disk in between."""
    h1, h2, h3 = c.hosts
    tmp = c.tmp
    chain = h1.call("GetChain", "vm", "vda")
    check_eq(len(chain), 2, f"run {run}: vda has two layers")
    top = os.path.join(c.store, str(chain[0][1]))
    src = dst = qs = qd = None
    held = []   # (host, lease path) to release when a check failed early
    try:
        err, res = open_disk(h1)
        check_eq(err, None, f"run {run}: host 1 opens vda read-write{f' ({res})' if err else ''}")
        if err:
            return
        src_lease, nodes, fds = res
        held.append((h1, src_lease))
        v = lease_version(h1, src_lease)
        check(v > 0, f"run {run}: the source's lease has a version ({v})")
        src = VM(qemu_cmd(tmp, f"src{run}", nodes, fds), fds, os.path.join(tmp, f"src{run}.log"), tmp)
        src.start_fds()
        for fd in fds:
            os.close(fd)
        print(f"run {run}: the guest booted on host 1 in {src.boot_seconds:.2f} s")
        src.wait_device()
        r = src.run_json(f"guest-io fill /dev/vda {A_OFF} 1M {SEED_A + run}", timeout=60)
        check_eq(r.get("ok"), True, f"run {run}: the guest writes pattern A on host 1")
        wpid = None
        if not third:
            wpid = src.spawn(f"guest-io writer /dev/vda {W_ARGS} --interval-ms 50 --log", "/tmp/w.log")
            guest.wait_for(lambda: src.last_seq("/tmp/w.log") >= 5, 30, step=0.2)
        check(write_lock_held(top), f"run {run}: the source QEMU holds QEMU's WRITE lock byte of the top layer")

        # The destination: an incoming lease on host 2 while host 1's QEMU runs (and holds its locks).
        err, res = open_disk(h2, incoming=True)
        check_eq(err, None, f"run {run}: host 2 opens vda for an incoming VM while the source runs{f' ({res})' if err else ''}")
        if err:
            return
        dst_lease, nodes2, fds2 = res
        held.append((h2, dst_lease))
        sock = os.path.join(tmp, f"mig{run}.sock")
        dst = VM(qemu_cmd(tmp, f"dst{run}", nodes2, fds2, ["-S", "-incoming", "defer"]), fds2,
                 os.path.join(tmp, f"dst{run}.log"), tmp)
        dst.start_fds(incoming=True)
        for fd in fds2:
            os.close(fd)
        dst._next_id = src._next_id + 100
        qs = Qmp(os.path.join(tmp, f"src{run}.qmp"))
        qd = Qmp(os.path.join(tmp, f"dst{run}.qmp"))
        # As libvirt does: the destination activates its images (takes QEMU's locks, reads and may write
        # the qcow2 metadata) only at `cont`, not as soon as the migration completes.
        qd.cmd("migrate-set-capabilities", capabilities=[{"capability": "late-block-activate", "state": True}])
        qd.cmd("migrate-incoming", uri=f"unix:{sock}")
        check(guest.wait_for(lambda: os.path.exists(sock), 30), f"run {run}: the destination listens")

        t0 = time.monotonic()
        qs.cmd("migrate", uri=f"unix:{sock}")
        check_eq(wait_completed(qs), "completed", f"run {run}: the migration completes on the source")
        check_eq(qs.cmd("query-status")["status"], "postmigrate", f"run {run}: the source stopped after it")
        check_eq(wait_incoming_done(qd), "paused", f"run {run}: the destination has the guest, paused (-S)")
        print(f"run {run}: migration took {time.monotonic() - t0:.2f} s")
        check(not write_lock_held(top), f"run {run}: between completion and cont nobody holds the WRITE lock byte")
        # libvirt's order: the source lets go, the destination takes over with the source's version.
        release(h1, src_lease)
        held.remove((h1, src_lease))
        if third:
            # The source's QEMU, inactive, keeps a shared lock on its CONSISTENT_READ byte (100): as long
            # as it lives, another host's read-write OpenDisk on this store is refused for the locks.
            err, msg = open_disk(h3)
            check_eq(err, IN_USE, f"run {run}: host 3 cannot open vda while the stopped source QEMU lives")
            check("locked by another process" in str(msg), f"run {run}: for QEMU's image locks: {msg}")
            qs.cmd("quit")
            check_eq(src.proc.wait(timeout=60), 0, f"run {run}: the source QEMU quits cleanly")
            err, res = open_disk(h3)
            check_eq(err, None, f"run {run}: host 3 takes vda between the source's release and TakeOver{f' ({res})' if err else ''}")
            if err:
                return
            third_lease, _, fds3 = res
            spec = None   # the chain on host 3's fds (top first), as qemu-io's json: file name
            for fd in reversed(fds3):
                spec = {"driver": "qcow2", "file": {"driver": "file", "filename": f"/proc/self/fd/{fd}"}, "backing": spec}
            p = subprocess.run(["qemu-io", "-c", f"write -P 0x3c {THIRD_OFF} 1M", "json:" + json.dumps(spec)],
                               pass_fds=fds3, capture_output=True, text=True)
            check_eq(p.returncode, 0, f"run {run}: host 3 writes 1 MiB on its fd ({p.stderr.strip()})")
            for fd in fds3:
                os.close(fd)
            release(h3, third_lease)
            seen = h3.guest_hash("vm")
            err, msg = take_over(h2, dst_lease, v)
            check_eq(err, IN_USE, f"run {run}: TakeOver after host 3 took the disk in between: InUse")
            check("changed hands" in str(msg), f"run {run}: the disk changed hands: {msg}")
            # The destination must not run: killed, never continued.
            dst.kill()
            src.kill()
            release(h2, dst_lease)
            held.remove((h2, dst_lease))
            check_eq(h3.guest_hash("vm"), seen, f"run {run}: the chain is as host 3 left it (the destination wrote nothing)")
            p = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", f"read -P 0x3c {THIRD_OFF} 1M", top],
                               capture_output=True, text=True)
            check(p.returncode == 0 and "Pattern verification failed" not in p.stdout,
                  f"run {run}: host 3's write is there ({p.stdout.strip()[-200:]})")
            return

        err, msg = take_over(h2, dst_lease, v)
        check_eq(err, None, f"run {run}: TakeOver with the source's version succeeds {msg or ''}")
        for h in (h3, h1):
            err, msg = open_disk(h)
            check_eq(err, IN_USE, f"run {run}: host {h.host_id} cannot open vda read-write after the hand-over")
            check("cluster host 2" in str(msg), f"run {run}: naming host 2: {msg}")
        qd.cmd("cont")
        check_eq(qd.cmd("query-status")["status"], "running", f"run {run}: the destination runs after cont")
        check(write_lock_held(top), f"run {run}: the destination QEMU took QEMU's WRITE lock byte at cont")
        qs.cmd("quit")
        check_eq(src.proc.wait(timeout=60), 0, f"run {run}: the source QEMU quits cleanly")

        # The guest goes on on host 2.
        r = dst.run_json(f"guest-io check /dev/vda {A_OFF} 1M {SEED_A + run}", timeout=60, want_status=None)
        check_eq(r.get("ok"), True, f"run {run}: pattern A written on host 1 reads back on host 2 ({r})")
        before = dst.last_seq("/tmp/w.log")
        check(guest.wait_for(lambda: dst.last_seq("/tmp/w.log") >= before + 5, 30, step=0.2),
              f"run {run}: the writer goes on writing on host 2 (from seq {before})")
        dst.stop(wpid)
        log = dst.writer_log("/tmp/w.log")
        acked = [x["seq"] for x in log if "seq" in x]
        check(len(acked) >= 10 and acked == list(range(1, len(acked) + 1)),
              f"run {run}: the writer logged every acknowledged write in order, across the migration ({len(acked)})")
        last = len(acked)
        r = dst.run_json(f"guest-io writer-verify /dev/vda {last} {W_ARGS}", want_status=None)
        check_eq((r.get("ok"), r.get("lost_count")), (True, 0), f"run {run}: no acknowledged write lost ({r})")
        r = dst.run_json(f"guest-io fill /dev/vda {B_OFF} 1M {SEED_B}", timeout=60)
        check_eq(r.get("ok"), True, f"run {run}: the guest writes pattern B on host 2")
        check_eq(dst.poweroff(timeout=60), 0, f"run {run}: the guest powers off on host 2")
        dst = None

        expected = os.path.join(tmp, "expected.raw")
        with open(expected, "wb") as f:
            f.truncate(SIZE)
            f.seek(A_OFF)
            f.write(guest.pattern(A_OFF, MiB, SEED_A + run))
            for seq in range(max(1, last - W_BLOCKS + 1), last + 1):
                block = W_BLOCK + (seq - 1) % W_BLOCKS
                f.seek(block * 4096)
                f.write(guest.counter_block(block, seq, W_RUN))
            f.seek(B_OFF)
            f.write(guest.pattern(B_OFF, MiB, SEED_B))
        p = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", top, expected], capture_output=True, text=True)
        check_eq((p.returncode, p.stdout.strip()), (0, "Images are identical."),
                 f"run {run}: the chain read on the host has the writes of both hosts, and nothing else")
        release(h2, dst_lease)
        held.remove((h2, dst_lease))
    finally:
        for q in (qs, qd):
            if q:
                q.close()
        for g in (src, dst):
            if g:
                g.kill()
        for h, path in held:
            try:
                release(h, path)
            except dbus.exceptions.DBusException:
                pass


def main():
    vdiskd = clustertest.usage_or_skip()
    reason = guest.unavailable()
    if reason:
        print(f"SKIP: {reason}")
        sys.exit(SKIP)
    guest.qemu_argv()   # builds the guest (or takes it from the cache) before the hosts start
    c = clustertest.Cluster(vdiskd, 3)
    try:
        h1 = c.hosts[0]
        h1.call("CreateVM", "vm", dbus.UInt32(0), opts())
        h1.call("CreateDisk", "vm", "vda", "", dbus.UInt64(SIZE), opts())
        h1.call("Snapshot", "vm", "vda", opts())   # two layers: the QEMUs open a backing file too
        migrate(c, 1, third=False)
        migrate(c, 2, third=True)
        c.check_clean(["vm"])
    except guest.GuestError as e:
        check(False, f"guest: {e}")
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
