# SPDX-License-Identifier: LGPL-2.1-or-later
"""qcow2 external data files (incompatible bit 2), created by vdisk only.

CreateDisk's data_file / data_file_raw options and their refusals; the files and records that
result; OpenDisk handing the data file out right after its layer in the parent's mode with an
explicit "data-file" node; a real QEMU, started through `vdiskctl open`, writing guest data that
lands byte for byte in the data file; a header whose data-file name changed under a lease
quarantining the disk; rebase, flatten and commit reading from and writing into data files, with
cancellation and an injected crash restoring every file byte for byte."""

import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import time

import dbus

from vdisktest import Env, check, check_eq, finish, opts, require

MiB = 1 << 20
VDISKCTL = os.path.abspath(os.environ["VDISKCTL"]) if "VDISKCTL" in os.environ else shutil.which("vdiskctl")
INVALID = "org.freedesktop.DBus.Error.InvalidArgs"


def images(env):
    return os.path.join(env.store, "images")


def chain(env, disk):
    return env.call("GetChain", "vm", disk)


def top_path(env, disk):
    return os.path.join(env.store, str(chain(env, disk)[0][1]))


def qemu_io(path, *cmds):
    args = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    # QEMU resolves a data-file name against its working directory, not the image's.
    p = subprocess.run(args + [path], capture_output=True, text=True, cwd=os.path.dirname(path))
    check_eq(p.returncode, 0, f"qemu-io {cmds} ({p.stderr.strip()[-200:]})")


def reference(env, disk):
    out = os.path.join(env.tmp, f"ref-{disk}.raw")
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", top_path(env, disk), out], check=True,
                   cwd=images(env))
    return out


def same_view(env, disk, ref, what):
    p = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", top_path(env, disk), ref],
                       capture_output=True, text=True, cwd=images(env))
    check_eq(p.returncode, 0, f"{what}: guest view unchanged ({p.stdout.strip()}{p.stderr.strip()})")


def all_clean(env, disk, what):
    for layer in chain(env, disk):
        if layer[6] or layer[2] != "qcow2":
            continue
        p = subprocess.run(["qemu-img", "check", "-f", "qcow2", os.path.join(env.store, str(layer[1]))],
                           capture_output=True, text=True, cwd=images(env))
        check_eq(p.returncode, 0, f"{what}: qemu-img check of layer {str(layer[0])[:8]} ({p.stdout.strip()[-200:]})")
    check_eq(list(env.call("Verify", "vm")), [], f"{what}: Verify is clean")


def run_job(env, *args):
    err, job = env.try_call(*args)
    if err:
        return err
    state, ename, emsg = env.wait_job(job)
    return "done" if state == "done" else ename


def store_hashes(env):
    out = {}
    for d in ("images", "records", "journal"):
        for n in sorted(os.listdir(os.path.join(env.store, d))):
            with open(os.path.join(env.store, d, n), "rb") as f:
                out[f"{d}/{n}"] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_options(env):
    env.call("CreateImage", "base", "qcow2", dbus.UInt64(64 * MiB), opts())
    before = store_hashes(env)
    for label, args, want in [
        ("data_file_raw without data_file", ("", 32 * MiB, opts(format="qcow2", data_file_raw=True)), INVALID),
        ("data_file for a raw disk", ("", 32 * MiB, opts(format="raw", data_file=True)), INVALID),
        ("data_file with mode copy", ("base", 0, opts(mode="copy", data_file=True)), INVALID),
        ("raw data file on an overlay", ("base", 0, opts(data_file=True, data_file_raw=True)), INVALID),
        ("data_file of the wrong type", ("", 32 * MiB, opts(data_file="yes")), INVALID),
    ]:
        err, msg = env.try_call("CreateDisk", "vm", "x", args[0], dbus.UInt64(args[1]), args[2])
        check_eq(err, want, f"CreateDisk refuses {label} ({msg})")
        check_eq(store_hashes(env), before, f"CreateDisk {label}: store unchanged")


