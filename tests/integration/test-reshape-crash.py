# SPDX-License-Identifier: LGPL-2.1-or-later
"""Crash consistency of Rebase, flatten and Commit.

1. Every injected point (VDISKD_CRASH_AT=<op>:<point>) of safe rebase onto a lower private layer,
   onto the chain's own catalog image and onto another catalog image, of flatten, of commit of a
   middle layer, of the top layer and into a raw layer, of the same written into external data files
   (qcow2 with a data file, qcow2 with a raw data file), and of unsafe rebase: vdiskd SIGKILLs itself
   there, is restarted, and then
   - the disk's chain is exactly the old one (before the commit point) or exactly the new one
     (after-commit);
   - the guest view is unchanged;
   - rolled back: every image file of the store is byte-identical to before and every record equal
     to before; rolled forward: every file but the changed layers' is byte-identical, the dropped
     layers are gone, each record names the next layer of the chain as its backing, and a committed
     layer's content now is the target's;
   - no orphan file or record, empty journal (no undo logs), every layer ready, Verify clean,
     qemu-img check clean, qemu-img sees the chain GetChain reports;
   - a rolled-back operation then runs to completion (and the same checks hold for its result).
2. A randomized loop SIGKILLs the daemon from outside at random moments of slow jobs
   (VDISKD_TEST_STEP_BYTES=65536, VDISKD_TEST_STEP_DELAY_MS=5) and checks the same: old state
   exactly, or new state. VDISK_RESHAPE_RUNS (default 60) and VDISK_RESHAPE_SEED set it up; the seed
   is printed so that a failure can be replayed. VDISK_RESHAPE_ONLY=name,... limits part 1 to some
   scenarios.

Run: PYTHONPATH=tests/integration /usr/bin/python3 tests/integration/test-reshape-crash.py VDISKD VDISK_IMG
(VDISK_IMG is accepted for symmetry with the other integration tests and not used).
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import dbus

from vdisktest import Env, check, check_eq, finish, opts, qemu_img, require, root_only

MiB = 1 << 20

STEP_ENV = {"VDISKD_TEST_STEP_BYTES": "65536"}
SLOW_ENV = {"VDISKD_TEST_STEP_BYTES": "65536", "VDISKD_TEST_STEP_DELAY_MS": "5"}

ALL_POINTS = ["after-journal", "after-mark", "mid-copy", "after-data", "after-header", "before-commit", "after-commit"]
# Unsafe rebase copies nothing: the contract names these points for it ...
UNSAFE_POINTS = ["after-journal", "after-header", "after-commit"]
# ... and these may or may not be reached; if one is, the same invariants hold.
UNSAFE_MAYBE = ["after-mark", "after-data", "before-commit"]

DISK_SIZE = 40 * MiB  # over a 32 MiB catalog image: the top end of the disk lies past the base's end


# ---------------------------------------------------------------- helpers


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def qemu_io(fmt, path, *cmds):
    argv = ["qemu-io", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    argv.append(os.path.basename(path))
    # Run beside the image: qemu resolves an external data file's name from the working directory.
    p = subprocess.run(argv, capture_output=True, text=True, cwd=os.path.dirname(path))
    out = p.stdout + p.stderr
    if p.returncode != 0 or "failed" in out.lower() or "error" in out.lower():
        raise RuntimeError(f"qemu-io {cmds} on {path}: {out}")


def records(env):
    out = {}
    d = os.path.join(env.store, "records")
    for n in os.listdir(d):
        with open(os.path.join(d, n)) as f:
            out[n] = json.load(f)
    return out


_hash_cache = {}


def image_hashes(env):
    """sha256 of every image file. Cached by inode, size, mtime and ctime: any write, truncation or
    restore changes ctime, which no one can set back."""
    d = os.path.join(env.store, "images")
    out = {}
    for n in os.listdir(d):
        st = os.stat(os.path.join(d, n))
        key = (n, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in _hash_cache:
            _hash_cache[key] = sha_file(os.path.join(d, n))
        out[n] = _hash_cache[key]
    return out


def layer_files(recs, layer):
    """A layer's files in images/: its image and its external data file, if any."""
    r = recs[f"layer-{layer}.json"]
    return {r["file"]} | ({r["data_file"]} if r.get("data_file") else set())


