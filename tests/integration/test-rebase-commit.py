# SPDX-License-Identifier: LGPL-2.1-or-later
"""Rebase (safe, unsafe, flatten) and Commit against docs/dbus-api.md and docs/design.md.

1. Randomized differential runs (seeded: VDISK_TEST_SEED=N reproduces a run, VDISK_TEST_OPS sets the
   number of operations): chains of depth 2..20 over raw and qcow2 catalog images (cluster sizes 4 KiB
   to 2 MiB, some sizes not cluster-aligned), blank raw and qcow2 disks, overlays larger than their base,
   random writes / zero writes / discards between snapshots. Operations: safe rebase onto a lower layer,
   onto another catalog image, flatten, commit of a middle layer, commit of the top layer. After each:
   the guest view equals the one taken before (qemu-img compare) and the one real qemu-img rebase /
   commit give on a copy of the chain; qemu-img check of every private layer is clean; Verify is clean;
   GetChain, the headers and the records describe the expected chain; dropped private layers are gone
   (file and record), catalog images and every layer the operation does not target are byte-identical;
   the job is done with BytesDone = BytesTotal and sent Finished.
2. Unsafe rebase (uid 0 only): header pointer and records only; the guest view is qemu-img rebase -u's.
3. Every error of the contract with its exact name, the store byte-identical afterwards.
4. InUse: a read-write lease from OpenDisk, a QEMU (qemu-io) holding the top or a backing file, a job
   running on the disk; the same operation succeeds once the holder is gone.
5. Progress and cancellation with the test knobs VDISKD_TEST_STEP_BYTES / VDISKD_TEST_STEP_DELAY_MS:
   BytesDone advances through intermediate values; a cancelled flatten / commit (qcow2 and raw targets,
   top and middle layers) leaves every file and record of the store byte-identical, and the daemon
   still does the operation afterwards."""

import grp
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import traceback

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

from vdisktest import BUS_NAME, ROOT, Env, check, check_eq, finish, opts, qemu_img, require, root_only

KiB, MiB = 1 << 10, 1 << 20
E = "org.vdisk1.Error."
NOTFOUND, INUSE, NOTSUP, TOODEEP, CANCELLED = (E + "NotFound", E + "InUse", E + "NotSupported", E + "ChainTooDeep",
                                               E + "Cancelled")
INVALID = "org.freedesktop.DBus.Error.InvalidArgs"
DENIED = "org.freedesktop.DBus.Error.AccessDenied"
JOB_IFACE, LEASE_IFACE, PROPS_IFACE = "org.vdisk1.Job", "org.vdisk1.Lease", "org.freedesktop.DBus.Properties"
OWNER, OTHER = 65534, 1  # OWNER owns the VMs of the authorization checks; OTHER owns nothing
SLOW = {"VDISKD_TEST_STEP_BYTES": str(MiB), "VDISKD_TEST_STEP_DELAY_MS": "20"}

VDISKD = sys.argv[1]
require("qemu-io", "setpriv")
SEED = int(os.environ.get("VDISK_TEST_SEED") or random.SystemRandom().randrange(1 << 32))
N_OPS = int(os.environ.get("VDISK_TEST_OPS") or 48)
BUDGET = float(os.environ.get("VDISK_TEST_BUDGET") or 200)  # seconds for the randomized runs
print(f"seed {SEED} (VDISK_TEST_SEED={SEED} reproduces this run), {N_OPS} randomized operations", flush=True)

STARTED = []  # processes this test started (qemu-io), killed by pid in the end


class SetupError(Exception):
    pass


def t(n):
    return dbus.UInt64(n)


def u(n):
    return dbus.UInt32(n)


def d(**kw):
    return dbus.Dictionary(kw, signature="sv")


def plain(x):
    return json.loads(json.dumps(x))


def short(name):
    return name.rsplit(".", 1)[-1] if name else "success"


def run(argv, cwd=None):
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd)


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def qemu_io(path, fmt, cmds):
    for i in range(0, len(cmds), 100):
        argv = ["qemu-io", "-f", fmt]
        for c in cmds[i:i + 100]:
            argv += ["-c", c]
        p = run(argv + [path])
        if p.returncode != 0 or "failed" in p.stdout:
            raise SetupError(f"qemu-io {cmds[i:i + 3]}... on {path}: {p.stdout[-300:]} {p.stderr[-300:]}")


def qcow2_header(path):
    """(virtual size, cluster size, backing file name or None, backing format or None), parsed here."""
    with open(path, "rb") as f:
        h = f.read(2 * MiB)
    if h[:4] != b"QFI\xfb":
        return None
    version = struct.unpack(">I", h[4:8])[0]
    boff, bsize = struct.unpack(">QI", h[8:20])
    cbits = struct.unpack(">I", h[20:24])[0]
    size = struct.unpack(">Q", h[24:32])[0]
    name = h[boff:boff + bsize].decode(errors="replace") if boff else None
    fmt = None
    pos = struct.unpack(">I", h[100:104])[0] if version >= 3 else 72
    while pos + 8 <= len(h):
        magic, length = struct.unpack(">II", h[pos:pos + 8])
        if magic == 0:
            break
        if magic == 0xE2792ACA:
            fmt = h[pos + 8:pos + 8 + length].decode(errors="replace")
        pos += 8 + ((length + 7) & ~7)
    return size, 1 << cbits, name, fmt


# ------------------------------------------------------------------------------------------ store views
def chain(env, vm, disk):
    return [tuple(plain(x)) for x in env.call("GetChain", vm, disk)]


def ids_of(ch):
    return [c[0] for c in ch]


def images(env):
    return {str(i[0]): tuple(plain(i)) for i in env.call("ListImages")}


def spath(env, rel):
    return os.path.join(env.store, rel)


