# SPDX-License-Identifier: LGPL-2.1-or-later
"""Spare storage helpers ([Exports] SpareHelpers=): helpers vdiskd starts ahead of any OpenDisk so that an
export's start does not wait for QEMU. With SpareHelpers=1, checks that a spare runs after the start,
sandboxed like any helper (its own uid of the range, no capabilities, no_new_privs, seccomp, QEMU's
sandbox) and holding no file; that OpenDisk with an export takes it (its pid serves the lease, its id is
the lease's, it does its file I/O through io_uring) and that another one replaces it, with another uid;
that a killed spare is replaced; that the range of uids bounds spares and exports together; that vdiskd
ends its spares when it exits and that a vdiskd killed with SIGKILL leaves none behind once restarted.
Then SpareHelpers=0, the default of two, Enabled=no and bad values."""

import json
import os
import signal
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, Env, alive, check, check_eq, finish, opts, proc_status

HELPER_UIDS = (2113929216, 2113994751)  # [Exports] HelperUids= default
SANDBOX = b"on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def spares(env):
    """{id: pid} of the spares in the runtime directory whose pid is that spare's helper (-name id)."""
    out = {}
    d = os.path.join(env.runtime_dir, "spares")
    for n in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        try:
            with open(os.path.join(d, n, "spare.json")) as f:
                pid = int(json.load(f)["pid"])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f"\0-name\0{n}\0".encode() in f.read() and alive(pid):
                    out[n] = pid
        except (OSError, ValueError, KeyError):
            pass
    return out


