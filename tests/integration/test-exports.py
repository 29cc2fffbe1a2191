# SPDX-License-Identifier: LGPL-2.1-or-later
"""OpenDisk exports (option "export"): one connected socket instead of the chain's fds, served by a
storage helper that vdiskd starts per lease. Checks the attach description, the helper's sandbox (its
uid, no capabilities, no_new_privs, seccomp, and that its uid cannot open a store file), data through a
real NBD client (qemu-io on the handed-out fd: base data read, writes landing in the top layer only),
the one-connection socket, the lease's end by Release, by the holder leaving the bus and by the helper
dying, InUse while exported, the errors, and vdiskd restarting (SIGKILL) while an export serves: the
lease is found again with the same helper, or ended if its holder or helper went away meanwhile."""

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, Env, alive, check, check_eq, finish, opts, proc_status, qemu_img, require

HELPER_UIDS = (2113929216, 2113994751)  # [Exports] HelperUids= default
LEASE = "org.vdisk1.Lease"


def lease_obj(env, path, bus=None):
    return dbus.Interface((bus or env.bus).get_object(BUS_NAME, path, introspect=False), LEASE)


def lease_props(env, path):
    return dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.freedesktop.DBus.Properties")


def manager(bus):
    return dbus.Interface(bus.get_object(BUS_NAME, "/org/vdisk1", introspect=False), "org.vdisk1.Manager")


def export_dirs(env):
    d = os.path.join(env.runtime_dir, "exports")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def state_of(env, lease_path):
    with open(os.path.join(env.runtime_dir, "exports", lease_path.rsplit("/", 1)[1], "state.json")) as f:
        return json.load(f)


def wait_for(what, cond, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.05)
    check(False, f"{what} (waited {timeout} s)")
    return False


