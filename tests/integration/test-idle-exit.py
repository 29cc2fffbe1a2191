# SPDX-License-Identifier: LGPL-2.1-or-later
"""Exit on idle and D-Bus activation: vdiskd (--exit-on-idle=1) leaves the bus when nothing is
leased or running and no call came for a second; the next call to org.vdisk1 starts it again
through an activation file on a private bus (its own config and socket); it stays while a lease
is held and while a job runs or can still be read; state survives the restarts."""

import os
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, Env, check, check_eq, finish, opts

MiB = 1 << 20


def owner_pid(env):
    bus = env.bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus", introspect=False)
    return int(bus.GetConnectionUnixProcessID(BUS_NAME, dbus_interface="org.freedesktop.DBus"))


def write_activation(env, vdiskd, extra_env=""):
    services = os.path.join(env.tmp, "services")
    os.makedirs(services, exist_ok=True)
    with open(os.path.join(services, "org.vdisk1.service"), "w") as f:
        f.write("[D-BUS Service]\nName=org.vdisk1\n"
                f"Exec=/usr/bin/env DBUS_SYSTEM_BUS_ADDRESS={env.address} {extra_env} "
                f"{os.path.abspath(vdiskd)} --store {env.store} --config {env.config} --runtime-dir {env.runtime_dir} "
                "--exit-on-idle=1\n")
    return services


def main():
    vdiskd = sys.argv[1]
    env = Env(vdiskd)
    try:
        # A bus of our own with an activation directory (the harness's bus has none).
        env.bus_proc.terminate()
        env.bus_proc.wait(timeout=10)
        if os.path.exists(env.socket):
            os.unlink(env.socket)
        services = write_activation(env, vdiskd, "VDISKD_TEST_JOB_LINGER_SEC=5 VDISKD_TEST_STEP_BYTES=1048576 "
                                                 "VDISKD_TEST_STEP_DELAY_MS=400")
        conf = os.path.join(env.tmp, "bus.conf")
        with open(conf) as f:
            text = f.read()
        with open(conf, "w") as f:
            f.write(text.replace("</busconfig>", f"  <servicedir>{services}</servicedir>\n</busconfig>"))
        log = open(os.path.join(env.tmp, "bus.log"), "a")
        env.bus_proc = subprocess.Popen(["dbus-daemon", "--config-file", conf, "--nofork", "--nopidfile"],
                                        stdout=log, stderr=log)
        for _ in range(100):
            if os.path.exists(env.socket):
                break
            time.sleep(0.05)
        os.chmod(env.socket, 0o777)
        env.bus = dbus.bus.BusConnection(env.address)

        check(not env.bus.name_has_owner(BUS_NAME), "nobody owns org.vdisk1 before the first call")
        t0 = time.time()
        check_eq(str(env.call("CreateVM", "vm", dbus.UInt32(0), opts())), "None", "the first call activates vdiskd")
        check(env.bus.name_has_owner(BUS_NAME), "vdiskd owns its name after activation")
        first = owner_pid(env)

        # Idle: it leaves within about a second after the last call.
        deadline = time.time() + 10
        while time.time() < deadline and env.bus.name_has_owner(BUS_NAME):
            time.sleep(0.05)
        check(not env.bus.name_has_owner(BUS_NAME), f"vdiskd exits when idle ({time.time() - t0:.1f} s)")
        def gone(pid):
            try:
                return open(f"/proc/{pid}/stat").read().split()[2] == "Z"
            except FileNotFoundError:
                return True
        deadline = time.time() + 15
        while time.time() < deadline and not gone(first):
            time.sleep(0.05)
        check(gone(first), "the idle daemon's process is gone")

        # The next call brings it back, with the state it left.
        vms = [str(v[0]) for v in env.call("ListVMs")]
        check_eq(vms, ["vm"], "activated again: the VM created before the idle exit is there")
        second = owner_pid(env)
        check(second != first, "a new process serves")

        # A lease keeps it.
        env.call("CreateDisk", "vm", "d", "", dbus.UInt64(64 * MiB), opts())
        lease, _, fds = env.call("OpenDisk", "vm", "d", opts())
        for f in fds:
            os.close(f.take())
        time.sleep(3)
        check(env.bus.name_has_owner(BUS_NAME) and owner_pid(env) == second,
              "a held lease keeps vdiskd running past the idle time")
        env.bus.get_object(BUS_NAME, lease, introspect=False).Release(dbus_interface="org.vdisk1.Lease")
        deadline = time.time() + 10
        while time.time() < deadline and env.bus.name_has_owner(BUS_NAME):
            time.sleep(0.05)
        check(not env.bus.name_has_owner(BUS_NAME), "released: vdiskd exits when idle again")

        # A running job keeps it, and so does the finished job while it can still be read.
        top = os.path.join(env.store, str(env.call("GetChain", "vm", "d")[0][1]))
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5 0 8M", top], check=True, stdout=subprocess.DEVNULL)
        env.call("Snapshot", "vm", "d", opts())
        pid = owner_pid(env)
        job = env.call("Rebase", "vm", "d", "", opts())
        obj = env.bus.get_object(BUS_NAME, job, introspect=False)
        props = dbus.Interface(obj, "org.freedesktop.DBus.Properties")
        state = None
        deadline = time.time() + 60
        while time.time() < deadline:
            state = str(props.Get("org.vdisk1.Job", "State"))
            if state != "running":
                break
            time.sleep(1.5)  # slower than the idle time: only the job keeps the daemon alive
        check_eq(state, "done", "the job ran to its end (about 3 s of steps)")
        check_eq(owner_pid(env), pid, "the same daemon served the whole job")
        time.sleep(1.2)
        check(env.bus.name_has_owner(BUS_NAME), "a finished job that can still be read keeps vdiskd")
        deadline = time.time() + 15
        while time.time() < deadline and env.bus.name_has_owner(BUS_NAME):
            time.sleep(0.05)
        check(not env.bus.name_has_owner(BUS_NAME), "after the job is gone, vdiskd exits when idle")
        check_eq(len(env.call("GetChain", "vm", "d")), 1, "activated again: the flattened chain is recorded")
        deadline = time.time() + 10
        while time.time() < deadline and env.bus.name_has_owner(BUS_NAME):
            time.sleep(0.05)
        check(not env.bus.name_has_owner(BUS_NAME), "the last activated daemon exits too")
        # The activated daemons log to the bus's stderr: sanitizer reports land there.
        text = open(os.path.join(env.tmp, "bus.log")).read()
        check("ERROR: AddressSanitizer" not in text and "runtime error:" not in text and "LeakSanitizer" not in text,
              "no sanitizer report from any activated daemon")
        check_eq(text.count("Idle for 1 s with nothing leased or running; exiting"), 4, "four idle exits, each logged")
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
