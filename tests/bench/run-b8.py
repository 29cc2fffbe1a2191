# SPDX-License-Identifier: LGPL-2.1-or-later
"""B8 of /work/shared/benchmarks.md (skeleton): guest I/O through vdisk's export modes against the
chain-fd mode on the same chain. A real Linux guest (tests/guest/guest.py, QEMU TCG) runs guest-io bench
on its virtio-blk disk: sequential 1 MiB read and write at QD1, random 4 KiB read and write at QD1 and
QD16, all O_DIRECT.

The chain: an empty qcow2 catalog image, the VM disk's overlay on it, filled by the guest with a known
pattern over the whole disk (booted once in fd mode for that), and a snapshot on top that receives the
benchmark's writes. Reads cover the first half of the disk, writes the second half, so after every
session the guest checks that the first half still holds the pattern (and the end of the run checks
qemu-img check of every layer and Verify).

Modes: "fd" (vdiskctl open vm d -- QEMU: QEMU gets the chain's fds) works today. "vhost-user-blk" and
"nbd" are run as `vdiskctl open vm d --export=MODE -- QEMU`; a mode that vdiskctl does not support
(`--export=MODE --print` fails) is skipped with vdiskctl's message. Rounds interleave the modes
(fd, vhost-user-blk, nbd, fd, ...): each session boots the guest through the mode, runs every workload
once and powers off. One untimed warm-up round, then PAIRS rounds; per workload the table shows the
median of fd's figure (MB/s for sequential, IOPS for random) and for every other mode the median of the
per-round ratios mode / fd (target ≥ 0.9 on every row).

Still to add with the exports (benchmarks.md B8): helper start time and RSS, and the guest write latency
added by a live snapshot and a live commit (guest-io writer --log gives every write's latency).

Usage: run-b8.py VDISKD VDISKCTL [--modes fd,vhost-user-blk,nbd] [--pairs N] [--seconds S] [--size-mib N]
                 [--quick] [--results FILE] [--json FILE]
Exits 77 when no guest can run here."""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "guest"))
import dbus  # noqa: E402
import guest  # noqa: E402
from vdisktest import Env, opts  # noqa: E402

