#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Jobs hold their cluster leases until they end (vdiskd's test hooks slow them down): after host 1's
import the catalog is free for host 2; while host 1 flattens a disk, Snapshot, OpenDisk, Rebase and GetChain of that VM on host 2 answer InUse naming host
1, and nothing changes; once each job is done, host 2 goes on and sees its result. A quarantine due when
another host holds the VM record's lease (its job) waits for that lease, the disk's lease kept
meanwhile (neither host hands the disk out), and then is recorded without losing the job's change."""

import json
import os
import subprocess
import time

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

        # ---- a quarantine while another host holds the VM record's lease: it waits, nothing is lost ----
        big = os.path.join(c.tmp, "big.raw")
        with open(big, "wb") as f:
            f.write(bytes(range(256)) * (24 * 4096))  # 24 MiB: host 1's flatten takes 24 slowed steps
        err, msg = h2.env.import_file("big", "raw", big)
        check_eq(err, None, f"host 2 imports a bigger image ({msg})")
        h2.call("CreateVM", "vm2", dbus.UInt32(0), opts())
        h2.call("CreateDisk", "vm2", "vda", "big", dbus.UInt64(0), opts())
        h2.call("CreateDisk", "vm2", "vdc", "", dbus.UInt64(1 << 20), opts())
        vdc_top = str(h2.call("GetChain", "vm2", "vdc")[0][1])  # its file, relative to the store
        path, _, fds = h2.call("OpenDisk", "vm2", "vdc", opts())
        for fd in fds:
            os.close(fd.take())
        # The holder rewrites the header under its read-write lease (names a sibling that does not exist;
        # qemu-img -u opens nothing): the lease's end must quarantine the disk.
        rc = subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", "canary", "-F", "raw",
                             os.path.join(c.store, vdc_top)], capture_output=True).returncode
        check_eq(rc, 0, "vdc's top header rewritten under host 2's lease")
        job = h1.call("Rebase", "vm2", "vda", "", opts())
        check_eq(job_state(h1, job), "running", "host 1 flattens vm2's vda: it holds the VM record's lease")
        dbus.Interface(h2.env.bus.get_object("org.vdisk1", path, introspect=False), "org.vdisk1.Lease").Release()
        check("the quarantine of disk 'vdc' of VM 'vm2' waits for the VM's cluster lease" in h2.env.log_text(),
              "host 2 does not write the VM record without its lease: the quarantine waits")
        err, msg = h2.try_call("OpenDisk", "vm2", "vdc", opts())
        check_eq(err, IN_USE, f"meanwhile host 2 does not hand the disk out ({msg})")
        err, msg = h1.try_call("OpenDisk", "vm2", "vdc", opts(read_only=True))
        check_eq(err, IN_USE, f"nor does host 1 (host 2 keeps the disk's lease) ({msg})")
        if err is None:  # not to hold it past the test's end
            for fd in msg[2]:
                os.close(fd.take())
            dbus.Interface(h1.env.bus.get_object("org.vdisk1", str(msg[0]), introspect=False), "org.vdisk1.Lease").Release()
        check_eq(job_state(h1, job), "running", "host 1's flatten was still running during those calls")
        check_eq(h1.env.wait_job(job)[0], "done", "host 1's flatten ends")

        # From the job's end until host 2's next retry (up to a second) the VM's lease is free but the
        # quarantine not recorded yet: host 2 must still refuse the disk (it holds the disk's lease itself).
        answers = []
        end = time.time() + 30
        while time.time() < end:
            err, msg = h2.try_call("OpenDisk", "vm2", "vdc", opts())
            answers.append((err, str(msg)))
            if err != IN_USE:
                break
            time.sleep(0.05)
        print(f"host 2's answers until the quarantine was recorded: {sorted(set(a for a, _ in answers))}, "
              f"{sum('being quarantined' in m for _, m in answers)} said 'being quarantined'")
        check(all(e == IN_USE and ("being quarantined" in m or "in use by cluster host 1" in m) for e, m in answers[:-1]),
              f"until then every OpenDisk of it was refused: InUse (VM busy, or being quarantined): {answers[:-1][-3:]}")
        check(answers[-1][0] == "org.vdisk1.Error.Corrupt" and "quarantined" in answers[-1][1],
              f"then host 2 records the quarantine: the disk is refused as quarantined ({answers[-1]})")
        check_eq(h1.try_call("OpenDisk", "vm2", "vdc", opts())[0], "org.vdisk1.Error.Corrupt", "on host 1 too")
        check_eq(len(h1.call("GetChain", "vm2", "vda")), 1, "and host 1's flatten of vda is still in the VM record")
        record = json.load(open(os.path.join(c.store, "records", "vm-vm2.json")))
        check_eq([d["name"] for d in record["disks"] if d.get("quarantine")], ["vdc"], "the record quarantines vdc alone")
        check_eq(h2.try_call("DeleteVM", "vm2")[0], None, "the quarantined VM can be deleted")
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
