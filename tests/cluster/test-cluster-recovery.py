#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Recovery under leases (issue 20): an operation interrupted on one host (its vdiskd SIGKILLed at a crash
point, so that its journal entry stays and sanlock frees its leases) is rolled back or forward by the
next host that takes the lease it held, before that host's own operation reads anything; or, if nobody
touches that VM, by the periodic scan of a host (here: the crashed host itself once restarted).

For each crash point of Snapshot (which commits through the journal in cluster mode), CreateImage (the
catalog), CreateDisk, DeleteDisk and Commit (a job that changes its base in place): the chain, disks or
catalog afterwards are exactly the old ones or the new ones, what the guest sees is unchanged, no journal
entry is left, Verify is clean on both hosts and the store holds no orphan file or record."""

import os
import subprocess
import time

import dbus

import clustertest
from clustertest import check, check_eq, finish, opts

SNAPSHOT_POINTS = ["after-journal", "after-layer-record", "after-file", "before-commit", "after-commit"]
IMAGE_POINTS = ["after-journal", "after-layer-record", "after-file", "after-commit"]




def journal(c):
    d = os.path.join(c.store, "journal")
    return sorted(n for n in os.listdir(d) if not n.startswith(".")) if os.path.isdir(d) else []


def crash(host, point, call, env=None):
    """Restarts host's vdiskd armed with `point`, makes `call` (a job's call returns first), expects vdiskd
    to SIGKILL itself there."""
    host.env.stop()
    daemon = host.start_vdiskd(dict(env or {}, VDISKD_CRASH_AT=point))
    host.wait_joined()
    answer = "no error"
    try:
        call()
    except dbus.exceptions.DBusException as e:
        answer = f"{e.get_dbus_name()}: {e.get_dbus_message()}"
    try:
        daemon.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    check(daemon.returncode == -9, f"{point}: host {host.host_id}'s vdiskd killed itself there (rc {daemon.returncode}; "
          f"the call: {answer})")
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
            before = h2.chain(vm)
            crash(h1, f"snapshot:{point}", lambda: h1.call("Snapshot", vm, "vda", opts()))
            check(len(journal(c)) == 1, f"snapshot:{point}: host 1's entry is left in the journal ({journal(c)})")
            new = str(call_after_crash(h2, "Snapshot", vm, "vda", opts()))
            after = h2.chain(vm)
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
            check_eq(h1.chain(vm), after, f"snapshot:{point}: host 1, restarted, sees the same chain")

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

        # The VM record's other operations: host 2's next operation on the same VM recovers (CreateDisk of
        # another disk takes vm:NAME exclusively).
        for op, points, call, present in (
                ("create-disk", ["after-journal", "after-layer-record", "after-file", "before-commit", "after-commit"],
                 lambda h, vm: h.call("CreateDisk", vm, "vdb", "", dbus.UInt64(8 << 20), opts()), True),
                ("delete-disk", ["after-journal", "before-commit", "after-commit"],
                 lambda h, vm: h.call("DeleteDisk", vm, "vdb"), False)):
            for k, point in enumerate(points):
                vm = f"{op}-{k}"
                vms.append(vm)
                h2.call("CreateVM", vm, dbus.UInt32(0), opts())
                h2.call("CreateDisk", vm, "vda", "", dbus.UInt64(16 << 20), opts())
                if op == "delete-disk":
                    h2.call("CreateDisk", vm, "vdb", "", dbus.UInt64(8 << 20), opts())
                crash(h1, f"{op}:{point}", lambda: call(h1, vm))
                call_after_crash(h2, "CreateDisk", vm, "vdc", "", dbus.UInt64(8 << 20), opts())
                disks = sorted(str(d[0]) for d in h2.call("ListDisks", vm))
                committed = point == "after-commit"
                want = "vdb" in disks
                check_eq(want, present if committed else not present,
                         f"{op}:{point}: disk vdb is {'there' if want else 'gone'} ({'rolled forward' if committed else 'rolled back'})")
                check_eq(journal(c), [], f"{op}:{point}: no journal entry is left")
                check_eq(c.orphans(), [], f"{op}:{point}: no orphan")
                h1.start_vdiskd()
                h1.wait_joined()

        # Commit, a job that changes its base in place (undo log): host 1 dies anywhere in it, slowed so
        # that mid-copy is reached; host 2's Snapshot rolls it back (base restored from the undo log) or
        # forward (the chain without the committed layer); what the guest sees never changes.
        for k, point in enumerate(["after-journal", "after-mark", "mid-copy", "after-data", "after-header", "before-commit",
                                   "after-commit"]):
            vm = f"commit-{k}"
            vms.append(vm)
            h2.call("CreateVM", vm, dbus.UInt32(0), opts())
            h2.call("CreateDisk", vm, "vda", "", dbus.UInt64(16 << 20), opts())
            h2.write(vm, "0x11", 0)
            mid = str(h2.call("Snapshot", vm, "vda", opts()))
            h2.write(vm, "0x22", 1 << 20)
            h2.call("Snapshot", vm, "vda", opts())
            h2.write(vm, "0x33", 2 << 20)
            before, content = h2.chain(vm), h2.guest_hash(vm)
            crash(h1, f"commit:{point}", lambda: h1.call("Commit", vm, "vda", mid, opts()),
                  env={"VDISKD_TEST_STEP_BYTES": "65536"})
            # The Commit's exclusive disk lease is persistent: an orphan of host 1 until its vdiskd is back.
            err, msg = h2.try_call("Snapshot", vm, "vda", opts())
            check(err == "org.vdisk1.Error.InUse" and "cluster host 1" in str(msg),
                  f"commit:{point}: while host 1's vdiskd is down, its disk lease keeps the disk ({err}: {msg})")
            h1.start_vdiskd()
            h1.wait_joined()
            new = str(call_after_crash(h2, "Snapshot", vm, "vda", opts()))
            after = h2.chain(vm)
            committed = point == "after-commit"
            want = [new] + ([x for x in before if x != mid] if committed else before)
            check_eq(after, want, f"commit:{point}: {'rolled forward' if committed else 'rolled back'}, then host 2's snapshot")
            check_eq(h2.guest_hash(vm), content, f"commit:{point}: what the guest sees is unchanged")
            check_eq(list(h2.call("Verify", vm)), [], f"commit:{point}: Verify is clean")
            check_eq(journal(c), [], f"commit:{point}: no journal entry is left")
            check_eq(c.orphans(), [], f"commit:{point}: no orphan")

        # Nobody touches the VM: the restarted host's periodic scan recovers its own entry.
        vm = "vm-scan"
        vms.append(vm)
        h2.call("CreateVM", vm, dbus.UInt32(0), opts())
        h2.call("CreateDisk", vm, "vda", "", dbus.UInt64(16 << 20), opts())
        before = h2.chain(vm)
        crash(h1, "snapshot:after-file", lambda: h1.call("Snapshot", vm, "vda", opts()))
        check_eq(len(journal(c)), 1, "scan: the entry is left")
        h1.start_vdiskd()
        h1.wait_joined()
        wait_for("scan: the restarted host's scan recovers it without any call", lambda: journal(c) == [])
        check_eq(h1.chain(vm), before, "scan: the chain is the old one")
        check_eq(h2.chain(vm), before, "scan: host 2 sees the old one too")
        c.check_clean(vms)
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
