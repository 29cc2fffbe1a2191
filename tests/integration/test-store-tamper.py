# SPDX-License-Identifier: LGPL-2.1-or-later
"""A backing layer's file in the store replaced by something else (issue 16, items 7 and 9): a FIFO, a
symlink to a canary, a directory, a socket, the same file owned by another uid. OpenDisk and Verify must
not block (Ping answers meanwhile), OpenDisk fails with org.vdisk1.Error.Corrupt, Verify reports the layer,
the daemon logs a warning naming the layer, and the records stay byte for byte."""

import json
import os
import socket
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, IFACE, PATH, SIGNATURES, Env, check, check_eq, finish, opts, root_only

GiB = 1 << 30
CORRUPT = "org.vdisk1.Error.Corrupt"


def spawn(env, method, *args):
    """Calls `method` in a child process (so that the test itself never blocks on it)."""
    code = f"""
import dbus, json, sys
bus = dbus.bus.BusConnection({env.address!r})
m = dbus.Interface(bus.get_object({BUS_NAME!r}, {PATH!r}, introspect=False), {IFACE!r})
try:
    r = getattr(m, {method!r})(*json.loads(sys.argv[1]), signature={SIGNATURES[method]!r}, timeout=30)
    print(json.dumps([None, r], default=str))
except dbus.exceptions.DBusException as e:
    print(json.dumps([e.get_dbus_name(), e.get_dbus_message()]))
"""
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(list(args))], stdout=subprocess.PIPE, text=True)


def ping(env):
    peer = dbus.Interface(env.bus.get_object(BUS_NAME, PATH, introspect=False), "org.freedesktop.DBus.Peer")
    try:
        peer.Ping(timeout=5)
        return True
    except dbus.exceptions.DBusException:
        return False


def records(env):
    """records/ and journal/ byte for byte (not images/: the test must not open the FIFO itself)."""
    out = {}
    for rel in sorted(env.store_files()):
        if not rel.startswith("images/"):
            with open(os.path.join(env.store, rel), "rb") as f:
                out[rel] = f.read()
    return out


def tamper(kind, path, env):
    """Puts `kind` where the file was; returns how to undo it."""
    aside = os.path.join(env.tmp, "aside")
    if kind == "owner":
        os.chown(path, 65534, 65534)
        return lambda: os.chown(path, 0, 0)
    os.rename(path, aside)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    elif kind == "symlink":
        os.symlink(env.canary, path)
    elif kind == "directory":
        os.mkdir(path, 0o700)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()

    def undo():
        if kind == "directory":
            os.rmdir(path)
        else:
            os.unlink(path)
        os.rename(aside, path)
    return undo


def unblock(path):
    """Without the fix vdiskd sits in open() of the FIFO: a writer lets it go, so the test can end."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    except OSError:
        pass


def main():
    env = Env(sys.argv[1])
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
        env.call("CreateVM", "vm", dbus.UInt32(65534), opts())
        env.call("CreateDisk", "vm", "d", "base", dbus.UInt64(0), opts())
        chain = env.call("GetChain", "vm", "d")
        base_id = str(chain[1][0])
        base_file = os.path.join(env.store, "images", os.path.basename(str(chain[1][1])))
        check(os.path.isfile(base_file), "the backing layer's file is where GetChain says")
        check_eq(env.call("Verify", "vm"), [], "a consistent store to begin with")

        for kind in ("fifo", "symlink", "directory", "socket") + ((("owner",) if root_only("a layer file given to another uid") else ())):
            before = records(env)
            log_start = len(env.log_text())
            undo = tamper(kind, base_file, env)
            try:
                for method in ("OpenDisk", "Verify"):
                    child = spawn(env, method, *(("vm", "d", {}) if method == "OpenDisk" else ("vm",)))
                    time.sleep(0.3)
                    check(ping(env), f"{kind}: Ping answers during {method}")
                    if kind == "fifo":
                        for _ in range(40):
                            if child.poll() is not None:
                                break
                            unblock(base_file)
                            time.sleep(0.1)
                    out, _ = child.communicate(timeout=60)
                    err, res = json.loads(out)
                    if method == "OpenDisk":
                        check_eq(err, CORRUPT, f"{kind}: OpenDisk fails with Corrupt ({res})")
                    else:
                        check_eq(err, None, f"{kind}: Verify answers ({res})")
                        found = [p for p in (res or []) if str(p[1]) == base_id]
                        check(len(found) == 1 and str(found[0][0]) == "d",
                              f"{kind}: Verify reports the backing layer {base_id}: {res}")
                log = env.log_text()[log_start:]
                check(f"layer {base_id}" in log and "treating it as corrupt" in log,
                      f"{kind}: the daemon's warning names the layer: {log[-600:]}")
                check_eq(records(env), before, f"{kind}: records and journal unchanged")
                check(env.canary_unchanged(), f"{kind}: the canary is unchanged")
            finally:
                undo()
            check_eq(env.call("Verify", "vm"), [], f"{kind}: consistent again once the file is back")
        check(ping(env), "the daemon still answers at the end")
        env.stop()
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
