# SPDX-License-Identifier: LGPL-2.1-or-later
"""When a disk is busy, offline changes answer InUse and change nothing (issue 16, items 10 and 13).

- Leases by identity (item 10): a read-only lease on nr/vda makes DeleteVM nr and DeleteDisk nr vda
  answer InUse, as the contract says for DeleteVM ("read-only leases included"); before, DeleteVM was
  accepted and a VM created again under the same name found its disk "in use" by the old VM's lease.
  Once the lease ends (Release, or its holder leaving the bus), both are accepted, and a new VM of the
  same name gets its read-write lease.
- QEMU's image locks (item 13): another process holding QEMU's write-lock bytes (100, 101, 103 held,
  201, 203 refused: a QEMU started without vdisk) on the top layer makes Snapshot, Commit, DeleteDisk
  and DeleteVM answer InUse (Rebase and OpenDisk did already), with the store byte for byte unchanged;
  a reader's locks (a QEMU using the file read-only) do not block Snapshot.

Usage: test-busy-disks.py VDISKD."""

import fcntl
import os
import struct
import sys

import dbus

from vdisktest import BUS_NAME, Env, check, check_eq, finish, opts

MiB = 1 << 20
INUSE = "org.vdisk1.Error.InUse"
F_OFD_SETLK = 37


def ofd_locks(path, held, refused):
    """Opens `path` and takes QEMU-style OFD read locks on bytes 100+p (held) and 200+p (refused)."""
    fd = os.open(path, os.O_RDONLY)
    for b in [100 + p for p in held] + [200 + p for p in refused]:
        fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, b, 1, 0))
    return fd


def top_file(env, vm, disk):
    chain = env.call("GetChain", vm, disk)
    return os.path.join(env.store, str(chain[0][1])), [str(layer[0]) for layer in chain]


def refused_unchanged(env, label, method, *args):
    before = env.snapshot_store()
    err, msg = env.try_call(method, *args)
    check_eq(err, INUSE, f"{label}: {method} answers InUse ({msg})")
    check(env.snapshot_store() == before, f"{label}: {method} changed nothing in the store")
    return msg


def open_lease(env, vm, disk, read_only):
    """OpenDisk on a connection of its own; returns (connection, lease path)."""
    conn = dbus.bus.BusConnection(env.address)
    m = dbus.Interface(conn.get_object(BUS_NAME, "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
    path, _, fds = m.OpenDisk(vm, disk, opts(read_only=read_only))
    for f in fds:
        os.close(f.take())
    return conn, str(path)


def test_lease_identity(env):
    env.call("CreateVM", "nr", dbus.UInt32(0), opts())
    env.call("CreateDisk", "nr", "vda", "", dbus.UInt64(16 * MiB), opts())
    conn, lease = open_lease(env, "nr", "vda", True)

    msg = refused_unchanged(env, "read-only lease", "DeleteVM", "nr")
    check("read-only" in msg, f"the refusal names the read-only lease ({msg})")
    refused_unchanged(env, "read-only lease", "DeleteDisk", "nr", "vda")

    # The holder leaves the bus: its lease ends, and the VM may go.
    conn.close()
    for _ in range(100):
        if env.try_call("DeleteVM", "nr")[0] is None:
            break
        import time
        time.sleep(0.05)
    check("vm-nr.json" not in " ".join(env.store_files()), "DeleteVM is accepted once the lease has ended")

    # A new VM of the same name: its disk is free.
    env.call("CreateVM", "nr", dbus.UInt32(0), opts())
    env.call("CreateDisk", "nr", "vda", "", dbus.UInt64(16 * MiB), opts())
    conn, lease = open_lease(env, "nr", "vda", False)
    check(lease.startswith("/org/vdisk1/lease/"), "the new VM's disk gets its read-write lease")
    # Release ends the lease: DeleteDisk is accepted.
    lease_obj = dbus.Interface(conn.get_object(BUS_NAME, lease, introspect=False), "org.vdisk1.Lease")
    lease_obj.Release()
    check_eq(env.try_call("DeleteDisk", "nr", "vda")[0], None, "DeleteDisk is accepted after Release")
    conn.close()


def test_qemu_locks(env):
    env.call("CreateVM", "lk", dbus.UInt32(0), opts())
    env.call("CreateDisk", "lk", "vda", "", dbus.UInt64(16 * MiB), opts())
    env.call("Snapshot", "lk", "vda", opts())
    top, chain = top_file(env, "lk", "vda")

    # A QEMU writing the top layer: held CONSISTENT_READ, WRITE, RESIZE; refused WRITE, RESIZE.
    fd = ofd_locks(top, held=(0, 1, 3), refused=(1, 3))
    refused_unchanged(env, "write-locked top", "Snapshot", "lk", "vda", opts())
    msg = refused_unchanged(env, "write-locked top", "Commit", "lk", "vda", chain[1], opts())
    check("locked" in msg, f"the refusal says the disk is locked ({msg})")
    refused_unchanged(env, "write-locked top", "DeleteDisk", "lk", "vda")
    refused_unchanged(env, "write-locked top", "DeleteVM", "lk")
    refused_unchanged(env, "write-locked top", "Rebase", "lk", "vda", "", opts())
    os.close(fd)

    # A QEMU reading the top layer (held CONSISTENT_READ, refused WRITE and RESIZE) does not block a
    # snapshot: the old top is not written by it.
    fd = ofd_locks(top, held=(0,), refused=(1, 3))
    err, layer = env.try_call("Snapshot", "lk", "vda", opts())
    check_eq(err, None, f"Snapshot under a reader's locks is accepted ({layer})")
    os.close(fd)

    # Without locks, all of them are accepted again.
    top, chain = top_file(env, "lk", "vda")
    check_eq(env.try_call("DeleteDisk", "lk", "vda")[0], None, "DeleteDisk without locks is accepted")
    check_eq(env.try_call("DeleteVM", "lk")[0], None, "DeleteVM without locks is accepted")


def main():
    env = Env(sys.argv[1])
    try:
        env.start()
        test_lease_identity(env)
        test_qemu_locks(env)
        env.check_sanitizers()
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
