# SPDX-License-Identifier: LGPL-2.1-or-later
"""Crash consistency: vdiskd SIGKILLs itself at every injected point of every mutating operation
(VDISKD_CRASH_AT=<op>:<point>); after a restart every disk is exactly in its old or its new state,
no orphan file or record is left, Verify is clean, qemu-img check is clean, and the guest-visible
content of a snapshotted disk is unchanged."""

import hashlib
import json
import os
import subprocess
import sys

import dbus

from vdisktest import Env, check, check_eq, finish, opts, qemu_img, require

GiB = 1 << 30
MiB = 1 << 20

POINTS = {
    "create-image": ["after-journal", "after-layer-record", "after-file", "after-commit"],
    "import": ["after-journal", "after-layer-record", "after-copy", "before-rename", "after-file", "after-commit"],
    "create-disk": ["after-journal", "after-layer-record", "after-file", "before-commit", "after-commit"],
    # Snapshot writes one entry of the VM's write-ahead log (docs/design.md, "Commit protocol"): its commit
    # point is that entry's fdatasync, between wal-prepared and wal-after-log.
    "snapshot": ["wal-prepared", "wal-after-log", "wal-after-file", "wal-after-layer-record", "wal-applied"],
    "delete-disk": ["after-journal", "before-commit", "after-commit"],
    "delete-vm": ["after-journal", "after-commit"],
    "delete-image": ["after-journal"],
}


def records(env):
    out = {}
    d = os.path.join(env.store, "records")
    for n in os.listdir(d):
        with open(os.path.join(d, n)) as f:
            out[n] = json.load(f)
    return out


checked = set()  # qcow2 files already checked, unchanged since


def check_store_invariants(env, label):
    """No orphans: every image file has a ready record and vice versa, the journal is empty, no temporaries."""
    recs = records(env)
    images = set(os.listdir(os.path.join(env.store, "images")))
    layers = {r["file"]: r for n, r in recs.items() if n.startswith("layer-")}
    check_eq(sorted(images), sorted(layers), f"{label}: image files and layer records match one to one")
    check(all(r["state"] == "ready" for r in layers.values()), f"{label}: every layer record is ready")
    check_eq(os.listdir(os.path.join(env.store, "journal")), [], f"{label}: journal is empty")
    check(not any(n.startswith(".") for n in os.listdir(os.path.join(env.store, "records"))),
          f"{label}: no temporary records")
    used = set()
    for n, r in recs.items():
        if n.startswith("vm-"):
            for d in r["disks"]:
                used |= set(d["chain"])
                for layer in d["chain"]:
                    check(f"layer-{layer}.json" in recs, f"{label}: chain layer {layer[:8]} of {r['name']} has a record")
    private = {r["layer"] for r in layers.values() if r["vm"]}
    check(private <= used, f"{label}: every private layer belongs to a disk")
    for n, r in recs.items():
        if n.startswith("vm-"):
            problems = env.call("Verify", r["name"])
            check_eq([tuple(map(str, p)) for p in problems], [], f"{label}: Verify {r['name']} is clean")
    for f, r in layers.items():
        st = os.stat(os.path.join(env.store, "images", f))
        key = (f, st.st_ino, st.st_size, st.st_mtime_ns)
        if r["format"] == "qcow2" and key not in checked:
            p = qemu_img("check", "-f", "qcow2", f, cwd=os.path.join(env.store, "images"))
            check(p.returncode == 0, f"{label}: qemu-img check {f[:8]} clean" + ("" if p.returncode == 0 else p.stdout))
            checked.add(key)


def chain(env, vm, disk):
    err, res = env.error("GetChain", vm, disk)
    if err:
        return err
    return [str(layer[0]) for layer in res]