def chain(env, vm, disk):
    err, res = env.error("GetChain", vm, disk)
    if err:
        return err
    return [str(layer[0]) for layer in res]


def save_view(env, rel, fmt, out):
    """What an image shows through its backing chain (qemu-img follows the sibling names), as a raw file."""
    p = qemu_img("convert", "-f", fmt, "-O", "raw", os.path.basename(rel), out, cwd=os.path.join(env.store, "images"))
    if p.returncode != 0:
        raise RuntimeError(f"qemu-img convert {rel}: {p.stderr}")


def same_view(env, rel, fmt, ref):
    """True if the image shows exactly the raw file `ref` (same size, same bytes), else a description."""
    path, cwd = os.path.basename(rel), os.path.join(env.store, "images")
    p = qemu_img("info", "--output=json", "-f", fmt, path, cwd=cwd)
    if p.returncode != 0:
        return "qemu-img info failed: " + p.stderr.strip()
    size = json.loads(p.stdout)["virtual-size"]
    if size != os.path.getsize(ref):
        return f"virtual size {size}, want {os.path.getsize(ref)}"
    p = qemu_img("compare", "-f", fmt, "-F", "raw", path, ref, cwd=cwd)
    return True if p.returncode == 0 else (p.stdout + p.stderr).strip()


def top_rel(env, vm, disk):
    err, res = env.error("GetChain", vm, disk)
    if err:
        raise RuntimeError(f"GetChain {vm}/{disk}: {err}")
    return str(res[0][1]), str(res[0][2])


def layer_rel(env, layer):
    r = records(env)[f"layer-{layer}.json"]
    return "images/" + r["file"], r["format"]


checked = set()  # qcow2 files already checked by qemu-img, unchanged since


def check_store_invariants(env, label):
    """No orphans: every image file has a ready record and vice versa, the journal is empty (no undo
    logs either), no temporaries; Verify is clean for every VM; qemu-img check is clean."""
    recs = records(env)
    images = set(os.listdir(os.path.join(env.store, "images")))
    layers = {r["file"]: r for n, r in recs.items() if n.startswith("layer-")}
    recorded = set(layers) | {r["data_file"] for r in layers.values() if r.get("data_file")}
    check_eq(sorted(images), sorted(recorded), f"{label}: image (and data) files and layer records match one to one")
    not_ready = [(r["layer"][:8], r["state"]) for r in layers.values() if r["state"] != "ready"]
    check_eq(not_ready, [], f"{label}: every layer record is ready")
    check_eq(sorted(os.listdir(os.path.join(env.store, "journal"))), [], f"{label}: journal is empty (no entries, no undo logs)")
    check_eq([n for n in os.listdir(os.path.join(env.store, "records")) if n.startswith(".")], [],
             f"{label}: no temporary records")
    used = set()
    for n, r in recs.items():
        if n.startswith("vm-"):
            for d in r["disks"]:
                used |= set(d["chain"])
                for layer in d["chain"]:
                    check(f"layer-{layer}.json" in recs, f"{label}: chain layer {layer[:8]} of {r['name']} has a record")
    private = {r["layer"] for r in layers.values() if r["vm"]}
    check_eq(sorted(private - used), [], f"{label}: every private layer belongs to a disk")
    for n, r in recs.items():
        if n.startswith("vm-"):
            problems = env.call("Verify", r["name"])
            check_eq([tuple(map(str, p)) for p in problems], [], f"{label}: Verify {r['name']} is clean")
    for f, r in layers.items():
        st = os.stat(os.path.join(env.store, "images", f))
        key = (f, st.st_ino, st.st_size, st.st_mtime_ns)
        if r["format"] == "qcow2" and key not in checked:
            p = qemu_img("check", "-f", "qcow2", f, cwd=os.path.join(env.store, "images"))
            check(p.returncode == 0, f"{label}: qemu-img check {f[:8]} clean" + ("" if p.returncode == 0 else ": " + p.stdout))
            checked.add(key)