def read_record(env, name):
    try:
        with open(spath(env, f"records/{name}")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


_hashes = {}


def snap(env):
    """Every file of the store (images, records, journal) by sha256, like Env.snapshot_store(); a file is
    hashed again whenever its inode, size, mtime or ctime moved (no write can keep ctime)."""
    out = {}
    for rel in sorted(env.store_files()):
        path = spath(env, rel)
        st = os.stat(path)
        key = (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key not in _hashes:
            _hashes[key] = sha(path)
        out[rel] = _hashes[key]
    return out


def store_diff(before, after, ignore=()):
    out = [f"changed {r}" for r in before if r in after and before[r] != after[r] and r not in ignore]
    out += [f"removed {r}" for r in before if r not in after and r not in ignore]
    out += [f"added {r}" for r in after if r not in before and r not in ignore]
    return sorted(out)


def store_invariants(env, label):
    """Every image file has a ready layer record and vice versa; the journal is empty; no temporaries."""
    recs = {}
    for n in os.listdir(spath(env, "records")):
        if n.startswith("layer-") and n.endswith(".json"):
            recs[n] = read_record(env, n)
    files = set(os.listdir(spath(env, "images")))
    check_eq(sorted(files), sorted(r["file"] for r in recs.values()), f"{label}: image files and layer records match")
    bad = [n for n, r in recs.items() if r["state"] != "ready"]
    check_eq(bad, [], f"{label}: every layer record is ready")
    check_eq(os.listdir(spath(env, "journal")), [], f"{label}: journal empty")
    check_eq([n for n in os.listdir(spath(env, "records")) if n.startswith(".")], [], f"{label}: no temporary records")


qcheck_done = set()


def qcheck_private(env, ch, label):
    """qemu-img check (exit 0: no errors, no leaks) of every private qcow2 layer of a chain."""
    bad = []
    for c in ch:
        if c[6] or c[2] != "qcow2":
            continue
        f = spath(env, c[1])
        st = os.stat(f)
        key = (f, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in qcheck_done:
            continue
        p = qemu_img("check", "-f", "qcow2", f)
        if p.returncode != 0:
            bad.append(f"{c[0][:8]} rc {p.returncode}: {p.stdout.strip()[-400:]}")
        else:
            qcheck_done.add(key)
    check_eq(bad, [], f"{label}: qemu-img check of every private qcow2 layer clean")


def guest_raw(env, top, out):
    """The guest view of a chain (qemu-img follows the sibling names vdisk wrote) as a raw file."""
    p = qemu_img("convert", "-f", top[2], "-O", "raw", spath(env, top[1]), out)
    if p.returncode != 0:
        raise SetupError(f"qemu-img convert {top[1]}: {p.stderr}")


def compare(a, fa, b, fb):
    p = qemu_img("compare", "-f", fa, "-F", fb, a, b)
    return p.returncode, (p.stdout + p.stderr).strip()[-300:]


def chain_consistent(env, vm, ch, label):
    """GetChain, the headers and the records tell the same story."""
    problems = []
    cat = {v[1] for v in images(env).values()}
    for i, c in enumerate(ch):
        layer, file, fmt, bfmt, size, alloc, is_cat = c
        below = ch[i + 1] if i + 1 < len(ch) else None
        if file != f"images/{layer}.{fmt}":
            problems.append(f"{layer[:8]}: file {file}")
        if bfmt != (below[2] if below else ""):
            problems.append(f"{layer[:8]}: backing format {bfmt!r}")
        if bool(is_cat) != (layer in cat):
            problems.append(f"{layer[:8]}: catalog flag {is_cat}")
        path = spath(env, file)
        if not os.path.isfile(path):
            problems.append(f"{layer[:8]}: file missing")
            continue
        if fmt == "qcow2":
            hsize, _, bname, bf = qcow2_header(path)
            want = (os.path.basename(below[1]), below[2]) if below else (None, None)
            if (bname, bf) != want:
                problems.append(f"{layer[:8]}: header backing {(bname, bf)}, want {want}")
            if hsize != size:
                problems.append(f"{layer[:8]}: header size {hsize} != {size}")
        elif os.path.getsize(path) != size:
            problems.append(f"{layer[:8]}: raw file size {os.path.getsize(path)} != {size}")
        rec = read_record(env, f"layer-{layer}.json")
        if rec is None:
            problems.append(f"{layer[:8]}: no record")
            continue
        want = {"file": os.path.basename(file), "format": fmt, "virtual_size": size, "state": "ready",
                "backing_layer": below[0] if below else None, "backing_format": below[2] if below else None}
        got = {k: rec.get(k) for k in want}
        if got != want:
            problems.append(f"{layer[:8]}: record {got}, want {want}")
    check_eq(problems, [], f"{label}: GetChain, headers and records agree")


# ------------------------------------------------------------------------------------------ signals, jobs
class Signals:
    """Collects org.vdisk1.Job.Finished on a separate, main-loop driven connection."""

    def __init__(self, env):
        self.conn = dbus.bus.BusConnection(env.address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
        self.finished = {}
        self.conn.add_signal_receiver(self._on, signal_name="Finished", dbus_interface=JOB_IFACE, path_keyword="path")
        self.conn.add_signal_receiver(lambda *a: None, signal_name="PropertiesChanged", dbus_interface=PROPS_IFACE)

    def _on(self, *args, path=None):
        self.finished[str(path)] = tuple(str(a) for a in args)

    def wait(self, path, timeout=10):
        ctx = GLib.MainContext.default()
        end = time.time() + timeout
        while time.time() < end and path not in self.finished:
            ctx.iteration(False)
            time.sleep(0.002)
        return self.finished.get(path)


SIG = {}


def job_props(env, path):
    o = dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), PROPS_IFACE)
    return {str(k): plain(v) for k, v in o.GetAll(JOB_IFACE).items()}


def job_cancel(env, path):
    try:
        dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), JOB_IFACE).Cancel()
        return None
    except dbus.exceptions.DBusException as e:
        return e.get_dbus_name()


def launch(env, method, args, caller=None):
    """Starts Rebase/Commit as root or as caller=(uid, groups); (error name or None, job path or message)."""
    if caller is None:
        err, res = env.try_call(method, *args)
        return err, str(res)
    uid, groups = caller
    def js(a):  # dbus.Boolean is an int to json
        if isinstance(a, dict):
            return {str(k): bool(v) if isinstance(v, dbus.Boolean) else plain(v) for k, v in a.items()}
        return plain(a)
    return call_as(env, uid, groups, method, [js(a) for a in args])


def call_as(env, uid, groups, method, args):
    """Rebase/Commit as another user (setpriv), like Env.call_as but with the options typed as the contract
    says (a JSON round trip would turn a boolean into an integer)."""
    code = f"""
import dbus, json, sys
bus = dbus.bus.BusConnection({env.address!r})
m = dbus.Interface(bus.get_object({BUS_NAME!r}, "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
def typed(v):
    return dbus.Boolean(v) if isinstance(v, bool) else dbus.UInt32(v) if isinstance(v, int) else dbus.String(v)
args = [dbus.Dictionary({{k: typed(v) for k, v in a.items()}}, signature="sv") if isinstance(a, dict) else a
        for a in json.loads(sys.argv[1])]
try:
    print(json.dumps([None, str(getattr(m, {method!r})(*args, signature="sssa{{sv}}"))]))
except dbus.exceptions.DBusException as e:
    print(json.dumps([e.get_dbus_name(), e.get_dbus_message()]))
"""
    groups_arg = ["--clear-groups"] if groups is None else [f"--groups={groups}"]
    p = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", *groups_arg, sys.executable, "-c", code,
                        json.dumps(args)], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(p.stderr)
    err, res = json.loads(p.stdout)
    return err, str(res)


def outcome(env, method, args, caller=None, timeout=300):
    """Runs the operation to its end: (error name or None, where, job props or message)."""
    err, res = launch(env, method, args, caller)
    if err:
        return err, "call", res
    env.wait_job(res, timeout)
    p = job_props(env, res)
    p["path"] = res
    if p["State"] == "done":
        return None, "job", p
    return p["ErrorName"] or f"state {p['State']}", "job", p


def refused(env, label, want, method, args, caller=None, extra=None):
    """The operation fails with want (a name, or a set of acceptable names) and changes nothing."""
    wants = want if isinstance(want, (set, frozenset)) else {want}
    before = snap(env)
    err, where, info = outcome(env, method, args, caller)
    msg = info if where == "call" else (info.get("ErrorMessage") if isinstance(info, dict) else info)
    check(err in wants, f"{label}: {'/'.join(sorted(short(w) for w in wants))}"
          + ("" if err in wants else f" — got {short(err)} ({where}: {msg})"))
    if err is not None:
        check(bool(msg) and "\n" not in str(msg), f"{label}: one-line message ({msg})")
    check_eq(store_diff(before, snap(env)), [], f"{label}: store byte-identical")
    if extra:
        extra()
    return err


