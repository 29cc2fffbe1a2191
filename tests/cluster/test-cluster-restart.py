#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Cluster mode across a restart of vdiskd (two simulated hosts, clustertest.py): the disk leases of
long-lived holds are persistent (SANLK_RES_PERSISTENT) and a restarted vdiskd adopts them again.

- (a) host 1 exports a disk read-write; its vdiskd is SIGKILLed while the helper goes on serving: host
  2's OpenDisk and Snapshot of that disk answer InUse naming host 1 while host 1's vdiskd is down, and
  still after it restarted (it adopted the orphan lease); nothing changed in the store;
- (b) after the restart, host 1's Release frees the disk for host 2;
- (c) the holder leaves the bus while host 1's vdiskd is down: the disk stays held meanwhile (its helper
  may still write), and the restarted vdiskd ends the lease and releases the orphan: host 2 gets it;
- (d) another host's restart does not take or release host 1's orphan: host 2's vdiskd, restarted while
  host 1's is down, adopts only its own orphans (ORPHAN_ONLY is per host) and still answers InUse
  naming host 1;
- a clean stop (SIGTERM) keeps the lease too, and a shared (read-only) export's lease is adopted shared;
- fd-mode leases (no export) are written down under the runtime directory (cluster-leases/ID.json), found
  again after a restart and adopted the same way: host 2 gets InUse until host 1's Release; one whose
  holder left while vdiskd was down ends at the restart and host 2 gets the disk; a record that cannot
  be read is removed.
