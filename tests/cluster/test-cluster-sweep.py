#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The orphan sweep in cluster mode (issue 20; docs/design.md, "The orphan sweep in cluster mode"): host 2
sweeps often (VDISKD_TEST_SWEEP_USEC, a test hook).

1. Orphans planted in the shared store (an unreferenced file, a private layer record no disk uses, a layer
   record left creating with no journal entry, an undo log of no entry, old temporaries) are removed;
   a fresh temporary stays; every other file of the store keeps its bytes, and chains, catalog and
   Verify are unchanged on both hosts.
2. What another host's pending journal entry names is kept: host 1's vdiskd dies in a Snapshot after the
   new layer's file (snapshot:after-file) and stays down; host 2, started then, sweeps (an orphan planted
   meanwhile makes it remove something) before its recovery scan rolls host 1's entry back; the new
   layer's record and file are still there after the sweep, and the roll-back then finds them.
3. Operations running on host 1 (a Commit slowed down by test hooks, snapshots, disks created and
   deleted) while host 2 sweeps every 200 ms, with orphans planted all along so that real sweeps (under
   the catalog lease) run among them: host 2 removes nothing but the planted orphans, the chains verify
   clean and what the guest sees is unchanged."""

import json
import os
import secrets
import threading
import time

import dbus

import clustertest
from clustertest import check, check_eq, finish, opts

FAST = {"VDISKD_TEST_SWEEP_USEC": "1000000"}
SUMMARY = "Orphan sweep of the shared store: "


def new_id():
    return secrets.token_hex(16)


def put(path, data, age=None):
    """Writes `data` at `path` (renamed into place, as vdiskd writes its records); `age`: mtime so many
    seconds ago."""
    tmp = os.path.join(os.path.dirname(os.path.dirname(path)), f"planting-{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, path)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))


def record(c, layer):
    with open(os.path.join(c.store, "records", f"layer-{layer}.json")) as f:
        return json.load(f)


def plant_layer(c, template, state, catalog=None):
    """A layer record copied from `template`'s, under a new id, with its file."""
    lid = new_id()
    rec = record(c, template)
    fmt = rec["format"]
    rec.update({"layer": lid, "file": f"{lid}.{fmt}", "state": state})
    rec.update({"backing_layer": None, "backing_format": None, "data_file": None})
    rec.pop("data_file_raw", None)
    rec.pop("data_file_inode", None)
    if catalog:
        rec.update({"vm": None, "catalog_name": catalog})
    with open(os.path.join(c.store, "images", template + "." + fmt), "rb") as f:
        put(os.path.join(c.store, "images", rec["file"]), f.read())
    put(os.path.join(c.store, "records", f"layer-{lid}.json"), json.dumps(rec).encode())
    return lid, [f"records/layer-{lid}.json", f"images/{rec['file']}"]


def plant_file(c):
    name = f"{new_id()}.qcow2"
    put(os.path.join(c.store, "images", name), b"not referenced by anything" * 100)
    return f"images/{name}"


def journal(c):
    return sorted(n for n in os.listdir(os.path.join(c.store, "journal")) if not n.startswith("."))


def state_of(c, hosts, vms):
    """Chains, disks and catalog as every host answers them."""
    out = {}
    for h in hosts:
        out[f"host{h.host_id} images"] = sorted((str(i[0]), str(i[1])) for i in h.call("ListImages"))
        for vm in vms:
            for d in h.call("ListDisks", vm):
                out[f"host{h.host_id} {vm}/{d[0]}"] = h.chain(vm, str(d[0]))
    return out


def job_state(host, path):
    props = dbus.Interface(host.env.bus.get_object("org.vdisk1", path, introspect=False), "org.freedesktop.DBus.Properties")
    return str(props.Get("org.vdisk1.Job", "State"))


