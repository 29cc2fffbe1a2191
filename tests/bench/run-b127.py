# SPDX-License-Identifier: LGPL-2.1-or-later
"""B1 (chain listing and verification), B2 (snapshot) and B7 (durability and scale) of
docs/benchmarks.md, against qemu-img 7.2 (Debian 12) and qemu-img 10.0.2 (bookworm-backports,
fetched by fetch-qemu-img.sh without installing), side by side in one run.

Everything runs on a private dbus-daemon (vdisktest.Env) with the real vdiskd on temporary stores; the
chains are built through the API (CreateImage, CreateVM, CreateDisk, Snapshot). Every measured figure is
the median of per-round ratios: one untimed warm-up round, then PAIRS rounds in which vdisk and every
peer run once each, in a fixed order, on the same files.

B1  vdisk: the whole processes `vdiskctl chain VM d` + `vdiskctl verify VM` (wall clock, both);
    peer: `qemu-img info --backing-chain --output=json TOP` run in the store's images directory;
    for reference, `busctl call` of the same GetChain and Verify (the floor of a client process).
    All depths take part in every round. Checked: exit statuses, layer counts of both sides on every
    run, and once per depth the same files in the same order on both sides.
B2  vdisk: one Snapshot call end to end (reply received, so the daemon's record fsyncs included) from
    the C sd-bus client bench-b127 (connection set up before the clock starts), and, for reference,
    the whole process `vdiskctl snapshot VM d`; peer: the whole process
    `qemu-img create -f qcow2 -b TOP -F qcow2 NEW` and the same with `-u` (plus the size, which -u
    needs), TOP being vdisk's current top file. Depth 1 uses a fresh blank disk per call; deeper
    chains take their snapshots one after the other (the depth grows by 2 per round). Checked:
    GetChain, Verify, qemu-img check of the new tops and of the peer's files, qemu-img compare of the
    final top against the chain before.
B7  (a) 100 VMs x 20 snapshots: rounds of one Snapshot per VM (C client), interleaved with as many
    runs of the floor (write a temporary file, fsync, rename over, fsync the directory; C, same
    filesystem); per-operation ratio = median over rounds of (sum of the round's snapshots / sum of
    its floor writes). (b) start: exec of vdiskd to org.vdisk1 owned on the bus (NameOwnerChanged,
    watched by bench-b127 start) with 10,000 VM records (each one disk: a private overlay on a shared
    catalog image), written into the stopped daemon's store as clones of a VM made through the API,
    interleaved with starts on an empty store. (c) memory: VmRSS/VmHWM of vdiskd from /proc with a
    1000-layer chain after GetChain + Verify, in the daemon that built the chains and after a restart.

Usage: run-b127.py VDISKD VDISKCTL BENCH-B127 [--quick] [--pairs N] [--only B1,B2,B7]
                   [--qemu10-dir DIR | --no-qemu10] [--workdir DIR] [--results FILE] [--cold-start]"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import dbus  # noqa: E402
from vdisktest import BUS_NAME, Env, opts  # noqa: E402

GiB = 1 << 30
SYSTEM_QEMU_IMG = "/usr/bin/qemu-img"
CHECK_QEMU_IMG = SYSTEM_QEMU_IMG  # verification (compare, check) always with Debian's qemu-img
LAYER_ROW = re.compile(r"(^|\s)[0-9a-f]{32}\s")
MEM_TARGET = 7_000_000  # bytes ("7 MB", read strictly)
INPROC_CALLS = 5  # B1: GetChain + Verify pairs per depth and round on an open connection


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def run(argv, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}... exited {p.returncode}: {p.stderr[-2000:]}")
    return p.stdout


def timed(argv, cwd=None, ok=(0,)):
    """Runs a whole process; returns (wall seconds, stdout). Spawn to exit, output read from a pipe."""
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t = time.perf_counter() - t0
    if p.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr[-2000:]}")
    return t, p.stdout


def med(v):
    return statistics.median(v)


def ms(s):
    return f"{s * 1000:.2f}" if s < 10 else f"{s * 1000:.0f}"


def verdict(ok):
    return "PASS" if ok else "**MISS**"


class Check:
    """Every benchmark verifies its results; a failed check fails the run (after the report)."""

    def __init__(self):
        self.failed = []
        self.count = 0

    def __call__(self, cond, what):
        self.count += 1
        if not cond:
            log(f"CHECK FAILED: {what}")
            self.failed.append(what)
        return cond


check = Check()


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "VmData"):
                out[k] = int(v.split()[0]) * 1024
    return out


def proc_cpu(pid):
    """User + system CPU seconds of a process so far."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def chain_of(env, vm, disk="d"):
    return [tuple(x) for x in env.call("GetChain", vm, disk)]


def top_path(env, vm, disk="d"):
    return os.path.join(env.store, str(env.call("GetChain", vm, disk)[0][1]))


def snapshots(cfg, env, vm, n, disk="d"):
    """n Snapshot calls through the C client; returns their times in seconds."""
    out = run([cfg.bench, "snapshot", vm, disk, str(n)], env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=env.address))
    return [x / 1e9 for x in json.loads(out)["ns"]]


def make_chain(cfg, env, vm, depth):
    """VM `vm` with disk d of `depth` layers: a blank qcow2 disk for 1, else an overlay on the catalog
    image 'base' plus snapshots."""
    env.call("CreateVM", vm, dbus.UInt32(0), opts())
    env.call("CreateDisk", vm, "d", "" if depth == 1 else "base", dbus.UInt64(GiB), opts())
    if depth > 2:
        snapshots(cfg, env, vm, depth - 2)
    check(len(chain_of(env, vm)) == depth, f"{vm} has {depth} layers")