Each ends with Verify clean on both hosts and no orphan files."""

import os
import signal

import dbus

import clustertest
import vdisktest
from clustertest import check, check_eq, finish, opts

IN_USE = "org.vdisk1.Error.InUse"


def lease(bus, path):
    return dbus.Interface(bus.get_object("org.vdisk1", path, introspect=False), "org.vdisk1.Lease")


def manager(bus):
    return dbus.Interface(bus.get_object("org.vdisk1", "/org/vdisk1", introspect=False), "org.vdisk1.Manager")


def export(host, disk, bus=None, read_only=False):
    """OpenDisk with an NBD export: the lease's path and the helper's pid."""
    kw = {"read_only": True} if read_only else {}
    path, _, fds = manager(bus or host.env.bus).OpenDisk("vm", disk, opts(export="nbd", **kw))
    for fd in fds:
        os.close(fd.take())
    return str(path)


def helper_pid(host, path):
    import json
    with open(os.path.join(host.env.runtime_dir, "exports", path.rsplit("/", 1)[1], "state.json")) as f:
        return json.load(f)["helper-pid"]


def kill_vdiskd(host):
    host.env.daemon.send_signal(signal.SIGKILL)
    host.env.daemon.wait(timeout=20)
    host.env.wait_name_gone()


def restart(host):
    host.start_vdiskd()
    host.wait_joined()


def wait_for(what, cond, timeout=15):
    import time
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    check(False, f"{what} (waited {timeout} s)")
    return False


def refused_by_host1(c, h2, disk, when):
    before = c.snapshot_store()
    for what, call in {"OpenDisk": ("OpenDisk", "vm", disk, opts()),
                       "read-only OpenDisk": ("OpenDisk", "vm", disk, opts(read_only=True)),
                       "Snapshot": ("Snapshot", "vm", disk, opts())}.items():
        err, msg = h2.try_call(*call)
        check_eq(err, IN_USE, f"{what} of '{disk}' on host 2 {when}: InUse")
        check("cluster host 1" in str(msg), f"{what}: the message names host 1: {msg}")
    check_eq(c.snapshot_store(), before, f"the refusals {when} changed nothing")


def opens_on_host2(h2, disk, what):
    def attempt():
        err, res = h2.try_call("OpenDisk", "vm", disk, opts())
        if err is None:
            for fd in res[2]:
                os.close(fd.take())
            lease(h2.env.bus, str(res[0])).Release()
            return True
        return False
    # The release of an orphan is asynchronous in sanlock: a moment may pass.
    wait_for(what, attempt)


def main():
    vdiskd = clustertest.usage_or_skip()
    vdisktest.require("qemu-storage-daemon", "qemu-io")
    c = clustertest.Cluster(vdiskd, 2)
    try:
        h1, h2 = c.hosts
        h1.call("CreateImage", "base", "qcow2", dbus.UInt64(16 << 20), opts())
        h1.call("CreateVM", "vm", dbus.UInt32(0), opts())
        for d in ("d", "e", "f", "g"):
            h1.call("CreateDisk", "vm", d, "base", dbus.UInt64(0), opts())

        # ---- (a) vdiskd killed under a read-write export: the lease stays host 1's ----
        path = export(h1, "d")
        pid = helper_pid(h1, path)
        kill_vdiskd(h1)
        check(vdisktest.alive(pid), "the export's helper goes on serving after vdiskd was killed")
        refused_by_host1(c, h2, "d", "while host 1's vdiskd is down")
        restart(h1)
        wait_for("host 1's restarted vdiskd adopts its lease again",
                 lambda: f"Lease {path.rsplit('/', 1)[1]}: cluster lease of disk 'd' of VM 'vm' adopted again (exclusive)"
                 in h1.env.log_text())
        refused_by_host1(c, h2, "d", "after host 1's vdiskd restarted")

        # ---- (d) host 2's restart leaves host 1's orphan alone ----
        kill_vdiskd(h1)
        kill_vdiskd(h2)
        restart(h2)
        refused_by_host1(c, h2, "d", "after host 2's vdiskd restarted while host 1's is down")
        restart(h1)
        refused_by_host1(c, h2, "d", "once host 1's vdiskd is back")

        # ---- (b) the release after the restart frees the disk ----
        lease(h1.env.bus, path).Release()
        check(not vdisktest.alive(pid) or wait_for("the helper stops", lambda: not vdisktest.alive(pid)),
              "Release stops the helper")
        opens_on_host2(h2, "d", "after host 1's Release, host 2 opens the disk")

        # ---- a clean stop keeps the lease too; a read-only export's lease is adopted shared ----
        path = export(h1, "f")
        ro_path = export(h1, "g", read_only=True)
        h1.env.stop()
        refused_by_host1(c, h2, "f", "while host 1's vdiskd is stopped")
        err, msg = h2.try_call("OpenDisk", "vm", "g", opts())
        check_eq(err, IN_USE, "read-write OpenDisk on host 2 of the disk host 1 exports read-only, host 1 stopped: InUse")
        check("cluster host 1" in str(msg), f"it names host 1: {msg}")
        err, res = h2.try_call("OpenDisk", "vm", "g", opts(read_only=True))
        check_eq(err, None, "a read-only OpenDisk on host 2 shares it")
        for fd in res[2] if err is None else ():
            os.close(fd.take())
        restart(h1)
        wait_for("the shared lease is adopted shared",
                 lambda: "cluster lease of disk 'g' of VM 'vm' adopted again (shared)" in h1.env.log_text())
        refused_by_host1(c, h2, "f", "after host 1's vdiskd restarted")
        if err is None:
            lease(h2.env.bus, str(res[0])).Release()
        err, _ = h2.try_call("OpenDisk", "vm", "g", opts())
        check_eq(err, IN_USE, "host 1's adopted shared lease still excludes a writer on host 2")
        lease(h1.env.bus, path).Release()
        lease(h1.env.bus, ro_path).Release()
        opens_on_host2(h2, "f", "after host 1's Release, host 2 opens disk 'f'")
        opens_on_host2(h2, "g", "and disk 'g'")

        # ---- (c) the holder leaves while vdiskd is down: the restarted vdiskd frees the disk ----
        bus2 = dbus.bus.BusConnection(h1.env.address)
        path = export(h1, "e", bus=bus2)
        pid = helper_pid(h1, path)
        kill_vdiskd(h1)
        bus2.close()
        refused_by_host1(c, h2, "e", "after its holder left, host 1's vdiskd down (its helper may still write)")
        restart(h1)
        wait_for("the restarted vdiskd stops the helper of the lease whose holder left", lambda: not vdisktest.alive(pid))
        opens_on_host2(h2, "e", "host 2 then opens the disk (the orphan released)")

        # ---- fd-mode leases: written down, found again after a restart, adopted ----
        path, _, fds = h1.call("OpenDisk", "vm", "d", opts())
        for fd in fds:
            os.close(fd.take())
        records = os.path.join(h1.env.runtime_dir, "cluster-leases")
        check_eq(os.listdir(records), [path.rsplit("/", 1)[1] + ".json"], "the fd-mode lease is written down")
        bus2 = dbus.bus.BusConnection(h1.env.address)
        path_e, _, fds = manager(bus2).OpenDisk("vm", "e", opts())
        for fd in fds:
            os.close(fd.take())
        kill_vdiskd(h1)
        bus2.close()  # the holder of disk 'e' goes while host 1's vdiskd is down
        refused_by_host1(c, h2, "d", "while host 1's vdiskd (fd-mode lease) is down")
        refused_by_host1(c, h2, "e", "while host 1's vdiskd is down (the holder left, its fds may live on)")
        # A record that is not one (bad input under the runtime directory): removed, no lease made of it.
        junk = os.path.join(records, "0123456789abcdef0123456789abcdef.json")
        with open(junk, "w") as f:
            f.write('{"version": 1, "vm": 7}')
        restart(h1)
        check(not os.path.exists(junk), "a record that cannot be read is removed at the start")
        check("0123456789abcdef0123456789abcdef.json: not a lease record; removed" in h1.env.log_text(),
              "and the log says why")
        wait_for("the fd-mode lease is adopted again",
                 lambda: f"Lease {path.rsplit('/', 1)[1]}: cluster lease of disk 'd' of VM 'vm' adopted again (exclusive)"
                 in h1.env.log_text())
        refused_by_host1(c, h2, "d", "after host 1's restart (its fd-mode lease found again)")
        opens_on_host2(h2, "e", "the fd-mode lease whose holder left is ended at the restart, its orphan released")
        err, msg = h1.try_call("OpenDisk", "vm", "d", opts())
        check_eq(err, IN_USE, f"on host 1 too, the lease found again excludes another writer ({msg})")
        lease(h1.env.bus, path).Release()
        check_eq(os.listdir(records), [], "Release removes the record")
        opens_on_host2(h2, "d", "after host 1's Release of the lease found again, host 2 opens the disk")

        c.check_clean(["vm"])
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