# ------------------------------------------------------------------------------------------ building chains
def random_cmds(r, size, n=None, big=False):
    cmds = []
    for _ in range(n if n is not None else r.randint(1, 5)):
        length = r.choice([512, 4 * KiB, 64 * KiB, 12800, 192 * KiB, r.randrange(1, 1025) * 512])
        if big and r.random() < 0.3:
            length = r.randrange(1, 5) * 512 * KiB
        length = min(length, size)
        off = r.randrange(0, (size - length) // 512 + 1) * 512
        if r.random() < 0.1:
            off = size - length  # the tail, often a partial cluster
        k = r.random()
        if k < 0.65:
            cmds.append(f"write -P 0x{r.randrange(1, 256):02x} {off} {length}")
        elif k < 0.85:
            cmds.append(f"write -z {off} {length}")
        else:
            cmds.append(f"discard {off} {length}")
    return cmds


class Img:
    def __init__(self, name, fmt, size, layer):
        self.name, self.fmt, self.size, self.layer = name, fmt, size, layer


CATALOG_SPECS = [  # name, format, size, cluster size, imported with content (else CreateImage, blank)
    ("q4k", "qcow2", 16 * MiB, 4 * KiB, True),
    ("q2m", "qcow2", 21 * MiB, 2 * MiB, True),
    ("q16k", "qcow2", 33 * MiB + 1536, 16 * KiB, True),
    ("q64k", "qcow2", 64 * MiB, 64 * KiB, True),
    ("q512k", "qcow2", 100 * MiB + 3072, 512 * KiB, True),
    ("q1m", "qcow2", 128 * MiB, MiB, True),
    ("r16", "raw", 16 * MiB, 0, True),
    ("r48", "raw", 48 * MiB + 512, 0, True),
    ("bq8k", "qcow2", 32 * MiB, 8 * KiB, False),
    ("br16", "raw", 16 * MiB, 0, False),
]
SIZES = [16 * MiB, 21 * MiB, 32 * MiB, 48 * MiB, 64 * MiB, 100 * MiB, 128 * MiB, 256 * MiB]


def make_catalog(env, r, specs=CATALOG_SPECS):
    pool = {}
    for name, fmt, size, cs, content in specs:
        if content:
            f = os.path.join(env.tmp, f"upload-{name}.{fmt}")
            if fmt == "qcow2":
                p = qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cs}", f, str(size))
                if p.returncode:
                    raise SetupError(p.stderr)
            else:
                with open(f, "wb") as fh:
                    fh.truncate(size)
            qemu_io(f, fmt, random_cmds(r, size, n=r.randint(4, 10), big=True))
            err, msg = env.import_file(name, fmt, f)
            if not check_eq(err, None, f"setup: ImportImage {name} ({fmt}, {size} bytes, cluster {cs}) ({msg})"):
                continue
            os.unlink(f)
        else:
            o = opts(cluster_size=cs) if fmt == "qcow2" else opts()
            err, msg = env.try_call("CreateImage", name, fmt, t(size), o)
            if not check_eq(err, None, f"setup: CreateImage {name} ({msg})"):
                continue
    for name, (n, layer, fmt, size, alloc) in images(env).items():
        pool[name] = Img(name, fmt, size, layer)
    return pool


def write_top(env, vm, disk, cmds):
    top = chain(env, vm, disk)[0]
    qemu_io(spath(env, top[1]), top[2], cmds)


def build_disk(env, r, vm, disk, pool, depth=None, owner=0):
    if vm not in [str(v[0]) for v in env.call("ListVMs")]:
        env.call("CreateVM", vm, u(owner), opts())
    depth = depth or r.randint(2, 20)
    k = r.random()
    if k < 0.5 and pool:
        base = r.choice(sorted(pool.values(), key=lambda i: i.name))
        sizes = [s for s in SIZES if s >= base.size]
        size = r.choice(sizes + [0, 0]) if sizes else 0
        env.call("CreateDisk", vm, disk, base.name, t(size), opts())
        what = f"overlay on {base.name} ({base.fmt}, {base.size}), size {size or base.size}"
    elif k < 0.65 and pool:
        # A private copy keeps the image's format and cluster size: layers above it have other cluster sizes.
        base = r.choice(sorted(pool.values(), key=lambda i: i.name))
        sizes = [s for s in SIZES if s >= base.size] if base.fmt == "raw" else []
        size = r.choice(sizes + [0]) if sizes else 0
        env.call("CreateDisk", vm, disk, base.name, t(size), opts(mode="copy"))
        what = f"copy of {base.name} ({base.fmt}, {base.size}), size {size or base.size}"
    elif k < 0.85:
        size = r.choice(SIZES)
        env.call("CreateDisk", vm, disk, "", t(size), opts(format="qcow2"))
        what = f"blank qcow2 {size}"
    else:
        size = r.choice(SIZES)
        env.call("CreateDisk", vm, disk, "", t(size), opts(format="raw"))
        what = f"blank raw {size}"
    ch = chain(env, vm, disk)
    vs = ch[0][4]
    while True:
        write_top(env, vm, disk, random_cmds(r, vs))
        if len(ch) >= depth:
            break
        env.call("Snapshot", vm, disk, opts())
        ch = chain(env, vm, disk)
    print(f"     {vm}/{disk}: {what}, depth {len(ch)}", flush=True)
    return ch


# ------------------------------------------------------------------------------------------ one operation
class Plan:
    def __init__(self, before, kind, arg, unsafe=False):
        ids = ids_of(before)
        self.kind, self.unsafe, self.before = kind, unsafe, before
        self.new_backing = None  # (layer, file, format) of the new backing, for the qemu-img reference
        if kind in ("rebase", "catalog", "flatten"):
            self.method = "Rebase"
            if kind == "rebase":
                self.backing = ids[arg]
                self.new_ids = [ids[0]] + ids[arg:]
                self.new_backing = (ids[arg], before[arg][1], before[arg][2])
                self.what = f"rebase onto layer {arg}/{len(ids) - 1}"
            elif kind == "catalog":
                self.backing = arg.layer
                self.new_ids = [ids[0], arg.layer]
                self.new_backing = (arg.layer, f"images/{arg.layer}.{arg.fmt}", arg.fmt)
                self.what = f"rebase onto catalog image {arg.name} ({arg.fmt}, {arg.size})"
            else:
                self.backing = ""
                self.new_ids = [ids[0]]
                self.what = "flatten"
            self.operation = "flatten" if self.backing == "" else "rebase"
            self.modified = [ids[0]]
            self._o = opts(unsafe=True) if unsafe else opts()
            self.target = self.backing
        else:
            self.method = "Commit"
            p = arg
            self.target = ids[p]
            self.new_ids = ids[:p] + ids[p + 1:]
            self.modified = [ids[p + 1]] + ([ids[p - 1]] if p > 0 else [])
            self.operation = "commit"
            self.what = f"commit layer {p}/{len(ids) - 1}" + (" (top)" if p == 0 else "")
            self._o = opts()
            self.p = p
        if unsafe:
            self.what = "unsafe " + self.what

    def args(self, vm, disk):
        return (vm, disk, self.target, self._o)


def reference(env, plan, ddir):
    """Does the operation with real qemu-img on the copy of the chain in ddir; returns (file, format) of the
    copy's new top, or raises SetupError."""
    before = plan.before
    topf = os.path.basename(before[0][1])
    if plan.kind in ("rebase", "catalog"):
        _, nfile, nfmt = plan.new_backing
        argv = ["rebase", "-f", "qcow2"] + (["-u"] if plan.unsafe else []) + ["-b", os.path.basename(nfile), "-F", nfmt,
                                                                               topf]
        p = qemu_img(*argv, cwd=ddir)
    elif plan.kind == "flatten":
        p = qemu_img("rebase", "-f", "qcow2", *(["-u"] if plan.unsafe else []), "-b", "", topf, cwd=ddir)
    else:
        lf = os.path.basename(before[plan.p][1])
        p = qemu_img("commit", "-q", "-f", "qcow2", "-d", lf, cwd=ddir)
        if p.returncode == 0 and plan.p > 0:
            pf, pfmt = os.path.basename(before[plan.p + 1][1]), before[plan.p + 1][2]
            p = qemu_img("rebase", "-u", "-f", "qcow2", "-b", pf, "-F", pfmt, os.path.basename(before[plan.p - 1][1]),
                         cwd=ddir)
    if p.returncode != 0:
        raise SetupError(f"reference qemu-img for {plan.what}: {p.stderr.strip()}")
    if plan.method == "Commit" and plan.p == 0:
        return os.path.join(ddir, os.path.basename(before[1][1])), before[1][2]
    return os.path.join(ddir, topf), "qcow2"


