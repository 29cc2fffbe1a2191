#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Host 1 loses the lockspace: its sanlock daemon is stopped (SIGSTOP) for longer than the renewal
timeout (8 × IoTimeout), as when the storage does not answer, then continued. sanlock then finds its
delta lease not renewed in time and runs vdiskd's kill path instead of killing vdiskd; vdiskd cancels
its running job (a slowed-down flatten: it had not reached its commit point), kills the process holding
a read-write lease's fds and the storage helper of a read-write export, ends its leases and drops them.
Checked: the job ends cancelled naming the lockspace, the holder was killed (SIGKILL), the helper too, vdiskd of host 1 is still running and answers NotJoined
until it has joined the lockspace again, the store is exactly as before the flatten, host 2 can take
the disk read-write, Verify is clean on both hosts, no orphan, no journal entry."""

import json
import os
import signal
import subprocess
import sys
import time

import dbus

import clustertest
import vdisktest
from clustertest import check, check_eq, finish, opts

NOT_JOINED = "org.vdisk1.Error.NotJoined"
# The flatten copies 64 MiB 1 MiB per step, each step waiting 500 ms: about 32 s, far longer than the
# sanlock daemon's stop (8 × IoTimeout + 2 s).
SLOW = {"VDISKD_TEST_STEP_BYTES": str(1 << 20), "VDISKD_TEST_STEP_DELAY_MS": "500"}

# The holder: a process of its own that takes a read-write lease of a disk, keeps its fds and waits.
HOLDER = r"""
import sys, time, dbus
bus = dbus.bus.BusConnection(sys.argv[1])
m = dbus.Interface(bus.get_object("org.vdisk1", "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
path, _, fds = m.OpenDisk("vm1", "vdb", dbus.Dictionary({}, signature="sv"))
fds = [fd.take() for fd in fds]
print(path, flush=True)
time.sleep(1000)
"""


def wait_for(what, cond, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    check(False, f"{what} (waited {timeout} s)")
    return False


def main():
    vdiskd = clustertest.usage_or_skip()
    vdisktest.require("qemu-storage-daemon")
    c = clustertest.Cluster(vdiskd, 2, start=False)
    holder = None
    try:
        h1, h2 = c.hosts
        h1.start_vdiskd(SLOW)
        h2.start_vdiskd()
        for h in c.hosts:
            h.wait_joined()

        data = os.path.join(c.tmp, "data.raw")
        with open(data, "wb") as f:
            f.write(bytes(range(256)) * (64 * 4096))  # 64 MiB, every cluster allocated
        err, msg = h1.env.import_file("data", "raw", data)
        check_eq(err, None, f"host 1 imports an image ({msg})")
        h1.call("CreateVM", "vm1", dbus.UInt32(0), opts())
        h1.call("CreateDisk", "vm1", "vda", "data", dbus.UInt64(0), opts())
        h1.call("CreateDisk", "vm1", "vdb", "", dbus.UInt64(1 << 20), opts())
        h1.call("CreateDisk", "vm1", "vdc", "", dbus.UInt64(1 << 20), opts())

        # A read-write NBD export of vdc on host 1 (this test's connection holds it): its storage helper
        # is what may write.
        path, _, fds = h1.env.manager().OpenDisk("vm1", "vdc", opts(export="nbd"))
        for fd in fds:
            os.close(fd.take())
        with open(os.path.join(h1.env.runtime_dir, "exports", str(path).rsplit("/", 1)[1], "state.json")) as f:
            helper = json.load(f)["helper-pid"]
        check(vdisktest.alive(helper), "the export's storage helper runs")

        holder = subprocess.Popen([sys.executable, "-c", HOLDER, h1.env.address], stdout=subprocess.PIPE, text=True)
        lease_path = holder.stdout.readline().strip()
        check(lease_path.startswith("/org/vdisk1/lease/"), f"the holder took a read-write lease of vdb on host 1 ({lease_path})")
        err, msg = h2.try_call("OpenDisk", "vm1", "vdb", opts())
        check_eq(err, "org.vdisk1.Error.InUse", "host 2 cannot open vdb meanwhile")

        chain = h1.chain("vm1", "vda")
        before = c.snapshot_store()
        job = h1.call("Rebase", "vm1", "vda", "", opts())

        # The storage of host 1 "stops answering": its sanlock daemon renews nothing for longer than
        # the renewal timeout. Once it runs again it finds the lockspace lost.
        os.kill(h1.sanlock.pid, signal.SIGSTOP)
        try:
            time.sleep(8 * c.io_timeout + 2)
        finally:
            os.kill(h1.sanlock.pid, signal.SIGCONT)

        def not_joined():
            return h1.env.try_call("GetChain", "vm1", "vda")[0] == NOT_JOINED
        wait_for("host 1 answers NotJoined after losing the lockspace", not_joined)

        state, ename, emsg = h1.env.wait_job(job)
        check_eq(state, "cancelled", f"host 1's flatten was cancelled ({ename}: {emsg})")
        check(f"lost cluster lockspace {clustertest.LOCKSPACE}" in emsg, f"its message names the lost lockspace: {emsg}")
        try:
            rc = holder.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        check_eq(rc, -signal.SIGKILL, "the holder of the read-write lease was killed (SIGKILL)")
        check(not vdisktest.alive(helper), "the storage helper of the read-write export was killed")
        check(h1.env.daemon.poll() is None, "vdiskd of host 1 is still running")
        check(h1.sanlock.poll() is None, "the sanlock daemon of host 1 is still running")
        log = h1.env.log_text()
        check("sanlock ran vdiskd's kill path" in log, "vdiskd was told through its kill path")
        check("every lease of this host dropped" in log, "vdiskd says it dropped its leases")
        # The job was abandoned, not rolled back by host 1: once its lockspace is lost, host 1 writes
        # nothing (another host may own the leases by then). Its journal entry stays for recovery.
        check("abandoned, not rolled back here" in log, "host 1 abandoned its flatten to recovery")
        now = c.snapshot_store()
        check_eq({k: v for k, v in now.items() if k.startswith("records/vm-")},
                 {k: v for k, v in before.items() if k.startswith("records/vm-")},
                 "the VM record is as before the flatten (it did not commit)")
        check(any(k.startswith("journal/") and k.endswith(".json") for k in now), "the flatten's journal entry is left")
        # Whoever takes the VM's lease next rolls it back (host 2's recovery scan, or host 1's once joined again).
        wait_for("the abandoned flatten is rolled back by recovery", lambda: c.snapshot_store() == before, timeout=60)
        check_eq(c.snapshot_store(), before, "the store is exactly as before the flatten")

        # The disk is free for host 2 once sanlock no longer counts host 1's lost delta lease as live.
        def opens_on_host2(disk):
            err, res = h2.try_call("OpenDisk", "vm1", disk, opts())
            if err is None:
                for fd in res[2]:
                    os.close(fd.take())
                dbus.Interface(h2.env.bus.get_object("org.vdisk1", str(res[0]), introspect=False), "org.vdisk1.Lease").Release()
                return True
            check_eq(err, "org.vdisk1.Error.InUse", f"host 2's OpenDisk of {disk} meanwhile: InUse ({res})")
            return False
        wait_for("host 2 takes vdb read-write", lambda: opens_on_host2("vdb"))
        wait_for("host 2 takes the exported vdc read-write", lambda: opens_on_host2("vdc"))

        # Host 1 joins the lockspace again and works on.
        h1.wait_joined()
        check_eq(h1.chain("vm1", "vda"), chain, "host 1 sees the chain of vda as before the flatten")
        check_eq(h2.chain("vm1", "vda"), chain, "host 2 too")
        err, res = h1.try_call("OpenDisk", "vm1", "vdb", opts(read_only=True))
        check_eq(err, None, f"host 1 opens vdb again after rejoining ({res})")
        if err is None:
            for fd in res[2]:
                os.close(fd.take())
            dbus.Interface(h1.env.bus.get_object("org.vdisk1", str(res[0]), introspect=False), "org.vdisk1.Lease").Release()
        c.check_clean(["vm1"])
    finally:
        if holder and holder.poll() is None:
            holder.kill()
            holder.wait()
        c.close()
    finish()


if __name__ == "__main__":
    main()