def check_qemu_sees_chain(env, vm, disk, label):
    """qemu-img, reading the headers alone, finds the chain GetChain reports (files and formats)."""
    res = env.call("GetChain", vm, disk)
    want = [(os.path.basename(str(x[1])), str(x[2])) for x in res]
    p = qemu_img("info", "--backing-chain", "--output=json", "-f", str(res[0][2]), os.path.basename(str(res[0][1])),
                 cwd=os.path.join(env.store, "images"))
    if not check(p.returncode == 0, f"{label}: qemu-img info --backing-chain works" + ("" if p.returncode == 0 else ": " + p.stderr)):
        return
    got = [(os.path.basename(i["filename"]), i["format"]) for i in json.loads(p.stdout)]
    check_eq(got, want, f"{label}: qemu-img follows the headers through exactly the recorded chain")


# ---------------------------------------------------------------- scenarios


class Base:
    """Catalog images shared by all scenarios."""
    base = alt = base2 = None


def import_catalog(env, name, path):
    err, msg = env.import_file(name, "qcow2", path)
    if err:
        raise RuntimeError(f"import {name}: {err} {msg}")
    return [str(i[1]) for i in env.call("ListImages") if str(i[0]) == name][0]


def top_path(env, vm, disk="d"):
    top = env.call("GetChain", vm, disk)[0]
    return str(top[0]), os.path.join(env.store, str(top[1])), str(top[2])


def build_qcow_chain(env, vm, data_file=False):
    """[o3, o2, o1, base]: data, zero clusters, unaligned writes, data past the base's end.
    data_file: o1 keeps its data in an external data file."""
    env.call("CreateVM", vm, dbus.UInt32(0), opts())
    env.call("CreateDisk", vm, "d", "base", dbus.UInt64(DISK_SIZE), opts(data_file=True) if data_file else opts())
    o1, path, fmt = top_path(env, vm)
    qemu_io(fmt, path, "write -P 0x11 1M 2M", "write -P 0x12 10489856 307200", "write -z 20M 512K")
    o2 = str(env.call("Snapshot", vm, "d", opts()))
    _, path, fmt = top_path(env, vm)
    qemu_io(fmt, path, "write -P 0x21 2M 1M", "write -P 0x22 34M 1M", "write -z 2560K 256K", "write -P 0x23 12M 1M")
    o3 = str(env.call("Snapshot", vm, "d", opts()))
    _, path, fmt = top_path(env, vm)
    qemu_io(fmt, path, "write -P 0x31 0 64K", "write -P 0x32 12583424 4096", "write -P 0x33 38M 512K")
    return {"o3": o3, "o2": o2, "o1": o1, "base": Base.base, "alt": Base.alt}


def build_qcow_chain_df(env, vm):
    return build_qcow_chain(env, vm, data_file=True)


def build_overlay_df(env, vm):
    """[o1, base]: o1 keeps its data in an external data file."""
    env.call("CreateVM", vm, dbus.UInt32(0), opts())
    env.call("CreateDisk", vm, "d", "base", dbus.UInt64(DISK_SIZE), opts(data_file=True))
    o1, path, fmt = top_path(env, vm)
    qemu_io(fmt, path, "write -P 0x81 1M 1M", "write -z 21M 256K", "write -P 0x82 33M 512K", "write -P 0x83 4100K 8K")
    return {"o1": o1, "base": Base.base, "alt": Base.alt}


def build_raw_chain(env, vm, raw_data_file=False):
    """[s2, s1, r] over a blank raw disk r (or a blank qcow2 disk with a raw external data file)."""
    env.call("CreateVM", vm, dbus.UInt32(0), opts())
    o = opts(format="qcow2", data_file=True, data_file_raw=True) if raw_data_file else opts(format="raw")
    env.call("CreateDisk", vm, "d", "", dbus.UInt64(16 * MiB), o)
    r, path, fmt = top_path(env, vm)
    qemu_io(fmt, path, "write -P 0x41 0 3M", "write -P 0x42 9M 1M")
    s1 = str(env.call("Snapshot", vm, "d", opts()))
    _, path, fmt = top_path(env, vm)
    qemu_io(fmt, path, "write -P 0x51 2M 2M", "write -z 9728K 256K", "write -P 0x52 14M 4096")
    s2 = str(env.call("Snapshot", vm, "d", opts()))
    _, path, fmt = top_path(env, vm)
    qemu_io(fmt, path, "write -P 0x61 0 128K")
    return {"s2": s2, "s1": s1, "r": r}


def build_raw_df_chain(env, vm):
    return build_raw_chain(env, vm, raw_data_file=True)


