#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Cluster mode with three simulated hosts on one store (clustertest.py): a host that has not joined
the lockspace answers NotJoined and changes nothing; records written by one host are read again by the
others under their lease; a read-write OpenDisk on one host excludes OpenDisk, Snapshot, Rebase, Commit
and DeleteDisk on another (InUse naming host 1, nothing changed); read-only OpenDisk is shared; DeleteImage
and CreateImage take the catalog lease; a quarantine recorded on one host is seen on another; a record that cannot be read again is Corrupt and nothing is
written."""

import json
import os
import subprocess

import dbus

import clustertest
import vdisktest
from clustertest import check, check_eq, finish, opts

IN_USE = "org.vdisk1.Error.InUse"
NOT_JOINED = "org.vdisk1.Error.NotJoined"


def chain_ids(host, vm, disk):
    return [str(layer[0]) for layer in host.call("GetChain", vm, disk)]


def lease(host, path):
    return dbus.Interface(host.env.bus.get_object("org.vdisk1", path, introspect=False), "org.vdisk1.Lease")


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 3, start=False)
    try:
        h1, h2, h3 = c.hosts
        for h in c.hosts:
            h.start_vdiskd()

        # ---- NotJoined: right after the start, before the lockspace is joined (about 3 s) ----
        before = c.snapshot_store()
        err, msg = h3.try_call("CreateVM", "early", 0, opts())
        check_eq(err, NOT_JOINED, "CreateVM before the lockspace is joined: NotJoined")
        check("has not joined" in str(msg), f"the message says why: {msg}")
        err, _ = h3.try_call("CreateImage", "early", "qcow2", 1 << 20, opts())
        check_eq(err, NOT_JOINED, "CreateImage before the lockspace is joined: NotJoined")
        check_eq(c.snapshot_store(), before, "NotJoined changed nothing in the store")
        for h in c.hosts:
            h.wait_joined()
        check_eq(h3.try_call("CreateVM", "early", 0, opts())[0], None, "after joining, the same CreateVM succeeds")

        # ---- records of one host are read again by another ----
        h1.call("CreateImage", "base", "qcow2", dbus.UInt64(64 << 20), opts())
        h1.call("CreateVM", "vm1", dbus.UInt32(0), opts())
        err, _ = h2.try_call("CreateVM", "vm1", 0, opts())
        check_eq(err, "org.vdisk1.Error.AlreadyExists", "host 2 sees host 1's new VM (CreateVM: AlreadyExists)")
        # The image made on host 1 is found by host 2 (the catalog read again under its lease).
        check_eq(h2.try_call("CreateDisk", "vm1", "vda", "base", 0, opts())[0], None,
                 "host 2 creates a disk from host 1's image in host 1's VM")
        c1 = chain_ids(h1, "vm1", "vda")
        check_eq(len(c1), 2, "host 1 sees host 2's disk (overlay on base)")
        rec_vm1 = os.path.join(c.store, "records", "vm-vm1.json")
        before_snap = json.load(open(rec_vm1))
        check_eq(before_snap.get("writer"), {"host_id": 2}, "the VM record names its last writer: host 2 (CreateDisk)")
        top = str(h1.call("Snapshot", "vm1", "vda", opts()))
        after_snap = json.load(open(rec_vm1))
        check_eq(after_snap.get("writer"), {"host_id": 1}, "after host 1's Snapshot the VM record names host 1")
        check(after_snap["generation"] > before_snap["generation"],
              f"and its generation went up ({before_snap['generation']} -> {after_snap['generation']})")
        check_eq(json.load(open(os.path.join(c.store, "records", f"layer-{top}.json"))).get("writer"), {"host_id": 1},
                 "the new layer's record names host 1")
        check_eq([n for n in os.listdir(os.path.join(c.store, "records"))
                  if n.endswith(".json") and json.load(open(os.path.join(c.store, "records", n))).get("writer") is None], [],
                 "every record written in cluster mode names its writer")
        c2 = chain_ids(h2, "vm1", "vda")
        check_eq(c2[0], top, "a snapshot made on host 1 is the top on host 2")
        check_eq(c2, chain_ids(h1, "vm1", "vda"), "both hosts see the same chain")
        check_eq(chain_ids(h3, "vm1", "vda"), c2, "a third host sees it too")
        logs = os.listdir(os.path.join(c.store, "log")) if os.path.isdir(os.path.join(c.store, "log")) else []
        check_eq([n for n in logs if n.startswith("vm-")], [],
                 "in cluster mode a Snapshot writes no write-ahead log (the records themselves are durable)")

        # ---- a read-write OpenDisk on host 1 excludes the disk on host 2 ----
        path, _, fds = h1.call("OpenDisk", "vm1", "vda", opts())
        for fd in fds:
            os.close(fd.take())
        before = c.snapshot_store()
        chain_before = chain_ids(h2, "vm1", "vda")
        attempts = {
            "OpenDisk read-write": ("OpenDisk", "vm1", "vda", opts()),
            "OpenDisk read-only": ("OpenDisk", "vm1", "vda", opts(read_only=True)),
            "Snapshot": ("Snapshot", "vm1", "vda", opts()),
            "Rebase (flatten)": ("Rebase", "vm1", "vda", "", opts()),
            "Commit": ("Commit", "vm1", "vda", chain_before[1], opts()),
            "DeleteDisk": ("DeleteDisk", "vm1", "vda"),
            "DeleteVM": ("DeleteVM", "vm1"),
        }
        for what, call in attempts.items():
            err, msg = h2.try_call(*call)
            check_eq(err, IN_USE, f"{what} on host 2 while host 1 holds a read-write lease: InUse")
            check("cluster host 1" in str(msg), f"{what}: the message names host 1: {msg}")
        check_eq(c.snapshot_store(), before, "the refused calls changed nothing in the store")
        check_eq(chain_ids(h2, "vm1", "vda"), chain_before, "host 2's chain is unchanged")
        # Other disks of the VM are not excluded: the VM record lease is taken only for each call.
        check_eq(h2.try_call("CreateDisk", "vm1", "vdb", "", 1 << 20, opts())[0], None,
                 "host 2 may add another disk to the VM meanwhile")
        lease(h1, path).Release()
        top2 = h2.try_call("Snapshot", "vm1", "vda", opts())
        check_eq(top2[0], None, "after host 1's release, host 2's Snapshot succeeds")
        check_eq(chain_ids(h1, "vm1", "vda")[0], str(top2[1]), "and host 1 sees the new top")

        # ---- read-only OpenDisk is shared; a writer elsewhere is not ----
        p1, _, fds1 = h1.call("OpenDisk", "vm1", "vda", opts(read_only=True))
        p2, _, fds2 = h2.call("OpenDisk", "vm1", "vda", opts(read_only=True))
        check(True, "read-only OpenDisk on host 1 and host 2 at once")
        for fd in list(fds1) + list(fds2):
            os.close(fd.take())
        err, msg = h3.try_call("OpenDisk", "vm1", "vda", opts())
        check_eq(err, IN_USE, "read-write OpenDisk on host 3 while hosts 1 and 2 read: InUse")
        check("cluster host" in str(msg), f"it names a host: {msg}")
        err, msg = h3.try_call("DeleteDisk", "vm1", "vda")
        check_eq(err, IN_USE, "DeleteDisk on host 3 while hosts 1 and 2 read: InUse")
        # As on one host, a snapshot adds a layer above what readers read: allowed.
        check_eq(h3.try_call("Snapshot", "vm1", "vda", opts())[0], None, "Snapshot on host 3 while others read")
        lease(h1, p1).Release()
        lease(h2, p2).Release()
        path, _, fds = h3.call("OpenDisk", "vm1", "vda", opts())
        for fd in fds:
            os.close(fd.take())
        check(True, "read-write OpenDisk on host 3 once the readers released")
        lease(h3, path).Release()

        # ---- Rebase and Commit jobs, DeleteDisk: their leases are gone once they end ----
        chain = chain_ids(h1, "vm1", "vda")
        job = h1.call("Rebase", "vm1", "vda", "", opts())
        state = h1.env.wait_job(job)
        check_eq(state[0], "done", "flatten on host 1")
        check_eq(len(chain_ids(h2, "vm1", "vda")), 1, "host 2 sees the flattened chain")
        check_eq(h2.try_call("Snapshot", "vm1", "vda", opts())[0], None, "host 2 snapshots once host 1's job ended")
        chain = chain_ids(h3, "vm1", "vda")
        job = h3.call("Commit", "vm1", "vda", chain[0], opts())
        check_eq(h3.env.wait_job(job)[0], "done", "commit on host 3")
        check_eq(len(chain_ids(h1, "vm1", "vda")), 1, "host 1 sees the committed chain")
        check_eq(h2.try_call("DeleteDisk", "vm1", "vdb")[0], None, "DeleteDisk on host 2")
        check_eq(h1.try_call("GetChain", "vm1", "vdb")[0], "org.vdisk1.Error.NotFound", "host 1 no longer sees the disk")

        # ---- a record that cannot be read again under its lease: Corrupt, nothing written ----
        h1.call("CreateVM", "vm2", dbus.UInt32(0), opts())
        h1.call("CreateDisk", "vm2", "vda", "", dbus.UInt64(1 << 20), opts())
        chain = chain_ids(h2, "vm2", "vda")
        rec = os.path.join(c.store, "records", "vm-vm2.json")
        with open(rec, "rb") as f:
            good = f.read()
        with open(rec, "wb") as f:
            f.write(b"{ not json")
        before = c.snapshot_store()
        err, msg = h2.try_call("GetChain", "vm2", "vda")
        check_eq(err, "org.vdisk1.Error.Corrupt", f"a VM record that cannot be read again: Corrupt ({msg})")
        err, _ = h2.try_call("Snapshot", "vm2", "vda", opts())
        check_eq(err, "org.vdisk1.Error.Corrupt", "Snapshot over it: Corrupt")
        check_eq(c.snapshot_store(), before, "nothing was written")
        with open(rec, "wb") as f:
            f.write(good)
        check_eq(chain_ids(h2, "vm2", "vda"), chain, "readable again: the same chain")

        # ---- a VM owner on another host: authorized by the record as it is now ----
        h1.call("CreateVM", "owned", dbus.UInt32(65534), opts())
        h1.call("CreateDisk", "owned", "vda", "", dbus.UInt64(1 << 20), opts())
        as_others = vdisktest.root_only("a VM owner on another host (calls as uids 65534 and 1)")
        if as_others:
            err, res = h2.env.call_as(65534, "GetChain", "owned", "vda")
            check_eq(err, None, "the owner (uid 65534, nobody) reads its VM made on host 1 through host 2")
            err, _ = h2.env.call_as(65534, "Snapshot", "owned", "vda", {})
            check_eq(err, None, "and snapshots it there")
            err, _ = h2.env.call_as(1, "GetChain", "owned", "vda")
            check_eq(err, "org.freedesktop.DBus.Error.AccessDenied", "another uid is denied on host 2")
        h1.call("DeleteVM", "owned")
        h1.call("CreateVM", "owned", dbus.UInt32(1), opts())
        h1.call("CreateDisk", "owned", "vda", "", dbus.UInt64(1 << 20), opts())
        before = c.snapshot_store()
        for what, call in {"GetChain": ("GetChain", "owned", "vda"), "Snapshot": ("Snapshot", "owned", "vda", {}),
                           "DeleteDisk": ("DeleteDisk", "owned", "vda")}.items() if as_others else ():
            err, _ = h2.env.call_as(65534, *call)
            check_eq(err, "org.freedesktop.DBus.Error.AccessDenied",
                     f"{what} by the old owner on host 2 after host 1 gave the VM's name to uid 1 (daemon): AccessDenied")
        if as_others:
            check_eq(c.snapshot_store(), before, "nothing changed")
            check_eq(h2.env.call_as(1, "GetChain", "owned", "vda")[0], None, "the new owner is allowed on host 2")

        # ---- a header rewritten under host 1's read-write lease: quarantined, and host 2 reads that ----
        h1.call("CreateVM", "q", dbus.UInt32(0), opts())
        h1.call("CreateDisk", "q", "vda", "", dbus.UInt64(1 << 20), opts())
        h1.call("CreateDisk", "q", "vdb", "", dbus.UInt64(1 << 20), opts())
        top = h2.call("GetChain", "q", "vda")[0]
        path, _, fds = h1.call("OpenDisk", "q", "vda", opts())
        for fd in fds:
            os.close(fd.take())
        # Meanwhile host 2 changes the VM's record (another disk): the quarantine below must not undo it.
        vdb_top = str(h2.call("Snapshot", "q", "vdb", opts()))
        # Names a sibling that does not exist; nothing ever opens it (qemu-img -u does not).
        rc = subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "canary", "-F", "raw",
                             os.path.join(c.store, str(top[1]))], capture_output=True).returncode
        check_eq(rc, 0, "top header rewritten under host 1's lease")
        lease(h1, path).Release()
        err, msg = h2.try_call("OpenDisk", "q", "vda", opts())
        check_eq(err, "org.vdisk1.Error.Corrupt", "host 2 refuses the disk host 1 quarantined")
        check("quarantined" in str(msg), f"it says the disk is quarantined: {msg}")
        check_eq(h1.try_call("OpenDisk", "q", "vda", opts())[0], "org.vdisk1.Error.Corrupt", "so does host 1")
        check_eq(chain_ids(h1, "q", "vdb")[0], vdb_top,
                 "host 2's snapshot of the other disk survived the quarantine written by host 1 (read again first)")
        check_eq(h2.try_call("DeleteVM", "q")[0], None, "host 2 deletes the quarantined VM")

        # ---- the catalog ----
        err, _ = h3.try_call("CreateImage", "base", "raw", 1 << 20, opts())
        check_eq(err, "org.vdisk1.Error.AlreadyExists", "host 3 sees host 1's image name")
        check_eq(h2.try_call("CreateImage", "tmpl", "raw", 1 << 20, opts())[0], None, "CreateImage on host 2")
        check_eq(h1.try_call("DeleteImage", "tmpl")[0], None, "DeleteImage of host 2's image on host 1")
        names = [str(i[0]) for i in h2.call("ListImages")]
        check("tmpl" not in names, f"host 2 no longer lists it after its next catalog lease: {names}")

        c.check_clean(["vm1", "vm2", "owned"])
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
