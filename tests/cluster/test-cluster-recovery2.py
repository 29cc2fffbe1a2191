#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Recovery under leases, the other operations (issue 20; test-cluster-recovery has Snapshot, CreateImage,
CreateDisk, DeleteDisk and Commit): host 1's vdiskd SIGKILLs itself at each crash point of DeleteVM,
DeleteImage, ImportImage, Rebase, flatten and AdoptDomainXML (copy and "move"), so that its journal entry
stays and sanlock frees its catalog or VM lease; host 2's next operation that takes that lease
exclusively (CreateImage for the catalog, CreateDisk of another disk for a VM) must roll it back or
forward before it reads anything, while host 1 is still down. Then: the records, chains, catalog listing
and what the guest sees are exactly the old or the new ones (new only after the commit point), the
moved files of an adoption are at their old names exactly in the old state (and unchanged, byte for
byte), no journal entry is left, host 2 logged the recovery, and no orphan. Host 1, restarted, sees the
same; at the end every VM verifies clean on both hosts."""

import hashlib
import os
import subprocess
import time

import dbus

import clustertest
from clustertest import check, check_eq, finish, opts

DELETE_POINTS = ["after-journal", "before-commit", "after-commit"]
IMPORT_POINTS = ["after-journal", "after-layer-record", "after-copy", "before-rename", "after-file", "before-commit",
                 "after-commit"]
RESHAPE_POINTS = ["after-journal", "after-mark", "mid-copy", "after-data", "after-header", "before-commit", "after-commit"]
ADOPT_COPY_POINTS = ["after-journal", "after-layer-record", "after-file", "before-commit", "after-commit"]
ADOPT_MOVE_POINTS = ["after-journal", "after-layer-record", "after-file", "after-header", "before-commit", "after-commit"]

INUSE = "org.vdisk1.Error.InUse"
NOTFOUND = "org.vdisk1.Error.NotFound"


def journal(c):
    """Entries and undo logs (an entry's undo logs go with it)."""
    d = os.path.join(c.store, "journal")
    return sorted(n for n in os.listdir(d) if not n.startswith(".")) if os.path.isdir(d) else []


def entries(c):
    return [n for n in journal(c) if n.endswith(".json")]


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def view_hash(c, path, fmt):
    """sha256 of what a guest sees through a chain that starts at path (outside the store)."""
    out = os.path.join(c.tmp, "view.raw")
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", path, out], check=True, capture_output=True)
    h = sha(out)
    os.unlink(out)
    return h


# The checks of the previous case still to be made on host 1 once its vdiskd is back (end_case()).
PENDING = []


def host1_checks(host):
    while PENDING:
        expect, label = PENDING.pop()
        expect(host, f"{label}, host 1 restarted")


def crash(host, point, call, env=None):
    """Restarts host's vdiskd armed with `point` (which first makes the previous case's checks: no call they
    make passes a crash point), makes `call` (a job's call returns first), expects vdiskd to SIGKILL itself
    there."""
    host.env.stop()
    daemon = host.start_vdiskd(dict(env or {}, VDISKD_CRASH_AT=point))
    host.wait_joined()
    host1_checks(host)
    answer = "no error"
    try:
        call()
    except dbus.exceptions.DBusException as e:
        answer = f"{e.get_dbus_name()}: {e.get_dbus_message()}"
    try:
        daemon.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    check(daemon.returncode == -9, f"{point}: host {host.host_id}'s vdiskd killed itself there (rc {daemon.returncode}; "
          f"the call: {answer})")
    host.env.wait_name_gone()


def after_crash(host, method, *args):
    """(error, result) of the call, retried while it answers InUse: sanlock frees a dead client's leases
    when it notices the client gone, a moment after the SIGKILL."""
    end = time.time() + 15
    while True:
        err, res = host.try_call(method, *args)
        if err != INUSE or time.time() > end:
            return err, res
        time.sleep(0.1)


class Recovered:
    """Counts host 2's "Recovered 1 interrupted operation(s) under cluster lease L" lines."""

    def __init__(self, host, lease):
        self.host, self.line = host, f"Recovered 1 interrupted operation(s) under cluster lease {lease}\n"
        self.before = host.env.log_text().count(self.line)

    def check(self, label):
        check_eq(self.host.env.log_text().count(self.line) - self.before, 1,
                 f"{label}: host 2 logs the recovery ({self.line.strip()})")


def images(host):
    return {str(i[0]): str(i[1]) for i in host.call("ListImages")}


def vm_state(host, vm):
    """The VM's disks with their chains, or None if it does not exist."""
    err, res = host.try_call("ListDisks", vm)
    if err == NOTFOUND:
        return None
    check_eq(err, None, f"ListDisks {vm} on host {host.host_id} ({res if err else ''})")
    return {str(d[0]): host.chain(vm, str(d[0])) for d in (res or [])}


def end_case(c, label, expect):
    """The common end of a case: no journal entry, no orphan; host 1, once restarted (by the next case's
    crash() or at the end), must agree with `expect()`."""
    check_eq(journal(c), [], f"{label}: no journal entry is left")
    check_eq(c.orphans(), [], f"{label}: no orphan")
    PENDING.append((expect, label))


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 2)
    try:
        h1, h2 = c.hosts
        vms = []
        n = 0

        # DeleteVM (vm:NAME; its private layers go after the commit point): host 2's CreateDisk of the
        # VM finds it whole (and adds the disk) or gone (NotFound).
        for point in DELETE_POINTS:
            n += 1
            vm, label = f"dvm{n}", f"delete-vm:{point}"
            h2.call("CreateVM", vm, dbus.UInt32(0), opts())
            h2.call("CreateDisk", vm, "vda", "", dbus.UInt64(16 << 20), opts())
            h2.write(vm, "0x11", 0)
            h2.call("Snapshot", vm, "vda", opts())
            h2.write(vm, "0x22", 1 << 20)
            h2.call("CreateDisk", vm, "vdb", "", dbus.UInt64(8 << 20), opts())
            before, content = vm_state(h2, vm), h2.guest_hash(vm)
            rec = Recovered(h2, f"vm:{vm}")
            crash(h1, label, lambda: h1.call("DeleteVM", vm))
            check_eq(len(entries(c)), 1, f"{label}: host 1's entry is left")
            committed = point == "after-commit"
            err, res = after_crash(h2, "CreateDisk", vm, "vdc", "", dbus.UInt64(8 << 20), opts())
            check_eq(err, NOTFOUND if committed else None, f"{label}: host 2's CreateDisk of the VM ({res if err else ''})")
            rec.check(label)

            def expect(h, what, vm=vm, before=before, content=content, committed=committed):
                state = vm_state(h, vm)
                vmnames = [str(v[0]) for v in h.call("ListVMs")]
                if committed:
                    check_eq((state, vm in vmnames), (None, False), f"{what}: the VM is gone (rolled forward)")
                    return
                want = dict(before, vdc=state.get("vdc") if state else None)
                check_eq(state, want, f"{what}: the VM has its disks and chains (rolled back) and host 2's vdc")
                check_eq(h.guest_hash(vm), content, f"{what}: what the guest sees is unchanged")
            expect(h2, label)
            if not committed:
                vms.append(vm)
            end_case(c, label, expect)

        # DeleteImage (catalog): host 2's next CreateImage finds it there (unchanged) or gone.
        for point in DELETE_POINTS:
            n += 1
            img, label = f"dimg{n}", f"delete-image:{point}"
            h2.call("CreateImage", img, "qcow2", dbus.UInt64(8 << 20), opts())
            layer = images(h2)[img]
            path = os.path.join(c.store, "images", f"{layer}.qcow2")
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", path], check=True, capture_output=True)
            content = sha(path)
            rec = Recovered(h2, "catalog")
            crash(h1, label, lambda: h1.call("DeleteImage", img))
            check_eq(len(entries(c)), 1, f"{label}: host 1's entry is left")
            err, res = after_crash(h2, "CreateImage", f"other{n}", "qcow2", dbus.UInt64(8 << 20), opts())
            check_eq(err, None, f"{label}: host 2's CreateImage succeeds ({res if err else ''})")
            rec.check(label)
            committed = point == "after-commit"

            def expect(h, what, img=img, path=path, content=content, committed=committed):
                there = img in images(h)
                check_eq(there, not committed, f"{what}: the image is {'there' if there else 'gone'}")
                check_eq(os.path.exists(path), not committed, f"{what}: its file is {'there' if not committed else 'gone'}")
                if there:
                    check_eq(sha(path), content, f"{what}: its file is unchanged")
            expect(h2, label)
            end_case(c, label, expect)

        # ImportImage (catalog, the whole job): host 2's next CreateImage finds no trace of it, or the
        # image with exactly the upload's content.
        upload = os.path.join(c.tmp, "upload.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", upload, "16M"], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5b 0 4M", "-c", "write -P 0x5c 8M 2M", upload],
                       check=True, capture_output=True)
        for point in IMPORT_POINTS:
            n += 1
            img, label = f"imp{n}", f"import:{point}"

            def do_import(img=img):
                with open(upload, "rb") as f:
                    h1.call("ImportImage", img, "qcow2", dbus.types.UnixFd(f.fileno()), opts())
            rec = Recovered(h2, "catalog")
            crash(h1, label, do_import, env={"VDISKD_TEST_STEP_BYTES": "65536"})
            check_eq(len(entries(c)), 1, f"{label}: host 1's entry is left")
            err, res = after_crash(h2, "CreateImage", f"other{n}", "qcow2", dbus.UInt64(8 << 20), opts())
            check_eq(err, None, f"{label}: host 2's CreateImage succeeds ({res if err else ''})")
            rec.check(label)
            committed = point == "after-commit"

            def expect(h, what, img=img, committed=committed):
                imgs = images(h)
                check_eq(img in imgs, committed, f"{what}: the image is {'there' if committed else 'absent'}")
                if img in imgs:
                    f = os.path.join(c.store, "images", f"{imgs[img]}.qcow2")
                    p = subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", upload, f])
                    check_eq(p.returncode, 0, f"{what}: its content is the upload's")
            expect(h2, label)
            end_case(c, label, expect)

        # Rebase onto a lower layer and flatten (jobs that change the top layer in place, undo log; they
        # hold vm:NAME and the disk's persistent lease): host 2's CreateDisk of another disk recovers at
        # once, although host 1's orphaned disk lease still keeps the disk.
        for op in ("rebase", "flatten"):
            for point in RESHAPE_POINTS:
                n += 1
                vm, label = f"{op}{n}", f"{op}:{point}"
                vms.append(vm)
                h2.call("CreateVM", vm, dbus.UInt32(0), opts())
                h2.call("CreateDisk", vm, "vda", "", dbus.UInt64(16 << 20), opts())
                h2.write(vm, "0x11", 0, 2 << 20)
                h2.call("Snapshot", vm, "vda", opts())
                h2.write(vm, "0x22", 1 << 20, 2 << 20)
                h2.call("Snapshot", vm, "vda", opts())
                h2.write(vm, "0x33", 2 << 20, 1 << 20)
                before, content = h2.chain(vm), h2.guest_hash(vm)
                backing = before[-1] if op == "rebase" else ""
                new = [before[0]] + ([before[-1]] if op == "rebase" else [])
                rec = Recovered(h2, f"vm:{vm}")
                crash(h1, label, lambda: h1.call("Rebase", vm, "vda", backing, opts()), env={"VDISKD_TEST_STEP_BYTES": "65536"})
                check_eq(len(entries(c)), 1, f"{label}: host 1's entry is left")
                err, res = h2.try_call("Snapshot", vm, "vda", opts())
                check(err == INUSE and "cluster host 1" in str(res),
                      f"{label}: while host 1's vdiskd is down, its disk lease keeps the disk ({err}: {res})")
                err, res = after_crash(h2, "CreateDisk", vm, "vdb", "", dbus.UInt64(8 << 20), opts())
                check_eq(err, None, f"{label}: host 2's CreateDisk of another disk succeeds ({res if err else ''})")
                rec.check(label)
                committed = point == "after-commit"

                def expect(h, what, vm=vm, before=before, new=new, content=content, committed=committed):
                    check_eq(h.chain(vm), new if committed else before,
                             f"{what}: the chain is the {'new' if committed else 'old'} one")
                    check_eq(h.guest_hash(vm), content, f"{what}: what the guest sees is unchanged")
                expect(h2, label)
                end_case(c, label, expect)

        # AdoptDomainXML (vm:NAME), copy and "move": a chain raw <- qcow2 <- qcow2 made here, in the test's
        # directory (headers name their backing files relatively, without a format: a move rewrites them in
        # place, the roll-back gives the bytes back from the undo log).
        for mode, points in (("copy", ADOPT_COPY_POINTS), ("move", ADOPT_MOVE_POINTS)):
            for point in points:
                n += 1
                vm, label = f"adopt-{mode}{n}", f"adopt {mode}:{point}"
                vms.append(vm)
                h2.call("CreateVM", vm, dbus.UInt32(0), opts())
                d = os.path.join(c.tmp, f"src{n}")
                os.makedirs(d)
                files = [os.path.join(d, x) for x in ("b.raw", "m.qcow2", "t.qcow2")]
                subprocess.run(["qemu-img", "create", "-q", "-f", "raw", files[0], "4M"], check=True)
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.raw", "-F", "raw", files[1]], check=True, cwd=d)
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "m.qcow2", "-F", "qcow2", files[2]], check=True, cwd=d)
                for i, (p, fmt) in enumerate(zip(files, ("raw", "qcow2", "qcow2"))):
                    subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -P {0x41 + i} {i << 20} 1M", p], check=True, capture_output=True)
                    os.chmod(p, 0o640)
                content = view_hash(c, files[2], "qcow2")
                hashes = [sha(p) for p in files]
                xml = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                       f"<source file='{files[2]}'/>"
                       f"<backingStore type='file'><format type='qcow2'/><source file='{files[1]}'/>"
                       f"<backingStore type='file'><format type='raw'/><source file='{files[0]}'/>"
                       "<backingStore/></backingStore></backingStore><target dev='vdb' bus='virtio'/></disk>")
                rec = Recovered(h2, f"vm:{vm}")
                crash(h1, f"adopt:{point}",
                      lambda: h1.call("AdoptDomainXML", vm, xml, opts(move=True) if mode == "move" else opts()))
                check_eq(len(entries(c)), 1, f"{label}: host 1's entry is left")
                err, res = after_crash(h2, "CreateDisk", vm, "vdc", "", dbus.UInt64(8 << 20), opts())
                check_eq(err, None, f"{label}: host 2's CreateDisk of another disk succeeds ({res if err else ''})")
                rec.check(label)
                committed = point == "after-commit"

                def expect(h, what, vm=vm, files=files, hashes=hashes, content=content, committed=committed, mode=mode):
                    disks = sorted(vm_state(h, vm))
                    check_eq(disks, ["vdb", "vdc"] if committed else ["vdc"],
                             f"{what}: the adopted disk is {'there' if committed else 'absent'}")
                    if committed:
                        check_eq(len(h.chain(vm, "vdb")), 3, f"{what}: its chain has the three layers")
                        check_eq(h.guest_hash(vm, "vdb"), content, f"{what}: the guest sees the adopted chain's content")
                    if mode == "move" and committed:
                        check_eq([p for p in files if os.path.exists(p)], [], f"{what}: the moved files' old names are gone")
                    else:
                        check_eq([sha(p) if os.path.exists(p) else None for p in files], hashes,
                                 f"{what}: the caller's files are there, unchanged")
                        if not committed:
                            check_eq([os.stat(p).st_mode & 0o777 for p in files], [0o640] * 3,
                                     f"{what}: with their mode")
                expect(h2, label)
                end_case(c, label, expect)

        h1.start_vdiskd()
        h1.wait_joined()
        host1_checks(h1)
        c.check_clean(vms)
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