def guest_hash(env, vm, disk):
    """sha256 of the guest view of a disk (qemu-img follows the bare sibling names vdisk wrote)."""
    top = env.call("GetChain", vm, disk)[0]
    out = os.path.join(env.tmp, "guest.raw")
    p = qemu_img("convert", "-f", str(top[2]), "-O", "raw", os.path.join(env.store, str(top[1])), out)
    if p.returncode != 0:
        return "convert failed: " + p.stderr
    h = hashlib.sha256(open(out, "rb").read()).hexdigest()
    os.unlink(out)
    return h


def crash_run(env, point, op):
    """Restarts vdiskd armed with the crash point, runs op, expects the daemon to die by SIGKILL."""
    env.stop()
    daemon = env.start({"VDISKD_CRASH_AT": point})
    try:
        op()
        died = False
    except dbus.exceptions.DBusException:
        died = True
    try:
        daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    check(died and daemon.returncode == -9, f"{point}: vdiskd killed itself at the crash point (rc {daemon.returncode})")
    env.wait_name_gone()
    env.start()


def crash_only(env, point, op):
    """crash_run() without the restart: the test changes the store first."""
    env.stop()
    daemon = env.start({"VDISKD_CRASH_AT": point})
    try:
        op()
        died = False
    except dbus.exceptions.DBusException:
        died = True
    try:
        daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    check(died and daemon.returncode == -9, f"{point}: vdiskd killed itself at the crash point (rc {daemon.returncode})")
    env.wait_name_gone()


def log_pending(env, vm):
    """Operation entries of VM `vm`'s write-ahead log after its chain's last checkpoint entry, read as
    docs/design.md ("Commit protocol") describes the format: 40-byte headers (magic, chain id, seq, type,
    length, CRC-32), a chain from offset 0 with one chain id and seq 0, 1, 2..."""
    import struct
    import zlib
    try:
        data = open(os.path.join(env.store, "log", f"vm-{vm}.log"), "rb").read()
    except FileNotFoundError:
        return 0
    off, chain_id, seq, pending = 0, None, 0, 0
    while off + 40 <= len(data):
        magic, cid, s, typ, length, crc, _ = struct.unpack_from("<8sQQIIII", data, off)
        if magic != b"VDWAL01\n" or off + 40 + length > len(data) or (chain_id is not None and cid != chain_id) \
                or s != seq:
            break
        header = bytearray(data[off:off + 40])
        header[32:36] = b"\0\0\0\0"
        if zlib.crc32(data[off + 40:off + 40 + length], zlib.crc32(bytes(header))) != crc:
            break
        pending = 0 if typ == 2 else pending + 1
        chain_id, seq, off = cid, seq + 1, off + 40 + length
    return pending


