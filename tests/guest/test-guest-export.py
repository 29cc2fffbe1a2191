# SPDX-License-Identifier: LGPL-2.1-or-later
"""A real Linux guest (tests/guest/guest.py, QEMU TCG) on vdisk's OpenDisk exports, for both types:
`vdiskctl open VM d --export=TYPE -- qemu-system-x86_64 ... -device virtio-blk-pci,drive=d` (vdiskctl
rewrites the device for vhost-user-blk and adds the shared memory backend itself).

Per type, one VM on a 3-layer chain (a raw catalog image with a known pattern, the disk's overlay, a
snapshot) and two boots:

Boot 1, the guest running:
- QEMU (the process vdiskctl became) holds no image fd at all: /proc/PID/fd has only sockets, pipes,
  devices, memfds and anonymous inodes, nothing under the store (the contrast with test-guest-fd);
- the socket QEMU holds cannot be reached by anyone else: the lease's state directory has no
  export.sock, the export's listening socket in the helper is unnamed or bound to a path that no longer
  exists (/proc/net/unix), so no second client can ever connect; the helper's other listener, its QMP
  monitor (qmp.sock, how vdiskd finds its helpers again), is in a root-only 0700 directory: uid 65534
  gets EACCES connecting to it;
- the guest reads the base pattern through the chain, writes 1 MiB elsewhere (fdatasync'ed) and reads
  it back;
- live Snapshot twice on the bus while guest-io writer writes and flushes a counter block every 100 ms:
  writer-verify afterwards finds every acknowledged write; the worst write+flush latency during the
  snapshots and before them are printed (target ≤ 50 ms added; asserted only < 2 s under TCG);
then a clean power-off ends the lease, and on the host: the lower layers are byte-identical to before,
the chain grew by exactly the two snapshots, each layer written while it was the top has exactly the
clusters written then allocated (qemu-img map per layer; writes close to a snapshot may be in either
layer), the chain's content is the base with the writes (qemu-img compare), qemu-img check and Verify
are clean.

Boot 2 (durability, the QEMU 7.2 vhost-user-blk bug: without config-wce=off the guest never flushes):
guest-io writer writes + fdatasyncs counter blocks every 20 ms; after several acknowledged writes the
test SIGKILLs the storage helper (its pid from the lease's state.json). Observed and asserted: no write
is acknowledged after the kill; with nbd the guest's write fails with EIO (the writer exits with its
I/O error), with vhost-user-blk (QEMU 7.2) the guest's write never completes (the writer stays blocked
in D state: no error, but no false acknowledgement either); vdiskd ends the lease
("its storage helper was killed by signal SIGKILL"), and every write the writer acknowledged before the kill is in the chain
(read on the host with qemu-img after the lease ended). And the negative control for vhost-user-blk:
the same on a guest whose device keeps QEMU 7.2's default config-wce (launched by the test on a raw
OpenDisk socket, since vdiskctl refuses it) loses the writes it saw acknowledged: the check above would
catch a launcher without config-wce=off.

Usage: test-guest-export.py VDISKD (VDISKCTL in the environment). Exits 77 if no guest can run here, or
while vdiskd/vdiskctl have no exports."""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import guest
from guest import alive, helper_pid, wait_for
from vdisktest import SKIP, Env, check, check_eq, finish, opts, qemu_img, root_only

VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
MiB = 1 << 20
SIZE = 8 * MiB
CLUSTER = 64 * 1024
BASE_SEED = 0x1234
WRITE_SEED = 0xBEEF
WRITE_OFF, WRITE_LEN = 2 * MiB, 1 * MiB
# Boot 1's writer: counter blocks from 4 MiB on, never wrapping (256 blocks = 25 s at 100 ms).
LIVE_BLOCK, LIVE_BLOCKS, LIVE_RUN = 1024, 256, 17
LIVE_ARGS = f"--start-block {LIVE_BLOCK} --blocks {LIVE_BLOCKS} --run-id {LIVE_RUN}"
N_SNAPSHOTS = 2
# Boot 2's writer: from 6 MiB on, never wrapping either.
DUR_BLOCK, DUR_BLOCKS, DUR_RUN = 1536, 400, 18
DUR_ARGS = f"--start-block {DUR_BLOCK} --blocks {DUR_BLOCKS} --run-id {DUR_RUN}"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def allocated_clusters(path, lo, hi):
    """The clusters in [lo, hi) that `path` (a qcow2 layer) itself allocates (qemu-img map depth 0)."""
    p = qemu_img("map", "--output=json", "-f", "qcow2", path)
    out = set()
    for e in json.loads(p.stdout or "[]"):
        if e["depth"] == 0 and e["data"]:
            for c in range(e["start"] // CLUSTER, (e["start"] + e["length"] + CLUSTER - 1) // CLUSTER):
                if lo <= c * CLUSTER < hi:
                    out.add(c)
    return out


def allocated_ranges(path):
    """The ranges `path` itself allocates, adjacent ones merged."""
    p = qemu_img("map", "--output=json", "-f", "qcow2", path)
    out = []
    for e in json.loads(p.stdout or "[]"):
        if e["depth"] == 0 and e["data"]:
            if out and out[-1][0] + out[-1][1] == e["start"]:
                out[-1] = (out[-1][0], out[-1][1] + e["length"])
            else:
                out.append((e["start"], e["length"]))
    return out


def block_cluster(block):
    return block * 4096 // CLUSTER


def read_chain(env, top, name):
    """The chain's whole content as the guest sees it (qemu-img convert of the top layer)."""
    out = os.path.join(env.tmp, name)
    p = qemu_img("convert", "-f", "qcow2", "-O", "raw", top, out)
    check_eq(p.returncode, 0, f"qemu-img convert of the chain ({p.stderr.strip()[-300:]})")
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


class Case:
    def __init__(self, env, qemu, kind):
        self.env, self.qemu, self.kind = env, qemu, kind
        self.vm = "vm-" + kind.replace("-", "")
        self.tag = f"{kind}:"

    def launch(self, what):
        g = guest.Guest([VDISKCTL, "open", self.vm, "d", f"--export={self.kind}", "--", *self.qemu],
                        log=os.path.join(self.env.tmp, f"console-{self.vm}-{what}.log"), cwd=self.env.tmp)
        g.start(timeout=120)
        print(f"{self.tag} guest booted through vdiskctl open --export in {g.boot_seconds:.2f} s", flush=True)
        g.wait_device("/dev/vda")
        return g

    def chain_files(self):
        return guest.chain_files(self.env, self.vm)

    def wait_lease_end(self):
        """Until the disk is free again (Snapshot no longer InUse... Snapshot works under an export, so:
        until no lease directory is left and a chain-fd OpenDisk succeeds)."""
        def free():
            if guest.lease_dirs(self.env.runtime_dir):
                return False
            p = subprocess.run([VDISKCTL, "open", self.vm, "d", "--print", "--", "true"], capture_output=True)
            return p.returncode != 3
        return wait_for(free, 20, 0.1)

    # ---- boot 1 ----
    def boot1(self):
        env, tag = self.env, self.tag
        files = guest.create_chain(env, self.vm)
        check_eq(len(files), 3, f"{tag} the chain has three layers (snapshot, disk overlay, catalog image)")
        before = {p: sha256(p) for p in files}

        t0 = time.monotonic()
        g = self.launch("boot1")
        try:
            exe = os.readlink(f"/proc/{g.pid}/exe")
            check(os.path.basename(exe).startswith("qemu-system-x86_64"), f"{tag} vdiskctl became QEMU (exe {exe})")
            dirs = guest.lease_dirs(env.runtime_dir)
            check_eq(len(dirs), 1, f"{tag} one export lease directory while the guest runs")
            hpid = helper_pid(dirs[0])
            check(alive(hpid), f"{tag} the helper (pid {hpid}) runs")

            # 3. QEMU holds no image fd at all.
            links = guest.fd_links(g.pid)
            others = guest.image_fds(g.pid)
            check_eq(others, [], f"{tag} QEMU's fds are only sockets, pipes, devices, memfds, anon inodes "
                                 f"({len(links)} fds)")
            check_eq([t for t in links if t.startswith(env.store)], [], f"{tag} QEMU holds no file of the store")
            check(any(t.startswith("socket:[") for t in links), f"{tag} QEMU holds a socket (to the helper)")

            # 6. Nobody else can connect to the export.
            check_eq(os.path.exists(os.path.join(dirs[0], "export.sock")), False,
                     f"{tag} the lease's directory has no export.sock")
            exported = guest.export_listeners(dirs[0])
            check(len(exported) >= 1, f"{tag} the helper has its export's listening socket ({exported})")
            check_eq([(i, p) for i, p in exported if guest.connectable(p)], [],
                     f"{tag} the export's listening socket has no name one could connect to (unlinked or unbound)")
            monitor = os.path.join(dirs[0], "qmp.sock")
            # The helper's monitor (vdiskd finds its helpers again through it) is root's only.
            st = os.stat(dirs[0])
            check_eq((st.st_uid, st.st_mode & 0o777), (os.geteuid(), 0o700),
                     f"{tag} the lease's directory is vdiskd's uid's (root's as root), 0700")
            if root_only("connecting to the helper's monitor as uid 65534"):
                p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                                    "import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
                                    "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print(e.errno)\n sys.exit(1)\n",
                                    monitor], capture_output=True, text=True, timeout=30)
                check_eq((p.returncode, p.stdout.strip()), (1, "13"),
                         f"{tag} an unprivileged uid cannot connect to the helper's monitor (EACCES) {p.stderr[-200:]}")

            # 1. The base's data through the chain.
            check_eq(g.run_json("guest-io size /dev/vda")["size"], SIZE, f"{tag} the guest sees the base's size")
            r = g.run_json(f"guest-io check /dev/vda 0 {SIZE} {BASE_SEED}", timeout=120, want_status=None)
            check_eq(r.get("ok"), True, f"{tag} the guest reads the base image's pattern through the chain ({r})")
            # 2. A write (top layer only, checked after).
            r = g.run_json(f"guest-io fill /dev/vda {WRITE_OFF} {WRITE_LEN} {WRITE_SEED}", timeout=120)
            check_eq(r.get("ok"), True, f"{tag} the guest writes 1 MiB and fdatasyncs")
            r = g.run_json(f"guest-io check /dev/vda {WRITE_OFF} {WRITE_LEN} {WRITE_SEED}", timeout=120,
                           want_status=None)
            check_eq(r.get("ok"), True, f"{tag} the guest reads its write back")

            # 5. Live snapshots while the guest writes.
            wpid = g.spawn(f"guest-io writer /dev/vda {LIVE_ARGS} --interval-ms 100 --log", "/tmp/live.log")
            wait_for(lambda: g.last_seq("/tmp/live.log") >= 12, 30, 0.3)
            windows = []   # (last seq acknowledged before the call, last seq acknowledged after it returned)
            for _ in range(N_SNAPSHOTS):
                s0 = g.last_seq("/tmp/live.log")
                t = time.monotonic()
                env.call("Snapshot", self.vm, "d", opts())
                dt = time.monotonic() - t
                s1 = g.last_seq("/tmp/live.log")
                windows.append((s0, s1))
                print(f"{tag} live Snapshot took {dt * 1000:.0f} ms (writer seq {s0} -> {s1})", flush=True)
                s = s1
                wait_for(lambda: g.last_seq("/tmp/live.log") >= s + 12, 30, 0.3)
            g.stop(wpid)
            log = g.writer_log("/tmp/live.log")
            acked = [x for x in log if "seq" in x]
            summary = log[-1] if log else {}
            check(len(acked) >= 30 and [x["seq"] for x in acked] == list(range(1, len(acked) + 1)),
                  f"{tag} the writer logged every acknowledged write in order ({len(acked)})")
            check_eq(summary.get("done"), True, f"{tag} the writer ended without an I/O error ({summary})")
            n = len(acked)
            r = g.run_json(f"guest-io writer-verify /dev/vda {n} {LIVE_ARGS}", want_status=None)
            check_eq((r.get("ok"), r.get("lost_count")), (True, 0),
                     f"{tag} writer-verify after the live snapshots: no acknowledged write lost ({r})")
            lat = {x["seq"]: x["lat_us"] for x in acked}
            base_lat = max(lat[s] for s in range(3, windows[0][0] + 1))   # the first writes warm up
            during = max(lat[s] for s0, s1 in windows for s in range(s0 + 1, min(s1 + 2, n + 1)))
            print(f"{tag} guest write+fdatasync latency: worst before the snapshots {base_lat / 1000:.1f} ms, "
                  f"worst during them {during / 1000:.1f} ms (added {(during - base_lat) / 1000:.1f} ms; "
                  f"target <= 50 ms)", flush=True)
            self.latency = (base_lat, during)
            check(during < 2_000_000, f"{tag} worst write latency during a live snapshot under 2 s "
                                      f"({during / 1000:.1f} ms)")

            status = g.poweroff(timeout=60)
            check_eq(status, 0, f"{tag} the guest powers off and QEMU exits 0")
        finally:
            g.kill()
        print(f"{tag} boot 1: {time.monotonic() - t0:.1f} s", flush=True)
        check(self.wait_lease_end(), f"{tag} the lease ended with QEMU (no lease directory, the disk is free)")
        check_eq(alive(hpid), False, f"{tag} the helper is gone with its lease")

        # After the lease: the chain and where every write went.
        now = self.chain_files()
        check_eq(len(now), len(files) + N_SNAPSHOTS, f"{tag} the chain grew by exactly the {N_SNAPSHOTS} snapshots")
        check_eq(now[N_SNAPSHOTS:], files, f"{tag} the old layers are the bottom of the new chain")
        for p in files[1:]:
            check_eq(sha256(p), before[p], f"{tag} lower layer {os.path.basename(p)} is byte-identical to before")
        # Layers by the time they were the top: files[0] (boot) then the snapshots, oldest first.
        tops = [files[0]] + list(reversed(now[:N_SNAPSHOTS]))
        bounds = [0] + [w for w in windows] + [(n, n)]
        lo, hi = LIVE_BLOCK * 4096, (LIVE_BLOCK + LIVE_BLOCKS) * 4096
        for k, path in enumerate(tops):
            # Written surely while it was the top: after the previous switch returned, before the next call.
            first_sure = 1 if k == 0 else bounds[k][1] + 2
            last_sure = bounds[k + 1][0] if k + 1 < len(bounds) - 1 else n
            first_maybe = 1 if k == 0 else bounds[k][0] + 1
            last_maybe = bounds[k + 1][1] + 1 if k + 1 < len(bounds) - 1 else n
            sure = {block_cluster(LIVE_BLOCK + s - 1) for s in range(first_sure, last_sure + 1)}
            maybe = {block_cluster(LIVE_BLOCK + s - 1) for s in range(first_maybe, last_maybe + 1)}
            got = allocated_clusters(path, lo, hi)
            check(sure <= got <= maybe, f"{tag} layer {k} (top from seq {first_maybe}..{last_maybe}) allocates the "
                                        f"clusters written while it was the top: got {sorted(got)}, "
                                        f"sure {sorted(sure)}, possible {sorted(maybe)}")
            outside = [(s, l) for s, l in allocated_ranges(path) if s + l <= lo or s >= hi]
            want = [(WRITE_OFF, WRITE_LEN)] if k == 0 else []
            check_eq(outside, want, f"{tag} layer {k} allocates nothing else"
                                    f"{' but the 1 MiB write' if k == 0 else ''}")
        expected = os.path.join(env.tmp, "expected.raw")
        with open(expected, "wb") as f:
            f.write(guest.pattern(0, SIZE, BASE_SEED))
            f.seek(WRITE_OFF)
            f.write(guest.pattern(WRITE_OFF, WRITE_LEN, WRITE_SEED))
            for s in range(1, n + 1):
                block = LIVE_BLOCK + s - 1
                f.seek(block * 4096)
                f.write(guest.counter_block(block, s, LIVE_RUN))
        p = qemu_img("compare", "-f", "qcow2", "-F", "raw", now[0], expected)
        check_eq((p.returncode, p.stdout.strip()), (0, "Images are identical."),
                 f"{tag} the chain's content is the base with the guest's writes")
        for path in now[:-1]:
            p = qemu_img("check", "-f", "qcow2", path)
            check_eq(p.returncode, 0, f"{tag} qemu-img check of {os.path.basename(path)} is clean")
        check_eq(env.error("Verify", self.vm)[1], [], f"{tag} Verify finds nothing")

    # ---- boot 2 ----
    def boot2(self):
        env, tag = self.env, self.tag
        files = self.chain_files()
        t0 = time.monotonic()
        g = self.launch("boot2")
        try:
            dirs = guest.lease_dirs(env.runtime_dir)
            check_eq(len(dirs), 1, f"{tag} one export lease directory")
            hpid = helper_pid(dirs[0])
            log_before = len(env.log_text())
            wpid = g.spawn(f"guest-io writer /dev/vda {DUR_ARGS} --interval-ms 20 --log", "/tmp/dur.log")
            wait_for(lambda: g.last_seq("/tmp/dur.log") >= 15, 30, 0.2)
            os.kill(hpid, signal.SIGKILL)
            t_kill = time.monotonic()
            seen = g.last_seq("/tmp/dur.log")   # acknowledged no later than this (the helper may have
            #                                     acknowledged one more just before it died)
            check(seen >= 15, f"{tag} the writer acknowledged {seen} writes before the helper was killed")
            why = "ended (its storage helper was killed by signal SIGKILL)"
            check(wait_for(lambda: why in env.log_text()[log_before:], 20, 0.1), f"{tag} vdiskd ends the lease: \"{why}\"")
            check(wait_for(lambda: not guest.lease_dirs(env.runtime_dir), 20, 0.1), f"{tag} the lease directory is gone")
            # What the guest sees: give the writer 3 s to fail or hang.
            time.sleep(3)
            st, out = g.run("cat /tmp/dur.log; echo; "
                            f"if [ -e /proc/{wpid} ] && ! grep -q '^State:.*Z' /proc/{wpid}/status; then "
                            f"grep '^State' /proc/{wpid}/status; else echo WRITER-ENDED; fi", timeout=30)
            lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
            acked = [x["seq"] for x in lines if "seq" in x]
            ended = [x for x in lines if "done" in x]
            state = "ended" if "WRITER-ENDED" in out else out.strip().splitlines()[-1]
            print(f"{tag} after the helper's SIGKILL ({time.monotonic() - t_kill:.1f} s ago): the writer "
                  f"acknowledged {len(acked)} writes ({seen} seen before the kill), writer {state}, "
                  f"summary {ended}; guest-io's stderr: "
                  f"{[x for x in out.splitlines() if x.startswith('guest-io')]}", flush=True)
            check(acked == list(range(1, len(acked) + 1)), f"{tag} the writer's log is in order")
            check(len(acked) <= seen + 1, f"{tag} no write is acknowledged after the helper's death "
                                          f"({len(acked)} acknowledged, {seen} before the kill)")
            if ended:
                check_eq(ended[-1].get("done"), False, f"{tag} the writer ended with an I/O error, not success")
            else:
                check("State:" in state, f"{tag} the writer is blocked in its write, not going on ({state})")
            n = len(acked)
        finally:
            g.kill()
        print(f"{tag} boot 2: {time.monotonic() - t0:.1f} s", flush=True)
        check(self.wait_lease_end(), f"{tag} the disk is free after the VM is gone")
        check_eq(alive(hpid), False, f"{tag} the helper is gone")
        check_eq(self.chain_files(), files, f"{tag} the chain is unchanged by the helper's death")
        data = read_chain(env, files[0], f"dur-{self.vm}.raw")
        lost = [s for s in range(1, n + 1)
                if data[(DUR_BLOCK + s - 1) * 4096:(DUR_BLOCK + s) * 4096] != guest.counter_block(DUR_BLOCK + s - 1, s, DUR_RUN)]
        check_eq(lost, [], f"{tag} every write acknowledged before the helper's SIGKILL ({n}) is in the chain")
        for path in files[:-1]:
            # A write in flight when the helper died may have allocated a cluster its L2 table never got:
            # leaked clusters (exit 3) are harmless; corruption (2) is not.
            p = qemu_img("check", "-f", "qcow2", path)
            check(p.returncode in (0, 3), f"{tag} qemu-img check of {os.path.basename(path)} finds no corruption "
                                          f"after the kill (exit {p.returncode}: {p.stdout.strip()[-200:]})")
        check_eq(env.error("Verify", self.vm)[1], [], f"{tag} Verify finds nothing after the helper's death")


