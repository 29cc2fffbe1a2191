# SPDX-License-Identifier: LGPL-2.1-or-later
"""B8 experiment (not a test): what makes the guest's I/O through an NBD export slow, one knob at a time.

Without vdiskd: a 3-layer qcow2 chain in a temporary directory (the base filled with data), a helper
QEMU (-machine none, as vdiskd starts it, but as root and without sandbox: the knobs below need it)
serving the top node over NBD on a listening socket made the way daemon/ops/export.c makes it (a fresh
directory, bind, listen, connect, unlink), and the same TCG guest as run-b8.py on the connected end.
Interleaved rounds of the variants; per workload the median of the per-round ratios to the "fd"
variant (the guest's QEMU opening the chain itself, as the chain-fd mode).

Variants (--variants, comma-separated):
  fd          the reference: the VM's QEMU opens the qcow2 chain (by path here)
  nbd         the export as vdiskd makes it today
  nbd-cli     + the VM's end of the socket with SO_SNDBUF/SO_RCVBUF forced to --sndbuf (what vdiskd can do:
              it creates that end)
  nbd-srv     + the helper's accepted end with SO_SNDBUF raised to --sndbuf (an LD_PRELOAD shim on
              accept/accept4 in the helper: vdiskd cannot do this, the accepted socket does not inherit
              the listener's buffer sizes)
  nbd-both    both of the above
  nbd-malloc  the helper with GLIBC_TUNABLES=MALLOC_TUNABLES (its NBD server's 1 MiB request buffers from
              the heap instead of a fresh mmap + munmap each)
  fd-iothread, nbd-iothread, nbd-malloc-iothread
              fd, nbd, nbd-malloc with the VM's virtio-blk device (and so its NBD client) in an iothread of
              its own instead of the VM's main loop
Every buffer is reported as read back with getsockopt (the shim logs the helper's to stderr).

--strace FILE: strace -f -c of the helper (FILE.helper) and of the VM's QEMU (FILE.vm) during one seqread of
the first nbd variant (syscall counts); with --perf FILE2 also perf record -g of both.

Usage: b8-nbd-experiment.py [--variants ...] [--rounds N] [--seconds S] [--size-mib N] [--sndbuf BYTES]"""

import argparse
import functools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "guest"))
import guest  # noqa: E402