def wal_scenarios(env):
    """The write-ahead log's windows beyond the operation's own points (docs/design.md, "Commit protocol"):
    a power loss after the commit, a crash inside a checkpoint, a crash inside the redo at start."""
    def fresh(vm):
        env.call("CreateVM", vm, dbus.UInt32(0), opts())
        env.call("CreateDisk", vm, "d", "base", dbus.UInt64(0), opts())
        top = env.call("GetChain", vm, "d")[0]
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x44 2M 1M", os.path.join(env.store, str(top[1]))],
                       check=True, capture_output=True)
        return chain(env, vm, "d"), guest_hash(env, vm, "d")

    def vm_record(vm):
        with open(os.path.join(env.store, "records", f"vm-{vm}.json")) as f:
            return json.load(f)

    # Each snapshot is one pending entry; GetDomainXML hands paths out (a QEMU started from them writes
    # the top): it checkpoints first.
    fresh("vmL")
    env.call("Snapshot", "vmL", "d", opts())
    check_eq(log_pending(env, "vmL"), 1, "log: one pending entry after a snapshot")
    env.call("Snapshot", "vmL", "d", opts())
    check_eq(log_pending(env, "vmL"), 2, "log: two pending entries after two snapshots")
    env.call("GetDomainXML", "vmL", "d")
    check_eq(log_pending(env, "vmL"), 0, "log: GetDomainXML checkpoints the disk's entries first")

    # Committed and applied, then a power loss takes all that was not synced: the new file, the new layer
    # record, the VM record's bytes (renamed, not written back). The start redoes it from the log.
    before_chain, before_hash = fresh("vmP")
    crash_only(env, "snapshot:wal-applied", lambda: env.call("Snapshot", "vmP", "d", opts()))
    new = vm_record("vmP")["disks"][0]["chain"][0]
    check(new not in before_chain, "power loss: the VM record named the new layer before the loss")
    os.unlink(os.path.join(env.store, "images", f"{new}.qcow2"))
    os.unlink(os.path.join(env.store, "records", f"layer-{new}.json"))
    open(os.path.join(env.store, "records", "vm-vmP.json"), "w").close()
    env.start()
    check_eq(chain(env, "vmP", "d"), [new] + before_chain, "power loss after the commit: the snapshot is redone")
    check_eq(guest_hash(env, "vmP", "d"), before_hash, "power loss after the commit: guest content unchanged")
    check_store_invariants(env, "power loss after the commit")

    # A crash inside the checkpoint that the next journal operation (CreateImage) makes first: the
    # snapshot stays, the image was never begun.
    for n, point in enumerate(["wal-checkpoint:after-sync", "wal-checkpoint:after-mark"]):
        vm, img = f"vmC{n}", f"imgC{n}"
        before_chain, before_hash = fresh(vm)
        env.stop()
        daemon = env.start({"VDISKD_CRASH_AT": point})
        layer = env.call("Snapshot", vm, "d", opts())
        check_eq(daemon.poll(), None, f"{point}: the snapshot itself makes no checkpoint")
        crash_only_started(env, daemon, point, lambda: env.call("CreateImage", img, "raw", dbus.UInt64(MiB), opts()))
        env.start()
        check_eq(chain(env, vm, "d"), [str(layer)] + before_chain, f"{point}: the snapshot is kept")
        check_eq(guest_hash(env, vm, "d"), before_hash, f"{point}: guest content unchanged")
        check(img not in [str(i[0]) for i in env.call("ListImages")], f"{point}: the image was not created")
        check_store_invariants(env, point)

    # Committed only (nothing applied), then a crash inside the redo at the next start; the start after
    # that redoes it again.
    for n, point in enumerate(["wal-redo:after-file", "wal-redo:before-mark"]):
        vm = f"vmR{n}"
        before_chain, before_hash = fresh(vm)
        crash_only(env, "snapshot:wal-after-log", lambda: env.call("Snapshot", vm, "d", opts()))
        daemon = env.start({"VDISKD_CRASH_AT": point}, expect_ready=False)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        check_eq(daemon.returncode, -9, f"{point}: vdiskd killed itself while redoing the log")
        env.start()
        c = chain(env, vm, "d")
        check(len(c) == 3 and c[1:] == before_chain, f"{point}: the snapshot is redone")
        check_eq(guest_hash(env, vm, "d"), before_hash, f"{point}: guest content unchanged")
        check_store_invariants(env, point)


def crash_only_started(env, daemon, point, op):
    try:
        op()
        died = False
    except dbus.exceptions.DBusException:
        died = True
    try:
        daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    check(died and daemon.returncode == -9, f"{point}: vdiskd killed itself at the crash point (rc {daemon.returncode})")
    env.wait_name_gone()


