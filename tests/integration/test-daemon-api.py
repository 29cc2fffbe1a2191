# SPDX-License-Identifier: LGPL-2.1-or-later
"""org.vdisk1.Manager against docs/dbus-api.md: every implemented method, property and the Job
object; every error name; bad inputs from docs/security.md (exact error name, store unchanged); the
authorization table (root, VM owner, anyone else, admin group); records across restarts, refusal to
start on future-schema or malformed records, and clean-up of orphans and journal leftovers at start.

Not here: OpenDisk and leases (test-daemon-opendisk.py); Rebase, Commit, GetDomainXML, AdoptDomainXML
(not implemented yet)."""

import grp
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

from vdisktest import BUS_NAME, PATH, IFACE, Env, check, check_eq, finish, opts, qemu_img, require, root_only

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
E = "org.vdisk1.Error."
NOTFOUND, EXISTS, INUSE, UNSAFE, CORRUPT = E + "NotFound", E + "AlreadyExists", E + "InUse", E + "UnsafeImage", E + "Corrupt"
NOTSUP, TOODEEP, LIMIT = E + "NotSupported", E + "ChainTooDeep", E + "LimitExceeded"
INVALID = "org.freedesktop.DBus.Error.InvalidArgs"
DENIED = "org.freedesktop.DBus.Error.AccessDenied"
REQUIRED_ERRORS = {NOTFOUND, EXISTS, INUSE, UNSAFE, CORRUPT, NOTSUP, TOODEEP, LIMIT, INVALID, DENIED}
OWNER, OTHER = 65534, 1  # nobody owns vm1; daemon (uid 1) owns nothing
JOB_IFACE = "org.vdisk1.Job"
PROPS_IFACE = "org.freedesktop.DBus.Properties"

VDISKD = sys.argv[1]
require("qemu-io", "blkid", "setpriv", "groupadd", "groupdel")
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def source_define(rel, name):
    with open(os.path.join(SRC, rel)) as f:
        m = re.search(rf"#define {name} (\d+)U?", f.read())
    return int(m.group(1))


DEFAULT_DEPTH = source_define("daemon/ops/ops.h", "LIMITS_DEFAULT_MAX_CHAIN_DEPTH")
DEFAULT_CAP = 64 * TiB  # FORMAT_DEFAULT_MAX_VIRTUAL_SIZE
seen_errors = set()


def t(n):
    return dbus.UInt64(n)


def u(n):
    return dbus.UInt32(n)


def plain(x):
    """dbus values → what call_as() returns (JSON round trip), for comparing root's and others' answers."""
    return json.loads(json.dumps(x))


def expect(env, label, want, method, *args, unchanged=None):
    """Calls as root; checks the error name (None = success); for errors also that the store did not
    change (unless unchanged=False). Returns the result or the error message."""
    if unchanged is None:
        unchanged = want is not None
    before = env.snapshot_store() if unchanged else None
    err, res = env.try_call(method, *args)
    seen_errors.add(err)
    check_eq(err, want, f"{label}: {'succeeds' if want is None else want.rsplit('.', 1)[1]}"
             + (f" ({res})" if err is not None and err != want else ""))
    if unchanged:
        check_eq(env.snapshot_store(), before, f"{label}: store unchanged")
    if err is not None:
        check("\n" not in str(res) and str(res) != "", f"{label}: one-line message")
    return res


def expect_as(env, user, label, want, method, *args, groups=None, fds=(), unchanged=None):
    if unchanged is None:
        unchanged = want is not None
    before = env.snapshot_store() if unchanged else None
    err, res = env.call_as(user, method, *args, groups=groups, fds=fds)
    seen_errors.add(err)
    check_eq(err, want, f"{label} (uid {user}{'+group' if groups is not None else ''}): "
             f"{'succeeds' if want is None else want.rsplit('.', 1)[1]}" + (f" ({res})" if err != want and err else ""))
    if unchanged:
        check_eq(env.snapshot_store(), before, f"{label} (uid {user}): store unchanged")
    return res


def chain(env, vm, disk):
    return [tuple(plain(x)) for x in env.call("GetChain", vm, disk)]


def images(env):
    return {str(i[0]): tuple(plain(i)) for i in env.call("ListImages")}


def vms(env):
    return sorted(tuple(plain(v)) for v in env.call("ListVMs"))


def store_path(env, rel):
    return os.path.join(env.store, rel)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def qcow2_backing(path):
    """(backing file name, backing format) from a qcow2 header, parsed here (nothing is opened)."""
    with open(path, "rb") as f:
        h = f.read(65536)
    off, size = struct.unpack(">QI", h[8:20])
    name = h[off:off + size].decode() if off else None
    fmt = None
    version = struct.unpack(">I", h[4:8])[0]
    pos = struct.unpack(">I", h[100:104])[0] if version >= 3 else 72
    while pos + 8 <= len(h):
        magic, length = struct.unpack(">II", h[pos:pos + 8])
        if magic == 0:
            break
        if magic == 0xE2792ACA:
            fmt = h[pos + 8:pos + 8 + length].decode()
        pos += 8 + ((length + 7) & ~7)
    return name, fmt


def qinfo(path, fmt):
    p = qemu_img("info", "-f", fmt, "--output=json", path)
    if p.returncode != 0:
        raise RuntimeError(p.stderr)
    return json.loads(p.stdout)


def qcheck(path):
    return qemu_img("check", "-f", "qcow2", path).returncode


def job_props(env, path):
    o = dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), PROPS_IFACE)
    return {str(k): v for k, v in o.GetAll(JOB_IFACE).items()}