def spare_dirs(env):
    d = os.path.join(env.runtime_dir, "spares")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def wait_for(what, cond, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    check(False, f"{what} (waited {timeout} s)")
    return None


def one_spare(env, what, not_pids=()):
    """Waits until exactly one spare runs (none of not_pids); (id, pid)."""
    got = wait_for(what, lambda: len(spares(env)) == 1 and not set(spares(env).values()) & set(not_pids)
                   and len(spare_dirs(env)) == 1 and spares(env))
    return next(iter(got.items())) if got else (None, None)


def uid_of(pid):
    return int(proc_status(pid)["Uid"].split()[0])


def check_sandboxed(env, pid, what):
    # QEMU sets up its sandbox early, but not before vdiskd has written spare.json: a spare found that soon
    # gets it within moments.
    wait_for(f"{what}: a seccomp filter", lambda: proc_status(pid)["Seccomp"] == "2")
    status = proc_status(pid)
    uids = [int(x) for x in status["Uid"].split()]
    if os.geteuid() == 0:
        check(HELPER_UIDS[0] <= uids[0] <= HELPER_UIDS[1], f"{what}: runs as a uid of the helper range ({uids[0]})")
        check_eq(len(set(uids)), 1, f"{what}: real, effective, saved and fs uid are the same")
        check_eq([int(x) for x in status["Gid"].split()], [uids[0]] * 4, f"{what}: its gids are its uid")
        check_eq(status["Groups"], "", f"{what}: no supplementary groups")
    else:
        check_eq(uids[0], os.geteuid(), f"{what}: runs as vdiskd's uid")
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        check_eq(int(status[cap], 16), 0, f"{what}: {cap} is empty")
    check_eq(status["NoNewPrivs"], "1", f"{what}: no_new_privs")
    check_eq(status["Seccomp"], "2", f"{what}: a seccomp filter")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    check(b"-sandbox" in argv and SANDBOX in argv, f"{what}: QEMU's sandbox")
    check(b"-machine" in argv and b"none" in argv, f"{what}: no machine")


def files_of(pid):
    out = []
    for n in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{n}"))
        except OSError:
            pass
    return out


def manager(env):
    return dbus.Interface(env.bus.get_object(BUS_NAME, "/org/vdisk1", introspect=False), "org.vdisk1.Manager")


def open_export(env, disk="d", kind="vhost-user-blk"):
    path, attach, fds = manager(env).OpenDisk("vm", disk, opts(export=kind))
    return str(path), fds[0].take()


def release(env, path, fd):
    lease_id = path.rsplit("/", 1)[1]
    with open(os.path.join(env.runtime_dir, "exports", lease_id, "state.json")) as f:
        pid = json.load(f)["helper-pid"]
    dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.vdisk1.Lease").Release()
    wait_for("Release stops the lease's helper", lambda: not alive(pid))
    os.close(fd)


def lease_state(env, path):
    with open(os.path.join(env.runtime_dir, "exports", path.rsplit("/", 1)[1], "state.json")) as f:
        return json.load(f)


def setup_disks(env, n=1):
    env.call("CreateImage", "base", "qcow2", dbus.UInt64(64 << 20), opts())
    env.call("CreateVM", "vm", dbus.UInt32(0), opts())
    for k in range(n):
        env.call("CreateDisk", "vm", "d" if k == 0 else f"d{k}", "base", dbus.UInt64(0), opts())


def qemu_io_read(fd):
    p = subprocess.run(["qemu-io", "-r", "--image-opts", f"driver=nbd,server.type=fd,server.str={fd},export=d",
                        "-c", "read -P 0 0 64k"], pass_fds=[fd], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def case_spare_taken_and_replaced(env):
    sid, spid = one_spare(env, "a spare helper runs after the start")
    if not spid:
        return
    check_sandboxed(env, spid, "the spare")
    held = files_of(spid)
    check(not any(env.store in f for f in held), f"the spare holds no store file ({held})")
    check(not any("/exports/" in f for f in held), "the spare holds nothing of an export")

    before = time.monotonic()
    path, fd = open_export(env, kind="nbd")
    took = (time.monotonic() - before) * 1000
    check_eq(path.rsplit("/", 1)[1], sid, "the lease has the spare's id")
    st = lease_state(env, path)
    check_eq(st["helper-pid"], spid, "the spare's pid is the lease's helper")
    check(alive(spid), "the spare now serves the lease")
    check(any(os.path.join(env.store, "images") in f for f in files_of(spid)), "the former spare holds the chain")
    check(not os.path.exists(os.path.join(env.runtime_dir, "spares", sid)), "the spare's directory moved")
    rc, out = qemu_io_read(fd)
    check_eq(rc, 0, f"the export of the former spare serves the disk ({out.strip()[-200:]})")
    check("spare helper" in env.log_text(), "vdiskd logs that a spare served the export")
    # The chain's file nodes use io_uring in the helper (aio=io_uring; vdiskd falls back to QEMU's thread
    # pool only if the helper refuses it, and says so in its log).
    check("anon_inode:[io_uring]" in files_of(spid) or "refused aio=io_uring" in env.log_text(),
          "the helper does its file I/O through io_uring")
    print(f"# OpenDisk with a spare: {took:.1f} ms")

    nid, npid = one_spare(env, "another spare replaces the one taken", not_pids=[spid])
    if npid:
        check(nid != sid, "the new spare has a new id")
        check_sandboxed(env, npid, "the new spare")
        if os.geteuid() == 0:
            check(uid_of(npid) != st["helper-uid"], f"the new spare's uid is not the lease helper's ({uid_of(npid)})")
    release(env, path, fd)
    check(alive(npid), "the spare stays when the lease ends")


def case_killed_spare(env):
    sid, spid = one_spare(env, "a spare runs")
    if not spid:
        return
    os.kill(spid, signal.SIGKILL)
    nid, npid = one_spare(env, "a killed spare is replaced", not_pids=[spid])
    check(nid is not None and nid != sid, "by another one")
    check(not os.path.exists(os.path.join(env.runtime_dir, "spares", sid)), "the killed spare's directory is removed")
    # "exited" if it was ready, "did not start" if it was still starting when it was killed.
    check(f"Spare helper pid {spid} " in env.log_text(), "vdiskd logs the spare's death")
    # An export after that is served by the replacement.
    path, fd = open_export(env)
    check_eq(lease_state(env, path)["helper-pid"], npid, "the replacement serves the next export")
    release(env, path, fd)


def case_restart_sigkill(env):
    sid, spid = one_spare(env, "a spare runs before vdiskd is killed")
    if not spid:
        return
    env.daemon.send_signal(signal.SIGKILL)
    env.daemon.wait()
    time.sleep(0.3)
    check(alive(spid), "the spare outlives a vdiskd killed with SIGKILL (like any helper)")
    env.start()
    wait_for("the restarted vdiskd stops the spare its previous instance left", lambda: not alive(spid))
    nid, npid = one_spare(env, "the restarted vdiskd starts a spare of its own", not_pids=[spid])
    check(nid != sid and sid not in spare_dirs(env), "the old spare's directory is gone")
    check("left by a previous vdiskd" in env.log_text(), "vdiskd logs the old spare's stop")


def case_sigterm(env):
    sid, spid = one_spare(env, "a spare runs before vdiskd stops")
    env.stop()
    check(spid is not None and not alive(spid), "vdiskd stops its spare when it exits")
    check_eq(spare_dirs(env), [], "and removes its directory")


def case_uid_range(vdiskd):
    first = HELPER_UIDS[0] + 100
    env = Env(vdiskd, f"[Exports]\nHelperUids={first}-{first + 1}\nSpareHelpers=1\n")
    try:
        env.start()
        setup_disks(env, 3)
        sid, spid = one_spare(env, "a spare runs")
        a_uid = uid_of(spid)
        path1, fd1 = open_export(env, "d")
        check_eq(lease_state(env, path1)["helper-pid"], spid, "the first export takes the spare")
        sid2, spid2 = one_spare(env, "a second spare starts with the range's other uid", not_pids=[spid])
        if spid2:
            check_eq({a_uid, uid_of(spid2)}, {first, first + 1}, "two live helpers, two uids of the range")
        path2, fd2 = open_export(env, "d1")
        check_eq(lease_state(env, path2)["helper-pid"], spid2, "the second export takes the second spare")
        time.sleep(1)
        check_eq(spares(env), {}, "no uid left: no spare")
        err, msg = env.error("OpenDisk", "vm", "d2", opts(export="nbd"))
        check_eq(err, "org.vdisk1.Error.LimitExceeded", f"a third export: LimitExceeded ({msg})")
        release(env, path1, fd1)
        sid3, spid3 = one_spare(env, "a lease's end frees a uid for a spare again")
        if spid3:
            check_eq(uid_of(spid3), a_uid, "the freed uid")
        release(env, path2, fd2)
        env.stop()
    finally:
        env.close()


def case_replaced_before_handover(vdiskd):
    """The spare OpenDisk takes is replaced before OpenDisk hands it the chain (so that the next OpenDisk
    of a series finds a spare started one call earlier): vdiskd killed right after the hand-over
    (VDISKD_CRASH_AT, a -Dtest_hooks=true build) has already started the replacement."""
    if not require_hooks(vdiskd):
        return
    env = Env(vdiskd, "[Exports]\nSpareHelpers=1\n")
    try:
        env.start()
        setup_disks(env)
        env.stop()
        env.start({"VDISKD_CRASH_AT": "export:after-handover"})
        sid, spid = one_spare(env, "a spare runs")
        if not spid:
            return
        err, res = env.error("OpenDisk", "vm", "d", opts(export="nbd"))
        check_eq(err, "org.freedesktop.DBus.Error.NoReply", f"vdiskd dies in OpenDisk, after the hand-over ({res})")
        env.daemon.wait(timeout=20)
        exports = os.listdir(os.path.join(env.runtime_dir, "exports"))
        check_eq(exports, [sid], "the spare taken is the export's helper")
        left = spares(env)
        check_eq(len(left), 1, f"a replacement spare was started before the hand-over ({spare_dirs(env)})")
        check(spid not in left.values() and sid not in left, "another helper than the one taken")
        if left and os.geteuid() == 0:
            check(uid_of(next(iter(left.values()))) != uid_of(spid), "with another uid than the one taken")
        env.start()
        wait_for("the next start stops the interrupted export's helper", lambda: not alive(spid))
        for pid in left.values():
            wait_for("and the spare the previous vdiskd left", lambda: not alive(pid))
        env.stop()
    finally:
        env.close()


def require_hooks(vdiskd):
    """Whether vdiskd was built with -Dtest_hooks=true (it names VDISKD_CRASH_AT in its binary)."""
    with open(vdiskd, "rb") as f:
        if b"VDISKD_CRASH_AT" in f.read():
            return True
    print("# SKIP case_replaced_before_handover: vdiskd built without -Dtest_hooks=true")
    return False


def case_config(vdiskd):
    env = Env(vdiskd, "[Exports]\nSpareHelpers=0\n")
    try:
        env.start()
        setup_disks(env)
        time.sleep(2.5)  # the first spare would start 1 s after vdiskd
        check_eq(spare_dirs(env), [], "SpareHelpers=0: no spare")
        path, fd = open_export(env)
        check(alive(lease_state(env, path)["helper-pid"]), "SpareHelpers=0: an export starts its own helper")
        release(env, path, fd)
        time.sleep(0.5)
        check_eq(spare_dirs(env), [], "SpareHelpers=0: no spare after an export either")
        env.stop()
    finally:
        env.close()

    env = Env(vdiskd, spares=True)  # the default: two
    try:
        env.start()
        got = wait_for("by default two spares", lambda: len(spares(env)) == 2 and spares(env))
        if got and os.geteuid() == 0:
            pids = list(got.values())
            check(uid_of(pids[0]) != uid_of(pids[1]), "each spare has its own uid")
        env.stop()
        check(got is not None and not any(alive(p) for p in got.values()), "both end with vdiskd")
    finally:
        env.close()

    env = Env(vdiskd, "[Exports]\nEnabled=no\n", spares=True)  # would start the default two if enabled
    try:
        env.start()
        time.sleep(2.5)
        check_eq(spare_dirs(env), [], "Enabled=no: no spare")
        env.stop()
    finally:
        env.close()

    for bad in ("17", "-1", "one"):
        env = Env(vdiskd, f"[Exports]\nSpareHelpers={bad}\n")
        try:
            p = env.start(expect_ready=False)
            p.wait(timeout=20)
            check(p.returncode != 0, f"SpareHelpers={bad}: vdiskd refuses to start")
            check("SpareHelpers" in env.log_text(), f"SpareHelpers={bad}: the message names the key")
            check_eq(spare_dirs(env), [], f"SpareHelpers={bad}: no spare")
        finally:
            env.close()


def main():
    vdiskd = sys.argv[1]
    env = Env(vdiskd, "[Exports]\nSpareHelpers=1\n")
    try:
        env.start()
        setup_disks(env)
        case_spare_taken_and_replaced(env)
        case_killed_spare(env)
        case_restart_sigkill(env)
        case_sigterm(env)
    finally:
        env.close()
    case_uid_range(vdiskd)
    case_replaced_before_handover(vdiskd)
    case_config(vdiskd)
    finish()


if __name__ == "__main__":
    main()