def build_unsafe_chain(env, vm):
    """[o2 (data), o1 (empty), base]: an unsafe rebase onto base2 (same content as base) keeps the view."""
    env.call("CreateVM", vm, dbus.UInt32(0), opts())
    env.call("CreateDisk", vm, "d", "base", dbus.UInt64(DISK_SIZE), opts())
    o1, _, _ = top_path(env, vm)
    o2 = str(env.call("Snapshot", vm, "d", opts()))
    _, path, fmt = top_path(env, vm)
    qemu_io(fmt, path, "write -P 0x71 3M 1M", "write -P 0x72 36M 64K")
    return {"o2": o2, "o1": o1, "base": Base.base, "base2": Base.base2}


def rebase(backing_key, unsafe=False):
    def call(env, vm, ids):
        o = opts(unsafe=True) if unsafe else opts()
        return env.call("Rebase", vm, "d", ids[backing_key] if backing_key else "", o)
    return call


def commit(key):
    def call(env, vm, ids):
        return env.call("Commit", vm, "d", ids[key], opts())
    return call


# name: (crash prefix, build, call, new chain keys, modified keys, dropped keys,
#        [(layer whose old view ..., ... equals this layer's new view)], points, optional points)
SCENARIOS = {
    "rebase-lower": ("rebase", build_qcow_chain, rebase("o1"), ["o3", "o1", "base"], ["o3"], ["o2"], [],
                     ALL_POINTS, []),
    "rebase-catalog": ("rebase", build_qcow_chain, rebase("alt"), ["o3", "alt"], ["o3"], ["o2", "o1"], [],
                       ALL_POINTS, []),
    "rebase-own-base": ("rebase", build_qcow_chain, rebase("base"), ["o3", "base"], ["o3"], ["o2", "o1"], [],
                        ["after-mark", "mid-copy", "after-header", "after-commit"], []),
    "flatten": ("flatten", build_qcow_chain, rebase(None), ["o3"], ["o3"], ["o2", "o1"], [], ALL_POINTS, []),
    "commit-middle": ("commit", build_qcow_chain, commit("o2"), ["o3", "o1", "base"], ["o1", "o3"], ["o2"],
                      [("o2", "o1")], ALL_POINTS, []),
    "commit-top": ("commit", build_qcow_chain, commit("o3"), ["o2", "o1", "base"], ["o2"], ["o3"],
                   [("o3", "o2")], ALL_POINTS, []),
    "commit-raw": ("commit", build_raw_chain, commit("s1"), ["s2", "r"], ["r", "s2"], ["s1"], [("s1", "r")],
                   ALL_POINTS, []),
    "commit-into-data-file": ("commit", build_qcow_chain_df, commit("o2"), ["o3", "o1", "base"], ["o1", "o3"], ["o2"],
                              [("o2", "o1")], ALL_POINTS, []),
    "commit-into-raw-data-file": ("commit", build_raw_df_chain, commit("s1"), ["s2", "r"], ["r", "s2"], ["s1"],
                                  [("s1", "r")], ALL_POINTS, []),
    "flatten-data-file": ("flatten", build_overlay_df, rebase(None), ["o1"], ["o1"], [], [], ALL_POINTS, []),
    "rebase-catalog-data-file": ("rebase", build_overlay_df, rebase("alt"), ["o1", "alt"], ["o1"], [], [],
                                 ["after-mark", "mid-copy", "after-data", "after-header", "after-commit"], []),
    "unsafe-rebase": ("rebase", build_unsafe_chain, rebase("base2", unsafe=True), ["o2", "base2"], ["o2"], ["o1"], [],
                      UNSAFE_POINTS, UNSAFE_MAYBE),
}


