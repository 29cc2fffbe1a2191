# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl open --export=vhost-user-blk|nbd: one socket per disk from vdiskd's storage helper. --print
shows the exact command line (nbd: -blockdev with server.str set to the fd; vhost-user-blk: the user's
-device virtio-blk-pci rewritten, -chardev on the fd, guest RAM shared through a memfd backend sized
from -m); --json --print the same as an array; holding mode prints export, fd and vdiskd's attach
description (one object per disk, an array for several); usage errors come before any lease; a real
QEMU runs on the exports: nbd (-machine none: the node exists, data written through QEMU's qemu-io
reads back through a new export) and vhost-user-blk with two disks (-machine pc: two vhost-user-blk-pci
devices, the shared memory backend) holding only sockets, never a store file.

Usage: test-vdiskctl-export.py VDISKD (VDISKCTL in the environment). Exits 77 while vdiskd does not
know the option export (InvalidArgs "Unknown option 'export'"), when exports are disabled
(NotSupported), or without qemu-system-x86_64 / qemu-io / qemu-img."""

import json
import os
import select
import shlex
import signal
import stat
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, SKIP, Env, check, check_eq, failures, opts, qemu_img, require

INUSE = "org.vdisk1.Error.InUse"
VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
MiB = 1 << 20
DISK_SIZE = 64 * MiB


def vdiskctl_env(**extra):
    e = dict(os.environ)
    e.update({"LC_ALL": "C", "LANGUAGE": "", "NO_COLOR": "1"})
    e.pop("VDISKCTL_LOCALEDIR", None)
    e.update(extra)
    return e


def run(*args, **kw):
    return subprocess.run([VDISKCTL, *args], capture_output=True, text=True, env=vdiskctl_env(), timeout=120, **kw)


def describe(p):
    return f"exit {p.returncode}, stderr {p.stderr.strip()[-600:]!r}"


def read_json(stream, deadline):
    """Reads from a pipe until what arrived is one JSON document (or the deadline passes)."""
    fd, data = stream.fileno(), b""
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
        try:
            return json.loads(data.decode())
        except ValueError:
            continue
    return None


def snapshot_error(env, disk="d"):
    """Whether the disk is leased: a read-write OpenDisk is InUse under any lease (Snapshot runs live
    under an export, so it cannot tell); one that succeeds is released at once."""
    err, res = env.error("OpenDisk", "vm", disk, opts())
    if err is None:
        for f in res[2]:
            os.close(f.take())
        dbus.Interface(env.bus.get_object("org.vdisk1", res[0], introspect=False), "org.vdisk1.Lease").Release()
    return err


def wait_snapshot_works(env, what, disk="d"):
    """A lease that ends with its connection ends asynchronously: vdiskd learns it from the bus."""
    err = None
    for _ in range(400):
        err = snapshot_error(env, disk)
        if err is None:
            break
        time.sleep(0.05)
    check_eq(err, None, what)


def expected_attach(kind, disk, read_only=False):
    """The contract's attach description (docs/dbus-api.md, "Exports")."""
    if kind == "vhost-user-blk":
        return {"type": kind, "socket": 0, "read-only": read_only, "size": DISK_SIZE,
                "chardev": {"id": disk, "backend": "socket"},
                "device": {"driver": "vhost-user-blk-pci", "chardev": disk, "config-wce": False},
                "shared-memory": True}
    return {"type": kind, "socket": 0, "read-only": read_only, "size": DISK_SIZE,
            "blockdev": {"driver": "nbd", "node-name": disk, "export": disk, "server": {"type": "fd", "str": ""},
                         "read-only": read_only}}


def nbd_node(disk, fd, read_only=False):
    return {"driver": "nbd", "node-name": disk, "export": disk, "server": {"type": "fd", "str": str(fd)},
            "read-only": read_only}