def verify_empty(env, vm):
    problems = env.call("Verify", vm)
    return check(len(problems) == 0, f"Verify {vm}: no problems (got {[tuple(p) for p in problems][:3]})")


def qemu_check(path, what, cwd=None):
    p = subprocess.run([CHECK_QEMU_IMG, "check", "-q", "-f", "qcow2", path], capture_output=True, text=True, cwd=cwd)
    return check(p.returncode == 0, f"qemu-img check {what}: {p.stdout[-300:]}{p.stderr[-300:]}")


def qemu_compare(a, b, what):
    p = subprocess.run([CHECK_QEMU_IMG, "compare", "-q", "-f", "qcow2", "-F", "qcow2", a, b], capture_output=True,
                       text=True)
    return check(p.returncode == 0, f"qemu-img compare {what}: {p.stdout[-300:]}{p.stderr[-300:]}")


# ---------------------------------------------------------------- B1

def bench_b1(cfg, env, depths):
    log(f"B1: chain listing and verification, depths {depths}, {cfg.pairs} rounds")
    img = os.path.join(env.store, "images")
    cases = {}
    for d in depths:
        vm = f"c{d}"
        top = os.path.basename(top_path(env, vm))
        cases[d] = (vm, top)
        # Once per depth, untimed: both sides name the same files in the same order.
        mine = json.loads(run([cfg.vdiskctl, "--json=short", "chain", vm, "d"]))
        for _, q in cfg.peers:
            theirs = json.loads(run([q, "info", "--backing-chain", "--output=json", top], cwd=img))
            check([os.path.basename(x["file"]) for x in mine] == [os.path.basename(x["filename"]) for x in theirs],
                  f"B1 depth {d}: vdiskctl chain and {q} info name the same files in the same order")
            check(all(x["format"] == y["format"] for x, y in zip(mine, theirs)), f"B1 depth {d}: same formats")

    def one_round():
        res = {}
        for d in depths:
            vm, top = cases[d]
            t1, out1 = timed([cfg.vdiskctl, "chain", vm, "d"])
            t2, out2 = timed([cfg.vdiskctl, "verify", vm])  # exit 1 would mean problems: refused by timed()
            rows = sum(1 for ln in out1.splitlines() if LAYER_ROW.search(ln))
            check(rows == d, f"B1 depth {d}: vdiskctl chain printed {d} layers (got {rows})")
            check("consistent" in out2, f"B1 depth {d}: vdiskctl verify reports a consistent VM")
            r = {"vdisk": t1 + t2, "chain": t1, "verify": t2}
            if cfg.busctl:
                # The floor of any client process: busctl making the same two calls (no table, no checks).
                b1, _ = timed([cfg.busctl, "--system", "call", "org.vdisk1", "/org/vdisk1", "org.vdisk1.Manager",
                               "GetChain", "ss", vm, "d"])
                b2, _ = timed([cfg.busctl, "--system", "call", "org.vdisk1", "/org/vdisk1", "org.vdisk1.Manager",
                               "Verify", "s", vm])
                r["busctl"], r["busctl chain"], r["busctl verify"] = b1 + b2, b1, b2
            for v, q in cfg.peers:
                t, out = timed([q, "info", "--backing-chain", "--output=json", top], cwd=img)
                check(len(json.loads(out)) == d, f"B1 depth {d}: qemu-img {v} listed {d} layers")
                r[v] = t
            # The daemon's side alone: GetChain + Verify on an open connection (no process start-up).
            j = json.loads(run([cfg.bench, "chain-verify", vm, "d", str(INPROC_CALLS)]))
            check(j["layers"] == d, f"B1 depth {d}: GetChain returned {d} layers")
            r["inproc"] = med([(a + b) / 1e9 for a, b in zip(j["chain_ns"], j["verify_ns"])])
            r["inproc chain"] = med([a / 1e9 for a in j["chain_ns"]])
            r["inproc verify"] = med([b / 1e9 for b in j["verify_ns"]])
            res[d] = r
        return res

    one_round()  # warm-up
    rounds = [one_round() for _ in range(cfg.pairs)]
    rows = []
    for d in depths:
        row = {"depth": d, "vdisk": med([r[d]["vdisk"] for r in rounds]), "chain": med([r[d]["chain"] for r in rounds]),
               "verify": med([r[d]["verify"] for r in rounds])}
        for k in ("inproc", "inproc chain", "inproc verify"):
            row[k] = med([r[d][k] for r in rounds])
        if cfg.busctl:
            for k in ("busctl", "busctl chain", "busctl verify"):
                row[k] = med([r[d][k] for r in rounds])
            row["ratio busctl"] = med([r[d]["vdisk"] / r[d]["busctl"] for r in rounds])
        for v, _ in cfg.peers:
            row[v] = med([r[d][v] for r in rounds])
            row["ratio " + v] = med([r[d]["vdisk"] / r[d][v] for r in rounds])
        rows.append(row)
    return rows