def main():
    require("qemu-io")
    env = Env(sys.argv[1])
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
        upload = os.path.join(env.tmp, "upload.qcow2")
        qemu_img("create", "-q", "-f", "qcow2", upload, "256M")
        subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 8M", upload], check=True, capture_output=True)
        n = 0

        for op, points in POINTS.items():
            for p in points:
                n += 1
                point = f"{op}:{p}"
                vm, img = f"vm{n}", f"img{n}"

                if op == "create-image":
                    crash_run(env, point, lambda: env.call("CreateImage", img, "qcow2", dbus.UInt64(GiB), opts()))
                    names = [str(i[0]) for i in env.call("ListImages")]
                    check_eq(img in names, p == "after-commit",
                             f"{point}: the image exists exactly when the commit point was passed")
                elif op == "import":
                    def do_import():
                        with open(upload, "rb") as f:
                            job = env.call("ImportImage", img, "qcow2", dbus.types.UnixFd(f.fileno()), opts())
                        env.wait_job(job)
                    crash_run(env, point, do_import)
                    names = [str(i[0]) for i in env.call("ListImages")]
                    check_eq(img in names, p == "after-commit", f"{point}: import committed iff past the commit point")
                    if img in names:
                        layer = [i for i in env.call("ListImages") if str(i[0]) == img][0]
                        f = os.path.join(env.store, "images", f"{layer[1]}.qcow2")
                        check_eq(qemu_img("compare", "-f", "qcow2", "-F", "qcow2", upload, f).returncode, 0,
                                 f"{point}: imported content identical to the upload")
                elif op in ("create-disk", "snapshot", "delete-disk", "delete-vm"):
                    env.call("CreateVM", vm, dbus.UInt32(0), opts())
                    if op != "create-disk":
                        env.call("CreateDisk", vm, "d", "base", dbus.UInt64(0), opts())
                        top = env.call("GetChain", vm, "d")[0]
                        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x33 1M 3M",
                                        os.path.join(env.store, str(top[1]))], check=True, capture_output=True)
                        before_chain = chain(env, vm, "d")
                        before_hash = guest_hash(env, vm, "d")
                    if op == "create-disk":
                        crash_run(env, point, lambda: env.call("CreateDisk", vm, "d", "base", dbus.UInt64(0), opts()))
                        c = chain(env, vm, "d")
                        if p in ("after-commit",):
                            check(isinstance(c, list) and len(c) == 2, f"{point}: disk exists with overlay + base")
                        else:
                            check_eq(c, "org.vdisk1.Error.NotFound", f"{point}: disk rolled back")
                    elif op == "snapshot":
                        crash_run(env, point, lambda: env.call("Snapshot", vm, "d", opts()))
                        c = chain(env, vm, "d")
                        if p in ("after-commit", "wal-after-log", "wal-after-file", "wal-after-layer-record", "wal-applied"):
                            check(len(c) == 3 and c[1:] == before_chain, f"{point}: new top over the old chain")
                        else:
                            check_eq(c, before_chain, f"{point}: chain unchanged")
                        check_eq(guest_hash(env, vm, "d"), before_hash, f"{point}: guest-visible content unchanged")
                    elif op == "delete-disk":
                        crash_run(env, point, lambda: env.call("DeleteDisk", vm, "d"))
                        c = chain(env, vm, "d")
                        if p == "after-commit":
                            check_eq(c, "org.vdisk1.Error.NotFound", f"{point}: disk gone")
                        else:
                            check_eq(c, before_chain, f"{point}: disk intact")
                            check_eq(guest_hash(env, vm, "d"), before_hash, f"{point}: guest content intact")
                    elif op == "delete-vm":
                        crash_run(env, point, lambda: env.call("DeleteVM", vm))
                        vms = [str(v[0]) for v in env.call("ListVMs")]
                        check_eq(vm in vms, p != "after-commit", f"{point}: VM present iff before the commit point")
                        if vm in vms:
                            check_eq(chain(env, vm, "d"), before_chain, f"{point}: disk intact")
                elif op == "delete-image":
                    env.call("CreateImage", img, "raw", dbus.UInt64(MiB), opts())
                    crash_run(env, point, lambda: env.call("DeleteImage", img))
                    names = [str(i[0]) for i in env.call("ListImages")]
                    check(img in names, f"{point}: image still there (killed before its record was removed)")
                check_store_invariants(env, point)

        wal_scenarios(env)
        check(env.canary_unchanged(), "canary unchanged")
        print(f"{n} crash points exercised")
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