def probe(env):
    """Whether this vdiskd serves exports: exits 77 if it does not (yet)."""
    err, res = env.error("OpenDisk", "vm", "d", opts(export="nbd"))
    if err is None:
        path, _, fds = res
        for f in fds:
            os.close(f.take())
        dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.vdisk1.Lease").Release()
        # The end of an export's lease is logged once its helper has quit.
        for _ in range(400):
            if f"Lease {path} of disk 'd' of VM 'vm' ended" in env.log_text():
                break
            time.sleep(0.05)
        return
    if err == "org.freedesktop.DBus.Error.InvalidArgs" and "Unknown option 'export'" in str(res):
        print(f"SKIP: this vdiskd does not know the option export ({res})")
    elif err == "org.vdisk1.Error.NotSupported":
        print(f"SKIP: exports are disabled in this vdiskd ({res})")
    else:
        check(False, f"OpenDisk with export=nbd: {err}: {res}")
        return
    env.close()
    sys.exit(SKIP)


def store_fds(pid, store):
    """The fds of process pid that are files of the store (there must be none), and how many sockets."""
    inodes = set()
    for d, _, names in os.walk(store):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            if stat.S_ISREG(st.st_mode):
                inodes.add((st.st_dev, st.st_ino))
    files, sockets = [], 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if stat.S_ISSOCK(st.st_mode):
            sockets += 1
        elif (st.st_dev, st.st_ino) in inodes:
            files.append(target)
    return files, sockets


def case_print(env):
    head = ["qemu-system-x86_64", "-m", "256", "-device", "virtio-blk-pci,drive=d,id=v0,bootindex=1"]

    p = run("open", "vm", "d", "--export=nbd", "--print", "--", *head)
    if check_eq(p.returncode, 0, f"nbd --print exits 0 ({describe(p)})"):
        args = shlex.split(p.stdout)
        check_eq(args[:len(head)], head, "nbd --print: the command as written (the -device stays)")
        check_eq(len(args), len(head) + 2, f"nbd --print: one -blockdev added ({args})")
        check_eq(args[len(head):len(head) + 1], ["-blockdev"], "nbd --print: -blockdev")
        fd = None
        try:
            node = json.loads(args[len(head) + 1])
            fd = int(node["server"]["str"])
            check_eq(node, nbd_node("d", fd), "nbd --print: vdiskd's node with server.str = the fd")
        except (ValueError, KeyError, IndexError, TypeError) as e:
            check(False, f"nbd --print: the -blockdev is JSON naming an fd ({e})")
        check(fd is not None and fd > 2, f"nbd --print: the fd is above stderr ({fd})")
        check_eq(len(p.stdout.splitlines()), len(args), "nbd --print: one argument per line")
    check_eq(snapshot_error(env), None, "nbd --print: the lease ended before vdiskctl exited")

    p = run("open", "vm", "d", "--export=vhost-user-blk", "--print", "--", *head)
    if check_eq(p.returncode, 0, f"vhost-user-blk --print exits 0 ({describe(p)})"):
        args = shlex.split(p.stdout)
        fd = None
        if len(args) > 6 and args[5] == "-chardev" and args[6].startswith("socket,id=d,fd="):
            fd = int(args[6].rsplit("=", 1)[1])
        check(fd is not None and fd > 2, f"vhost-user-blk --print: -chardev socket,id=d,fd=N with N > 2 ({args})")
        check_eq(args, ["qemu-system-x86_64", "-m", "256",
                        "-device", "vhost-user-blk-pci,chardev=d,config-wce=off,id=v0,bootindex=1",
                        "-chardev", f"socket,id=d,fd={fd}",
                        "-object", f"memory-backend-memfd,id=vdisk-mem,size={256 * MiB},share=on",
                        "-machine", "memory-backend=vdisk-mem"],
                 "vhost-user-blk --print: -device rewritten, -chardev, the shared memory backend of -m's size")
    check_eq(snapshot_error(env), None, "vhost-user-blk --print: the lease ended before vdiskctl exited")

    # --json: the same arguments as a JSON array; several disks, one socket each.
    p = run("--json=short", "open", "vm", "d,e", "--export=vhost-user-blk", "--read-only", "--print", "--",
            "qemu-system-x86_64", "-M", "q35,memory-backend=mine", "-device", "virtio-blk-pci,drive=e",
            "-device", "driver=virtio-blk-pci,drive=d,addr=05.0")
    if check_eq(p.returncode, 0, f"two disks --json --print exits 0 ({describe(p)})"):
        arr = json.loads(p.stdout)
        check_eq(len(p.stdout.strip().splitlines()), 1, "--json=short --print: one line")
        fds = [int(a.rsplit("=", 1)[1]) for a in arr if a.startswith("socket,id=")]
        check_eq(len(set(fds)), 2, f"two disks: two distinct sockets ({arr})")
        if len(fds) == 2:
            check_eq(arr, ["qemu-system-x86_64", "-M", "q35,memory-backend=mine",
                           "-device", "vhost-user-blk-pci,chardev=e,config-wce=off",
                           "-device", "vhost-user-blk-pci,chardev=d,config-wce=off,addr=05.0",
                           "-chardev", f"socket,id=d,fd={fds[0]}", "-chardev", f"socket,id=e,fd={fds[1]}"],
                     "two disks --json: both -device rewritten, a -chardev each in disk order, "
                     "no memory backend added (the command has one)")