def report_b1(cfg, rows):
    L = ["## B1 — chain listing and verification", ""]
    L.append(f"vdisk: whole processes `vdiskctl chain VM d` + `vdiskctl verify VM` (wall clock, both); peer: "
             f"`qemu-img info --backing-chain --output=json TOP` in the store's images directory. Median of "
             f"{cfg.pairs} per-round ratios after one untimed warm-up round; every depth in every round.")
    L.append("")
    vs = [v for v, _ in cfg.peers]
    L.append("| depth | vdisk ms (chain + verify) | " + " | ".join(f"qemu-img {v} ms" for v in vs) + " | " +
             " | ".join(f"ratio vs {v}" for v in vs) + " | target |")
    L.append("|---|---|" + "---|" * (2 * len(vs)) + "---|")
    targets = {1000: 0.05, 100: 0.25}
    for r in rows:
        t = targets.get(r["depth"])
        tv = "" if t is None else f"≤ {t}: " + ", ".join(f"{v} {verdict(r['ratio ' + v] <= t)}" for v in vs)
        L.append(f"| {r['depth']} | {ms(r['vdisk'])} ({ms(r['chain'])} + {ms(r['verify'])}) | " +
                 " | ".join(ms(r[v]) for v in vs) + " | " + " | ".join(f"{r['ratio ' + v]:.3f}" for v in vs) +
                 f" | {tv} |")
    L.append("")
    L.append("Time per layer (median time / depth) and marginal cost per added layer between depths:")
    L.append("")
    L.append("| depth | vdisk µs/layer | " + " | ".join(f"{v} µs/layer" for v in vs) + " | vdisk marginal µs/layer | " +
             " | ".join(f"{v} marginal µs/layer" for v in vs) + " |")
    L.append("|---|---|" + "---|" * len(vs) + "---|" + "---|" * len(vs))
    prev = None
    for r in rows:
        d = r["depth"]
        marg = ["–"] * (1 + len(vs)) if prev is None else [
            f"{(r[k] - prev[k]) / (d - prev['depth']) * 1e6:.1f}" for k in ["vdisk"] + vs]
        L.append(f"| {d} | {r['vdisk'] / d * 1e6:.1f} | " + " | ".join(f"{r[v] / d * 1e6:.1f}" for v in vs) + " | " +
                 " | ".join(marg) + " |")
        prev = r
    if cfg.busctl:
        L.append("")
        L.append("The client processes against the floor of any client process: `busctl call` of the same `GetChain` "
                 "and `Verify` (whole processes, in the same rounds; `busctl` prints the raw reply, `vdiskctl` the "
                 "table and the verdict):")
        L.append("")
        L.append("| depth | vdiskctl ms (chain + verify) | busctl ms (GetChain + Verify) | ratio vdiskctl / busctl |")
        L.append("|---|---|---|---|")
        for r in rows:
            L.append(f"| {r['depth']} | {ms(r['vdisk'])} ({ms(r['chain'])} + {ms(r['verify'])}) | {ms(r['busctl'])} "
                     f"({ms(r['busctl chain'])} + {ms(r['busctl verify'])}) | {r['ratio busctl']:.3f} |")
    L.append("")
    L.append(f"The daemon's side alone: `GetChain` + `Verify` from the C sd-bus client `bench-b127 chain-verify` on an "
             f"open connection (median of {INPROC_CALLS} pairs of calls per depth and round, median over rounds; "
             f"measured in the same rounds):")
    L.append("")
    L.append("| depth | GetChain µs | Verify µs | both µs | µs/layer | marginal µs/layer |")
    L.append("|---|---|---|---|---|---|")
    prev = None
    for r in rows:
        d = r["depth"]
        marg = "–" if prev is None else f"{(r['inproc'] - prev['inproc']) / (d - prev['depth']) * 1e6:.1f}"
        L.append(f"| {d} | {r['inproc chain'] * 1e6:.0f} | {r['inproc verify'] * 1e6:.0f} | {r['inproc'] * 1e6:.0f} | "
                 f"{r['inproc'] / d * 1e6:.1f} | {marg} |")
        prev = r
    if len(rows) >= 3:
        # Linear: the cost each added layer brings between the two deepest chains is the one it brings
        # between the two before (a quadratic term makes it ~10x per decade). Judged on the daemon's
        # side: whole-process times are dominated by process start-up, whose noise made the marginal
        # cost at small depths negative in a first run.
        a, b, c = rows[-3], rows[-2], rows[-1]
        m1 = (b["inproc"] - a["inproc"]) / (b["depth"] - a["depth"])
        m2 = (c["inproc"] - b["inproc"]) / (c["depth"] - b["depth"])
        L.append("")
        if m1 <= 0:
            L.append(f"Linearity: inconclusive (marginal cost {a['depth']}→{b['depth']} not above noise: {m1 * 1e6:.1f} µs)")
        else:
            L.append(f"Linearity of vdisk (marginal cost per layer {b['depth']}→{c['depth']} vs {a['depth']}→{b['depth']} "
                     f"≤ 1.5×, on the daemon's side): {m2 * 1e6:.1f} µs vs {m1 * 1e6:.1f} µs = {m2 / m1:.2f}×: "
                     f"{verdict(m2 <= 1.5 * m1)}")
    return L


# ---------------------------------------------------------------- B2

