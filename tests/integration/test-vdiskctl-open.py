# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl open: the launcher. --print shows the command line (-add-fd per fd, -blockdev per node as
vdiskd describes them, also past 16 fds); with a COMMAND vdiskctl execs it with the fds and its bus
connection, so the lease lives exactly as long as the launched process (a Python child checks its fds:
open, right access modes, the store's files; Snapshot is InUse meanwhile); a real QEMU opens every node
from the fdsets; several disks for one hypervisor (fd sets and node names renumbered, a real QEMU opens
all three); --read-only; holding mode until SIGINT/SIGTERM; vdiskd's refusals exit 3.

Usage: test-vdiskctl-open.py VDISKD (VDISKCTL in the environment). Exits 77 after all other checks if
qemu-system-x86_64 is missing (only the QEMU case needs it)."""

import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, SKIP, Env, check, check_eq, failures, opts, qemu_img, root_only

GiB = 1 << 30
INUSE = "org.vdisk1.Error.InUse"
VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# Runs as COMMAND: reports what it inherited, then waits for a line on stdin before it exits.
CHILD = r"""
import json, os, stat, sys
args, fds, nodes, i = sys.argv[1:], {}, [], 0
while i < len(args):
    if args[i] == "-add-fd":
        kv = dict(x.split("=", 1) for x in args[i + 1].split(","))
        fds[int(kv["set"])] = int(kv["fd"])
        i += 2
    elif args[i] == "-blockdev":
        nodes.append(json.loads(args[i + 1]))
        i += 2
    else:
        i += 1

def flags(fd):
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)

report = {"pid": os.getpid(), "nodes": nodes, "fds": [], "sockets": 0}
for s in sorted(fds):
    fd = fds[s]
    try:
        st = os.fstat(fd)
        report["fds"].append({"set": s, "fd": fd, "open": True, "ino": st.st_ino, "dev": st.st_dev,
                              "accmode": flags(fd) & 3})
    except OSError:
        report["fds"].append({"set": s, "fd": fd, "open": False})
for name in os.listdir("/proc/self/fd"):
    try:
        report["sockets"] += stat.S_ISSOCK(os.fstat(int(name)).st_mode)
    except OSError:
        pass
print(json.dumps(report), flush=True)
sys.stdin.readline()
sys.exit(int(os.environ.get("CHILD_EXIT", "0")))
"""


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


def reference(env, vm, disk, read_only=False):
    """vdiskd's own -blockdev description of the disk now (a lease taken and released at once)."""
    m = env.manager()
    path, blockdev, fds = m.OpenDisk(vm, disk, opts(read_only=True) if read_only else opts())
    for f in fds:
        os.close(f.take())
    dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.vdisk1.Lease").Release()
    return json.loads(str(blockdev))


def store_inodes(env, vm, disk):
    return [os.stat(os.path.join(env.store, str(layer[1]))).st_ino for layer in env.call("GetChain", vm, disk)]


def parse_command_line(args):
    """Splits COMMAND ARGS... -add-fd ... -blockdev ... into (head, [(fd, set)], [node])."""
    head, fds, nodes, i = [], [], [], 0
    while i < len(args):
        if args[i] == "-add-fd" and i + 1 < len(args):
            kv = dict(x.split("=", 1) for x in args[i + 1].split(","))
            fds.append((int(kv["fd"]), int(kv["set"])))
            i += 2
        elif args[i] == "-blockdev" and i + 1 < len(args):
            nodes.append(json.loads(args[i + 1]))
            i += 2
        else:
            if not fds and not nodes:
                head.append(args[i])
            i += 1
    return head, fds, nodes


def snapshot_error(env, vm="vm", disk="d"):
    return env.error("Snapshot", vm, disk, opts())[0]


