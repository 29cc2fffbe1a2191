# SPDX-License-Identifier: LGPL-2.1-or-later
"""ImportImage with a source that changes size during the copy (issue 16, item 11).

The daemon copies the caller's file in steps of 64 MiB; with VDISKD_TEST_STEP_DELAY_MS=1000 a source of
160 MiB takes three steps over two seconds at least. Right after ImportImage returns the test:

1. truncates the source to 96 MiB (mid-way: SEEK_DATA past the new end fails with ENXIO, which must not
   be taken for a trailing hole);
2. truncates it to 0;
3. appends 1 MiB to it.

Each job must fail with org.vdisk1.Error.Corrupt and a message that says the source changed size, and
leave nothing behind: no image in ListImages, every file of the store (records, journal, images, any
temporary file) as before. A last import of an unchanged source of the same size succeeds, with the
source's content.

Reading errors (EIO) of the source take the same path (the job fails, nothing is kept); they are not
tested here: a regular file that fails to read needs a device-mapper error target or FUSE.

Usage: test-import-source-changes.py VDISKD."""

import hashlib
import os
import sys

import dbus

from vdisktest import Env, check, check_eq, finish

MiB = 1 << 20
VDISKD = sys.argv[1]
SIZE = 160 * MiB
CORRUPT = "org.vdisk1.Error.Corrupt"


def all_files(root):
    """Every file and directory under the store, with sizes of files: temporary files count too."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(d, n), root)] = "dir"
        for n in files:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def write_source(path):
    with open(path, "wb") as f:
        for i in range(SIZE // MiB):
            f.write(bytes([0x30 + i % 64]) * MiB)


def images(env):
    return sorted(str(i[0]) for i in env.call("ListImages"))


def import_and_change(env, name, change):
    src = os.path.join(env.tmp, name + ".raw")
    write_source(src)
    with open(src, "rb") as f:
        err, job = env.error("ImportImage", name, "raw", dbus.types.UnixFd(f.fileno()),
                             dbus.Dictionary({}, signature="sv"))
        if err is None:
            change(src)
    if not check_eq(err, None, f"{name}: ImportImage returns a job ({job})"):
        return None
    state = env.wait_job(job)
    os.unlink(src)
    return state


def shrink_to(size):
    return lambda src: os.truncate(src, size)


def grow(src):
    with open(src, "ab") as f:
        f.write(b"\x77" * MiB)


def main():
    env = Env(VDISKD)
    try:
        env.start({"VDISKD_TEST_STEP_DELAY_MS": "1000"})
        before = all_files(env.store)
        cases = (("shrunk", shrink_to(96 * MiB), 96 * MiB), ("emptied", shrink_to(0), 0), ("grown", grow, SIZE + MiB))
        for name, change, now in cases:
            state = import_and_change(env, name, change)
            if state is None:
                continue
            check_eq(state[:2], ("failed", CORRUPT), f"{name}: the job fails with {CORRUPT} ({state[2]})")
            check("changed size" in state[2] and f"{SIZE} bytes at the start, {now} now" in state[2],
                  f"{name}: the message says the source changed size, from {SIZE} to {now}: {state[2]!r}")
            check_eq(images(env), [], f"{name}: no image is listed")
            check_eq(all_files(env.store), before,
                     f"{name}: the store is as before (no record, no image file, no temporary file, journal empty)")
            check_eq(os.listdir(os.path.join(env.store, "journal")), [], f"{name}: the journal is empty")

        # The same import, unchanged: the steps above failed because of the change, not the setup.
        state = import_and_change(env, "unchanged", lambda src: None)
        check_eq(state, ("done", "", ""), "unchanged source: the import is done")
        layer = [str(i[1]) for i in env.call("ListImages") if str(i[0]) == "unchanged"]
        if check_eq(len(layer), 1, "unchanged source: the image is listed"):
            path = [os.path.join(env.store, "images", n) for n in os.listdir(os.path.join(env.store, "images"))
                    if n.startswith(layer[0])]
            src = os.path.join(env.tmp, "expected.raw")
            write_source(src)
            with open(src, "rb") as a, open(path[0], "rb") as b:
                check(hashlib.sha256(a.read()).digest() == hashlib.sha256(b.read()).digest(),
                      "unchanged source: the image has the source's content")
            os.unlink(src)
        env.stop()
    finally:
        env.close()
    finish()


main()