def bench_b2(cfg, env, depths):
    log(f"B2: snapshot, depths {depths}, {cfg.pairs} rounds")
    scratch = os.path.join(env.tmp, "peer")
    os.makedirs(scratch, exist_ok=True)
    new = os.path.join(scratch, "new.qcow2")
    n_rounds = cfg.pairs + 1
    fresh = []
    if 1 in depths:
        for i in range(2 * n_rounds):
            make_chain(cfg, env, f"s1-{i:02d}", 1)
            fresh.append(f"s1-{i:02d}")
    before = {d: top_path(env, f"c{d}") for d in depths if d != 1}
    start_depth = {d: len(chain_of(env, f"c{d}")) for d in depths if d != 1}
    for d in depths:
        if d != 1 and start_depth[d] + 2 * n_rounds > cfg.max_chain_depth:
            raise SystemExit(f"B2: depth {d} + {2 * n_rounds} snapshots exceeds MaxChainDepth {cfg.max_chain_depth}; "
                             "use fewer --pairs")

    def one_round(i, last):
        res = {}
        for d in depths:
            vm_c, vm_ctl = (fresh[2 * i], fresh[2 * i + 1]) if d == 1 else (f"c{d}", f"c{d}")
            top = top_path(env, vm_c)
            n0 = len(chain_of(env, vm_c))
            r = {"depth_at": n0}
            r["vdisk"] = snapshots(cfg, env, vm_c, 1)[0]
            t, out = timed([cfg.vdiskctl, "snapshot", vm_ctl, "d"])
            r["vdiskctl"] = t
            check(len(out.strip()) == 32, f"B2 depth {d}: vdiskctl snapshot printed a layer id")
            for v, q in cfg.peers:
                for mode, extra in (("create", []), ("create -u", ["-u"])):
                    argv = [q, "create", "-q", "-f", "qcow2", "-b", top, "-F", "qcow2", *extra, new]
                    if extra:
                        argv.append(str(GiB))
                    t, _ = timed(argv, cwd=scratch)
                    r[f"{v} {mode}"] = t
                    if last:
                        qemu_check(new, f"B2 depth {d}: qemu-img {v} {mode} NEW")
                        info = json.loads(run([CHECK_QEMU_IMG, "info", "--output=json", "-U", new]))
                        check(info.get("backing-filename") == top and info.get("virtual-size") == GiB,
                              f"B2 depth {d}: {v} {mode} NEW names TOP and has TOP's size")
                    os.unlink(new)
            res[d] = r
        return res

    one_round(0, False)  # warm-up
    rounds = [one_round(i + 1, i + 1 == cfg.pairs) for i in range(cfg.pairs)]

    # Checks, untimed: chains grew by what was taken, records and headers agree, images are sound and
    # the guest-visible content is the one before.
    for d in depths:
        vms = fresh if d == 1 else [f"c{d}"]
        for vm in vms:
            ch = chain_of(env, vm)
            want = 2 if d == 1 else start_depth[d] + 2 * n_rounds
            check(len(ch) == want, f"B2 depth {d}: {vm} has {want} layers (got {len(ch)})")
            verify_empty(env, vm)
        vm = vms[-1]
        top = top_path(env, vm)
        qemu_check(top, f"B2 depth {d}: vdisk's new top")
        info = json.loads(run([CHECK_QEMU_IMG, "info", "--backing-chain", "--output=json", "-U", top]))
        check(len(info) == len(chain_of(env, vm)), f"B2 depth {d}: qemu-img sees the whole new chain")
        old = before[d] if d != 1 else os.path.join(env.store, str(chain_of(env, vm)[1][1]))
        qemu_compare(top, old, f"B2 depth {d}: new top vs the chain before")

    rows = []
    for d in depths:
        row = {"depth": d, "range": (rounds[0][d]["depth_at"], rounds[-1][d]["depth_at"]),
               "vdisk": med([r[d]["vdisk"] for r in rounds]), "vdiskctl": med([r[d]["vdiskctl"] for r in rounds])}
        for v, _ in cfg.peers:
            for mode in ("create", "create -u"):
                k = f"{v} {mode}"
                row[k] = med([r[d][k] for r in rounds])
                row["ratio " + k] = med([r[d]["vdisk"] / r[d][k] for r in rounds])
                row["ctl ratio " + k] = med([r[d]["vdiskctl"] / r[d][k] for r in rounds])
        rows.append(row)
    flat = None
    if 1 in depths and max(depths) > 1:
        dmax = max(depths)
        flat = {"dmax": dmax,
                "ratio": med([r[dmax]["vdisk"] / r[1]["vdisk"] for r in rounds]),
                "ctl": med([r[dmax]["vdiskctl"] / r[1]["vdiskctl"] for r in rounds])}
    return rows, flat


def report_b2(cfg, rows, flat):
    vs = [v for v, _ in cfg.peers]
    L = ["## B2 — snapshot", ""]
    L.append(f"vdisk: one `Snapshot` call end to end from the C sd-bus client `bench-b127 snapshot` (call sent to reply "
             f"received, so the daemon's journal, record and directory fsyncs are inside; the client's connection is "
             f"made before the clock starts); for reference also the whole process `vdiskctl snapshot VM d`. Peer: "
             f"the whole process `qemu-img create -f qcow2 -b TOP -F qcow2 NEW` and with `-u` (plus the size, which "
             f"`-u` needs), TOP = vdisk's current top, NEW on the same filesystem. Median of {cfg.pairs} per-round "
             f"ratios after one untimed warm-up round; all depths in every round. Depth 1 uses a fresh blank disk "
             f"per call; deeper chains are snapshotted one call after the other, so the depth before the call "
             f"ranges over the column 'depth at call'.")
    L.append("")
    L.append("| depth | depth at call | vdisk ms | " + " | ".join(f"{v} create ms | {v} create -u ms" for v in vs) +
             " | " + " | ".join(f"ratio vs {v} create | ratio vs {v} create -u" for v in vs) +
             " | target ≤ 1.0× create -u |")
    L.append("|---|---|---|" + "---|---|" * len(vs) + "---|---|" * len(vs) + "---|")
    for r in rows:
        L.append(f"| {r['depth']} | {r['range'][0]}–{r['range'][1]} | {ms(r['vdisk'])} | " +
                 " | ".join(f"{ms(r[v + ' create'])} | {ms(r[v + ' create -u'])}" for v in vs) + " | " +
                 " | ".join(f"{r['ratio ' + v + ' create']:.3f} | {r['ratio ' + v + ' create -u']:.3f}" for v in vs) +
                 " | " + ", ".join(f"{v} {verdict(r['ratio ' + v + ' create -u'] <= 1.0)}" for v in vs) + " |")
    L.append("")
    L.append("Whole process `vdiskctl snapshot` (reference, not the target's measure):")
    L.append("")
    L.append("| depth | vdiskctl ms | " + " | ".join(f"ratio vs {v} create -u" for v in vs) + " |")
    L.append("|---|---|" + "---|" * len(vs))
    for r in rows:
        L.append(f"| {r['depth']} | {ms(r['vdiskctl'])} | " +
                 " | ".join(f"{r['ctl ratio ' + v + ' create -u']:.3f}" for v in vs) + " |")
    if flat:
        L.append("")
        L.append(f"Flat in depth (median of per-round ratios, depth {flat['dmax']} / depth 1, target ≤ 1.2): "
                 f"C client {flat['ratio']:.3f}: {verdict(flat['ratio'] <= 1.2)}; whole-process vdiskctl "
                 f"{flat['ctl']:.3f} (reference).")
    return L


