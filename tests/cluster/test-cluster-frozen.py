#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A host freezes in the middle of a Commit (issue 20): its sanlock daemon and its vdiskd are SIGSTOPped
together while the job copies (a VM host paused, a storage stall, a hung kernel), then, after another
host has taken over, SIGCONTed. Unlike a dead host (test-cluster-hostdeath) the frozen one comes back
believing it still holds its leases, with a job half done.

While it is frozen, host 2 is answered InUse naming host 1 until sanlock considers host 1 dead (8 ×
IoTimeout + 60 s in sanlock 3.8.5); then host 2's Snapshot takes the leases, rolls the interrupted
Commit back and adds its layer (see below for the image locks). Then host 1 is resumed. Whatever it does then, what must hold: host 1
never commits over host 2's state (host 2's chain and what the guest sees stay what host 2 made), no
journal entry and no orphan is left once host 1 is back (its vdiskd restarted if it died), and Verify is
clean from both hosts.

Observed here (sanlock 3.8.5, IoTimeout=1, no watchdog: -w 0):
- host 2 is answered InUse naming host 1 for 69-72 s after the freeze; then its Snapshot takes the
  leases and rolls the Commit back (journal entry and undo log gone), but is still InUse: "locked by
  another process". The frozen vdiskd holds QEMU's image locks (OFD locks) on the layers its Commit
  changes, and here all hosts share one kernel; NFS locks of a frozen client would do the same until the
  server's lease for them expires. So host 2 goes on with the VM record (a new disk and its snapshot),
  and takes its Snapshot of vda once host 1's vdiskd is gone.
- On SIGCONT (vdiskd half a second before its sanlock daemon, the worst order), vdiskd's overdue job
  step must not run: before each step vdiskd asks sanlock when this host last renewed its lease, and
  the answer (blocked until sanlock runs again) is 70 s old, so the job waits (daemon/cluster/
  cluster_renewal_fresh, the job gate). sanlock then finds its delta lease not renewed in time ("check_
  our_lease failed"); past its kill grace period (8 x IoTimeout + 40 s) it SIGKILLs vdiskd at once
  (0.0-0.2 s) instead of running vdiskd's kill path, and drops the lockspace. Before the gate, the step
  ran, failed ("cannot read an L2 table": host 2 restored the base) and its failure path rolled the
  Commit back under leases host 1 no longer held, rewriting the base's layer record (certain in this
  order; one run in two with both resumed at once). Checked: no roll-back by host 1, no failed step,
  the base's record untouched.
- vdiskd started again at once: sanlock still removes the lost lockspace (its add answers EAGAIN);
  vdiskd waits for that and joins then.
