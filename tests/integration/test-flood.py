# SPDX-License-Identifier: LGPL-2.1-or-later
"""Flood (issue 7): 50 concurrent clients issuing 1,000 mixed calls each against one daemon.

Each client is a separate process (this script with --worker, started before it connects anywhere)
with its own bus connection; half of them run as root, half as the owner uid of some VMs (the child
drops to it with setgroups/setresgid/setresuid before connecting, so the bus sees that uid). Calls:
GetChain, Snapshot, OpenDisk (read-write and read-only, paging with Lease.GetFds past 16 fds) and
Release (some leases held for a while, some ended by closing an extra connection, some left to the
client's exit), Verify, Inspect on a pool of crafted images (malformed qcow2 headers, foreign magics,
random bytes, bit flips) passed as fds, and for root clients a few Rebase / Commit / flatten jobs on
a disk of their own. Every D-Bus call to vdiskd counts towards the 1,000 (VDISK_FLOOD_CALLS and
VDISK_FLOOD_CLIENTS reduce them for a quick run; the defaults are 1000 and 50).

Expected: no error other than InUse and LimitExceeded; every Inspect answer identical to the one the
same file got before the flood (a JSON verdict or UnsafeImage / Corrupt / InvalidArgs); every job
done. Afterwards: the same vdiskd pid, no sanitizer report in its log, its fd count exactly at the
baseline taken after a warm-up (once all leases ended), VmRSS within +8 MiB of it (not checked in a
sanitizer build, whose quarantine keeps freed memory: LeakSanitizer checks leaks at exit there),
Verify clean for every VM, no journal entry, records consistent with each other and with the files,
GetChain equal to the records, a read-write OpenDisk possible on every disk (no lease left), and
qemu-img check clean on every top layer, the catalog images and 50 random other layers (each opened
alone, "backing": null). The Inspect answers are judged once, before the flood (an unexpected error
name there is one failure, not one per call).

Last, job progress under load: a flatten that takes ~0.1 s on an idle daemon must finish within
max(5 s, 20x that) while 8 unprivileged callers (Inspect is open to anyone) keep the daemon busy for
STARVE_SECONDS; the daemon steps jobs at idle event priority, so a busy bus must not stall them.

Figures printed: calls/s, vdiskd's CPU time, calls and errors by method and name, jobs and their
durations, fds and VmRSS before and after. VDISK_TEST_SEED reproduces a run's choices."""

import json
import os
import random
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

E = "org.vdisk1.Error."
INUSE, LIMIT = E + "InUse", E + "LimitExceeded"
INSPECT_ERRORS = {E + "UnsafeImage", E + "Corrupt", "org.freedesktop.DBus.Error.InvalidArgs"}
# Owner uid of vm0..vm4 (nobody); vm5..vm9 and the job VM belong to root. Not as root: the test user,
# and every client is that user (an admin through its group, vdisktest.Env).
OWNER = 65534 if os.geteuid() == 0 else os.geteuid()
KiB, MiB = 1 << 10, 1 << 20
RSS_TOLERANCE = 8 * MiB
SNAPSHOTS_PER_CLIENT_AND_DISK = 12  # 50 clients x 12 + the initial layers stays under MaxChainDepth 1024
STARVE_SECONDS = 12
DEEP_LAYERS = 20                    # > 16: OpenDisk on the deep disks pages with GetFds
N_VMS = 10
SHARED_DISKS = ["ov", "cp", "bq", "br", "rov"]
JOB_VM = "jobs"


# ---------------------------------------------------------------------------------------------------
# The worker: one client process.