def qemu_io(fd, *cmds, read_only=False):
    args = ["qemu-io"] + (["-r"] if read_only else []) + [
        "--image-opts", f"driver=nbd,server.type=fd,server.str={fd},export=d"]
    for c in cmds:
        args += ["-c", c]
    p = subprocess.run(args, pass_fds=[fd], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def open_export(env, kind, bus=None, **kw):
    path, attach, fds = manager(bus or env.bus).OpenDisk("vm", "d", opts(export=kind, **kw))
    check_eq(len(fds), 1, f"{kind}: OpenDisk returns exactly one fd")
    return str(path), json.loads(str(attach)), fds[0].take()


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def case_attach_and_sandbox(env, base_file):
    path, attach, fd = open_export(env, "vhost-user-blk")
    check_eq(attach, {"type": "vhost-user-blk", "socket": 0, "read-only": False, "size": 64 << 20,
                      "chardev": {"id": "d", "backend": "socket"},
                      "device": {"driver": "vhost-user-blk-pci", "chardev": "d", "config-wce": False},
                      "shared-memory": True}, "vhost-user-blk: the attach description")
    st = os.fstat(fd)
    check(stat.S_ISSOCK(st.st_mode), "the fd is a socket")
    s = socket.socket(fileno=os.dup(fd))
    check_eq((s.family, s.type), (socket.AF_UNIX, socket.SOCK_STREAM), "an AF_UNIX stream socket")
    check(s.getpeername() != "", "connected (it has a peer)")
    s.close()
    props = lease_props(env, path)
    check_eq(int(props.Get(LEASE, "FdCount")), 1, "FdCount is 1")
    try:
        lease_obj(env, path).GetFds(dbus.UInt32(0), dbus.UInt32(1))
        check(False, "GetFds(0) of an export is refused")
    except dbus.exceptions.DBusException as e:
        check_eq(e.get_dbus_name(), "org.freedesktop.DBus.Error.InvalidArgs", "GetFds(0): already handed out")

    state = state_of(env, path)
    pid = state["helper-pid"]
    status = proc_status(pid)
    uids = [int(x) for x in status["Uid"].split()]
    if os.geteuid() == 0:
        check(HELPER_UIDS[0] <= uids[0] <= HELPER_UIDS[1], f"helper runs as a uid of the helper range ({uids[0]})")
        check_eq(len(set(uids)), 1, "real, effective, saved and fs uid are the same")
        gids = [int(x) for x in status["Gid"].split()]
        check_eq(gids, [uids[0]] * 4, "its gids are its uid")
        check_eq(status["Groups"], "", "no supplementary groups")
    else:
        check_eq(uids[0], os.geteuid(), "helper of an unprivileged vdiskd runs as vdiskd's uid")
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        check_eq(int(status[cap], 16), 0, f"helper {cap} is empty")
    check_eq(status["NoNewPrivs"], "1", "helper has no_new_privs")
    check_eq(status["Seccomp"], "2", "helper runs under a seccomp filter")
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    check(b"-sandbox" in argv and b"on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny" in argv,
          "helper started with QEMU's sandbox")
    check(b"-machine" in argv and b"none" in argv, "helper has no machine")
    # The helper's uid cannot open a store file by path.
    if os.geteuid() == 0 and subprocess.run(["which", "setpriv"], capture_output=True).returncode == 0:
        p = subprocess.run(["setpriv", f"--reuid={uids[0]}", f"--regid={uids[0]}", "--clear-groups", "--",
                            "head", "-c", "1", base_file], capture_output=True, text=True)
        check(p.returncode != 0 and "Permission denied" in p.stderr,
              f"the helper's uid cannot open a store file ({p.stderr.strip()})")
    # Our own process holds no image fd; the helper holds the chain.
    mine = [os.readlink(f"/proc/self/fd/{n}") for n in os.listdir("/proc/self/fd") if n.isdigit()
            if os.path.exists(f"/proc/self/fd/{n}")]
    check(not any(env.store in m for m in mine), "the caller holds no store file")
    with open(f"/proc/{pid}/environ", "rb") as f:
        environ = f.read().split(b"\0")[:-1]
    # glibc rewrites GLIBC_TUNABLES in place while it parses it (its ':' become NULs), so /proc shows the
    # list cut into pieces.
    tunables = [b"GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304", b"glibc.malloc.trim_threshold=8388608"]
    check(environ in ([b"LC_ALL=C", b":".join(tunables)], [b"LC_ALL=C"] + tunables),
          f"the helper inherits nothing of vdiskd's environment, only the C locale and malloc's thresholds ({environ})")
    helper_files = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
    check(any(os.path.join(env.store, "images") in h for h in helper_files), "the helper holds the chain's files")
    # vdiskd speaks to the helper on a connection made before QEMU started (fd 4, one end of a socket
    # pair), not through the listening monitor (fd 3), which QEMU 7.2 may accept while its monitor moves
    # to its I/O thread (greeting twice, two readers). So the listener is free: a client connecting to it
    # is greeted and answered at once (QEMU serves one client per listening monitor).
    check(stat.S_ISSOCK(os.stat(f"/proc/{pid}/fd/4").st_mode), "the helper's fd 4 is a socket")
    qmp_path = os.path.join(env.runtime_dir, "exports", path.rsplit("/", 1)[1], "qmp.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mon:
        mon.settimeout(10)
        mon.connect(qmp_path)
        f = mon.makefile("rwb")
        try:
            greeting = json.loads(f.readline())
        except (socket.timeout, ValueError) as e:
            greeting = {"error": repr(e)}
        check("QMP" in greeting, f"the listening monitor is free: a new client is greeted ({greeting})")
        for cmd in ({"execute": "qmp_capabilities"}, {"execute": "query-name"}):
            f.write(json.dumps(cmd).encode() + b"\n")
            f.flush()
            reply = json.loads(f.readline())
        check_eq(reply.get("return", {}).get("name"), argv[argv.index(b"-name") + 1].decode(),
                 "the listening monitor answers with the helper's name")
    # Nobody else can connect: the socket's name is gone.
    check(not os.path.exists(os.path.join(env.runtime_dir, "exports", path.rsplit("/", 1)[1], "export.sock")),
          "the export socket has no name any more")

    err, msg = env.error("OpenDisk", "vm", "d", opts(export="nbd"))
    check_eq(err, "org.vdisk1.Error.InUse", "a second read-write export is InUse")
    err, msg = env.error("OpenDisk", "vm", "d", opts())
    check_eq(err, "org.vdisk1.Error.InUse", "chain fds while exported: InUse")
    err, msg = env.error("DeleteDisk", "vm", "d")
    check_eq(err, "org.vdisk1.Error.InUse", "DeleteDisk while exported: InUse")

    lease_obj(env, path).Release()
    wait_for("Release stops the helper", lambda: not alive(pid))
    wait_for("Release removes the export's directory", lambda: export_dirs(env) == [])
    os.close(fd)


def case_nbd_data(env, base_file):
    before = env.snapshot_store()
    path, attach, fd = open_export(env, "nbd")
    check_eq(attach, {"type": "nbd", "socket": 0, "read-only": False, "size": 64 << 20,
                      "blockdev": {"driver": "nbd", "node-name": "d", "export": "d",
                                   "server": {"type": "fd", "str": ""}, "read-only": False}},
             "nbd: the attach description")
    rc, out = qemu_io(fd, "read -P 0x5a 0 1M", "write -P 0x77 2M 64k", "read -P 0x77 2M 64k")
    check_eq(rc, 0, f"NBD: base data read and a write through the export ({out.strip()[-200:]})")
    rc, out = qemu_io(fd, "read 0 512")
    check(rc != 0, "the socket serves one connection only: a second client on it gets nothing")
    pid = state_of(env, path)["helper-pid"]
    lease_obj(env, path).Release()
    wait_for("helper gone", lambda: not alive(pid))
    os.close(fd)
    after = env.snapshot_store()
    changed = sorted(k for k in after if before.get(k) != after[k])
    top = str(env.call("GetChain", "vm", "d")[0][1])
    check_eq(changed, [top], "only the top layer's file changed")
    check_eq(sha(base_file), before[os.path.relpath(base_file, env.store)], "the base is unchanged")

    # Read-only export: the data is there, and writes are refused.
    path, attach, fd = open_export(env, "nbd", read_only=True)
    check_eq(attach["read-only"], True, "read-only export says so")
    rc, out = qemu_io(fd, "read -P 0x77 2M 64k", "read -P 0x5a 0 1M", read_only=True)
    check_eq(rc, 0, f"read-only export: the earlier write and the base data ({out.strip()[-200:]})")
    path2, _, fd2 = open_export(env, "nbd", read_only=True)
    check(path2 != path, "read-only exports coexist")
    check(state_of(env, path)["helper-uid"] != state_of(env, path2)["helper-uid"] or os.geteuid() != 0,
          "each helper has its own uid")
    rc, out = qemu_io(fd2, "write -P 0x11 0 4k")
    check(rc != 0 or "failed" in out, f"a read-only export refuses writes ({out.strip()[-200:]})")
    for p, f in ((path, fd), (path2, fd2)):
        lease_obj(env, p).Release()
        os.close(f)
    wait_for("both helpers gone", lambda: export_dirs(env) == [])


def case_holder_leaves(env):
    bus2 = dbus.bus.BusConnection(env.address)
    path, _, fd = open_export(env, "vhost-user-blk", bus=bus2)
    pid = state_of(env, path)["helper-pid"]
    bus2.close()
    wait_for("the holder leaving the bus ends the export", lambda: not alive(pid))
    wait_for("its directory goes", lambda: export_dirs(env) == [])
    os.close(fd)


def case_helper_dies(env):
    path, _, fd = open_export(env, "nbd")
    pid = state_of(env, path)["helper-pid"]
    # What the helper wrote last (QEMU's own message, e.g. an assertion) reaches vdiskd's log, escaped.
    with open(os.path.join(env.runtime_dir, "exports", path.rsplit("/", 1)[1], "helper.log"), "a") as f:
        f.write("qemu: assertion failed \x1b[31m\n")
    os.kill(pid, signal.SIGKILL)
    wait_for("a helper that dies ends its lease",
             lambda: "ended (its storage helper was killed by signal SIGKILL)" in env.log_text())
    check(f"Helper of lease {path.rsplit('/', 1)[1]} (pid {pid}): was killed by signal SIGKILL (its monitor: Connection reset by peer)"
          in env.log_text(), "vdiskd logs how the helper ended and how its monitor ended")
    check(f"Helper pid {pid} wrote: qemu: assertion failed \\x1b[31m" in env.log_text(),
          "and the last lines of the helper's log, escaped")
    wait_for("the lease object goes", lambda: export_dirs(env) == [])
    err, _ = env.error("OpenDisk", "vm", "d", opts())
    check_eq(err, None, "the disk can be opened again")
    os.close(fd)


def case_helper_hangs(env):
    """A helper that stops answering its monitor: the call waiting for it fails after the monitor's
    timeout, the lease ends saying so (not that the helper exited), and the helper is stopped."""
    path, _, fd = open_export(env, "nbd")
    pid = state_of(env, path)["helper-pid"]
    chain = env.call("GetChain", "vm", "d")
    os.kill(pid, signal.SIGSTOP)
    try:
        err, msg = env.error("Snapshot", "vm", "d", opts())
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)
    check(err is not None, f"a live snapshot on a helper that does not answer fails ({err}: {msg})")
    wait_for("the lease ends, saying the monitor failed",
             lambda: "ended (the monitor of its storage helper failed: Connection timed out)" in env.log_text(), timeout=20)
    check(f"Helper of lease {path.rsplit('/', 1)[1]} (pid {pid}): still running, its monitor failed (its monitor: Connection timed out)"
          in env.log_text(), "vdiskd logs that the helper still ran")
    wait_for("the helper is stopped with its lease", lambda: not alive(pid))
    wait_for("the lease object goes", lambda: export_dirs(env) == [])
    check_eq(env.call("GetChain", "vm", "d"), chain, "the chain is unchanged")
    check_eq(env.call("Verify", "vm"), dbus.Array([], signature="(sss)"), "Verify is clean")
    os.close(fd)


def case_errors(env):
    before = env.snapshot_store()
    err, msg = env.error("OpenDisk", "vm", "d", opts(export="iscsi"))
    check_eq((err, msg), ("org.freedesktop.DBus.Error.InvalidArgs",
                          "Unknown export type: the option 'export' is vhost-user-blk or nbd"), "unknown export type")
    err, msg = env.error("OpenDisk", "vm", "d", dbus.Dictionary({"export": dbus.UInt32(1)}, signature="sv"))
    check_eq(err, "org.freedesktop.DBus.Error.InvalidArgs", "export of the wrong type")
    check_eq(env.snapshot_store(), before, "refusals change nothing")
    check_eq(export_dirs(env), [], "refusals start no helper")


def case_config(env_factory):
    env = env_factory("[Exports]\nEnabled=no\n")
    try:
        env.start()
        setup(env)
        err, msg = env.error("OpenDisk", "vm", "d", opts(export="nbd"))
        check_eq((err, msg), ("org.vdisk1.Error.NotSupported", "Exports are disabled ([Exports] Enabled=no)"),
                 "exports disabled")
        check_eq(export_dirs(env), [], "nothing started")
    finally:
        env.close()
    env = env_factory("[Exports]\nHelper=/nonexistent/qemu\n")
    try:
        env.start()
        setup(env)
        err, msg = env.error("OpenDisk", "vm", "d", opts(export="nbd"))
        check_eq((err, msg), ("org.freedesktop.DBus.Error.Failed",
                              "Cannot start the storage helper /nonexistent/qemu: No such file or directory"),
                 "a missing helper binary")
        check_eq(export_dirs(env), [], "its directory is removed again")
        err, _ = env.error("OpenDisk", "vm", "d", opts())
        check_eq(err, None, "no lease was left behind")
    finally:
        env.close()


def case_restart(env):
    # 1. The holder stays: the lease is found again, same helper, the data path keeps working.
    bus2 = dbus.bus.BusConnection(env.address)
    path, _, fd = open_export(env, "nbd", bus=bus2)
    pid = state_of(env, path)["helper-pid"]
    env.daemon.kill()
    env.daemon.wait()
    check(alive(pid), "the helper outlives vdiskd")
    env.start()
    check_eq(str(lease_props(env, path).Get(LEASE, "Disk")), "d", "the lease is there again after the restart")
    check_eq(state_of(env, path)["helper-pid"], pid, "with the same helper")
    err, _ = env.error("OpenDisk", "vm", "d", opts(export="nbd"))
    check_eq(err, "org.vdisk1.Error.InUse", "and it still excludes a second writer")
    rc, out = qemu_io(fd, "read -P 0x5a 512k 512k", "write -P 0x33 4M 4k", "read -P 0x33 4M 4k")
    check_eq(rc, 0, f"the export serves across the restart ({out.strip()[-200:]})")
    lease_obj(env, path, bus2).Release()
    wait_for("Release after the restart stops the helper", lambda: not alive(pid))
    os.close(fd)

    # 2. The holder leaves while vdiskd is down: the lease ends at the start.
    path, _, fd = open_export(env, "vhost-user-blk", bus=bus2)
    pid = state_of(env, path)["helper-pid"]
    env.daemon.kill()
    env.daemon.wait()
    bus2.close()
    env.start()
    wait_for("a lease whose holder left meanwhile ends at the start", lambda: not alive(pid))
    check_eq(export_dirs(env), [], "and its directory goes")
    check("holder left the bus while vdiskd was not running" in env.log_text(), "the log says why")
    os.close(fd)

    # 3. The helper dies while vdiskd is down.
    path, _, fd = open_export(env, "nbd")
    pid = state_of(env, path)["helper-pid"]
    env.daemon.kill()
    env.daemon.wait()
    os.kill(pid, signal.SIGKILL)
    env.start()
    check_eq(export_dirs(env), [], "an export whose helper died meanwhile is ended at the start")
    check("its storage helper exited while vdiskd was not running" in env.log_text(), "the log says why")
    err, res = env.error("OpenDisk", "vm", "d", opts(export="nbd"))
    check_eq(err, None, f"the disk can be exported again ({res if err else ''})")
    os.close(fd)


class QemuIo:
    """A long-lived NBD client on an export's fd: qemu-io reading commands from a pipe, one at a time
    (it reads its input in chunks, so a command is sent only once the previous one's prompt came)."""

    PROMPT = "qemu-io> "

    def __init__(self, fd):
        # stdbuf: unbuffered, so that each prompt arrives as soon as qemu-io prints it.
        self.p = subprocess.Popen(["stdbuf", "-o0", "qemu-io", "--image-opts",
                                   f"driver=nbd,server.type=fd,server.str={fd},export=d"],
                                  pass_fds=[fd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        self.read_prompt()

    def read_prompt(self, timeout=60):
        out = b""
        end = time.time() + timeout
        while not out.endswith(self.PROMPT.encode()) and time.time() < end:
            chunk = os.read(self.p.stdout.fileno(), 4096)
            if not chunk:
                break
            out += chunk
        return out.decode(errors="replace")

    def do(self, cmd):
        self.p.stdin.write((cmd + "\n").encode())
        self.p.stdin.flush()
        return self.read_prompt()

    def close(self):
        self.p.stdin.write(b"quit\n")
        self.p.stdin.close()
        self.p.wait(timeout=30)


def layer_file(env, layer_id):
    for row in env.call("GetChain", "vm", "d"):
        if str(row[0]) == layer_id:
            return os.path.join(env.store, str(row[1]))
    return None


def case_live_snapshot(env):
    chain0 = [str(r[0]) for r in env.call("GetChain", "vm", "d")]
    path, _, fd = open_export(env, "nbd")
    io = QemuIo(fd)
    out = io.do("write -P 0x61 0 64k")
    check("wrote 65536/65536" in out, f"write before the snapshot ({out.strip()})")
    layer = str(env.call("Snapshot", "vm", "d", opts()))
    chain1 = [str(r[0]) for r in env.call("GetChain", "vm", "d")]
    check_eq(chain1, [layer] + chain0, "a live snapshot adds the new layer on top")
    state = state_of(env, path)
    check_eq(state["nodes"][0], "L" + layer[:30], "the helper serves the new layer (state.json)")
    out = io.do("write -P 0x62 64k 64k")
    check("wrote 65536/65536" in out, f"write after the snapshot ({out.strip()})")
    out = io.do("read -P 0x61 0 64k")
    check("read 65536/65536" in out and "Pattern verification failed" not in out,
          f"the write before the snapshot reads back through the new top ({out.strip()})")
    layer2 = str(env.call("Snapshot", "vm", "d", opts()))
    out = io.do("write -P 0x63 128k 64k")
    check("wrote 65536/65536" in out, "write after a second snapshot")
    io.close()
    pid = state_of(env, path)["helper-pid"]
    lease_obj(env, path).Release()
    wait_for("helper gone", lambda: not alive(pid))
    os.close(fd)
    check_eq(env.call("Verify", "vm"), dbus.Array([], signature="(sss)"), "Verify: records and headers agree")
    # Each write is in the layer that was on top when it happened.
    def holds(layer_id, off, pattern):
        p = subprocess.run(["qemu-io", "-r", "-f", "qcow2", "-U", "-c", f"read -P {pattern} {off} 64k",
                            "-c", f"map", layer_file(env, layer_id)], capture_output=True, text=True)
        return p.returncode == 0 and "Pattern verification failed" not in p.stdout, p.stdout
    # (qemu-io on a layer alone opens its backing file by name: read each layer's own clusters with map)
    def allocated(layer_id):
        p = subprocess.run(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", layer_file(env, layer_id)],
                           capture_output=True, text=True, cwd=os.path.join(env.store, "images"))
        return [(e["start"], e["length"]) for e in json.loads(p.stdout) if e.get("data") and e.get("depth") == 0]
    check_eq(allocated(chain0[0]), [(0, 65536), (2 << 20, 65536)], "the first write is in the old top (with case_nbd_data's)")
    check_eq(allocated(layer), [(65536, 65536)], "the second in the first live snapshot")
    check_eq(allocated(layer2), [(131072, 65536)], "the third in the second")
    path, _, fd = open_export(env, "nbd", read_only=True)
    rc, out = qemu_io(fd, "read -P 0x61 0 64k", "read -P 0x62 64k 64k", "read -P 0x63 128k 64k", read_only=True)
    check_eq(rc, 0, f"all three writes read back through the chain ({out.strip()[-300:]})")
    lease_obj(env, path).Release()
    os.close(fd)


# ---- live Commit and Rebase (a -Dtest_hooks=true build: VDISKD_TEST_STEP_BYTES is QEMU's job speed) ----

LIVE_SPEED = {"VDISKD_TEST_STEP_BYTES": str(256 << 10)}  # a 256 KiB job runs about a second


def chain_ids(env):
    return [str(r[0]) for r in env.call("GetChain", "vm", "d")]


def own_extents(env, path):
    """The clusters a layer's file holds itself (qemu-img map depth 0)."""
    p = subprocess.run(["qemu-img", "map", "--output=json", "-U", "-f", "qcow2", path],
                       capture_output=True, text=True, cwd=os.path.join(env.store, "images"))
    return [(e["start"], e["length"]) for e in json.loads(p.stdout) if e.get("data") and e.get("depth") == 0]


def spread_write(io, pattern, off):
    """64k at `off` in each of four MiB: separate extents, so that a rate-limited job takes a while."""
    for k in range(4):
        out = io.do(f"write -P {pattern} {(k << 20) + off} 64k")
        check("wrote 65536/65536" in out, f"write {pattern} at {(k << 20) + off} ({out.strip()[-200:]})")


def spread_ranges(off):
    return [((k << 20) + off, 65536) for k in range(4)]


def blocks(ranges):
    """The 64 KiB blocks that ranges cover."""
    return sorted({b for a, n in ranges for b in range(a >> 16, (a + n + 65535) >> 16)})


def job_state(env, path):
    props = dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.freedesktop.DBus.Properties")
    return str(props.Get("org.vdisk1.Job", "State"))


def run_live(env, io, method, layer, pattern, off):
    """Starts a live job, writes while it runs, waits for it; the writes' ranges."""
    err, job = env.error(method, "vm", "d", layer, opts())
    check_eq(err, None, f"live {method} starts ({job if err else ''})")
    if err:
        return []
    check_eq(job_state(env, job), "running", f"live {method} runs while the guest writes")
    spread_write(io, pattern, off)
    state, ename, emsg = env.wait_job(job)
    check_eq((state, ename, emsg), ("done", "", ""), f"live {method} completes")
    props = dbus.Interface(env.bus.get_object(BUS_NAME, job, introspect=False), "org.freedesktop.DBus.Properties")
    total = int(props.Get("org.vdisk1.Job", "BytesTotal"))
    check(total > 0 and int(props.Get("org.vdisk1.Job", "BytesDone")) == total and props.Get("org.vdisk1.Job", "Progress") == 1.0,
          f"its progress is the helper's job's, complete ({total} bytes)")
    return spread_ranges(off)


def end_export(env, path, fd, io, bus=None):
    io.close()
    pid = state_of(env, path)["helper-pid"]
    lease_obj(env, path, bus).Release()
    wait_for("helper gone", lambda: not alive(pid))
    os.close(fd)
    check_eq(env.call("Verify", "vm"), dbus.Array([], signature="(sss)"), "Verify: the headers QEMU wrote match the records")


def read_back(env, patterns):
    path, _, fd = open_export(env, "nbd", read_only=True)
    cmds = [f"read -P {p} {a} {n}" for p, ranges in patterns for a, n in ranges]
    rc, out = qemu_io(fd, *cmds, read_only=True)
    check(rc == 0 and "Pattern verification failed" not in out, f"every write reads back through the chain ({out.strip()[-300:]})")
    lease_obj(env, path).Release()
    os.close(fd)


def live_chain(env):
    """An export over [S2, S1, P0, base]: S1 and S2 live snapshots, each holding its own writes."""
    path, _, fd = open_export(env, "nbd")
    io = QemuIo(fd)
    spread_write(io, "0x71", 0)
    s1 = str(env.call("Snapshot", "vm", "d", opts()))
    spread_write(io, "0x72", 64 << 10)
    s2 = str(env.call("Snapshot", "vm", "d", opts()))
    spread_write(io, "0x73", 128 << 10)
    return path, fd, io, s1, s2


def case_live_commit(env):
    path, fd, io, s1, s2 = live_chain(env)
    chain = chain_ids(env)  # [S2, S1, P0, C1 (CreateDisk's private layer), base]
    p0, c1 = chain[2], chain[3]
    files = {x: layer_file(env, x) for x in (s1, s2, p0)}
    w0 = run_live(env, io, "Commit", p0, "0x77", 384 << 10)
    check_eq(chain_ids(env), [s2, s1, c1] + chain[4:], "deep intermediate commit (the layer above is not the top): P0 left")
    check(not os.path.exists(files[p0]), "its file is gone")
    w = run_live(env, io, "Commit", s1, "0x74", 192 << 10)
    check_eq(chain_ids(env), [s2, c1] + chain[4:], "intermediate commit: S1 left the chain")
    check(not os.path.exists(files[s1]), "its file is gone")
    check_eq(state_of(env, path)["nodes"][:2], ["L" + s2[:30], "L" + c1[:30]], "the export's nodes follow")
    check("job" not in state_of(env, path), "no job is pending in the export's state")
    w2 = run_live(env, io, "Commit", s2, "0x75", 256 << 10)
    check_eq(chain_ids(env), [c1] + chain[4:], "active commit: C1 is the top")
    check(not os.path.exists(files[s2]), "S2's file is gone")
    spread_write(io, "0x76", 320 << 10)
    end_export(env, path, fd, io)
    check_eq(blocks(own_extents(env, layer_file(env, c1))),
             blocks(sum([spread_ranges(o << 10) for o in (0, 64, 128, 320)], []) + w0 + w + w2),
             "C1 holds every write, and nothing else")
    read_back(env, [("0x71", spread_ranges(0)), ("0x72", spread_ranges(64 << 10)), ("0x73", spread_ranges(128 << 10)),
                    ("0x77", w0), ("0x74", w), ("0x75", w2), ("0x76", spread_ranges(320 << 10))])


def case_live_rebase(env):
    p0 = chain_ids(env)[0]
    path, fd, io, s1, s2 = live_chain(env)
    chain = chain_ids(env)
    s1_file, p0_file = layer_file(env, s1), layer_file(env, p0)
    w = run_live(env, io, "Rebase", p0, "0x74", 192 << 10)
    check_eq(chain_ids(env), [s2] + chain[2:], "stream: S1 left the chain")
    for a, n in spread_ranges(64 << 10):
        out = io.do(f"read -P 0x72 {a} {n}")
        check("read 65536/65536" in out and "Pattern verification failed" not in out, f"S1's data at {a} reads through S2")
    check(not os.path.exists(s1_file), "its file is gone")
    w2 = run_live(env, io, "Rebase", "", "0x75", 256 << 10)
    check_eq(chain_ids(env), [s2], "flatten: S2 alone")
    check(not os.path.exists(p0_file), "P0's file is gone")
    end_export(env, path, fd, io)
    ranges = own_extents(env, layer_file(env, s2))
    want = blocks([(0, 1 << 20)] + w + w2 + sum([spread_ranges(o << 10) for o in (0, 64, 128)], []))
    check_eq([b for b in want if b not in blocks(ranges)], [], "S2 holds the base's data and every write itself")
    read_back(env, [("0x71", spread_ranges(0)), ("0x72", spread_ranges(64 << 10)), ("0x73", spread_ranges(128 << 10)),
                    ("0x74", w), ("0x75", w2), ("0x5a", [(320 << 10, (1 << 20) - (320 << 10))])])


def case_live_cancel_and_refusals(env):
    p0 = chain_ids(env)[0]
    base = chain_ids(env)[-1]
    path, fd, io, s1, s2 = live_chain(env)
    chain = chain_ids(env)
    if env.hooks:  # without the test speed the helper's job may complete before Cancel arrives
        err, job = env.error("Commit", "vm", "d", s1, opts())
        check_eq(err, None, "live commit starts")
        dbus.Interface(env.bus.get_object(BUS_NAME, job, introspect=False), "org.vdisk1.Job").Cancel()
        check_eq(env.wait_job(job)[0], "cancelled", "Cancel ends the live job cancelled")
        check_eq(chain_ids(env), chain, "the chain is unchanged")
        check(os.path.exists(layer_file(env, s1)), "S1's file is still there")
        check("job" not in state_of(env, path), "no job is pending in the export's state")
    out = io.do("read -P 0x72 64k 64k")
    check("read 65536/65536" in out and "Pattern verification failed" not in out, "the guest reads S1's data")
    check_eq(env.error("Rebase", "vm", "d", env.other, opts())[0], "org.vdisk1.Error.NotSupported",
             "a live rebase onto a catalog image outside the chain")
    check("a live rebase can only drop layers of the chain" in env.error("Rebase", "vm", "d", env.other, opts())[1],
          "says why")
    check_eq(env.error("Rebase", "vm", "d", p0, opts(unsafe=True))[0],  # unsafe: uid 0 only, refused first otherwise
             "org.vdisk1.Error.NotSupported" if os.geteuid() == 0 else "org.freedesktop.DBus.Error.AccessDenied",
             "an unsafe live rebase")
    check_eq(env.error("Commit", "vm", "d", base, opts())[0], "org.vdisk1.Error.NotSupported", "commit of the catalog image")
    check_eq(env.error("Rebase", "vm", "d", s2, opts())[0], "org.freedesktop.DBus.Error.InvalidArgs", "rebase onto the top itself")
    check_eq(chain_ids(env), chain, "nothing changed")
    if env.hooks:
        err, job = env.error("Commit", "vm", "d", s1, opts())
        check_eq(err, None, "a live commit starts again")
    end_export(env, path, fd, io)  # the lease ends while the helper's job runs
    if env.hooks:
        state, name, message = env.wait_job(job)
        check_eq(state, "failed", "the end of the lease fails the live job")
        check_eq((name, message), ("org.vdisk1.Error.Cancelled",
                                   "The lease of disk 'd' of VM 'vm' ended (released) before the live commit completed"),
                 "the job's error says why its lease ended")
        check_eq(chain_ids(env), chain, "the helper's job was cancelled first: the chain is unchanged (and Verify clean)")
    read_back(env, [("0x71", spread_ranges(0)), ("0x72", spread_ranges(64 << 10)), ("0x73", spread_ranges(128 << 10))])
    # A chain-fd lease: the hypervisor holds the chain, nothing runs live.
    lpath, _, fds = env.manager().OpenDisk("vm", "d", opts())
    for f in fds:
        os.close(f.take())
    check_eq(env.error("Commit", "vm", "d", s1, opts())[0], "org.vdisk1.Error.InUse", "Commit under a chain-fd lease")
    check_eq(env.error("Rebase", "vm", "d", p0, opts())[0], "org.vdisk1.Error.InUse", "Rebase under a chain-fd lease")
    lease_obj(env, str(lpath)).Release()


def live_setup(env):
    raw = os.path.join(env.tmp, "base.raw")  # small: a flatten copies all of it at the job's test speed
    qemu_img("create", "-f", "raw", raw, "4M")
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", raw], check=True, stdout=subprocess.DEVNULL)
    setup(env)
    other = os.path.join(env.tmp, "other.raw")
    qemu_img("create", "-f", "raw", other, "4M")
    check_eq(env.import_file("other", "raw", other), (None, ""), "import another catalog image")
    env.call("CreateDisk", "vm", "e", "other", dbus.UInt64(0), opts())
    env.other = str(env.call("GetChain", "vm", "e")[-1][0])


def setup(env):
    raw = os.path.join(env.tmp, "base.raw")
    if not os.path.exists(raw):
        qemu_img("create", "-f", "raw", raw, "64M")
        subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", raw], check=True, stdout=subprocess.DEVNULL)
    check_eq(env.import_file("base", "raw", raw), (None, ""), "import the base")
    env.call("CreateVM", "vm", dbus.UInt32(0), opts())
    env.call("CreateDisk", "vm", "d", "base", dbus.UInt64(0), opts())
    env.call("Snapshot", "vm", "d", opts())  # two layers: a private one over the catalog image


def main():
    vdiskd = sys.argv[1]
    require("qemu-io", "qemu-system-x86_64")

    def fresh(config=""):
        return Env(vdiskd, config)

    env = fresh()
    try:
        env.start()
        setup(env)
        base = os.path.join(env.store, str(env.call("GetChain", "vm", "d")[-1][1]))
        case_attach_and_sandbox(env, base)
        case_nbd_data(env, base)
        case_holder_leaves(env)
        case_errors(env)
        case_live_snapshot(env)
        case_restart(env)
    finally:
        env.close()
    env = fresh()
    try:
        env.start()
        setup(env)
        case_helper_hangs(env)
        case_helper_dies(env)
    finally:
        env.close()
    case_config(fresh)
    for case, speed in ((case_live_commit, LIVE_SPEED), (case_live_rebase, LIVE_SPEED),
                        (case_live_cancel_and_refusals, {"VDISKD_TEST_STEP_BYTES": str(64 << 10)})):  # some 4 s a job
        env = fresh()
        try:
            env.start(speed)
            with open(vdiskd, "rb") as f:  # a -Dtest_hooks=true build (test-hooks.h: names only there)
                env.hooks = b"VDISKD_TEST_STEP_BYTES" in f.read()
            live_setup(env)
            case(env)
        finally:
            env.close()
    finish()


if __name__ == "__main__":
    main()
