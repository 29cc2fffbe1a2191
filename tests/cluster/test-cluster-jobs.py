#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Jobs hold their cluster leases until they end (vdiskd's test hooks slow them down): after host 1's
import the catalog is free for host 2; while host 1 flattens a disk, Snapshot, OpenDisk, Rebase and GetChain of that VM on host 2 answer InUse naming host
1, and nothing changes; once each job is done, host 2 goes on and sees its result."""

import os

import dbus

import clustertest
from clustertest import check, check_eq, finish, opts

IN_USE = "org.vdisk1.Error.InUse"
# The flatten copies its 8 MiB of data 1 MiB per step, each step waiting 250 ms.
SLOW = {"VDISKD_TEST_STEP_BYTES": str(1 << 20), "VDISKD_TEST_STEP_DELAY_MS": "250"}


def job_state(host, path):
    props = dbus.Interface(host.env.bus.get_object("org.vdisk1", path, introspect=False), "org.freedesktop.DBus.Properties")
    return str(props.Get("org.vdisk1.Job", "State"))


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 2, start=False)
    try:
        h1, h2 = c.hosts
        h1.start_vdiskd(SLOW)
        h2.start_vdiskd()
        for h in c.hosts:
            h.wait_joined()

        data = os.path.join(c.tmp, "data.raw")
        with open(data, "wb") as f:
            f.write(bytes(range(256)) * (8 * 4096))  # 8 MiB, every cluster allocated
        err, msg = h1.env.import_file("data", "raw", data)
        check_eq(err, None, f"host 1 imports an image ({msg})")
        # The import's catalog lease ended with it.
        check_eq(h2.try_call("CreateImage", "other", "raw", 1 << 20, opts())[0], None, "CreateImage on host 2 after it")

        h2.call("CreateVM", "vm1", dbus.UInt32(0), opts())
        h2.call("CreateDisk", "vm1", "vda", "data", dbus.UInt64(0), opts())
        chain = [str(x[0]) for x in h2.call("GetChain", "vm1", "vda")]
        job = h1.call("Rebase", "vm1", "vda", "", opts())
        check_eq(job_state(h1, job), "running", "host 1 flattens host 2's disk (slowed down)")
        attempts = {
            "Snapshot": ("Snapshot", "vm1", "vda", opts()),
            "OpenDisk read-only": ("OpenDisk", "vm1", "vda", opts(read_only=True)),
            "Rebase": ("Rebase", "vm1", "vda", "", opts()),
            "GetChain": ("GetChain", "vm1", "vda"),
            "CreateDisk in the VM": ("CreateDisk", "vm1", "vdb", "", 1 << 20, opts()),
        }
        for what, call in attempts.items():
            err, msg = h2.try_call(*call)
            check_eq(err, IN_USE, f"{what} on host 2 during host 1's flatten: InUse")
            check("cluster host 1" in str(msg), f"{what}: names host 1: {msg}")
        check_eq(job_state(h1, job), "running", "the flatten was still running during those calls")
        check_eq(h1.env.wait_job(job)[0], "done", "the flatten ends")
        after = [str(x[0]) for x in h2.call("GetChain", "vm1", "vda")]
        check_eq(after, chain[:1], "host 2 sees the flattened chain (its top alone)")
        check_eq(h2.try_call("Snapshot", "vm1", "vda", opts())[0], None, "Snapshot on host 2 after it")
        c.check_clean(["vm1"])
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
