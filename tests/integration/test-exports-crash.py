# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskd killed in the middle of export operations (VDISKD_CRASH_AT, a -Dtest_hooks=true build):

- export:after-handover — the helper has the chain's files but OpenDisk never answered: at the next
  start the helper is stopped (nobody may keep writing a disk without a lease), its directory removed,
  and the disk can be opened again;
- live-snapshot:after-commit — the new layer is recorded but the helper still writes the old top: the
  guest (qemu-io over NBD) keeps writing while vdiskd is down, and at the next start vdiskd finds the
  lease again and switches the helper to the recorded layer. Each write is in the layer that was the
  helper's top when it happened, every write reads back through the chain, and Verify is clean;
- live-commit:running — vdiskd dies while the helper's block-commit runs: the helper keeps serving (the
  guest writes on), and at the next start the job is cancelled: the chain and the records are the old
  ones, the committed layer's file is still there; or, a fast job, completes while vdiskd is down
  (concluded, not dismissed): the next start records it;
- live-commit:after-job (intermediate and active) and live-commit:before-commit — QEMU's commit completed (its graph and the upper
  layer's header changed) but the records were not committed (before-commit: the journal entry is
  written and is rolled back at the start): the next start rolls the records forward to the helper's
  chain and removes the committed layer's file.