def test_create_and_open(env):
    env.call("CreateDisk", "vm", "a", "", dbus.UInt64(64 * MiB), opts(data_file=True))
    layer = str(chain(env, "a")[0][0])
    files = sorted(n for n in os.listdir(images(env)) if n.startswith(layer))
    check_eq(files, [f"{layer}.data", f"{layer}.qcow2"], "blank disk with data_file: image and data file, named by id")
    with open(os.path.join(env.store, "records", f"layer-{layer}.json")) as f:
        rec = json.load(f)
    check_eq((rec["data_file"], rec["data_file_raw"]), (f"{layer}.data", False), "record names the data file")
    check_eq(rec["data_file_inode"], os.stat(os.path.join(images(env), f"{layer}.data")).st_ino, "record keeps its inode")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", f"{layer}.qcow2"], capture_output=True,
                                     text=True, cwd=images(env), check=True).stdout)
    spec = info["format-specific"]["data"]
    check_eq((spec.get("data-file"), spec.get("data-file-raw")), (f"{layer}.data", False), "header names the data file")
    check_eq(os.stat(os.path.join(images(env), f"{layer}.data")).st_mode & 0o777, 0o600, "data file is 0600")

    env.call("CreateDisk", "vm", "r", "", dbus.UInt64(16 * MiB), opts(data_file=True, data_file_raw=True))
    rl = str(chain(env, "r")[0][0])
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", f"{rl}.qcow2"], capture_output=True,
                                     text=True, cwd=images(env), check=True).stdout)
    check_eq(info["format-specific"]["data"].get("data-file-raw"), True, "data_file_raw sets the raw flag")
    all_clean(env, "a", "new data-file disks")

    # The same through vdiskctl.
    p = subprocess.run([VDISKCTL, "create-disk", "vm", "cli", "--size=16M", "--data-file"], capture_output=True, text=True,
                       env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=env.address))
    check_eq(p.returncode, 0, f"vdiskctl create-disk --data-file ({p.stderr.strip()})")
    cl = str(chain(env, "cli")[0][0])
    check(os.path.exists(os.path.join(images(env), f"{cl}.data")), "vdiskctl create-disk --data-file: the data file exists")
    p = subprocess.run([VDISKCTL, "create-disk", "vm", "cli2", "--image=base", "--data-file", "--data-file-raw"],
                       capture_output=True, text=True, env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=env.address))
    check_eq(p.returncode, 3, "vdiskctl: a raw data file on an overlay is refused by the daemon (exit 3)")
    env.call("DeleteDisk", "vm", "cli")
    check(not any(n.startswith(cl) for n in os.listdir(images(env))), "DeleteDisk removes the image and its data file")

    # OpenDisk: image, then its data file, both in the parent's mode; read_only makes both read-only.
    for ro in (False, True):
        lease, blockdev, fds = env.call("OpenDisk", "vm", "a", opts(read_only=ro) if ro else opts())
        fds = [f.take() for f in fds]
        inos = [os.fstat(fd).st_ino for fd in fds]
        want_ino = [os.stat(os.path.join(images(env), f"{layer}.{x}")).st_ino for x in ("qcow2", "data")]
        check_eq(inos, want_ino, f"OpenDisk(read_only={ro}): the image, then its data file")
        modes = [os.O_RDONLY if ro else os.O_RDWR] * 2
        check_eq([int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8) & 3 for fd in fds],
                 modes, f"OpenDisk(read_only={ro}): the data file in its parent's mode")
        nodes = json.loads(str(blockdev))
        fmt = [n for n in nodes if n.get("driver") == "qcow2"][0]
        data_node = [n for n in nodes if n["node-name"] == fmt.get("data-file")]
        check(data_node and data_node[0]["filename"] == "/dev/fdset/2" and data_node[0]["read-only"] == ro,
              f"OpenDisk(read_only={ro}): an explicit data-file node on fd set 2 ({nodes})")
        for fd in fds:
            os.close(fd)
        env.bus.get_object("org.vdisk1", lease, introspect=False).Release(dbus_interface="org.vdisk1.Lease")

    # Below a snapshot, the data file goes read-only with its layer.
    env.call("Snapshot", "vm", "a", opts())
    lease, blockdev, fds = env.call("OpenDisk", "vm", "a", opts())
    fds = [f.take() for f in fds]
    check_eq(len(fds), 3, "snapshot over a data-file layer: top, layer, data file")
    check_eq([int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8) & 3 for fd in fds],
             [os.O_RDWR, os.O_RDONLY, os.O_RDONLY], "backing layer and its data file are read-only")
    nodes = json.loads(str(blockdev))
    check(any(n.get("node-name") == "vdisk-data-1" and n.get("read-only") is True for n in nodes),
          "the backing layer's data-file node is read-only")
    for fd in fds:
        os.close(fd)
    env.bus.get_object("org.vdisk1", lease, introspect=False).Release(dbus_interface="org.vdisk1.Lease")


def read_json(stream, deadline):
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
            return json.loads(data.decode().splitlines()[0])
        except (ValueError, IndexError):
            continue
    return None