class Case:
    """One disk in its own VM, built fresh, with everything recorded before the operation."""

    def __init__(self, env, scenario, vm):
        self.env, self.name, self.vm = env, scenario, vm
        (self.op, build, self.call_fn, new_keys, mod_keys, drop_keys, views, self.points,
         self.maybe) = SCENARIOS[scenario]
        self.ids = build(env, vm)
        self.new_chain = [self.ids[k] for k in new_keys]
        self.modified = [self.ids[k] for k in mod_keys]
        self.dropped = [self.ids[k] for k in drop_keys]
        self.old_chain = chain(env, vm, "d")
        self.guest_ref = os.path.join(env.tmp, f"{vm}-guest.raw")
        save_view(env, *top_rel(env, vm, "d"), self.guest_ref)
        self.view_pairs = [(self.ids[a], self.ids[b]) for a, b in views]
        self.view_refs = {a: os.path.join(env.tmp, f"{vm}-{a}.raw") for a, _ in self.view_pairs}
        for a, ref in self.view_refs.items():
            save_view(env, *layer_rel(env, a), ref)
        self.snapshot()

    def snapshot(self):
        """The store just before the operation: every image file's hash and every record."""
        self.old_images = image_hashes(self.env)
        self.old_records = records(self.env)

    def call(self):
        return self.call_fn(self.env, self.vm, self.ids)

    def state(self):
        c = chain(self.env, self.vm, "d")
        return "old" if c == self.old_chain else "new" if c == self.new_chain else f"neither: {c}"

    def verify(self, want, label):
        """The whole store after a restart: `want` is "old" (rolled back) or "new" (rolled forward)."""
        env = self.env
        c = chain(env, self.vm, "d")
        check_eq(c, self.old_chain if want == "old" else self.new_chain, f"{label}: chain is exactly the {want} chain")
        if isinstance(c, list):
            check_eq(same_view(env, *top_rel(env, self.vm, "d"), self.guest_ref), True, f"{label}: guest view unchanged")
        check_store_invariants(env, label)
        if isinstance(c, list):
            check_qemu_sees_chain(env, self.vm, "d", label)
        imgs, recs = image_hashes(env), records(env)
        if want == "old":
            changed = sorted(f for f in set(imgs) | set(self.old_images) if imgs.get(f) != self.old_images.get(f))
            check_eq(changed, [], f"{label}: every image file byte-identical to before the operation")
            rchanged = sorted(n for n in set(recs) | set(self.old_records) if recs.get(n) != self.old_records.get(n))
            check_eq(rchanged, [], f"{label}: every record as before the operation")
            return
        dropped_files = set().union(*(layer_files(self.old_records, d) for d in self.dropped))
        check_eq(sorted(imgs), sorted(set(self.old_images) - dropped_files),
                 f"{label}: exactly the dropped layers' files are gone")
        check_eq(sorted(n for n in recs if n not in self.old_records), [], f"{label}: no new records")
        check_eq(sorted(f"layer-{d}.json" for d in self.dropped if f"layer-{d}.json" in recs), [],
                 f"{label}: the dropped layers' records are gone")
        modified_files = set().union(*(layer_files(self.old_records, m) for m in self.modified))
        changed = sorted(f for f in imgs if f not in modified_files and imgs[f] != self.old_images.get(f))
        check_eq(changed, [], f"{label}: every file but the changed layers' byte-identical")
        for i, layer in enumerate(self.new_chain):
            r = recs.get(f"layer-{layer}.json")
            if not check(r is not None, f"{label}: layer {layer[:8]} of the new chain has a record"):
                continue
            below = self.new_chain[i + 1] if i + 1 < len(self.new_chain) else None
            check_eq(r["backing_layer"], below, f"{label}: record of {layer[:8]} names the next layer as its backing")
            old = self.old_records[f"layer-{layer}.json"]
            if layer in self.modified:
                check_eq(r["generation"], old["generation"] + 1, f"{label}: changed layer {layer[:8]}: generation + 1")
            else:
                check_eq(r, old, f"{label}: record of unchanged layer {layer[:8]} as before")
        vm = recs[f"vm-{self.vm}.json"]
        check_eq([d["chain"] for d in vm["disks"]], [self.new_chain], f"{label}: VM record holds the new chain")
        for a, b in self.view_pairs:
            check_eq(same_view(env, *layer_rel(env, b), self.view_refs[a]), True,
                     f"{label}: {b[:8]} now shows what the committed layer {a[:8]} showed")

    def run_to_completion(self, label):
        """Runs the operation uncrashed and checks the new state. Returns the job's duration."""
        self.snapshot()
        t0 = time.monotonic()
        try:
            job = self.call()
            state = self.env.wait_job(job)
            op = str(self.env.bus.get_object("org.vdisk1", job, introspect=False).Get(
                "org.vdisk1.Job", "Operation", dbus_interface="org.freedesktop.DBus.Properties"))
        except dbus.exceptions.DBusException as e:
            state, op = ("error", e.get_dbus_name(), e.get_dbus_message()), None
        t = time.monotonic() - t0
        if not check_eq(state[0], "done", f"{label}: the operation runs to completion ({state})"):
            return t
        check_eq(op, self.op, f"{label}: the job's Operation is {self.op!r}")
        self.verify("new", label)
        return t

    def delete(self, label):
        """Removes the VM; only catalog files stay, so the store stays small."""
        self.env.call("DeleteVM", self.vm)
        for ref in [self.guest_ref, *self.view_refs.values()]:
            os.unlink(ref)
        recs = records(self.env)
        catalog = sorted(r["file"] for n, r in recs.items() if n.startswith("layer-") and r["catalog_name"])
        check_eq(sorted(os.listdir(os.path.join(self.env.store, "images"))), catalog,
                 f"{label}: after DeleteVM only the catalog images are left")


