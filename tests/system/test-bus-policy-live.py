#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""data/org.vdisk1.conf as dbus-daemon enforces it, on a private bus.

    test-bus-policy-live.py PROBE POLICY INTERFACE.xml...

Starts a private dbus-daemon (never the system bus) whose configuration is the default
policy of Debian's system.conf plus the policy under test, runs PROBE (bus-policy-probe.c)
as a stand-in daemon owning org.vdisk1, and checks that every allow-listed method reaches
it while everything else (Properties.Set, Peer.GetMachineId, ObjectManager, unknown members,
calls without an interface, calls to the unique name) is refused by the bus with AccessDenied.
As root it also checks, as the unprivileged user "nobody", that the allow-list applies to
everyone and that nobody may not own org.vdisk1.

Exits 77 (skipped) if dbus-daemon is missing."""

import os
import pwd
import select
import shutil
import subprocess
import sys
import tempfile
import time

from dbusfiles import BUS_NAME, STANDARD_ALLOWED, load_interfaces

REACHED = "org.vdisk1.Test.Reached"
DENIED = "org.freedesktop.DBus.Error.AccessDenied"

# The default policy of dbus 1.14's system.conf, which every system.d file extends.
BASE_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Containers1"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <include>{policy}</include>
{extra}
</busconfig>
"""

# (interface or "-" for none, member) that must be refused by the bus.
MUST_BE_DENIED = [
    ("org.freedesktop.DBus.Properties", "Set"),
    ("org.freedesktop.DBus.Peer", "GetMachineId"),
    ("org.freedesktop.DBus.ObjectManager", "GetManagedObjects"),
    ("org.vdisk1.Manager", "NoSuchMethod"),
    ("org.vdisk1.Manager", "JobRemoved"),
    ("org.vdisk1.Manager", "Cancel"),
    ("org.vdisk1.Job", "CreateImage"),
    ("org.vdisk1.Lease", "Cancel"),
    ("org.vdisk1", "CreateImage"),
    ("-", "CreateImage"),
    ("-", "Introspect"),
]


def read_line(stream, timeout):
    deadline = time.monotonic() + timeout
    buf = b""
    fd = stream.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        buf += chunk
    return buf.decode().strip()


def stop(proc):
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv):
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    probe, policy, interface_paths = os.path.abspath(argv[1]), os.path.abspath(argv[2]), argv[3:]
    dbus_daemon = shutil.which("dbus-daemon")
    if dbus_daemon is None:
        print("dbus-daemon not found (Debian: dbus-daemon); skipping")
        return 77

    interfaces = load_interfaces(interface_paths)
    allowed = sorted(STANDARD_ALLOWED | {(i.name, m) for i in interfaces.values() for m in i.methods})

    try:
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        print("the current uid has no passwd entry; dbus-daemon would refuse it; skipping")
        return 77
    # The policy lets root own the name; a non-root test run needs the same right for itself.
    extra = "" if os.geteuid() == 0 else f'  <policy user="{me}"><allow own="{BUS_NAME}"/></policy>'

    tmp = tempfile.mkdtemp(prefix="vdisk-bus-policy-")
    bus = probe_server = None
    failures = []
    try:
        os.chmod(tmp, 0o755)   # so that "nobody" can reach the socket
        socket = os.path.join(tmp, "bus")
        config = os.path.join(tmp, "bus.conf")
        with open(config, "w") as f:
            f.write(BASE_CONFIG.format(socket=socket, policy=policy, extra=extra))

        bus = subprocess.Popen([dbus_daemon, f"--config-file={config}", "--nofork", "--nopidfile",
                                "--nosyslog", "--print-address=1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        address = read_line(bus.stdout, 10)
        if not address:
            stop(bus)
            print("dbus-daemon did not start:", bus.stderr.read().decode(), file=sys.stderr)
            return 1
        print(f"private bus: {address}")

        probe_server = subprocess.Popen([probe, "serve", address], stdout=subprocess.PIPE)
        ready = read_line(probe_server.stdout, 10)
        if not ready or not ready.startswith("READY "):
            print(f"the stand-in daemon could not own {BUS_NAME} under the policy", file=sys.stderr)
            return 1
        unique = ready.split()[1]

        def call(interface, member, destination=BUS_NAME, prefix=()):
            r = subprocess.run([*prefix, probe, "call", address, destination, interface, member],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
            if r.returncode != 0:
                return f"(probe failed: {r.stderr.strip()})"
            return r.stdout.strip()

        def expect(what, got, want):
            ok = got == want
            print(f"{'ok  ' if ok else 'FAIL'} {what}: {got}")
            if not ok:
                failures.append(f"{what}: got {got}, want {want}")

        for interface, member in allowed:
            expect(f"allowed {interface}.{member}", call(interface, member), REACHED)
        for interface, member in MUST_BE_DENIED:
            expect(f"denied {interface}.{member}", call(interface, member), DENIED)
        expect("denied Properties.Set via the unique name",
               call("org.freedesktop.DBus.Properties", "Set", destination=unique), DENIED)
        expect("denied Manager.NoSuchMethod via the unique name",
               call("org.vdisk1.Manager", "NoSuchMethod", destination=unique), DENIED)

        # The same surface for an unprivileged caller, who also may not own the name.
        setpriv = shutil.which("setpriv")
        if os.geteuid() == 0 and setpriv:
            as_nobody = (setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--")
            # nobody runs a copy in tmp (mode 0755): the build directory may be one only root can enter.
            probe = shutil.copy(probe, os.path.join(tmp, "bus-policy-probe"))
            os.chmod(probe, 0o755)
            r = subprocess.run([*as_nobody, probe, "own", address, BUS_NAME],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
            if r.returncode != 0:
                print(f"note: cannot run the probe as nobody ({r.stderr.strip()}); "
                      "skipping the unprivileged checks")
            else:
                expect("nobody owning org.vdisk1", r.stdout.strip(), DENIED)
                expect("nobody calling org.vdisk1.Manager.ListImages",
                       call("org.vdisk1.Manager", "ListImages", prefix=as_nobody), REACHED)
                expect("nobody calling org.freedesktop.DBus.Properties.Set",
                       call("org.freedesktop.DBus.Properties", "Set", prefix=as_nobody), DENIED)
        else:
            print("note: not root or no setpriv; skipping the unprivileged checks")
    finally:
        stop(probe_server)
        stop(bus)
        if bus:
            log = bus.stderr.read().decode().strip()
            if log:
                print("dbus-daemon said:", log, sep="\n")
        shutil.rmtree(tmp, ignore_errors=True)

    if failures:
        print(f"{len(failures)} failure(s):", *failures, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
