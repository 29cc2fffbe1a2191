#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskd.conf [Cluster]: Mode=local (the default, also when written out) needs no sanlock and behaves as
before; Mode=sanlock with incomplete or invalid settings, with no sanlock daemon to talk to, or in a
vdiskd built without sanlock, is refused at start with a message that says why, and the store is left
as it was."""

import os
import shutil
import sys
import tempfile

import clustertest  # noqa: F401  (sys.path for vdisktest)
import vdisktest
from vdisktest import check, check_eq, finish, opts


def refused(vdiskd, conf, want, env=None):
    e = vdisktest.Env(vdiskd, config_extra=conf)
    try:
        os.makedirs(e.store, mode=0o700)
        before = e.snapshot_store()
        p = e.start(env=env, expect_ready=False)
        try:
            rc = p.wait(timeout=30)
        except Exception:
            p.kill()
            p.wait()
            rc = None
        check(rc not in (0, None), f"vdiskd refuses to start with {conf.strip()!r} (exit {rc})")
        check(want in e.log_text(), f"the message says why ({want!r}): {e.log_text()[-300:]!r}")
        check_eq(e.snapshot_store(), before, "the store is unchanged")
    finally:
        e.close()


def main():
    if len(sys.argv) < 3:
        sys.exit(2)
    vdiskd, built = sys.argv[1], sys.argv[2] == "yes"
    vdisktest.require("dbus-daemon", "qemu-img")

    # Mode=local written out: no sanlock involved (no SANLOCK_RUN_DIR, no daemon), everything as before.
    e = vdisktest.Env(vdiskd, config_extra="[Cluster]\nMode=local\n")
    try:
        e.start()
        e.call("CreateImage", "base", "qcow2", vdisktest.dbus.UInt64(1 << 20), opts())
        e.call("CreateVM", "vm1", vdisktest.dbus.UInt32(0), opts())
        e.call("CreateDisk", "vm1", "vda", "base", vdisktest.dbus.UInt64(0), opts())
        top = str(e.call("Snapshot", "vm1", "vda", opts()))
        check_eq(str(e.call("GetChain", "vm1", "vda")[0][0]), top, "Mode=local: Snapshot and GetChain as before")
        check("lockspace" not in e.log_text(), "Mode=local: no lockspace is joined")
        e.stop()
    finally:
        e.close()

    full = "[Cluster]\nMode=sanlock\nHostId=1\nLockspace=vdisk:/nonexistent/lockspace\nLeases=/nonexistent/leases\n"
    refused(vdiskd, "[Cluster]\nMode=cluster\n", "invalid value for Mode")
    refused(vdiskd, "[Cluster]\nMode=sanlock\nLockspace=vdisk:/x\nLeases=/y\n", "HostId=")
    refused(vdiskd, full.replace("HostId=1", "HostId=2001"), "HostId=")
    refused(vdiskd, full.replace("vdisk:/nonexistent/lockspace", "/nonexistent/lockspace"), "Lockspace=")
    refused(vdiskd, full.replace("Leases=/nonexistent/leases\n", ""), "Leases=")
    refused(vdiskd, full + "IoTimeout=0\n", "IoTimeout=")
    if built:
        # No sanlock daemon behind SANLOCK_RUN_DIR.
        empty = tempfile.mkdtemp(prefix="vdisk-no-sanlock-")
        try:
            refused(vdiskd, full, "is sanlock running?", env={"SANLOCK_RUN_DIR": empty})
        finally:
            shutil.rmtree(empty, ignore_errors=True)
    else:
        refused(vdiskd, full, "built without sanlock")
    finish()


if __name__ == "__main__":
    main()
