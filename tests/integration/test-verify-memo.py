# SPDX-License-Identifier: LGPL-2.1-or-later
"""Verify remembers a clean check of a chain's backing layers (issue 19, B1): called again on an unchanged
chain it opens only the top layer's file (watched with inotify: IN_OPEN on the store's images/), yet a
backing layer changed behind the daemon's back is found by the very next Verify, with the exact problem a
freshly started daemon (which remembers nothing) reports: content changed in place at the same size (the
backing file name in the header), a header bit flipped (dirty), the file replaced by rename, the file
truncated. A file changed less than a second before a check is read again on every call until it has
settled (a change within the same timestamp tick would not show in its ctime)."""

import ctypes
import os
import struct
import sys
import time

import dbus

from vdisktest import Env, check, check_eq, finish, opts

GiB = 1 << 30
IN_OPEN = 0x20
SETTLE = 1.3  # the daemon remembers files whose ctime is more than 1 s older than the check

libc = ctypes.CDLL(None, use_errno=True)


class OpenWatch:
    """Names of the files of a directory opened between drain() and opened()."""

    def __init__(self, path):
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        check(self.fd >= 0, "inotify_init1")
        check(libc.inotify_add_watch(self.fd, path.encode(), IN_OPEN) >= 0, "inotify_add_watch")

    def _read(self):
        names = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            off = 0
            while off < len(buf):
                _, mask, _, n = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16:off + 16 + n].rstrip(b"\0").decode()
                if mask & IN_OPEN and name:
                    names.append(name)
                off += 16 + n

    def drain(self):
        self._read()

    def opened(self):
        return set(self._read())

    def close(self):
        os.close(self.fd)


def verify(env, watch):
    """Verify, and the set of image files the daemon opened for it."""
    watch.drain()
    problems = [tuple(str(x) for x in p) for p in env.call("Verify", "vm")]
    return problems, watch.opened()


def header_backing_name(path):
    """(offset, bytes) of the backing file name in a qcow2 header."""
    with open(path, "rb") as f:
        h = f.read(24)
        off, size = struct.unpack(">QI", h[8:20])
        f.seek(off)
        return off, f.read(size)


def main():
    env = Env(sys.argv[1])
    watch = None
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        env.call("CreateDisk", "vm", "d", "base", dbus.UInt64(0), opts())
        for _ in range(4):
            env.call("Snapshot", "vm", "d", opts())
        chain = env.call("GetChain", "vm", "d")
        ids = [str(x[0]) for x in chain]
        names = [os.path.basename(str(x[1])) for x in chain]
        images = os.path.join(env.store, "images")
        path = {i: os.path.join(images, n) for i, n in zip(ids, names)}
        top, backing = names[0], set(names[1:])
        check_eq(len(ids), 6, "a chain of six layers: the top, four snapshots, the catalog image")
        watch = OpenWatch(images)

        def remembered(what, full=True):
            """Lets the files settle, has the daemon check them (all of them if `full`: nothing remembered
            yet), then shows it remembers."""
            time.sleep(SETTLE)
            problems, opened = verify(env, watch)
            check_eq(problems, [], f"{what}: consistent")
            if full:
                check(backing <= opened, f"{what}: a full check opens every layer (opened {len(opened)} files)")
            problems, opened = verify(env, watch)
            check_eq(problems, [], f"{what}: still consistent")
            check_eq(opened, {top}, f"{what}: Verify again opens only the top layer's file")

        remembered("to begin with")

        # A file changed just before the check is read again, however often Verify is called, until its
        # ctime has settled.
        os.utime(path[ids[2]])
        for n in (1, 2):
            problems, opened = verify(env, watch)
            check_eq(problems, [], f"just touched, call {n}: consistent")
            check(names[2] in opened, f"just touched, call {n}: the touched layer is read again ({sorted(opened)})")
        remembered("once settled")

        def tampered(what, layer, change, restore, want=None, want_prefix=None):
            remembered(f"before {what}", full=False)
            before = open(path[layer], "rb").read()
            saved = change(path[layer])
            try:
                # Settled, so that only what the daemon saw of the file, not the change's recency, can give
                # the change away.
                time.sleep(SETTLE)
                problems, opened = verify(env, watch)
                check(names[ids.index(layer)] in opened, f"{what}: the changed layer is read again")
                mine = [p for p in problems if p[1] == layer]
                check(len(mine) == 1 and mine[0][0] == "d", f"{what}: Verify reports layer {layer}: {problems}")
                if want is not None:
                    check_eq(problems, [("d", layer, want)], f"{what}: the exact problem")
                if want_prefix is not None:
                    check(len(problems) == 1 and problems[0][2].startswith(want_prefix),
                          f"{what}: the problem is '{want_prefix}...': {problems}")
                # What a daemon that remembers nothing reports: the very same list.
                env.restart()
                fresh, _ = verify(env, watch)
                check_eq(problems, fresh, f"{what}: the same problems as a freshly started daemon")
                again, _ = verify(env, watch)
                check_eq(again, fresh, f"{what}: reported again by the next Verify")
            finally:
                restore(path[layer], saved)
            check_eq(open(path[layer], "rb").read(), before, f"{what}: the test restored the file")
            check_eq(verify(env, watch)[0], [], f"{what}: consistent again once restored")

        def write_at(p, off, data):
            fd = os.open(p, os.O_WRONLY)
            try:
                os.pwrite(fd, data, off)
            finally:
                os.close(fd)

        # Content changed in place, same size: one character of the backing file name in the header.
        def rename_backing(p):
            off, name = header_backing_name(p)
            write_at(p, off, (b"f" if name[:1] != b"f" else b"e") + name[1:])
            return (off, name)
        below = names[2]
        tampered("backing file name changed in place", ids[1], rename_backing, lambda p, s: write_at(p, s[0], s[1]),
                 f"header's backing file name differs from the record (expected {below})")

        # One header bit flipped: the dirty bit of the incompatible features (qcow2 v3, bytes 72..79).
        def set_dirty(p):
            with open(p, "rb") as f:
                f.seek(79)
                b = f.read(1)
            write_at(p, 79, bytes([b[0] | 1]))
            return b
        tampered("dirty bit set", ids[2], set_dirty, lambda p, b: write_at(p, 79, b), "header is marked dirty")

        # The file replaced by rename: the same bytes under another inode.
        aside = os.path.join(env.tmp, "aside")
        copy = os.path.join(env.tmp, "copy")

        def replace(p):
            data = open(p, "rb").read()
            os.rename(p, aside)
            with open(copy, "wb") as f:
                f.write(data)
            os.chmod(copy, 0o600)
            os.rename(copy, p)

        def put_back(p, _):
            os.unlink(p)
            os.rename(aside, p)
        tampered("replaced by rename", ids[3], replace, put_back,
                 "image file is not the one recorded (type, owner, links or inode differ)")

        # Truncated: no header left to read.
        def truncate(p):
            data = open(p, "rb").read()
            os.truncate(p, 40)
            return data
        tampered("truncated", ids[4], truncate, lambda p, data: write_at(p, 0, data),
                 want_prefix="qcow2 header is invalid: ")
        check(env.canary_unchanged(), "the canary is unchanged")
        env.stop()
    finally:
        if watch:
            watch.close()
        env.close()
    finish()


if __name__ == "__main__":
    main()