# ---------------------------------------------------------------- injected crash points


def daemon_died(env, daemon, timeout=20):
    try:
        daemon.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return daemon.returncode


def crash_point_run(env, case, point, required):
    """Restarts vdiskd armed with the point, runs the operation; returns True if the daemon died."""
    label = f"{case.name} {case.op}:{point}"
    env.stop()
    daemon = env.start({"VDISKD_CRASH_AT": f"{case.op}:{point}", **STEP_ENV})
    case.snapshot()
    outcome = None
    try:
        job = case.call()
        outcome = env.wait_job(job)
    except dbus.exceptions.DBusException as e:
        if e.get_dbus_name() not in ("org.freedesktop.DBus.Error.NoReply", "org.freedesktop.DBus.Error.ServiceUnknown",
                                     "org.freedesktop.DBus.Error.Disconnected",
                                     "org.freedesktop.DBus.Error.NameHasNoOwner"):
            outcome = ("refused", e.get_dbus_name(), e.get_dbus_message())
    if outcome is None:
        rc = daemon_died(env, daemon)
        check_eq(rc, -signal.SIGKILL, f"{label}: vdiskd killed itself at the crash point")
        died = True
    else:
        died = False
        check(not required, f"{label}: vdiskd killed itself at the crash point (the job ended {outcome})")
        env.stop()
    env.wait_name_gone()
    env.start(STEP_ENV)
    if died:
        want = "new" if point == "after-commit" else "old"
    else:
        want = "new" if outcome[0] == "done" else "old"
    case.verify(want, label)
    if want == "old":
        case.run_to_completion(label + ", run again")
    else:
        # The disk is usable afterwards: a snapshot on top of the new chain.
        err, res = env.error("Snapshot", case.vm, "d", opts())
        check(err is None, f"{label}: the disk takes a snapshot after the roll-forward ({err} {res})")
    return died


def named_points(env):
    n = 0
    only = [x for x in os.environ.get("VDISK_RESHAPE_ONLY", "").split(",") if x]
    for name, sc in SCENARIOS.items():
        if only and name not in only:
            continue
        if name == "unsafe-rebase" and not root_only("unsafe-rebase (an unsafe Rebase is uid 0's only)"):
            continue
        t0 = time.monotonic()
        points, maybe = sc[7], sc[8]
        for point in points + maybe:
            n += 1
            case = Case(env, name, f"p{n}-{name}")
            crash_point_run(env, case, point, required=point not in maybe)
            case.delete(f"{name} {case.op}:{point}")
        print(f"# {name}: {len(points) + len(maybe)} points in {time.monotonic() - t0:.1f}s")
    return n


# ---------------------------------------------------------------- random kills from outside