MiB = 1 << 20
MODES = ["fd", "vhost-user-blk", "nbd"]
# (name, guest-io bench arguments, the figure compared)
WORKLOADS = [
    ("seqread 1M QD1", "seqread --bs 1M --qd 1", "mb_s"),
    ("seqwrite 1M QD1", "seqwrite --bs 1M --qd 1", "mb_s"),
    ("randread 4K QD1", "randread --bs 4K --qd 1", "iops"),
    ("randread 4K QD16", "randread --bs 4K --qd 16", "iops"),
    ("randwrite 4K QD1", "randwrite --bs 4K --qd 1", "iops"),
    ("randwrite 4K QD16", "randwrite --bs 4K --qd 16", "iops"),
]
UNITS = {"mb_s": "MB/s", "iops": "IOPS"}
TARGET = 0.9
SEED = 0xB8


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, cfg, env):
        self.cfg = cfg
        self.env = env
        self.size = cfg.size_mib * MiB
        self.half = self.size // 2

    def vdiskctl(self, *args):
        return subprocess.run([self.cfg.vdiskctl, *args], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, LC_ALL="C"))

    def qemu(self):
        # The same guest in every mode (shared memory: a vhost-user back end maps the guest's RAM).
        return guest.qemu_argv(["-device", "virtio-blk-pci,drive=d"], shared_memory=True)

    def launcher(self, mode):
        export = [] if mode == "fd" else [f"--export={mode}"]
        return [self.cfg.vdiskctl, "open", "vm", "d", *export, "--"]

    def unsupported(self, mode):
        """Why `mode` cannot run (vdiskctl's message), or None."""
        if mode == "fd":
            return None
        p = self.vdiskctl("open", "vm", "d", f"--export={mode}", "--print", "--", "qemu-system-x86_64")
        if p.returncode != 0:
            msg = " ".join(p.stderr.split())[-200:]
            return f"vdiskctl open --export={mode} not supported (exit {p.returncode}: {msg})"
        return None

    def build_chain(self):
        env = self.env
        env.call("CreateImage", "b8base", "qcow2", dbus.UInt64(self.size), opts())
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        env.call("CreateDisk", "vm", "d", "b8base", dbus.UInt64(0), opts())
        with self.session("fd", "fill") as g:
            r = g.run_json(f"guest-io fill /dev/vda 0 {self.size} {SEED}", timeout=1200)
            log(f"filled {self.size // MiB} MiB in the guest in {r['us'] / 1e6:.1f} s")
        env.call("Snapshot", "vm", "d", opts())
        return env.call("GetChain", "vm", "d")

    class _Session:
        def __init__(self, bench, mode, what):
            self.b, self.mode, self.what = bench, mode, what

        def __enter__(self):
            b = self.b
            logpath = os.path.join(b.env.tmp, f"console-{self.mode}-{self.what}.log")
            self.g = guest.Guest(b.launcher(self.mode) + b.qemu(), log=logpath, cwd=b.env.tmp)
            self.g.start(timeout=180)
            self.g.wait_device("/dev/vda")
            return self.g

        def __exit__(self, exc, *rest):
            if exc is None:
                status = self.g.poweroff(timeout=120)
                if status != 0:
                    raise RuntimeError(f"QEMU ({self.mode}) exited with {status}")
            self.g.kill()
            # The lease ends when vdiskd sees the connection go: wait until the disk is free again.
            # (vdiskctl open --print takes a read-write lease and ends it at once; exit 3 while refused.)
            for _ in range(200):
                if self.b.vdiskctl("open", "vm", "d", "--print", "--", "true").returncode != 3:
                    break
                time.sleep(0.05)

    def session(self, mode, what):
        return self._Session(self, mode, what)

    def run_mode(self, mode, rnd):
        """One session: every workload once. {workload: guest-io's JSON}."""
        out = {}
        with self.session(mode, f"round{rnd}") as g:
            boot = g.boot_seconds
            for name, args, _ in WORKLOADS:
                region = (f"--offset 0 --size {self.half}" if "read" in args.split()[0]
                          else f"--offset {self.half} --size {self.half}")
                out[name] = g.run_json(f"guest-io bench /dev/vda {args} --seconds {self.cfg.seconds} {region}",
                                       timeout=self.cfg.seconds * 20 + 60)
            r = g.run_json(f"guest-io check /dev/vda 0 {self.half} {SEED}", timeout=600, want_status=None)
            if not r.get("ok"):
                raise RuntimeError(f"{mode}: the read half of the disk lost its pattern: {r}")
        out["_boot_s"] = boot
        return out


