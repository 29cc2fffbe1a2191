# SPDX-License-Identifier: LGPL-2.1-or-later
"""OpenDisk and leases: fds and their modes, the blockdev description, paging past 16 fds through a
dbus-daemon with the stock system limits (16 fds per message, 64 incoming), lease exclusivity and
InUse, the end of a lease when its holder leaves the bus, QEMU image locks, quarantine of a disk
whose header changed under a read-write lease, authorization — and a real QEMU that opens the
whole chain from the fds alone. Fds past the first page are opened only when GetFds asks for them,
through the store's checks: a layer tampered with in between is Corrupt, named, and handed out
never; held-fd limits count them all the same."""

import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, Env, check, check_eq, finish, opts, qemu_img, root_only

GiB = 1 << 30
O_ACCMODE = 3
CORRUPT = "org.vdisk1.Error.Corrupt"


def lease_iface(env, path, bus=None):
    return dbus.Interface((bus or env.bus).get_object(BUS_NAME, path, introspect=False), "org.vdisk1.Lease")


def fd_flags(fd):
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    return None


def open_all(env, vm, disk, bus=None, **kw):
    bus = bus or env.bus
    m = dbus.Interface(bus.get_object(BUS_NAME, "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
    path, blockdev, fds = m.OpenDisk(vm, disk, opts(**kw))
    fds = [f.take() for f in fds]
    lease = lease_iface(env, path, bus)
    props = dbus.Interface(bus.get_object(BUS_NAME, path, introspect=False), "org.freedesktop.DBus.Properties")
    count = int(props.Get("org.vdisk1.Lease", "FdCount"))
    while len(fds) < count:
        more = lease.GetFds(dbus.UInt32(len(fds)), dbus.UInt32(100))
        check(len(more) <= 16, f"GetFds returns at most 16 fds (got {len(more)})")
        fds += [f.take() for f in more]
    return path, json.loads(str(blockdev)), fds, lease, props


def ofd_lock(fd, byte):
    """Takes a QEMU-style shared lock (F_RDLCK, OFD) on one byte."""
    F_OFD_SETLK = 37
    fl = struct.pack("hhqqi", fcntl.F_RDLCK, 0, byte, 1, 0)
    fcntl.fcntl(fd, F_OFD_SETLK, fl)


def check_blockdev(nodes, chain, disk, read_only, label):
    n = len(chain)
    check_eq(len(nodes), 2 * n, f"{label}: a file node and a format node per layer")
    by_name = {nd["node-name"]: nd for nd in nodes}
    check_eq(nodes[-1]["node-name"], disk, f"{label}: the top format node is named after the disk")
    files = [nd for nd in nodes if nd["driver"] == "file"]
    check_eq(sorted(nd["filename"] for nd in files), sorted(f"/dev/fdset/{i + 1}" for i in range(n)),
             f"{label}: file nodes use /dev/fdset/1..{n}")
    formats = [nd for nd in nodes if nd["driver"] != "file"]
    # Deepest first; each format node names its backing explicitly, the deepest null.
    for i, nd in enumerate(formats):
        layer = chain[n - 1 - i]
        check_eq(nd["driver"], str(layer[2]), f"{label}: layer {n - 1 - i} has driver {layer[2]}")
        if nd["driver"] == "qcow2":
            want = None if i == 0 else formats[i - 1]["node-name"]
            check_eq(nd.get("backing", "missing"), want, f"{label}: layer {n - 1 - i} backing is explicit")
        ro = (n - 1 - i) > 0 or read_only
        check_eq(nd["read-only"], ro, f"{label}: layer {n - 1 - i} read-only={ro}")
        check_eq(by_name[nd["file"]]["read-only"], ro, f"{label}: file node of layer {n - 1 - i} read-only={ro}")
    # The top layer's file is fd 0, i.e. /dev/fdset/1.
    check_eq(by_name[formats[-1]["file"]]["filename"], "/dev/fdset/1", f"{label}: fd 0 is the top layer")


def qemu_opens_chain(env, nodes, fds, label, hmp=()):
    """Starts QEMU with the fds and the description; runs HMP commands (qemu-io) and returns their outputs."""
    qemu = shutil.which("qemu-system-x86_64")
    if not check(qemu is not None, f"{label}: qemu-system-x86_64 installed"):
        return [], ""
    args = [qemu, "-nodefaults", "-display", "none", "-machine", "none", "-S", "-qmp", "stdio"]
    for i, fd in enumerate(fds):
        args += ["-add-fd", f"fd={fd},set={i + 1}"]
    for nd in nodes:
        args += ["-blockdev", json.dumps(nd)]
    for fd in fds:
        os.set_inheritable(fd, True)
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         pass_fds=fds, cwd=env.tmp)
    cmds = [{"execute": "qmp_capabilities"}, {"execute": "query-named-block-nodes", "arguments": {"flat": True}}]
    cmds += [{"execute": "human-monitor-command", "arguments": {"command-line": c}} for c in hmp]
    cmds += [{"execute": "quit"}]
    out, err = p.communicate("\n".join(json.dumps(c) for c in cmds) + "\n", timeout=60)
    replies = [json.loads(x) for x in out.splitlines() if x.strip().startswith("{")]
    result = [r for r in replies if isinstance(r.get("return"), list)]
    if not check(result, f"{label}: QEMU answered query-named-block-nodes ({err.strip()[:300]})"):
        return [], ""
    named = {n["node-name"]: n for n in result[0]["return"]}
    check(all(nd["node-name"] in named for nd in nodes), f"{label}: QEMU created every node from the description")
    files = [n["file"] for n in result[0]["return"] if n["drv"] == "file"]
    check(all(f.startswith("/dev/fdset/") for f in files), f"{label}: QEMU opened no path, only fdsets")
    top = named[nodes[-1]["node-name"]]
    check_eq(top["ro"], False, f"{label}: the top node is writable in QEMU")
    # qemu-io prints its results on QEMU's stdout; errors come back as the HMP command's return.
    return [r["return"] for r in replies if isinstance(r.get("return"), str)], out


def daemon_fds(env):
    """The daemon's open fds once it has finished what it was doing (it answers in order)."""
    ping(env)
    return len(os.listdir(f"/proc/{env.daemon.pid}/fd"))


def ping(env):
    peer = dbus.Interface(env.bus.get_object(BUS_NAME, "/org/vdisk1", introspect=False), "org.freedesktop.DBus.Peer")
    try:
        peer.Ping(timeout=5)
        return True
    except dbus.exceptions.DBusException:
        return False


def tamper(kind, path, env):
    """Puts something else where a layer's file was, after OpenDisk; returns how to undo it."""
    if kind == "owner":
        os.chown(path, 65534, 65534)
        return lambda: os.chown(path, 0, 0)
    aside = os.path.join(env.tmp, "aside")
    os.rename(path, aside)
    if kind == "fifo":
        os.mkfifo(path, 0o600)
    else:  # "replaced": the same bytes in another inode
        shutil.copyfile(aside, path)
        os.chmod(path, 0o600)

    def undo():
        os.unlink(path)
        os.rename(aside, path)
    return undo


def get_fds_error(lease, first, count):
    try:
        fds = lease.GetFds(dbus.UInt32(first), dbus.UInt32(count), timeout=20)
        for f in fds:
            os.close(f.take())
        return None, f"{len(fds)} fds"
    except dbus.exceptions.DBusException as e:
        return e.get_dbus_name(), str(e.get_dbus_message())


def fetch_rest(lease, have, count):
    fds = []
    while have + len(fds) < count:
        more = lease.GetFds(dbus.UInt32(have + len(fds)), dbus.UInt32(16))
        fds += [f.take() for f in more]
    return fds


def test_lazy_fds(env, vm):
    """`vm`/d has 200 layers: OpenDisk opens the 16 of its reply, GetFds each further page when asked."""
    chain = env.call("GetChain", vm, "d")
    files = [os.path.join(env.store, str(layer[1])) for layer in chain]
    inos = [os.stat(f).st_ino for f in files]
    baseline = daemon_fds(env)
    path, _, first = env.manager().OpenDisk(vm, "d", opts())
    first = [f.take() for f in first]
    lease = lease_iface(env, path)
    check_eq(len(first), 16, "lazy: the reply carries the first page")
    check_eq(daemon_fds(env), baseline, "lazy: OpenDisk keeps no fd open for the 184 not fetched yet")

    # Tampered with between OpenDisk and GetFds: Corrupt naming the layer, nothing handed out, nothing
    # left open, the lease still there; put back, the same page is handed out.
    for kind, idx in (("replaced", 20), ("fifo", 50)) + (((("owner", 37),) if root_only("a layer file given to another uid") else ())):
        page = idx // 16 * 16
        undo = tamper(kind, files[idx], env)
        try:
            err, msg = get_fds_error(lease, page, 16)
            check_eq(err, CORRUPT, f"lazy, {kind}: GetFds of the page with layer {idx} is Corrupt ({msg})")
            check(str(chain[idx][0]) in msg, f"lazy, {kind}: the error names the layer ({msg})")
            check(ping(env), f"lazy, {kind}: the daemon answers")
            check_eq(daemon_fds(env), baseline, f"lazy, {kind}: nothing of the refused page stays open")
        finally:
            undo()
    check(env.canary_unchanged(), "lazy: canary unchanged")
    rest = fetch_rest(lease, 16, len(chain))
    fds = first + rest
    check_eq(len(fds), 200, "lazy: after the refusals every page is still handed out once")
    check_eq([os.fstat(fd).st_ino for fd in fds], inos, "lazy: the fds fetched are the recorded inodes, in chain order")
    check_eq(fd_flags(fds[0]) & O_ACCMODE, os.O_RDWR, "lazy: the top is read-write")
    check(all(fd_flags(fd) & O_ACCMODE == os.O_RDONLY for fd in fds[1:]), "lazy: every backing layer is read-only")
    check_eq(get_fds_error(lease, 48, 16)[0], "org.freedesktop.DBus.Error.InvalidArgs", "lazy: a page fetched is not again")
    check_eq(daemon_fds(env), baseline, "lazy: every fd fetched, none left in the daemon")
    for fd in fds:
        os.close(fd)
    lease.Release()

    # A read-only lease with fds not fetched yet keeps the chain as it is until they are.
    path, _, first = env.manager().OpenDisk(vm, "d", opts(read_only=True))
    first = [f.take() for f in first]
    lease = lease_iface(env, path)
    err, msg = env.error("Snapshot", vm, "d", opts())
    check_eq(err, "org.vdisk1.Error.InUse", "lazy: Snapshot while a read-only lease has fds to fetch is InUse")
    check("not fetched" in str(msg) and env.bus.get_unique_name() in str(msg), f"lazy: the refusal says why ({msg})")
    before = env.call("GetChain", vm, "d")
    check_eq(before, chain, "lazy: the chain did not change")
    rest = fetch_rest(lease, 16, len(chain))
    check_eq([os.fstat(fd).st_ino for fd in first + rest], inos, "lazy: read-only lease, the recorded inodes")
    check(all(fd_flags(fd) & O_ACCMODE == os.O_RDONLY for fd in first + rest), "lazy: read-only lease, every fd read-only")
    err, _ = env.error("Snapshot", vm, "d", opts())
    check_eq(err, None, "lazy: once all are fetched, a read-only lease lets Snapshot through as before")
    for fd in first + rest:
        os.close(fd)
    lease.Release()


def test_lazy_limits(vdiskd):
    """Held-fd limits count fds not fetched yet, opened or not: 40 layers keep 24 held."""
    env = Env(vdiskd, "[Limits]\nMaxLeaseFdsPerCaller=30\nMaxLeaseFds=50\n")
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        env.call("CreateDisk", "vm", "d", "base", dbus.UInt64(0), opts())
        for _ in range(38):
            env.call("Snapshot", "vm", "d", opts())
        chain = env.call("GetChain", "vm", "d")
        files = [os.path.join(env.store, str(layer[1])) for layer in chain]
        baseline = daemon_fds(env)
        m = env.manager()
        path, _, first = m.OpenDisk("vm", "d", opts(read_only=True))
        first = [f.take() for f in first]
        lease = lease_iface(env, path)
        check_eq(daemon_fds(env), baseline, "limits: the 24 held fds are not open in the daemon")
        err, msg = env.error("OpenDisk", "vm", "d", opts(read_only=True))
        check_eq(err, "org.vdisk1.Error.LimitExceeded", "limits: 24 + 24 held fds are over MaxLeaseFdsPerCaller=30")
        check_eq(str(msg), "You hold too many file descriptors of leases not yet fetched with GetFds "
                           "(this lease would keep 24, limit 30); fetch or release them first", "limits: the message")
        other = dbus.bus.BusConnection(env.address)
        mo = dbus.Interface(other.get_object(BUS_NAME, "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
        po, _, fo = mo.OpenDisk("vm", "d", opts(read_only=True))
        for f in fo:
            os.close(f.take())
        check(True, "limits: another caller's 24 are granted (48 held in all, MaxLeaseFds=50)")
        try:
            mo.OpenDisk("vm", "d", opts(read_only=True))
            check(False, "limits: 72 held in total are over MaxLeaseFds=50")
        except dbus.exceptions.DBusException as e:
            check_eq((e.get_dbus_name(), str(e.get_dbus_message())),
                     ("org.vdisk1.Error.LimitExceeded", "Too many file descriptors are held for leases (limit 50)"),
                     "limits: MaxLeaseFds counts fds not opened yet")
        lease_iface(env, po, other).Release()
        other.close()
        # A refused GetFds hands nothing out: the fds stay held.
        undo = tamper("replaced", files[20], env)
        try:
            check_eq(get_fds_error(lease, 16, 16)[0], CORRUPT, "limits: a tampered layer refuses the page")
        finally:
            undo()
        check_eq(env.error("OpenDisk", "vm", "d", opts(read_only=True))[0], "org.vdisk1.Error.LimitExceeded",
                 "limits: after a refused GetFds the fds are still held")
        more = [f.take() for f in lease.GetFds(dbus.UInt32(16), dbus.UInt32(16))]
        check_eq(len(more), 16, "limits: a page fetched")
        check_eq(env.error("OpenDisk", "vm", "d", opts(read_only=True))[0], "org.vdisk1.Error.LimitExceeded",
                 "limits: 8 + 24 held are still over 30")
        more += fetch_rest(lease, 32, len(chain))
        err, res = env.error("OpenDisk", "vm", "d", opts(read_only=True))
        check_eq(err, None, "limits: all fetched, a new lease keeping 24 is granted")
        for f in res[2]:
            os.close(f.take())
        for fd in first + more:
            os.close(fd)
    finally:
        env.close()


def main():
    env = Env(sys.argv[1])
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
        env.call("CreateImage", "rawbase", "raw", dbus.UInt64(GiB), opts())
        env.call("CreateVM", "vm", dbus.UInt32(65534), opts())
        env.call("CreateDisk", "vm", "d", "base", dbus.UInt64(0), opts())
        env.call("CreateDisk", "vm", "r", "rawbase", dbus.UInt64(0), opts())
        first = env.call("GetChain", "vm", "d")[0]
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 64k", os.path.join(env.store, str(first[1]))],
                       check=True, capture_output=True, cwd=os.path.join(env.store, "images"))
        for _ in range(2):
            env.call("Snapshot", "vm", "d", opts())

        # ---- a small chain: modes, description, QEMU ----
        chain = env.call("GetChain", "vm", "d")
        path, nodes, fds, lease, props = open_all(env, "vm", "d")
        check_eq(len(fds), len(chain), "one fd per layer")
        flags = [fd_flags(fd) for fd in fds]
        check_eq(flags[0] & O_ACCMODE, os.O_RDWR, "top layer fd is read-write")
        check(all(f & O_ACCMODE == os.O_RDONLY for f in flags[1:]), "backing layer fds are read-only")
        inos = [os.fstat(fd).st_ino for fd in fds]
        want = [os.stat(os.path.join(env.store, str(layer[1]))).st_ino for layer in chain]
        check_eq(inos, want, "fds are the chain's files, top first")
        check_blockdev(nodes, chain, "d", False, "rw lease")
        check_eq(str(props.Get("org.vdisk1.Lease", "VM")), "vm", "Lease.VM")
        check_eq(bool(props.Get("org.vdisk1.Lease", "ReadOnly")), False, "Lease.ReadOnly")

        # While leased read-write: InUse naming the holder, for everything that changes the chain.
        for method, args in (("Snapshot", ("vm", "d", opts())), ("DeleteDisk", ("vm", "d")), ("DeleteVM", ("vm",)),
                             ("OpenDisk", ("vm", "d", opts())), ("OpenDisk", ("vm", "d", opts(read_only=True)))):
            err, msg = env.error(method, *args)
            check_eq(err, "org.vdisk1.Error.InUse", f"{method} while leased read-write is InUse")
            check(env.bus.get_unique_name() in str(msg) and "pid" in str(msg), f"{method}: message names the holder")
        check_eq(env.error("Snapshot", "vm", "r", opts())[0], None, "another disk of the VM is not affected")

        # Only the holder may use the lease.
        err, _ = env.call_as(os.geteuid(), "ListImages")
        check_eq(err, None, "a second connection works")
        other = dbus.bus.BusConnection(env.address)
        try:
            lease_iface(env, path, other).Release()
            check(False, "Release by another connection is refused")
        except dbus.exceptions.DBusException as e:
            check_eq(e.get_dbus_name(), "org.freedesktop.DBus.Error.AccessDenied", "Release by a non-holder")
        other.close()

        # Guest-side I/O through QEMU: writes land in the top layer only, reads see the lower layers.
        base_file = os.path.join(env.store, str(chain[-1][1]))
        lower = [os.path.join(env.store, str(layer[1])) for layer in chain[1:]]
        digests = {f: open(f, "rb").read() for f in lower}
        outputs, text = qemu_opens_chain(env, nodes, fds, "qemu", hmp=(
            'qemu-io d "read -P 0x33 1M 64k"',
            'qemu-io d "write -P 0x77 4M 64k"',
            'qemu-io d "read -P 0x77 4M 64k"',
            'qemu-io vdisk-layer-1 "write -P 0x66 0 512"',
        ))
        check("read 65536/65536 bytes at offset 1048576" in text and "Pattern verification failed" not in text,
              "QEMU reads the lower layer's data through the chain and its own write back")
        check("wrote 65536/65536 bytes at offset 4194304" in text, "QEMU writes to the top layer")
        check(len(outputs) == 4 and "read-only" in outputs[3] and "offset 0\n" not in text,
              f"QEMU cannot write a backing node ({outputs[3:]})")
        check(all(open(f, "rb").read() == digests[f] for f in lower), "backing layers' bytes unchanged")
        for fd in fds:
            os.close(fd)
        lease.Release()
        m = subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2", os.path.join(env.store, str(chain[0][1]))],
                           capture_output=True, text=True, cwd=os.path.join(env.store, "images"))
        top_data = [e for e in json.loads(m.stdout) if e["depth"] == 0 and e["data"]]
        check_eq([(e["start"], e["length"]) for e in top_data], [(4 << 20, 64 << 10)], "the write is in the top layer")
        check_eq(env.error("Snapshot", "vm", "d", opts())[0], None, "Snapshot works again after Release")
        check_eq(env.error("Verify", "vm")[1], [], "nothing changed: no quarantine")

        # Read-only leases coexist and hand out only read-only fds.
        p1, n1, f1, l1, _ = open_all(env, "vm", "d", read_only=True)
        p2, n2, f2, l2, _ = open_all(env, "vm", "d", read_only=True)
        check(all(fd_flags(fd) & O_ACCMODE == os.O_RDONLY for fd in f1 + f2), "read-only lease: every fd read-only")
        check_blockdev(n1, env.call("GetChain", "vm", "d"), "d", True, "ro lease")
        check_eq(env.error("OpenDisk", "vm", "d", opts())[0], "org.vdisk1.Error.InUse", "no writer beside readers")
        for fd in f1 + f2:
            os.close(fd)
        l1.Release()
        l2.Release()

        # A raw base: raw driver node, no backing key.
        path, nodes, fds, lease, _ = open_all(env, "vm", "r")
        raw_nodes = [nd for nd in nodes if nd["driver"] == "raw"]
        check(len(raw_nodes) == 1 and "backing" not in raw_nodes[0], "raw layer: driver raw, no backing option")
        for fd in fds:
            os.close(fd)
        lease.Release()

        # ---- the holder leaves the bus: the lease ends ----
        conn = dbus.bus.BusConnection(env.address)
        path, nodes, fds, lease, _ = open_all(env, "vm", "d", bus=conn)
        for fd in fds:
            os.close(fd)
        conn.close()
        for _ in range(100):
            if env.error("Snapshot", "vm", "d", opts())[0] is None:
                break
            time.sleep(0.05)
        else:
            check(False, "lease ended when the holder left the bus")

        # ---- a QEMU-style image lock held elsewhere: InUse ----
        top = env.call("GetChain", "vm", "d")[0]
        holder = os.open(os.path.join(env.store, str(top[1])), os.O_RDONLY)
        ofd_lock(holder, 101)
        check_eq(env.error("OpenDisk", "vm", "d", opts())[0], "org.vdisk1.Error.InUse", "a locked top layer is InUse")
        os.close(holder)

        # ---- the top header changed while nobody held the disk: OpenDisk reads it through the very fd it
        # would hand out and refuses, without quarantining; the header put back, the disk opens again ----
        top_path = os.path.join(env.store, str(top[1]))
        info = json.loads(qemu_img("info", "--output=json", "-f", "qcow2", top_path).stdout)
        check_eq(qemu_img("rebase", "-u", "-f", "qcow2", "-b", "canary", "-F", "raw", top_path).returncode, 0,
                 "header rewritten behind the daemon's back")
        for ro in (False, True):
            err, msg = env.error("OpenDisk", "vm", "d", opts(read_only=ro))
            check_eq(err, "org.vdisk1.Error.Corrupt", f"a changed top header is refused (read_only={ro})")
            check(str(msg).startswith("Disk 'd' of VM 'vm' differs from its records: header's backing file name differs"),
                  f"the refusal names the difference: {msg}")
        check(env.canary_unchanged(), "canary unchanged")
        check_eq(qemu_img("rebase", "-u", "-f", "qcow2", "-b", info["backing-filename"], "-F",
                          info["backing-filename-format"], top_path).returncode, 0, "header put back")
        check_eq(env.call("Verify", "vm"), [], "header put back: nothing to report, no quarantine")
        path, nodes, fds, lease, _ = open_all(env, "vm", "d")

        # ---- quarantine: the header was rewritten under the lease ----
        qemu_img("rebase", "-u", "-f", "qcow2", "-b", "canary", "-F", "raw", os.path.join(env.store, str(top[1])))
        for fd in fds:
            os.close(fd)
        lease.Release()
        err, msg = env.error("OpenDisk", "vm", "d", opts())
        check_eq(err, "org.vdisk1.Error.Corrupt", "a quarantined disk is refused")
        check("quarantined" in str(msg), "the refusal says the disk is quarantined")
        problems = env.call("Verify", "vm")
        check(any("backing file name" in str(p[2]) for p in problems), "Verify reports what changed")
        env.restart()
        check_eq(env.error("OpenDisk", "vm", "d", opts())[0], "org.vdisk1.Error.Corrupt", "quarantine survives a restart")
        check(env.canary_unchanged(), "canary unchanged")

        # ---- authorization ----
        if root_only("OpenDisk as uids 1 and 65534"):
            check_eq(env.call_as(1, "OpenDisk", "vm", "r", {})[0], "org.freedesktop.DBus.Error.AccessDenied",
                     "a non-owner may not open")
            check_eq(env.call_as(1, "OpenDisk", "nope", "r", {})[0], "org.freedesktop.DBus.Error.AccessDenied",
                     "nor learn whether a VM exists")
            err, res = env.call_as(65534, "OpenDisk", "vm", "r", {})
            check_eq(err, None, "the VM's owner may open")
        check_eq(env.error("OpenDisk", "vm", "r", opts(bogus=True))[0], "org.freedesktop.DBus.Error.InvalidArgs",
                 "unknown option refused")
        check_eq(env.error("OpenDisk", "vm", "missing", opts())[0], "org.vdisk1.Error.NotFound", "unknown disk")

        # ---- a holder killed by SIGKILL: its lease ends ----
        holder = subprocess.Popen([sys.executable, "-c", f"""
import dbus, sys, time
bus = dbus.bus.BusConnection({env.address!r})
m = dbus.Interface(bus.get_object("org.vdisk1", "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
m.OpenDisk("vm", "r", dbus.Dictionary({{}}, signature="sv"))
print("open", flush=True)
time.sleep(600)
"""], stdout=subprocess.PIPE, text=True)
        check_eq(holder.stdout.readline().strip(), "open", "a holder process opened the disk")
        check_eq(env.error("Snapshot", "vm", "r", opts())[0], "org.vdisk1.Error.InUse", "InUse while the holder lives")
        holder.kill()
        holder.wait()
        for _ in range(100):
            if env.error("Snapshot", "vm", "r", opts())[0] is None:
                break
            time.sleep(0.05)
        else:
            check(False, "the lease of a killed holder ends")

        # ---- no fd leak over 10,000 OpenDisk/Release cycles ----
        pid = env.daemon.pid
        baseline = len(os.listdir(f"/proc/{pid}/fd"))
        mgr = env.manager()
        for _ in range(10000):
            path, _, fds = mgr.OpenDisk("vm", "r", opts(read_only=True))
            for f in fds:
                os.close(f.take())
            lease_iface(env, path).Release()
        check_eq(len(os.listdir(f"/proc/{pid}/fd")), baseline, "daemon fd count back to baseline after 10,000 cycles")

        # ---- 200 layers through a bus with the stock fd limits ----
        env.call("CreateVM", "deep", dbus.UInt32(0), opts())
        env.call("CreateDisk", "deep", "d", "base", dbus.UInt64(0), opts())
        for _ in range(198):
            env.call("Snapshot", "deep", "d", opts())
        chain = env.call("GetChain", "deep", "d")
        check_eq(len(chain), 200, "a 200-layer chain")
        path, nodes, fds, lease, _ = open_all(env, "deep", "d")
        check_eq(len(fds), 200, "all 200 fds received through 16-fd pages")
        check_eq([os.fstat(fd).st_ino for fd in fds],
                 [os.stat(os.path.join(env.store, str(layer[1]))).st_ino for layer in chain], "in chain order")
        check_blockdev(nodes, chain, "d", False, "200 layers")
        check(env.bus.name_has_owner(BUS_NAME), "vdiskd is still on the bus")
        try:
            lease.GetFds(dbus.UInt32(0), dbus.UInt32(1))
            check(False, "fds are handed out once")
        except dbus.exceptions.DBusException as e:
            check_eq(e.get_dbus_name(), "org.freedesktop.DBus.Error.InvalidArgs", "a second GetFds of fd 0 is refused")
        qemu_opens_chain(env, nodes, fds, "qemu 200 layers")
        for fd in fds:
            os.close(fd)
        lease.Release()

        test_lazy_fds(env, "deep")
    finally:
        env.close()
    test_lazy_limits(sys.argv[1])
    finish()


if __name__ == "__main__":
    main()