def run_op(env, vm, disk, plan, label, caller=None, hook=None, diff=True):
    """Runs plan on vm/disk and checks everything the contract promises. Returns True if the job was done."""
    before = plan.before
    ids = ids_of(before)
    t0 = time.time()
    ref = os.path.join(env.tmp, "ref.raw")
    guest_raw(env, before[0], ref)
    before_store = snap(env)
    before_images = images(env)
    ddir = os.path.join(env.tmp, "diff")
    shutil.rmtree(ddir, ignore_errors=True)
    os.mkdir(ddir)
    files = [c[1] for c in before] + ([plan.new_backing[1]] if plan.new_backing else [])
    for rel in files:
        subprocess.run(["cp", "--sparse=always", spath(env, rel), ddir], check=True)
    top_file = spath(env, before[0][1])
    top_tail = None
    if plan.unsafe:
        cs = qcow2_header(top_file)[1]
        with open(top_file, "rb") as f:
            f.seek(cs)
            top_tail = (os.path.getsize(top_file), hashlib.sha256(f.read()).hexdigest())
    want_files = {}
    if diff:
        want_files["new top"] = reference(env, plan, ddir)

    err, job = launch(env, plan.method, plan.args(vm, disk), caller)
    if not check_eq(err, None, f"{label}: {plan.method} accepted ({job if err else ''})"):
        check_eq(store_diff(before_store, snap(env)), [], f"{label}: refused, store unchanged")
        return False
    if hook:
        hook(job)
    env.wait_job(job, 600)
    p = job_props(env, job)
    ok = check_eq((p["State"], p["ErrorName"], p["ErrorMessage"]), ("done", "", ""), f"{label}: job done")
    check_eq((p["Operation"], p["VM"], p["Disk"]), (plan.operation, vm, disk), f"{label}: job Operation/VM/Disk")
    check(p["BytesDone"] == p["BytesTotal"] and p["Progress"] == 1.0,
          f"{label}: BytesDone = BytesTotal, Progress 1 ({p['BytesDone']}/{p['BytesTotal']}, {p['Progress']})")
    check_eq(SIG[env].wait(job), (p["State"], p["ErrorName"], p["ErrorMessage"]), f"{label}: Finished signal")
    after = chain(env, vm, disk)
    check_eq(ids_of(after), plan.new_ids, f"{label}: GetChain is the expected chain")
    if not ok or ids_of(after) != plan.new_ids:
        print(f"     chain before {[i[:8] for i in ids]}, after {[i[:8] for i in ids_of(after)]}")
    new_top = after[0]
    check_eq(new_top[4], before[0][4], f"{label}: guest-visible size unchanged")
    chain_consistent(env, vm, after, label)
    if plan.method == "Commit":
        want = max(before[plan.p][4], before[plan.p + 1][4])
        got = [c[4] for c in after if c[0] == before[plan.p + 1][0]]
        check_eq(got, [want], f"{label}: the layer committed into has the larger size")
    # Guest view.
    if not plan.unsafe:
        rc, out = compare(spath(env, new_top[1]), new_top[2], ref, "raw")
        check_eq(rc, 0, f"{label}: guest view identical to before ({out})")
    if diff:
        f, fmt = want_files["new top"]
        rc, out = compare(spath(env, new_top[1]), new_top[2], f, fmt)
        tool = "rebase -u" if plan.unsafe else plan.method.lower()
        check_eq(rc, 0, f"{label}: guest view identical to qemu-img {tool}'s ({out})")
        if plan.method == "Commit":
            pl = before[plan.p + 1]
            rc, out = compare(spath(env, pl[1]), pl[2], os.path.join(ddir, os.path.basename(pl[1])), pl[2])
            check_eq(rc, 0, f"{label}: the layer committed into reads as after qemu-img commit ({out})")
    if plan.unsafe and top_tail is not None:
        cs = qcow2_header(top_file)[1]
        with open(top_file, "rb") as fh:
            fh.seek(cs)
            tail = (os.path.getsize(top_file), hashlib.sha256(fh.read()).hexdigest())
        check_eq(tail, top_tail, f"{label}: unsafe rebase wrote the header cluster only")
    qcheck_private(env, after, label)
    check_eq([tuple(plain(x)) for x in env.call("Verify", vm)], [], f"{label}: Verify clean")
    vmrec = read_record(env, f"vm-{vm}.json")
    check_eq([x["chain"] for x in vmrec["disks"] if x["name"] == disk], [plan.new_ids], f"{label}: VM record chain")
    # The store: dropped private layers gone; catalog images and untargeted layers byte-identical; nothing new.
    after_store = snap(env)
    catalog = {c[0] for c in before if c[6]} | {i[1] for i in before_images.values()}
    dropped = [c for c in before if c[0] not in plan.new_ids and c[0] not in catalog]
    gone = {c[1] for c in dropped} | {f"records/layer-{c[0]}.json" for c in dropped}
    check_eq(sorted(r for r in gone if r in after_store), [], f"{label}: dropped private layers deleted (file, record)")
    may_change = {f"records/vm-{vm}.json"}
    for lid in plan.modified:
        may_change |= {c[1] for c in before if c[0] == lid} | {f"records/layer-{lid}.json"}
    check_eq(store_diff(before_store, after_store, ignore=gone | may_change), [],
             f"{label}: everything but the targeted layers byte-identical (catalog images too)")
    check_eq(images(env), before_images, f"{label}: ListImages unchanged")
    store_invariants(env, label)
    print(f"     {label}: {time.time() - t0:.2f}s, {p['BytesTotal']} bytes", flush=True)
    return ok


def pick_op(r, ch, pool, counts):
    ids = ids_of(ch)
    choices = []
    top_vs = ch[0][4]
    cats = [i for i in sorted(pool.values(), key=lambda i: i.name) if i.size <= top_vs]
    if ch[0][2] == "qcow2":
        if len(ch) >= 2:
            choices.append("rebase")
        if cats:
            choices.append("catalog")
        choices.append("flatten")
    mids = [p for p in range(1, len(ch) - 1) if not ch[p + 1][6]]
    if mids:
        choices.append("commit-middle")
    if len(ch) >= 2 and not ch[1][6]:
        choices.append("commit-top")
    if not choices:
        return None
    kind = r.choices(choices, [1.0 / (1 + counts.get(c, 0)) for c in choices])[0]
    counts[kind] = counts.get(kind, 0) + 1
    if kind == "rebase":
        return Plan(ch, "rebase", r.randrange(1, len(ids)))
    if kind == "catalog":
        others = [i for i in cats if i.layer not in ids] or cats
        return Plan(ch, "catalog", r.choice(others))
    if kind == "flatten":
        return Plan(ch, "flatten", None)
    if kind == "commit-middle":
        return Plan(ch, "commit", r.choice(mids))
    return Plan(ch, "commit", 0)