def worker(cfg):
    rnd = random.Random(cfg["seed"])
    pool = [(os.open(p, os.O_RDONLY | os.O_CLOEXEC), fmt, want) for p, fmt, want in cfg["inspect"]]
    if cfg["uid"] not in (0, os.geteuid()):  # not root: "root's" clients are the test user too
        os.setgroups([])
        os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    import dbus

    bus = dbus.bus.BusConnection(cfg["address"])
    mgr = dbus.Interface(bus.get_object("org.vdisk1", "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 1

    if cfg.get("loop_seconds"):
        return inspect_loop(cfg, mgr, pool)

    n = cfg["calls"]
    stats = {"calls": 0, "by_method": {}, "errors": {}, "unexpected": [], "jobs": [], "snapshots": 0,
             "disconnect_leases": 0, "left_leases": 0, "inspect_mismatch": 0}
    TO = 120

    def note(method, err=None, detail=None, allowed=(INUSE, LIMIT)):
        stats["calls"] += 1
        stats["by_method"][method] = stats["by_method"].get(method, 0) + 1
        if err is None:
            return True
        key = f"{method} {err.rsplit('.', 1)[-1]}"
        stats["errors"][key] = stats["errors"].get(key, 0) + 1
        if err not in allowed and len(stats["unexpected"]) < 20:
            stats["unexpected"].append([method, err, detail])
        return False

    def call(method, fn, *args, allowed=(INUSE, LIMIT)):
        try:
            r = fn(*args, timeout=TO)
        except dbus.exceptions.DBusException as e:
            note(method, e.get_dbus_name(), f"{args!r}: {e.get_dbus_message()}", allowed)
            return None
        note(method)
        return r

    def lease_iface(path, b=bus):
        return dbus.Interface(b.get_object("org.vdisk1", path, introspect=False), "org.vdisk1.Lease")

    vms = cfg["vms"]
    disks = {vm: list(SHARED_DISKS) + (["deep"] if vm in ("vm0", "vm5") else []) for vm in vms}
    snaps = {}
    held = []  # lease paths held across iterations

    def pick():
        vm = rnd.choice(vms)
        return vm, rnd.choice(disks[vm])

    def open_disk(vm, disk, ro, b=bus, m=mgr):
        r = call("OpenDisk", m.OpenDisk, vm, disk, dbus.Dictionary({"read_only": dbus.Boolean(ro)}, signature="sv"))
        if r is None:
            return None
        path, blockdev, fds = r
        fds = [f.take() for f in fds]
        total = max(int(nd["filename"].rsplit("/", 1)[1]) for nd in json.loads(str(blockdev)) if nd["driver"] == "file")
        lease = lease_iface(path, b)
        while len(fds) < total:
            more = call("GetFds", lease.GetFds, dbus.UInt32(len(fds)), dbus.UInt32(16))
            if more is None:
                break
            if len(more) == 0 or len(more) > 16:
                note("GetFds", "test.BadFdCount", f"{len(more)} fds")
                break
            fds += [f.take() for f in more]
        for fd in fds:
            os.close(fd)
        return path

    # Jobs (root clients), on a chain [top, L2, L1, base]: commit L2 into L1, rebase the top onto base (the
    # lowest layer), commit a new top, flatten.
    job_plan = []
    if cfg.get("job_disk"):
        marks = sorted(rnd.sample(range(n // 10, n - n // 10), 4)) if n >= 50 else []
        job_plan = [[m, kind] for m, kind in zip(marks, ["commit-middle", "rebase-lower", "commit-top", "flatten"])]
    job = None  # (path, kind, props)

    def start_job(kind):
        d = cfg["job_disk"]
        chain = call("GetChain", mgr.GetChain, JOB_VM, d)
        if chain is None:
            return None
        ids = [str(c[0]) for c in chain]
        empty = dbus.Dictionary({}, signature="sv")
        if kind == "commit-middle":
            if len(ids) < 4:
                return "skip"
            r = call("Commit", mgr.Commit, JOB_VM, d, ids[1], empty)
        elif kind == "rebase-lower":
            if len(ids) < 3:
                return "skip"
            r = call("Rebase", mgr.Rebase, JOB_VM, d, ids[-1], empty)
        elif kind == "commit-top":
            top = call("Snapshot", mgr.Snapshot, JOB_VM, d, empty)
            if top is None:
                return None
            r = call("Commit", mgr.Commit, JOB_VM, d, str(top), empty)
        else:
            r = call("Rebase", mgr.Rebase, JOB_VM, d, "", empty)
        if r is None:
            return None
        props = dbus.Interface(bus.get_object("org.vdisk1", str(r), introspect=False), "org.freedesktop.DBus.Properties")
        return (str(r), kind, props)

    def job_ended(st, counted):
        nonlocal job
        en = str(job[2].Get("org.vdisk1.Job", "ErrorName", timeout=TO)) if st != "done" else ""
        if counted:
            note("Get")
        stats["jobs"].append([job[1], st, en, time.monotonic() - job[3], job[4], time.monotonic() - t0, counted])
        if st != "done" and len(stats["unexpected"]) < 20:
            stats["unexpected"].append(["job " + job[1], en, st])
        job = None

    t0 = time.monotonic()
    it = 0
    while stats["calls"] < n:
        i = stats["calls"]
        it += 1
        # A running job: its State is read every 10th iteration.
        if job and it % 10 == 0:
            st = call("Get", job[2].Get, "org.vdisk1.Job", "State")
            if st is not None and str(st) != "running":
                job_ended(str(st), True)
            continue
        if not job and job_plan and i >= job_plan[0][0]:
            res = start_job(job_plan[0][1])
            if res == "skip":
                job_plan.pop(0)
            elif res is not None:
                job = (*res, time.monotonic(), time.monotonic() - t0)
                job_plan.pop(0)
            else:
                job_plan[0][0] = i + 20  # refused (LimitExceeded): try again a little later
            continue

        x = rnd.random()
        if x < 0.25:
            vm, disk = pick()
            call("GetChain", mgr.GetChain, vm, disk)
        elif x < 0.28:
            vm, disk = pick()
            if snaps.get((vm, disk), 0) >= SNAPSHOTS_PER_CLIENT_AND_DISK:
                continue
            snaps[(vm, disk)] = snaps.get((vm, disk), 0) + 1
            if call("Snapshot", mgr.Snapshot, vm, disk, dbus.Dictionary({}, signature="sv")) is not None:
                stats["snapshots"] += 1
        elif x < 0.52:
            vm, disk = pick()
            path = open_disk(vm, disk, rnd.random() < 0.5)
            if path:
                held.append(path)
            while held and (len(held) > 3 or rnd.random() < 0.6):
                call("Release", lease_iface(held.pop(0)).Release)
        elif x < 0.53:
            # A lease ended by its holder leaving the bus.
            b2 = dbus.bus.BusConnection(cfg["address"])
            m2 = dbus.Interface(b2.get_object("org.vdisk1", "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
            vm, disk = pick()
            if open_disk(vm, disk, rnd.random() < 0.5, b2, m2):
                stats["disconnect_leases"] += 1
            b2.close()
        elif x < 0.59:
            vm = rnd.choice(vms)
            r = call("Verify", mgr.Verify, vm)
            if r and len(stats["unexpected"]) < 20:
                stats["unexpected"].append(["Verify", "test.Problems", f"{vm}: {[tuple(str(v) for v in p) for p in r][:3]}"])
        else:
            fd, fmt, want = rnd.choice(pool)
            try:
                got = ["json", json.loads(str(mgr.Inspect(dbus.types.UnixFd(fd), fmt, timeout=TO)))]
                note("Inspect")
            except dbus.exceptions.DBusException as e:
                got = ["error", e.get_dbus_name()]
                # The answer this file got before the flood is judged there, once.
                note("Inspect", e.get_dbus_name(), e.get_dbus_message(), allowed=(LIMIT, *INSPECT_ERRORS, want[1]))
            if got != want and got != ["error", LIMIT]:
                stats["inspect_mismatch"] += 1
                if len(stats["unexpected"]) < 20:
                    stats["unexpected"].append(["Inspect", "test.Mismatch", f"{fmt}: got {got!r}, want {want!r}"])

    stats["elapsed"] = time.monotonic() - t0
    stats["jobs_not_started"] = len(job_plan)
    # A job still running at the end: wait for it (uncounted reads).
    while job:
        st = str(job[2].Get("org.vdisk1.Job", "State", timeout=TO))
        if st != "running":
            job_ended(st, False)
        else:
            time.sleep(0.05)
    for p in held:
        try:
            lease_iface(p).Release(timeout=TO)
        except dbus.exceptions.DBusException as e:
            stats["unexpected"].append(["Release (final)", e.get_dbus_name(), e.get_dbus_message()])
    # Some clients leave with leases open: the daemon must end them when the connection goes.
    if cfg["leave_leases"]:
        for _ in range(2):
            vm, disk = pick()
            try:
                path, _, fds = mgr.OpenDisk(vm, disk, dbus.Dictionary({"read_only": dbus.Boolean(True)}, signature="sv"),
                                            timeout=TO)
                for f in fds:
                    os.close(f.take())
                stats["left_leases"] += 1
            except dbus.exceptions.DBusException as e:
                if e.get_dbus_name() not in (INUSE, LIMIT):
                    stats["unexpected"].append(["OpenDisk (left)", e.get_dbus_name(), e.get_dbus_message()])
    print("RESULT " + json.dumps(stats), flush=True)
    return 0


def inspect_loop(cfg, mgr, pool):
    """Inspect of one (expensive, valid) image in a loop for loop_seconds: a caller anyone may be."""
    import dbus

    fd, fmt, _ = pool[0]
    calls, errors = 0, {}
    end = time.monotonic() + cfg["loop_seconds"]
    while time.monotonic() < end:
        try:
            mgr.Inspect(dbus.types.UnixFd(fd), fmt, timeout=120)
        except dbus.exceptions.DBusException as e:
            errors[e.get_dbus_name()] = errors.get(e.get_dbus_name(), 0) + 1
        calls += 1
    print("RESULT " + json.dumps({"calls": calls, "errors": errors}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------
# Crafted images for Inspect. Everything is built here, in the test's directory; names inside them
# point at the harness's canary (also in the test's directory) and nowhere else.

QCOW2_EXT_BACKING_FORMAT, QCOW2_EXT_FEATURES, QCOW2_EXT_DATA_FILE, QCOW2_EXT_CRYPTO = 0xE2792ACA, 0x6803F857, 0x44415441, 0x0537BE77


def build_inspect_pool(env, rnd):
    d = os.path.join(env.tmp, "inspect")
    os.mkdir(d)
    os.chmod(d, 0o755)
    base = os.path.join(d, "valid.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", base, str(4 * MiB)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 192k", "-c", "write -P 0xa5 3M 64k", base],
                   check=True, capture_output=True)
    v2 = os.path.join(d, "valid-v2.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10,cluster_size=4096", v2, str(MiB)], check=True)
    good = open(base, "rb").read()
    hdr_len = struct.unpack(">I", good[100:104])[0]
    canary = env.canary

    def put(buf, off, fmt, val):
        struct.pack_into(fmt, buf, off, val)

    def with_exts(buf, exts, backing=None):
        """Rewrites the extension area (and the backing name right after it)."""
        b = bytearray(buf)
        pos = hdr_len
        for typ, data in exts:
            length = len(data) if isinstance(data, bytes) else data[1]
            body = data if isinstance(data, bytes) else data[0]
            b[pos:pos + 8] = struct.pack(">II", typ, length)
            padded = body + b"\0" * (-len(body) % 8)
            b[pos + 8:pos + 8 + len(padded)] = padded
            pos += 8 + len(padded)
        b[pos:pos + 8] = b"\0" * 8
        pos += 8
        if backing is not None:
            b[pos:pos + len(backing)] = backing
            put(b, 8, ">Q", pos)
            put(b, 16, ">I", len(backing))
        return b

    cases = {}

    def case(name, data, fmts=("qcow2",)):
        cases[name] = (bytes(data), fmts)

    def mut(name, *edits, fmts=("qcow2",)):
        b = bytearray(good)
        for off, fmt, val in edits:
            put(b, off, fmt, val)
        case(name, b, fmts)

    case("valid", good, ("qcow2", "raw"))
    case("valid-v2", open(v2, "rb").read())
    mut("cluster-bits-8", (20, ">I", 8))
    mut("cluster-bits-22", (20, ">I", 22))
    mut("cluster-bits-huge", (20, ">I", 0xFFFFFFFF))
    mut("size-2^63", (24, ">Q", 1 << 63))
    mut("size-unaligned", (24, ">Q", 4 * MiB + 1))
    mut("size-1EiB", (24, ">Q", 1 << 60))
    mut("crypt-aes", (32, ">I", 1))
    mut("crypt-luks", (32, ">I", 2))
    mut("l1-size-huge", (36, ">I", 0x7FFFFFFF))
    mut("l1-past-eof", (40, ">Q", 1 << 40))
    mut("l1-unaligned", (40, ">Q", 0x30008))
    mut("l1-in-header", (40, ">Q", 0))
    mut("refcount-past-eof", (48, ">Q", 1 << 45))
    mut("refcount-clusters-huge", (56, ">I", 0xFFFFFFFF))
    mut("refcount-overlaps-l1", (48, ">Q", struct.unpack(">Q", good[40:48])[0]))
    mut("snapshots-huge", (60, ">I", 0xFFFFFFFF), (64, ">Q", 1 << 41))
    mut("snapshots-unaligned", (60, ">I", 1), (64, ">Q", 0x10001))
    mut("dirty", (72, ">Q", 1))
    mut("corrupt-bit", (72, ">Q", 2))
    mut("unknown-incompatible", (72, ">Q", 1 << 40))
    mut("compression-bit-no-type", (72, ">Q", 8))
    mut("data-file-bit-no-ext", (72, ">Q", 4))
    mut("refcount-order-7", (96, ">I", 7))
    mut("header-length-50", (100, ">I", 50))
    mut("header-length-huge", (100, ">I", 0xFFFFFFF8))
    mut("header-length-odd", (100, ">I", 109))
    mut("compression-type-unknown", (104, ">B", 7))
    mut("version-1", (4, ">I", 1))
    mut("version-4", (4, ">I", 4))
    # Backing and data-file names: only the canary, never a real host file.
    case("backing-canary-abs", with_exts(good, [], canary.encode()))
    case("backing-canary-rel", with_exts(good, [(QCOW2_EXT_BACKING_FORMAT, b"raw")], b"../canary"))
    case("backing-json", with_exts(good, [], b'json:{"driver":"raw","file":{"driver":"file","filename":"' +
                                        canary.encode() + b'"}}'))
    case("backing-nbd", with_exts(good, [], b"nbd://127.0.0.1:1/x"))
    case("backing-newline-nul", with_exts(good, [], b"../can\nary\0x"))
    b = with_exts(good, [], canary.encode())
    put(b, 16, ">I", 2000)
    case("backing-too-long", b)
    b = with_exts(good, [], canary.encode())
    put(b, 8, ">Q", 65536 - 4)
    case("backing-past-cluster0", b)
    case("backing-format-long", with_exts(good, [(QCOW2_EXT_BACKING_FORMAT, b"q" * 20)], canary.encode()))
    b = with_exts(good, [(QCOW2_EXT_DATA_FILE, canary.encode())])
    put(b, 72, ">Q", 4)
    case("data-file-canary", b)
    b = with_exts(good, [(QCOW2_EXT_DATA_FILE, canary.encode())])
    put(b, 72, ">Q", 4)
    put(b, 88, ">Q", 2)
    case("data-file-raw-canary", b)
    case("ext-length-wrap", with_exts(good, [(QCOW2_EXT_FEATURES, (b"", 0xFFFFFFF8))]))
    case("ext-length-past-cluster", with_exts(good, [(QCOW2_EXT_FEATURES, (b"", 70000))]))
    case("ext-duplicate", with_exts(good, [(QCOW2_EXT_BACKING_FORMAT, b"raw"), (QCOW2_EXT_BACKING_FORMAT, b"raw")],
                                    canary.encode()))
    case("ext-crypto", with_exts(good, [(QCOW2_EXT_CRYPTO, struct.pack(">QQ", 0x30000, 4096))]))
    # Tables and entries.
    l1 = struct.unpack(">Q", good[40:48])[0]
    mut("l2-past-eof", (l1, ">Q", (1 << 63) | (1 << 40)))
    mut("l2-unaligned", (l1, ">Q", (1 << 63) | 0x20200))
    mut("l2-in-header", (l1, ">Q", (1 << 63)))
    mut("l1-reserved-bits", (l1, ">Q", struct.unpack(">Q", good[l1:l1 + 8])[0] | 0x1FF))
    rt = struct.unpack(">Q", good[48:56])[0]
    mut("refblock-past-eof", (rt, ">Q", 1 << 44))
    mut("refblock-zero", (rt, ">Q", 0))
    # Foreign content and truncation.
    case("empty", b"", ("qcow2", "raw"))
    case("truncated-50", good[:50])
    case("truncated-header", good[:hdr_len + 4])
    case("truncated-tables", good[:len(good) // 2])
    case("random-64k", rnd.randbytes(65536), ("qcow2", "raw"))
    case("random-qfi", b"QFI\xfb" + rnd.randbytes(65532), ("qcow2", "raw"))
    case("luks", b"LUKS\xba\xbe\0\x01" + rnd.randbytes(4088), ("qcow2", "raw"))
    case("vmdk", b"KDMV" + rnd.randbytes(4092), ("qcow2", "raw"))
    case("vmdk-desc", b"# Disk DescriptorFile\nRW 8 FLAT \"" + canary.encode() + b"\" 0\n" + b"\0" * 4000, ("raw",))
    case("qed", b"QED\0" + rnd.randbytes(4092), ("qcow2", "raw"))
    case("vdi", b"<<< Oracle VM VirtualBox Disk Image >>>\n" + b"\0" * 24 + struct.pack("<I", 0xBEDA107F) + b"\0" * 4028,
         ("raw",))
    case("iso-and-qcow2", good[:32768] + b"\x01CD001" + good[32774:], ("qcow2", "raw"))
    case("zeros", b"\0" * 65536, ("qcow2", "raw"))
    for k in range(20):
        b = bytearray(good)
        for _ in range(rnd.randint(1, 8)):
            pos = rnd.randrange(0, 512 if k % 2 else len(b))
            b[pos] ^= 1 << rnd.randrange(8)
        case(f"bitflip-{k}", b)
    for k in range(6):
        b = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            off = rnd.choice([8, 16, 20, 24, 32, 36, 40, 48, 56, 60, 64, 72, 80, 88, 96, 100])
            put(b, off, ">I", rnd.choice([0, 1, 0xFFFFFFFF, 0x80000000, rnd.getrandbits(32)]))
        case(f"field-{k}", b)

    out = []
    for name, (data, fmts) in cases.items():
        p = os.path.join(d, name)
        with open(p, "wb") as f:
            f.write(data)
        if name == "size-1EiB":
            os.truncate(p, len(data))
        os.chmod(p, 0o644)
        for fmt in fmts:
            out.append((name, p, fmt))
    # A sparse file claiming a huge raw size.
    p = os.path.join(d, "sparse-huge.raw")
    with open(p, "wb") as f:
        f.truncate(1 << 40)
    os.chmod(p, 0o644)
    out.append(("sparse-huge", p, "raw"))
    return out


# ---------------------------------------------------------------------------------------------------
# The test.

def daemon_fds(pid):
    return sorted(os.listdir(f"/proc/{pid}/fd"), key=int)


def daemon_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    return 0


def daemon_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def is_sanitized(path):
    with open(path, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"AddressSanitizer" in data


def read_records(store):
    layers, vms = {}, {}
    for n in os.listdir(os.path.join(store, "records")):
        with open(os.path.join(store, "records", n)) as f:
            o = json.load(f)
        if n.startswith("layer-"):
            layers[o["layer"]] = o
        elif n.startswith("vm-"):
            vms[o["name"]] = o
    return layers, vms


def main():
    import dbus

    from vdisktest import BUS_NAME, Env, check, check_eq, finish, opts, require, root_only

    require("qemu-io")
    root_only("clients as root and as the owner uid 65534 (all are the test user)")
    n_clients = int(os.environ.get("VDISK_FLOOD_CLIENTS") or 50)
    n_calls = int(os.environ.get("VDISK_FLOOD_CALLS") or 1000)
    seed = int(os.environ.get("VDISK_TEST_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"seed {seed} (VDISK_TEST_SEED={seed} reproduces the set-up and each client's sequence), "
          f"{n_clients} clients x {n_calls} calls", flush=True)
    rnd = random.Random(seed)
    # Under a sanitizer or a wrapper (valgrind, VDISK_TEST_WRAPPER) freed memory is kept or accounted differently.
    sanitized = is_sanitized(sys.argv[1]) or bool(os.environ.get("VDISK_TEST_WRAPPER"))

    env = Env(sys.argv[1])
    procs = []
    try:
        env.start({"VDISKD_TEST_JOB_LINGER_SEC": "20"})
        pid = env.daemon.pid
        t_setup = time.monotonic()

        # The catalog: a qcow2 image with data, a blank raw one.
        up = os.path.join(env.tmp, "base.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", up, str(64 * MiB)], check=True)
        cmds = []
        for k in range(24):
            cmds += ["-c", f"write -P 0x{(k * 37) & 0xff:02x} {rnd.randrange(0, 64 * MiB - 256 * KiB) & ~0xffff} 256k"]
        subprocess.run(["qemu-io", "-f", "qcow2", *cmds, up], check=True, capture_output=True)
        err, msg = env.import_file("base", "qcow2", up)
        check_eq(err, None, f"setup: ImportImage base ({msg})")
        check_eq(env.try_call("CreateImage", "rbase", "raw", 32 * MiB, opts())[0], None, "setup: CreateImage rbase")

        vms = [f"vm{i}" for i in range(N_VMS)]
        for i, vm in enumerate(vms):
            env.call("CreateVM", vm, dbus.UInt32(OWNER if i < N_VMS // 2 else 0), opts())
            env.call("CreateDisk", vm, "ov", "base", dbus.UInt64(0), opts())
            env.call("CreateDisk", vm, "cp", "base", dbus.UInt64(0), opts(mode="copy"))
            env.call("CreateDisk", vm, "bq", "", dbus.UInt64(32 * MiB), opts())
            env.call("CreateDisk", vm, "br", "", dbus.UInt64(16 * MiB), opts(format="raw"))
            env.call("CreateDisk", vm, "rov", "rbase", dbus.UInt64(48 * MiB), opts())
            if vm in ("vm0", "vm5"):
                env.call("CreateDisk", vm, "deep", "base", dbus.UInt64(0), opts())
                for _ in range(DEEP_LAYERS):
                    env.call("Snapshot", vm, "deep", opts())

        # A disk of its own for each root client's jobs: four private layers with data over base.
        env.call("CreateVM", JOB_VM, dbus.UInt32(0), opts())
        roots = [c for c in range(n_clients) if c % 2 == 0]
        job_disks = [f"j{c}" for c in roots] + ["warm", "idle", "busy"]

        def write_tops(disks):
            """Random data into the top layer of each disk (qemu-io on files of this test's store; no flush)."""
            ps = []
            for disk in disks:
                top = env.call("GetChain", JOB_VM, disk)[0]
                cmds = []
                for _ in range(3):
                    cmds += ["-c", f"write -P 0x{rnd.randrange(1, 255):02x} {rnd.randrange(0, 60) * MiB} "
                                   f"{rnd.choice([64, 192, 512])}k"]
                ps.append(subprocess.Popen(["qemu-io", "-t", "unsafe", "-f", "qcow2", *cmds,
                                            os.path.join(env.store, str(top[1]))], stdout=subprocess.DEVNULL))
            codes = [p.wait() for p in ps]
            if any(codes):
                raise RuntimeError(f"setup: qemu-io failed on a job disk: {codes}")

        for disk in job_disks:
            env.call("CreateDisk", JOB_VM, disk, "base", dbus.UInt64(0), opts())
        for k in range(2):
            write_tops(job_disks)
            for disk in job_disks:
                env.call("Snapshot", JOB_VM, disk, opts())
        write_tops(job_disks)
        inspect_pool = build_inspect_pool(env, rnd)
        expected = []
        for name, p, fmt in inspect_pool:
            with open(p, "rb") as f:
                err, res = env.try_call("Inspect", dbus.types.UnixFd(f.fileno()), fmt)
            want = ["json", json.loads(str(res))] if err is None else ["error", err]
            if err is not None:
                check(err in INSPECT_ERRORS, f"Inspect {name} as {fmt}: {err} is one of the expected errors ({res})")
            expected.append([p, fmt, want])
        n_json = sum(1 for e in expected if e[2][0] == "json")
        n_valid = sum(1 for e in expected if e[2][0] == "json" and e[2][1].get("valid"))
        print(f"inspect pool: {len(expected)} (file, format) pairs: {n_valid} valid, {n_json - n_valid} \"valid\": false, "
              f"{len(expected) - n_json} errors "
              f"({', '.join(sorted({e[2][1].rsplit('.', 1)[1] for e in expected if e[2][0] == 'error'}))})", flush=True)
        check(env.canary_unchanged(), "canary unchanged after inspecting the pool")
        print(f"setup took {time.monotonic() - t_setup:.1f} s", flush=True)

        def spawn(idx, uid, calls, job_disk, leave, loop=None):
            cfg = {"address": env.address, "uid": uid, "seed": rnd.getrandbits(64), "calls": calls,
                   "vms": vms[:N_VMS // 2] if uid else vms, "job_disk": job_disk,
                   "inspect": [[loop[0], "qcow2", None]] if loop else expected, "leave_leases": leave,
                   "loop_seconds": loop[1] if loop else 0}
            path = os.path.join(env.tmp, f"worker-{len(procs)}.json")
            with open(path, "w") as f:
                json.dump(cfg, f)
            p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", path], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            return p

        def start_clients(specs):
            ps = [spawn(*s) for s in specs]
            for p in ps:
                line = p.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"worker did not start: {line} {p.stderr.read()[-2000:]}")
            for p in ps:
                p.stdin.write("go\n")
                p.stdin.flush()
            return ps

        def collect(ps):
            results = []
            for p in ps:
                out, errtext = p.communicate(timeout=1800)
                res = [json.loads(x[7:]) for x in out.splitlines() if x.startswith("RESULT ")]
                if p.returncode != 0 or not res:
                    check(False, f"worker pid {p.pid} exited with {p.returncode}: {errtext[-3000:]}")
                    continue
                results.append(res[0])
            return results

        def run_clients(specs):
            t = time.monotonic()
            results = collect(start_clients(specs))
            return results, time.monotonic() - t

        def running_jobs():
            n = 0
            for j in env.call("ListJobs"):
                props = dbus.Interface(env.bus.get_object(BUS_NAME, j[0], introspect=False), "org.freedesktop.DBus.Properties")
                try:
                    n += str(props.Get("org.vdisk1.Job", "State")) == "running"
                except dbus.exceptions.DBusException:
                    pass  # gone since
            return n

        def settle(want_fds=None, timeout=60):
            """Waits until no job is running (finished ones linger 20 s) and, if given, the fd count is back."""
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if running_jobs() == 0 and (want_fds is None or len(daemon_fds(pid)) == want_fds):
                    return True
                time.sleep(0.2)
            return False

        # Warm-up: every kind of call once through, by both kinds of client; then the baseline.
        warm, _ = run_clients([(0, 0, 300, "warm", True), (1, OWNER, 300, None, True)])
        for r in warm:
            check_eq(r["unexpected"], [], "warm-up: no unexpected error")
        time.sleep(1)
        settle()
        base_fds = daemon_fds(pid)
        base_rss = daemon_rss(pid)
        print(f"baseline after warm-up: {len(base_fds)} fds, VmRSS {base_rss / MiB:.1f} MiB", flush=True)

        # The flood.
        specs = []
        for c in range(n_clients):
            root = c % 2 == 0
            specs.append((c, 0 if root else OWNER, n_calls, f"j{c}" if root else None, c % 5 == 1))
        cpu0 = daemon_cpu(pid)
        results, wall = run_clients(specs)
        cpu = daemon_cpu(pid) - cpu0
        check_eq(len(results), n_clients, "every client finished and reported")

        total = sum(r["calls"] for r in results)
        errors, methods, unexpected = {}, {}, []
        for r in results:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
            for k, v in r["by_method"].items():
                methods[k] = methods.get(k, 0) + v
            unexpected += r["unexpected"]
        jobs = [j for r in results for j in r["jobs"]]
        print(f"flood: {total} calls in {wall:.1f} s = {total / wall:.0f} calls/s; slowest client "
              f"{max(r['elapsed'] for r in results):.1f} s; vdiskd used {cpu:.1f} s of CPU "
              f"({100 * cpu / wall:.0f}% of one core)", flush=True)
        print("  calls by method: " + ", ".join(f"{k} {v}" for k, v in sorted(methods.items())))
        names = {}
        for k, v in errors.items():
            names[k.split()[1]] = names.get(k.split()[1], 0) + v
        print("  errors by name: " + (", ".join(f"{k} {v}" for k, v in sorted(names.items())) or "none"))
        print("  errors by method: " + (", ".join(f"{k} {v}" for k, v in sorted(errors.items())) or "none"))
        print(f"  snapshots made {sum(r['snapshots'] for r in results)}, leases ended by a disconnect "
              f"{sum(r['disconnect_leases'] for r in results)} mid-run + {sum(r['left_leases'] for r in results)} at exit, "
              f"jobs {len(jobs)} ({', '.join(sorted({j[1] for j in jobs}))})", flush=True)
        check(total >= n_clients * n_calls, f"{n_clients} x {n_calls} calls issued ({total})")
        check_eq(unexpected[:20], [], "no error other than InUse / LimitExceeded (and the expected Inspect verdicts)")
        check_eq(sum(r["inspect_mismatch"] for r in results), 0, "every Inspect answer equals the one before the flood")
        durations = sorted(j[3] for j in jobs)
        if jobs:
            print(f"  jobs: {len(jobs)} started, {sum(j[1] == 'done' for j in jobs)} done, "
                  f"{sum(r['jobs_not_started'] for r in results)} planned but not started; "
                  f"{sum(1 for j in jobs if j[6])} finished while their client was still flooding; duration median "
                  f"{durations[len(durations) // 2]:.1f} s, max {durations[-1]:.1f} s", flush=True)
        check_eq([j[:3] for j in jobs if j[1] != "done"], [], f"every job started in the flood is done ({len(jobs)})")

        # Afterwards: the same process, fds and memory back, the store consistent.
        check(env.daemon.poll() is None and env.daemon.pid == pid, "vdiskd survived (same pid)")
        env.check_sanitizers()
        back = settle(len(base_fds), timeout=60)
        fds_after = daemon_fds(pid)
        rss_after = daemon_rss(pid)
        print(f"after: {len(fds_after)} fds (baseline {len(base_fds)}), VmRSS {rss_after / MiB:.1f} MiB "
              f"(baseline {base_rss / MiB:.1f} MiB, {(rss_after - base_rss) / MiB:+.1f} MiB)", flush=True)
        check(back, "no job left running")
        check_eq(len(fds_after), len(base_fds), "vdiskd's fd count is back to the baseline once all leases ended")
        if sanitized:
            print("     (sanitizer build or wrapper: VmRSS is reported, not checked; LeakSanitizer / memcheck check leaks at exit)")
        else:
            check(rss_after <= base_rss + RSS_TOLERANCE,
                  f"VmRSS within +{RSS_TOLERANCE // MiB} MiB of the baseline ({(rss_after - base_rss) / MiB:+.1f} MiB)")

        for vm in vms + [JOB_VM]:
            check_eq([tuple(str(x) for x in p) for p in env.call("Verify", vm)], [], f"Verify {vm} clean")
        check_eq(os.listdir(os.path.join(env.store, "journal")), [], "no journal entry left")

        layers, vmrecs = read_records(env.store)
        images = set(os.listdir(os.path.join(env.store, "images")))
        problems, used, tops, depth = [], set(), [], 0
        for name, v in vmrecs.items():
            for dk in v["disks"]:
                chain = [str(c[0]) for c in env.call("GetChain", name, dk["name"])]
                if chain != dk["chain"]:
                    problems.append(f"{name}/{dk['name']}: GetChain differs from the record")
                depth = max(depth, len(chain))
                tops.append(dk["chain"][0])
                for k, lid in enumerate(dk["chain"]):
                    used.add(lid)
                    rec = layers.get(lid)
                    if not rec:
                        problems.append(f"{name}/{dk['name']}: no record for layer {lid}")
                        continue
                    if rec["state"] != "ready":
                        problems.append(f"layer {lid} is {rec['state']}")
                    want_backing = dk["chain"][k + 1] if k + 1 < len(dk["chain"]) else None
                    if rec["backing_layer"] != want_backing:
                        problems.append(f"layer {lid}: backing {rec['backing_layer']} but the chain says {want_backing}")
                    if rec["vm"] not in (None, name):
                        problems.append(f"layer {lid} of VM {rec['vm']} in a chain of {name}")
        files = set()
        for lid, rec in layers.items():
            files.add(rec["file"])
            if rec.get("data_file"):
                files.add(rec["data_file"])
            if rec["file"] not in images:
                problems.append(f"layer {lid}: file {rec['file']} missing")
            if lid not in used and not rec["catalog_name"]:
                problems.append(f"private layer {lid} is in no chain (orphan)")
        for f in sorted(images - files):
            problems.append(f"images/{f} has no record")
        check_eq(problems[:20], [], f"records consistent: {len(layers)} layer records, {len(images)} image files, "
                                    f"{len(vmrecs)} VMs, deepest chain {depth}")

        # No lease left anywhere: a read-write OpenDisk works on every disk.
        busy = []
        for name, v in vmrecs.items():
            for dk in v["disks"]:
                err, res = env.try_call("OpenDisk", name, dk["name"], opts())
                if err:
                    busy.append(f"{name}/{dk['name']}: {err}")
                    continue
                for f in res[2]:
                    os.close(f.take())
                dbus.Interface(env.bus.get_object(BUS_NAME, str(res[0]), introspect=False), "org.vdisk1.Lease").Release()
        check_eq(busy, [], "every disk can be opened read-write afterwards (no lease left)")

        # qemu-img check: every top, the catalog, 50 random other qcow2 layers.
        qcow2 = {lid for lid, r in layers.items() if r["format"] == "qcow2"}
        sample = {t for t in tops if t in qcow2} | {lid for lid in qcow2 if layers[lid]["catalog_name"]}
        rest = sorted(qcow2 - sample)
        sample |= set(rnd.sample(rest, min(50, len(rest))))

        def qcheck(lid):
            # The layer alone ("backing": null): qemu-img follows no name from the header.
            spec = {"driver": "qcow2", "backing": None,
                    "file": {"driver": "file", "filename": os.path.join(env.store, "images", layers[lid]["file"])}}
            p = subprocess.run(["qemu-img", "check", "-q", "json:" + json.dumps(spec)], capture_output=True, text=True)
            return lid, p.returncode, (p.stdout + p.stderr).strip()[-300:]

        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2)) as ex:
            bad = [r for r in ex.map(qcheck, sorted(sample)) if r[1] != 0]
        check_eq(bad, [], f"qemu-img check clean on {len(sample)} layers ({time.monotonic() - t:.1f} s)")

        # Jobs must progress while callers keep the daemon busy: a flatten of a twin disk, idle and then
        # while 8 unprivileged callers (anyone may call Inspect) inspect a valid 64 GiB qcow2 image with
        # 128 L2 tables in a loop for STARVE_SECONDS.
        heavy = os.path.join(env.tmp, "inspect", "heavy.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", heavy, "64G"], check=True)
        subprocess.run(["qemu-io", "-t", "unsafe", "-f", "qcow2", *sum([["-c", f"write {k * 512}M 4k"] for k in range(128)], []),
                        heavy], check=True, capture_output=True)
        os.chmod(heavy, 0o644)

        def flatten(disk):
            t = time.monotonic()
            err, job = env.try_call("Rebase", JOB_VM, disk, "", opts())
            if err:
                return err, time.monotonic() - t
            state, ename, _ = env.wait_job(job, timeout=600)
            return (None if state == "done" else ename or state), time.monotonic() - t

        err, idle_t = flatten("idle")
        check_eq(err, None, f"flatten of an idle daemon's disk ({idle_t:.2f} s)")
        loops = start_clients([(c, OWNER, 0, None, False, (heavy, STARVE_SECONDS)) for c in range(8)])
        time.sleep(1)
        err, busy_t = flatten("busy")
        loop_results = collect(loops)
        limit = max(5.0, 20 * idle_t)
        if os.environ.get("VDISK_TEST_WRAPPER"):  # valgrind: every call takes 20-50 times longer
            limit *= 4
        print(f"job progress under load: flatten {idle_t:.2f} s idle, {busy_t:.2f} s while 8 callers loop on Inspect "
              f"({sum(r['calls'] for r in loop_results)} Inspect calls in {STARVE_SECONDS} s)", flush=True)
        check_eq(err, None, "the flatten under load is done")
        check(busy_t < limit, f"a job progresses while the bus is busy: flatten took {busy_t:.1f} s under an Inspect loop of "
                              f"{STARVE_SECONDS} s (idle {idle_t:.2f} s, limit {limit:.1f} s)")
        check_eq([r["errors"] for r in loop_results if r["errors"]], [], "the Inspect loops got no error")

        check(env.canary_unchanged(), "canary unchanged")
        check(env.daemon.poll() is None and env.daemon.pid == pid, "vdiskd still the same process at the end")
        env.stop()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        env.close()
    finish()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        with open(sys.argv[2]) as f:
            cfg = json.load(f)
        sys.exit(worker(cfg))
    main()
