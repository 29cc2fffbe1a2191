# SPDX-License-Identifier: LGPL-2.1-or-later
"""Live chain operations under an export lease, with a real guest writing (tests/guest/guest.py, QEMU
TCG): `vdiskctl open VM d --export=TYPE -- qemu-system-x86_64 ...`, for vhost-user-blk and nbd.

The chain at boot: [P0, C1, B] (B a qcow2 catalog image holding a 1 MiB pattern, C1 the disk's private
overlay, P0 a snapshot). From early on to the end, guest-io writer writes and fdatasyncs a new counter
block every 100 ms (never overwriting one: every acknowledged write must be found at the end). While it
writes, the guest also fills 1 MiB (own pattern) into each new top (2 MiB into S2, so that the
active commit runs long enough to be watched), and on the bus:

  live Snapshot S1                  [S1, P0, C1, B]
  Commit P0 (intermediate)          [S1, C1, B]
  live Snapshot S2                  [S2, S1, C1, B]
  Commit S2 (active: the top)       [S1, C1, B]
  live Snapshot S3                  [S3, S1, C1, B]
  Rebase S3 onto C1 (stream)        [S3, C1, B]      S1 dropped
  Rebase onto "" (flatten)          [S3]
  (vhost-user-blk) live Snapshots S4, S5, then a Commit of S4 slowed down (VDISKD_TEST_STEP_BYTES, a
  -Dtest_hooks=true build) during which vdiskd is SIGKILLed and started again

Each job is followed on the bus to its end: state done, its progress seen between 0 and 1 while it ran
and complete at the end (BytesDone = BytesTotal > 0), Operation the right one. After each: GetChain is
the expected chain, the dropped private layers' files are gone (the flattened catalog image's stays),
the export's state names no pending job and its nodes are the chain, Verify is clean and qemu-img check
(-U, the helper holds the files) is clean on every layer (the live top may show leaked clusters, exit
3, of a write in flight; never corruption).
The SIGKILL: the helper keeps serving (the writer's seq goes on while vdiskd is down, no write fails),
the restarted vdiskd finds the lease again (same helper) and settles the job into the records: the old
chain (S4 still there, its file too) or the new one (S4 and its file gone), exactly one; if old, the
commit is then run live again.

All along QEMU (the process vdiskctl became) holds no image fd (/proc/PID/fd) and the export's
listening socket in the helper has no name anyone could connect to (test-exports proves a second client
on the handed-out socket gets nothing). At the end: writer-verify in the guest finds every acknowledged
write, the guest powers off, the lease ends, qemu-img check is clean on every layer, Verify is clean,
and the chain's content (qemu-img compare) is the base with every fill and every acknowledged counter
block. Printed: each job's duration and the guest's worst write+fdatasync latency before any live
operation and during each job (asserted only < 2 s: TCG on a loaded machine).

Usage: test-guest-live.py VDISKD [TYPE...] (VDISKCTL in the environment). Exits 77 if no guest can run
here, exports do not work here, or vdiskd is not a -Dtest_hooks=true build."""

import json
import os
import sys
import time

import dbus

import guest
from guest import wait_for
from vdisktest import BUS_NAME, SKIP, Env, check, check_eq, finish, opts, qemu_img

VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
JOB = "org.vdisk1.Job"
MiB = 1 << 20
SIZE = 16 * MiB
BASE_SEED, BASE_LEN = 0x1234, 1 * MiB
FILL_LEN = 1 * MiB
# The writer: counter blocks from 8 MiB on, 2048 of them (200 s at 100 ms: never wrapping here).
WRITER_BLOCK, WRITER_BLOCKS, WRITER_RUN = 2048, 2048, 21
WRITER_ARGS = f"--start-block {WRITER_BLOCK} --blocks {WRITER_BLOCKS} --run-id {WRITER_RUN}"
WLOG = "/tmp/live.log"
# QEMU's job speed (bytes/s) in the helper: a job over 1-2 MiB takes 1-2 s, long enough to see progress.
SPEED = 1 * MiB
# The job vdiskd is killed in: some 20 s for its 1+ MiB, so it surely still runs at the kill.
CRASH_SPEED = 64 << 10


