#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A host dies in the middle of a Commit (issue 20): its sanlock daemon and its vdiskd are SIGKILLed
together while the job copies (as a power loss would: nobody releases anything, the delta lease just
stops being renewed). Until sanlock considers the host dead (8 × IoTimeout + 60 s in sanlock 3.8.5,
about 70 s here), host 2 is answered InUse naming host 1; then its Snapshot takes the lease, rolls the
interrupted Commit back (the base restored from its undo log) and goes on: the chain is the old one plus
host 2's layer, what the guest sees is unchanged, Verify is clean, no journal entry and no orphan is
left. Takes about 80 s (its own suite, cluster-slow)."""

import os
import signal
import time

import dbus

import clustertest
from clustertest import check, check_eq, finish, opts

# The commit copies 4 MiB, 256 KiB per step, each step waiting 200 ms: some 3 s, time to kill host 1.
SLOW = {"VDISKD_TEST_STEP_BYTES": str(256 << 10), "VDISKD_TEST_STEP_DELAY_MS": "200"}








def job_progress(host, path):
    props = dbus.Interface(host.env.bus.get_object("org.vdisk1", path, introspect=False), "org.freedesktop.DBus.Properties")
    return int(props.Get("org.vdisk1.Job", "BytesDone"))


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 2, start=False)
    try:
        h1, h2 = c.hosts
        h1.start_vdiskd(SLOW)
        h2.start_vdiskd()
        for h in c.hosts:
            h.wait_joined()
        h2.call("CreateVM", "vm", dbus.UInt32(0), opts())
        h2.call("CreateDisk", "vm", "vda", "", dbus.UInt64(16 << 20), opts())
        h2.write("vm", "0x11", 0, 8 << 20)
        mid = str(h2.call("Snapshot", "vm", "vda", opts()))
        h2.write("vm", "0x22", 4 << 20, 4 << 20)
        h2.call("Snapshot", "vm", "vda", opts())
        h2.write("vm", "0x33", 0, 1 << 20)
        before, content = h2.chain("vm"), h2.guest_hash("vm")

        job = str(h1.call("Commit", "vm", "vda", mid, opts()))
        end = time.time() + 30
        while job_progress(h1, job) == 0 and time.time() < end:
            time.sleep(0.05)
        check(job_progress(h1, job) > 0, "host 1's commit is copying")
        # Host 1 dies: both processes at once, nothing released.
        h1.sanlock.send_signal(signal.SIGKILL)
        h1.env.daemon.send_signal(signal.SIGKILL)
        h1.sanlock.wait()
        h1.env.daemon.wait()
        died = time.time()
        check(any(n.endswith(".json") for n in os.listdir(os.path.join(c.store, "journal"))), "host 1's journal entry is left")

        err, msg = h2.try_call("Snapshot", "vm", "vda", opts())
        check_eq(err, "org.vdisk1.Error.InUse", "at once, host 2 is refused: host 1's lease has not expired")
        check("cluster host 1" in str(msg), f"naming host 1 ({msg})")
        new = None
        while time.time() < died + 180:
            err, res = h2.try_call("Snapshot", "vm", "vda", opts())
            if err != "org.vdisk1.Error.InUse":
                break
            time.sleep(2)
        took = time.time() - died
        check_eq(err, None, f"host 2's Snapshot succeeds once host 1 is dead ({took:.0f} s after the kill)")
        check(took > 30, f"and not before sanlock considered it dead ({took:.0f} s)")
        new = str(res) if err is None else None
        check_eq(h2.chain("vm"), [new] + before, "the commit was rolled back; host 2's layer is on top of the old chain")
        check_eq(h2.guest_hash("vm"), content, "what the guest sees is unchanged")
        check("Recovered 1 interrupted operation(s) under cluster lease vm:vm" in h2.env.log_text(), "host 2 logs the recovery")
        check_eq([n for n in os.listdir(os.path.join(c.store, "journal")) if not n.startswith(".")], [], "no journal entry is left")
        check_eq(list(h2.call("Verify", "vm")), [], "Verify on host 2 is clean")
        check_eq(c.orphans(), [], "no orphan files, records or journal entries")
        h2.env.check_sanitizers()
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