Takes about 90 s (its own suite, cluster-slow)."""

import hashlib
import os
import re
import signal
import subprocess
import time

import dbus

import clustertest
from clustertest import check, check_eq, finish, opts

# The commit copies 4 MiB, 128 KiB per step, each step waiting 200 ms: some 6 s, time to freeze host 1 in
# the middle and for its sanlock daemon to act on resuming before the job ends.
SLOW = {"VDISKD_TEST_STEP_BYTES": str(128 << 10), "VDISKD_TEST_STEP_DELAY_MS": "200"}
INUSE = "org.vdisk1.Error.InUse"
LOCKED = "locked by another process"


def job_progress(host, path):
    props = dbus.Interface(host.env.bus.get_object("org.vdisk1", path, introspect=False), "org.freedesktop.DBus.Properties")
    return int(props.Get("org.vdisk1.Job", "BytesDone")), int(props.Get("org.vdisk1.Job", "BytesTotal"))


def entries(c):
    """Journal entries (not their undo logs)."""
    d = os.path.join(c.store, "journal")
    return sorted(n for n in os.listdir(d) if n.endswith(".json") and not n.startswith("."))


def guest_hash(host, vm, disk="vda"):
    """sha256 of what the guest sees; -U: the frozen vdiskd may still hold the images' locks."""
    top = host.call("GetChain", vm, disk)[0]
    out = os.path.join(host.cluster.tmp, "guest.raw")
    subprocess.run(["qemu-img", "convert", "-U", "-f", str(top[2]), "-O", "raw", os.path.join(host.cluster.store, str(top[1])), out],
                   check=True, capture_output=True)
    with open(out, "rb") as f:
        h = hashlib.sha256(f.read()).hexdigest()
    os.unlink(out)
    return h


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 2, start=False)
    stopped = []
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
        before, content = h2.chain("vm"), guest_hash(h2, "vm")

        job = str(h1.call("Commit", "vm", "vda", mid, opts()))
        end = time.time() + 30
        done, total = job_progress(h1, job)
        while done * 4 < total and time.time() < end:
            time.sleep(0.05)
            done, total = job_progress(h1, job)
        check(0 < done < total, f"host 1's commit is in the middle of its copy ({done} of {total} bytes)")
        # Host 1 freezes: both processes, sanlock first (a vdiskd stopped alone would keep its leases alive).
        sanlock_pid, vdiskd_pid = h1.sanlock.pid, h1.env.daemon.pid
        os.kill(sanlock_pid, signal.SIGSTOP)
        stopped.append(sanlock_pid)
        os.kill(vdiskd_pid, signal.SIGSTOP)
        stopped.append(vdiskd_pid)
        frozen = time.time()
        check_eq(len(entries(c)), 1, "host 1's journal entry is there")

        err, msg = h2.try_call("Snapshot", "vm", "vda", opts())
        check_eq(err, INUSE, "at once, host 2 is refused: host 1's leases are held")
        check("cluster host 1" in str(msg), f"naming host 1 ({msg})")
        while time.time() < frozen + 180:
            err, res = h2.try_call("Snapshot", "vm", "vda", opts())
            if err != INUSE or "cluster host 1" not in str(res):
                break
            time.sleep(2)
        took = time.time() - frozen
        print(f"host 2 was answered InUse naming host 1 for {took:.0f} s, then: {err}: {res}")
        check(err is None or (err == INUSE and LOCKED in str(res)),
              f"host 2's Snapshot takes the leases once host 1's expired ({took:.0f} s after the freeze; {err}: {res})")
        check("Recovered 1 interrupted operation(s) under cluster lease vm:vm" in h2.env.log_text(), "host 2 logs the recovery")
        check_eq(entries(c), [], "host 2 ended host 1's journal entry")
        # The frozen vdiskd still holds QEMU's image locks (OFD locks) of the layers its Commit changes:
        # on this one machine they stop host 2's Snapshot of that disk (as NFS locks of a frozen client
        # would, until the server's lease for them expires), not its other changes of the VM.
        snap = [str(res)] if err is None else []
        check_eq(h2.chain("vm"), snap + before, "the commit was rolled back (and host 2's layer is on top)")
        check_eq(guest_hash(h2, "vm"), content, "what the guest sees is unchanged")
        h2.call("CreateDisk", "vm", "vdb", "", dbus.UInt64(8 << 20), opts())
        h2.write("vm", "0x44", 0, disk="vdb")
        h2.call("Snapshot", "vm", "vdb", opts())
        mine = {"vda": h2.chain("vm"), "vdb": h2.chain("vm", "vdb")}
        content_b = guest_hash(h2, "vm", "vdb")

        base_record = os.path.join(c.store, "records", f"layer-{before[-1]}.json")
        base_mtime = os.stat(base_record).st_mtime_ns

        # Host 1 wakes up. Both at once, sanlock would notice its lost lease at its next check (once a
        # second) while vdiskd's overdue job step runs at once: vdiskd first, sanlock half a second later,
        # makes that worst case certain.
        os.kill(vdiskd_pid, signal.SIGCONT)
        stopped.remove(vdiskd_pid)
        time.sleep(0.5)
        os.kill(sanlock_pid, signal.SIGCONT)
        stopped.clear()
        resumed = time.time()
        # sanlock finds its lease lost. Frozen for longer than 8 × IoTimeout + its kill grace period (-g,
        # 40 s), it SIGKILLs vdiskd at once rather than running its kill path. Meanwhile vdiskd, resumed
        # first, must not take its overdue job step: sanlock reports its last renewal as too old (the gate).
        fenced = "sanlock ran vdiskd's kill path"
        end = time.time() + 60
        while fenced not in h1.env.log_text() and h1.env.daemon.poll() is None and time.time() < end:
            time.sleep(0.2)
        rc = h1.env.daemon.poll()
        print(f"host 1's vdiskd {'fenced through its kill path' if fenced in h1.env.log_text() else 'not told'}, "
              f"{'ended with ' + str(rc) if rc is not None else 'alive'}, {time.time() - resumed:.1f} s after the SIGCONT "
              "of its sanlock daemon")
        check(rc is not None or fenced in h1.env.log_text(), "host 1's vdiskd was fenced (killed, or told through its kill path)")
        # Whatever host 1 did: host 2's state is what host 2 made.
        state = {d: h2.chain("vm", d) for d in sorted(str(x[0]) for x in h2.call("ListDisks", "vm"))}
        check_eq(state, mine, "host 1 did not commit over host 2's VM record or chains")
        check_eq(guest_hash(h2, "vm"), content, "what the guest sees on vda is still unchanged")
        check_eq(guest_hash(h2, "vm", "vdb"), content_b, "and on vdb")
        check_eq(list(h2.call("Verify", "vm")), [], "Verify on host 2 is clean")
        check(h1.sanlock.poll() is None, "host 1's sanlock daemon is still running")
        if not snap:
            # host 1's locks went with its vdiskd: host 2's Snapshot of vda now goes through.
            end = time.time() + 15
            while True:
                err, res = h2.try_call("Snapshot", "vm", "vda", opts())
                if err != INUSE or time.time() > end:
                    break
                time.sleep(0.2)
            check_eq(err, None, f"host 2's Snapshot of vda, once host 1's vdiskd is gone ({res if err else ''})")
            if err is None:
                mine["vda"] = [str(res)] + mine["vda"]
            check_eq(h2.chain("vm"), mine["vda"], "host 2's layer is on top of the old chain")

        log1 = h1.env.log_text()
        print("host 1's job " + ("waited for its lease (the gate held its overdue step)"
                                 if "waits: this host's cluster lease is not known to be valid now" in log1
                                 else "said nothing before it ended"))
        check("commit of disk 'vda' of VM 'vm' rolled back" not in log1, "host 1 did not roll its Commit back itself")
        check("cannot read an L2 table" not in log1 and not re.search(r"Job \d+ failed", log1),
              "host 1's overdue job step did not run (it would fail: host 2 restored the base)")
        check_eq(os.stat(base_record).st_mtime_ns, base_mtime,
                 "host 1 did not rewrite the base's layer record after it lost its leases")
        if rc is not None:
            h1.env.wait_name_gone()
            # Started within a second or so of the loss: sanlock still removes the lost lockspace (its add
            # answers EAGAIN); vdiskd starts anyway and joins once that is done.
            h1.start_vdiskd()
        h1.wait_joined(timeout=180)
        check_eq(h1.chain("vm"), mine["vda"], "host 1 (back) sees host 2's chain")
        check_eq(guest_hash(h1, "vm"), content, "and the same guest content")
        check_eq(list(h1.call("Verify", "vm")), [], "Verify on host 1 is clean")
        check_eq(entries(c), [], "no journal entry is left")
        check_eq(c.orphans(), [], "no orphan files, records or journal entries")
        # And host 1 works again: its Snapshot goes on top of host 2's.
        err, res = h1.try_call("Snapshot", "vm", "vda", opts())
        check_eq(err, None, f"host 1's Snapshot after it came back succeeds ({res if err else ''})")
        if err is None:
            check_eq(h2.chain("vm"), [str(res)] + mine["vda"], "on top of host 2's layer")
        c.check_clean(["vm"])
    finally:
        for pid in stopped:  # only our own stopped processes
            os.kill(pid, signal.SIGCONT)
        c.close()
    finish()


if __name__ == "__main__":
    main()
