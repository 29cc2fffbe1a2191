#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Live migration's lease hand-over in cluster mode (three simulated hosts, clustertest.py; no QEMU): the
destination opens the disk for an incoming VM (OpenDisk's "incoming") without taking it over, and takes
the disk's lease at the switch-over with the version the source held (Lease.TakeOver(LeaseVersion)).

- before the source released, TakeOver answers InUse naming the source, and the lease stays incoming;
- after the source's Release, TakeOver succeeds; the disk is then the destination's (InUse naming host 2
  on host 3) and its lease version went up;
- a third host taking the disk between the source's release and the TakeOver makes the hand-over fail
  (InUse, "changed hands"), and nothing changes;
- the destination's incoming OpenDisk is not refused for QEMU's image locks on the top layer, which the
  source's QEMU holds until the migration completes (simulated here with OFD locks on bytes 100-104);
- an incoming lease is found again, still incoming, by a restarted vdiskd and can take over after it;
- bad input: TakeOver of a lease not opened with "incoming", version 0, "incoming" with read_only or an
  export (InvalidArgs), "incoming" in local mode (NotSupported); nothing changed by any of them."""

import fcntl
import os
import signal
import struct

import dbus

import clustertest
import vdisktest
from clustertest import check, check_eq, finish, opts

IN_USE = "org.vdisk1.Error.InUse"
INVALID = "org.freedesktop.DBus.Error.InvalidArgs"


def lease_obj(host, path):
    return host.env.bus.get_object("org.vdisk1", path, introspect=False)


def version(host, path):
    return int(lease_obj(host, path).Get("org.vdisk1.Lease", "LeaseVersion",
                                         dbus_interface="org.freedesktop.DBus.Properties"))


def take_over(host, path, v):
    try:
        lease_obj(host, path).TakeOver(dbus.UInt64(v), dbus_interface="org.vdisk1.Lease")
        return None, None
    except dbus.exceptions.DBusException as e:
        return e.get_dbus_name(), e.get_dbus_message()


def release(host, path):
    lease_obj(host, path).Release(dbus_interface="org.vdisk1.Lease")


def hold_qemu_locks(path):
    """What a running QEMU holds on its active layer: shared OFD locks on bytes 100-104 (its permissions)
    and 201 and 203 (refusing WRITE and RESIZE to others). The fd keeps them."""
    fd = os.open(path, os.O_RDWR)
    for byte in (100, 101, 102, 103, 104, 201, 203):
        fcntl.fcntl(fd, getattr(fcntl, "F_OFD_SETLK", 37), struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, byte, 1, 0))
    return fd


def open_disk(host, **kw):
    err, res = host.try_call("OpenDisk", "vm", "d", opts(**kw))
    if err is not None:
        return err, res
    for fd in res[2]:
        os.close(fd.take())
    return None, str(res[0])


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 3)
    try:
        h1, h2, h3 = c.hosts
        h1.call("CreateVM", "vm", dbus.UInt32(0), opts())
        h1.call("CreateDisk", "vm", "d", "", dbus.UInt64(1 << 20), opts())

        # ---- the hand-over: source host 1, destination host 2 ----
        err, src = open_disk(h1)
        check_eq(err, None, "host 1 (the source) opens the disk read-write")
        v = version(h1, src)
        check(v > 0, f"the source's lease has a version ({v})")
        top = os.path.join(c.store, str(h1.call("GetChain", "vm", "d")[0][1]))
        source_qemu = hold_qemu_locks(top)
        err, dst = open_disk(h2, incoming=True)
        check_eq(err, None, f"host 2 (the destination) opens it for an incoming VM while host 1 holds it and the "
                            f"source's QEMU holds its image locks ({dst if err else ''})")
        os.close(source_qemu)
        check_eq(version(h2, dst), 0, "an incoming lease holds no disk lease yet (LeaseVersion 0)")
        err, msg = open_disk(h3)
        check_eq(err, IN_USE, "host 3 still gets InUse")
        check("cluster host 1" in str(msg), f"naming the source, host 1: {msg}")

        err, msg = take_over(h2, dst, v)
        check_eq(err, IN_USE, "TakeOver before the source released: InUse")
        check("cluster host 1" in str(msg), f"naming host 1: {msg}")
        check_eq(version(h2, dst), 0, "the lease stays incoming")

        release(h1, src)
        err, msg = take_over(h2, dst, v)
        check_eq(err, None, f"after the source's Release, TakeOver with its version succeeds ({msg})")
        v2 = version(h2, dst)
        check(v2 > v, f"the destination holds the disk at a higher version ({v} -> {v2})")
        err, msg = open_disk(h3)
        check_eq(err, IN_USE, "host 3 gets InUse after the hand-over")
        check("cluster host 2" in str(msg), f"naming the destination, host 2: {msg}")
        err, msg = take_over(h2, dst, v2)
        check_eq(err, INVALID, f"a second TakeOver of a lease no longer incoming: InvalidArgs ({msg})")
        release(h2, dst)

        # ---- a third host takes the disk in between: the hand-over fails ----
        err, src = open_disk(h1)
        v = version(h1, src)
        err, dst = open_disk(h2, incoming=True)
        check_eq(err, None, "host 2 opens the disk for an incoming VM again")
        release(h1, src)
        err, third = open_disk(h3)
        check_eq(err, None, "host 3 takes the disk after the source released it")
        release(h3, third)
        before = c.snapshot_store()
        err, msg = take_over(h2, dst, v)
        check_eq(err, IN_USE, "TakeOver after a third host took the disk in between: InUse")
        check("changed hands" in str(msg), f"the message says the disk changed hands: {msg}")
        check_eq(version(h2, dst), 0, "the lease stays incoming")
        check_eq(c.snapshot_store(), before, "the failed hand-over changed nothing")
        err, third = open_disk(h3)
        check_eq(err, None, "the disk is still free for others (the failed TakeOver took nothing)")
        release(h3, third)
        release(h2, dst)

        # ---- an incoming lease survives a restart of the destination's vdiskd, still incoming ----
        err, src = open_disk(h1)
        v = version(h1, src)
        err, dst = open_disk(h2, incoming=True)
        h2.env.daemon.send_signal(signal.SIGKILL)
        h2.env.daemon.wait(timeout=20)
        h2.env.wait_name_gone()
        h2.start_vdiskd()
        h2.wait_joined()
        check_eq(version(h2, dst), 0, "found again after the restart, still incoming")
        err, msg = open_disk(h3)
        check("cluster host 1" in str(msg), f"the source still holds the disk: {msg}")
        release(h1, src)
        err, msg = take_over(h2, dst, v)
        check_eq(err, None, f"TakeOver after the destination's restart ({msg})")
        err, msg = open_disk(h3)
        check("cluster host 2" in str(msg), f"the destination holds the disk: {msg}")
        release(h2, dst)

        # ---- bad input: InvalidArgs, nothing changed ----
        err, plain = open_disk(h1)
        before = c.snapshot_store()
        err, msg = take_over(h1, plain, version(h1, plain))
        check_eq(err, INVALID, f"TakeOver of a lease not opened with 'incoming': InvalidArgs ({msg})")
        release(h1, plain)
        err, dst = open_disk(h2, incoming=True)
        err, msg = take_over(h2, dst, 0)
        check_eq(err, INVALID, f"TakeOver with version 0: InvalidArgs ({msg})")
        release(h2, dst)
        err, msg = open_disk(h2, incoming=True, read_only=True)
        check_eq(err, INVALID, f"'incoming' with read_only: InvalidArgs ({msg})")
        err, msg = open_disk(h2, incoming=True, export="nbd")
        check_eq(err, INVALID, f"'incoming' with an export: InvalidArgs ({msg})")
        check_eq(c.snapshot_store(), before, "the refusals changed nothing")
        err, free = open_disk(h3)
        check_eq(err, None, "and left no lease behind: host 3 opens the disk")
        release(h3, free)

        c.check_clean(["vm"])
    finally:
        c.close()

    # ---- local mode: the option needs cluster mode ----
    env = vdisktest.Env(vdiskd)
    try:
        env.start()
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        env.call("CreateDisk", "vm", "d", "", dbus.UInt64(1 << 20), opts())
        before = env.snapshot_store()
        err, msg = env.try_call("OpenDisk", "vm", "d", opts(incoming=True))
        check_eq(err, "org.vdisk1.Error.NotSupported", f"'incoming' in local mode: NotSupported ({msg})")
        check_eq(env.snapshot_store(), before, "nothing changed")
        err, res = env.try_call("OpenDisk", "vm", "d", opts())
        check_eq(err, None, "and no lease was left behind")
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
