# SPDX-License-Identifier: LGPL-2.1-or-later
"""B6 of docs/benchmarks.md: OpenDisk of 1-, 10- and 100-layer chains against the D-Bus floor
(Peer.Ping to vdiskd on the same private bus with stock fd limits), 10,000 calls each, interleaved.
Usage: run-b6.py VDISKD BENCH-OPENDISK [CALLS] [PAIRS]"""

import json
import os
import platform
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import dbus  # noqa: E402
from vdisktest import Env, opts  # noqa: E402

# Targets of docs/benchmarks.md: one fd, and a full message of 16 fds (a 16-layer chain).
TARGETS = {1: 1.3, 16: 2.0}


def main():
    vdiskd, bench = sys.argv[1], sys.argv[2]
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    pairs = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    env = Env(vdiskd)
    rows = []
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(1 << 30), opts())
        for depth in (1, 10, 16, 100):
            vm = f"vm{depth}"
            env.call("CreateVM", vm, dbus.UInt32(0), opts())
            env.call("CreateDisk", vm, "d", "" if depth == 1 else "base", dbus.UInt64(1 << 30), opts())
            for _ in range(depth - 2):
                env.call("Snapshot", vm, "d", opts())
            n = len(env.call("GetChain", vm, "d"))
            # Past one page, also the whole hand-out (OpenDisk + every GetFds), for reference: no target.
            for fetch in ([False, True] if depth > 16 else [False]):
                out = subprocess.run([bench, vm, "d", str(calls), str(pairs), "read-write"] + (["fetch-all"] if fetch else []),
                                     capture_output=True, text=True,
                                     env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=env.address), check=True)
                r = json.loads(out.stdout)
                r["layers"] = n
                r["fetch_all"] = fetch
                rows.append(r)
    finally:
        env.close()

    print(f"B6 OpenDisk vs D-Bus floor (Peer.Ping), {calls} calls x {pairs} interleaved pairs, median ratio")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, kernel {platform.release()}")
    print("| layers | fds | OpenDisk µs | Ping µs | ratio | target |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        target = None if r["fetch_all"] else TARGETS.get(r["fds"], None)
        verdict = "" if target is None else (f"≤ {target}: {'met' if r['median_ratio'] <= target else 'MISSED'}")
        fds = f"{r['fds']} (all, with GetFds)" if r["fetch_all"] else r["fds"]
        print(f"| {r['layers']} | {fds} | {r['opendisk_us']:.1f} | {r['ping_us']:.1f} | {r['median_ratio']:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
