# SPDX-License-Identifier: LGPL-2.1-or-later
"""Limits and hostile callers (issue 7): every cap on what a caller can make vdiskd hold or parse,
other than leases and lease fds (test-daemon-limits.py). Each cap is set small in [Limits] and
driven to its edge: the call at the limit succeeds, the call past it is refused with the exact
error, a message that names the limit, the store byte for byte unchanged (records, journal and
images, hashed) and the daemon still serving. Proved here:

- MaxJobs: with N jobs running (slow flattens: VDISKD_TEST_STEP_BYTES / VDISKD_TEST_STEP_DELAY_MS)
  the next Rebase, Commit and ImportImage are LimitExceeded "(limit N)", make no job object and
  keep no fd; the N-th was accepted; finished (lingering) jobs do not count. The store is compared
  once the jobs are cancelled (a running flatten changes its own files).
- MaxChainDepth: the Manager property; Snapshot of a disk at the limit is ChainTooDeep; an overlay
  with MaxChainDepth=1 is ChainTooDeep; AdoptDomainXML of a chain one layer deeper than the limit is
  ChainTooDeep before any file is opened, one at the limit is adopted.
- MaxVMs, MaxDisksPerVM (CreateDisk and AdoptDomainXML), MaxImages (the number of layers in the
  store, vdiskd(8), from which CreateImage, ImportImage and AdoptDomainXML are refused): the last one
  accepted, the next one LimitExceeded, and accepted again once one is deleted.
- MaxVirtualSize: CreateImage, CreateDisk (blank, and an overlay with a size), ImportImage of a raw
  file one sector too large and of a qcow2 whose header says so (the job fails with LimitExceeded
  and leaves nothing behind), a source larger than any image could be (refused at once); Inspect
  reports the limit in its verdict.
- Arguments: an options dictionary with more entries than OPTIONS_MAX (17, and 100,000) and names of
  65 bytes and of 1 MiB (as image, VM and disk names of several methods) are InvalidArgs (the
  contract's rule for names and options, org.vdisk1(5)), at once, without echoing them; 64-byte
  names and a dictionary with every key a method knows work.
- AdoptDomainXML: XML of exactly 1 MiB is adopted, one byte more is LimitExceeded; XML nested far
  deeper than any chain needs (150,000 elements) must be refused with LimitExceeded before any
  file is looked at.
- Records: a record of RECORD_MAX_SIZE + 1 bytes, or nested RECORD_MAX_DEPTH + 1 deep, makes vdiskd
  refuse to start (exit status 1, no crash, no bus name) with a log line naming the record and the
  limit, the store untouched; at exactly the limit it starts and serves the other records.
- Records the daemon writes itself: a VM whose (unprivileged) owner keeps snapshotting must never
  get a VM record larger than the daemon will read back, or vdiskd would not start again. The VM is
  planted with about 8,200 disks of one layer (MaxDisksPerVM raised), its record 16 snapshots short of
  RECORD_MAX_SIZE; with the default limits the same record is 24 disks of ~990 layers. And DeleteVM
  of a VM with more private layers than one journal intent may name (INTENT_MAX_LAYERS) either
  works or is refused with a message naming that limit, nothing changed.
- Pending calls: a hostile client sending 20,000 calls (GetChain, ListVMs, GetChain with a bad name;
  half of them without a reply wanted, which dbus-daemon's max_replies_per_connection does not
  count) without reading any reply: vdiskd's VmRSS stays within 2 MiB of the baseline during and
  after the flood (in an ASan build with the quarantine off for that daemon), its fd count comes
  back, and another client is served meanwhile. Figures (calls, answers by kind, time, latency,
  VmRSS) are printed. VDISK_LIMITS_FLOOD_CALLS changes the number of calls.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import dbus

from vdisktest import BUS_NAME, PATH, IFACE, ROOT, Env, check, check_eq, finish, opts, qemu_img, root_only

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
E = "org.vdisk1.Error."
LIMIT, TOODEEP, INVALID = E + "LimitExceeded", E + "ChainTooDeep", "org.freedesktop.DBus.Error.InvalidArgs"
DENIED = "org.freedesktop.DBus.Error.AccessDenied"
OWNER = 65534 if ROOT else os.geteuid()  # a user cannot become another uid: it owns the VM itself

# Built-in caps of the daemon (daemon/bus/bus-manager.c, daemon/shared/util.h, daemon/ops/domain-xml.h,
# daemon/store/record.h, daemon/store/store.h).
OPTIONS_MAX = 16
NAME_MAX_LEN = 64
DISK_NAME_MAX_LEN = 31  # disk names are QEMU node names: ^[A-Za-z][A-Za-z0-9_.-]{0,30}$
DOMAIN_XML_MAX_SIZE = 1 << 20
RECORD_MAX_SIZE = 1 << 20
RECORD_MAX_DEPTH = 8
INTENT_MAX_LAYERS = 4096

VDISKD = sys.argv[1]
SLOW = {"VDISKD_TEST_STEP_BYTES": str(64 * KiB), "VDISKD_TEST_STEP_DELAY_MS": "50"}
FLOOD_CALLS = int(os.environ.get("VDISK_LIMITS_FLOOD_CALLS") or 20000)
RSS_TOLERANCE = 2 * MiB


def t(n):
    return dbus.UInt64(n)


def u(n):
    return dbus.UInt32(n)


def serving(env, label):
    alive = env.daemon.poll() is None
    err = env.try_call("ListImages")[0] if alive else "(exited)"
    check(alive and err is None, f"{label}: vdiskd keeps serving (alive, ListImages answers: {err or 'ok'})")


def store_diff(before, after):
    """What changed between two snapshot_store() results, in a few words."""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return "; ".join(f"{what}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
                     for what, names in (("added", added), ("removed", removed), ("changed", changed)) if names)


def check_store(env, before, label, what="the store is byte for byte unchanged"):
    after = env.snapshot_store()
    check(after == before, f"{label}: {what}" + ("" if after == before else f" ({store_diff(before, after)})"))


def refused(env, label, want, needles, method, *args, say="the message names the limit"):
    """The call is refused with `want`, its message contains every needle, nothing in the store changes."""
    if method == "AdoptDomainXML" and want != DENIED and not root_only(f"{label}: {want.rsplit('.', 1)[1]}"):
        want, needles = DENIED, []  # an admin-group member may not adopt
    before = env.snapshot_store()
    err, msg = env.try_call(method, *args)
    check_eq(err, want, f"{label}: {want.rsplit('.', 1)[1]}")
    for n in needles:
        check(n in str(msg), f"{label}: {say} ({n!r} in {str(msg)[:200]!r})")
    check_store(env, before, label)
    serving(env, label)
    return err, msg


def accepted(env, label, method, *args):
    if method == "AdoptDomainXML" and not root_only(f"{label}: accepted"):
        refused(env, label, DENIED, [], method, *args)  # an admin-group member may not adopt
        return None
    err, res = env.try_call(method, *args)
    check_eq(err, None, f"{label}: accepted{'' if err is None else ' (' + str(res)[:200] + ')'}")
    return res


def job_props(env, path):
    props = dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.freedesktop.DBus.Properties")
    return props.GetAll("org.vdisk1.Job")


def job_cancel(env, path):
    dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), "org.vdisk1.Job").Cancel()


def import_raw(env, name, size, data=None):
    p = os.path.join(env.tmp, f"src-{name}.raw")
    with open(p, "wb") as f:
        if data:
            f.write(data)
        f.truncate(size)
    return env.import_file(name, "raw", p)


def disk_xml(target, layers, pad=0):
    """A libvirt <disk> element for layers [(path, format)], top first; `pad` bytes of comment before <target>."""
    top_path, top_fmt = layers[0]
    s = f"<disk type='file' device='disk'><driver name='qemu' type='{top_fmt}'/><source file='{top_path}'/>"
    for path, fmt in layers[1:]:
        s += f"<backingStore type='file'><format type='{fmt}'/><source file='{path}'/>"
    s += "<backingStore/>" + "</backingStore>" * (len(layers) - 1)
    if pad:
        s += "<!--" + "x" * (pad - 7) + "-->"
    return s + f"<target dev='{target}' bus='virtio'/></disk>"


def padded_xml(target, layers, size):
    bare = disk_xml(target, layers)
    xml = disk_xml(target, layers, pad=size - len(bare.encode()))
    assert len(xml.encode()) == size
    return xml


def qcow2_chain(env, prefix, n, size=MiB):
    """n files: a raw base and n - 1 qcow2 overlays, each naming the one below with its format. Top first."""
    base = os.path.join(env.tmp, f"{prefix}0.raw")
    with open(base, "wb") as f:
        f.truncate(size)
    layers = [(base, "raw")]
    for i in range(1, n):
        p = os.path.join(env.tmp, f"{prefix}{i}.qcow2")
        r = qemu_img("create", "-q", "-f", "qcow2", "-b", layers[0][0], "-F", layers[0][1], p, str(size))
        assert r.returncode == 0, r.stderr
        layers.insert(0, (p, "qcow2"))
    return layers


def start_waiting(env, timeout=120):
    """Starts vdiskd and waits up to `timeout` s for its bus name (a store of many thousand records takes a
    while under the sanitizers); returns whether it took it."""
    p = env.start(expect_ready=False)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if env.bus.name_has_owner(BUS_NAME):
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.025)
    return False


def daemon_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * KiB
    return 0


# ---------------------------------------------------------------------------------------------------

def test_max_jobs():
    print("== MaxJobs", flush=True)
    env = Env(VDISKD, "[Limits]\nMaxJobs=2\n")
    try:
        env.start(SLOW)
        # A base image with 4 MiB of data: a flatten of an overlay on it copies 64 steps of 64 KiB, 50 ms apart.
        check_eq(import_raw(env, "base", 4 * MiB, os.urandom(4 * MiB))[0], None, "setup: import of the base image")
        env.call("CreateVM", "vm", u(0), opts())
        for d in ("d1", "d2", "d3", "d4"):
            env.call("CreateDisk", "vm", d, "base", t(0), opts())
        low = env.call("Snapshot", "vm", "d3", opts())
        env.call("Snapshot", "vm", "d3", opts())
        before = env.snapshot_store()

        j1 = accepted(env, "first flatten (no job running)", "Rebase", "vm", "d1", "", opts())
        j2 = accepted(env, "second flatten (1 running, limit 2)", "Rebase", "vm", "d2", "", opts())
        states = [str(job_props(env, j)["State"]) for j in (j1, j2) if j]
        check_eq(states, ["running", "running"], "both jobs are still running when the third is asked for")
        running = [str(j[0]) for j in env.call("ListJobs") if str(job_props(env, j[0])["State"]) == "running"]
        check_eq(sorted(running), sorted([j1, j2]), "ListJobs: exactly these two are running")
        n_jobs = len(env.call("ListJobs"))

        fds = len(os.listdir(f"/proc/{env.daemon.pid}/fd"))
        # Past the limit: each way of starting a job. (The running flattens change their own files, so the
        # store is compared once they are cancelled, below.)
        src = os.path.join(env.tmp, "third.raw")
        with open(src, "wb") as f:
            f.truncate(MiB)
        with open(src, "rb") as f:
            for label, method, args in [
                    ("Rebase (flatten) with 2 jobs running", "Rebase", ("vm", "d3", "", opts())),
                    ("Commit with 2 jobs running", "Commit", ("vm", "d3", str(low), opts())),
                    ("ImportImage with 2 jobs running", "ImportImage", ("third", "raw", dbus.types.UnixFd(f.fileno()),
                                                                        opts()))]:
                err, msg = env.try_call(method, *args)
                check_eq(err, LIMIT, f"MaxJobs=2: {label}: LimitExceeded")
                check("limit 2" in str(msg), f"MaxJobs=2: {label}: the message names the limit ({msg})")
        check_eq(len(env.call("ListJobs")), n_jobs, "no job object was made for a refused call")
        # (A step of a running flatten may hold a file for a moment: a leak is an fd that stays.)
        end = time.monotonic() + 3
        while len(os.listdir(f"/proc/{env.daemon.pid}/fd")) != fds and time.monotonic() < end:
            time.sleep(0.05)
        check_eq(len(os.listdir(f"/proc/{env.daemon.pid}/fd")), fds, "vdiskd holds no fd more after the refusals "
                 "(the ImportImage source included)")
        serving(env, "MaxJobs=2 reached")

        for j in (j1, j2):
            job_cancel(env, j)
        check_eq([env.wait_job(j)[0] for j in (j1, j2)], ["cancelled", "cancelled"], "both jobs cancelled")
        check_store(env, before, "after the refusals and the cancellations",
                    "the store is byte for byte as before the jobs (nothing from the refused calls)")

        # Two cancelled jobs linger as objects; they do not count.
        j3 = accepted(env, "flatten with 2 finished jobs lingering", "Rebase", "vm", "d1", "", opts())
        j4 = accepted(env, "second flatten with 2 finished jobs lingering", "Rebase", "vm", "d4", "", opts())
        err, msg = env.try_call("Rebase", "vm", "d3", "", opts())
        check_eq(err, LIMIT, "a third running job is refused again")
        for j in (j3, j4):
            job_cancel(env, j)
        check_eq([env.wait_job(j)[0] for j in (j3, j4)], ["cancelled", "cancelled"], "both cancelled again")
        check_store(env, before, "after the second cancellations", "the store is byte for byte as before the jobs")
        env.stop()
    finally:
        env.close()


def test_max_chain_depth():
    print("== MaxChainDepth", flush=True)
    env = Env(VDISKD, "[Limits]\nMaxChainDepth=4\n")
    try:
        env.start()
        props = dbus.Interface(env.bus.get_object(BUS_NAME, PATH, introspect=False), "org.freedesktop.DBus.Properties")
        depth = props.Get(IFACE, "MaxChainDepth")
        check_eq((type(depth).__name__, int(depth)), ("UInt32", 4), "Manager property MaxChainDepth is the configured u 4")

        env.call("CreateImage", "base", "qcow2", t(MiB), opts())
        env.call("CreateVM", "vm", u(0), opts())
        env.call("CreateDisk", "vm", "d", "base", t(0), opts())
        accepted(env, "Snapshot to 3 layers", "Snapshot", "vm", "d", opts())
        accepted(env, "Snapshot to 4 layers (the limit)", "Snapshot", "vm", "d", opts())
        check_eq(len(env.call("GetChain", "vm", "d")), 4, "the chain has 4 layers")
        refused(env, "Snapshot past MaxChainDepth=4", TOODEEP, ["has 4 layers", "limit is 4"], "Snapshot", "vm", "d", opts())

        # Adoption: a chain of exactly 4 layers is taken, one of 5 is refused before any file is opened
        # (the 5-layer XML names files that do not exist: ChainTooDeep, not NotFound).
        env.call("CreateVM", "a", u(0), opts())
        four = qcow2_chain(env, "c4-", 4)
        accepted(env, "AdoptDomainXML of a 4-layer chain", "AdoptDomainXML", "a", disk_xml("four", four), opts())
        if ROOT:
            check_eq(len(env.call("GetChain", "a", "four")), 4, "the adopted chain has 4 layers")
        five = [(os.path.join(env.tmp, f"missing{i}.qcow2"), "qcow2") for i in range(5)]
        refused(env, "AdoptDomainXML of a 5-layer chain", TOODEEP, ["more than 4 layers", "MaxChainDepth"],
                "AdoptDomainXML", "a", disk_xml("five", five), opts())
        # 1 MiB of <backingStore> nesting: still only MaxChainDepth layers are looked at.
        bs = f"<backingStore type='file'><format type='qcow2'/><source file='{env.tmp}/nope'/>"
        head = f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{env.tmp}/nope'/>"
        n = (DOMAIN_XML_MAX_SIZE - 200) // (len(bs) + len("</backingStore>"))
        deep = head + bs * n + "<backingStore/>" + "</backingStore>" * n + "<target dev='deep'/></disk>"
        t0 = time.monotonic()
        refused(env, f"AdoptDomainXML of {n} nested <backingStore> elements", TOODEEP, ["more than 4 layers"],
                "AdoptDomainXML", "a", deep, opts())
        check(time.monotonic() - t0 < 10, f"... refused within 10 s ({time.monotonic() - t0:.2f} s)")
        env.stop()

        # MaxChainDepth=1: no overlay at all; a blank disk is fine, its Snapshot is not.
        with open(env.config, "a") as f:  # a later value replaces MaxChainDepth=4 (and keeps the rest)
            f.write("[Limits]\nMaxChainDepth=1\n")
        env.start()
        refused(env, "overlay with MaxChainDepth=1", TOODEEP, ["limit is 1"], "CreateDisk", "vm", "o", "base", t(0), opts())
        accepted(env, "blank disk with MaxChainDepth=1", "CreateDisk", "vm", "b", "", t(MiB), opts())
        refused(env, "Snapshot with MaxChainDepth=1", TOODEEP, ["limit is 1"], "Snapshot", "vm", "b", opts())
        env.stop()
    finally:
        env.close()


def test_vms_and_disks():
    print("== MaxVMs, MaxDisksPerVM", flush=True)
    env = Env(VDISKD, "[Limits]\nMaxVMs=3\nMaxDisksPerVM=2\n")
    try:
        env.start()
        accepted(env, "CreateVM 1 of 3", "CreateVM", "v1", u(0), opts())
        accepted(env, "CreateVM 2 of 3", "CreateVM", "v2", u(0), opts())
        accepted(env, "CreateVM 3 of 3 (the limit)", "CreateVM", "v3", u(0), opts())
        refused(env, "CreateVM past MaxVMs=3", LIMIT, ["maximum number of VMs (3)"], "CreateVM", "v4", u(0), opts())
        env.call("DeleteVM", "v3")
        accepted(env, "CreateVM once one was deleted", "CreateVM", "v4", u(0), opts())

        accepted(env, "CreateDisk 1 of 2", "CreateDisk", "v1", "a", "", t(MiB), opts(format="raw"))
        accepted(env, "CreateDisk 2 of 2 (the limit)", "CreateDisk", "v1", "b", "", t(MiB), opts())
        refused(env, "CreateDisk past MaxDisksPerVM=2", LIMIT, ["maximum number of disks (2)"],
                "CreateDisk", "v1", "c", "", t(MiB), opts())
        raw = os.path.join(env.tmp, "adopt.raw")
        with open(raw, "wb") as f:
            f.truncate(MiB)
        refused(env, "AdoptDomainXML into a VM with MaxDisksPerVM=2 disks", LIMIT, ["maximum number of disks (2)"],
                "AdoptDomainXML", "v1", disk_xml("c", [(raw, "raw")]), opts())
        accepted(env, "CreateDisk on another VM", "CreateDisk", "v2", "a", "", t(MiB), opts())
        accepted(env, "AdoptDomainXML as that VM's second disk", "AdoptDomainXML", "v2", disk_xml("b", [(raw, "raw")]),
                 opts())
        env.call("DeleteDisk", "v1", "b")
        accepted(env, "CreateDisk once one was deleted", "CreateDisk", "v1", "c", "", t(MiB), opts())
        env.stop()
    finally:
        env.close()


def test_max_images():
    print("== MaxImages", flush=True)
    env = Env(VDISKD, "[Limits]\nMaxImages=4\n")
    try:
        env.start()
        # Layers of every kind count (vdiskd(8)): 1 catalog image + an overlay + a snapshot = 3.
        env.call("CreateImage", "i1", "qcow2", t(MiB), opts())
        env.call("CreateVM", "vm", u(0), opts())
        env.call("CreateDisk", "vm", "d", "i1", t(0), opts())
        env.call("Snapshot", "vm", "d", opts())
        accepted(env, "CreateImage as the 4th layer (the limit)", "CreateImage", "i2", "raw", t(MiB), opts())
        refused(env, "CreateImage past MaxImages=4", LIMIT, ["maximum number of layers (4)"],
                "CreateImage", "i3", "raw", t(MiB), opts())
        src = os.path.join(env.tmp, "src.raw")
        with open(src, "wb") as f:
            f.truncate(MiB)
        with open(src, "rb") as f:
            refused(env, "ImportImage past MaxImages=4", LIMIT, ["maximum number of layers (4)"],
                    "ImportImage", "i3", "raw", dbus.types.UnixFd(f.fileno()), opts())
        refused(env, "AdoptDomainXML past MaxImages=4", LIMIT, ["limit 4"],
                "AdoptDomainXML", "vm", disk_xml("e", [(src, "raw")]), opts())
        check_eq(sorted(str(i[0]) for i in env.call("ListImages")), ["i1", "i2"], "ListImages: the two catalog images")
        env.call("DeleteImage", "i2")
        check_eq(env.import_file("i3", "raw", src)[0], None, "ImportImage as the 4th layer once one was deleted")
        env.call("DeleteImage", "i3")
        accepted(env, "AdoptDomainXML of 1 layer as the 4th layer", "AdoptDomainXML", "vm", disk_xml("e", [(src, "raw")]),
                 opts())
        if ROOT:  # the adopted layer is the 4th
            refused(env, "CreateImage past MaxImages=4 again", LIMIT, ["maximum number of layers (4)"],
                    "CreateImage", "i4", "raw", t(MiB), opts())
        env.stop()
    finally:
        env.close()


def test_max_virtual_size():
    print("== MaxVirtualSize", flush=True)
    lim = MiB
    env = Env(VDISKD, f"[Limits]\nMaxVirtualSize={lim}\n")
    needle = [f"limit of {lim}"]
    try:
        env.start()
        for fmt in ("raw", "qcow2"):
            accepted(env, f"CreateImage {fmt} of exactly MaxVirtualSize", "CreateImage", f"ok-{fmt}", fmt, t(lim), opts())
            refused(env, f"CreateImage {fmt} of MaxVirtualSize + 512", LIMIT, needle,
                    "CreateImage", f"big-{fmt}", fmt, t(lim + 512), opts())
        env.call("CreateImage", "half", "qcow2", t(lim // 2), opts())
        env.call("CreateVM", "vm", u(0), opts())
        accepted(env, "blank CreateDisk of exactly MaxVirtualSize", "CreateDisk", "vm", "blank", "", t(lim), opts())
        refused(env, "blank CreateDisk of MaxVirtualSize + 512", LIMIT, needle,
                "CreateDisk", "vm", "blank2", "", t(lim + 512), opts())
        accepted(env, "overlay grown to exactly MaxVirtualSize", "CreateDisk", "vm", "ov", "half", t(lim), opts())
        refused(env, "overlay grown to MaxVirtualSize + 512", LIMIT, needle,
                "CreateDisk", "vm", "ov2", "half", t(lim + 512), opts())

        # Uploads: the limit is checked on the copy, in the job; the job fails and leaves nothing.
        def upload(label, name, fmt, path, want, needles):
            before = env.snapshot_store()
            err, msg = env.import_file(name, fmt, path)
            check_eq(err, want, f"{label}: {'accepted' if want is None else want.rsplit('.', 1)[1]}"
                                + (f" ({msg})" if err else ""))
            for n in needles:
                check(n in str(msg), f"{label}: the message names the limit ({n!r} in {msg!r})")
            if want:
                check_store(env, before, label)
            serving(env, label)

        for size, want in ((lim, None), (lim + 512, LIMIT)):
            p = os.path.join(env.tmp, f"up-{size}.raw")
            with open(p, "wb") as f:
                f.write(b"\xa5" * 4096)
                f.truncate(size)
            upload(f"ImportImage raw of {size} bytes", f"raw-{size}", "raw", p, want, [] if want is None else needle)
            q = os.path.join(env.tmp, f"up-{size}.qcow2")
            check_eq(qemu_img("create", "-q", "-f", "qcow2", q, str(size)).returncode, 0,
                     f"setup: qemu-img create of a qcow2 of {size} bytes")
            upload(f"ImportImage qcow2 whose header says {size} bytes", f"q-{size}", "qcow2", q, want,
                   [] if want is None else [f"virtual size {size} is above the limit of {lim}"])
        # A source larger than any image could be (limit + the 1 GiB metadata slack): refused before a job starts.
        huge = os.path.join(env.tmp, "huge.raw")
        with open(huge, "wb") as f:
            f.truncate(lim + GiB + 512)
        with open(huge, "rb") as f:
            refused(env, "ImportImage of a source above MaxVirtualSize + 1 GiB", LIMIT,
                    [f"the source has {lim + GiB + 512} bytes", f"at most {lim} bytes (MaxVirtualSize)"],
                    "ImportImage", "huge", "raw", dbus.types.UnixFd(f.fileno()), opts())
        # AdoptDomainXML: the same bound on each file of the chain, before anything is copied.
        before = env.snapshot_store()
        refused(env, "AdoptDomainXML of a file above MaxVirtualSize + 1 GiB", LIMIT,
                [f"has {lim + GiB + 512} bytes", f"at most {lim} bytes (MaxVirtualSize)"],
                "AdoptDomainXML", "vm", disk_xml("huge", [(huge, "raw")]), opts())
        check_store(env, before, "AdoptDomainXML of a file above MaxVirtualSize + 1 GiB")
        # Inspect reports content problems in its verdict (org.vdisk1(5)), the limit among them.
        with open(os.path.join(env.tmp, f"up-{lim + 512}.qcow2"), "rb") as f:
            err, res = env.try_call("Inspect", dbus.types.UnixFd(f.fileno()), "qcow2")
        verdict = json.loads(str(res)) if err is None else {}
        check(err is None and verdict.get("valid") is False
              and any(f"above the limit of {lim}" in p for p in verdict.get("problems", [])),
              f"Inspect of a qcow2 above MaxVirtualSize: valid false, the problem names the limit ({err}: {str(res)[:200]})")
        env.stop()
    finally:
        env.close()


def test_arguments():
    print("== options, names, XML size and nesting", flush=True)
    env = Env(VDISKD)
    try:
        env.start()
        env.call("CreateVM", "vm", u(0), opts())

        # Options: every key CreateDisk knows (4 of them) works; more entries than OPTIONS_MAX cannot be
        # valid (each key at most once, only known keys) and are InvalidArgs, as the contract says.
        accepted(env, "CreateDisk with every option it knows", "CreateDisk", "vm", "all", "", t(MiB),
                 opts(mode="overlay", format="qcow2", data_file=True, data_file_raw=True))
        many = opts(mode="overlay", format="qcow2", data_file=True, data_file_raw=True)
        for i in range(OPTIONS_MAX + 1 - len(many)):
            many[f"x{i}"] = dbus.String("y")
        check_eq(len(many), OPTIONS_MAX + 1, "a dictionary of OPTIONS_MAX + 1 entries")
        refused(env, f"CreateDisk with {OPTIONS_MAX + 1} options", INVALID, ["Unknown option 'x0'"],
                "CreateDisk", "vm", "many", "", t(MiB), many, say="the message names the first offending key")
        flood = dbus.Dictionary({f"k{i:06d}": dbus.String("v") for i in range(100000)}, signature="sv")
        t0 = time.monotonic()
        refused(env, "CreateVM with 100,000 options", INVALID, ["Unknown option 'k000000'"], "CreateVM", "v2", u(0), flood,
                say="refused at the first entry")
        check(time.monotonic() - t0 < 10, f"... refused within 10 s ({time.monotonic() - t0:.2f} s)")

        # Names: 64 bytes work for VMs and images, 31 for disks (QEMU node names); one more and 1 MiB are
        # InvalidArgs naming the rule, never echoed.
        n64, n65, n1m = "n" * NAME_MAX_LEN, "n" * (NAME_MAX_LEN + 1), "n" * MiB
        d31, d32 = "d" * DISK_NAME_MAX_LEN, "d" * (DISK_NAME_MAX_LEN + 1)
        accepted(env, "CreateImage with a 64-byte name", "CreateImage", n64, "qcow2", t(MiB), opts())
        accepted(env, "CreateVM with a 64-byte name", "CreateVM", n64, u(0), opts())
        accepted(env, "CreateDisk with 64-byte VM and image names and a 31-byte disk name", "CreateDisk", n64, d31, n64,
                 t(0), opts())
        check_eq(len(env.call("GetChain", n64, d31)), 2, "GetChain with 64-byte VM and 31-byte disk names")
        rule, disk_rule = "{0,63}", "^[A-Za-z][A-Za-z0-9_.-]{0,30}$"
        for long_disk, what in ((d32, "32-byte"), ("1" + "d" * 10, "digit-first"), (n1m, "1 MiB")):
            for label, method, args in [
                    ("CreateDisk disk name", "CreateDisk", (n64, long_disk, "", t(MiB), opts())),
                    ("GetChain disk name", "GetChain", (n64, long_disk)),
                    ("Snapshot disk name", "Snapshot", (n64, long_disk, opts())),
                    ("OpenDisk disk name", "OpenDisk", (n64, long_disk, opts()))]:
                err, msg = refused(env, f"{what} {label}", INVALID, [disk_rule], method, *args,
                                   say="the message gives the disk name rule (a QEMU node name)")
                check(long_disk[:DISK_NAME_MAX_LEN] not in str(msg), f"{what} {label}: the name is not echoed")
        for long_name, what in ((n65, "65-byte"), (n1m, "1 MiB")):
            for label, method, args in [
                    ("CreateImage name", "CreateImage", (long_name, "qcow2", t(MiB), opts())),
                    ("CreateVM name", "CreateVM", (long_name, u(0), opts())),
                    ("CreateDisk VM name", "CreateDisk", (long_name, "d", "", t(MiB), opts())),
                    ("CreateDisk image name", "CreateDisk", (n64, "d", long_name, t(0), opts())),
                    ("Snapshot VM name", "Snapshot", (long_name, d31, opts())),
                    ("DeleteVM name", "DeleteVM", (long_name,))]:
                err, msg = refused(env, f"{what} {label}", INVALID, [rule], method, *args,
                                   say="the message gives the rule, 64 bytes at most")
                check(long_name[:NAME_MAX_LEN] not in str(msg), f"{what} {label}: the name is not echoed")
        src = os.path.join(env.tmp, "src.raw")
        with open(src, "wb") as f:
            f.truncate(MiB)
        with open(src, "rb") as f:
            refused(env, "65-byte ImportImage name", INVALID, [rule],
                    "ImportImage", n65, "raw", dbus.types.UnixFd(f.fileno()), opts(),
                    say="the message gives the rule, 64 bytes at most")

        # XML size: exactly DOMAIN_XML_MAX_SIZE is adopted, one byte more is LimitExceeded.
        raw = os.path.join(env.tmp, "adopt.raw")
        with open(raw, "wb") as f:
            f.truncate(MiB)
        accepted(env, "AdoptDomainXML of exactly 1 MiB", "AdoptDomainXML", "vm",
                 padded_xml("exact", [(raw, "raw")], DOMAIN_XML_MAX_SIZE), opts())
        refused(env, "AdoptDomainXML of 1 MiB + 1 byte", LIMIT, [f"{DOMAIN_XML_MAX_SIZE + 1} bytes",
                                                                  f"limit is {DOMAIN_XML_MAX_SIZE}"],
                "AdoptDomainXML", "vm", padded_xml("over", [(raw, "raw")], DOMAIN_XML_MAX_SIZE + 1), opts())

        # XML nesting: a chain of MaxChainDepth layers needs about MaxChainDepth + 3 levels; 150,000 levels of
        # elements the daemon does not even read must be refused as over a limit, before any file is looked at
        # (here the file exists: without a cap the junk is parsed, ignored and the disk adopted).
        head = f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{raw}'/>"
        tail = "<backingStore/><target dev='junk'/></disk>"
        n = (DOMAIN_XML_MAX_SIZE - len(head) - len(tail)) // 7
        deep = head + "<a>" * n + "</a>" * n + tail
        t0 = time.monotonic()
        err, msg = refused(env, f"AdoptDomainXML nested {n} elements deep", LIMIT, [],
                           "AdoptDomainXML", "vm", deep, opts())
        if ROOT:
            check(any(w in str(msg).lower() for w in ("nest", "deep", "depth")),
                  f"AdoptDomainXML nested {n} elements deep: the message names the nesting limit ({str(msg)[:200]!r})")
        check(time.monotonic() - t0 < 10, f"... answered within 10 s ({time.monotonic() - t0:.2f} s)")
        env.stop()
    finally:
        env.close()


def vm_record(name, owner, disks):
    return {"schema": 1, "name": name, "owner_uid": owner, "generation": 1,
            "disks": [{"name": d, "chain": c} for d, c in disks]}


def start_refused(env, label, record, needles):
    """vdiskd must refuse to start on the store: exit status 1 (no signal, no hang), no bus name, a log line
    naming the record and the limit, and the store (the offending record included) untouched."""
    before = env.snapshot_store()
    log_before = len(env.log_text())
    p = env.start(expect_ready=False)
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    rc = p.poll()
    check_eq(rc, 1, f"{label}: vdiskd refuses to start (exit status 1, not a crash or a hang)")
    if rc is None:
        env.stop()
    check(not env.bus.name_has_owner(BUS_NAME), f"{label}: no daemon took the bus name")
    new = env.log_text()[log_before:]
    lines = [ln for ln in new.splitlines() if f"records/{record}" in ln]
    check(bool(lines), f"{label}: the log names records/{record} ({new.strip()[-300:]!r})")
    if needles:  # in what the line says about the record, not in its path
        said = [ln.split(f"records/{record}", 1)[1].lower() for ln in lines]
        check(any(n.lower() in x for n in needles for x in said),
              f"{label}: the log line names the limit (one of {needles} in {lines[:1]})")
    env.check_sanitizers()
    check_store(env, before, f"{label} (the record included)")


def test_records():
    print("== records over RECORD_MAX_SIZE / RECORD_MAX_DEPTH", flush=True)
    env = Env(VDISKD)
    try:
        env.start()
        env.call("CreateVM", "keep", u(0), opts())
        env.call("CreateImage", "img", "raw", t(MiB), opts())
        env.call("CreateDisk", "keep", "d", "img", t(0), opts())
        env.stop()
        rec = os.path.join(env.store, "records", "vm-big.json")

        def write_big(size):
            text = json.dumps(vm_record("big", 0, []))
            text = text[:-1] + " " * (size - len(text)) + "}"
            with open(rec, "w") as f:
                f.write(text)
            return len(text)

        write_big(RECORD_MAX_SIZE + 1)
        start_refused(env, f"a record of RECORD_MAX_SIZE + 1 = {RECORD_MAX_SIZE + 1} bytes", "vm-big.json",
                      ["1048576", "1 MiB", "1024 KiB"])
        check_eq(write_big(RECORD_MAX_SIZE), RECORD_MAX_SIZE, "the record shrunk to exactly RECORD_MAX_SIZE")
        env.start()
        check_eq(sorted(str(v[0]) for v in env.call("ListVMs")), ["big", "keep"],
                 "a record of exactly RECORD_MAX_SIZE is read; the other records are served")
        check_eq(len(env.call("GetChain", "keep", "d")), 2, "... GetChain of the other VM")
        env.stop()
        os.unlink(rec)

        def write_deep(depth):
            o = vm_record("lvl", 0, [])
            v = []
            for _ in range(depth - 2):  # the record's object is level 1, the innermost [] the last level
                v = [v]
            o["x"] = v
            with open(os.path.join(env.store, "records", "vm-lvl.json"), "w") as f:
                json.dump(o, f)

        write_deep(RECORD_MAX_DEPTH + 1)
        start_refused(env, f"a record nested RECORD_MAX_DEPTH + 1 = {RECORD_MAX_DEPTH + 1} levels deep", "vm-lvl.json",
                      ["nest", "depth", "deep"])
        write_deep(RECORD_MAX_DEPTH)
        env.start()
        check_eq(sorted(str(v[0]) for v in env.call("ListVMs")), ["keep", "lvl"],
                 f"a record nested exactly RECORD_MAX_DEPTH = {RECORD_MAX_DEPTH} deep is read; the others are served")
        env.stop()
    finally:
        env.close()


def plant_vm(env, name, owner, n_disks, record_max):
    """Writes the records of a VM with up to n_disks disks (31-byte names) of one private layer each, as many as
    keep its record, in the layout vdiskd writes, within record_max bytes; and empty image files (start-up and
    Snapshot read no layer's content). Returns the number of disks."""
    rdir, idir = os.path.join(env.store, "records"), os.path.join(env.store, "images")

    def layout(n):
        disks = [(f"{i:06d}".rjust(DISK_NAME_MAX_LEN, "d"), [hashlib.sha256(f"{name}/{i}".encode()).hexdigest()[:32]])
                 for i in range(n)]
        # json-c's JSON_C_TO_STRING_PRETTY: two blanks a level, nothing after ':'.
        return disks, json.dumps(vm_record(name, owner, disks), indent=2, separators=(",", ":"))

    n = n_disks
    disks, text = layout(n)
    while len(text) > record_max:
        n -= max(1, (len(text) - record_max) // (len(text) // n))
        disks, text = layout(n)
    for _, (lid,) in disks:
        layer = {"schema": 1, "layer": lid, "file": f"{lid}.qcow2", "format": "qcow2", "virtual_size": MiB,
                 "backing_layer": None, "backing_format": None, "data_file": None, "catalog_name": None, "vm": name,
                 "state": "ready", "generation": 1, "inode": 0}
        with open(os.path.join(rdir, f"layer-{lid}.json"), "w") as f:
            f.write(json.dumps(layer))
        open(os.path.join(idir, f"{lid}.qcow2"), "w").close()
    with open(os.path.join(rdir, f"vm-{name}.json"), "w") as f:
        f.write(text)
    return len(disks)


SNAPSHOTTER = r"""
import dbus, json, os, sys
if os.geteuid() != %(uid)d:
    os.setgroups([]); os.setresgid(%(uid)d, %(uid)d, %(uid)d); os.setresuid(%(uid)d, %(uid)d, %(uid)d)
bus = dbus.bus.BusConnection(%(address)r)
m = dbus.Interface(bus.get_object("org.vdisk1", "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
out = []
for i in range(%(count)d):
    try:
        out.append([None, str(m.Snapshot(%(vm)r, %(disks)r[i %% len(%(disks)r)], dbus.Dictionary({}, signature="sv"),
                                          timeout=60))])
    except dbus.exceptions.DBusException as e:
        out.append([e.get_dbus_name(), e.get_dbus_message()])
        break
print(json.dumps(out))
"""


def test_records_written():
    print("== records the daemon writes: VM record size, journal intent size", flush=True)
    # A VM of 31-byte-named disks (MaxDisksPerVM raised to hold them), its record 16 snapshots short of
    # RECORD_MAX_SIZE, owned by an unprivileged uid who may snapshot its disks. (With the default limits the same
    # record is 24 disks of ~990 layers, within MaxDisksPerVM 64 and MaxChainDepth 1024: too slow to build here.)
    env = Env(VDISKD, "[Limits]\nMaxDisksPerVM=20000\n")
    try:
        env.start()
        env.stop()
        t0 = time.monotonic()
        n_disks = plant_vm(env, "fat", OWNER, 20000, RECORD_MAX_SIZE - 16 * 44)
        rec = os.path.join(env.store, "records", "vm-fat.json")
        size0 = os.path.getsize(rec)
        print(f"     planted VM 'fat': {n_disks} disks, vm-fat.json {size0} bytes ({time.monotonic() - t0:.1f} s)",
              flush=True)
        t0 = time.monotonic()
        if not check(start_waiting(env), "vdiskd starts on the planted store"):
            return
        print(f"     vdiskd started in {time.monotonic() - t0:.1f} s", flush=True)

        # The owner snapshots (each Snapshot adds a 44-byte chain entry): every Snapshot must either keep the VM
        # record within RECORD_MAX_SIZE or be refused with LimitExceeded.
        # Rounds of 40 (the child, as the owner, cannot read the store): until the record is past the limit or a
        # Snapshot is refused; a few rounds at most.
        results = []
        for _ in range(10):
            code = SNAPSHOTTER % {"uid": OWNER, "address": env.address, "count": 40, "vm": "fat",
                                  "disks": [f"{i:06d}".rjust(DISK_NAME_MAX_LEN, "d") for i in range(8)]}
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
            if not check(p.returncode == 0, f"the owner's Snapshot client ran ({p.stderr.strip()[-300:]})"):
                break
            results += json.loads(p.stdout)
            if results[-1][0] is not None or os.path.getsize(rec) > RECORD_MAX_SIZE:
                break
        made = sum(1 for r in results if r[0] is None)
        size = os.path.getsize(rec)
        print(f"     the owner made {made} snapshots; vm-fat.json {size0} -> {size} bytes; last answer "
              f"{results[-1] if results else None}", flush=True)
        check(size <= RECORD_MAX_SIZE, f"no Snapshot made the VM record larger than RECORD_MAX_SIZE = {RECORD_MAX_SIZE} "
                                       f"(vm-fat.json: {size} bytes after {made} snapshots)")
        if results and results[-1][0] is not None:
            check_eq(results[-1][0], LIMIT, f"the Snapshot that would overflow the record is LimitExceeded ({results[-1][1]})")
        serving(env, "after the owner's snapshots")

        # DeleteVM of a VM with more private layers than one journal intent may name: it works, or it is refused
        # naming that limit, with nothing changed.
        layers = n_disks + made
        before = env.snapshot_store()
        err, msg = env.try_call("DeleteVM", "fat")
        if err is None:
            check(True, f"DeleteVM of a VM with {layers} private layers (> INTENT_MAX_LAYERS {INTENT_MAX_LAYERS}) works")
        else:
            check_eq(err, LIMIT, f"DeleteVM of a VM with {layers} private layers: LimitExceeded")
            check(str(INTENT_MAX_LAYERS) in str(msg),
                  f"DeleteVM of a VM with {layers} private layers: the message names the limit of {INTENT_MAX_LAYERS} "
                  f"layers per operation ({msg!r})")
            check_store(env, before, "DeleteVM refused")
        serving(env, "DeleteVM of a VM with many layers")

        # A restart: the daemon must read back every record it wrote.
        env.stop()
        size = os.path.getsize(rec) if os.path.exists(rec) else 0
        t0 = time.monotonic()
        up = start_waiting(env)
        print(f"     restart: {'up' if up else 'refused'} after {time.monotonic() - t0:.1f} s", flush=True)
        tail = env.log_text().strip().splitlines()[-2:]
        check(up, f"vdiskd starts again on the store it wrote itself (vm-fat.json: {size} bytes; "
                  f"exit status {env.daemon.poll()}; log: {tail})")
        if up:
            env.stop()
        else:
            env.check_sanitizers()
    finally:
        env.close()


HOSTILE = r"""
import dbus, dbus.lowlevel, json, sys, time
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

bus = dbus.bus.BusConnection(sys.argv[1], mainloop=DBusGMainLoop())
n = int(sys.argv[2])
counts = {}

def count(conn, msg):
    if isinstance(msg, dbus.lowlevel.MethodReturnMessage):
        k = "reply"
    elif isinstance(msg, dbus.lowlevel.ErrorMessage):
        k = msg.get_error_name()
    else:
        return
    counts[k] = counts.get(k, 0) + 1

print("connected", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
# GetChain (answered), ListVMs, GetChain with a 65-byte name (an error); half of the calls want no reply (the
# bus counts none of those as pending), half do. Nothing is read while sending: the replies pile up.
for i in range(n):
    m = dbus.lowlevel.MethodCallMessage("org.vdisk1", "/org/vdisk1", "org.vdisk1.Manager",
                                        ("GetChain", "ListVMs", "GetChain")[i % 3])
    if i % 3 == 0:
        m.append("vm", "d", signature="ss")
    elif i % 3 == 2:
        m.append("vm", "x" * 65, signature="ss")
    if i % 2 == 0:
        m.set_no_reply(True)
    bus.send_message(m)
bus.flush()
sent = time.monotonic() - t0
# A last call on the same connection: once vdiskd answers it, it has read every call before it. (The bus
# refuses calls beyond its max_replies_per_connection with LimitsExceeded: then ask again.)
loop = GLib.MainLoop()

def last_call():
    m = dbus.lowlevel.MethodCallMessage("org.vdisk1", "/org/vdisk1", "org.vdisk1.Manager", "ListVMs")
    bus.send_message_with_reply(m, answered, 120)
    return False

def answered(reply):
    if isinstance(reply, dbus.lowlevel.ErrorMessage) and reply.get_error_name().endswith(".LimitsExceeded"):
        GLib.timeout_add(50, last_call)
    else:
        loop.quit()

bus.add_message_filter(count)
last_call()
GLib.timeout_add(120000, loop.quit)
loop.run()
print(json.dumps({"sent_s": sent, "all_read_s": time.monotonic() - t0, "counts": counts}), flush=True)
sys.stdin.readline()
"""


def test_pending_calls():
    print("== pending calls: a hostile client", flush=True)
    env = Env(VDISKD)
    hostile = None
    try:
        # In an ASan build the quarantine holds freed memory (up to 256 MiB): off for this daemon, so that its
        # VmRSS means what it means in a plain build (LeakSanitizer still checks leaks at exit).
        env.start({"ASAN_OPTIONS": ":".join(x for x in (os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=0") if x)})
        pid = env.daemon.pid
        env.call("CreateImage", "b", "qcow2", t(GiB), opts())
        env.call("CreateVM", "vm", u(0), opts())
        env.call("CreateDisk", "vm", "d", "b", t(0), opts())
        for _ in range(300):  # warm-up: the same calls, so that the baseline holds their allocations
            env.call("GetChain", "vm", "d")
            env.call("ListVMs")
        base = daemon_rss(pid)
        base_fds = len(os.listdir(f"/proc/{pid}/fd"))

        hostile = subprocess.Popen([sys.executable, "-c", HOSTILE, env.address, str(FLOOD_CALLS)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        check_eq(hostile.stdout.readline().strip(), "connected", "the hostile client is connected")
        result = []
        reader = threading.Thread(target=lambda: result.append(hostile.stdout.readline()))
        reader.start()
        t0 = time.monotonic()
        hostile.stdin.write("go\n")
        hostile.stdin.flush()
        lat, peak, errors = [], base, []
        while reader.is_alive() and time.monotonic() - t0 < 240:
            t1 = time.monotonic()
            err, res = env.try_call("GetChain", "vm", "d", timeout=60)
            lat.append(time.monotonic() - t1)
            if err:
                errors.append(err)
            peak = max(peak, daemon_rss(pid))
            time.sleep(0.01)
        reader.join(timeout=60)
        wall = time.monotonic() - t0
        after = daemon_rss(pid)
        stats = json.loads(result[0]) if result and result[0].strip() else {}
        counts = stats.get("counts", {})
        print(f"     hostile client: {FLOOD_CALLS} calls sent in {stats.get('sent_s', 0):.2f} s, all read by vdiskd after "
              f"{stats.get('all_read_s', 0):.2f} s ({wall:.2f} s with its start); answers to it: {counts}", flush=True)
        print(f"     meanwhile another client made {len(lat)} GetChain calls: max latency {max(lat or [0]) * 1000:.0f} ms, "
              f"median {sorted(lat or [0])[len(lat) // 2] * 1000:.0f} ms, errors {errors}", flush=True)
        print(f"     vdiskd VmRSS: baseline {base / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, after {after / MiB:.1f} MiB "
              f"({(after - base) / MiB:+.1f} MiB)", flush=True)
        check(bool(stats), "the hostile client finished: vdiskd read all its calls")
        check(counts.get("reply", 0) > 0 and counts.get("org.freedesktop.DBus.Error.InvalidArgs", 0) > 0,
              "the hostile client's calls were answered (replies and InvalidArgs for the bad names)")
        check(len(lat) >= 3 and not errors, f"another client is served during the flood ({len(lat)} calls, errors {errors})")
        check(max(lat or [99]) < 5, f"... each within 5 s (max {max(lat or [99]):.2f} s)")
        check(env.daemon.poll() is None and env.daemon.pid == pid, "vdiskd survived the flood (same pid)")
        check_eq(len(os.listdir(f"/proc/{pid}/fd")), base_fds, "vdiskd's fd count is back to the baseline")
        if os.environ.get("VDISK_TEST_WRAPPER"):
            print("     (vdiskd under a wrapper such as valgrind: VmRSS is reported, not checked)")
        else:
            check(peak <= base + RSS_TOLERANCE, f"vdiskd's VmRSS during the flood stays within +{RSS_TOLERANCE // MiB} MiB "
                                                 f"of the baseline ({(peak - base) / MiB:+.1f} MiB)")
            check(after <= base + RSS_TOLERANCE, f"vdiskd's VmRSS after the flood is within +{RSS_TOLERANCE // MiB} MiB "
                                                  f"of the baseline ({(after - base) / MiB:+.1f} MiB)")
        try:
            hostile.stdin.write("bye\n")
            hostile.stdin.flush()
        except BrokenPipeError:
            pass
        hostile.wait(timeout=30)
        hostile = None
        check_eq(len(env.call("GetChain", "vm", "d")), 2, "GetChain answers after the hostile client left")
        env.stop()
    finally:
        if hostile and hostile.poll() is None:
            hostile.kill()
            hostile.wait()
        env.close()


def main():
    t0 = time.monotonic()
    for test in (test_max_jobs, test_max_chain_depth, test_vms_and_disks, test_max_images, test_max_virtual_size,
                 test_arguments, test_records, test_records_written, test_pending_calls):
        t1 = time.monotonic()
        test()
        print(f"   ({test.__name__}: {time.monotonic() - t1:.1f} s)", flush=True)
    print(f"total {time.monotonic() - t0:.1f} s")
    finish()


if __name__ == "__main__":
    main()