def follow_job(env, path, until=None, timeout=120):
    """Polls a job's properties every 50 ms until it ends (or until(sample) is true): (state, error name,
    error message, operation, [(progress, done, total)...])."""
    props = dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.freedesktop.DBus.Properties")
    samples = []
    end = time.monotonic() + timeout
    while True:
        a = props.GetAll(JOB)
        samples.append((float(a["Progress"]), int(a["BytesDone"]), int(a["BytesTotal"])))
        if a["State"] != "running" or (until and until(samples[-1])):
            return str(a["State"]), str(a["ErrorName"]), str(a["ErrorMessage"]), str(a["Operation"]), samples
        if time.monotonic() > end:
            raise RuntimeError(f"job {path} still running after {timeout} s")
        time.sleep(0.05)


class Case:
    def __init__(self, env, qemu, kind, crash):
        self.env, self.qemu, self.kind, self.crash = env, qemu, kind, crash
        self.vm = "live-" + kind.replace("-", "")
        self.tag = f"{kind}:"
        self.fills = []        # (offset, seed) the guest filled, in order
        self.windows = []      # (what, last seq acknowledged before, last seq acknowledged after)
        self.jobs = []         # (what, seconds, BytesTotal)
        self.g = None
        self.lease_dir = None
        self.hpid = None

    # ---- records and files ----
    def ids(self):
        return [str(r[0]) for r in self.env.call("GetChain", self.vm, "d")]

    def layer_files(self):
        return dict(zip(self.ids(), guest.chain_files(self.env, self.vm)))

    def state(self):
        with open(os.path.join(self.lease_dir, "state.json")) as f:
            return json.load(f)

    def seq(self):
        return self.g.last_seq(WLOG)

    # ---- what the guest does ----
    def fill(self):
        off = (1 + len(self.fills)) * MiB
        seed = 0xF000 + len(self.fills)
        r = self.g.run_json(f"guest-io fill /dev/vda {off} {FILL_LEN} {seed}", timeout=120)
        check_eq(r.get("ok"), True, f"{self.tag} the guest fills 1 MiB at {off >> 20} MiB and fdatasyncs")
        self.fills.append((off, seed))

    def snapshot(self):
        s0, t = self.seq(), time.monotonic()
        layer = str(self.env.call("Snapshot", self.vm, "d", opts()))
        self.windows.append(("snapshot", s0, self.seq()))
        print(f"{self.tag} live Snapshot {layer[:8]} in {(time.monotonic() - t) * 1000:.0f} ms", flush=True)
        return layer

    # ---- checks after each operation ----
    def settled(self, what, want, dropped=(), files=None):
        env, tag = self.env, self.tag
        check_eq(self.ids(), want, f"{tag} {what}: GetChain is the expected chain")
        for layer in dropped:
            check_eq(os.path.exists(files[layer]), False, f"{tag} {what}: the dropped layer {layer[:8]}'s file is gone")
        st = self.state()
        check("job" not in st, f"{tag} {what}: no job pending in the export's state")
        check_eq(st.get("nodes"), ["L" + c[:30] for c in want], f"{tag} {what}: the helper's nodes are the chain")
        check_eq(int(st["helper-pid"]), self.hpid, f"{tag} {what}: the same helper serves")
        check_eq(env.error("Verify", self.vm), (None, dbus.Array([], signature="(sss)")), f"{tag} {what}: Verify is clean")
        self.check_layers(what, live=True)

    def check_layers(self, what, live):
        top = self.ids()[0]
        for layer, path in self.layer_files().items():
            p = qemu_img("check", "-U", "--output=json", "-f", "qcow2", path)
            ok = (0, 3) if live and layer == top else (0,)   # 3: leaked clusters of a write in flight
            detail = "" if p.returncode in ok else f": {(p.stdout + p.stderr).strip()[-600:]}"
            check(p.returncode in ok, f"{self.tag} {what}: qemu-img check of layer {layer[:8]} is clean "
                                      f"(exit {p.returncode}{detail})")

    def no_image_fd(self, what):
        others = guest.image_fds(self.g.pid)
        check_eq(others, [], f"{self.tag} {what}: QEMU holds no image fd (/proc/{self.g.pid}/fd: only sockets, "
                             f"pipes, devices, memfds, anonymous inodes)")
        named = [(i, p) for i, p in guest.export_listeners(self.lease_dir) if guest.connectable(p)]
        check_eq(named, [], f"{self.tag} {what}: the export's listening socket has no name one could connect to")

    # ---- a live job ----
    def job(self, what, method, layer, want, operation, dropped=()):
        env, tag = self.env, self.tag
        files = self.layer_files()
        s0, t = self.seq(), time.monotonic()
        err, path = env.error(method, self.vm, "d", layer, opts())
        check_eq(err, None, f"{tag} {what}: {method} starts a job ({path if err else ''})")
        if err:
            return
        state, ename, emsg, op, samples = follow_job(env, path)
        dt = time.monotonic() - t
        self.windows.append((what, s0, self.seq()))
        if not check_eq((state, ename, emsg), ("done", "", ""), f"{tag} {what}: the job ends done"):
            print(f"{tag} vdiskd's log:\n{env.log_text()[-3000:]}", flush=True)
        check_eq(op, operation, f"{tag} {what}: the job's Operation is {operation}")
        progress, done, total = samples[-1]
        check(total > 0 and done == total and progress == 1.0,
              f"{tag} {what}: its progress is complete at the end ({done}/{total}, {progress})")
        between = sorted({p for p, _, _ in samples if 0 < p < 1})
        check(len(between) >= 1, f"{tag} {what}: its progress was seen between 0 and 1 while it ran "
                                 f"({len(samples)} samples, {[round(p, 3) for p in between][:8]})")
        self.jobs.append((what, dt, total))
        print(f"{tag} {what}: {method} job done in {dt:.2f} s ({total} bytes of QEMU progress, "
              f"{len(between)} intermediate values seen; writer seq {s0} -> {self.windows[-1][2]})", flush=True)
        self.settled(what, want, dropped, files)

    # ---- vdiskd killed during a live commit ----
    def killed_commit(self, s4, want_old, want_new):
        env, tag = self.env, self.tag
        files = self.layer_files()
        env.stop()
        env.start({"VDISKD_TEST_STEP_BYTES": str(CRASH_SPEED)})
        check_eq(self.ids(), want_old, f"{tag} after a restart the chain is the same")
        check_eq(guest.lease_dirs(env.runtime_dir), [self.lease_dir], f"{tag} the lease is found again")
        s0 = self.seq()
        err, path = env.error("Commit", self.vm, "d", s4, opts())
        check_eq(err, None, f"{tag} the slowed live commit starts ({path if err else ''})")
        if err:
            return
        state, _, _, _, samples = follow_job(env, path, until=lambda s: s[1] > 0, timeout=60)
        check_eq(state, "running", f"{tag} the commit runs, progress {samples[-1]}")
        env.daemon.kill()
        env.daemon.wait()
        t_kill = time.monotonic()
        s_kill = self.seq()
        check("job" in self.state(), f"{tag} vdiskd SIGKILLed during the commit: the export's state names the job")
        check(guest.alive(self.hpid) and self.g.alive(), f"{tag} the helper and the VM run on without vdiskd")
        wait_for(lambda: self.seq() >= s_kill + 10, 30, 0.2)
        s_down = self.seq()
        check(s_down >= s_kill + 10, f"{tag} the guest writes on while vdiskd is down (seq {s_kill} -> {s_down})")
        env.start({"VDISKD_TEST_STEP_BYTES": str(SPEED)})
        wait_for(lambda: env.error("ListJobs")[0] is None, 30, 0.1)
        print(f"{tag} vdiskd SIGKILLed during a live commit and restarted: {time.monotonic() - t_kill:.1f} s "
              f"down to up, writer seq {s_kill} -> {s_down} meanwhile", flush=True)
        now = self.ids()
        check(now in (want_old, want_new), f"{tag} the restarted vdiskd settles the job: the chain is the old or the "
                                           f"new one ({now})")
        done = now == want_new
        print(f"{tag} the killed job settled into the {'new' if done else 'old'} chain", flush=True)
        check_eq(os.path.exists(files[s4]), not done,
                 f"{tag} S4's file {'is gone (new chain)' if done else 'is still there (old chain)'}")
        check(("it had completed, the records now follow" if done else "cancelled, the chain is unchanged")
              in env.log_text(), f"{tag} vdiskd's log says how the job was settled")
        self.settled("after the restart", now)
        self.windows.append(("commit killed + restart", s0, self.seq()))
        check(self.g.alive(), f"{tag} the VM never stopped")
        if not done:
            self.job("commit again after the restart", "Commit", s4, want_new, "commit", [s4])

    # ---- the whole run ----
    def run(self):
        env, tag = self.env, self.tag
        guest.create_chain(env, self.vm)
        p0, c1, b = self.ids()
        t0 = time.monotonic()
        self.g = g = guest.Guest([VDISKCTL, "open", self.vm, "d", f"--export={self.kind}", "--", *self.qemu],
                                 log=os.path.join(env.tmp, f"console-{self.vm}.log"), cwd=env.tmp)
        try:
            g.start(timeout=120)
            print(f"{tag} guest booted in {g.boot_seconds:.2f} s", flush=True)
            g.wait_device("/dev/vda")
            dirs = guest.lease_dirs(env.runtime_dir)
            check_eq(len(dirs), 1, f"{tag} one export lease directory")
            self.lease_dir = dirs[0]
            self.hpid = guest.helper_pid(self.lease_dir)
            self.no_image_fd("at boot")
            check_eq(g.run_json("guest-io size /dev/vda")["size"], SIZE, f"{tag} the guest sees the disk's size")

            wpid = g.spawn(f"guest-io writer /dev/vda {WRITER_ARGS} --interval-ms 100 --log", WLOG)
            wait_for(lambda: self.seq() >= 25, 60, 0.3)
            self.baseline = self.seq()
            self.fill()                                                  # into P0
            s1 = self.snapshot()
            self.fill()                                                  # into S1
            self.job("intermediate commit", "Commit", p0, [s1, c1, b], "commit", [p0])
            s2 = self.snapshot()
            self.fill()                                                  # into S2, twice: QEMU's mirror
            self.fill()                                                  # copies 2 MiB, some 2 s
            self.job("active commit", "Commit", s2, [s1, c1, b], "commit", [s2])
            s3 = self.snapshot()
            self.fill()                                                  # into S3
            self.job("stream", "Rebase", c1, [s3, c1, b], "rebase", [s1])
            base_file = self.layer_files()[b]
            self.job("flatten", "Rebase", "", [s3], "flatten", [c1])
            check(os.path.exists(base_file) and "base" in [str(i[0]) for i in env.call("ListImages")],
                  f"{tag} flatten: the catalog image left the chain, not the catalog (its file stays)")
            if self.crash:
                s4 = self.snapshot()
                self.fill()                                              # into S4
                s5 = self.snapshot()
                self.killed_commit(s4, [s5, s4, s3], [s5, s3])
            self.no_image_fd("after the live operations")

            wait_for(lambda: self.seq() >= self.windows[-1][2] + 5, 30, 0.3)
            g.stop(wpid)
            log = g.writer_log(WLOG)
            acked = [x for x in log if "seq" in x]
            n = len(acked)
            check(n >= 50 and [x["seq"] for x in acked] == list(range(1, n + 1)),
                  f"{tag} the writer logged every acknowledged write in order ({n})")
            check_eq(log[-1].get("done") if log else None, True, f"{tag} the writer never saw an I/O error")
            r = g.run_json(f"guest-io writer-verify /dev/vda {n} {WRITER_ARGS}", want_status=None)
            check_eq((r.get("ok"), r.get("lost_count")), (True, 0),
                     f"{tag} writer-verify: no acknowledged write lost ({r})")
            check_eq(g.poweroff(timeout=60), 0, f"{tag} the guest powers off and QEMU exits 0")
        finally:
            g.kill()
        print(f"{tag} guest session: {time.monotonic() - t0:.1f} s", flush=True)
        check(wait_for(lambda: not guest.lease_dirs(env.runtime_dir), 20, 0.1), f"{tag} the lease ends with QEMU")
        check_eq(guest.alive(self.hpid), False, f"{tag} the helper is gone")
        self.final_checks(acked)

    def final_checks(self, acked):
        env, tag = self.env, self.tag
        self.check_layers("after the lease", live=False)
        check_eq(env.error("Verify", self.vm), (None, dbus.Array([], signature="(sss)")),
                 f"{tag} Verify is clean after the lease")
        expected = os.path.join(env.tmp, f"expected-{self.vm}.raw")
        with open(expected, "wb") as f:
            f.truncate(SIZE)
            f.write(guest.pattern(0, BASE_LEN, BASE_SEED))
            for off, seed in self.fills:
                f.seek(off)
                f.write(guest.pattern(off, FILL_LEN, seed))
            for x in acked:
                f.seek(x["block"] * 4096)
                f.write(guest.counter_block(x["block"], x["seq"], WRITER_RUN))
        top = self.layer_files()[self.ids()[0]]
        p = qemu_img("compare", "-f", "qcow2", "-F", "raw", top, expected)
        check_eq((p.returncode, p.stdout.strip()), (0, "Images are identical."),
                 f"{tag} the chain holds the base, every fill and every acknowledged counter block {p.stderr[-200:]}")
        os.unlink(expected)
        self.report(acked)

    def report(self, acked):
        lat = {x["seq"]: x["lat_us"] for x in acked}
        n = len(acked)

        def worst(lo, hi):
            return max((lat[s] for s in range(lo, min(hi, n) + 1)), default=0)

        base = worst(3, self.baseline)   # the first writes warm up
        print(f"{self.tag} worst guest write+fdatasync latency before any live operation (seq 3..{self.baseline}): "
              f"{base / 1000:.1f} ms", flush=True)
        for what, s0, s1 in self.windows:
            w = worst(s0 + 1, s1 + 1)
            print(f"{self.tag}   during {what} (seq {s0 + 1}..{s1 + 1}): {w / 1000:.1f} ms", flush=True)
            check(w < 2_000_000, f"{self.tag} worst write latency during {what} under 2 s ({w / 1000:.1f} ms)")
        commits = [worst(s0 + 1, s1 + 1) for what, s0, s1 in self.windows if "commit" in what and "killed" not in what]
        if commits:
            print(f"{self.tag} live commit: worst {max(commits) / 1000:.1f} ms vs {base / 1000:.1f} ms before "
                  f"(added {(max(commits) - base) / 1000:.1f} ms)", flush=True)