def test_qemu(env):
    """A real QEMU through the launcher writes guest data; it lands in the data file."""
    env.call("CreateDisk", "vm", "q", "", dbus.UInt64(32 * MiB), opts(data_file=True))
    layer = str(chain(env, "q")[0][0])
    e = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=env.address)
    p = subprocess.Popen([VDISKCTL, "open", "vm", "q", "--", "qemu-system-x86_64", "-nodefaults", "-display", "none",
                          "-machine", "none", "-S", "-qmp", "stdio"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e, cwd=env.tmp)
    greeting = read_json(p.stdout, time.time() + 60)
    check(isinstance(greeting, dict) and "QMP" in greeting, "qemu: QMP greeting")
    cmds = [{"execute": "qmp_capabilities"},
            {"execute": "human-monitor-command", "arguments": {"command-line": 'qemu-io q "write -P 0x5a 1M 192k"'}},
            {"execute": "human-monitor-command", "arguments": {"command-line": 'qemu-io q "write -P 0xa5 20M 64k"'}},
            {"execute": "query-named-block-nodes", "arguments": {"flat": True}},
            {"execute": "quit"}]
    try:
        out, err = p.communicate(("\n".join(json.dumps(c) for c in cmds) + "\n").encode(), timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    check_eq(p.returncode, 0, f"qemu: quit cleanly ({err.decode()[-300:]!r})")
    replies = [json.loads(x) for x in out.decode().splitlines() if x.strip().startswith("{")]
    nodes = [r["return"] for r in replies if isinstance(r.get("return"), list)]
    if check(nodes, "qemu: answered query-named-block-nodes"):
        files = sorted(n["file"] for n in nodes[0] if n["drv"] == "file")
        check_eq(files, ["/dev/fdset/1", "/dev/fdset/2"], "qemu: image and data file came from fd sets only")
    with open(os.path.join(images(env), f"{layer}.data"), "rb") as f:
        f.seek(1 * MiB)
        check_eq(f.read(192 * 1024), b"\x5a" * (192 * 1024), "guest data is in the data file at its guest offset")
        f.seek(20 * MiB)
        check_eq(f.read(64 * 1024), b"\xa5" * (64 * 1024), "second write too")
    with open(os.path.join(images(env), f"{layer}.qcow2"), "rb") as f:
        check(b"\x5a" * 4096 not in f.read(), "the qcow2 file itself holds no guest data")
    time.sleep(0.3)
    all_clean(env, "q", "after QEMU")
    err, _ = env.try_call("OpenDisk", "vm", "q", opts(read_only=True))
    check_eq(err, None, "not quarantined: the disk still opens after QEMU wrote to it")


def test_tamper(env):
    """A header whose data-file name changes under a read-write lease quarantines the disk."""
    env.call("CreateDisk", "vm", "t", "", dbus.UInt64(16 * MiB), opts(data_file=True))
    layer = str(chain(env, "t")[0][0])
    lease, blockdev, fds = env.call("OpenDisk", "vm", "t", opts())
    fds = [f.take() for f in fds]
    head = os.pread(fds[0], 65536, 0)
    name = f"{layer}.data".encode()
    check(name in head, "the header carries the data file name")
    evil = f"{layer}.xata".encode()
    os.pwrite(fds[0], head.replace(name, evil), 0)
    with open(os.path.join(images(env), f"{layer}.xata"), "wb") as f:  # a sibling, inside the test's store only
        f.write(b"\0" * 4096)
    for fd in fds:
        os.close(fd)
    env.bus.get_object("org.vdisk1", lease, introspect=False).Release(dbus_interface="org.vdisk1.Lease")
    time.sleep(0.3)
    err, msg = env.try_call("OpenDisk", "vm", "t", opts())
    check_eq(err, "org.vdisk1.Error.Corrupt", f"changed data-file name: the disk is quarantined ({msg})")
    problems = [tuple(map(str, p)) for p in env.call("Verify", "vm") if str(p[0]) == "t"]
    check(any("data file" in p[2] for p in problems), f"Verify names the data file ({problems})")
    env.call("DeleteDisk", "vm", "t")
    os.unlink(os.path.join(images(env), f"{layer}.xata"))


def test_reshape(env):
    """Rebase, flatten and commit with data-file layers as sources and as targets."""
    qemu_io(os.path.join(env.store, "images", [str(i[1]) for i in env.call("ListImages") if i[0] == "base"][0] + ".qcow2"),
            "write -P 0x44 0 16M")

    # Commit the top into a data-file layer (target with a data file, data written in place).
    env.call("CreateDisk", "vm", "c", "", dbus.UInt64(64 * MiB), opts(data_file=True))
    qemu_io(top_path(env, "c"), "write -P 0x11 0 8M", "write -P 0x12 20M 4M")
    env.call("Snapshot", "vm", "c", opts())
    qemu_io(top_path(env, "c"), "write -P 0x21 4M 8M", "write -z 21M 1M", "write -P 0x22 40M 1M")
    ref = reference(env, "c")
    old = chain(env, "c")
    check_eq(run_job(env, "Commit", "vm", "c", old[0][0], opts()), "done", "commit into a data-file layer")
    check_eq([str(x[0]) for x in chain(env, "c")], [str(old[1][0])], "commit: the data-file layer is the whole chain")
    same_view(env, "c", ref, "commit into a data-file layer")
    all_clean(env, "c", "commit into a data-file layer")

    # Flatten a top whose backing keeps its data in a data file (source with a data file).
    env.call("Snapshot", "vm", "c", opts())
    qemu_io(top_path(env, "c"), "write -P 0x31 30M 2M")
    ref = reference(env, "c")
    low = str(chain(env, "c")[1][0])
    check_eq(run_job(env, "Rebase", "vm", "c", "", opts()), "done", "flatten over a data-file layer")
    same_view(env, "c", ref, "flatten over a data-file layer")
    all_clean(env, "c", "flatten over a data-file layer")
    check(not any(n.startswith(low) for n in os.listdir(images(env))), "the dropped layer's image and data file are gone")

    # Flatten an overlay with a data file onto nothing: the catalog image's data goes into the data file.
    env.call("CreateDisk", "vm", "o", "base", dbus.UInt64(0), opts(data_file=True))
    qemu_io(top_path(env, "o"), "write -P 0x55 8M 4M")
    ref = reference(env, "o")
    check_eq(run_job(env, "Rebase", "vm", "o", "", opts()), "done", "flatten of a data-file overlay")
    same_view(env, "o", ref, "flatten of a data-file overlay")
    all_clean(env, "o", "flatten of a data-file overlay")


def test_cancel_and_crash(env):
    """A cancelled or crashed commit into a data-file layer leaves every file byte for byte."""
    env.call("CreateDisk", "vm", "k", "", dbus.UInt64(64 * MiB), opts(data_file=True))
    qemu_io(top_path(env, "k"), "write -P 0x61 0 16M")
    env.call("Snapshot", "vm", "k", opts())
    qemu_io(top_path(env, "k"), "write -P 0x62 4M 24M")
    ref = reference(env, "k")
    before = store_hashes(env)
    layer = chain(env, "k")[0][0]

    env.stop()
    env.start(env={"VDISKD_TEST_STEP_BYTES": "1048576", "VDISKD_TEST_STEP_DELAY_MS": "40"})
    err, job = env.try_call("Commit", "vm", "k", layer, opts())
    check_eq(err, None, "slow commit starts")
    obj = env.bus.get_object("org.vdisk1", job, introspect=False)
    props = dbus.Interface(obj, "org.freedesktop.DBus.Properties")
    deadline = time.time() + 30
    while time.time() < deadline and props.Get("org.vdisk1.Job", "BytesDone") == 0:
        time.sleep(0.02)
    check(0 < props.Get("org.vdisk1.Job", "BytesDone") < props.Get("org.vdisk1.Job", "BytesTotal"), "cancel mid-way")
    dbus.Interface(obj, "org.vdisk1.Job").Cancel()
    check_eq(env.wait_job(job)[0], "cancelled", "commit cancelled")
    check_eq(store_hashes(env), before, "cancel: image, data file and records byte for byte as before")

    env.stop()
    env.start(env={"VDISKD_TEST_STEP_BYTES": "1048576", "VDISKD_CRASH_AT": "commit:mid-copy"})
    err, job = env.try_call("Commit", "vm", "k", layer, opts())
    env.daemon.wait(timeout=30)
    check(env.daemon.returncode != 0, "the daemon died at commit:mid-copy")
    env.wait_name_gone()
    env.start()
    check_eq(store_hashes(env), before, "crash mid-copy: image, data file and records byte for byte as before")
    same_view(env, "k", ref, "after the crash")
    check_eq(run_job(env, "Commit", "vm", "k", layer, opts()), "done", "the commit then succeeds")
    same_view(env, "k", ref, "after the commit")
    all_clean(env, "k", "after the commit")


def main():
    require("qemu-img", "qemu-io")
    env = Env(sys.argv[1])
    try:
        env.start()
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        test_options(env)
        test_create_and_open(env)
        if shutil.which("qemu-system-x86_64"):
            test_qemu(env)
        else:
            check(False, "qemu-system-x86_64 is installed")
        test_tamper(env)
        test_reshape(env)
        test_cancel_and_crash(env)
        check(env.canary_unchanged(), "canary unchanged")
        env.stop()
        env.check_sanitizers()
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
