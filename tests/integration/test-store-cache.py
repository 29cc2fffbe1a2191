# SPDX-License-Identifier: LGPL-2.1-or-later
"""The start-up cache of the records (STORE/records.cache, docs/design.md "Start-up", issue 19 B7 start).

A clean stop copies the records into one file; the next start uses a copy only while its record file is
the one it was copied from (device, inode, size, mtime, ctime). Proven here:
- a start from the cache lists exactly what a start from the files lists, and the log says the cache
  was used;
- a cached record edited in place with its size and mtime kept (only its ctime tells) is read from its
  file: a corrupt one refuses the start with the same message naming it, changing nothing; a valid one
  is what the daemon then shows;
- a newer schema written into a cached record in place refuses the start as without the cache;
- a cached record removed, or replaced by rename, while vdiskd was stopped: the files win;
- a torn cache or a copy whose bytes changed: the files are read instead, everything is listed;
- a record changed less than the margin (2 s) before the stop is not copied."""

import json
import os
import re
import subprocess
import sys
import time

import dbus

from vdisktest import BUS_NAME, Env, check, check_eq, finish, opts

GiB = 1 << 30
MARGIN = 2.2  # RECORD_CACHE_MARGIN_SEC (store.c) and a little


def plain(x):
    if isinstance(x, (list, tuple, dbus.Array, dbus.Struct)):
        return tuple(plain(y) for y in x)
    if isinstance(x, dbus.Dictionary):
        return tuple(sorted((str(k), plain(v)) for k, v in x.items()))
    if isinstance(x, (dbus.String, dbus.ObjectPath)):
        return str(x)
    if isinstance(x, dbus.Boolean):
        return bool(x)
    if isinstance(x, (int, dbus.UInt32, dbus.UInt64, dbus.Int32, dbus.Int64)):
        return int(x)
    return x


def state(env):
    out = {"vms": sorted(plain(v) for v in env.call("ListVMs")),
           "images": sorted(plain(i) for i in env.call("ListImages"))}
    for vm in ("vm1", "vm2"):
        if any(v[0] == vm for v in out["vms"]):
            out[vm] = plain(env.call("GetChain", vm, "d"))
    return out


def cache_names(env):
    """The record names the cache holds copies of (parsing its lines as store.c writes them)."""
    names = []
    with open(os.path.join(env.store, "records.cache"), "rb") as f:
        data = f.read()
    check(data.startswith(b"vdisk-record-cache 1\n"), "the cache starts with its magic line")
    pos = len(b"vdisk-record-cache 1\n")
    while pos < len(data):
        nl = data.index(b"\n", pos)
        fields = data[pos:nl].split(b" ")
        names.append(fields[0].decode())
        pos = nl + 1 + int(fields[3]) + 1
    return names


def started_from_cache(env, log_len):
    m = re.search(r"Loaded (\d+) records, (\d+) of them from the start-up cache", env.log_text()[log_len:])
    return (int(m.group(1)), int(m.group(2))) if m else None


def stop_cached(env):
    """Stops vdiskd once every record is older than the margin: all of them get copied."""
    time.sleep(MARGIN)
    env.stop()


