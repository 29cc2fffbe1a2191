# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskd keeps no capability it does not need once it serves (vdiskd(8), PRIVILEGES; docs/security.md).

Started as root with a full capability set, the running vdiskd has empty inheritable, effective and
ambient sets, and still uid 0; its permitted and bounding sets hold exactly CAP_SETUID, CAP_SETGID and
CAP_KILL (for the storage helpers of exports: switching the child to a helper uid, killing a helper
that does not quit) — and nothing at all with [Exports] Enabled=no. They stay so after it has served
calls that create files, hand out fds and run a job. And the drop is real, not just what /proc says:
- a root-owned 0600 image is adoptable (uid 0 keeps the owner's access: why vdiskd is not the
  `vdisk` user);
- an image owned by another uid with mode 0600, which root *with* CAP_DAC_OVERRIDE would read, is
  refused with InvalidArgs (the open fails with EACCES) and nothing is added to the store;
- a directory owned by another uid with mode 0700 is not searchable for it either (no
  CAP_DAC_READ_SEARCH).

Usage: test-privileges.py VDISKD. Needs root with CAP_DAC_OVERRIDE for all that (skips as root without it);
as another user it checks only that vdiskd, run as that user, holds no capability while it serves."""

import os
import sys

import dbus

from vdisktest import Env, check, check_eq, finish, opts, qemu_img

SKIP = 77
MiB = 1 << 20
CAP_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
CAP_DAC_OVERRIDE = 1
STRANGER = 12345  # a uid with no account: owns the test's "someone else's" files


def caps(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in CAP_SETS:
                out[key] = int(value.strip(), 16)
            elif key == "Uid":
                out["Uid"] = [int(x) for x in value.split()]
    return out


def disk_xml(target, path, fmt):
    return (f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/><source file='{path}'/>"
            f"<backingStore/><target dev='{target}' bus='virtio'/></disk>")


CAP_KILL, CAP_SETGID, CAP_SETUID = 5, 6, 7
HELPER_CAPS = (1 << CAP_KILL) | (1 << CAP_SETGID) | (1 << CAP_SETUID)


def check_no_caps(env, when, exports=True):
    c = caps(env.daemon.pid)
    for s in CAP_SETS:
        want = HELPER_CAPS if exports and s in ("CapPrm", "CapBnd") else 0
        check_eq(c[s], want, f"{when}: vdiskd's {s} is {'CAP_KILL, CAP_SETGID, CAP_SETUID' if want else 'empty'}")
    check_eq(c["Uid"], [0, 0, 0, 0], f"{when}: vdiskd still runs as uid 0 (real, effective, saved, fs)")


def as_user():
    """Not root: vdiskd has no capability to give up. What is left to show: it runs as the test user with
    empty inheritable, permitted, effective and ambient sets, before and after serving (exports enabled
    or not). The rest needs root (see the docstring)."""
    uid = os.geteuid()
    for config in ("", "[Exports]\nEnabled=no\n"):
        env = Env(sys.argv[1], config)
        try:
            env.start()
            when = "exports disabled" if config else "exports enabled"
            for step in ("after start-up", "after serving calls and a job"):
                if step != "after start-up":
                    env.call("CreateImage", "base", "qcow2", dbus.UInt64(MiB), opts())
                    env.call("CreateVM", "vm", dbus.UInt32(uid), opts())
                    env.call("CreateDisk", "vm", "d", "base", dbus.UInt64(0), opts())
                    env.call("Snapshot", "vm", "d", opts())
                    lease = env.call("OpenDisk", "vm", "d", opts(read_only=True))
                    check_eq(len(lease[2]), 3, f"{when}: OpenDisk hands out the fds of all 3 layers")
                    dbus.Interface(env.bus.get_object("org.vdisk1", lease[0], introspect=False),
                                   "org.vdisk1.Lease").Release()
                    check_eq(env.wait_job(env.call("Rebase", "vm", "d", "", opts()))[0], "done",
                             f"{when}: a flatten job works")
                c = caps(env.daemon.pid)
                for cap_set in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
                    check_eq(c[cap_set], 0, f"{when}, {step}: vdiskd's {cap_set} is empty")
                check_eq(c["Uid"], [uid] * 4, f"{when}, {step}: vdiskd runs as uid {uid} (real, effective, saved, fs)")
            env.stop()
        finally:
            env.close()
    print(f"not as uid {uid}: the capability drop and what vdiskd can no longer open (needs root)")
    finish()


def main():
    me = caps("self")
    if os.geteuid() != 0:
        as_user()
    if not me["CapEff"] & (1 << CAP_DAC_OVERRIDE):
        print("SKIP: needs root with CAP_DAC_OVERRIDE to show what vdiskd gives up")
        sys.exit(SKIP)
    check(me["CapBnd"] != 0, f"precondition: the test starts vdiskd with a non-empty bounding set ({me['CapBnd']:#x})")

    env = Env(sys.argv[1])
    try:
        env.start()
        check_no_caps(env, "after start-up")

        # Serving: files created, fds handed out, a job run. Nothing gives a capability back.
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(MiB), opts())
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        env.call("CreateDisk", "vm", "d", "base", dbus.UInt64(0), opts())
        env.call("Snapshot", "vm", "d", opts())
        lease = env.call("OpenDisk", "vm", "d", opts(read_only=True))
        check_eq(len(lease[2]), 3, "OpenDisk hands out the fds of all 3 layers without capabilities")
        dbus.Interface(env.bus.get_object("org.vdisk1", lease[0], introspect=False), "org.vdisk1.Lease").Release()
        job = env.call("Rebase", "vm", "d", "", opts())
        state = env.wait_job(job)
        check_eq(state[0], "done", "a flatten job works without capabilities")
        check_no_caps(env, "after serving calls and a job")

        # A root-owned 0600 image: readable by uid 0 without capabilities.
        mine = os.path.join(env.tmp, "mine.qcow2")
        check_eq(qemu_img("create", "-q", "-f", "qcow2", mine, str(MiB)).returncode, 0, "setup: qemu-img create")
        os.chmod(mine, 0o600)
        err, _ = env.try_call("AdoptDomainXML", "vm", disk_xml("vdb", mine, "qcow2"), opts())
        check_eq(err, None, "a root-owned 0600 image is adopted (uid 0 keeps the owner's access)")

        # Another uid's 0600 image: root with CAP_DAC_OVERRIDE reads it (the test does), vdiskd must not.
        theirs = os.path.join(env.tmp, "theirs.qcow2")
        check_eq(qemu_img("create", "-q", "-f", "qcow2", theirs, str(MiB)).returncode, 0, "setup: qemu-img create")
        os.chown(theirs, STRANGER, STRANGER)
        os.chmod(theirs, 0o600)
        with open(theirs, "rb") as f:
            check_eq(f.read(4), b"QFI\xfb", "precondition: the test (root with CAP_DAC_OVERRIDE) reads the stranger's file")
        before = env.snapshot_store()
        err, msg = env.try_call("AdoptDomainXML", "vm", disk_xml("vdc", theirs, "qcow2"), opts())
        check_eq(err, "org.freedesktop.DBus.Error.InvalidArgs",
                 f"another uid's 0600 image is not readable for vdiskd ({msg})")
        check_eq(str(msg), f"the top layer ('{theirs}'): Permission denied", "the message names the file and the reason")
        check_eq(env.snapshot_store(), before, "nothing was added to the store")

        # Another uid's 0700 directory: no CAP_DAC_READ_SEARCH either.
        hidden = os.path.join(env.tmp, "hidden")
        os.mkdir(hidden, 0o700)
        inner = os.path.join(hidden, "inner.raw")
        with open(inner, "wb") as f:
            f.truncate(MiB)
        os.chmod(inner, 0o644)
        os.chown(hidden, STRANGER, STRANGER)
        err, msg = env.try_call("AdoptDomainXML", "vm", disk_xml("vdd", inner, "raw"), opts())
        check_eq(str(msg), f"the top layer ('{inner}'): cannot open its directory: Permission denied",
                 "the message names the file and the reason")
        check_eq(err, "org.freedesktop.DBus.Error.InvalidArgs",
                 f"a file in another uid's 0700 directory cannot be reached ({msg})")
        check_eq(env.snapshot_store(), before, "nothing was added to the store")
        check_no_caps(env, "at the end")
        check(env.canary_unchanged(), "the canary is unchanged")
        env.stop()
    finally:
        env.close()

    env = Env(sys.argv[1], "[Exports]\nEnabled=no\n")
    try:
        env.start()
        check_no_caps(env, "exports disabled", exports=False)
        env.stop()
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