Each ends with Verify clean (the end-of-lease header check) and every guest write read back."""

import json
import os
import sys
import time

import dbus

from vdisktest import Env, check, check_eq, finish, opts, require

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "test_exports", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test-exports.py"))
te = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(te)


def case_handover(vdiskd):
    env = Env(vdiskd)
    try:
        env.start()
        te.setup(env)
        env.stop()
        env.start({"VDISKD_CRASH_AT": "export:after-handover"})
        err, res = env.error("OpenDisk", "vm", "d", opts(export="nbd"))
        check_eq(err, "org.freedesktop.DBus.Error.NoReply", f"OpenDisk does not answer when vdiskd dies in it ({res})")
        env.daemon.wait(timeout=20)
        dirs = te.export_dirs(env)
        check_eq(len(dirs), 1, "the helper's directory is there")
        with open(os.path.join(env.runtime_dir, "exports", dirs[0], "state.json")) as f:
            state = json.load(f)
        check_eq(state["starting"], True, "its state says the start was not finished")
        pid = state["helper-pid"]
        check(te.alive(pid), "the helper holds the chain after vdiskd died")
        env.start()
        te.wait_for("the next start stops the helper", lambda: not te.alive(pid))
        check_eq(te.export_dirs(env), [], "and removes its directory")
        check("the export's start was interrupted" in env.log_text(), "the log says why")
        err, res = env.error("OpenDisk", "vm", "d", opts(export="nbd"))
        check_eq(err, None, f"the disk can be exported again ({res if err else ''})")
    finally:
        env.close()


def allocated(env, layer_id):
    import subprocess
    p = subprocess.run(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", te.layer_file(env, layer_id)],
                       capture_output=True, text=True, cwd=os.path.join(env.store, "images"))
    return [(e["start"], e["length"]) for e in json.loads(p.stdout) if e.get("data") and e.get("depth") == 0]


def case_live_snapshot(vdiskd):
    env = Env(vdiskd)
    try:
        env.start()
        te.setup(env)
        env.stop()
        env.start({"VDISKD_CRASH_AT": "live-snapshot:after-commit"})
        chain0 = [str(r[0]) for r in env.call("GetChain", "vm", "d")]
        bus2 = dbus.bus.BusConnection(env.address)
        path, _, fd = te.open_export(env, "nbd", bus=bus2)
        io = te.QemuIo(fd)
        check("wrote 65536/65536" in io.do("write -P 0x41 0 64k"), "a write before the snapshot")
        err, _ = env.error("Snapshot", "vm", "d", opts())
        check(err is not None, "Snapshot does not answer: vdiskd died after recording the layer")
        env.daemon.wait(timeout=20)
        check("wrote 65536/65536" in io.do("write -P 0x42 64k 64k"), "the guest keeps writing while vdiskd is down")
        env.start()
        chain1 = [str(r[0]) for r in env.call("GetChain", "vm", "d")]
        check_eq(len(chain1), len(chain0) + 1, "the recorded layer is there after the restart")
        check_eq(chain1[1:], chain0, "on top of the old chain")
        state = te.state_of(env, path)
        check_eq(state["nodes"][0], "L" + chain1[0][:30], "the helper was switched to it at the start")
        check("wrote 65536/65536" in io.do("write -P 0x43 128k 64k"), "a write after the restart")
        io.close()
        pid = state["helper-pid"]
        te.lease_obj(env, path, bus2).Release()
        te.wait_for("helper gone", lambda: not te.alive(pid))
        os.close(fd)
        check_eq(env.call("Verify", "vm"), dbus.Array([], signature="(sss)"), "Verify is clean")
        check_eq(allocated(env, chain0[0]), [(0, 131072)],
                 "writes before the switch are in the old top (also the one made while vdiskd was down)")
        check_eq(allocated(env, chain1[0]), [(131072, 65536)], "the write after the switch is in the new layer")
        path, _, fd = te.open_export(env, "nbd", read_only=True)
        rc, out = te.qemu_io(fd, "read -P 0x41 0 64k", "read -P 0x42 64k 64k", "read -P 0x43 128k 64k", read_only=True)
        check_eq(rc, 0, f"every write reads back through the chain ({out.strip()[-300:]})")
        te.lease_obj(env, path).Release()
        os.close(fd)
        bus2.close()
    finally:
        env.close()


def case_live_commit(vdiskd, point, speed, active=False, done=None):
    """A live commit of S1 (in [S2, S1, P0, ...]; of S2, the top, if `active`) with vdiskd killed at `point`."""
    env = Env(vdiskd)
    try:
        env.start({"VDISKD_TEST_STEP_BYTES": str(speed)})
        te.live_setup(env)
        bus2 = dbus.bus.BusConnection(env.address)
        path, _, fd = te.open_export(env, "nbd", bus=bus2)
        io = te.QemuIo(fd)
        te.spread_write(io, "0x71", 0)
        s1 = str(env.call("Snapshot", "vm", "d", opts()))
        te.spread_write(io, "0x72", 64 << 10)
        s2 = str(env.call("Snapshot", "vm", "d", opts()))
        chain = te.chain_ids(env)
        if active:
            s1 = s2  # the layer committed
        s1_file = te.layer_file(env, s1)
        env.stop()
        env.start({"VDISKD_CRASH_AT": point, "VDISKD_TEST_STEP_BYTES": str(speed)})
        te.wait_for("the lease is found again", lambda: te.chain_ids(env) == chain)
        err, job = env.error("Commit", "vm", "d", s1, opts())
        check_eq(err, None, f"{point}: the live commit starts")
        env.daemon.wait(timeout=60)
        check(f"crash point {point} reached" in env.log_text(), f"{point}: vdiskd died there")
        te.spread_write(io, "0x73", 128 << 10)  # while vdiskd is down
        check("job" in te.state_of(env, path), f"{point}: the export's state names the pending job")
        env.start({"VDISKD_TEST_STEP_BYTES": str(speed)})
        te.wait_for("the restarted vdiskd answers", lambda: env.error("ListJobs")[0] is None)
        if done is None:
            done = point != "live-commit:running"
        want = [c for c in chain if c != s1] if done else chain
        check_eq(te.chain_ids(env), want, f"{point}: the records are in the {'new' if done else 'old'} state")
        check_eq(os.path.exists(s1_file), not done, f"{point}: the committed layer's file {'is gone' if done else 'stays'}")
        check("job" not in te.state_of(env, path), f"{point}: no job pending any more")
        check(("it had completed, the records now follow" if done else "cancelled, the chain is unchanged") in env.log_text(),
              f"{point}: the log says what the start found")
        check_eq(te.state_of(env, path)["nodes"], ["L" + c[:30] for c in want], f"{point}: the export's nodes are the chain")
        te.spread_write(io, "0x74", 192 << 10)  # after the restart
        te.end_export(env, path, fd, io, bus2)
        te.read_back(env, [(p, te.spread_ranges(o << 10)) for p, o in (("0x71", 0), ("0x72", 64), ("0x73", 128), ("0x74", 192))])
        if not done:
            err, job = env.error("Commit", "vm", "d", s1, opts())
            check_eq(err, None, f"{point}: the commit can be done again (offline now)")
            check_eq(env.wait_job(job)[0], "done", f"{point}: and completes")
        bus2.close()
    finally:
        env.close()


def main():
    require("qemu-io", "qemu-system-x86_64", "stdbuf")
    case_handover(sys.argv[1])
    case_live_snapshot(sys.argv[1])
    case_live_commit(sys.argv[1], "live-commit:running", 16 << 10)  # 256 KiB: some 15 s, killed at once
    case_live_commit(sys.argv[1], "live-commit:running", 1 << 30, done=True)  # completes while vdiskd is down
    case_live_commit(sys.argv[1], "live-commit:after-job", 1 << 30)
    case_live_commit(sys.argv[1], "live-commit:before-commit", 1 << 30)
    case_live_commit(sys.argv[1], "live-commit:after-job", 1 << 30, active=True)
    finish()


if __name__ == "__main__":
    main()
