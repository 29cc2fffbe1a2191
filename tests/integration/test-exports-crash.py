# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskd killed in the middle of export operations (VDISKD_CRASH_AT, a -Dtest_hooks=true build):

- export:after-handover — the helper has the chain's files but OpenDisk never answered: at the next
  start the helper is stopped (nobody may keep writing a disk without a lease), its directory removed,
  and the disk can be opened again;
- live-snapshot:after-commit — the new layer is recorded but the helper still writes the old top: the
  guest (qemu-io over NBD) keeps writing while vdiskd is down, and at the next start vdiskd finds the
  lease again and switches the helper to the recorded layer. Each write is in the layer that was the
  helper's top when it happened, every write reads back through the chain, and Verify is clean."""

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


def main():
    require("qemu-io", "qemu-system-x86_64", "stdbuf")
    case_handover(sys.argv[1])
    case_live_snapshot(sys.argv[1])
    finish()


if __name__ == "__main__":
    main()