def random_kills(env, runs, seed):
    """SIGKILLs vdiskd from outside while slow jobs run. Modes: "begin" (a timer of 0-60 ms started
    just before the call: the method call itself, journal, marks, first steps), "progress" (once the
    job reports a random fraction done), "end" (0-80 ms after it reports 98%: the last steps, the
    header, the commit point, the clean-up, or just after)."""
    rng = random.Random(seed)
    names = [n for n in SCENARIOS if n not in ("unsafe-rebase", "rebase-own-base", "rebase-catalog-data-file")]
    outcomes = {"old": 0, "new": 0}
    running_at_kill = 0
    env.stop()
    env.start(SLOW_ENV)

    for i in range(runs):
        name = names[i % len(names)]
        case = Case(env, name, f"r{i}-{name}")
        case.snapshot()
        daemon = env.daemon
        mode = rng.choices(["begin", "progress", "end"], weights=[1, 6, 3])[0]
        target = rng.uniform(0.0, 1.0) if mode == "progress" else 0.98
        label = f"random #{i} {name} {mode}"
        killed = threading.Event()

        def kill(daemon=daemon, killed=killed):
            if not killed.is_set():
                killed.set()
                os.kill(daemon.pid, signal.SIGKILL)

        timer = None
        if mode == "begin":
            timer = threading.Timer(rng.uniform(0, 0.06), kill)
            timer.start()
        state = progress = None
        try:
            job = case.call()
            props = dbus.Interface(env.bus.get_object("org.vdisk1", job, introspect=False), "org.freedesktop.DBus.Properties")
            while not killed.is_set():
                state = str(props.Get("org.vdisk1.Job", "State"))
                progress = float(props.Get("org.vdisk1.Job", "Progress"))
                if mode != "begin" and (state != "running" or progress >= target):
                    if mode == "end":
                        time.sleep(rng.uniform(0, 0.08))
                        state = str(props.Get("org.vdisk1.Job", "State"))
                    kill()
                    break
                if state != "running":
                    break
                time.sleep(0.002)
        except dbus.exceptions.DBusException:
            pass  # killed by the timer while calling or polling
        if timer:
            timer.join()
        if state == "running":
            running_at_kill += 1
        check(killed.is_set(), f"{label}: the daemon was killed")
        rc = daemon_died(env, daemon)
        check_eq(rc, -signal.SIGKILL, f"{label}: vdiskd died of SIGKILL")
        env.wait_name_gone()
        env.start(SLOW_ENV)
        st = case.state()
        label += f" (last seen {state}, progress {progress})"
        if not check(st in ("old", "new"), f"{label}: chain is the old or the new one (got {st})"):
            continue
        outcomes[st] += 1
        case.verify(st, f"{label} -> {st}")
        if st == "old" and i % 3 == 0:
            case.run_to_completion(f"{label}, run again")
        case.delete(label)
    print(f"# random kills: {outcomes}, {running_at_kill} while the job reported running (seed {seed})")
    if runs >= 20:
        check(outcomes["old"] > 0 and outcomes["new"] > 0,
              f"random kills ended both before and after the commit point ({outcomes})")
        check(running_at_kill >= runs // 3, f"random kills: at least a third hit a running job ({running_at_kill} of {runs})")
    env.stop()
    env.start(STEP_ENV)


# ---------------------------------------------------------------- main


def main():
    require("qemu-io")
    runs = int(os.environ.get("VDISK_RESHAPE_RUNS", "60"))
    seed = int(os.environ.get("VDISK_RESHAPE_SEED", str(random.randrange(1 << 30))))
    print(f"# seed {seed} (VDISK_RESHAPE_SEED={seed} replays the random part)")
    env = Env(sys.argv[1])
    t0 = time.monotonic()
    try:
        env.start(STEP_ENV)
        for name, pattern in [("base", ["write -P 0x5a 0 3M", "write -P 0xa5 20M 1M", "write -P 0x5b 31M 512K"]),
                              ("alt", ["write -P 0x77 2M 2M", "write -P 0x88 24M 1M"])]:
            upload = os.path.join(env.tmp, f"{name}.qcow2")
            qemu_img("create", "-q", "-f", "qcow2", upload, "32M")
            qemu_io("qcow2", upload, *pattern)
            layer = import_catalog(env, name, upload)
            setattr(Base, name, layer)
            if name == "base":
                Base.base2 = import_catalog(env, "base2", upload)
        check_store_invariants(env, "catalog")

        n = named_points(env)
        print(f"# {n} injected crash points in {time.monotonic() - t0:.1f}s")
        t1 = time.monotonic()
        random_kills(env, runs, seed)
        print(f"# {runs} random kills in {time.monotonic() - t1:.1f}s")
        check(env.canary_unchanged(), "canary unchanged")
        check_store_invariants(env, "end")
    finally:
        env.close()
    print(f"# total {time.monotonic() - t0:.1f}s")
    finish()


if __name__ == "__main__":
    main()