class Signals:
    """Collects org.vdisk1.Job.Finished signals on a separate, main-loop driven connection."""

    def __init__(self, env):
        self.conn = dbus.bus.BusConnection(env.address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
        self.finished = {}
        self.conn.add_signal_receiver(self._on, signal_name="Finished", dbus_interface=JOB_IFACE, path_keyword="path")
        self.conn.add_signal_receiver(lambda *a: None, signal_name="PropertiesChanged", dbus_interface=PROPS_IFACE)

    def _on(self, *args, path=None):
        self.finished[str(path)] = tuple(str(a) for a in args)

    def wait(self, path, timeout=10):
        ctx = GLib.MainContext.default()
        end = time.time() + timeout
        while time.time() < end and path not in self.finished:
            ctx.iteration(False)
            time.sleep(0.005)
        return self.finished.get(path)


def start_import(env, name, fmt, path):
    with open(path, "rb") as f:
        return env.try_call("ImportImage", name, fmt, dbus.types.UnixFd(f.fileno()), opts())


# ====================================================================================== main env
env = Env(VDISKD)
envs = [env]
group_name = f"vdt{os.getpid()}"
group_created = False
try:
    env.start()
    sig = Signals(env)

    # ---------------------------------------------------------------- properties
    mgr_props = dbus.Interface(env.bus.get_object(BUS_NAME, PATH, introspect=False), PROPS_IFACE)
    version = subprocess.run([VDISKD, "--version"], capture_output=True, text=True).stdout.strip()
    allp = {str(k): v for k, v in mgr_props.GetAll(IFACE).items()}
    check_eq(sorted(allp), ["MaxChainDepth", "StoreDirectory", "Version"], "Manager properties: exactly the three")
    check_eq(str(allp["Version"]), version, "Version is vdiskd --version")
    check(re.fullmatch(r"\d+\.\d+(\.\d+)?", version) is not None, f"Version looks like a version ({version})")
    check_eq(str(allp["StoreDirectory"]), env.store, "StoreDirectory is the --store directory")
    check_eq(int(allp["MaxChainDepth"]), DEFAULT_DEPTH, "MaxChainDepth is the built-in default")
    check(isinstance(allp["MaxChainDepth"], dbus.UInt32), "MaxChainDepth has type u")
    try:
        mgr_props.Set(IFACE, "MaxChainDepth", dbus.UInt32(5), signature="ssv")
        err = None
    except dbus.exceptions.DBusException as e:
        err = e.get_dbus_name()
    check(err is not None, f"Set MaxChainDepth refused ({err})")
    check_eq(int(mgr_props.Get(IFACE, "MaxChainDepth")), DEFAULT_DEPTH, "MaxChainDepth unchanged by Set")
    for user in (OWNER, OTHER) if root_only("properties read as other uids") else ():
        for name in ("Version", "StoreDirectory", "MaxChainDepth"):
            err, val = env.get_property_as(user, name)
            check_eq((err, val), (None, plain(allp[name])), f"property {name} readable by uid {user}")

    # ---------------------------------------------------------------- CreateImage
    lq = expect(env, "CreateImage qcow2 1 GiB", None, "CreateImage", "base-q", "qcow2", t(GiB), opts())
    check(re.fullmatch(r"[0-9a-f]{32}", str(lq)) is not None, f"layer id is 32 lower-case hex digits ({lq})")
    fq = store_path(env, f"images/{lq}.qcow2")
    check(os.path.isfile(fq), "qcow2 image file images/<layer>.qcow2 exists")
    check_eq(os.stat(fq).st_mode & 0o777, 0o600, "image file mode 0600")
    info = qinfo(fq, "qcow2")
    check_eq((info["virtual-size"], info["cluster-size"]), (GiB, 65536), "qemu-img info: 1 GiB, 64 KiB clusters")
    check_eq(qcheck(fq), 0, "qemu-img check: new qcow2 image clean")
    lr = expect(env, "CreateImage raw 4 MiB", None, "CreateImage", "base-r", "raw", t(4 * MiB), opts())
    fr = store_path(env, f"images/{lr}.raw")
    check_eq(os.path.getsize(fr), 4 * MiB, "raw image file has the size")
    check_eq(open(fr, "rb").read(), b"\0" * (4 * MiB), "blank raw image reads as zeros")
    for cs in (512, 4096, 2 * MiB):
        lc = expect(env, f"CreateImage qcow2 cluster_size {cs}", None, "CreateImage", f"cs{cs}", "qcow2", t(64 * MiB),
                    opts(cluster_size=cs))
        check_eq(qinfo(store_path(env, f"images/{lc}.qcow2"), "qcow2")["cluster-size"], cs,
                 f"qemu-img info: cluster size {cs}")
    ls = expect(env, "CreateImage raw swap", None, "CreateImage", "swap-r", "raw", t(MiB), opts(template="swap"))
    fs = store_path(env, f"images/{ls}.raw")
    check_eq(open(fs, "rb").read(4096)[4096 - 10:], b"SWAPSPACE2", "raw swap image: SWAPSPACE2 at the end of page 0")
    b = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", fs], capture_output=True, text=True)
    check_eq(b.stdout.strip(), "swap", "blkid -p: raw swap image is TYPE=swap")
    lsq = expect(env, "CreateImage qcow2 swap", None, "CreateImage", "swap-q", "qcow2", t(MiB), opts(template="swap"))
    conv = os.path.join(env.tmp, "swap-q.raw")
    p = qemu_img("convert", "-f", "qcow2", "-O", "raw", store_path(env, f"images/{lsq}.qcow2"), conv)
    check_eq(p.returncode, 0, "qemu-img convert of the qcow2 swap image")
    b = subprocess.run(["blkid", "-p", "-o", "value", "-s", "TYPE", conv], capture_output=True, text=True)
    check_eq(b.stdout.strip(), "swap", "blkid -p: qcow2 swap image's content is TYPE=swap")
    check_eq(qcheck(store_path(env, f"images/{lsq}.qcow2")), 0, "qemu-img check: qcow2 swap image clean")
    lst = images(env)
    check_eq(sorted(lst), sorted(["base-q", "base-r", "cs512", "cs4096", f"cs{2 * MiB}", "swap-r", "swap-q"]),
             "ListImages lists every created image")
    for name, (n, layer, fmt, size, alloc) in lst.items():
        f = store_path(env, f"images/{layer}.{fmt}")
        check_eq(alloc, os.stat(f).st_blocks * 512, f"ListImages {name}: allocated bytes = the file's blocks")
    check_eq(lst["base-q"], ("base-q", lq, "qcow2", GiB, lst["base-q"][4]), "ListImages base-q: name, layer, format, size")
    check_eq(lst["base-r"][:4], ("base-r", lr, "raw", 4 * MiB), "ListImages base-r: name, layer, format, size")
    check_eq(lst["swap-q"][:4], ("swap-q", lsq, "qcow2", MiB), "ListImages swap-q: name, layer, format, size")

    # ---------------------------------------------------------------- ImportImage and the Job object
    good = os.path.join(env.tmp, "good.raw")
    with open(good, "wb") as f:
        f.write(bytes(range(256)) * 4096)  # 1 MiB
    err, job = start_import(env, "imported", "raw", good)
    check_eq(err, None, "ImportImage: returns a job")
    check(re.fullmatch(r"/org/vdisk1/job/\d+", str(job)) is not None, f"job path /org/vdisk1/job/N ({job})")
    state = env.wait_job(job)
    check_eq(state, ("done", "", ""), "import job: done, no error")
    jp = job_props(env, job)
    check_eq(sorted(jp), sorted(["Operation", "VM", "Disk", "State", "Progress", "BytesDone", "BytesTotal", "ErrorName",
                                 "ErrorMessage"]), "Job properties: exactly the contract's")
    check_eq((str(jp["Operation"]), str(jp["VM"]), str(jp["Disk"]), str(jp["State"])), ("import", "", "", "done"),
             "Job Operation/VM/Disk/State")
    check_eq((float(jp["Progress"]), int(jp["BytesDone"]), int(jp["BytesTotal"])), (1.0, MiB, MiB),
             "Job Progress 1.0, BytesDone = BytesTotal = size")
    check_eq((str(jp["ErrorName"]), str(jp["ErrorMessage"])), ("", ""), "Job ErrorName/ErrorMessage empty")
    check_eq(sig.wait(str(job)), ("done", "", ""), "Finished signal: done")
    li = images(env)["imported"]
    check_eq(li[2:4], ("raw", MiB), "imported image listed: raw, 1 MiB")
    check_eq(sha(store_path(env, f"images/{li[1]}.raw")), sha(good), "imported raw image is a byte-exact copy")
    jobs = [tuple(plain(j)) for j in env.call("ListJobs")]
    check((str(job), "import", "", "") in jobs, f"ListJobs lists the job ({jobs})")
    jobobj = dbus.Interface(env.bus.get_object(BUS_NAME, job, introspect=False), JOB_IFACE)
    try:
        jobobj.Cancel()
        err = None
    except dbus.exceptions.DBusException as e:
        err = e.get_dbus_name()
    seen_errors.add(err)
    check_eq(err, INVALID, "Cancel on a finished job: InvalidArgs")
    check_eq(str(job_props(env, job)["State"]), "done", "Cancel on a finished job: still done")
    for user in (OWNER, OTHER) if root_only("a job as other uids") else ():
        err, _ = env.call_object_as(user, job, JOB_IFACE, "Cancel")
        check_eq(err, DENIED, f"Job.Cancel by uid {user} (not the starter): AccessDenied")
        for prop in ("State", "ErrorMessage"):
            err, _ = env.get_property_as(user, prop, path=job, interface=JOB_IFACE)
            check_eq(err, DENIED, f"Job property {prop} for uid {user} (not the starter): AccessDenied")
        err, _ = env.call_object_as(user, job, PROPS_IFACE, "GetAll", JOB_IFACE, signature="s")
        check_eq(err, DENIED, f"Job GetAll for uid {user}: AccessDenied")

    # A failing import: the error is on the job, with the same names.
    q = os.path.join(env.tmp, "q.qcow2")
    qemu_img("create", "-f", "qcow2", q, "1M")
    before = env.snapshot_store()
    err, job2 = start_import(env, "mismatch", "raw", q)
    check_eq(err, None, "ImportImage of a qcow2 declared raw: a job")
    st = env.wait_job(job2)
    seen_errors.add(st[1])
    check_eq(st[:2], ("failed", UNSAFE), "qcow2 declared raw: job failed with UnsafeImage")
    check(st[2] != "" and "\n" not in st[2], f"failed job: one-line ErrorMessage ({st[2]})")
    check_eq(sig.wait(str(job2)), st, "Finished signal carries state, ErrorName, ErrorMessage")
    jp = job_props(env, job2)
    check(float(jp["Progress"]) <= 1.0 and int(jp["BytesTotal"]) == os.path.getsize(q), "failed job: BytesTotal")
    check_eq(env.snapshot_store(), before, "failed import: store unchanged")
    odd = os.path.join(env.tmp, "odd.raw")
    with open(odd, "wb") as f:
        f.write(b"\x01" * 1000)
    err, job3 = start_import(env, "odd", "raw", odd)
    st = env.wait_job(job3)
    seen_errors.add(st[1])
    check_eq(st[:2], ("failed", CORRUPT), "raw upload of 1000 bytes: job failed with Corrupt")
    check_eq(env.snapshot_store(), before, "failed import: store unchanged")
    err, _ = start_import(env, "base-q", "raw", good)
    seen_errors.add(err)
    check_eq(err, EXISTS, "ImportImage under an existing name: AlreadyExists at call time")
    check_eq(env.snapshot_store(), before, "ImportImage AlreadyExists: store unchanged")

    # ---------------------------------------------------------------- VMs
    expect(env, "CreateVM vm1 (owner nobody)", None, "CreateVM", "vm1", u(OWNER), opts())
    expect(env, "CreateVM vm2 (owner root)", None, "CreateVM", "vm2", u(0), opts())
    expect(env, "CreateVM with a 64-character name", None, "CreateVM", "v" * 64, u(0), opts())
    check_eq(vms(env), sorted([("vm1", OWNER), ("vm2", 0), ("v" * 64, 0)]), "ListVMs (root): name and owner of each")
    expect(env, "CreateVM vm1 again", EXISTS, "CreateVM", "vm1", u(0), opts())
    expect(env, "CreateVM with owner uid 4294967295", INVALID, "CreateVM", "vmx", u(0xFFFFFFFF), opts())
    expect(env, "DeleteVM of the 64-character VM", None, "DeleteVM", "v" * 64)
    check_eq(vms(env), sorted([("vm1", OWNER), ("vm2", 0)]), "DeleteVM removed it from ListVMs")
    check(not os.path.exists(store_path(env, f"records/vm-{'v' * 64}.json")), "DeleteVM removed its record")

    # ---------------------------------------------------------------- CreateDisk and GetChain
    def files_of(env, vm, disk):
        return [store_path(env, c[1]) for c in chain(env, vm, disk)]

    expect(env, "CreateDisk overlay, size 0", None, "CreateDisk", "vm1", "d", "base-q", t(0), opts())
    c = chain(env, "vm1", "d")
    check_eq(len(c), 2, "overlay: chain of 2")
    top, base = c
    check(re.fullmatch(r"[0-9a-f]{32}", top[0]) is not None and top[0] != lq, "overlay: a new private layer id on top")
    check_eq(top[1:], (f"images/{top[0]}.qcow2", "qcow2", "qcow2", GiB, os.stat(store_path(env, top[1])).st_blocks * 512,
                       0), "GetChain top: file, qcow2, backing format qcow2, size, allocated, not catalog")
    check_eq(base[:5], (lq, f"images/{lq}.qcow2", "qcow2", "", GiB), "GetChain bottom: catalog image, backing format ''")
    check_eq(base[6], 1, "GetChain bottom: catalog flag true")
    check_eq(qcow2_backing(store_path(env, top[1])), (f"{lq}.qcow2", "qcow2"),
             "overlay header: bare sibling backing name and backing-format extension")
    check_eq(qcheck(store_path(env, top[1])), 0, "qemu-img check: overlay clean")

    expect(env, "CreateDisk overlay, larger size", None, "CreateDisk", "vm1", "big", "base-q", t(2 * GiB), opts())
    c = chain(env, "vm1", "big")
    check_eq([(x[4], x[6]) for x in c], [(2 * GiB, 0), (GiB, 1)], "larger overlay: top 2 GiB over the 1 GiB image")
    check_eq(qinfo(store_path(env, c[0][1]), "qcow2")["virtual-size"], 2 * GiB, "qemu-img info: overlay is 2 GiB")
    expect(env, "CreateDisk overlay, smaller size", INVALID, "CreateDisk", "vm1", "small", "base-q", t(GiB // 2), opts())
    expect(env, "CreateDisk overlay, size not a multiple of 512", INVALID, "CreateDisk", "vm1", "odd", "base-q",
           t(GiB + 100), opts())
    expect(env, "CreateDisk overlay, size above the cap", LIMIT, "CreateDisk", "vm1", "huge", "base-q",
           t(DEFAULT_CAP + 512), opts())

    expect(env, "CreateDisk copy of raw, size 0", None, "CreateDisk", "vm1", "cr", "base-r", t(0), opts(mode="copy"))
    c = chain(env, "vm1", "cr")
    check_eq([(x[2], x[3], x[4], x[6]) for x in c], [("raw", "", 4 * MiB, 0)], "raw copy: one private raw layer")
    check_eq(sha(store_path(env, c[0][1])), sha(fr), "raw copy: same bytes as the image")
    check(os.stat(store_path(env, c[0][1])).st_ino != os.stat(fr).st_ino, "raw copy: its own file")
    expect(env, "CreateDisk copy of raw swap, larger", None, "CreateDisk", "vm1", "crs", "swap-r", t(2 * MiB),
           opts(mode="copy"))
    c = chain(env, "vm1", "crs")
    fcs = store_path(env, c[0][1])
    check_eq((c[0][4], os.path.getsize(fcs)), (2 * MiB, 2 * MiB), "larger raw copy: 2 MiB layer and file")
    check_eq(open(fcs, "rb").read(MiB), open(fs, "rb").read(), "larger raw copy: image content first")
    check_eq(open(fcs, "rb").read()[MiB:], b"\0" * MiB, "larger raw copy: zeros after")
    expect(env, "CreateDisk copy of qcow2, size 0", None, "CreateDisk", "vm1", "cq", "swap-q", t(0), opts(mode="copy"))
    c = chain(env, "vm1", "cq")
    check_eq([(x[2], x[3], x[4], x[6]) for x in c], [("qcow2", "", MiB, 0)], "qcow2 copy: one private qcow2 layer")
    p = qemu_img("compare", "-f", "qcow2", "-F", "qcow2", store_path(env, f"images/{lsq}.qcow2"), store_path(env, c[0][1]))
    check_eq(p.returncode, 0, "qcow2 copy: qemu-img compare with the image: identical")
    check_eq(qcheck(store_path(env, c[0][1])), 0, "qemu-img check: qcow2 copy clean")
    expect(env, "CreateDisk copy of qcow2, larger size", NOTSUP, "CreateDisk", "vm1", "cq2", "swap-q", t(2 * MiB),
           opts(mode="copy"))

    expect(env, "CreateDisk blank qcow2 (default format)", None, "CreateDisk", "vm1", "bq", "", t(64 * MiB), opts())
    c = chain(env, "vm1", "bq")
    check_eq([(x[2], x[3], x[4], x[6]) for x in c], [("qcow2", "", 64 * MiB, 0)], "blank qcow2: one layer")
    check_eq(qinfo(store_path(env, c[0][1]), "qcow2")["virtual-size"], 64 * MiB, "qemu-img info: blank qcow2 size")
    expect(env, "CreateDisk blank raw", None, "CreateDisk", "vm1", "br", "", t(MiB), opts(format="raw"))
    c = chain(env, "vm1", "br")
    check_eq([(x[2], x[3], x[4], x[6]) for x in c], [("raw", "", MiB, 0)], "blank raw: one layer")
    check_eq(os.path.getsize(store_path(env, c[0][1])), MiB, "blank raw: file size")
    expect(env, "CreateDisk blank, size 0", INVALID, "CreateDisk", "vm1", "b0", "", t(0), opts())
    expect(env, "CreateDisk blank raw, size 0", INVALID, "CreateDisk", "vm1", "b0", "", t(0), opts(format="raw"))
    expect(env, "CreateDisk blank, size 1000", INVALID, "CreateDisk", "vm1", "b0", "", t(1000), opts())
    expect(env, "CreateDisk blank, size above the cap", LIMIT, "CreateDisk", "vm1", "b0", "", t(DEFAULT_CAP + 512), opts())
    expect(env, "CreateDisk blank, size 2^64-512", LIMIT, "CreateDisk", "vm1", "b0", "", t((1 << 64) - 512), opts())
    expect(env, "CreateDisk of an existing disk", EXISTS, "CreateDisk", "vm1", "d", "base-q", t(0), opts())
    expect(env, "CreateDisk on a missing VM", NOTFOUND, "CreateDisk", "ghost", "d", "base-q", t(0), opts())
    expect(env, "CreateDisk from a missing image", NOTFOUND, "CreateDisk", "vm1", "new", "ghost", t(0), opts())
    expect(env, "CreateDisk mode 'bogus'", INVALID, "CreateDisk", "vm1", "new", "base-q", t(0), opts(mode="bogus"))
    expect(env, "CreateDisk format 'vmdk'", INVALID, "CreateDisk", "vm1", "new", "", t(MiB), opts(format="vmdk"))
    expect(env, "GetChain of a missing disk", NOTFOUND, "GetChain", "vm1", "ghost")
    expect(env, "GetChain of a missing VM", NOTFOUND, "GetChain", "ghost", "d")

    # ---------------------------------------------------------------- Snapshot
    c0 = chain(env, "vm1", "d")
    old_top = store_path(env, c0[0][1])
    old_hash, old_ino = sha(old_top), os.stat(old_top).st_ino
    new = expect(env, "Snapshot vm1/d", None, "Snapshot", "vm1", "d", opts())
    c1 = chain(env, "vm1", "d")
    check(re.fullmatch(r"[0-9a-f]{32}", str(new)) is not None, "Snapshot returns a layer id")
    check_eq([x[0] for x in c1], [str(new)] + [x[0] for x in c0], "Snapshot: chain grows by the new layer on top")
    check_eq(c1[0][1:5], (f"images/{new}.qcow2", "qcow2", "qcow2", GiB), "Snapshot: new top qcow2 over qcow2, same size")
    check_eq(c1[0][6], 0, "Snapshot: new layer is private")
    check_eq(c1[1:], c0, "Snapshot: lower layers listed unchanged")
    check_eq((sha(old_top), os.stat(old_top).st_ino), (old_hash, old_ino), "Snapshot: previous top unchanged byte-for-byte")
    check_eq(qcow2_backing(store_path(env, c1[0][1])), (f"{c0[0][0]}.qcow2", "qcow2"),
             "Snapshot: new header names the previous top and its format")
    check_eq(qcheck(store_path(env, c1[0][1])), 0, "qemu-img check: snapshot layer clean")
    new2 = expect(env, "Snapshot of a blank raw disk", None, "Snapshot", "vm1", "br", opts())
    c = chain(env, "vm1", "br")
    check_eq([(x[0], x[2], x[3]) for x in c], [(str(new2), "qcow2", "raw"), (c[1][0], "raw", "")],
             "Snapshot of raw: qcow2 top with backing format raw")
    check_eq(qcow2_backing(store_path(env, c[0][1]))[1], "raw", "Snapshot of raw: header backing format raw")
    expect(env, "Snapshot of a missing disk", NOTFOUND, "Snapshot", "vm1", "ghost", opts())
    expect(env, "Snapshot of a missing VM (root)", NOTFOUND, "Snapshot", "ghost", "d", opts())
    p = qemu_img("compare", "-f", "qcow2", "-F", "qcow2", store_path(env, c1[0][1]), store_path(env, c0[0][1]))
    check_eq(p.returncode, 0, "qemu-img compare: snapshot shows the same content as before")

    # ---------------------------------------------------------------- Verify
    check_eq(list(env.call("Verify", "vm1")), [], "Verify vm1: consistent, no problems")
    check_eq(list(env.call("Verify", "vm2")), [], "Verify of a VM without disks: no problems")
    expect(env, "Verify of a missing VM (root)", NOTFOUND, "Verify", "ghost")

    # ---------------------------------------------------------------- DeleteImage / DeleteDisk / DeleteVM
    msg = expect(env, "DeleteImage of an image used by disks", INUSE, "DeleteImage", "base-q")
    expect(env, "DeleteImage of a missing image", NOTFOUND, "DeleteImage", "ghost")
    expect(env, "DeleteImage unused", None, "DeleteImage", f"cs{2 * MiB}")
    check(f"cs{2 * MiB}" not in images(env), "DeleteImage: no longer listed")
    lcs = lst[f"cs{2 * MiB}"][1]
    check(not os.path.exists(store_path(env, f"images/{lcs}.qcow2")), "DeleteImage: file removed")
    check(not os.path.exists(store_path(env, f"records/layer-{lcs}.json")), "DeleteImage: record removed")
    private = files_of(env, "vm1", "d")[:-1]
    expect(env, "DeleteDisk vm1/d (two private layers over a catalog image)", None, "DeleteDisk", "vm1", "d")
    check(all(not os.path.exists(f) for f in private), "DeleteDisk: private layer files removed")
    check(os.path.exists(fq), "DeleteDisk: the catalog image stays")
    expect(env, "GetChain of the deleted disk", NOTFOUND, "GetChain", "vm1", "d")
    expect(env, "DeleteDisk again", NOTFOUND, "DeleteDisk", "vm1", "d")
    expect(env, "DeleteDisk on a missing VM", NOTFOUND, "DeleteDisk", "ghost", "d")
    expect(env, "DeleteVM of a missing VM", NOTFOUND, "DeleteVM", "ghost")
    expect(env, "CreateDisk vm2/tmp", None, "CreateDisk", "vm2", "tmp", "base-r", t(0), opts())
    private = files_of(env, "vm2", "tmp")[:-1]
    expect(env, "CreateVM vm3", None, "CreateVM", "vm3", u(0), opts())
    expect(env, "CreateDisk vm3/a overlay of base-r", None, "CreateDisk", "vm3", "a", "base-r", t(0), opts())
    expect(env, "Snapshot vm3/a", None, "Snapshot", "vm3", "a", opts())
    expect(env, "CreateDisk vm3/b blank", None, "CreateDisk", "vm3", "b", "", t(MiB), opts())
    vm3_files = files_of(env, "vm3", "a")[:-1] + files_of(env, "vm3", "b")
    expect(env, "DeleteVM vm3 (two disks)", None, "DeleteVM", "vm3")
    check(all(not os.path.exists(f) for f in vm3_files), "DeleteVM: every private layer file removed")
    check(os.path.exists(fr), "DeleteVM: the catalog image stays")
    check("vm3" not in [v[0] for v in vms(env)], "DeleteVM: not listed")
    expect(env, "DeleteImage base-r while vm1/cr is a copy (not a user) and vm2/tmp overlays it", INUSE,
           "DeleteImage", "base-r")
    expect(env, "DeleteDisk vm2/tmp", None, "DeleteDisk", "vm2", "tmp")
    check(all(not os.path.exists(f) for f in private), "DeleteDisk: overlay file removed")

    # ---------------------------------------------------------------- Verify after tampering (as root)
    expect(env, "CreateVM tamper", None, "CreateVM", "tamper", u(0), opts())
    lct = expect(env, "CreateImage cat-t", None, "CreateImage", "cat-t", "qcow2", t(MiB), opts())
    for disk, image, size, o in [("rb", "base-q", 0, opts()), ("tr", "", MiB, opts(format="raw")),
                                 ("cb", "cat-t", 0, opts()),
                                 ("rp", "", MiB, opts()), ("hl", "", MiB, opts()), ("gone", "", MiB, opts()),
                                 ("vs", "", MiB, opts()), ("dirty", "", MiB, opts()), ("ok", "base-q", 0, opts())]:
        expect(env, f"CreateDisk tamper/{disk}", None, "CreateDisk", "tamper", disk, image, t(size), o)
    expect(env, "Snapshot tamper/rb", None, "Snapshot", "tamper", "rb", opts())
    check_eq(list(env.call("Verify", "tamper")), [], "Verify tamper before tampering: no problems")
    cs = {d: chain(env, "tamper", d) for d in ("rb", "tr", "cb", "rp", "hl", "gone", "vs", "dirty")}
    mid = cs["rb"][1]  # the overlay below the snapshot; its backing is base-q
    p = qemu_img("rebase", "-u", "-f", "qcow2", "-b", "other.raw", "-F", "raw", store_path(env, mid[1]))
    check_eq(p.returncode, 0, f"tamper: qemu-img rebase -u of a middle layer ({p.stderr.strip()})")
    p = qemu_img("rebase", "-u", "-f", "qcow2", "-b", "canary", "-F", "raw", store_path(env, cs["cb"][1][1]))
    check_eq(p.returncode, 0, f"tamper: qemu-img rebase -u gives a catalog image a backing file ({p.stderr.strip()})")
    os.truncate(store_path(env, cs["tr"][0][1]), MiB // 2)
    f = store_path(env, cs["rp"][0][1])
    shutil.copy2(f, f + ".new")
    os.rename(f + ".new", f)
    hard = os.path.join(env.tmp, "hardlink")
    os.link(store_path(env, cs["hl"][0][1]), hard)
    os.unlink(store_path(env, cs["gone"][0][1]))
    with open(store_path(env, cs["vs"][0][1]), "r+b") as fh:
        fh.seek(24)
        fh.write(struct.pack(">Q", 2 * MiB))
    with open(store_path(env, cs["dirty"][0][1]), "r+b") as fh:
        fh.seek(72)
        feat = struct.unpack(">Q", fh.read(8))[0]
        fh.seek(72)
        fh.write(struct.pack(">Q", feat | 1))
    got = sorted(tuple(plain(x)) for x in env.call("Verify", "tamper"))
    replaced = "image file is not the one recorded (type, owner, links or inode differ)"
    want = sorted([
        ("rb", mid[0], f"header's backing file name differs from the record (expected {lq}.qcow2)"),
        ("rb", mid[0], "header's backing format differs from the record (expected qcow2)"),
        ("tr", cs["tr"][0][0], f"raw file size {MiB // 2} differs from the recorded size {MiB}"),
        ("cb", str(lct), "header names a backing file, the record has none"),
        ("rp", cs["rp"][0][0], replaced),
        ("hl", cs["hl"][0][0], replaced),
        ("gone", cs["gone"][0][0], "image file is missing"),
        ("vs", cs["vs"][0][0], f"header size {2 * MiB} differs from the recorded size {MiB}"),
        ("dirty", cs["dirty"][0][0], "header is marked dirty"),
    ])
    check_eq(got, want, "Verify after tampering: each disk, layer and difference exactly")
    check_eq(list(env.call("Verify", "vm1")), [], "Verify vm1 still clean (tampering elsewhere)")
    os.unlink(hard)
    expect(env, "DeleteVM of the tampered VM", None, "DeleteVM", "tamper")
    check(all(not os.path.exists(store_path(env, c[0][1])) for c in cs.values()), "tampered VM's files removed")
    expect(env, "DeleteImage cat-t (no longer used)", None, "DeleteImage", "cat-t")

    # ---------------------------------------------------------------- Inspect
    qi = os.path.join(env.tmp, "inspect.qcow2")
    qemu_img("create", "-f", "qcow2", "-o", "cluster_size=16384", qi, "32M")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 64k", qi], capture_output=True)
    qb = os.path.join(env.tmp, "inspect-backing.qcow2")
    qemu_img("create", "-f", "qcow2", "-u", "-b", "canary", "-F", "raw", qb, "8M", cwd=env.tmp)
    for label, file in [("qcow2", qi), ("qcow2 with a backing file", qb)]:
        with open(file, "rb") as fh:
            err, js = env.try_call("Inspect", dbus.types.UnixFd(fh.fileno()), "qcow2")
        check_eq(err, None, f"Inspect {label}")
        j = json.loads(str(js))
        ref = qinfo(file, "qcow2")
        for key in ("format", "virtual-size", "cluster-size", "dirty-flag", "backing-filename", "backing-filename-format"):
            check_eq(j.get(key), ref.get(key), f"Inspect {label}: '{key}' as qemu-img info says")
        check_eq(j["format-specific"]["type"], ref["format-specific"]["type"], f"Inspect {label}: format-specific type")
        for key in ("compat", "lazy-refcounts", "refcount-bits", "corrupt", "extended-l2", "compression-type"):
            check_eq(j["format-specific"]["data"].get(key), ref["format-specific"]["data"].get(key),
                     f"Inspect {label}: format-specific '{key}'")
        check_eq((j.get("valid"), j.get("problems")), (True, []), f"Inspect {label}: valid, no problems")
    check(env.canary_unchanged(), "Inspect did not touch the backing file it reports")
    with open(good, "rb") as fh:
        j = json.loads(str(env.call("Inspect", dbus.types.UnixFd(fh.fileno()), "raw")))
    check_eq((j.get("format"), j.get("virtual-size"), j.get("valid"), j.get("problems")), ("raw", MiB, True, []),
             "Inspect raw as raw: format, virtual-size, valid")
    with open(good, "rb") as fh:
        j = json.loads(str(env.call("Inspect", dbus.types.UnixFd(fh.fileno()), "qcow2")))
    check(j.get("valid") is False and len(j.get("problems", [])) > 0, f"Inspect raw file declared qcow2: invalid ({j})")
    with open(qi, "rb") as fh:
        j = json.loads(str(env.call("Inspect", dbus.types.UnixFd(fh.fileno()), "raw")))
    check(j.get("valid") is False and len(j.get("problems", [])) > 0, f"Inspect qcow2 file declared raw: invalid ({j})")
    with open(good, "rb") as fh:
        expect(env, "Inspect with format 'vmdk'", INVALID, "Inspect", dbus.types.UnixFd(fh.fileno()), "vmdk")
        for user in (OWNER, OTHER) if root_only("Inspect as other uids") else ():
            res = expect_as(env, user, "Inspect", None, "Inspect", f"fd:{fh.fileno()}", "raw", fds=(fh.fileno(),))
            check_eq(json.loads(res).get("virtual-size") if isinstance(res, str) else res, MiB,
                     f"Inspect as uid {user}: describes the file")

    # ----------------------------------------------------------- bad inputs (docs/security.md)
    bad_names = {"empty": "", "slash": "a/b", "dotdot": "..", "dot": ".", "leading dot": ".hidden",
                 "leading dash": "-x", "newline": "a\nb", "tab": "a\tb", "control char": "a\x01b", "escape": "\x1b[0m",
                 "space": "a b", "non-ASCII": "d\u00e9j\u00e0", "65 chars": "x" * 65, "4 KiB": "x" * 4096,
                 "absolute path": "/etc/passwd"}
    with open(good, "rb") as fh:
        fd = dbus.types.UnixFd(fh.fileno())
    positions = {  # method → argument builder for a bad value in each name position
        "CreateImage name": lambda n: ("CreateImage", n, "raw", t(MiB), opts()),
        "ImportImage name": lambda n: ("ImportImage", n, "raw", fd, opts()),
        "DeleteImage name": lambda n: ("DeleteImage", n),
        "CreateVM name": lambda n: ("CreateVM", n, u(0), opts()),
        "DeleteVM name": lambda n: ("DeleteVM", n),
        "CreateDisk vm": lambda n: ("CreateDisk", n, "x", "base-q", t(0), opts()),
        "CreateDisk disk": lambda n: ("CreateDisk", "vm1", n, "base-q", t(0), opts()),
        "CreateDisk image": lambda n: ("CreateDisk", "vm1", "x", n, t(0), opts()),
        "DeleteDisk vm": lambda n: ("DeleteDisk", n, "cr"),
        "DeleteDisk disk": lambda n: ("DeleteDisk", "vm1", n),
        "ListDisks vm": lambda n: ("ListDisks", n),
        "GetChain vm": lambda n: ("GetChain", n, "cr"),
        "GetChain disk": lambda n: ("GetChain", "vm1", n),
        "Snapshot vm": lambda n: ("Snapshot", n, "cr", opts()),
        "Snapshot disk": lambda n: ("Snapshot", "vm1", n, opts()),
        "Verify vm": lambda n: ("Verify", n),
    }
    for pos, build in positions.items():
        for label, name in bad_names.items():
            if pos == "CreateDisk image" and name == "":
                continue  # "" means a blank disk
            with open(good, "rb") as fh:
                fd = dbus.types.UnixFd(fh.fileno())
                expect(env, f"{pos} {label}", INVALID, *build(name))
    check_eq(sorted(os.listdir(os.path.join(env.store, "journal"))), [], "bad names: journal empty")

    size_cases = [("0", 0, INVALID), ("513", 513, INVALID), ("1000", 1000, INVALID), ("cap + 512", DEFAULT_CAP + 512, LIMIT),
                  ("2^64 - 512", (1 << 64) - 512, LIMIT)]
    for label, size, want in size_cases:
        for fmt in ("raw", "qcow2"):
            expect(env, f"CreateImage {fmt} size {label}", want, "CreateImage", "sz", fmt, t(size), opts())
        expect(env, f"CreateDisk blank size {label}", want, "CreateDisk", "vm1", "sz", "", t(size), opts())
    expect(env, "CreateImage swap smaller than 10 pages", INVALID, "CreateImage", "sz", "raw", t(32 * KiB),
           opts(template="swap"))

    def d(**kw):
        return dbus.Dictionary(kw, signature="sv")

    option_cases = [
        ("CreateImage unknown key", ("CreateImage", "o", "qcow2", t(MiB), d(bogus=dbus.String("x")))),
        ("CreateImage template as u", ("CreateImage", "o", "qcow2", t(MiB), d(template=dbus.UInt32(1)))),
        ("CreateImage template 'bogus'", ("CreateImage", "o", "qcow2", t(MiB), d(template=dbus.String("bogus")))),
        ("CreateImage cluster_size as s", ("CreateImage", "o", "qcow2", t(MiB), d(cluster_size=dbus.String("4096")))),
        ("CreateImage cluster_size as t", ("CreateImage", "o", "qcow2", t(MiB), d(cluster_size=dbus.UInt64(4096)))),
        ("CreateImage cluster_size as i", ("CreateImage", "o", "qcow2", t(MiB), d(cluster_size=dbus.Int32(4096)))),
        ("CreateImage cluster_size 1000", ("CreateImage", "o", "qcow2", t(MiB), d(cluster_size=dbus.UInt32(1000)))),
        ("CreateImage cluster_size 256", ("CreateImage", "o", "qcow2", t(MiB), d(cluster_size=dbus.UInt32(256)))),
        ("CreateImage cluster_size 4 MiB", ("CreateImage", "o", "qcow2", t(MiB), d(cluster_size=dbus.UInt32(4 * MiB)))),
        ("CreateImage cluster_size 0x80000000", ("CreateImage", "o", "qcow2", t(MiB),
                                                 d(cluster_size=dbus.UInt32(0x80000000)))),
        ("CreateImage cluster_size for raw", ("CreateImage", "o", "raw", t(MiB), d(cluster_size=dbus.UInt32(4096)))),
        ("CreateImage format 'QCOW2'", ("CreateImage", "o", "QCOW2", t(MiB), d())),
        ("CreateImage format 'vmdk'", ("CreateImage", "o", "vmdk", t(MiB), d())),
        ("CreateImage format ''", ("CreateImage", "o", "", t(MiB), d())),
        ("CreateVM unknown key", ("CreateVM", "o", u(0), d(owner=dbus.UInt32(0)))),
        ("CreateDisk unknown key", ("CreateDisk", "vm1", "o", "base-q", t(0), d(size=dbus.UInt64(0)))),
        ("CreateDisk mode as b", ("CreateDisk", "vm1", "o", "base-q", t(0), d(mode=dbus.Boolean(True)))),
        ("CreateDisk format as u", ("CreateDisk", "vm1", "o", "", t(MiB), d(format=dbus.UInt32(1)))),
        ("CreateDisk mode as a variant of array", ("CreateDisk", "vm1", "o", "base-q", t(0),
                                                   d(mode=dbus.Array(["copy"], signature="s")))),
        ("Snapshot unknown key", ("Snapshot", "vm1", "cr", d(read_only=dbus.Boolean(True)))),
        ("ImportImage unknown key", ("ImportImage", "o", "raw", None, d(move=dbus.Boolean(True)))),
    ]
    for label, args in option_cases:
        with open(good, "rb") as fh:
            args = tuple(dbus.types.UnixFd(fh.fileno()) if a is None else a for a in args)
            expect(env, label, INVALID, *args)
    # A call with the wrong signature altogether.
    before = env.snapshot_store()
    try:
        env.manager().CreateImage("o", "raw", dbus.UInt32(MiB), opts(), signature="ssua{sv}")
        err = None
    except dbus.exceptions.DBusException as e:
        err = e.get_dbus_name()
    seen_errors.add(err)
    check_eq(err, INVALID, "CreateImage with size as u (wrong signature): InvalidArgs")
    check_eq(env.snapshot_store(), before, "wrong signature: store unchanged")

    # ---------------------------------------------------------------- authorization
    if root_only("the authorization section (calls as uids 65534 and 1, with and without an admin group)"):
        # vm1 (owner nobody) has disks; vm2 (owner root) has none yet: give it one.
        expect(env, "CreateDisk vm2/r", None, "CreateDisk", "vm2", "r", "base-q", t(0), opts())
        root_images = plain(env.call("ListImages"))
        for user in (OWNER, OTHER):
            expect_as(env, user, "ListImages", None, "ListImages")
            check_eq(env.call_as(user, "ListImages")[1], root_images, f"ListImages as uid {user}: same as root's")
        res = expect_as(env, OWNER, "ListVMs (owner)", None, "ListVMs")
        check_eq(res, [["vm1", OWNER]], "ListVMs as the owner: only its own VM")
        expect_as(env, OTHER, "ListVMs (owns nothing)", DENIED, "ListVMs")
        res = expect_as(env, OWNER, "GetChain own VM", None, "GetChain", "vm1", "cr")
        check_eq(res, plain(env.call("GetChain", "vm1", "cr")), "GetChain as the owner: same as root's")
        expect_as(env, OWNER, "GetChain own VM, missing disk", NOTFOUND, "GetChain", "vm1", "ghost")
        res = expect_as(env, OWNER, "ListDisks own VM", None, "ListDisks", "vm1")
        check_eq(res, plain(env.call("ListDisks", "vm1")), "ListDisks as the owner: same as root's")
        res = expect_as(env, OWNER, "Verify own VM", None, "Verify", "vm1")
        check_eq(res, [], "Verify as the owner: no problems")
        deny_msgs = {}
        for user in (OWNER, OTHER):
            for vm in ("vm1", "vm2", "ghost"):
                if user == OWNER and vm == "vm1":
                    continue
                disk = "cr" if vm == "vm1" else "r"
                for method, args in [("GetChain", (vm, disk)), ("ListDisks", (vm,)), ("Verify", (vm,)),
                                     ("Snapshot", (vm, disk, {}))]:
                    msg = expect_as(env, user, f"{method} on {vm}", DENIED, method, *args)
                    deny_msgs.setdefault((user, method), set()).add(str(msg).replace(f"'{vm}'", "'VM'"))
        for (user, method), msgs in deny_msgs.items():
            check_eq(len(msgs), 1, f"{method} as uid {user}: the same answer for someone else's VM and a missing one")
        n = len(chain(env, "vm1", "cr"))
        res = expect_as(env, OWNER, "Snapshot own VM", None, "Snapshot", "vm1", "cr", {})
        check_eq(len(chain(env, "vm1", "cr")), n + 1, "Snapshot as the owner: the chain grew")
        check_eq(chain(env, "vm1", "cr")[0][0], res, "Snapshot as the owner: returns the new top")
        with open(good, "rb") as fh:
            for user in (OWNER, OTHER):
                admin_calls = [
                    ("CreateImage", ("evil", "raw", MiB, {})), ("ImportImage", ("evil", "raw", f"fd:{fh.fileno()}", {})),
                    ("DeleteImage", ("base-q",)), ("DeleteImage", ("ghost",)), ("CreateVM", ("evil", user, {})),
                    ("DeleteVM", ("vm1",)), ("DeleteVM", ("vm2",)), ("CreateDisk", ("vm1", "evil", "base-q", 0, {})),
                    ("CreateDisk", ("vm1", "evil", "", MiB, {})), ("DeleteDisk", ("vm1", "cr")), ("DeleteDisk", ("vm2", "r")),
                    ("ListJobs", ()),
                ]
                for method, args in admin_calls:
                    expect_as(env, user, f"{method}{args[:2]}", DENIED, method, *args, fds=(fh.fileno(),))

        # The admin group, configured in a second daemon; uid 1 with and without the group.
        p = subprocess.run(["groupadd", group_name], capture_output=True, text=True)
        check_eq(p.returncode, 0, f"groupadd {group_name} ({p.stderr.strip()})")
        group_created = p.returncode == 0
        gid = grp.getgrnam(group_name).gr_gid
        # In the main daemon no admin group is configured: the group means nothing.
        expect_as(env, OTHER, "CreateVM with an unconfigured admin group", DENIED, "CreateVM", "evil", OTHER, {}, groups=gid)
        genv = Env(VDISKD, config_extra=f"[Access]\nAdminGroup={group_name}\n")
        envs.append(genv)
        genv.start()
        expect(genv, "admin-group env: CreateImage (root)", None, "CreateImage", "img", "raw", t(MiB), opts())
        expect(genv, "admin-group env: CreateVM root-vm (root)", None, "CreateVM", "root-vm", u(0), opts())
        expect(genv, "admin-group env: CreateDisk root-vm/d (root)", None, "CreateDisk", "root-vm", "d", "img", t(0), opts())
        for label, groups in [("no groups", None), ("another group", 65534)]:
            expect_as(genv, OTHER, f"CreateVM ({label})", DENIED, "CreateVM", "evil", OTHER, {}, groups=groups)
            expect_as(genv, OTHER, f"GetChain root's VM ({label})", DENIED, "GetChain", "root-vm", "d", groups=groups)
            expect_as(genv, OTHER, f"ListJobs ({label})", DENIED, "ListJobs", groups=groups)
        A = dict(groups=gid)
        expect_as(genv, OTHER, "admin group: CreateImage", None, "CreateImage", "gimg", "qcow2", MiB, {}, **A)
        with open(good, "rb") as fh:
            job = expect_as(genv, OTHER, "admin group: ImportImage", None, "ImportImage", "gimp", "raw", f"fd:{fh.fileno()}",
                            {}, fds=(fh.fileno(),), **A)
        check_eq(genv.wait_job(job)[0], "done", "admin group: the import job is done")
        err, st = genv.get_property_as(OTHER, "State", path=job, interface=JOB_IFACE, **A)
        check_eq((err, st), (None, "done"), "admin group: reads its job's State")
        err, st = genv.get_property_as(OTHER, "State", path=job, interface=JOB_IFACE)
        check_eq(err, None, "the job's starter uid may read its job (even without the group now)")
        expect_as(genv, OTHER, "admin group: CreateVM", None, "CreateVM", "gvm", OWNER, {}, **A)
        expect_as(genv, OTHER, "admin group: CreateDisk", None, "CreateDisk", "gvm", "d", "gimg", 0, {}, **A)
        res = expect_as(genv, OTHER, "admin group: ListVMs", None, "ListVMs", **A)
        check_eq(sorted(map(tuple, res)), [("gvm", OWNER), ("root-vm", 0)], "admin group: ListVMs shows every VM")
        expect_as(genv, OTHER, "admin group: GetChain of root's VM", None, "GetChain", "root-vm", "d", **A)
        expect_as(genv, OTHER, "admin group: Snapshot of root's VM", None, "Snapshot", "root-vm", "d", {}, **A)
        expect_as(genv, OTHER, "admin group: Verify of root's VM", None, "Verify", "root-vm", **A)
        res = expect_as(genv, OTHER, "admin group: ListJobs", None, "ListJobs", **A)
        check(any(j[0] == job for j in res), "admin group: ListJobs lists the job")
        expect_as(genv, OTHER, "admin group: DeleteImage in use", INUSE, "DeleteImage", "gimg", **A)
        expect_as(genv, OTHER, "admin group: DeleteDisk", None, "DeleteDisk", "gvm", "d", **A)
        expect_as(genv, OTHER, "admin group: DeleteVM", None, "DeleteVM", "gvm", **A)
        expect_as(genv, OTHER, "admin group: DeleteImage", None, "DeleteImage", "gimg", **A)
        expect_as(genv, OWNER, "admin group: the owner of nothing, without the group", DENIED, "ListVMs")
        genv.close()
        envs.remove(genv)
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = env.address  # Env() points the process at its own bus
    else:
        # What a user can check: a daemon whose admin group it is not in treats it as anyone.
        nenv = Env(VDISKD, config_extra="[Access]\nAdminGroup=root\n")
        envs.append(nenv)
        nenv.start()
        expect(nenv, "not in the admin group: ListImages", None, "ListImages")
        for method, args in [("CreateImage", ("evil", "raw", t(MiB), opts())), ("CreateVM", ("evil", u(0), opts())),
                             ("ListVMs", ()), ("ListJobs", ()), ("DeleteImage", ("ghost",))]:
            expect(nenv, f"not in the admin group: {method}", DENIED, method, *args)
        nenv.close()
        envs.remove(nenv)
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = env.address  # Env() points the process at its own bus

    # ---------------------------------------------------------------- limits (another daemon)
    cap = GiB
    lenv = Env(VDISKD, config_extra=f"[Limits]\nMaxChainDepth=3\nMaxVMs=2\nMaxVirtualSize={cap}\nMaxDisksPerVM=2\n")
    envs.append(lenv)
    lenv.start()
    check_eq(int(dbus.Interface(lenv.bus.get_object(BUS_NAME, PATH, introspect=False), PROPS_IFACE)
                 .Get(IFACE, "MaxChainDepth")), 3, "MaxChainDepth property follows the configuration")
    expect(lenv, "CreateImage at the cap", None, "CreateImage", "at-cap", "qcow2", t(cap), opts())
    expect(lenv, "CreateImage above the configured cap", LIMIT, "CreateImage", "over", "qcow2", t(cap + 512), opts())
    expect(lenv, "CreateVM a", None, "CreateVM", "a", u(0), opts())
    expect(lenv, "CreateVM b", None, "CreateVM", "b", u(0), opts())
    expect(lenv, "CreateVM beyond MaxVMs=2", LIMIT, "CreateVM", "c", u(0), opts())
    expect(lenv, "CreateDisk blank above the configured cap", LIMIT, "CreateDisk", "a", "x", "", t(cap + 512), opts())
    expect(lenv, "CreateDisk overlay larger than the cap", LIMIT, "CreateDisk", "a", "x", "at-cap", t(2 * cap), opts())
    expect(lenv, "CreateDisk overlay (depth 2)", None, "CreateDisk", "a", "o", "at-cap", t(0), opts())
    expect(lenv, "Snapshot (depth 3)", None, "Snapshot", "a", "o", opts())
    expect(lenv, "Snapshot beyond MaxChainDepth=3", TOODEEP, "Snapshot", "a", "o", opts())
    check_eq(len(chain(lenv, "a", "o")), 3, "the refused snapshot left the chain at 3")
    expect(lenv, "CreateDisk blank (depth 1)", None, "CreateDisk", "b", "x", "", t(MiB), opts())
    expect(lenv, "Snapshot blank (depth 2)", None, "Snapshot", "b", "x", opts())
    expect(lenv, "Snapshot blank (depth 3)", None, "Snapshot", "b", "x", opts())
    expect(lenv, "Snapshot blank beyond MaxChainDepth=3", TOODEEP, "Snapshot", "b", "x", opts())
    expect(lenv, "CreateDisk b/y (second disk)", None, "CreateDisk", "b", "y", "", t(MiB), opts())
    expect(lenv, "CreateDisk beyond MaxDisksPerVM=2", LIMIT, "CreateDisk", "b", "z", "", t(MiB), opts())
    check_eq(list(lenv.call("Verify", "a")) + list(lenv.call("Verify", "b")), [], "limits env: Verify clean")
    lenv.close()
    envs.remove(lenv)
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = env.address

    # ---------------------------------------------------------------- records across restarts
    def state(e):
        out = {"images": images(e), "vms": vms(e)}
        for vm, _ in out["vms"]:
            for d in sorted(json.load(open(store_path(e, f"records/vm-{vm}.json")))["disks"], key=lambda x: x["name"]):
                out[f"{vm}/{d['name']}"] = chain(e, vm, d["name"])
        return out

    before_state, before_store = state(env), env.snapshot_store()
    check(len(before_state) >= 8, f"a store worth restarting ({len(before_state) - 2} disks)")
    env.restart()
    check_eq(state(env), before_state, "after restart: ListImages, ListVMs and every chain identical")
    check_eq(env.snapshot_store(), before_store, "after restart: store files byte-identical")
    check_eq(list(env.call("Verify", "vm1")), [], "after restart: Verify clean")

    # A record with a future schema, then a malformed one: refuse to start, with a clear log line.
    def refuses(label, rel, content, log_pattern):
        env.stop()
        path = store_path(env, rel)
        original = open(path, "rb").read()
        with open(path, "w") as fh:
            fh.write(content(original))
        store_before = env.snapshot_store()
        log_len = len(env.log_text())
        proc = env.start(expect_ready=False)
        try:
            rc = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = None
        check(rc is not None and rc != 0, f"{label}: vdiskd exits non-zero ({rc})")
        log = env.log_text()[log_len:]
        check(re.search(log_pattern, log) is not None, f"{label}: log says so ({log.strip()!r})")
        check(os.path.basename(rel) in log, f"{label}: log names the record")
        check(not env.bus.name_has_owner(BUS_NAME), f"{label}: the bus name is not taken")
        check_eq(env.snapshot_store(), store_before, f"{label}: the refused start changed nothing")
        with open(path, "wb") as fh:
            fh.write(original)
        env.start()
        check_eq(state(env), before_state, f"{label}: after repairing the record the daemon starts with everything")

    def set_field(key, value):
        def f(original):
            o = json.loads(original)
            o[key] = value
            return json.dumps(o)
        return f

    refuses("vm record with schema 99", "records/vm-vm1.json", set_field("schema", 99), r"newer schema")
    lrec = f"records/layer-{lq}.json"
    refuses("layer record with schema 99", lrec, set_field("schema", 99), r"newer schema")
    refuses("layer record that is not JSON", lrec, lambda o: o.decode()[:-5],
            r"cannot be read: it is not one complete JSON object; refusing to start")
    refuses("layer record with a string size", lrec, set_field("virtual_size", "1G"), r"malformed; refusing to start")
    refuses("vm record with a negative owner", "records/vm-vm1.json", set_field("owner_uid", -1),
            r"malformed; refusing to start")
    refuses("layer record naming a file outside the store", lrec, set_field("file", "../../canary"),
            r"malformed; refusing to start")

    # Orphans and a leftover journal entry are cleaned at start; everything else stays.
    env.stop()
    before_store = env.snapshot_store()
    orphan = "images/" + "0123456789abcdef" * 2 + ".qcow2"
    tmpfile = "images/.#" + "fedcba9876543210" * 2 + ".raw"
    for rel in (orphan, tmpfile):
        with open(store_path(env, rel), "wb") as fh:
            fh.write(b"orphan" * 100)
    lid, jid = "aa" * 16, "bb" * 16
    with open(store_path(env, f"records/layer-{lid}.json"), "w") as fh:
        json.dump({"schema": 1, "layer": lid, "file": f"{lid}.raw", "format": "raw", "virtual_size": MiB,
                   "backing_layer": None, "backing_format": None, "data_file": None, "catalog_name": "half",
                   "vm": None, "state": "creating", "generation": 1, "inode": 0}, fh)
    with open(store_path(env, f"images/{lid}.raw"), "wb") as fh:
        fh.truncate(MiB)
    with open(store_path(env, f"journal/{jid}.json"), "w") as fh:
        json.dump({"schema": 1, "op": "create-image", "commit": "layer-ready", "commit_name": lid,
                   "commit_generation": 0, "new_layers": [lid], "drop_layers": []}, fh)
    log_len = len(env.log_text())
    env.start()
    log = env.log_text()[log_len:]
    check_eq(env.snapshot_store(), before_store, "orphan file, temporary, and interrupted create-image all removed")
    check("half" not in images(env), "the interrupted image is not listed")
    check("Removing orphaned file images/" + orphan.split("/")[1] in log, "log names the removed orphan file")
    check("Rolling back interrupted operation create-image" in log, "log names the rolled-back operation")
    check_eq(state(env), before_state, "after clean-up: everything else listed the same")

    # ---------------------------------------------------------------- every error name was seen
    missing = REQUIRED_ERRORS - seen_errors
    check_eq(sorted(missing), [], "every contract error name was produced at least once")
finally:
    for e in envs:
        e.close()
    if group_created:
        subprocess.run(["groupdel", group_name], capture_output=True)
finish()