def wait_snapshot_works(env, what, vm="vm", disk="d"):
    """A lease that ends with its connection ends asynchronously: vdiskd learns it from the bus."""
    err = None
    for _ in range(200):
        err = snapshot_error(env, vm, disk)
        if err is None:
            break
        time.sleep(0.05)
    check_eq(err, None, what)


def read_json(stream, deadline):
    """Reads from a pipe until what arrived is one JSON document (or the deadline passes). Reads the
    fd itself: the text wrapper's buffer would hide data from select()."""
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


def spawn_child(env, extra_args=(), child_exit=0):
    return subprocess.Popen([VDISKCTL, "open", "vm", "d", *extra_args, "--", PYTHON, "-c", CHILD],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=vdiskctl_env(CHILD_EXIT=str(child_exit)))


def finish_child(p):
    try:
        out, err = p.communicate("go\n", timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return out, err


def case_print(env):
    nodes = reference(env, "vm", "d")
    n = len(env.call("GetChain", "vm", "d"))
    p = run("open", "vm", "d", "--print", "--", "qemu-system-x86_64", "-S")
    if not check_eq(p.returncode, 0, f"--print exits 0 ({describe(p)})"):
        return
    args = shlex.split(p.stdout)
    head, fds, got_nodes = parse_command_line(args)
    check_eq(head, ["qemu-system-x86_64", "-S"], "--print: the command comes first, unchanged")
    check_eq(args.count("-add-fd"), n, "--print: one -add-fd per layer")
    check_eq([s for _, s in fds], list(range(1, n + 1)), "--print: -add-fd sets 1..N in lease order")
    check_eq(len({fd for fd, _ in fds}), n, "--print: distinct fd numbers")
    check(all(fd > 2 for fd, _ in fds), "--print: no fd is stdin, stdout or stderr")
    check_eq(args.count("-blockdev"), len(nodes), "--print: one -blockdev per node")
    check_eq(got_nodes, nodes, "--print: the -blockdev nodes are vdiskd's, in order")
    check_eq(len(p.stdout.splitlines()), len(args), "--print: one argument per line")
    # --print releases the lease before it exits: no wait needed.
    check_eq(snapshot_error(env), None, "after --print the lease has ended")

    nodes = reference(env, "vm", "d")
    p = run("--json=short", "open", "vm", "d", "--print", "--", "qemu-system-x86_64", "-S")
    check_eq(p.returncode, 0, f"--print --json=short exits 0 ({describe(p)})")
    try:
        arr = json.loads(p.stdout)
    except ValueError:
        arr = None
    check(isinstance(arr, list) and all(isinstance(a, str) for a in arr), "--print --json: a JSON array of strings")
    if isinstance(arr, list):
        check_eq(parse_command_line(arr)[2], nodes, "--print --json: the same nodes")
        check_eq(len(p.stdout.strip().splitlines()), 1, "--json=short: one line")


def case_print_many(env):
    """More than 16 fds: vdiskctl pages the rest with Lease.GetFds."""
    env.call("CreateDisk", "vm", "deep", "base", dbus.UInt64(0), opts())
    for _ in range(19):
        env.call("Snapshot", "vm", "deep", opts())
    n = len(env.call("GetChain", "vm", "deep"))
    check_eq(n, 21, "a 21-layer chain")
    nodes = reference(env, "vm", "deep")
    p = run("open", "vm", "deep", "--print", "--", "qemu-system-x86_64")
    if not check_eq(p.returncode, 0, f"--print of 21 layers exits 0 ({describe(p)})"):
        return
    _, fds, got_nodes = parse_command_line(shlex.split(p.stdout))
    check_eq([s for _, s in fds], list(range(1, n + 1)), "21 layers: all fds fetched (sets 1..21)")
    check_eq(len({fd for fd, _ in fds}), n, "21 layers: distinct fds")
    check_eq(got_nodes, nodes, "21 layers: the nodes are vdiskd's")
    check(env.bus.name_has_owner(BUS_NAME), "vdiskd is still on the bus")


def case_exec(env, read_only=False):
    label = "read-only child" if read_only else "child"
    nodes = reference(env, "vm", "d", read_only=read_only)
    want_inodes = store_inodes(env, "vm", "d")
    p = spawn_child(env, ["--read-only"] if read_only else [], child_exit=7)
    report = read_json(p.stdout, time.time() + 60)
    if not check(report is not None, f"{label}: started and reported"):
        p.kill()
        out, err = p.communicate()
        print(f"  stderr: {err.strip()[-1000:]}")
        return

    check_eq(report["pid"], p.pid, f"{label}: vdiskctl execs COMMAND (same pid)")
    fds = report["fds"]
    check_eq([f["set"] for f in fds], list(range(1, len(want_inodes) + 1)), f"{label}: one fd per layer, sets 1..N")
    check(all(f["open"] for f in fds), f"{label}: every fd named in argv is open")
    check_eq([f.get("ino") for f in fds], want_inodes, f"{label}: the fds are the store's files, top first")
    want_dev = os.stat(env.store).st_dev
    check(all(f.get("dev") == want_dev for f in fds), f"{label}: on the store's file system")
    modes = [f.get("accmode") for f in fds]
    if read_only:
        check(all(m == os.O_RDONLY for m in modes), f"{label}: every fd O_RDONLY ({modes})")
        check(all(nd["read-only"] for nd in report["nodes"]), f"{label}: every node read-only")
    else:
        check_eq(modes[:1], [os.O_RDWR], f"{label}: the top layer fd is O_RDWR")
        check(all(m == os.O_RDONLY for m in modes[1:]), f"{label}: the backing fds are O_RDONLY ({modes})")
    check_eq(report["nodes"], nodes, f"{label}: the -blockdev nodes are vdiskd's")
    check(report["sockets"] >= 1, f"{label}: the bus connection is inherited")

    if read_only:
        # A read-only lease admits other readers but no writer.
        check_eq(run("open", "vm", "d", "--read-only", "--print", "--", "true").returncode, 0,
                 f"{label}: another read-only lease is possible")
        q = run("open", "vm", "d", "--print", "--", "true")
        check_eq(q.returncode, 3, f"{label}: a read-write open meanwhile exits 3")
    else:
        check_eq(snapshot_error(env), INUSE, f"{label}: Snapshot is InUse while the child runs")
        q = run("open", "vm", "d", "--print", "--", "true")
        check_eq(q.returncode, 3, f"{label}: a second open exits 3 (refused)")
        check("InUse" in q.stderr and "Failed to open disk 'd' of VM 'vm'" in q.stderr,
              f"{label}: the refusal names the disk and the error ({q.stderr.strip()!r})")
        check("Stop the VM that holds the disk" in q.stderr, f"{label}: the refusal comes with the usual hint")
        check_eq(q.stdout, "", f"{label}: nothing on stdout when refused")

    finish_child(p)
    check_eq(p.returncode, 7, f"{label}: vdiskctl's exit status is the command's")
    wait_snapshot_works(env, f"{label}: Snapshot works once the child has exited (lease ended)")


def case_qemu(env):
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        print("SKIP: qemu-system-x86_64 not installed (QEMU case only)")
        return False
    nodes = reference(env, "vm", "d")
    p = subprocess.Popen([VDISKCTL, "open", "vm", "d", "--", "qemu-system-x86_64", "-nodefaults", "-display", "none",
                          "-machine", "none", "-S", "-qmp", "stdio"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=vdiskctl_env(), cwd=env.tmp)
    # Wait for the greeting: QEMU has opened every node by then.
    greeting = read_json(p.stdout, time.time() + 60)
    check(isinstance(greeting, dict) and "QMP" in greeting, "qemu: QMP greeting")
    check_eq(snapshot_error(env), INUSE, "qemu: Snapshot is InUse while QEMU runs")
    cmds = [{"execute": "qmp_capabilities"}, {"execute": "query-named-block-nodes", "arguments": {"flat": True}},
            {"execute": "quit"}]
    try:
        out, err = p.communicate("\n".join(json.dumps(c) for c in cmds) + "\n", timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    replies = [json.loads(x) for x in out.splitlines() if x.strip().startswith("{")]
    result = [r for r in replies if isinstance(r.get("return"), list)]
    if check(result, f"qemu: answered query-named-block-nodes ({err.strip()[-400:]!r})"):
        named = {nd["node-name"]: nd for nd in result[0]["return"]}
        check(all(nd["node-name"] in named for nd in nodes), "qemu: every node of the description exists")
        files = [nd["file"] for nd in result[0]["return"] if nd["drv"] == "file"]
        check_eq(len(files), len(nodes) // 2, "qemu: one file node per layer")
        check(all(f.startswith("/dev/fdset/") for f in files), f"qemu: every file is an fdset ({files})")
        top = named.get(nodes[-1]["node-name"], {})
        check_eq(top.get("ro"), False, "qemu: the top node is writable")
    check_eq(p.returncode, 0, "qemu: quit cleanly")
    wait_snapshot_works(env, "qemu: Snapshot works after QEMU exited")
    return True


def relabel(nodes, set_offset, index, disk):
    """What vdiskctl must make of a second (third ...) disk's description: fd sets shifted by the fds
    before it, inner node names suffixed with the disk's position, the top node's name kept."""
    out = []
    for nd in nodes:
        nd = dict(nd)
        if "filename" in nd:
            nd["filename"] = f"/dev/fdset/{int(nd['filename'].rsplit('/', 1)[1]) + set_offset}"
        for key in ("node-name", "file", "backing", "data-file"):
            if isinstance(nd.get(key), str) and nd[key] != disk:
                nd[key] = f"{nd[key]}-{index}"
        out.append(nd)
    return out


def case_many_disks(env):
    """Several disks of a VM for one hypervisor: fd sets and inner node names must not collide (two
    plain leases both use set 1 and the node name vdisk-file-0, which QEMU refuses)."""
    env.call("CreateDisk", "vm", "data", "", dbus.UInt64(64 << 20), opts(data_file=True))
    env.call("CreateDisk", "vm", "swap", "base", dbus.UInt64(0), opts())
    disks = ["d", "data", "swap"]

    def expected(disks):
        """(nodes for the disks in this order, fds per disk, nodes per disk): taken anew before each
        step, since a successful snapshot_error() check adds a layer."""
        refs = [reference(env, "vm", dk) for dk in disks]
        n_fds = [len(env.call("GetChain", "vm", dk)) + (dk == "data") for dk in disks]
        want, offset = [], 0
        for i, (dk, nodes) in enumerate(zip(disks, refs)):
            want += nodes if i == 0 else relabel(nodes, offset, i, dk)
            offset += n_fds[i]
        return want, n_fds, [len(r) for r in refs]

    want, n_fds, _ = expected(disks)
    p = run("open", "vm", ",".join(disks), "--print", "--", "qemu-system-x86_64")
    if not check_eq(p.returncode, 0, f"three disks: --print exits 0 ({describe(p)})"):
        return
    _, fds, got = parse_command_line(shlex.split(p.stdout))
    check_eq([s for _, s in fds], list(range(1, sum(n_fds) + 1)), "three disks: fd sets 1..N over all disks")
    check_eq(len({fd for fd, _ in fds}), sum(n_fds), "three disks: distinct fds")
    check_eq(got, want, "three disks: the first disk's nodes as vdiskd gave them, the others renumbered")
    names = [nd["node-name"] for nd in got]
    check_eq(len(set(names)), len(names), "three disks: every node name is unique")
    check(all(dk in names for dk in disks), "three disks: each top node keeps its disk's name")
    for dk in disks:
        check_eq(snapshot_error(env, disk=dk), None, f"three disks: after --print the lease on {dk} has ended")

    # Refusals: before any lease (usage) and after the first (a missing disk: all leases end).
    for arg, code, text in (("d,d", 2, "Disk 'd' is named twice."),
                            ("d,", 2, "Invalid disk list 'd,': give disk names separated by commas."),
                            (",d", 2, "Invalid disk list ',d': give disk names separated by commas."),
                            ("d,nope", 3, "Failed to open disk 'nope' of VM 'vm'")):
        q = run("open", "vm", arg, "--print", "--", "true")
        check_eq(q.returncode, code, f"open vm {arg} exits {code} ({describe(q)})")
        check(text in q.stderr, f"open vm {arg} says {text!r} ({q.stderr.strip()!r})")
        check_eq(q.stdout, "", f"open vm {arg}: nothing on stdout")
    wait_snapshot_works(env, "the lease on d ended with the refusal of the next disk")

    # Holding several: one JSON array, the sets continued, both leases released on SIGINT.
    want, n_fds, n_nodes = expected(["d", "data"])
    h = subprocess.Popen([VDISKCTL, "--json=short", "open", "vm", "d,data"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=vdiskctl_env())
    try:
        arr = read_json(h.stdout, time.time() + 60)
        if check(isinstance(arr, list) and len(arr) == 2, f"hold two disks: a JSON array of two leases ({arr!r:.200})"):
            check_eq([o["disk"] for o in arr], ["d", "data"], "hold two disks: in the order given")
            check_eq([f["set"] for o in arr for f in o["fds"]], list(range(1, n_fds[0] + n_fds[1] + 1)),
                     "hold two disks: sets continue over the disks")
            check_eq([len(o["blockdev"]) for o in arr], n_nodes, "hold two disks: each disk's nodes")
            check_eq(arr[0]["blockdev"] + arr[1]["blockdev"], want, "hold two disks: the second disk's nodes renumbered")
        check_eq(snapshot_error(env, disk="data"), INUSE, "hold two disks: the second disk is leased")
        h.send_signal(signal.SIGINT)
        out, err = h.communicate(timeout=60)
        check_eq(h.returncode, 0, f"hold two disks: exits 0 on SIGINT ({err.strip()!r})")
        check("Holding the leases on disks 'd,data' of VM 'vm'" in err, f"hold two disks: says so ({err.strip()!r})")
        for dk in ("d", "data"):
            check_eq(snapshot_error(env, disk=dk), None, f"hold two disks: {dk} released before exit")
    finally:
        if h.poll() is None:
            h.kill()
            h.communicate()

    # A real QEMU with all three disks.
    if not shutil.which("qemu-system-x86_64"):
        return
    want, n_fds, _ = expected(disks)
    names = [nd["node-name"] for nd in want]
    q = subprocess.Popen([VDISKCTL, "open", "vm", ",".join(disks), "--", "qemu-system-x86_64", "-nodefaults",
                          "-display", "none", "-machine", "none", "-S", "-qmp", "stdio"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=vdiskctl_env(), cwd=env.tmp)
    greeting = read_json(q.stdout, time.time() + 60)
    check(isinstance(greeting, dict) and "QMP" in greeting, "qemu, three disks: QMP greeting")
    for dk in disks:
        check_eq(snapshot_error(env, disk=dk), INUSE, f"qemu, three disks: {dk} is InUse while QEMU runs")
    cmds = [{"execute": "qmp_capabilities"}, {"execute": "query-named-block-nodes", "arguments": {"flat": True}},
            {"execute": "quit"}]
    try:
        out, err = q.communicate("\n".join(json.dumps(c) for c in cmds) + "\n", timeout=60)
    except subprocess.TimeoutExpired:
        q.kill()
        out, err = q.communicate()
    replies = [json.loads(x) for x in out.splitlines() if x.strip().startswith("{")]
    result = [r for r in replies if isinstance(r.get("return"), list)]
    if check(result, f"qemu, three disks: answered query-named-block-nodes ({err.strip()[-400:]!r})"):
        named = {nd["node-name"]: nd for nd in result[0]["return"]}
        check_eq(sorted(named), sorted(names), "qemu, three disks: exactly the described nodes")
        files = sorted(nd["file"] for nd in result[0]["return"] if nd["drv"] == "file")
        check_eq(files, sorted(f"/dev/fdset/{i}" for i in range(1, sum(n_fds) + 1)),
                 "qemu, three disks: every fd set used once")
        for dk in disks:
            check_eq(named.get(dk, {}).get("ro"), False, f"qemu, three disks: {dk}'s top node is writable")
    check_eq(q.returncode, 0, "qemu, three disks: quit cleanly")
    for dk in disks:
        wait_snapshot_works(env, f"qemu, three disks: {dk} can be snapshot after QEMU exited", disk=dk)


def case_hold(env, sig, json_mode=None):
    label = f"hold ({signal.Signals(sig).name}{', --json=' + json_mode if json_mode else ''})"
    nodes = reference(env, "vm", "d")
    want_inodes = store_inodes(env, "vm", "d")
    args = [VDISKCTL] + ([f"--json={json_mode}"] if json_mode else []) + ["open", "vm", "d"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=vdiskctl_env())
    try:
        obj = read_json(p.stdout, time.time() + 60)
        if not check(isinstance(obj, dict), f"{label}: printed the lease as JSON"):
            return
        check_eq(obj.get("blockdev"), nodes, f"{label}: the blockdev nodes are vdiskd's")
        fds = obj.get("fds", [])
        check_eq([f["set"] for f in fds], list(range(1, len(want_inodes) + 1)), f"{label}: fds with sets 1..N")
        check_eq(obj.get("pid"), p.pid, f"{label}: the pid that holds the fds")
        check_eq([os.stat(f"/proc/{p.pid}/fd/{f['fd']}").st_ino for f in fds], want_inodes,
                 f"{label}: the fd numbers are the store's files in vdiskctl")
        check(str(obj.get("lease", "")).startswith("/org/vdisk1/lease/"), f"{label}: names the lease object")
        if json_mode == "short":
            check(obj is not None and "\n" not in json.dumps(obj), f"{label}: one line")
        check_eq(snapshot_error(env), INUSE, f"{label}: Snapshot is InUse while vdiskctl holds the lease")
        check_eq(p.poll(), None, f"{label}: vdiskctl keeps running")
        p.send_signal(sig)
        out, err = p.communicate(timeout=60)
        check_eq(p.returncode, 0, f"{label}: exits 0 on the signal ({err.strip()!r})")
        check("Holding the lease on disk 'd' of VM 'vm'" in err, f"{label}: says that it holds the lease")
        check_eq(snapshot_error(env), None, f"{label}: Snapshot works right after exit (Release)")
        # Released before exiting: no waiting for the bus to notice. In local mode vdiskd answers Release
        # first and ends the lease (and logs it) right after, in the same turn of its loop: by the time it
        # answered the Snapshot above, the line is written.
        check(f"Lease {obj.get('lease')} of disk 'd' of VM 'vm' ended (released)" in env.log_text(),
              f"{label}: vdiskctl called Release")
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def case_hold_daemon_stops(env):
    """The lease cannot outlive vdiskd: a holding vdiskctl says so and exits 4."""
    p = subprocess.Popen([VDISKCTL, "open", "vm", "d"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=vdiskctl_env())
    try:
        check(isinstance(read_json(p.stdout, time.time() + 60), dict), "hold: lease taken before vdiskd stops")
        env.stop()
        out, err = p.communicate(timeout=60)
        check_eq(p.returncode, 4, f"hold: exits 4 when vdiskd stops ({err.strip()!r})")
        check("vdiskd stopped: the lease on disk 'd' of VM 'vm' has ended." in err, "hold: says that the lease ended")
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
        env.start()


def case_quarantined(env):
    """A disk whose header changed under a read-write lease is quarantined: vdiskctl open exits 3."""
    env.call("CreateVM", "qvm", dbus.UInt32(0), opts())
    env.call("CreateDisk", "qvm", "q", "base", dbus.UInt64(0), opts())
    top = os.path.join(env.store, str(env.call("GetChain", "qvm", "q")[0][1]))
    m = env.manager()
    path, _, fds = m.OpenDisk("qvm", "q", opts())
    for f in fds:
        os.close(f.take())
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "canary", "-F", "raw", top)
    dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.vdisk1.Lease").Release()
    p = run("open", "qvm", "q", "--print", "--", "true")
    check_eq(p.returncode, 3, f"a quarantined disk exits 3 ({describe(p)})")
    check("org.vdisk1.Error.Corrupt" in p.stderr and "quarantined" in p.stderr,
          "the refusal says Corrupt and quarantined")
    check("vdiskctl verify VM" in p.stderr, "with the usual hint for Corrupt")
    check_eq(p.stdout, "", "nothing on stdout")


def case_errors(env):
    p = run("open", "vm", "nope", "--print", "--", "true")
    check_eq(p.returncode, 3, f"unknown disk exits 3 ({describe(p)})")
    check("org.vdisk1.Error.NotFound" in p.stderr, "unknown disk: NotFound is named")
    p = run("open", "vm", "nope")
    check_eq(p.returncode, 3, f"unknown disk, holding mode, exits 3 ({describe(p)})")
    check_eq(p.stdout, "", "unknown disk: nothing on stdout")

    p = run("open", "vm", "d", "--", "/nonexistent/vdisk-test-hypervisor")
    check_eq(p.returncode, 4, f"a command that cannot run exits 4 ({describe(p)})")
    check("Failed to run '/nonexistent/vdisk-test-hypervisor'" in p.stderr, "says which command failed")
    wait_snapshot_works(env, "the lease ends when the command cannot run")

    # Access control: a non-owner is refused (exit 3), through setpriv as "nobody".
    if shutil.which("setpriv") and root_only("vdiskctl open as a non-owner (the user nobody)"):
        # A copy nobody can run: the build directory may be one only root can enter.
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", env.readable_copy(VDISKCTL),
                            "open", "vm", "d", "--print", "--", "true"],
                           capture_output=True, text=True, env=vdiskctl_env(), timeout=60)
        check_eq(p.returncode, 3, f"a non-owner is refused with exit 3 ({describe(p)})")
        check("AccessDenied" in p.stderr, "the refusal is AccessDenied")


def main():
    env = Env(sys.argv[1])
    qemu_ran = True
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        env.call("CreateDisk", "vm", "d", "base", dbus.UInt64(0), opts())
        env.call("Snapshot", "vm", "d", opts())

        case_print(env)
        case_print_many(env)
        case_many_disks(env)
        case_exec(env)
        qemu_ran = case_qemu(env)
        case_exec(env, read_only=True)
        case_hold(env, signal.SIGINT)
        case_hold(env, signal.SIGTERM, json_mode="short")
        case_errors(env)
        case_quarantined(env)
        case_hold_daemon_stops(env)
        check_eq(env.error("Verify", "vm")[1], [], "the VM's records and headers still agree")
        check(env.canary_unchanged(), "canary unchanged")
    finally:
        env.close()

    if failures:
        print(f"{len(failures)} check(s) failed:")
        for f in failures:
            print("  " + f)
        sys.exit(1)
    if not qemu_ran:
        print("all other checks passed; skipped: qemu-system-x86_64 missing")
        sys.exit(SKIP)
    print("all checks passed")
    sys.exit(0)


if __name__ == "__main__":
    main()