# ---------------------------------------------------------------- B7

def bench_b7_ops(cfg):
    n_vms, n_snap = cfg.b7_vms, cfg.b7_snapshots
    log(f"B7a: {n_vms} VMs x {n_snap} snapshots against the fsync+rename floor")
    env = Env(cfg.vdiskd)
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
        for i in range(n_vms):
            env.call("CreateVM", f"b7vm{i:04d}", dbus.UInt32(0), opts())
            env.call("CreateDisk", f"b7vm{i:04d}", "d", "base", dbus.UInt64(GiB), opts())
        floor_dir = os.path.join(env.tmp, "floor")
        os.mkdir(floor_dir, 0o700)
        check(os.stat(floor_dir).st_dev == os.stat(os.path.join(env.store, "records")).st_dev,
              "B7: the floor runs on the store's filesystem")
        # A record like the VM record in the middle of the run (one disk, ~n_snap/2 + 2 layers).
        size = len(json.dumps({"schema": 1, "name": "b7vm0000", "owner_uid": 0, "generation": 20,
                               "disks": [{"name": "d", "chain": ["0" * 32] * (n_snap // 2 + 2)}]}, indent=2))
        out = run([cfg.bench, "rounds", floor_dir, str(size), str(n_snap), "b7vm", str(n_vms), "d"],
                  env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=env.address))
        res = json.loads(out)
        snap = [x / 1e9 for x in res["snapshot_ns"]]
        flo = [x / 1e9 for x in res["floor_ns"]]
        ratios = [sum(snap[r * n_vms:(r + 1) * n_vms]) / sum(flo[r * n_vms:(r + 1) * n_vms]) for r in range(n_snap)]
        # Checks: every VM has its chain (overlay + warm-up + n_snap), records match headers, images sound.
        for i in range(n_vms):
            vm = f"b7vm{i:04d}"
            check(len(chain_of(env, vm)) == n_snap + 3, f"B7: {vm} has {n_snap + 3} layers (overlay, base, warm-up)")
            verify_empty(env, vm)
        for i in random.Random(7).sample(range(n_vms), min(5, n_vms)):
            vm = f"b7vm{i:04d}"
            top = top_path(env, vm)
            qemu_check(top, f"B7: top of {vm}")
            base = os.path.join(env.store, str(chain_of(env, vm)[-1][1]))
            qemu_compare(top, base, f"B7: {vm}'s top vs its catalog image")
        return {"vms": n_vms, "snapshots": n_snap, "size": size, "snap": med(snap), "floor": med(flo),
                "snap_mean": statistics.mean(snap), "floor_mean": statistics.mean(flo), "ratio": med(ratios),
                "ratio_min": min(ratios), "ratio_max": max(ratios)}
    finally:
        env.close()


def sparse_copy(src_bytes, dst, blocks):
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for off, data in blocks:
            os.pwrite(fd, data, off)
        os.ftruncate(fd, len(src_bytes))
    finally:
        os.close(fd)
    return os.stat(dst).st_ino


def write_record(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2))


def populate(env, n):
    """With the daemon stopped: n-1 clones of VM s00000 (one disk, a private overlay on 'base'), with
    their own layer ids, image files (sparse copies of the template's file) and records."""
    rec = os.path.join(env.store, "records")
    img = os.path.join(env.store, "images")
    vm0 = json.load(open(os.path.join(rec, "vm-s00000.json")))
    lid0 = vm0["disks"][0]["chain"][0]
    layer0 = json.load(open(os.path.join(rec, f"layer-{lid0}.json")))
    data = open(os.path.join(img, layer0["file"]), "rb").read()
    blocks = [(o, data[o:o + 4096]) for o in range(0, len(data), 4096) if data[o:o + 4096].strip(b"\0")]
    for i in range(1, n):
        name = f"s{i:05d}"
        lid = os.urandom(16).hex()
        ino = sparse_copy(data, os.path.join(img, f"{lid}.qcow2"), blocks)
        layer = dict(layer0, layer=lid, file=f"{lid}.qcow2", vm=name, inode=ino)
        write_record(os.path.join(rec, f"layer-{lid}.json"), layer)
        vm = dict(vm0, name=name, disks=[dict(vm0["disks"][0], chain=[lid] + vm0["disks"][0]["chain"][1:])])
        write_record(os.path.join(rec, f"vm-{name}.json"), vm)
    os.sync()


def bench_b7_start(cfg):
    n = cfg.b7_records
    log(f"B7b: daemon start with {n} VM records")
    env = Env(cfg.vdiskd)
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
        env.call("CreateVM", "s00000", dbus.UInt32(0), opts())
        env.call("CreateDisk", "s00000", "d", "base", dbus.UInt64(GiB), opts())
        env.stop()
        t0 = time.perf_counter()
        populate(env, n)
        log(f"  wrote {n - 1} VM clones in {time.perf_counter() - t0:.1f} s")
        files_before = env.store_files()
        empty = os.path.join(env.tmp, "empty-store")

        def start(store):
            if cfg.cold_start:
                os.sync()
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3\n")
            log_len = len(env.log_text())
            log_f = open(env.log, "a")
            p = subprocess.Popen([cfg.bench, "start", cfg.vdiskd, "--store", store, "--config", env.config],
                                 stdout=subprocess.PIPE, stderr=log_f, text=True)
            line = p.stdout.readline()
            if not line:
                p.wait()
                raise RuntimeError(f"vdiskd did not start: {env.log_text()[-2000:]}")
            res = json.loads(line)
            pid = res["pid"]
            mem = proc_status(pid)
            mem["cpu"] = proc_cpu(pid)  # idle once its name is owned: the CPU time its start took
            # How many records came from the start-up cache (docs/design.md, "Start-up"); None: a build without it.
            m = re.search(r"Loaded (\d+) records, (\d+) of them from the start-up cache", env.log_text()[log_len:])
            mem["cached"] = int(m.group(2)) if m else None
            if store == env.store:
                vms = env.call("ListVMs")
                check(len(vms) == n, f"B7 start: ListVMs lists {n} VMs (got {len(vms)})")
                for name in random.Random(len(vms)).sample([str(v[0]) for v in vms], 3):
                    verify_empty(env, name)
                mem_after = proc_status(pid)
            else:
                mem_after = mem
            os.kill(pid, signal.SIGTERM)  # vdiskd, started by our bench-b127 child
            p.stdout.close()
            rc = p.wait(timeout=60)
            log_f.close()
            check(rc == 0, f"B7 start: vdiskd exited cleanly (status {rc})")
            env.wait_name_gone()
            return res["start_ns"] / 1e9, mem, mem_after

        start(env.store)  # warm-up
        start(empty)
        rounds = []
        for _ in range(cfg.pairs):
            full = start(env.store)
            base = start(empty)
            rounds.append((full, base))
        check(env.store_files() == files_before, "B7 start: the store is unchanged by the starts (nothing swept)")
        text = env.log_text()
        check("orphan" not in text.lower() and "refusing" not in text.lower(),
              "B7 start: vdiskd's log shows no swept orphans or refused records")
        return {"records": n, "start": med([r[0][0] for r in rounds]), "start_max": max(r[0][0] for r in rounds),
                "empty": med([r[1][0] for r in rounds]), "ratio": med([r[0][0] / r[1][0] for r in rounds]),
                "cpu": med([r[0][1]["cpu"] for r in rounds]), "cpu_empty": med([r[1][1]["cpu"] for r in rounds]),
                "rss": med([r[0][2]["VmRSS"] for r in rounds]), "hwm": max(r[0][2]["VmHWM"] for r in rounds),
                "rss_empty": med([r[1][1]["VmRSS"] for r in rounds]),
                "cached": [r[0][1]["cached"] for r in rounds]}
    finally:
        env.close()


def report_b7(cfg, ops, st, mem):
    L = ["## B7 — durability and scale", ""]
    if ops:
        L.append(f"**Per operation.** {ops['vms']} VMs (a private overlay on a catalog image each) × {ops['snapshots']} "
                 f"snapshots: rounds of one `Snapshot` per VM from the C sd-bus client, interleaved with as many "
                 f"floor writes (C: write a {ops['size']}-byte temporary file, fsync, rename over the record, fsync "
                 f"the directory) on the store's filesystem; one untimed warm-up round of each first. Ratio per round = "
                 f"sum of its snapshots / sum of its floor writes; median over {ops['snapshots']} rounds.")
        L.append("")
        L.append("| operations | Snapshot ms (median / mean) | floor ms (median / mean) | ratio (min–max over rounds) | target |")
        L.append("|---|---|---|---|---|")
        L.append(f"| {ops['vms'] * ops['snapshots']} | {ms(ops['snap'])} / {ms(ops['snap_mean'])} | "
                 f"{ms(ops['floor'])} / {ms(ops['floor_mean'])} | {ops['ratio']:.2f} ({ops['ratio_min']:.2f}–"
                 f"{ops['ratio_max']:.2f}) | ≤ 1.2: {verdict(ops['ratio'] <= 1.2)} |")
        L.append("")
    if st:
        L.append(f"**Start.** vdiskd exec → `org.vdisk1` owned (NameOwnerChanged seen by `bench-b127 start`, clock "
                 f"read in the child just before `execve`), {st['records']} VM records (one disk each: a private "
                 f"overlay on one catalog image, so {st['records'] + 1} layer records and image files), interleaved with "
                 f"starts on an empty store; page cache {'dropped before each start' if cfg.cold_start else 'warm'}; "
                 f"median of {cfg.pairs} after one warm-up start of each. " +
                 ("This vdiskd has no start-up cache of the records." if None in st["cached"] else
                  f"Records read from the start-up cache (`records.cache`, written by the previous clean stop) in "
                  f"the measured starts: {min(st['cached'])}–{max(st['cached'])} of {2 * st['records'] + 1}."))
        L.append("")
        L.append("| records | start ms (max) | empty store ms | ratio | vdiskd CPU ms (empty store) | VmRSS after ListVMs + Verify, VmHWM | target |")
        L.append("|---|---|---|---|---|---|---|")
        L.append(f"| {st['records']} | {ms(st['start'])} ({ms(st['start_max'])}) | {ms(st['empty'])} | {st['ratio']:.1f} | "
                 f"{ms(st['cpu'])} ({ms(st['cpu_empty'])}) | "
                 f"{st['rss'] / 1e6:.1f} MB, {st['hwm'] / 1e6:.1f} MB (empty store: {st['rss_empty'] / 1e6:.1f} MB) | "
                 f"≤ 1 s: {verdict(st['start'] <= 1.0)} |")
        L.append("")
    if mem:
        L.append(f"**Memory.** `VmRSS`/`VmHWM` of vdiskd from `/proc/PID/status` with a {mem['depth']}-layer chain "
                 f"(the store also holds the other B1 chains: {mem['layers']} layers in all), after `GetChain` + "
                 f"`Verify`. Target ≤ 7 MB, read strictly as 7,000,000 bytes, on the peak (VmHWM) of both daemons.")
        L.append("")
        L.append("| daemon | VmRSS | VmHWM | RssAnon | target |")
        L.append("|---|---|---|---|---|")
        for label, m in mem["rows"]:
            judged = "" if label.startswith("empty") else f"≤ 7 MB: {verdict(m['VmHWM'] <= MEM_TARGET)}"
            L.append(f"| {label} | {m['VmRSS'] / 1e6:.2f} MB | {m['VmHWM'] / 1e6:.2f} MB | {m['RssAnon'] / 1e6:.2f} MB | "
                     f"{judged} |")
        L.append("")
    return L


# ---------------------------------------------------------------- main

def machine_info(workdir):
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    fs = run(["df", "--output=fstype", workdir]).splitlines()[-1].strip()
    dev = run(["df", "--output=source", workdir]).splitlines()[-1].strip()
    opts_ = ""
    p = subprocess.run(["findmnt", "-n", "-o", "OPTIONS", "-T", workdir], capture_output=True, text=True)
    if p.returncode == 0:
        opts_ = p.stdout.strip()
    osr = ""
    try:
        osr = [ln.split("=", 1)[1].strip().strip('"') for ln in open("/etc/os-release") if ln.startswith("PRETTY_NAME=")][0]
    except (OSError, IndexError):
        pass
    dbusv = run(["dbus-daemon", "--version"]).splitlines()[0]
    sdv = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libsystemd0"], capture_output=True, text=True).stdout
    return {"CPUs (nproc)": os.cpu_count(), "RAM": f"{mem / GiB:.1f} GiB", "kernel": platform.release(), "OS": osr,
            "store filesystem": f"{fs} on {dev} ({opts_}), work directory {workdir}",
            "D-Bus": f"{dbusv}, libsystemd {sdv}"}


def vdiskd_label(vdiskd):
    src = os.path.dirname(os.path.dirname(os.path.dirname(vdiskd)))
    p = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h %s"], capture_output=True, text=True)
    if p.returncode != 0:
        return vdiskd
    dirty = subprocess.run(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True).stdout.strip()
    return f"built from {p.stdout.strip()[:90]}" + (" plus uncommitted changes" if dirty else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vdiskd")
    ap.add_argument("vdiskctl")
    ap.add_argument("bench", help="the bench-b127 helper")
    ap.add_argument("--quick", action="store_true", help="smoke run: depths up to 100, 20 VMs x 5 snapshots, "
                                                         "1,000 records, 5 rounds")
    ap.add_argument("--pairs", type=int, help="measured rounds (default 7, --quick 5)")
    ap.add_argument("--only", help="comma-separated subset of B1,B2,B7")
    ap.add_argument("--qemu10-dir", default=None, help="cache directory for qemu-img 10.0.2 (default: BUILD/qemu-img-10)")
    ap.add_argument("--no-qemu10", action="store_true", help="run against Debian's qemu-img 7.2 only")
    ap.add_argument("--workdir", default="/var/tmp", help="where the stores live")
    ap.add_argument("--cold-start", action="store_true", help="drop the page cache before each daemon start (root; "
                                                              "disturbs anything else running on the machine)")
    ap.add_argument("--vdiskd-label", help="what to call the vdiskd build in the report")
    ap.add_argument("--results", default=None, help="write the Markdown report here (default: print it)")
    cfg = ap.parse_args()
    if cfg.pairs is None:
        cfg.pairs = 5 if cfg.quick else 7
    if cfg.pairs < 5:
        log("note: fewer than 5 pairs is below what docs/benchmarks.md asks for")
    only = set(cfg.only.split(",")) if cfg.only else {"B1", "B2", "B7"}
    for tool in (SYSTEM_QEMU_IMG, "dbus-daemon"):
        if not shutil.which(tool):
            log(f"SKIP: {tool} not installed")
            sys.exit(77)
    cfg.vdiskd, cfg.vdiskctl, cfg.bench = (os.path.abspath(x) for x in (cfg.vdiskd, cfg.vdiskctl, cfg.bench))
    cfg.busctl = shutil.which("busctl")
    cfg.b1_depths = [1, 10, 100] if cfg.quick else [1, 10, 100, 1000]
    cfg.b2_depths = [1, 100] if cfg.quick else [1, 100, 1000]
    cfg.b7_vms, cfg.b7_snapshots = (20, 5) if cfg.quick else (100, 20)
    cfg.b7_records = 1000 if cfg.quick else 10000
    cfg.workdir = tempfile.mkdtemp(prefix="vdisk-b127-", dir=cfg.workdir)
    os.chmod(cfg.workdir, 0o755)
    tempfile.tempdir = cfg.workdir  # vdisktest.Env makes its store here

    cfg.peers = [(run([SYSTEM_QEMU_IMG, "--version"]).split()[2], SYSTEM_QEMU_IMG)]
    qemu10_error = None
    if not cfg.no_qemu10:
        qdir = cfg.qemu10_dir or os.path.join(os.path.dirname(os.path.dirname(cfg.vdiskd)), "qemu-img-10")
        fetch = os.path.join(HERE, "fetch-qemu-img.sh")
        p = subprocess.run([fetch, qdir], capture_output=True, text=True) if os.path.exists(fetch) else \
            subprocess.CompletedProcess([fetch], 1, "", f"{fetch} is missing")
        if p.returncode == 0 and p.stdout.strip():
            q10 = p.stdout.strip().splitlines()[-1]
            cfg.peers.append((run([q10, "--version"]).split()[2], q10))
        else:
            qemu10_error = (p.stderr.strip().splitlines() or ["no output"])[-1]
            log(f"warning: qemu-img 10.0.2 could not be fetched: {p.stderr[-1500:]}")
    log("peers: " + ", ".join(f"{v} ({b})" for v, b in cfg.peers))
    machine = machine_info(cfg.workdir)
    load_start = open("/proc/loadavg").read().split()[:3]
    started = time.time()

    b1 = b2 = flat = ops = st = mem = None
    try:
        if only & {"B1", "B2", "B7"}:  # B7's memory figure uses the deepest B1 chain
            depths = sorted(set((cfg.b1_depths if "B1" in only else []) + (cfg.b2_depths if "B2" in only else []) +
                                ([cfg.b1_depths[-1]] if "B7" in only else [])))
            env = Env(cfg.vdiskd)
            try:
                env.start()
                mem_rows = [("empty store, just started", proc_status(env.daemon.pid))]
                props = dbus.Interface(env.bus.get_object(BUS_NAME, "/org/vdisk1", introspect=False),
                                       "org.freedesktop.DBus.Properties")
                cfg.max_chain_depth = int(props.Get("org.vdisk1.Manager", "MaxChainDepth"))
                cfg.vdisk_version = str(props.Get("org.vdisk1.Manager", "Version"))
                env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
                t0 = time.perf_counter()
                for d in depths:
                    make_chain(cfg, env, f"c{d}", d)
                log(f"  built chains {depths} in {time.perf_counter() - t0:.1f} s")
                for d in depths:
                    verify_empty(env, f"c{d}")
                if "B1" in only:
                    b1 = bench_b1(cfg, env, cfg.b1_depths)
                if "B7" in only:
                    dm = cfg.b1_depths[-1]
                    n_layers = sum(depths) - (len([d for d in depths if d > 1])) + 1  # overlays share 'base'
                    check(len(chain_of(env, f"c{dm}")) == dm, "memory: the chain is intact")
                    verify_empty(env, f"c{dm}")
                    mem_rows.append((f"built the chains through the API{', served B1' if b1 else ''}, then "
                                     f"GetChain + Verify", proc_status(env.daemon.pid)))
                    env.restart()
                    chain_of(env, f"c{dm}")
                    verify_empty(env, f"c{dm}")
                    mem_rows.append(("restarted, then GetChain + Verify", proc_status(env.daemon.pid)))
                    mem = {"depth": dm, "layers": n_layers, "rows": mem_rows}
                if "B2" in only:
                    b2, flat = bench_b2(cfg, env, cfg.b2_depths)
            finally:
                env.close()
        if "B7" in only:
            ops = bench_b7_ops(cfg)
            st = bench_b7_start(cfg)
    finally:
        shutil.rmtree(cfg.workdir, ignore_errors=True)

    elapsed = time.time() - started
    load_end = open("/proc/loadavg").read().split()[:3]
    machine["load average (1, 5, 15 min) at start / end"] = f"{' '.join(load_start)} / {' '.join(load_end)} (other " \
        "work shares the machine; the interleaving is what keeps the ratios comparable)"
    L = ["# Benchmark results: B1, B2, B7", ""]
    L.append(f"Run {datetime.date.today().isoformat()}, {elapsed / 60:.1f} min{' (--quick: a smoke run)' if cfg.quick else ''}.")
    L.append("")
    L.append("Reproduce: `meson setup build && ninja -C build bench-b127`, i.e. "
             "`/usr/bin/python3 tests/bench/run-b127.py build/daemon/vdiskd build/client/vdiskctl "
             "build/tests/bench/bench-b127 [--quick]` (root only for `--cold-start`; `tests/bench/fetch-qemu-img.sh DIR` fetches "
             "qemu-img 10.0.2 from bookworm-backports into DIR without installing; the default DIR is "
             "`build/qemu-img-10`). Every run checks its results (exit statuses, layer counts, `Verify`, "
             f"`qemu-img check`/`compare`); {check.count} checks, {len(check.failed)} failed.")
    L.append("")
    L.append("Machine and versions:")
    L.append("")
    for k, v in machine.items():
        L.append(f"- {k}: {v}")
    L.append(f"- vdiskd {getattr(cfg, 'vdisk_version', '?')} ({cfg.vdiskd_label or vdiskd_label(cfg.vdiskd)})")
    L.append("- peers: " + ", ".join(f"qemu-img {v} (`{b}`)" for v, b in cfg.peers))
    if qemu10_error:
        L.append(f"- qemu-img 10.0.2 **could not be fetched**: {qemu10_error}")
    L.append("")
    if b1:
        L += report_b1(cfg, b1) + [""]
    if b2:
        L += report_b2(cfg, b2, flat) + [""]
    if ops or st or mem:
        L += report_b7(cfg, ops, st, mem)
    if check.failed:
        L.append("**Checks failed:**")
        L.append("")
        L += [f"- {f}" for f in check.failed]
    text = "\n".join(L) + "\n"
    print(text)
    if cfg.results:
        with open(cfg.results, "w") as f:
            f.write(text)
    sys.exit(1 if check.failed else 0)


if __name__ == "__main__":
    main()