def section(name, fn, *args):
    print(f"==== {name}", flush=True)
    t0 = time.time()
    try:
        fn(*args)
    except Exception:
        check(False, f"{name}: raised {traceback.format_exc()}")
    print(f"==== {name}: {time.time() - t0:.1f}s", flush=True)


# ------------------------------------------------------------------------------------------ sections
def randomized(env, pool):
    r = random.Random(SEED)
    counts = {}
    n_ops, n = 0, 0
    t0 = time.time()
    while n_ops < N_OPS and time.time() - t0 < BUDGET:
        n += 1
        vm, disk = f"r{n}", "d"
        try:
            ch = build_disk(env, r, vm, disk, pool)
            for _ in range(r.randint(2, 5)):
                if n_ops >= N_OPS:
                    break
                plan = pick_op(r, ch, pool, counts)
                if plan is None:
                    break
                n_ops += 1
                label = f"op {n_ops} ({vm}/{disk}, depth {len(ch)}): {plan.what}"
                run_op(env, vm, disk, plan, label)
                ch = chain(env, vm, disk)
                for _ in range(r.choice([0, 0, 1, 2, 3])):
                    env.call("Snapshot", vm, disk, opts())
                    write_top(env, vm, disk, random_cmds(r, ch[0][4]))
                    ch = chain(env, vm, disk)
            env.call("DeleteVM", vm)
        except Exception:
            check(False, f"randomized run {vm} (seed {SEED}): raised {traceback.format_exc()}")
    print(f"     {n_ops} randomized operations on {n} disks in {time.time() - t0:.1f}s: {counts}")
    if n_ops < N_OPS:
        print(f"     NOTE: the time budget of {BUDGET:.0f}s (VDISK_TEST_BUDGET) ended the randomized runs early")
    check(n_ops >= min(N_OPS, 10), f"randomized: operations ran ({n_ops})")


def unsafe_section(env, pool):
    r = random.Random(SEED + 1)
    vm, disk = "unsafe", "d"
    env.call("CreateVM", vm, u(0), opts())
    env.call("CreateDisk", vm, disk, "q64k", t(64 * MiB), opts())
    for i in range(3):  # each layer's own pattern at 1M: skipping a layer shows
        write_top(env, vm, disk, random_cmds(r, 64 * MiB, n=4) + [f"write -P 0x{0x50 + i:02x} 1M 64k"])
        env.call("Snapshot", vm, disk, opts())
    write_top(env, vm, disk, ["write -P 0x77 8M 64k"])
    ch = chain(env, vm, disk)  # [T, M2, M1, O, q64k]
    ref = os.path.join(env.tmp, "unsafe-before.raw")
    guest_raw(env, ch[0], ref)
    run_op(env, vm, disk, Plan(ch, "rebase", 2, unsafe=True), "unsafe rebase skipping a layer")
    rc, _ = compare(spath(env, ch[0][1]), "qcow2", ref, "raw")
    check(rc == 1, f"unsafe rebase skipping a layer with data: the guest view changed, as qemu-img rebase -u's (rc {rc})")
    ch = chain(env, vm, disk)
    run_op(env, vm, disk, Plan(ch, "catalog", pool["r16"], unsafe=True), "unsafe rebase onto a raw catalog image")
    check(os.path.exists(spath(env, f"images/{pool['q64k'].layer}.qcow2")), "unsafe rebase: the old catalog image stays")
    ch = chain(env, vm, disk)
    run_op(env, vm, disk, Plan(ch, "flatten", None, unsafe=True), "unsafe flatten")
    env.call("DeleteVM", vm)


def auth_section(env, pool, gid):
    r = random.Random(SEED + 2)
    env.call("CreateVM", "owned", u(OWNER), opts())
    env.call("CreateDisk", "owned", "d", "q4k", t(0), opts())
    for _ in range(3):
        write_top(env, "owned", "d", random_cmds(r, 16 * MiB))
        env.call("Snapshot", "owned", "d", opts())
    ch = chain(env, "owned", "d")  # [T, M2, M1, O, q4k]
    ids = ids_of(ch)
    for uid, who in ((OWNER, "the VM's owner"), (OTHER, "another user")) if root_only("Rebase and Commit as uids 65534 and 1") else ():
        refused(env, f"Rebase by {who}", DENIED, "Rebase", ("owned", "d", ids[2], opts()), caller=(uid, None))
        refused(env, f"flatten by {who}", DENIED, "Rebase", ("owned", "d", "", opts()), caller=(uid, None))
        refused(env, f"unsafe Rebase by {who}", DENIED, "Rebase", ("owned", "d", ids[2], opts(unsafe=True)),
                caller=(uid, None))
        refused(env, f"Commit by {who}", DENIED, "Commit", ("owned", "d", ids[1], opts()), caller=(uid, None))
    if not ROOT:
        admin = None  # the test user itself: an admin through its group (vdisktest.Env), not uid 0
    elif gid is None:
        print("     no admin group (groupadd failed): non-root admin checks skipped")
        return
    else:
        admin = (OTHER, gid)
    refused(env, "unsafe Rebase by a non-root admin", DENIED, "Rebase", ("owned", "d", ids[2], opts(unsafe=True)),
            caller=admin)
    refused(env, "unsafe flatten by a non-root admin", DENIED, "Rebase", ("owned", "d", "", opts(unsafe=True)),
            caller=admin)
    run_op(env, "owned", "d", Plan(ch, "rebase", 2), "safe Rebase by a non-root admin", caller=admin)
    ch = chain(env, "owned", "d")
    run_op(env, "owned", "d", Plan(ch, "commit", 0), "Commit by a non-root admin", caller=admin)
    env.call("DeleteVM", "owned")