def case_usage(env):
    """Refused before any lease: vdiskd never hears of it."""
    log_before = env.log_text().count("/org/vdisk1/lease/")
    check(log_before > 0, "vdiskd logs the end of leases (the probe's), so counting them means something")
    for args, text in ((["--", "qemu-system-x86_64", "-device", "virtio-blk-pci,drive=d,serial=x"],
                        "Property 'serial' of '-device virtio-blk-pci,drive=d,serial=x' does not exist in "
                        "vhost-user-blk-pci"),
                       (["--", "qemu-system-x86_64", "-device", "virtio-blk-pci,drive=d,config-wce=on"],
                        "needs config-wce=off"),
                       (["--", "qemu-system-x86_64", "-device", "ide-hd,drive=d"], "cannot attach it"),
                       (["--", "qemu-system-x86_64", "-m", "much"], "Invalid memory size in '-m much'.")):
        q = run("open", "vm", "d", "--export=vhost-user-blk", *args)
        check_eq(q.returncode, 2, f"{args[2:]}: usage error ({describe(q)})")
        check(text in q.stderr, f"{args[2:]}: says {text!r} ({q.stderr.strip()!r})")
        check_eq(q.stdout, "", f"{args[2:]}: nothing on stdout")
    q = run("open", "vm", "d", "--export=iscsi")
    check_eq(q.returncode, 2, f"--export=iscsi: usage error ({describe(q)})")
    time.sleep(1)  # an export's end is logged once its helper has quit
    check_eq(env.log_text().count("/org/vdisk1/lease/"), log_before, "usage errors: no lease was taken")
    check_eq(snapshot_error(env), None, "usage errors: the disk is not in use")


