#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""DeleteImage on one host racing CreateDisk from that image on another (issue 20), many rounds, both
calls released at once from their own bus connections. In every round exactly one of them may win:
either the image is deleted and the disk was refused (NotFound: the image is gone, or InUse: the
catalog was busy), or the disk exists on the image and DeleteImage was refused (InUse). Never both:
a disk on a deleted image would have lost its base. (A private copy does not use the image once made:
there both may succeed, the copy first, but never the copy after the deletion.) Both hosts then agree on the catalog and on the
VM's disks, every disk verifies clean, and the store holds no orphan."""

import threading

import dbus

import clustertest
from clustertest import check, check_eq, finish, opts

ROUNDS = 12
MODES = ("overlay", "copy")


def fire(host, method, args, out, key, barrier):
    bus = dbus.bus.BusConnection(host.env.address)
    m = dbus.Interface(bus.get_object("org.vdisk1", "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
    barrier.wait()
    try:
        getattr(m, method)(*args, timeout=120)
        out[key] = (None, "")
    except dbus.exceptions.DBusException as e:
        out[key] = (e.get_dbus_name(), e.get_dbus_message())
    finally:
        bus.close()


def images(host):
    return sorted(str(i[0]) for i in host.call("ListImages"))


def disks(host, vm):
    return sorted(str(d[0]) for d in host.call("ListDisks", vm))


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 2)
    try:
        h1, h2 = c.hosts
        h1.call("CreateVM", "vm1", dbus.UInt32(0), opts())
        outcomes = {"image deleted": 0, "disk created": 0}
        for i in range(ROUNDS):
            name, disk, mode = f"img{i}", f"d{i}", MODES[i % len(MODES)]
            h1.call("CreateImage", name, "qcow2", dbus.UInt64(16 << 20), opts())
            # Alternate which host deletes, so that both directions of the race are tried.
            deleter, creator = (h1, h2) if i % 2 == 0 else (h2, h1)
            out = {}
            barrier = threading.Barrier(2)
            threads = [threading.Thread(target=fire, args=(deleter, "DeleteImage", (name,), out, "delete", barrier)),
                       threading.Thread(target=fire, args=(creator, "CreateDisk", ("vm1", disk, name, dbus.UInt64(0),
                                                                                  opts(mode=mode)), out, "create", barrier))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            deleted, created = out["delete"][0] is None, out["create"][0] is None
            what = f"round {i} ({mode}, delete on host {deleter.host_id}): delete {out['delete']}, create {out['create']}"
            if mode == "overlay":
                check(deleted != created, f"{what}: exactly one wins")
            else:
                check(deleted or created, f"{what}: at least one succeeds")
            if deleted and created:
                outcomes["copy made, then image deleted"] = outcomes.get("copy made, then image deleted", 0) + 1
                for h in (h1, h2):
                    check(name not in images(h), f"{what}: host {h.host_id} no longer lists the image")
                    check(disk in disks(h, "vm1"), f"{what}: host {h.host_id} has the copy {disk}")
            elif deleted:
                outcomes["image deleted"] += 1
                check(out["create"][0] in ("org.vdisk1.Error.NotFound", "org.vdisk1.Error.InUse"),
                      f"{what}: the refused CreateDisk says NotFound or InUse")
                for h in (h1, h2):
                    check(name not in images(h), f"{what}: host {h.host_id} no longer lists the image")
                    check(disk not in disks(h, "vm1"), f"{what}: host {h.host_id} has no disk {disk}")
            else:
                outcomes["disk created"] += 1
                check_eq(out["delete"][0], "org.vdisk1.Error.InUse", f"{what}: the refused DeleteImage says InUse")
                for h in (h1, h2):
                    check(name in images(h), f"{what}: host {h.host_id} still lists the image")
                    check(disk in disks(h, "vm1"), f"{what}: host {h.host_id} has disk {disk}")
                chain = [str(x[0]) for x in h2.call("GetChain", "vm1", disk)]
                base = [str(x[1]) for x in h1.call("ListImages") if str(x[0]) == name]
                if mode == "overlay":
                    check_eq(chain[-1:], base, f"{what}: the overlay's base is the image")
                else:
                    check(base and base[0] not in chain, f"{what}: the copy does not use the image")
        print(f"outcomes: {outcomes}")
        check_eq(images(h1), images(h2), "both hosts list the same catalog")
        check_eq(disks(h1, "vm1"), disks(h2, "vm1"), "both hosts list the same disks")
        c.check_clean(["vm1"])
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