def wait_for(what, cond, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            check(True, what)
            return True
        time.sleep(0.1)
    check(False, what)
    return False


def exists(c, rel):
    return os.path.exists(os.path.join(c.store, rel))


def summaries(h):
    return [line for line in h.env.log_text().splitlines() if SUMMARY in line]


def removals(h):
    return [line for line in h.env.log_text().splitlines() if "Removing " in line]


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 2, start=False)
    try:
        h1, h2 = c.hosts
        h1.start_vdiskd()
        h2.start_vdiskd(FAST)
        for h in c.hosts:
            h.wait_joined()
        vms = ["vm1", "vm2"]
        h1.call("CreateImage", "base", "qcow2", dbus.UInt64(16 << 20), opts())
        h1.call("CreateVM", "vm1", dbus.UInt32(0), opts())
        h1.call("CreateDisk", "vm1", "vda", "base", dbus.UInt64(0), opts())
        h1.write("vm1", "0x11", 0)
        h1.call("Snapshot", "vm1", "vda", opts())
        h2.call("CreateVM", "vm2", dbus.UInt32(0), opts())
        h2.call("CreateDisk", "vm2", "vda", "", dbus.UInt64(16 << 20), opts())
        h2.write("vm2", "0x22", 0)
        private = h1.chain("vm1")[0]
        base = h1.chain("vm1")[-1]

        # 1. Planted orphans go; nothing else changes.
        before_state = state_of(c, c.hosts, vms)
        before_files = c.snapshot_store()
        # Host 1's own first sweep (once joined) may come now too: either host's removals count here.
        n_summaries = len(summaries(h1)) + len(summaries(h2))
        planted = [plant_file(c)]
        layers = [plant_layer(c, private, "ready"),               # private, no disk uses it
                  plant_layer(c, private, "creating"),            # never finished, no entry
                  plant_layer(c, base, "creating", "half-made")]  # a catalog image never finished
        for _, paths in layers:
            planted += paths
        undo = f"journal/{new_id()}-{private}.undo"
        put(os.path.join(c.store, undo), b"\0" * 4096)
        planted.append(undo)
        old_tmps = [f"images/.#{new_id()}.qcow2", f"records/.#layer-{new_id()}.json.0123456789abcdef",
                    f"journal/.#{new_id()}.json.0123456789abcdef"]
        for t in old_tmps:
            put(os.path.join(c.store, t), b"interrupted", age=2 * 3600)
        planted += old_tmps
        fresh_tmp = f"images/.#{new_id()}.qcow2"
        put(os.path.join(c.store, fresh_tmp), b"being written right now")
        check(len(c.orphans()) >= 4, f"the planted orphans are orphans for the test too ({c.orphans()})")
        wait_for("the sweep removes every planted orphan", lambda: not any(exists(c, p) for p in planted))
        wait_for("the sweep is logged", lambda: len(summaries(h1)) + len(summaries(h2)) > n_summaries)
        for p in planted:
            check(not exists(c, p), f"{p} was removed")
        layer_files = {p for _, paths in layers for p in paths}
        logged = removals(h1) + removals(h2)
        for p in planted:
            if p not in layer_files:
                check(any(os.path.basename(p) in line for line in logged), f"the removal of {p} is logged")
        for lid, _ in layers:
            check(any(f"Removing orphaned layer {lid}" in line for line in logged), f"the removal of layer {lid} is logged")
        check(exists(c, fresh_tmp), "a fresh temporary (a write in progress elsewhere) stays")
        os.unlink(os.path.join(c.store, fresh_tmp))
        check_eq(c.snapshot_store(), before_files, "every other file of the store has the same bytes")
        check_eq(state_of(c, c.hosts, vms), before_state, "chains, disks and catalog are unchanged on both hosts")
        c.check_clean(vms)

        # 2. Host 1 dies in a Snapshot of vm2 after the new layer's file; host 2, started now, sweeps first.
        vm = "vm2"
        before = h2.chain(vm)
        h2.env.stop()
        h1.env.stop()
        daemon = h1.start_vdiskd({"VDISKD_CRASH_AT": "snapshot:after-file"})
        h1.wait_joined()
        err, _ = h1.try_call("Snapshot", vm, "vda", opts())
        daemon.wait(timeout=60)
        check_eq(daemon.returncode, -9, f"host 1's vdiskd killed itself at snapshot:after-file ({err})")
        h1.env.wait_name_gone()
        entries = journal(c)
        check_eq(len(entries), 1, "host 1's entry is left in the journal")
        with open(os.path.join(c.store, "journal", entries[0])) as f:
            new_layers = json.load(f)["new_layers"]
        check_eq(len(new_layers), 1, "the entry names the new layer")
        new = new_layers[0]
        named = [f"records/layer-{new}.json", f"images/{record(c, new)['file']}"]
        for p in named:
            check(exists(c, p), f"{p}, named by the entry, is there before the sweep")
        bait = plant_file(c)
        n_summaries = len(summaries(h2))
        h2.start_vdiskd(FAST)
        h2.wait_joined()
        wait_for("host 2 sweeps (the planted file goes)", lambda: not exists(c, bait))
        wait_for("host 2 logs that sweep", lambda: len(summaries(h2)) > n_summaries)
        first = summaries(h2)[n_summaries]
        check("1 removed, 2 kept for 1 pending operation(s)" in first,
              f"the sweep removed the planted file and kept the layer record and file of host 1's entry: {first}")
        check(not any(new in line for line in removals(h2)), "host 2 removed nothing the entry names")
        # The recovery scan rolls the entry back right after; while the entry is there, so is its layer.
        if journal(c):
            for p in named:
                check(exists(c, p) or not journal(c), f"{p} is still there while the entry is pending")
        wait_for("host 2's recovery scan rolls host 1's entry back", lambda: journal(c) == [])
        check("Rolling back interrupted operation snapshot" in h2.env.log_text(), "host 2 logs the roll-back")
        check_eq(h2.chain(vm), before, "the chain is the old one")
        for p in named:
            check(not exists(c, p), f"{p} went with the roll-back")
        # A record being written by another host right now (its temporary, fresh) survives a vdiskd
        # starting in cluster mode (in local mode a start removes every temporary of records/).
        writing = f"records/.#vm-{vm}.json.{new_id()[:16]}"
        put(os.path.join(c.store, writing), b"another host's record write in progress")
        h1.start_vdiskd()
        h1.wait_joined()
        check_eq(h1.chain(vm), before, "host 1, restarted, sees the old chain")
        check(exists(c, writing), "a starting vdiskd leaves another host's fresh record temporary alone")
        os.unlink(os.path.join(c.store, writing))
        c.check_clean(vms)

        # 3. Host 1 works (a slowed Commit, snapshots, disks made and deleted) while host 2 sweeps every
        # 200 ms, among planted orphans.
        h2.env.stop()
        h1.env.stop()
        h1.start_vdiskd({"VDISKD_TEST_STEP_BYTES": "65536", "VDISKD_TEST_STEP_DELAY_MS": "100"})
        h2.start_vdiskd({"VDISKD_TEST_SWEEP_USEC": "200000"})
        for h in c.hosts:
            h.wait_joined()
        vm = "vm3"
        vms.append(vm)
        h1.call("CreateVM", vm, dbus.UInt32(0), opts())
        h1.call("CreateDisk", vm, "vda", "", dbus.UInt64(16 << 20), opts())
        h1.write(vm, "0x11", 0, 4 << 20)
        mid = str(h1.call("Snapshot", vm, "vda", opts()))
        h1.write(vm, "0x22", 1 << 20, 4 << 20)
        h1.call("Snapshot", vm, "vda", opts())
        h1.write(vm, "0x33", 3 << 20)
        chain, content = h1.chain(vm), h1.guest_hash(vm)
        stop = threading.Event()
        baits = []

        def planter():
            while not stop.is_set():
                baits.append(plant_file(c))
                time.sleep(0.3)

        log_start = [len(h.env.log_text()) for h in c.hosts]
        t = threading.Thread(target=planter)
        t.start()
        try:
            job = h1.call("Commit", vm, "vda", mid, opts())
            check_eq(job_state(h1, job), "running", "host 1's Commit runs (slowed down)")
            for _ in range(12):
                h1.call("Snapshot", "vm1", "vda", opts())
                h1.call("CreateDisk", "vm1", "vdb", "", dbus.UInt64(1 << 20), opts())
                h1.call("Snapshot", "vm1", "vdb", opts())
                h1.call("DeleteDisk", "vm1", "vdb")
            check_eq(h1.env.wait_job(job)[0], "done", "the Commit ends")
        finally:
            stop.set()
            t.join()
        wait_for("host 2 removes the last planted file too", lambda: not any(exists(c, b) for b in baits))
        # Host 1's first sweep once restarted may remove planted files too: both hosts' logs count.
        removed = [line for h, start in zip(c.hosts, log_start) for line in h.env.log_text()[start:].splitlines()
                   if "Removing " in line]
        check(len(removed) >= 3, f"sweeps removed planted files during the operations ({len(removed)})")
        bait_names = {os.path.basename(b) for b in baits}
        others = [line for line in removed if not any(b in line for b in bait_names)]
        check_eq(others, [], "no host removed anything but the planted files")
        check_eq(h1.chain(vm), [x for x in chain if x != mid], "the Commit's chain")
        check_eq(h2.chain(vm), [x for x in chain if x != mid], "host 2 sees it")
        check_eq(h2.guest_hash(vm), content, "what the guest sees is unchanged")
        c.check_clean(vms)
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