def render(cfg, modes, skipped, rounds, checks, machine):
    """Markdown report."""
    L = []
    L.append(f"B8 guest I/O by mode, {len(rounds)} interleaved rounds after 1 warm-up, {cfg.seconds} s per "
             f"workload, {cfg.size_mib} MiB disk (3-layer chain), QEMU TCG, 1 vCPU")
    L.append("")
    L.append(f"machine: {machine}")
    L.append("")
    head = ["workload", "fd"] + [f"{m} / fd" for m in modes if m != "fd"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for name, _, key in WORKLOADS:
        fd_vals = [r["fd"][name][key] for r in rounds if "fd" in r]
        row = [name, f"{statistics.median(fd_vals):.1f} {UNITS[key]}" if fd_vals else "–"]
        for m in modes:
            if m == "fd":
                continue
            if m in skipped:
                row.append("skipped")
                continue
            ratios = [r[m][name][key] / r["fd"][name][key] for r in rounds if m in r and "fd" in r and r["fd"][name][key]]
            if ratios:
                med = statistics.median(ratios)
                row.append(f"{med:.2f} ({'met' if med >= TARGET else 'MISSED'} ≥ {TARGET})")
            else:
                row.append("–")
        L.append("| " + " | ".join(row) + " |")
    boots = {m: [r[m]["_boot_s"] for r in rounds if m in r] for m in modes if m not in skipped}
    L.append("")
    L.append("- guest boot to shell (median): " + ", ".join(f"{m} {statistics.median(v):.2f} s" for m, v in boots.items() if v))
    for m, why in skipped.items():
        L.append(f"- skipped {m}: {why}")
    L.append("- checks: " + "; ".join(checks))
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("vdiskd")
    ap.add_argument("vdiskctl")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 2 s on a 64 MiB disk")
    ap.add_argument("--results", default=None, help="append the Markdown report to this file")
    ap.add_argument("--json", default=None, help="write every round's raw figures here")
    cfg = ap.parse_args()
    cfg.vdiskd, cfg.vdiskctl = os.path.abspath(cfg.vdiskd), os.path.abspath(cfg.vdiskctl)
    if cfg.quick:
        cfg.pairs, cfg.seconds, cfg.size_mib = 2, 2, 64
    modes = [m for m in cfg.modes.split(",") if m]
    bad = [m for m in modes if m not in MODES]
    if bad or "fd" not in modes:
        ap.error(f"modes are {', '.join(MODES)}, and fd (the reference) must be one of them")
    reason = guest.unavailable()
    if reason:
        print(f"SKIP: {reason}")
        sys.exit(77)
    guest.build_initramfs()
    machine = (f"{platform.machine()}, {os.cpu_count()} cpus, kernel {platform.release()}, "
               f"{subprocess.run([guest.QEMU, '--version'], capture_output=True, text=True).stdout.splitlines()[0]}, "
               f"load {os.getloadavg()[0]:.1f}")

    env = Env(cfg.vdiskd)
    rounds, skipped, checks = [], {}, []
    try:
        env.start()
        b = Bench(cfg, env)
        chain = b.build_chain()
        log(f"chain: {len(chain)} layers")
        for m in modes:
            why = b.unsupported(m)
            if why:
                skipped[m] = why
                log(f"skipping {m}: {why}")
        active = [m for m in modes if m not in skipped]
        for rnd in range(cfg.pairs + 1):
            r = {}
            for m in active:
                log(f"round {rnd}{' (warm-up)' if rnd == 0 else ''}: {m}")
                r[m] = b.run_mode(m, rnd)
                log("  " + ", ".join(f"{n} {r[m][n][k]:.1f}" for n, _, k in WORKLOADS))
            if rnd > 0:
                rounds.append(r)
        checks.append("the read half kept its pattern after every session (guest-io check)")
        for layer in env.call("GetChain", "vm", "d"):
            p = subprocess.run(["qemu-img", "check", "-f", str(layer[2]), os.path.join(env.store, str(layer[1]))],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"qemu-img check {layer[1]}: {p.stdout}{p.stderr}")
        checks.append("qemu-img check clean on every layer")
        problems = env.call("Verify", "vm")
        if problems:
            raise RuntimeError(f"Verify: {problems}")
        checks.append("Verify clean")
    finally:
        env.close()

    text = render(cfg, modes, skipped, rounds, checks, machine)
    print(text)
    if cfg.json:
        with open(cfg.json, "w") as f:
            json.dump({"machine": machine, "skipped": skipped, "rounds": rounds}, f, indent=1)
    if cfg.results:
        with open(cfg.results, "a") as f:
            args = " ".join(a for i, a in enumerate(sys.argv[3:], 3)
                            if a != "--results" and sys.argv[i - 1] != "--results" and not a.startswith("--results="))
            f.write(f"\n## {datetime.date.today()}: run-b8.py {args or '(defaults)'}\n\n{text}\n")


if __name__ == "__main__":
    main()
