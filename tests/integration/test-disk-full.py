# SPDX-License-Identifier: LGPL-2.1-or-later
"""A full store (issue 7): every mutating operation either succeeds or fails with NoSpace, leaves the
store exactly as it was, and the daemon keeps serving.

The store is on a small tmpfs (as another user than root: in a user namespace where it is uid 0). Before
each attempt a filler file next to the store grows until ENOSPC and is then cut back by exactly the free
space wanted, so an operation meets ENOSPC at a chosen point: free space is swept from 0 upwards page by
page through the first 64 KiB (journal, records, headers), then around what the same operation consumed
on a twin with room to spare (data copies, in-place writes, new tables), until the operation succeeds.
Every failed attempt must be NoSpace (for Rebase / Commit / ImportImage from the call or as the job's
ErrorName), leave every file of the store byte-identical (names, sizes, contents of images/, records/,
journal/ and anything else under the store), and the daemon must answer a call while the filesystem is
still full. Operations: CreateImage (qcow2, raw, swap template, 2 MiB clusters), ImportImage (raw,
qcow2), CreateVM, CreateDisk (overlay, copy of a qcow2 and of a raw image, blank qcow2 and raw,
data_file on an overlay and on a blank disk, data_file_raw), Snapshot (plain and over a data file),
Rebase onto a lower layer, flatten (also into a data file), Commit (a middle layer, the top, into a raw
layer), and DeleteDisk / DeleteVM / DeleteImage on a full store. Then Rebase / flatten / Commit again
with slow steps (VDISKD_TEST_STEP_BYTES / VDISKD_TEST_STEP_DELAY_MS) while the filesystem is filled up
under them at several points of their progress (ImportImage copies 64 MiB per step, more than this store
holds: its mid-copy ENOSPC is reached by the sweep). When a failure leaves something behind, the test
prints what vdiskd logged, restarts it and checks that recovery from the journal restores the old state,
then carries on.

A failure prints the exact reproduction: the operation, its arguments, the free bytes, the error and
what changed in the store."""

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, Env, check, check_eq, finish, opts, require

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
NOSPACE = "org.vdisk1.Error.NoSpace"
MOUNT_SIZE = 128 * MiB
SLOW = {"VDISKD_TEST_STEP_BYTES": str(64 * KiB), "VDISKD_TEST_STEP_DELAY_MS": "15"}

env = None
env_extra = {}  # the daemon's test environment of the current phase (kept over restarts)
mnt = filler = None
summary = []


_uniq = [0]


def uniq():
    _uniq[0] += 1
    return str(_uniq[0])


def t(n):
    return dbus.UInt64(n)


_hash_cache = {}


