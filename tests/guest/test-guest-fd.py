# SPDX-License-Identifier: LGPL-2.1-or-later
"""A real Linux guest (tests/guest/guest.py, QEMU TCG) on a vdisk chain in today's chain-fd mode:
`vdiskctl open vm d -- qemu-system-x86_64 ... -device virtio-blk-pci,drive=d`.

The chain: a raw catalog image with a known pattern, the disk's overlay on it and a snapshot on top
(three layers). The guest sees the disk at the catalog image's size and reads the pattern back, writes
another pattern over 1 MiB, fdatasyncs, reads it back, runs guest-io writer for a moment (counter blocks,
stopped by SIGTERM, checked by writer-verify) and powers off. Meanwhile QEMU's own fd table
(/proc/PID/fd of the process vdiskctl became) holds every file of the chain, the top one read-write
and the others read-only: the contrast for the export modes, where QEMU must hold none of them. After:
the base and middle files are byte-identical to before, the write is allocated in the top layer only
(qemu-img map: depth 0 exactly there), the chain's content is the base pattern with the writes in it
(qemu-img compare against an expected raw file), qemu-img check is clean, Verify finds nothing and the
lease ended with QEMU (Snapshot works again).

Usage: test-guest-fd.py VDISKD (VDISKCTL in the environment). Exits 77 if no guest can run here
(qemu-system-x86_64, a kernel with modules, busybox-static or gcc missing)."""

import hashlib
import json
import os
import sys
import time

import guest
from vdisktest import SKIP, Env, check, check_eq, finish, opts, qemu_img

VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
MiB = 1 << 20
SIZE = 8 * MiB
BASE_SEED = 0x1234
WRITE_SEED = 0xBEEF
WRITE_OFF, WRITE_LEN = 2 * MiB, 1 * MiB
# guest-io writer: 16 counter blocks (one 64 KiB cluster) at 4 MiB.
WRITER_BLOCK, WRITER_BLOCKS = 1024, 16
WRITER_ARGS = f"--start-block {WRITER_BLOCK} --blocks {WRITER_BLOCKS} --run-id 8"


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    reason = guest.unavailable()
    if reason:
        print(f"SKIP: {reason}")
        sys.exit(SKIP)
    # Build (or take from the cache) the guest before the daemon starts: not part of any timing.
    qemu = guest.qemu_argv(["-device", "virtio-blk-pci,drive=d"])

    env = Env(sys.argv[1])
    g = None
    try:
        env.start()
        check_eq(guest.import_base(env, SIZE, BASE_SEED), (None, ""), "import the base image (raw, 8 MiB pattern)")
        files = guest.create_chain(env, "vm")   # top first
        check_eq(len(files), 3, "the chain has three layers (snapshot, disk overlay, catalog image)")
        before = {p: sha256(p) for p in files[1:]}

        t0 = time.monotonic()
        g = guest.Guest([VDISKCTL, "open", "vm", "d", "--", *qemu], log=os.path.join(env.tmp, "console.log"),
                        cwd=env.tmp)
        g.start(timeout=120)
        print(f"guest booted through vdiskctl open in {g.boot_seconds:.2f} s")
        g.wait_device("/dev/vda")

        # QEMU itself (vdiskctl exec'd it: same pid) holds the chain's files.
        exe = os.readlink(f"/proc/{g.pid}/exe")
        check(os.path.basename(exe).startswith("qemu-system-x86_64"), f"vdiskctl became QEMU (exe {exe})")
        table = guest.fd_table(g.pid)
        for i, p in enumerate(files):
            want = {2} if i == 0 else {0}
            check_eq(table.get(p), want, f"QEMU's fd table holds layer {i} ({'read-write' if i == 0 else 'read-only'})")
        check_eq(env.error("Snapshot", "vm", "d", opts())[0], "org.vdisk1.Error.InUse",
                 "Snapshot is InUse while the guest runs")

        check_eq(g.run_json("guest-io size /dev/vda")["size"], SIZE, "the guest sees the disk at the base's size")
        r = g.run_json(f"guest-io check /dev/vda 0 {SIZE} {BASE_SEED}", timeout=120, want_status=None)
        check_eq(r.get("ok"), True, f"the guest reads the base image's pattern through the chain ({r})")
        r = g.run_json(f"guest-io check /dev/vda 0 {SIZE} {WRITE_SEED}", timeout=120, want_status=None)
        check_eq(r, {"ok": False, "mismatch": 0}, "check fails on a pattern that is not there")
        r = g.run_json(f"guest-io fill /dev/vda {WRITE_OFF} {WRITE_LEN} {WRITE_SEED}", timeout=120)
        check_eq(r.get("ok"), True, "the guest writes 1 MiB and fdatasyncs")
        r = g.run_json(f"guest-io check /dev/vda {WRITE_OFF} {WRITE_LEN} {WRITE_SEED}", timeout=120, want_status=None)
        check_eq(r.get("ok"), True, "the guest reads its write back")

        # The writer the export tests use: counter blocks, each fdatasync'ed, stopped by SIGTERM.
        pid = g.spawn(f"guest-io writer /dev/vda {WRITER_ARGS} --interval-ms 20 --log", "/tmp/writer.log")
        time.sleep(1.5)
        g.stop(pid)
        lines = [json.loads(x) for x in g.check("cat /tmp/writer.log").splitlines() if x.startswith("{")]
        acked = [x["seq"] for x in lines if "seq" in x]
        summary = lines[-1] if lines else {}
        check(len(acked) >= 3 and acked == list(range(1, len(acked) + 1)),
              f"the writer logs every acknowledged write in order ({len(acked)} writes)")
        check_eq((summary.get("done"), summary.get("last_seq")), (True, len(acked)),
                 "on SIGTERM the writer ends with its summary")
        last_seq = len(acked)
        r = g.run_json(f"guest-io writer-verify /dev/vda {last_seq} {WRITER_ARGS}", want_status=None)
        check_eq((r.get("ok"), r.get("lost_count")), (True, 0), f"writer-verify: no acknowledged write lost ({r})")
        r = g.run_json(f"guest-io writer-verify /dev/vda {last_seq + 1} {WRITER_ARGS}", want_status=None)
        check_eq((r.get("ok"), r.get("lost")), (False, [last_seq + 1]), "writer-verify reports a write never made")
        status = g.poweroff(timeout=60)
        check_eq(status, 0, "the guest powers off and QEMU exits 0")
        print(f"guest session: {time.monotonic() - t0:.1f} s")

        for i, p in enumerate(files[1:], 1):
            check_eq(sha256(p), before[p], f"layer {i} is byte-identical to before the guest ran")
        p = qemu_img("map", "--output=json", "-f", "qcow2", files[0])
        ranges = [(e["start"], e["length"]) for e in json.loads(p.stdout or "[]") if e["depth"] == 0 and e["data"]]
        check_eq(ranges, [(WRITE_OFF, WRITE_LEN), (WRITER_BLOCK * 4096, WRITER_BLOCKS * 4096)],
                 "the writes are allocated in the top layer, and nothing else is")
        expected = os.path.join(env.tmp, "expected.raw")
        with open(expected, "wb") as f:
            f.write(guest.pattern(0, SIZE, BASE_SEED))
            f.seek(WRITE_OFF)
            f.write(guest.pattern(WRITE_OFF, WRITE_LEN, WRITE_SEED))
            # The last write of each counter block (blocks never written keep the base's pattern).
            for seq in range(max(1, last_seq - WRITER_BLOCKS + 1), last_seq + 1):
                block = WRITER_BLOCK + (seq - 1) % WRITER_BLOCKS
                f.seek(block * 4096)
                f.write(guest.counter_block(block, seq, 8))
        p = qemu_img("compare", "-f", "qcow2", "-F", "raw", files[0], expected)
        check_eq((p.returncode, p.stdout.strip()), (0, "Images are identical."),
                 "the chain's content is the base pattern with the guest's writes (counter blocks as guest.py builds them)")
        p = qemu_img("check", "-f", "qcow2", files[0])
        check_eq(p.returncode, 0, f"qemu-img check of the top layer is clean ({p.stdout.strip()[-300:]})")
        check_eq(env.error("Verify", "vm")[1], [], "Verify finds nothing")
        err = None
        for _ in range(100):
            err = env.error("Snapshot", "vm", "d", opts())[0]
            if err is None:
                break
            time.sleep(0.05)
        check_eq(err, None, "the lease ended with QEMU: Snapshot works again")
        check(env.canary_unchanged(), "canary unchanged")
    except guest.GuestError as e:
        check(False, f"guest: {e}")
    finally:
        if g:
            g.kill()
        env.close()
    finish()


if __name__ == "__main__":
    main()