def main():
    reason = guest.unavailable()
    if reason:
        print(f"SKIP: {reason}")
        sys.exit(SKIP)
    kinds = sys.argv[2:] or ["vhost-user-blk", "nbd"]
    with open(sys.argv[1], "rb") as f:   # a -Dtest_hooks=true build (test-hooks.h: the names only there)
        if b"VDISKD_TEST_STEP_BYTES" not in f.read():
            print("SKIP: vdiskd is not a -Dtest_hooks=true build (VDISKD_TEST_STEP_BYTES)")
            sys.exit(SKIP)
    qemu = guest.qemu_argv(["-device", "virtio-blk-pci,drive=d"])
    t_all = time.monotonic()
    env = Env(sys.argv[1])
    try:
        env.start({"VDISKD_TEST_STEP_BYTES": str(SPEED)})
        check_eq(guest.import_base(env, SIZE, BASE_SEED, data_len=BASE_LEN, fmt="qcow2"), (None, ""),
                 "import the base image (qcow2, 16 MiB with 1 MiB of data)")
        why = guest.exports_work(env, VDISKCTL)
        if why:
            print(f"SKIP: {why}")
            env.close()
            sys.exit(SKIP)
        for i, kind in enumerate(kinds):
            try:
                Case(env, qemu, kind, crash=i == 0).run()
            except guest.GuestError as e:
                check(False, f"{kind}: guest: {e}")
        check(env.canary_unchanged(), "canary unchanged")
        print(f"whole test: {time.monotonic() - t_all:.1f} s", flush=True)
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