# A launcher for a guest that takes its vhost-user-blk socket straight from the test (not from vdiskctl):
# receives one fd over the AF_UNIX socket argv[1] (SCM_RIGHTS), puts it at fd 3 and execs argv[2:].
FD_LAUNCHER = """import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
_, fds, _, _ = socket.recv_fds(s, 1, 1)
s.close()
os.dup2(fds[0], 3, inheritable=True)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def control_without_wce(env, qemu_base):
    """The negative control of boot 2: the same SIGKILL of the helper with the device as QEMU 7.2 makes it
    by default (config-wce on, which vdiskctl refuses): the guest thinks the disk is write-through, never
    sends a flush, and writes it saw acknowledged are lost with the helper. Shows that boot 2 would catch
    a launcher that forgot config-wce=off."""
    tag = "control (vhost-user-blk, config-wce on):"
    vm = "vm-wce"
    top = guest.create_chain(env, vm, snapshots=0)[0]
    _path, _attach, fds = env.call("OpenDisk", vm, "d", opts(export="vhost-user-blk"))
    fd = fds[0].take()
    hpid = helper_pid(guest.lease_dirs(env.runtime_dir)[0])
    sock_path = os.path.join(env.tmp, "fd-launcher.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(1)
    argv = [sys.executable, "-c", FD_LAUNCHER, sock_path, *qemu_base,
            "-object", "memory-backend-memfd,id=guest-ram,size=256M,share=on", "-machine", "memory-backend=guest-ram",
            "-chardev", "socket,id=c,fd=3", "-device", "vhost-user-blk-pci,chardev=c"]
    g = guest.Guest(argv, log=os.path.join(env.tmp, "console-control.log"), cwd=env.tmp)
    try:
        t0 = time.monotonic()
        starter = threading.Thread(target=lambda: g.start(timeout=120), daemon=True)
        starter.start()
        listener.settimeout(60)
        conn, _ = listener.accept()
        socket.send_fds(conn, [b"x"], [fd])
        conn.close()
        os.close(fd)
        starter.join(130)
        check(g.boot_seconds is not None, f"{tag} the guest booted on the raw export socket")
        g.wait_device("/dev/vda")
        wpid = g.spawn(f"guest-io writer /dev/vda {DUR_ARGS} --interval-ms 20 --log", "/tmp/dur.log")
        wait_for(lambda: g.last_seq("/tmp/dur.log") >= 40, 30, 0.2)
        os.kill(hpid, signal.SIGKILL)
        seen = g.last_seq("/tmp/dur.log")
        check(wait_for(lambda: not guest.lease_dirs(env.runtime_dir), 20, 0.1), f"{tag} the lease ends with the helper")
        del wpid
    finally:
        g.kill()
        listener.close()
    data = read_chain(env, top, "control.raw")
    lost = [s for s in range(1, seen + 1)
            if data[(DUR_BLOCK + s - 1) * 4096:(DUR_BLOCK + s) * 4096] != guest.counter_block(DUR_BLOCK + s - 1, s, DUR_RUN)]
    print(f"{tag} {len(lost)} of {seen} acknowledged writes lost with the helper ({time.monotonic() - t0:.1f} s)",
          flush=True)
    check(len(lost) > 0, f"{tag} acknowledged writes are lost without config-wce=off (QEMU 7.2's bug; if this "
                         f"fails, QEMU fixed it and this control can go)")


def main():
    reason = guest.unavailable()
    if reason:
        print(f"SKIP: {reason}")
        sys.exit(SKIP)
    qemu = guest.qemu_argv(["-device", "virtio-blk-pci,drive=d"])
    t_all = time.monotonic()
    env = Env(sys.argv[1])
    try:
        env.start()
        check_eq(guest.import_base(env, SIZE, BASE_SEED), (None, ""), "import the base image (raw, 8 MiB pattern)")
        why = guest.exports_work(env, VDISKCTL)
        if why:
            print(f"SKIP: {why}")
            env.close()
            sys.exit(SKIP)
        for kind in ("vhost-user-blk", "nbd"):
            c = Case(env, qemu, kind)
            try:
                c.boot1()
                c.boot2()
                if kind == "vhost-user-blk":
                    control_without_wce(env, qemu[:-2])
            except guest.GuestError as e:
                check(False, f"{kind}: guest: {e}")
        check(env.canary_unchanged(), "canary unchanged")
        print(f"whole test: {time.monotonic() - t_all:.1f} s")
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