MiB = 1 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
# QEMU 7.2's NBD server allocates a buffer per request (blk_try_blockalign): with glibc's defaults a
# 1 MiB buffer is a fresh mmap (256 page faults, the pages zeroed) and a munmap per request. With the
# threshold above the request sizes, it comes from the heap and stays mapped (trimmed above 8 MiB).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=8388608"
WORKLOADS = [
    ("seqread 1M QD1", "seqread --bs 1M --qd 1", "mb_s"),
    ("seqwrite 1M QD1", "seqwrite --bs 1M --qd 1", "mb_s"),
    ("randread 4K QD1", "randread --bs 4K --qd 1", "iops"),
    ("randread 4K QD16", "randread --bs 4K --qd 16", "iops"),
    ("randwrite 4K QD1", "randwrite --bs 4K --qd 1", "iops"),
    ("randwrite 4K QD16", "randwrite --bs 4K --qd 16", "iops"),
]

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
static void tune(int fd) {
        const char *v = getenv("B8_SRV_SNDBUF");
        int n = v ? atoi(v) : 0, got = 0;
        socklen_t l = sizeof(got);
        if (fd < 0 || n <= 0)
                return;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &n, sizeof(n));
        getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &got, &l);
        fprintf(stderr, "b8-shim: accepted fd %d SO_SNDBUF %d\n", fd, got);
}
int accept(int s, struct sockaddr *a, socklen_t *l) {
        int (*real)(int, struct sockaddr *, socklen_t *) = dlsym(RTLD_NEXT, "accept");
        int fd = real(s, a, l);
        tune(fd);
        return fd;
}
int accept4(int s, struct sockaddr *a, socklen_t *l, int flags) {
        int (*real)(int, struct sockaddr *, socklen_t *, int) = dlsym(RTLD_NEXT, "accept4");
        int fd = real(s, a, l, flags);
        tune(fd);
        return fd;
}
"""


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_seconds(pid):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        for _ in range(200):
            try:
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.02)
        self.f = self.s.makefile("r")
        json.loads(self.f.readline())
        self.call("qmp_capabilities")

    def call(self, cmd, args=None, fd=None):
        msg = json.dumps({"execute": cmd, **({"arguments": args} if args else {})}).encode()
        if fd is None:
            self.s.sendall(msg)
        else:
            socket.send_fds(self.s, [msg], [fd])
        while True:
            r = json.loads(self.f.readline())
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError(f"{cmd}: {r['error']}")


class Lab:
    def __init__(self, cfg, tmp):
        self.cfg, self.tmp = cfg, tmp
        self.size = cfg.size_mib * MiB
        base, mid, top = (os.path.join(tmp, n) for n in ("base.qcow2", "mid.qcow2", "top.qcow2"))
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, str(self.size)], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {self.size}", base], check=True,
                       capture_output=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", mid], check=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top], check=True)
        self.chain = [top, mid, base]
        self.shim = os.path.join(tmp, "shim.so")
        src = os.path.join(tmp, "shim.c")
        with open(src, "w") as f:
            f.write(SHIM_C)
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", self.shim, src, "-ldl"], check=True)

    def node(self, aio):
        """The chain as one -blockdev, every file node with `aio` (vdiskd gives each layer's file node
        io_uring in the helper)."""
        node = None
        for path in reversed(self.chain):
            node = {"driver": "qcow2", "file": {"driver": "file", "filename": path, "aio": aio}, "backing": node}
        node["node-name"] = "top"
        return node

    def start_helper(self, variant, strace=None):
        d = tempfile.mkdtemp(dir=self.tmp)
        os.chmod(d, 0o700)
        qmp_path, sock = os.path.join(d, "qmp.sock"), os.path.join(d, "export.sock")
        argv = [guest.QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-accel", "tcg,tb-size=1",
                "-qmp", f"unix:{qmp_path},server=on,wait=off", "-blockdev", json.dumps(self.node("io_uring"))]
        env = dict(os.environ)
        if variant in ("nbd-srv", "nbd-both"):
            env.update(LD_PRELOAD=self.shim, B8_SRV_SNDBUF=str(self.cfg.sndbuf))
        if variant in ("nbd-malloc", "nbd-malloc-iothread"):
            env.update(GLIBC_TUNABLES=MALLOC_TUNABLES)
        helper = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "w"))
        qmp = Qmp(qmp_path)
        listener, client = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
        listener.bind(sock)
        listener.listen(1)
        client.connect(sock)
        os.unlink(sock)
        if variant in ("nbd-cli", "nbd-both"):
            client.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, self.cfg.sndbuf)
            client.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.cfg.sndbuf)
        qmp.call("getfd", {"fdname": "x"}, fd=listener.fileno())
        listener.close()
        qmp.call("nbd-server-start", {"addr": {"type": "fd", "data": {"str": "x"}}})
        qmp.call("block-export-add", {"type": "nbd", "id": "e", "node-name": "top", "name": "d", "writable": True})
        return helper, qmp, client, d

    def session(self, variant, strace=None):
        out = {}
        helper = client = None
        if variant.startswith("fd"):
            extra = ["-blockdev", json.dumps(self.node("threads"))]
            fds = ()
        else:
            helper, qmp, client, d = self.start_helper(variant)
            extra = ["-blockdev", json.dumps({"driver": "nbd", "node-name": "top", "export": "d",
                                              "server": {"type": "fd", "str": str(client.fileno())}})]
            fds = (client.fileno(),)
            out["_vm_sndbuf"] = client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        if variant.endswith("-iothread"):
            extra += ["-object", "iothread,id=io0"]
        dev = "virtio-blk-pci,drive=top" + (",iothread=io0" if variant.endswith("-iothread") else "")
        argv = guest.qemu_argv(extra + ["-device", dev], shared_memory=True)
        g = guest.Guest(argv, log=os.path.join(self.tmp, f"console-{variant}.log"))
        orig = subprocess.Popen
        subprocess.Popen = functools.partial(orig, pass_fds=fds)
        try:
            g.start(timeout=180)
        finally:
            subprocess.Popen = orig
        if client:
            client.close()
        try:
            g.wait_device("/dev/vda")
            pids = {"vm": g.pid, **({"helper": helper.pid} if helper else {})}
            half = self.size // 2
            for name, args, key in WORKLOADS:
                region = f"--offset 0 --size {half}" if "read" in args.split()[0] else f"--offset {half} --size {half}"
                st = None
                if strace and name.startswith("seqread"):
                    st = [subprocess.Popen(["strace", "-f", "-c", "-o", f"{strace}.{who}", "-p", str(pid)],
                                           stderr=subprocess.DEVNULL)
                          for who, pid in (("helper", helper.pid), ("vm", g.pid))]
                    if self.cfg.perf:
                        st.append(subprocess.Popen(["perf", "record", "-q", "-F", "499", "-g", "-o", self.cfg.perf,
                                                    "-p", f"{helper.pid},{g.pid}"], stderr=subprocess.DEVNULL))
                    time.sleep(0.5)
                cpu0, t0 = {w: cpu_seconds(pid) for w, pid in pids.items()}, time.monotonic()
                r = g.run_json(f"guest-io bench /dev/vda {args} --seconds {self.cfg.seconds} {region}",
                               timeout=self.cfg.seconds * 20 + 60)
                for p in st or ():
                    p.send_signal(2)
                    p.wait(timeout=60)
                out[name] = r[key]
                wall = time.monotonic() - t0
                out["_cpu " + name] = {w: round((cpu_seconds(pid) - cpu0[w]) / wall, 2) for w, pid in pids.items()}
            status = g.poweroff(timeout=120)
            if status != 0:
                raise RuntimeError(f"{variant}: QEMU exited with {status}")
        finally:
            g.kill()
            if helper:
                helper.kill()
                helper.wait()
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="fd,nbd,nbd-cli,nbd-srv,nbd-both")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--sndbuf", type=int, default=4 * MiB)
    ap.add_argument("--strace", default=None)
    ap.add_argument("--perf", default=None, help="with --strace: perf record -g of both QEMUs into this file")
    cfg = ap.parse_args()
    variants = cfg.variants.split(",")
    reason = guest.unavailable()
    if reason:
        print(f"SKIP: {reason}")
        sys.exit(77)
    guest.build_initramfs()
    with tempfile.TemporaryDirectory(prefix="b8-nbd-") as tmp:
        lab = Lab(cfg, tmp)
        if cfg.strace:
            nbd = next(v for v in variants if v != "fd")
            lab.session(nbd, strace=cfg.strace)
        rounds = []
        for rnd in range(cfg.rounds + 1):
            r = {}
            for v in variants:
                r[v] = lab.session(v)
                log(f"round {rnd} {v}: " + ", ".join(f"{n} {r[v][n]:.0f} (CPU {r[v]['_cpu ' + n]})"
                                                     for n, _, _ in WORKLOADS)
                    + (f" (VM end SO_SNDBUF {r[v]['_vm_sndbuf']})" if "_vm_sndbuf" in r[v] else ""))
            if rnd > 0:  # round 0 warms up
                rounds.append(r)
    if not rounds:
        return
    print(f"load {os.getloadavg()[0]:.1f}, {cfg.rounds} rounds, {cfg.seconds} s, {cfg.size_mib} MiB, "
          f"sndbuf {cfg.sndbuf}")
    print("| workload | fd | " + " | ".join(f"{v} / fd" for v in variants if v != "fd") + " |")
    print("|---" * len(variants) + "|---|")
    for name, _, key in WORKLOADS:
        fd = statistics.median(r["fd"][name] for r in rounds)
        cells = [f"{statistics.median(r[v][name] / r['fd'][name] for r in rounds):.2f}" for v in variants if v != "fd"]
        print(f"| {name} | {fd:.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
