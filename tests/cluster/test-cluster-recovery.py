#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Recovery under leases (issue 20): an operation interrupted on one host (its vdiskd SIGKILLed at a crash
point, so that its journal entry stays and sanlock frees its leases) is rolled back or forward by the
next host that takes the lease it held, before that host's own operation reads anything; or, if nobody
touches that VM, by the periodic scan of a host (here: the crashed host itself once restarted).

For each crash point of Snapshot (which commits through the journal in cluster mode) and of CreateImage
(the catalog): the chain or catalog afterwards is exactly the old one plus what was committed, no journal
entry is left, Verify is clean on both hosts and the store holds no orphan file or record."""

import os
import subprocess
import time

import dbus

import clustertest
from clustertest import check, check_eq, finish, opts

SNAPSHOT_POINTS = ["after-journal", "after-layer-record", "after-file", "before-commit", "after-commit"]
IMAGE_POINTS = ["after-journal", "after-layer-record", "after-file", "after-commit"]


def chain(host, vm, disk="vda"):
    return [str(x[0]) for x in host.call("GetChain", vm, disk)]


def journal(c):
    d = os.path.join(c.store, "journal")
    return sorted(n for n in os.listdir(d) if not n.startswith(".")) if os.path.isdir(d) else []


def crash(host, point, call):
    """Restarts host's vdiskd armed with `point`, makes `call`, expects vdiskd to SIGKILL itself."""
    host.env.stop()
    daemon = host.start_vdiskd({"VDISKD_CRASH_AT": point})
    host.wait_joined()
    try:
        call()
        died = False
    except dbus.exceptions.DBusException:
        died = True
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    check(died and daemon.returncode == -9, f"{point}: host {host.host_id}'s vdiskd killed itself there (rc {daemon.returncode})")
    host.env.wait_name_gone()


def call_after_crash(host, method, *args):
    """The call, retried while it answers InUse: sanlock frees a dead client's leases when it notices the
    client gone, a moment after the SIGKILL."""
    end = time.time() + 15
    while True:
        err, res = host.try_call(method, *args)
        if err != "org.vdisk1.Error.InUse" or time.time() > end:
            check_eq(err, None, f"{method} on host {host.host_id} after the crash succeeds ({res if err else ''})")
            return res
        time.sleep(0.1)


def wait_for(what, cond, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            check(True, what)
            return True
        time.sleep(0.1)
    check(False, what)
    return False


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 2)
    try:
        h1, h2 = c.hosts
        vms = []
        # Snapshot: host 1 dies in it; host 2's own Snapshot of the same disk recovers it first.
        for k, point in enumerate(SNAPSHOT_POINTS):
            vm = f"vm{k}"
            vms.append(vm)
            h2.call("CreateVM", vm, dbus.UInt32(0), opts())
            h2.call("CreateDisk", vm, "vda", "", dbus.UInt64(16 << 20), opts())
            before = chain(h2, vm)
            crash(h1, f"snapshot:{point}", lambda: h1.call("Snapshot", vm, "vda", opts()))
            check(len(journal(c)) == 1, f"snapshot:{point}: host 1's entry is left in the journal ({journal(c)})")
            new = str(call_after_crash(h2, "Snapshot", vm, "vda", opts()))
            after = chain(h2, vm)
            committed = point == "after-commit"
            check_eq(len(after), len(before) + (2 if committed else 1),
                     f"snapshot:{point}: host 2's Snapshot after host 1's was {'rolled forward' if committed else 'rolled back'}")
            check_eq(after[0], new, f"snapshot:{point}: host 2's layer is the top")
            check_eq(after[-len(before):], before, f"snapshot:{point}: the old chain is below")
            check_eq(journal(c), [], f"snapshot:{point}: no journal entry is left")
            check("Recovered 1 interrupted operation(s) under cluster lease vm:" + vm in h2.env.log_text(),
                  f"snapshot:{point}: host 2 logs the recovery")
            check_eq(c.orphans(), [], f"snapshot:{point}: no orphan")
            h1.start_vdiskd()
            h1.wait_joined()
            check_eq(chain(h1, vm), after, f"snapshot:{point}: host 1, restarted, sees the same chain")

        # CreateImage: host 1 dies in it; host 2's next catalog operation recovers it.
        for k, point in enumerate(IMAGE_POINTS):
            crash(h1, f"create-image:{point}", lambda: h1.call("CreateImage", f"img{k}", "qcow2", dbus.UInt64(8 << 20), opts()))
            call_after_crash(h2, "CreateImage", f"other{k}", "qcow2", dbus.UInt64(8 << 20), opts())
            names = sorted(str(i[0]) for i in h2.call("ListImages"))
            committed = point == "after-commit"
            check_eq(f"img{k}" in names, committed,
                     f"create-image:{point}: host 1's image is {'there' if committed else 'gone'} after host 2's CreateImage")
            check_eq(journal(c), [], f"create-image:{point}: no journal entry is left")
            check_eq(c.orphans(), [], f"create-image:{point}: no orphan")
            h1.start_vdiskd()
            h1.wait_joined()

        # Nobody touches the VM: the restarted host's periodic scan recovers its own entry.
        vm = "vm-scan"
        vms.append(vm)
        h2.call("CreateVM", vm, dbus.UInt32(0), opts())
        h2.call("CreateDisk", vm, "vda", "", dbus.UInt64(16 << 20), opts())
        before = chain(h2, vm)
        crash(h1, "snapshot:after-file", lambda: h1.call("Snapshot", vm, "vda", opts()))
        check_eq(len(journal(c)), 1, "scan: the entry is left")
        h1.start_vdiskd()
        h1.wait_joined()
        wait_for("scan: the restarted host's scan recovers it without any call", lambda: journal(c) == [])
        check_eq(chain(h1, vm), before, "scan: the chain is the old one")
        check_eq(chain(h2, vm), before, "scan: host 2 sees the old one too")
        c.check_clean(vms)
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