def errors_section(env, pool):
    r = random.Random(SEED + 3)
    env.call("CreateVM", "err", u(0), opts())
    env.call("CreateVM", "err2", u(0), opts())
    env.call("CreateDisk", "err", "cat", "q16k", t(0), opts())
    for _ in range(2):
        write_top(env, "err", "cat", random_cmds(r, 32 * MiB))
        env.call("Snapshot", "err", "cat", opts())
    cat = ids_of(chain(env, "err", "cat"))  # [T2, T1, O, q16k]
    env.call("CreateDisk", "err", "blank", "", t(32 * MiB), opts())
    for _ in range(2):
        write_top(env, "err", "blank", random_cmds(r, 32 * MiB))
        env.call("Snapshot", "err", "blank", opts())
    blank = ids_of(chain(env, "err", "blank"))  # [B2, B1, B0]
    env.call("CreateDisk", "err", "raw", "", t(16 * MiB), opts(format="raw"))
    write_top(env, "err", "raw", ["write -P 0x11 0 1M"])
    raw = ids_of(chain(env, "err", "raw"))
    env.call("CreateDisk", "err2", "x", "q16k", t(0), opts())
    env.call("Snapshot", "err2", "x", opts())
    other = ids_of(chain(env, "err2", "x"))  # [X1, X0, q16k]
    ghost = "0123456789abcdef" * 2

    R, C = "Rebase", "Commit"
    cases = [
        ("Rebase on a missing VM", NOTFOUND, R, ("ghost", "cat", cat[2], opts())),
        ("Rebase on a missing disk", NOTFOUND, R, ("err", "ghost", cat[2], opts())),
        ("Rebase onto an unknown layer id", NOTFOUND, R, ("err", "cat", ghost, opts())),
        ("Rebase onto the active layer itself", INVALID, R, ("err", "cat", cat[0], opts())),
        ("Rebase onto a private layer of another VM's disk", INVALID, R, ("err", "cat", other[1], opts())),
        ("Rebase onto another disk's active layer", INVALID, R, ("err", "cat", other[0], opts())),
        ("Rebase onto a private layer of another disk of the same VM", INVALID, R, ("err", "cat", blank[2], opts())),
        ("Rebase onto a path", {INVALID, NOTFOUND}, R, ("err", "cat", "../../canary", opts())),
        ("Rebase onto a catalog image's name instead of its layer", {INVALID, NOTFOUND}, R,
         ("err", "cat", "q16k", opts())),
        ("Rebase with an unknown option", INVALID, R, ("err", "cat", cat[2], d(bogus=dbus.String("x")))),
        ("Rebase with unsafe as a string", INVALID, R, ("err", "cat", cat[2], d(unsafe=dbus.String("true")))),
        ("Rebase with unsafe as u", INVALID, R, ("err", "cat", cat[2], d(unsafe=dbus.UInt32(1)))),
        ("Rebase of a raw active layer (flatten)", NOTSUP, R, ("err", "raw", "", opts())),
        ("Rebase of a raw active layer onto a catalog image", NOTSUP, R, ("err", "raw", pool["r16"].layer, opts())),
        ("Commit on a missing VM", NOTFOUND, C, ("ghost", "cat", cat[1], opts())),
        ("Commit on a missing disk", NOTFOUND, C, ("err", "ghost", cat[1], opts())),
        ("Commit of an unknown layer id", NOTFOUND, C, ("err", "cat", ghost, opts())),
        ("Commit of a layer of another VM's disk", NOTFOUND, C, ("err", "cat", other[0], opts())),
        ("Commit of a layer whose backing is a catalog image", NOTSUP, C, ("err", "cat", cat[2], opts())),
        ("Commit of the catalog image at the bottom", NOTSUP, C, ("err", "cat", cat[3], opts())),
        ("Commit of the bottom layer of a blank disk", NOTSUP, C, ("err", "blank", blank[2], opts())),
        ("Commit of a single raw layer", NOTSUP, C, ("err", "raw", raw[0], opts())),
        ("Commit with an unknown option", INVALID, C, ("err", "blank", blank[1], d(bogus=dbus.String("x")))),
        ("Commit with the unsafe option", INVALID, C, ("err", "blank", blank[1], d(unsafe=dbus.Boolean(True)))),
    ]
    for label, want, method, args in cases:
        refused(env, label, want, method, args)
    check(env.canary_unchanged(), "errors: canary unchanged")
    for vm in ("err", "err2"):
        check_eq(list(env.call("Verify", vm)), [], f"errors: Verify {vm} clean")
    store_invariants(env, "errors")
    # The same disks still take the operations (the refusals left nothing behind).
    run_op(env, "err", "cat", Plan(chain(env, "err", "cat"), "commit", 0), "errors: then Commit of the top works")
    run_op(env, "err", "blank", Plan(chain(env, "err", "blank"), "flatten", None), "errors: then flatten works")
    run_op(env, "err", "blank", Plan(chain(env, "err", "blank"), "catalog", pool["q1m"]),
           "Rebase of a 32 MiB disk onto a 128 MiB catalog image")
    env.call("DeleteVM", "err")
    env.call("DeleteVM", "err2")


def smaller_section(env):
    """Commit of a layer smaller than its backing: constructed behind the daemon's back (no API makes it)."""
    env.call("CreateVM", "small", u(0), opts())
    env.call("CreateDisk", "small", "d", "", t(32 * MiB), opts())
    write_top(env, "small", "d", ["write -P 0x21 0 1M"])
    env.call("Snapshot", "small", "d", opts())
    write_top(env, "small", "d", ["write -P 0x22 31M 1M"])
    top, bottom = chain(env, "small", "d")
    env.stop()
    p = qemu_img("resize", "-q", "-f", "qcow2", spath(env, bottom[1]), str(64 * MiB))
    rec_path = spath(env, f"records/layer-{bottom[0]}.json")
    with open(rec_path) as f:
        rec = json.load(f)
    rec["virtual_size"] = 64 * MiB
    with open(rec_path, "w") as f:
        json.dump(rec, f)
    env.start()
    ok = check_eq((p.returncode, list(env.call("Verify", "small")), chain(env, "small", "d")[1][4]), (0, [], 64 * MiB),
                  "setup: bottom layer grown to 64 MiB (header and record), Verify clean")
    if ok:
        refused(env, "Commit of a layer smaller than its backing", NOTSUP, "Commit", ("small", "d", top[0], opts()))
    env.call("DeleteVM", "small")


def grow_section(env):
    """Commit into a backing layer smaller than the committed layer grows it (qcow2 and raw). No API call
    makes a private layer smaller than the one above it: shrunk behind the daemon's back (file and record)."""
    env.call("CreateVM", "grow", u(0), opts())
    for disk, fmt in (("q", "qcow2"), ("r", "raw")):
        env.call("CreateDisk", "grow", disk, "", t(32 * MiB), opts(format=fmt))
        write_top(env, "grow", disk, ["write -P 0x21 0 1M", "write -P 0x23 15M 1M"])
        env.call("Snapshot", "grow", disk, opts())
        write_top(env, "grow", disk, ["write -P 0x22 20M 1M", "write -z 8M 64k", "discard 15M 512k"])
        env.call("Snapshot", "grow", disk, opts())
        write_top(env, "grow", disk, ["write -P 0x24 30M 2M"])
    env.stop()
    ok = True
    for disk, fmt in (("q", "qcow2"), ("r", "raw")):
        rec_path = None
        for n in os.listdir(spath(env, "records")):
            rec = read_record(env, n) if n.startswith("layer-") else None
            if rec and rec["vm"] == "grow" and rec["format"] == fmt and rec["backing_layer"] is None and fmt in rec["file"]:
                rec_path, bottom = spath(env, f"records/{n}"), rec
        if fmt == "qcow2":
            p = qemu_img("resize", "-q", "--shrink", "-f", "qcow2", spath(env, f"images/{bottom['file']}"), str(16 * MiB))
            ok = ok and p.returncode == 0
        else:
            os.truncate(spath(env, f"images/{bottom['file']}"), 16 * MiB)
        bottom["virtual_size"] = 16 * MiB
        with open(rec_path, "w") as f:
            json.dump(bottom, f)
    env.start()
    for disk, fmt in (("q", "qcow2"), ("r", "raw")):
        ch = chain(env, "grow", disk)
        if check_eq((ok, list(env.call("Verify", "grow")), [c[4] for c in ch]), (True, [], [32 * MiB, 32 * MiB, 16 * MiB]),
                    f"setup: {fmt} bottom layer shrunk to 16 MiB (header and record), Verify clean"):
            run_op(env, "grow", disk, Plan(ch, "commit", 1), f"Commit into a smaller {fmt} layer grows it")
    env.call("DeleteVM", "grow")


def depth_section():
    denv = Env(VDISKD, config_extra="[Limits]\nMaxChainDepth=1\n")
    try:
        denv.start()
        SIG[denv] = Signals(denv)
        denv.call("CreateImage", "img", "qcow2", t(16 * MiB), opts())
        lid = images(denv)["img"][1]
        denv.call("CreateVM", "vm", u(0), opts())
        denv.call("CreateDisk", "vm", "d", "", t(16 * MiB), opts())
        write_top(denv, "vm", "d", ["write -P 0x31 0 64k"])
        refused(denv, "Rebase onto a catalog image beyond MaxChainDepth=1", TOODEEP, "Rebase", ("vm", "d", lid, opts()))
        run_op(denv, "vm", "d", Plan(chain(denv, "vm", "d"), "flatten", None), "MaxChainDepth=1: flatten still works")
    finally:
        denv.close()


