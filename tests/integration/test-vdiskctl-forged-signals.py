# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl does not believe a job's signals from anyone but vdiskd (issue 16, item 8).

Any local user may send a signal that claims to be org.vdisk1.Job.Finished of a running job, addressed
to vdiskctl's connection (unicast, which no match rule of the bus filters) or broadcast. While a real
(slow) flatten runs, another client, as the user nobody, sends vdiskctl:

1. Finished("done", "", ""), JobRemoved(job, "done") and PropertiesChanged(State "done"): vdiskctl keeps
   waiting (still running a second later, the job too), then exits 0 when the real job is done, and the
   disk is flattened.
2. Finished("failed", <a name and a message with ESC [2J, a newline and a C1 CSI>): vdiskctl keeps
   waiting, exits 0 with the real outcome, and writes no ESC (nor anything) on its output.

Usage: test-vdiskctl-forged-signals.py VDISKD (VDISKCTL in the environment)."""

import json
import os
import signal
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, ROOT, Env, check, check_eq, finish, opts

MiB = 1 << 20
VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
VDISKD = sys.argv[1]
# 24 steps of 1 MiB at least 100 ms apart: a flatten takes several seconds.
SLOW = {"VDISKD_TEST_STEP_BYTES": str(MiB), "VDISKD_TEST_STEP_DELAY_MS": "100",
        "VDISKD_TEST_JOB_LINGER_SEC": "3"}
EVIL = "\x1b[2J\x1b]0;owned\x07pwned\nsecond line\u009b2J"

# Runs as nobody: sends the forged signals given as JSON to vdiskctl's unique name and as broadcasts.
FORGER = r"""
import dbus, json, sys
address, target, path, forged = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
bus = dbus.bus.BusConnection(address)
for iface, member, sig, args, obj in forged:
    for dest in (target, None):
        m = dbus.lowlevel.SignalMessage(obj or path, iface, member)
        if dest:
            m.set_destination(dest)
        m.append(*[dbus.Dictionary(a, signature="sv") if isinstance(a, dict) else a for a in args], signature=sig)
        bus.send_message(m)
bus.flush()
print(bus.get_unique_name())
"""

STARTED = []


def bus_call(env, method, *args):
    o = env.bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus", introspect=False)
    return getattr(dbus.Interface(o, "org.freedesktop.DBus"), method)(*args)


def unique_name_of(env, pid, timeout=10):
    """The unique name of the connection that process `pid` opened."""
    end = time.time() + timeout
    while time.time() < end:
        for name in bus_call(env, "ListNames"):
            if not name.startswith(":"):
                continue
            try:
                if int(bus_call(env, "GetConnectionUnixProcessID", name)) == pid:
                    return str(name)
            except dbus.exceptions.DBusException:
                pass
        time.sleep(0.05)
    return None


def find_job(env, vm, disk):
    for path, _op, jvm, jdisk in env.call("ListJobs"):
        if (str(jvm), str(jdisk)) == (vm, disk):
            return str(path)
    return None


def job_state(env, path):
    o = dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.freedesktop.DBus.Properties")
    return str(o.Get("org.vdisk1.Job", "State"))


def depth(env, vm, disk):
    for name, _top, _fmt, d, _size in env.call("ListDisks", vm):
        if str(name) == disk:
            return int(d)
    return None


def forge(env, target, path, forged):
    # As root, the forger is the user nobody; as another user, it can only be that user again: still
    # another connection than vdiskd's, which is all vdiskctl may trust.
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if ROOT else []
    p = subprocess.run([*as_nobody, sys.executable, "-c", FORGER, env.address, target, path, json.dumps(forged)],
                       capture_output=True, text=True, timeout=60, cwd="/")
    check_eq((p.returncode, p.stderr), (0, ""), f"the forger (as {'nobody' if ROOT else 'the test user'}) sent its signals")
    return p.stdout.strip()


def run_section(env, disk, forged, what):
    proc = subprocess.Popen([VDISKCTL, "rebase", "vm", disk, "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, LC_ALL="C", LANGUAGE="", NO_COLOR="1"))
    STARTED.append(proc)
    path = None
    end = time.time() + 30
    while path is None and time.time() < end:
        path = find_job(env, "vm", disk)
        time.sleep(0.05)
    target = unique_name_of(env, proc.pid)
    check(path is not None and target is not None, f"{what}: the job ({path}) and vdiskctl's connection ({target})")
    if path is None or target is None:
        return
    # vdiskctl subscribes before it reads the job's state; give it that moment.
    time.sleep(0.5)
    check_eq(job_state(env, path), "running", f"{what}: the job is still running when the forger strikes")
    forged = [[f[0], f[1], f[2], f[3] if f[3] != "JOB" else [path, "done"], f[4]] for f in forged]
    forger = forge(env, target, path, forged)
    check(forger.startswith(":") and forger != target, f"{what}: the forger has a connection of its own ({forger})")
    time.sleep(1.0)
    still = proc.poll() is None
    state = job_state(env, path)
    check(still and state == "running",
          f"{what}: vdiskctl keeps waiting after the forged signals (vdiskctl running: {still}, job: {state})")
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    check_eq(proc.returncode, 0, f"{what}: vdiskctl exits 0, the real outcome")
    check(b"\x1b" not in out + err and b"\xc2\x9b" not in out + err, f"{what}: no escape sequence written: {err!r}")
    check_eq((out, err), (b"", b""), f"{what}: nothing written (the job was done)")
    check_eq(job_state(env, path), "done", f"{what}: the job is done")
    check_eq(depth(env, "vm", disk), 1, f"{what}: vm/{disk} is flattened")


def main():
    env = Env(VDISKD)
    try:
        env.start(SLOW)
        src = os.path.join(env.tmp, "base.raw")
        with open(src, "wb") as f:
            for i in range(24):
                f.write(bytes([0x21 + i]) * MiB)
        err, msg = env.import_file("base", "raw", src)
        check_eq(err, None, f"setup: import of 24 MiB ({msg})")
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        for disk in ("d1", "d2"):
            env.call("CreateDisk", "vm", disk, "base", dbus.UInt64(0), opts())

        job, props, mgr = "org.vdisk1.Job", "org.freedesktop.DBus.Properties", "org.vdisk1.Manager"
        run_section(env, "d1", [
            [job, "Finished", "sss", ["done", "", ""], None],
            [mgr, "JobRemoved", "os", "JOB", "/org/vdisk1"],
            [props, "PropertiesChanged", "sa{sv}as", [job, {"State": "done", "Progress": 1.0}, []], None],
        ], "forged done")
        run_section(env, "d2", [
            [job, "Finished", "sss", ["failed", "org.vdisk1.Error.Corrupt" + EVIL, "the image is corrupt" + EVIL],
             None],
        ], "forged failed with escape sequences")
        env.stop()
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        env.close()
    finish()


main()