def edit_in_place(path, old, new):
    """Same size, same mtime: only the ctime (and the content) changes."""
    assert len(old) == len(new)
    st = os.stat(path)
    data = open(path, "rb").read()
    check(old in data, f"{os.path.basename(path)} holds {old!r}")
    with open(path, "r+b") as f:
        f.write(data.replace(old, new, 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(path)
    check(st2.st_ino == st.st_ino and st2.st_size == st.st_size and st2.st_mtime_ns == st.st_mtime_ns,
          f"{os.path.basename(path)}: inode, size and mtime kept")
    return data


def main():
    env = Env(sys.argv[1])
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(GiB), opts())
        for vm in ("vm1", "vm2"):
            env.call("CreateVM", vm, dbus.UInt32(0), opts())
            env.call("CreateDisk", vm, "d", "base", dbus.UInt64(0), opts())
        top1 = str(env.call("GetChain", "vm1", "d")[0][0])
        before = state(env)
        records = sorted(os.listdir(os.path.join(env.store, "records")))
        check_eq(len(records), 5, "five records: two VMs, two overlays, the catalog image")

        # A start from the cache: everything from it, the same answers.
        stop_cached(env)
        check_eq(sorted(cache_names(env)), records, "a clean stop copied every record")
        store_before = env.snapshot_store()
        log_len = len(env.log_text())
        env.start()
        check_eq(started_from_cache(env, log_len), (5, 5), "the start read all five records from the cache")
        check_eq(state(env), before, "a start from the cache lists the same VMs, images and chains")
        check_eq(list(env.call("Verify", "vm1")), [], "Verify clean after a start from the cache")
        check_eq(env.snapshot_store(), store_before, "a start from the cache changed no store file")

        def refuses(label, rel, old, new, pattern):
            """A cached record edited in place (size and mtime kept): the start reads the file and refuses."""
            stop_cached(env)
            check(os.path.basename(rel) in cache_names(env), f"{label}: the record is in the cache")
            path = os.path.join(env.store, rel)
            original = edit_in_place(path, old, new)
            store_before = env.snapshot_store()
            log_len = len(env.log_text())
            proc = env.start(expect_ready=False)
            try:
                rc = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = None
            check(rc is not None and rc != 0, f"{label}: vdiskd exits non-zero ({rc})")
            log = env.log_text()[log_len:]
            check(re.search(pattern, log) is not None, f"{label}: the log says why ({log.strip()!r})")
            check(f"records/{os.path.basename(rel)}" in log, f"{label}: the log names the record")
            check(not env.bus.name_has_owner(BUS_NAME), f"{label}: the bus name is not taken")
            check_eq(env.snapshot_store(), store_before, f"{label}: the refused start changed nothing")
            with open(path, "wb") as f:
                f.write(original)
            log_len = len(env.log_text())
            env.start()
            check_eq(started_from_cache(env, log_len), (5, 4), f"{label}: repaired, the file is read, the rest cached")
            check_eq(state(env), before, f"{label}: repaired, everything is listed again")

        # vm-vm1.json naming another VM (same length): the name check fails, as without the cache.
        refuses("vm record renamed inside", "records/vm-vm1.json", b'"vm1"', b'"vm3"',
                r"records/vm-vm1\.json is malformed; refusing to start")
        lrec = f"records/layer-{top1}.json"
        refuses("layer record with an unknown format", lrec, b'"qcow2"', b'"qcowX"',
                r"is malformed; refusing to start")
        refuses("layer record that is no longer JSON", lrec, b"{", b"[",
                r"cannot be read: it is not one complete JSON object; refusing to start")
        refuses("vm record with a newer schema", "records/vm-vm2.json", b'"schema":1', b'"schema":9',
                r"has a newer schema than this vdiskd understands")

        # A valid change in place that only the ctime tells: the daemon shows the file's owner.
        stop_cached(env)
        path = os.path.join(env.store, "records/vm-vm2.json")
        edit_in_place(path, b'"owner_uid":0', b'"owner_uid":7')
        log_len = len(env.log_text())
        env.start()
        check_eq(started_from_cache(env, log_len), (5, 4), "owner changed in place: that record read from its file")
        owners = {str(v[0]): int(v[1]) for v in env.call("ListVMs")}
        check_eq(owners.get("vm2"), 7, "owner changed in place: ListVMs shows the file's owner, not the copy's")

        # A cached record replaced by rename (new inode) while stopped: the file wins.
        stop_cached(env)
        o = json.load(open(path))
        o["owner_uid"] = 8
        with open(path + ".new", "w") as f:
            json.dump(o, f)
        os.rename(path + ".new", path)
        env.start()
        owners = {str(v[0]): int(v[1]) for v in env.call("ListVMs")}
        check_eq(owners.get("vm2"), 8, "record replaced by rename: ListVMs shows the new file's owner")
        o["owner_uid"] = 0
        with open(path + ".new", "w") as f:
            json.dump(o, f)
        os.rename(path + ".new", path)
        env.restart()
        check_eq(state(env), before, "record put back: everything as before")

        # A cached VM record removed while stopped: the VM is gone, its overlay swept as an orphan.
        stop_cached(env)
        top2 = str(before["vm2"][0][0])
        check("vm-vm2.json" in cache_names(env), "the removed record is in the cache")
        os.unlink(path)
        log_len = len(env.log_text())
        env.start()
        check_eq([str(v[0]) for v in env.call("ListVMs")], ["vm1"], "record removed: only vm1 is listed")
        check(f"Removing orphaned layer {top2}" in env.log_text()[log_len:], "record removed: its overlay is swept")
        check(not os.path.exists(os.path.join(env.store, f"records/layer-{top2}.json")),
              "record removed: the overlay's record is gone")
        before = state(env)
        records = sorted(os.listdir(os.path.join(env.store, "records")))

        # A torn cache, and a copy whose bytes changed (its hash no longer matches): the files decide.
        stop_cached(env)
        cache = os.path.join(env.store, "records.cache")
        data = open(cache, "rb").read()
        with open(cache, "wb") as f:
            f.write(data[:len(data) // 2])
        log_len = len(env.log_text())
        env.start()
        n, cached = started_from_cache(env, log_len)
        check(n == len(records) and cached < n, f"torn cache: {cached} of {n} records from it, the rest from files")
        check_eq(state(env), before, "torn cache: everything listed")
        stop_cached(env)
        data = open(cache, "rb").read()
        i = data.index(b'"schema"')
        with open(cache, "wb") as f:
            f.write(data[:i] + b'"schemb"' + data[i + 8:])
        log_len = len(env.log_text())
        env.start()
        check_eq(started_from_cache(env, log_len), (len(records), len(records) - 1),
                 "a copy with changed bytes: that record read from its file")
        check_eq(state(env), before, "a copy with changed bytes: everything listed")

        # A record changed just before the stop is not copied (its ctime could not tell a later change).
        time.sleep(MARGIN)
        env.call("CreateVM", "vm9", dbus.UInt32(0), opts())
        env.stop()
        names = cache_names(env)
        check("vm-vm9.json" not in names and "vm-vm1.json" in names,
              "a record written less than 2 s before the stop is left out, older ones are copied")
        log_len = len(env.log_text())
        env.start()
        check_eq(started_from_cache(env, log_len), (len(records) + 1, len(records)),
                 "the new record read from its file, the others from the cache")
        check("vm9" in [str(v[0]) for v in env.call("ListVMs")], "the new VM is listed")
    finally:
        env.close()
    finish()


main()
