#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Two simulated hosts each fire 50 concurrent Snapshots at one disk (100 calls in flight at once, each
on its own bus connection). Every call either succeeds or answers InUse; the chain grows by exactly the
number of successes, every returned layer is in it once, both hosts see the same chain, Verify is clean
on both, and the store holds no orphan file, record or journal entry."""

import threading

import dbus

import clustertest
from clustertest import check, check_eq, finish, opts

PER_HOST = 50


def fire(host, results, barrier):
    bus = dbus.bus.BusConnection(host.env.address)
    m = dbus.Interface(bus.get_object("org.vdisk1", "/org/vdisk1", introspect=False), "org.vdisk1.Manager")
    barrier.wait()
    try:
        results.append((host.host_id, None, str(m.Snapshot("vm1", "vda", opts(), timeout=120))))
    except dbus.exceptions.DBusException as e:
        results.append((host.host_id, e.get_dbus_name(), e.get_dbus_message()))
    finally:
        bus.close()


def main():
    vdiskd = clustertest.usage_or_skip()
    c = clustertest.Cluster(vdiskd, 2)
    try:
        h1, h2 = c.hosts
        h1.call("CreateImage", "base", "qcow2", dbus.UInt64(64 << 20), opts())
        h1.call("CreateVM", "vm1", dbus.UInt32(0), opts())
        h2.call("CreateDisk", "vm1", "vda", "base", dbus.UInt64(0), opts())
        before = [str(x[0]) for x in h1.call("GetChain", "vm1", "vda")]

        results = []
        barrier = threading.Barrier(2 * PER_HOST)
        threads = [threading.Thread(target=fire, args=(h, results, barrier)) for h in (h1, h2) for _ in range(PER_HOST)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        check_eq(len(results), 2 * PER_HOST, "every call answered")

        ok = [r for r in results if r[1] is None]
        other = [r for r in results if r[1] not in (None, "org.vdisk1.Error.InUse")]
        check_eq(other, [], "every call succeeded or answered InUse")
        check(len(ok) > 0, f"some snapshots succeeded ({len(ok)}: {sum(r[0] == 1 for r in ok)} on host 1, "
                           f"{sum(r[0] == 2 for r in ok)} on host 2)")
        in_use = [r for r in results if r[1] == "org.vdisk1.Error.InUse"]
        check(all("in use by" in r[2] and "cluster host" in r[2] for r in in_use), "each InUse says that another cluster host holds it")

        after1 = [str(x[0]) for x in h1.call("GetChain", "vm1", "vda")]
        after2 = [str(x[0]) for x in h2.call("GetChain", "vm1", "vda")]
        check_eq(after1, after2, "both hosts see the same chain")
        check_eq(len(after1), len(before) + len(ok), "the chain grew by exactly the number of successes")
        check_eq(after1[len(ok):], before, "the old chain is below the new layers")
        check_eq(sorted(after1[:len(ok)]), sorted(r[2] for r in ok), "the new layers are exactly the ones returned")
        c.check_clean(["vm1"])
    finally:
        c.close()
    finish()


if __name__ == "__main__":
    main()