def hold(argv, files):
    """Starts a QEMU tool that keeps files open (and QEMU-locked) until its stdin closes."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    STARTED.append(p)
    inodes = {os.stat(f).st_ino for f in files}
    end = time.time() + 10
    while time.time() < end:
        locked = set()
        with open("/proc/locks") as fh:
            for line in fh:
                w = line.split()
                if "OFDLCK" in w and len(w) >= 6 and w[1] == "OFDLCK":
                    locked.add(int(w[5].split(":")[2]))
        if inodes <= locked or p.poll() is not None:
            break
        time.sleep(0.02)
    if p.poll() is not None or not inodes <= locked:
        raise SetupError(f"{argv[0]} did not lock {files}: {p.stderr.read() if p.poll() is not None else ''}")
    return p


def release(p):
    p.stdin.close()
    p.wait(timeout=20)
    STARTED.remove(p)


def inuse_section(env, pool):
    r = random.Random(SEED + 4)
    env.call("CreateVM", "busy", u(0), opts())

    def three_layers(disk):
        env.call("CreateDisk", "busy", disk, "", t(32 * MiB), opts())
        for _ in range(2):
            write_top(env, "busy", disk, random_cmds(r, 32 * MiB, n=3))
            env.call("Snapshot", "busy", disk, opts())
        write_top(env, "busy", disk, random_cmds(r, 32 * MiB, n=3))
        return chain(env, "busy", disk)

    def all_refused(disk, ids, why):
        refused(env, f"flatten {why}", INUSE, "Rebase", ("busy", disk, "", opts()))
        refused(env, f"Rebase onto a lower layer {why}", INUSE, "Rebase", ("busy", disk, ids[2], opts()))
        refused(env, f"Rebase onto a catalog image {why}", INUSE, "Rebase", ("busy", disk, pool["q4k"].layer, opts()))
        # Only uid 0 may rebase unsafely: as another user, the refusal is that first.
        refused(env, f"unsafe Rebase {why}", INUSE if ROOT else DENIED, "Rebase", ("busy", disk, ids[2], opts(unsafe=True)))
        refused(env, f"Commit of the top {why}", INUSE, "Commit", ("busy", disk, ids[0], opts()))
        refused(env, f"Commit of a middle layer {why}", INUSE, "Commit", ("busy", disk, ids[1], opts()))

    # A read-write lease from OpenDisk.
    ch = three_layers("lease")
    path, blockdev, fds = env.call("OpenDisk", "busy", "lease", opts())
    for f in fds:
        os.close(f.take())
    all_refused("lease", ids_of(ch), "under a read-write lease")
    dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), LEASE_IFACE).Release()
    run_op(env, "busy", "lease", Plan(chain(env, "busy", "lease"), "commit", 1), "Commit after the lease's release")
    run_op(env, "busy", "lease", Plan(chain(env, "busy", "lease"), "flatten", None), "flatten after the lease's release")

    # QEMU holding the top (and so the whole chain) open read-write.
    ch = three_layers("qemu")
    q = hold(["qemu-io", "-f", "qcow2", spath(env, ch[0][1])], [spath(env, c[1]) for c in ch])
    try:
        all_refused("qemu", ids_of(ch), "while qemu-io holds the top")
    finally:
        release(q)
    run_op(env, "busy", "qemu", Plan(chain(env, "busy", "qemu"), "commit", 1), "Commit after qemu-io exited")
    # QEMU reading only the bottom layer: a commit into it is refused, a rebase of the top is not.
    env.call("Snapshot", "busy", "qemu", opts())
    write_top(env, "busy", "qemu", ["write -P 0x41 2M 1M"])
    ch = chain(env, "busy", "qemu")  # [T, Q2, Q0]
    q = hold(["qemu-io", "-r", "-f", "qcow2", spath(env, ch[2][1])], [spath(env, ch[2][1])])
    try:
        refused(env, "Commit into a layer a QEMU has open read-only", INUSE, "Commit", ("busy", "qemu", ch[1][0], opts()))
        run_op(env, "busy", "qemu", Plan(ch, "rebase", 2), "Rebase of the top while a QEMU reads the bottom layer only")
    finally:
        release(q)
    ch = chain(env, "busy", "qemu")
    run_op(env, "busy", "qemu", Plan(ch, "commit", 0), "Commit into the bottom after its reader exited")

    # qemu-system-x86_64 holding the top through -blockdev (the way a VM does).
    qsys = shutil.which("qemu-system-x86_64")
    if qsys:
        ch = three_layers("vm")
        q = hold([qsys, "-nodefaults", "-display", "none", "-machine", "none", "-S", "-monitor", "stdio",
                  "-blockdev", json.dumps({"driver": "qcow2", "node-name": "d",
                                           "file": {"driver": "file", "filename": spath(env, ch[0][1])}})],
                 [spath(env, c[1]) for c in ch])
        try:
            refused(env, "flatten while qemu-system holds the top", INUSE, "Rebase", ("busy", "vm", "", opts()))
            refused(env, "Commit of a middle layer while qemu-system holds the top", INUSE, "Commit",
                    ("busy", "vm", ch[1][0], opts()))
        finally:
            q.stdin.write(b"quit\n")
            release(q)
        run_op(env, "busy", "vm", Plan(chain(env, "busy", "vm"), "flatten", None), "flatten after qemu-system quit")
    env.call("DeleteVM", "busy")


def big_raw(path, size, patterns):
    with open(path, "wb") as f:
        f.truncate(size)
    step = size // len(patterns)
    qemu_io(path, "raw", [f"write -P 0x{pat:02x} {i * step} {step}" for i, pat in enumerate(patterns)])


def slow_section():
    """Progress and cancellation, in a daemon of its own with the step knobs."""
    senv = Env(VDISKD)
    big, small = 256 * MiB, 64 * MiB
    try:
        senv.start()
        SIG[senv] = Signals(senv)
        for name, size in (("big", big), ("mid", small)):
            up = os.path.join(senv.tmp, f"{name}.raw")
            big_raw(up, size, [0x10 + i for i in range(16)])
            err, msg = senv.import_file(name, "raw", up)
            check_eq(err, None, f"setup: import of {size >> 20} MiB of data ({msg})")
            os.unlink(up)
        senv.call("CreateVM", "s", u(0), opts())
        for disk, image in (("p", "big"), ("c1", "mid")):
            senv.call("CreateDisk", "s", disk, image, t(0), opts())
            write_top(senv, "s", disk, ["write -P 0xa1 5M 3M", "write -z 10M 1M", "discard 40M 2M"])
        # c2: commit of the top into a qcow2 layer; c3: into a raw layer; c4: of a middle layer.
        senv.call("CreateDisk", "s", "c2", "", t(small), opts())
        write_top(senv, "s", "c2", ["write -P 0xb1 0 4M", "write -P 0xb2 50M 2M"])
        senv.call("CreateDisk", "s", "c3", "", t(small), opts(format="raw"))
        write_top(senv, "s", "c3", ["write -P 0xc1 0 16M", "write -P 0xc2 40M 8M"])
        senv.call("CreateDisk", "s", "c4", "", t(small), opts())
        write_top(senv, "s", "c4", ["write -P 0xd1 0 4M"])
        for disk in ("c2", "c3", "c4"):
            senv.call("Snapshot", "s", disk, opts())
            write_top(senv, "s", disk, [f"write -P 0x{0x60 + i:02x} {i * 4 * MiB} {4 * MiB}" for i in range(16)]
                      + ["write -z 32M 1M"])
        senv.call("Snapshot", "s", "c4", opts())
        write_top(senv, "s", "c4", ["write -P 0xd9 8M 1M"])
        senv.restart(SLOW)
        SIG[senv].conn.close()
        SIG[senv] = Signals(senv)  # job paths start again at 1: forget the first daemon's signals

        # Progress, and what a running job refuses.
        ch = chain(senv, "s", "p")
        samples = []

        def poll(job):
            first = True
            end = time.time() + 300
            while time.time() < end:
                p = job_props(senv, job)
                samples.append((p["State"], p["BytesDone"], p["BytesTotal"], p["Progress"]))
                if p["State"] != "running":
                    break
                if first and p["BytesDone"] > 0:
                    first = False
                    jobs = [tuple(plain(j)) for j in senv.call("ListJobs")]
                    check((job, "flatten", "s", "p") in jobs, "ListJobs lists the running flatten")
                    for label, method, args in [
                            ("Rebase", "Rebase", ("s", "p", ch[1][0], opts())),
                            ("flatten", "Rebase", ("s", "p", "", opts())),
                            ("unsafe Rebase", "Rebase", ("s", "p", ch[1][0], opts(unsafe=True))),
                            ("Commit", "Commit", ("s", "p", ch[0][0], opts()))]:
                        err, res = senv.try_call(method, *args)
                        want = INUSE if ROOT or "unsafe" not in label else DENIED  # unsafe: uid 0 only
                        check_eq(err, want, f"{label} while a flatten runs on the disk: {short(want)} ({res})")
                    check_eq(ids_of(chain(senv, "s", "p")), ids_of(ch), "the chain is unchanged while the job runs")
                    if root_only("Job.Cancel as uid 1"):
                        err, _ = senv.call_object_as(OTHER, job, JOB_IFACE, "Cancel")
                        check_eq(err, DENIED, "Job.Cancel by another uid: AccessDenied")
                time.sleep(0.005)
            check(not first, "progress: the job was still running when its first bytes were done")

        run_op(senv, "s", "p", Plan(ch, "flatten", None), "flatten of 256 MiB in 1 MiB steps", hook=poll)
        running = [s for s in samples if s[0] == "running"]
        check(len(running) >= 3, f"progress: sampled the running job ({len(running)} samples)")
        check(any(0 < s[1] < s[2] for s in running), "progress: BytesDone seen strictly between 0 and BytesTotal")
        check(len({s[2] for s in samples}) == 1 and samples[-1][2] >= 200 * MiB,
              f"progress: BytesTotal constant and covers the data ({sorted({s[2] for s in samples})})")
        check(all(a[1] <= b[1] and a[3] <= b[3] for a, b in zip(samples, samples[1:])),
              "progress: BytesDone and Progress never go back")
        check(all(s[2] == 0 or abs(s[3] - s[1] / s[2]) < 1e-3 for s in samples) and all(0 <= s[3] <= 1 for s in samples),
              "progress: Progress = BytesDone / BytesTotal, within 0..1")
        check(len({s[1] for s in running}) >= 3, f"progress: BytesDone advanced ({len({s[1] for s in running})} values)")

        # Cancellation: everything byte-identical, then the same operation completes.
        cases = [("c1", "flatten", None, "flatten"), ("c2", "commit", 0, "commit of the top into qcow2"),
                 ("c3", "commit", 0, "commit of the top into raw"), ("c4", "commit", 1, "commit of a middle layer")]
        for disk, kind, arg, what in cases:
            ch = chain(senv, "s", disk)
            plan = Plan(ch, kind, arg)
            label = f"cancelled {what}"
            ref = os.path.join(senv.tmp, "ref.raw")
            guest_raw(senv, ch[0], ref)
            before = snap(senv)
            err, job = launch(senv, plan.method, plan.args("s", disk))
            if not check_eq(err, None, f"{label}: accepted ({job if err else ''})"):
                continue
            end = time.time() + 120
            p = job_props(senv, job)
            while p["State"] == "running" and p["BytesDone"] < 4 * MiB and time.time() < end:
                time.sleep(0.005)
                p = job_props(senv, job)
            check(p["State"] == "running" and 0 < p["BytesDone"] < p["BytesTotal"],
                  f"{label}: running mid-way when cancelled ({p['State']}, {p['BytesDone']}/{p['BytesTotal']})")
            check_eq(job_cancel(senv, job), None, f"{label}: Cancel accepted")
            senv.wait_job(job)
            p = job_props(senv, job)
            check_eq((p["State"], p["ErrorName"]), ("cancelled", CANCELLED), f"{label}: State cancelled, ErrorName Cancelled")
            check(p["ErrorMessage"] != "" and "\n" not in p["ErrorMessage"], f"{label}: one-line ErrorMessage")
            check_eq(SIG[senv].wait(job), ("cancelled", CANCELLED, p["ErrorMessage"]), f"{label}: Finished signal")
            check_eq(store_diff(before, snap(senv)), [], f"{label}: every file and record byte-identical")
            check_eq([c[:5] + c[6:] for c in chain(senv, "s", disk)], [c[:5] + c[6:] for c in ch],
                     f"{label}: GetChain unchanged (but for allocated bytes)")
            check_eq(list(senv.call("Verify", "s")), [], f"{label}: Verify clean")
            store_invariants(senv, label)
            rc, out = compare(spath(senv, ch[0][1]), ch[0][2], ref, "raw")
            check_eq(rc, 0, f"{label}: guest view unchanged ({out})")
            check_eq(job_cancel(senv, job), INVALID, f"{label}: Cancel of the finished job: InvalidArgs")
            run_op(senv, "s", disk, Plan(chain(senv, "s", disk), kind, arg), f"{what} after a cancelled one")
        senv.restart()
        check_eq(list(senv.call("Verify", "s")), [], "slow: after a restart Verify is clean")
        store_invariants(senv, "slow: after a restart")
    finally:
        senv.close()


def main():
    group = f"vdrc{os.getpid()}"
    gid = None
    if shutil.which("groupadd") and root_only("groupadd"):
        p = run(["groupadd", group])
        if p.returncode == 0:
            gid = grp.getgrnam(group).gr_gid
    t0 = time.time()
    try:
        env = Env(VDISKD, config_extra=f"[Access]\nAdminGroup={group}\n" if gid is not None else "")
        try:
            env.start()
            SIG[env] = Signals(env)
            pool = make_catalog(env, random.Random(SEED))
            section("errors", errors_section, env, pool)
            section("in use", inuse_section, env, pool)
            section("authorization", auth_section, env, pool, gid)
            if root_only("unsafe rebase (uid 0 only; the authorization section checks its refusal)"):
                section("unsafe rebase", unsafe_section, env, pool)
            section("commit of a layer smaller than its backing", smaller_section, env)
            section("commit into a smaller backing layer", grow_section, env)
            section("randomized differential runs", randomized, env, pool)
            check(env.canary_unchanged(), "canary unchanged")
            env.stop()
        finally:
            for p in list(STARTED):
                if p.poll() is None:
                    p.kill()
                    p.wait()
            env.close()
        os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        section("ChainTooDeep", depth_section)
        section("progress and cancellation", slow_section)
    finally:
        if gid is not None:
            run(["groupdel", group])
    print(f"seed {SEED}; {time.time() - t0:.0f}s")
    finish()


if __name__ == "__main__":
    main()