def case_hold(env, kind):
    label = f"hold {kind}"
    h = subprocess.Popen([VDISKCTL, "--json=short", "open", "vm", "d", f"--export={kind}"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=vdiskctl_env())
    try:
        obj = read_json(h.stdout, time.time() + 60)
        if not check(isinstance(obj, dict), f"{label}: one JSON object ({obj!r:.300})"):
            return
        check_eq(sorted(obj), sorted(["lease", "vm", "disk", "read_only", "pid", "export", "fd", "attach"]),
                 f"{label}: the keys of an export lease")
        check_eq((obj.get("vm"), obj.get("disk"), obj.get("read_only"), obj.get("export"), obj.get("pid")),
                 ("vm", "d", False, kind, h.pid), f"{label}: vm, disk, read_only, export, pid")
        check(str(obj.get("lease", "")).startswith("/org/vdisk1/lease/"), f"{label}: the lease object")
        check_eq(obj.get("attach"), expected_attach(kind, "d"), f"{label}: attach is vdiskd's description")
        fd = obj.get("fd")
        check(isinstance(fd, int) and fd > 2 and stat.S_ISSOCK(os.stat(f"/proc/{h.pid}/fd/{fd}").st_mode),
              f"{label}: fd {fd} is a socket in vdiskctl")
        check_eq(store_fds(h.pid, env.store)[0], [], f"{label}: vdiskctl holds no store file")
        check_eq(snapshot_error(env), INUSE, f"{label}: the disk is in use")
        h.send_signal(signal.SIGINT)
        out, err = h.communicate(timeout=60)
        check_eq(h.returncode, 0, f"{label}: exits 0 on SIGINT ({err.strip()!r})")
        check_eq(snapshot_error(env), None, f"{label}: released before exit")
    finally:
        if h.poll() is None:
            h.kill()
            h.communicate()

    # Two disks, read-only: an array, a socket each.
    h = subprocess.Popen([VDISKCTL, "--json", "open", "vm", "d,e", f"--export={kind}", "--read-only"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=vdiskctl_env())
    try:
        arr = read_json(h.stdout, time.time() + 60)
        if check(isinstance(arr, list) and len(arr) == 2, f"{label}, two disks: an array of two ({arr!r:.300})"):
            check_eq([o.get("disk") for o in arr], ["d", "e"], f"{label}, two disks: in order")
            check_eq([o.get("attach") for o in arr], [expected_attach(kind, "d", True), expected_attach(kind, "e", True)],
                     f"{label}, two disks: read-only descriptions")
            check_eq(len({o.get("fd") for o in arr}), 2, f"{label}, two disks: two sockets")
        h.send_signal(signal.SIGTERM)
        h.communicate(timeout=60)
        check_eq(h.returncode, 0, f"{label}, two disks: exits 0 on SIGTERM")
    finally:
        if h.poll() is None:
            h.kill()
            h.communicate()


def qmp_session(p, commands, timeout=60):
    """Sends QMP commands after the greeting; returns the replies (not the events) in order."""
    try:
        out, err = p.communicate("\n".join(json.dumps(c) for c in commands) + "\n", timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    replies = []
    for line in out.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if "return" in m or "error" in m:
            replies.append(m)
    return replies, err


def case_qemu_nbd(env):
    """QEMU attaches the nbd node on vdiskctl's socket; data written through it is in the disk."""
    p = subprocess.Popen([VDISKCTL, "open", "vm", "d", "--export=nbd", "--", "qemu-system-x86_64", "-machine", "none",
                          "-S", "-nodefaults", "-display", "none", "-qmp", "stdio"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=vdiskctl_env(), cwd=env.tmp)
    greeting = read_json(p.stdout, time.time() + 60)
    if not check(isinstance(greeting, dict) and "QMP" in greeting, "qemu nbd: QMP greeting"):
        p.kill()
        print(p.communicate()[1][-2000:])
        return
    files, sockets = store_fds(p.pid, env.store)
    check_eq(files, [], "qemu nbd: QEMU holds no store file")
    check(sockets >= 2, f"qemu nbd: QEMU holds sockets (the export, the bus: {sockets})")
    check_eq(snapshot_error(env), INUSE, "qemu nbd: the disk is in use while QEMU runs")
    replies, err = qmp_session(p, [
        {"execute": "qmp_capabilities"},
        {"execute": "query-named-block-nodes", "arguments": {"flat": True}},
        {"execute": "human-monitor-command", "arguments": {"command-line": "qemu-io d \"write -P 0x6b 1M 64k\""}},
        {"execute": "human-monitor-command", "arguments": {"command-line": "qemu-io d \"read -P 0x6b 1M 64k\""}},
        {"execute": "quit"}])
    if check_eq(len(replies), 5, f"qemu nbd: five replies ({replies!r:.400}, {err.strip()[-400:]!r})"):
        nodes = {n["node-name"]: n for n in replies[1].get("return", [])}
        check_eq(nodes.get("d", {}).get("drv"), "nbd", "qemu nbd: node d is an nbd node")
        check_eq(nodes.get("d", {}).get("ro"), False, "qemu nbd: node d is writable")
        check("error" not in replies[2] and "error" not in replies[3] and "Pattern verification failed" not in
              replies[3].get("return", ""), f"qemu nbd: write and read back through QEMU ({replies[2:4]!r:.300})")
    check_eq(p.returncode, 0, "qemu nbd: quit cleanly")
    wait_snapshot_works(env, "qemu nbd: the lease ended with QEMU")

    # What QEMU wrote is in the disk: read it through a new export.
    m = env.manager()
    path, _, fds = m.OpenDisk("vm", "d", opts(export="nbd", read_only=True))
    fd = fds[0].take()
    q = subprocess.run(["qemu-io", "-r", "--image-opts", f"driver=nbd,server.type=fd,server.str={fd},export=d",
                        "-c", "read -P 0x6b 1M 64k"], pass_fds=[fd], capture_output=True, text=True, timeout=60)
    os.close(fd)
    dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.vdisk1.Lease").Release()
    check(q.returncode == 0 and "Pattern verification failed" not in q.stdout,
          f"qemu nbd: the data QEMU wrote is in the disk ({(q.stdout + q.stderr).strip()[-300:]!r})")


def case_qemu_vhost(env):
    """Two vhost-user-blk-pci devices on a PCI machine, from the user's virtio-blk-pci options."""
    p = subprocess.Popen([VDISKCTL, "open", "vm", "d,e", "--export=vhost-user-blk", "--", "qemu-system-x86_64",
                          "-machine", "pc", "-m", "128", "-S", "-nodefaults", "-display", "none", "-qmp", "stdio",
                          "-device", "virtio-blk-pci,drive=d,id=vd0,bootindex=1",
                          "-device", "driver=virtio-blk-pci,id=vd1,drive=e"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=vdiskctl_env(), cwd=env.tmp)
    greeting = read_json(p.stdout, time.time() + 90)
    if not check(isinstance(greeting, dict) and "QMP" in greeting, "qemu vhost: QMP greeting"):
        p.kill()
        print(p.communicate()[1][-2000:])
        return
    files, sockets = store_fds(p.pid, env.store)
    check_eq(files, [], "qemu vhost: QEMU holds no store file")
    check(sockets >= 3, f"qemu vhost: QEMU holds sockets (two exports, the bus: {sockets})")
    for dk in ("d", "e"):
        check_eq(snapshot_error(env, dk), INUSE, f"qemu vhost: {dk} is in use while QEMU runs")
    replies, err = qmp_session(p, [
        {"execute": "qmp_capabilities"},
        {"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}},
        {"execute": "qom-get", "arguments": {"path": "/machine/peripheral/vd0", "property": "config-wce"}},
        {"execute": "qom-get", "arguments": {"path": "/machine/peripheral/vd1", "property": "config-wce"}},
        {"execute": "query-memdev"},
        {"execute": "query-pci"},
        {"execute": "quit"}])
    if check_eq(len(replies), 7, f"qemu vhost: seven replies ({replies!r:.400}, {err.strip()[-600:]!r})"):
        devices = {d["name"]: d["type"] for d in replies[1].get("return", [])}
        check_eq((devices.get("vd0"), devices.get("vd1")), ("child<vhost-user-blk-pci>", "child<vhost-user-blk-pci>"),
                 f"qemu vhost: vd0 and vd1 are vhost-user-blk-pci ({devices})")
        check_eq((replies[2].get("return"), replies[3].get("return")), (False, False), "qemu vhost: config-wce off")
        mem = [m for m in replies[4].get("return", []) if m.get("id") == "vdisk-mem"]
        check(mem and mem[0].get("share") is True and mem[0].get("size") == 128 * MiB,
              f"qemu vhost: guest RAM is vdisk-mem, shared, 128 MiB ({replies[4]!r:.300})")
        pci = [d for bus in replies[5].get("return", []) for d in bus.get("devices", [])]
        check_eq(sorted(d.get("qdev_id") for d in pci if d.get("qdev_id") in ("vd0", "vd1")), ["vd0", "vd1"],
                 "qemu vhost: both devices are on the PCI bus")
    check_eq(p.returncode, 0, f"qemu vhost: quit cleanly ({err.strip()[-300:]!r})")
    for dk in ("d", "e"):
        wait_snapshot_works(env, f"qemu vhost: the lease on {dk} ended with QEMU", disk=dk)


def main():
    require("qemu-system-x86_64", "qemu-io", "qemu-img")
    env = Env(sys.argv[1])
    try:
        env.start()
        raw = os.path.join(env.tmp, "base.raw")
        qemu_img("create", "-f", "raw", raw, str(DISK_SIZE))
        check_eq(env.import_file("base", "raw", raw), (None, ""), "import the base")
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        for dk in ("d", "e"):
            env.call("CreateDisk", "vm", dk, "base", dbus.UInt64(0), opts())
        env.call("Snapshot", "vm", "d", opts())

        probe(env)
        case_usage(env)
        case_print(env)
        case_hold(env, "nbd")
        case_hold(env, "vhost-user-blk")
        case_qemu_nbd(env)
        case_qemu_vhost(env)
        check_eq(env.error("Verify", "vm")[1], [], "the VM's records and headers still agree")
    finally:
        env.close()

    if failures:
        print(f"{len(failures)} check(s) failed:")
        for f in failures:
            print("  " + f)
        sys.exit(1)
    print("all checks passed")
    sys.exit(0)


if __name__ == "__main__":
    main()