def store_state():
    """Every file under the store: relative path -> (size, sha256), except the bytes of the write-ahead
    logs. Hashes are cached per (inode, size, mtime, ctime): any write changes the latter two."""
    out = {}
    for root, dirs, files in os.walk(env.store):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), env.store) + "/"] = None
        for n in files:
            p = os.path.join(root, n)
            st = os.stat(p)
            if os.path.relpath(root, env.store) == "log":
                # A VM's write-ahead log (docs/design.md, "Commit protocol"): its bytes change when any later
                # operation, even one that then fails, first checkpoints the entries of earlier ones, whose
                # changes the records and images already show. Its presence and size are state, not its bytes.
                out[os.path.relpath(p, env.store)] = (st.st_size, "log")
                continue
            key = (p, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if key not in _hash_cache:
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for block in iter(lambda: f.read(MiB), b""):
                        h.update(block)
                _hash_cache[key] = h.hexdigest()[:16]
            out[os.path.relpath(p, env.store)] = (st.st_size, _hash_cache[key])
    return out


def diff(before, after):
    out = []
    for k in sorted(set(before) | set(after)):
        if k not in after:
            out.append(f"-{k}")
        elif k not in before:
            out.append(f"+{k} {after[k]}")
        elif before[k] != after[k]:
            out.append(f"~{k} {before[k]} -> {after[k]}")
    return out


def free_bytes():
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def fill(free):
    """Leaves exactly `free` bytes (a multiple of the page size) free: the filler file next to the store
    grows (fallocate) or shrinks (ftruncate) by the difference; tmpfs accounts pages exactly."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        for _ in range(3):
            cur, size = free_bytes(), os.fstat(fd).st_size
            if cur > free:
                try:
                    os.posix_fallocate(fd, size, cur - free)
                except OSError as e:
                    # Something else (a running job) took space meanwhile: fill page by page.
                    if e.errno != errno.ENOSPC or free != 0:
                        raise
                    while True:
                        try:
                            os.posix_fallocate(fd, os.fstat(fd).st_size, 4 * KiB)
                        except OSError:
                            break
            elif cur < free:
                if free - cur > size:
                    raise RuntimeError(f"cannot leave {free} bytes free: the filler holds only {size}")
                os.ftruncate(fd, size - (free - cur))
            else:
                return free
    finally:
        os.close(fd)
    raise RuntimeError(f"wanted {free} bytes free, the filesystem has {free_bytes()}")


def release():
    try:
        os.truncate(filler, 0)
    except FileNotFoundError:
        pass


def job_result(err, res, timeout=300):
    """(error name or None, message, where): where is "call" or "job"."""
    if err:
        return err, res, "call"
    state, ename, emsg = env.wait_job(res, timeout=timeout)
    return (None, "", "job") if state == "done" else (ename or state, emsg, "job")


def call_result(method, *args):
    err, res = env.try_call(method, *args)
    return err, res, "call"


def serving():
    err, res = env.try_call("ListImages")
    return err is None


def chain(vm, disk):
    return [(str(c[0]), str(c[1]), str(c[2])) for c in env.call("GetChain", vm, disk)]


def qemu_io(path, fmt, *cmds):
    argv = ["qemu-io", "-t", "unsafe", "-f", fmt]
    for c in cmds:
        argv += ["-c", c]
    # In the image's directory: QEMU opens a relative data-file name from the working directory.
    p = subprocess.run(argv + [os.path.basename(path)], capture_output=True, text=True, cwd=os.path.dirname(path))
    if p.returncode != 0 or "failed" in p.stdout:
        raise RuntimeError(f"qemu-io {cmds} on {path}: {p.stdout} {p.stderr}")


def write_top(vm, disk, *cmds):
    top = chain(vm, disk)[0]
    qemu_io(os.path.join(env.store, top[1]), top[2], *cmds)


def points(consumed):
    """Free-space values to try, ascending: every page of the first 64 KiB, then spread over what a twin
    consumed and page by page around it."""
    pts = set(range(0, 64 * KiB + 1, 4 * KiB))
    c = max(consumed, 4 * KiB)
    pts |= {(c * k // 8) & ~4095 for k in range(1, 8)}
    pts |= {x for x in range(c - 64 * KiB, c + 64 * KiB + 1, 8 * KiB) if x > 0}
    pts |= {(c * 5 // 4) & ~4095, (c * 3 // 2) & ~4095, 2 * c & ~4095, c + MiB}
    return sorted(p for p in pts if p <= MOUNT_SIZE // 2)


def consumption(do):
    """Runs do() with room to spare; returns (error, bytes it left allocated)."""
    release()
    before = free_bytes()
    err, msg, _ = do()
    return err, msg, before - free_bytes()


def sweep(label, do, twin=None, repro="", cleanup=()):
    """do(): (error name or None, message, where). twin(): the same operation on an identical twin, to
    learn how much space it takes. Tries increasing free space until do() succeeds."""
    consumed = 0
    if twin:
        err, msg, consumed = consumption(twin)
        if not check_eq(err, None, f"{label}: the twin succeeds with room to spare ({msg})"):
            return
    failures, where, messages, bad = [], {}, {}, []
    success_at = None
    pending, tried = sorted(points(consumed)), set()
    while True:
        if not pending:
            # Nothing planned succeeded: more room, geometrically.
            nxt = max(tried) * 2 if tried else 4 * KiB
            if nxt > MOUNT_SIZE // 2:
                break
            pending = [nxt]
        free = pending.pop(0)
        tried.add(free)
        before = store_state()
        log_mark = len(env.log_text())
        fill(free)
        err, msg, at = do()
        full_serving = serving()
        after = store_state()
        release()
        if err is None:
            success_at = free
            break
        failures.append(free)
        where[at] = where.get(at, 0) + 1
        # Refused up front for want of N bytes: try page by page just above N, where the check passes
        # and the operation meets ENOSPC midway.
        m = re.search(r"needs (?:up to )?(\d+)", str(msg))
        if m:
            need = int(m.group(1)) & ~4095
            more = set(range(need - 8 * KiB, need + 128 * KiB + 1, 4 * KiB)) | {(need * 5 // 4) & ~4095, (need * 3 // 2) & ~4095}
            pending = sorted(set(pending) | {x for x in more if x > free and x not in tried})
        short = re.sub(r"\d+", "N", str(msg).split(":")[0][:60])
        messages[short] = messages.get(short, 0) + 1
        ok = check_eq(err, NOSPACE, f"{label} with {free} bytes free fails with NoSpace ({msg})")
        changed = diff(before, after)
        ok &= check_eq(changed, [], f"{label} with {free} bytes free leaves the store as it was")
        ok &= check(full_serving, f"{label} with {free} bytes free: the daemon answers on the full store")
        if not ok:
            bad.append(free)
            if len(bad) == 1:
                print(f"     REPRODUCTION: {repro or label}: fill the store's filesystem, leave {free} bytes free, "
                      f"call it: {err} {msg!r}; store changes: {changed[:10]}")
            if changed and not left_behind(label, before, log_mark, quiet=len(bad) > 1):
                return
    if success_at is None:
        err, msg, _ = do()
        check_eq(err, None, f"{label} succeeds once there is space ({msg})")
    else:
        check(True, f"{label} succeeds with {success_at} bytes free")
    check_eq(os.listdir(os.path.join(env.store, "journal")), [], f"{label}: journal empty afterwards")
    for c in cleanup:
        check_eq(env.try_call(*c)[0], None, f"{label}: clean-up {c}")
    line = (f"{label}: {len(failures)} NoSpace failures "
            f"({', '.join(f'{v} at the {k}' for k, v in sorted(where.items()))}; free 0..{failures[-1] if failures else 0}), "
            f"success at {success_at if success_at is not None else 'room to spare'} bytes free (twin used {consumed}); "
            f"messages: {messages}" + (f"; WRONG at {len(bad)} points: {bad}" if bad else ""))
    print("     " + line, flush=True)
    summary.append(line)


def left_behind(label, before, log_mark, quiet=False):
    """Something was left in the store: what the daemon logged, what it says now that there is space again,
    and whether a restart (recovery from the journal) restores the old state. True if it does."""
    if not quiet:
        for line in env.log_text()[log_mark:].splitlines()[-6:]:
            print(f"     vdiskd: {line}")
        still = diff(before, store_state())
        print(f"     with space again, still changed: {still[:6]}")
        for v in env.call("ListVMs"):
            problems = [tuple(map(str, p)) for p in env.call("Verify", str(v[0]))]
            if problems:
                print(f"     Verify {v[0]} before a restart: {problems[:4]}")
    env.restart(env_extra)
    after = diff(before, store_state())
    check_eq(after, [], f"{label}: a restart rolls the failed operation back")
    return not after


def verify_all(label):
    for v in env.call("ListVMs"):
        check_eq([tuple(map(str, p)) for p in env.call("Verify", str(v[0]))], [], f"{label}: Verify {v[0]} clean")


# ---------------------------------------------------------------------------------------------------

def make_upload(name, fmt, size, writes):
    p = os.path.join(env.tmp, f"{name}.{fmt}")
    if fmt == "qcow2":
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", p, str(size)], check=True)
    else:
        with open(p, "wb") as f:
            f.truncate(size)
    qemu_io(p, fmt, *writes)
    return p


def import_(name, fmt, path):
    def do():
        with open(path, "rb") as f:
            err, res = env.try_call("ImportImage", name, fmt, dbus.types.UnixFd(f.fileno()), opts())
        return job_result(err, res)
    return do


DATA = ["write -P 0x11 0 1M", "write -P 0x22 5M 512k", "write -P 0x33 13M 768k"]


def build_chain(vm, disk, base, layers, data_file=False):
    """Disk over `base` with `layers` private layers, each with data (identical for twins)."""
    o = opts(data_file=True) if data_file else opts()
    env.call("CreateDisk", vm, disk, base, t(0), o)
    for k in range(layers):
        write_top(vm, disk, f"write -P 0x{0x40 + k:02x} {k * 3}M 640k", f"write -P 0x{0x50 + k:02x} {k + 9}M 256k")
        if k + 1 < layers:
            env.call("Snapshot", vm, disk, opts())


def phase_sweeps():
    qup = make_upload("qup", "qcow2", 16 * MiB, DATA)
    rup = make_upload("rup", "raw", 16 * MiB, DATA)
    check_eq(import_("qbase", "qcow2", qup)()[0], None, "setup: import qbase")
    check_eq(import_("rbase", "raw", rup)()[0], None, "setup: import rbase")
    env.call("CreateVM", "vm", dbus.UInt32(0), opts())

    # CreateImage
    for label, fmt, size, o in [("CreateImage qcow2 1 GiB", "qcow2", GiB, {}),
                                ("CreateImage raw 64 MiB", "raw", 64 * MiB, {}),
                                ("CreateImage qcow2 swap template", "qcow2", GiB, {"template": "swap"}),
                                ("CreateImage qcow2 2 MiB clusters", "qcow2", GiB, {"cluster_size": 2 * MiB})]:
        n = label.split()[1] + uniq()
        sweep(label, lambda n=n: call_result("CreateImage", n, fmt, t(size), opts(**o)),
              twin=lambda n=n: call_result("CreateImage", n + "t", fmt, t(size), opts(**o)),
              repro=f"CreateImage({n!r}, {fmt!r}, {size}, {o})", cleanup=[("DeleteImage", n), ("DeleteImage", n + "t")])

    # ImportImage
    sweep("ImportImage raw 16 MiB (2.25 MiB data)", import_("imp-r", "raw", rup), twin=import_("imp-rt", "raw", rup),
          repro="ImportImage('imp-r', 'raw', fd of a 16 MiB raw file with 2.25 MiB of data)",
          cleanup=[("DeleteImage", "imp-r"), ("DeleteImage", "imp-rt")])
    sweep("ImportImage qcow2 (2.25 MiB data)", import_("imp-q", "qcow2", qup), twin=import_("imp-qt", "qcow2", qup),
          repro="ImportImage('imp-q', 'qcow2', fd of a 16 MiB qcow2 with 2.25 MiB of data)",
          cleanup=[("DeleteImage", "imp-q"), ("DeleteImage", "imp-qt")])

    # CreateVM
    sweep("CreateVM", lambda: call_result("CreateVM", "vm2", dbus.UInt32(0), opts()),
          twin=lambda: call_result("CreateVM", "vm2t", dbus.UInt32(0), opts()), repro="CreateVM('vm2', 0, {})")

    # CreateDisk
    for label, image, size, o in [("CreateDisk overlay", "qbase", 0, {}),
                                  ("CreateDisk copy of qcow2", "qbase", 0, {"mode": "copy"}),
                                  ("CreateDisk copy of raw", "rbase", 0, {"mode": "copy"}),
                                  ("CreateDisk blank qcow2", "", GiB, {}),
                                  ("CreateDisk blank raw", "", 64 * MiB, {"format": "raw"}),
                                  ("CreateDisk overlay data_file", "qbase", 0, {"data_file": True}),
                                  ("CreateDisk blank data_file", "", 64 * MiB, {"data_file": True}),
                                  ("CreateDisk blank data_file_raw", "", 64 * MiB, {"data_file": True, "data_file_raw": True})]:
        n = "d" + uniq()
        sweep(label, lambda n=n: call_result("CreateDisk", "vm", n, image, t(size), opts(**o)),
              twin=lambda n=n: call_result("CreateDisk", "vm", n + "t", image, t(size), opts(**o)),
              repro=f"CreateDisk('vm', {n!r}, {image!r}, {size}, {o})",
              cleanup=[("DeleteDisk", "vm", n), ("DeleteDisk", "vm", n + "t")])

    # Snapshot: plain, and over a top with a data file
    for label, df in [("Snapshot", False), ("Snapshot over a data file", True)]:
        n = "s" + uniq()
        for d in (n, n + "t"):
            build_chain("vm", d, "qbase", 1, data_file=df)
        sweep(label, lambda n=n: call_result("Snapshot", "vm", n, opts()),
              twin=lambda n=n: call_result("Snapshot", "vm", n + "t", opts()), repro=f"Snapshot('vm', {n!r}) on {chain('vm', n)}",
              cleanup=[("DeleteDisk", "vm", n), ("DeleteDisk", "vm", n + "t")])

    # Rebase onto a lower layer, flatten, Commit: twins built with the same data.
    def reshape(label, build, method, pick):
        n = "r" + uniq()
        for d in (n, n + "t"):
            build(d)

        def run(d):
            ids = [c[0] for c in chain("vm", d)]
            err, res = env.try_call(method, "vm", d, pick(ids), opts())
            return job_result(err, res)
        desc = f"{method}('vm', {n!r}, <{label}>) on chain {[c[1] for c in chain('vm', n)]}"
        sweep(label, lambda: run(n), twin=lambda: run(n + "t"), repro=desc,
              cleanup=[("DeleteDisk", "vm", n), ("DeleteDisk", "vm", n + "t")])
        verify_all(label)

    reshape("Rebase onto a lower layer", lambda d: build_chain("vm", d, "qbase", 3), "Rebase", lambda ids: ids[2])
    reshape("Rebase onto the catalog image at the bottom", lambda d: build_chain("vm", d, "qbase", 2), "Rebase",
            lambda ids: ids[-1])
    reshape("flatten (Rebase \"\")", lambda d: build_chain("vm", d, "qbase", 2), "Rebase", lambda ids: "")
    reshape("flatten into a data file", lambda d: build_chain("vm", d, "qbase", 1, data_file=True), "Rebase", lambda ids: "")
    reshape("Commit a middle layer", lambda d: build_chain("vm", d, "qbase", 3), "Commit", lambda ids: ids[1])
    reshape("Commit the top layer", lambda d: build_chain("vm", d, "qbase", 2), "Commit", lambda ids: ids[0])

    def raw_chain(d):
        env.call("CreateDisk", "vm", d, "", t(32 * MiB), opts(format="raw"))
        env.call("Snapshot", "vm", d, opts())
        write_top("vm", d, "write -P 0x66 1M 1M", "write -P 0x67 20M 512k")
    reshape("Commit into a raw layer", raw_chain, "Commit", lambda ids: ids[0])

    # Deleting: the same rules (and the sweep shows how much room freeing space takes).
    env.call("CreateVM", "delvm", dbus.UInt32(0), opts())
    build_chain("delvm", "a", "qbase", 2)
    build_chain("delvm", "b", "qbase", 2)
    env.call("CreateImage", "delimg", "qcow2", t(GiB), opts())
    for label, method, args in [("DeleteDisk", "DeleteDisk", ("delvm", "a")), ("DeleteVM", "DeleteVM", ("delvm",)),
                                ("DeleteImage", "DeleteImage", ("delimg",))]:
        sweep(label, lambda method=method, args=args: call_result(method, *args), repro=f"{method}{args}")
    verify_all("after the sweeps")


def phase_races():
    """Jobs with slow steps, the filesystem filled up under them at several points of their progress."""
    global env_extra
    env_extra = SLOW
    env.restart(SLOW)
    counter = [0]

    def fresh(build):
        counter[0] += 1
        d = f"race{counter[0]}"
        if build:
            build(d)
        return d

    cases = [
        ("Rebase onto a lower layer", lambda d: build_chain("vm", d, "qbase", 3),
         lambda d: env.try_call("Rebase", "vm", d, chain("vm", d)[2][0], opts())),
        ("flatten", lambda d: build_chain("vm", d, "qbase", 2), lambda d: env.try_call("Rebase", "vm", d, "", opts())),
        ("flatten into a data file", lambda d: build_chain("vm", d, "qbase", 1, data_file=True),
         lambda d: env.try_call("Rebase", "vm", d, "", opts())),
        ("Commit a middle layer", lambda d: build_chain("vm", d, "qbase", 3),
         lambda d: env.try_call("Commit", "vm", d, chain("vm", d)[1][0], opts())),
        ("Commit the top layer", lambda d: build_chain("vm", d, "qbase", 2),
         lambda d: env.try_call("Commit", "vm", d, chain("vm", d)[0][0], opts())),
    ]
    for label, build, start in cases:
        d = fresh(build)
        outcomes = []
        for frac in (0.0, 0.2, 0.5, 0.8):
            before = store_state()
            log_mark = len(env.log_text())
            err, res = start(d)
            if not check_eq(err, None, f"race {label}: the job starts ({res})"):
                break
            # Wait until the job has done `frac` of its bytes, fill the filesystem, wait for the end.
            props = dbus.Interface(env.bus.get_object(BUS_NAME, res, introspect=False), "org.freedesktop.DBus.Properties")
            filled_at, done, total = None, 0, 0
            end = time.monotonic() + 60
            while time.monotonic() < end:
                st = str(props.Get("org.vdisk1.Job", "State"))
                done, total = int(props.Get("org.vdisk1.Job", "BytesDone")), int(props.Get("org.vdisk1.Job", "BytesTotal"))
                if st != "running" or (total and done >= frac * total):
                    break
                time.sleep(0.002)
            if str(props.Get("org.vdisk1.Job", "State")) == "running":
                fill(0)
                filled_at = done
            state, ename, emsg = env.wait_job(res, timeout=300)
            full_serving = serving()
            after = store_state()
            release()
            if state == "done":
                outcomes.append(f"{frac:.1f}: done" + (f" though filled at {filled_at}/{total}" if filled_at is not None
                                                       else " before the fill"))
                d = fresh(build)
                continue
            outcomes.append(f"{frac:.1f}: {ename.rsplit('.', 1)[-1]} (filled at {filled_at}/{total} bytes)")
            ok = check_eq(ename, NOSPACE, f"race {label}, filled at {filled_at}/{total} bytes: NoSpace ({emsg})")
            changed = diff(before, after)
            ok &= check_eq(changed, [], f"race {label}, filled at {filled_at}/{total} bytes: the store is as it was")
            ok &= check(full_serving, f"race {label}: the daemon answers on the full store")
            if not ok:
                print(f"     REPRODUCTION: {label} with VDISKD_TEST_STEP_BYTES=65536 VDISKD_TEST_STEP_DELAY_MS=15, "
                      f"filesystem filled when BytesDone >= {filled_at}: {ename} {emsg!r}; store changes: {changed[:10]}")
                if changed:
                    outcomes[-1] += " LEFT THINGS BEHIND"
                    if not left_behind("race " + label, before, log_mark):
                        return
        line = f"race {label}: " + "; ".join(outcomes)
        print("     " + line, flush=True)
        summary.append(line)
    verify_all("after the races")


def in_own_namespaces():
    """Not root: runs this test again in a new user namespace where the user is uid 0 (and nothing more
    outside: another uid cannot be mapped) with its own mount namespace, where it may mount the tmpfs;
    the bus and vdiskd run in there too. Nothing outside sees the mount, which goes away with the test.
    Where user namespaces are not allowed (some containers), the mount fails and the test skips."""
    if os.geteuid() == 0 or not shutil.which("unshare"):
        return
    if subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True).returncode != 0:
        return
    os.execvp("unshare", ["unshare", "--user", "--map-root-user", "--mount", sys.executable, *sys.argv])


def main():
    global env, mnt, filler
    require("qemu-io")
    in_own_namespaces()
    env = Env(sys.argv[1])
    mnt = os.path.join(env.tmp, "small")
    os.mkdir(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MOUNT_SIZE},mode=0700", "tmpfs", mnt]).returncode != 0:
        print("SKIP: cannot mount a tmpfs (not root, and no user namespace allowed?)")
        env.close()
        sys.exit(77)
    filler = os.path.join(mnt, "filler")
    try:
        env.store = os.path.join(mnt, "store")
        env.start()
        t0 = time.monotonic()
        phase_sweeps()
        print(f"sweeps took {time.monotonic() - t0:.1f} s", flush=True)
        t0 = time.monotonic()
        phase_races()
        print(f"races took {time.monotonic() - t0:.1f} s", flush=True)
        check_eq(os.listdir(os.path.join(env.store, "journal")), [], "journal empty at the end")
        env.restart()
        verify_all("after a restart")
        print("summary:")
        for line in summary:
            print("  " + line)
    finally:
        release()
        env.stop()
        subprocess.run(["umount", mnt])
        env.close()
    finish()


if __name__ == "__main__":
    main()
