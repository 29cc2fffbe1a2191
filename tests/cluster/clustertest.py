# SPDX-License-Identifier: LGPL-2.1-or-later
"""Harness for cluster tests: N simulated hosts on one shared store.

Each host is a sanlock daemon in its test mode (SANLOCK_PRIVILEGED=0, its own SANLOCK_RUN_DIR, no
watchdog), a private dbus-daemon and a vdiskd with [Cluster] Mode=sanlock and HostId=1..N, all on one
store directory, one lockspace file and one lease area (made here with `sanlock direct init` and
`sanlock direct format`). The buses and vdiskd come from tests/integration/vdisktest.py (Env). Only
processes started here are stopped, by pid. Skips (77) when sanlock or a vdiskd built with it is missing.
"""

import grp
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))

import vdisktest  # noqa: E402
from vdisktest import SKIP, check, check_eq, finish, opts  # noqa: E402,F401

LOCKSPACE = "vdisk"


def usage_or_skip():
    """argv: VDISKD SANLOCK-BUILT(yes|no). Returns the vdiskd path, or exits 77."""
    if len(sys.argv) < 3:
        print("usage: TEST VDISKD yes|no")
        sys.exit(2)
    if sys.argv[2] != "yes":
        print("SKIP: vdiskd was built without sanlock (-Dsanlock)")
        sys.exit(SKIP)
    for tool in ("sanlock", "dbus-daemon", "qemu-img"):
        if not shutil.which(tool):
            print(f"SKIP: {tool} not installed")
            sys.exit(SKIP)
    return sys.argv[1]


class Host:
    def __init__(self, cluster, host_id):
        self.cluster = cluster
        self.host_id = host_id
        self.run_dir = os.path.join(cluster.tmp, f"sanlock-{host_id}")
        os.makedirs(self.run_dir)
        self.sanlock_log = os.path.join(cluster.tmp, f"sanlock-{host_id}.log")
        self.sanlock = None
        conf = (f"[Cluster]\nMode=sanlock\nHostId={host_id}\nLockspace={LOCKSPACE}:{cluster.lockspace}\n"
                f"Leases={cluster.leases}\nIoTimeout={cluster.io_timeout}\n")
        self.env = vdisktest.Env(cluster.vdiskd, config_extra=conf)
        self.env.store = cluster.store  # one store for all hosts

    def sanlock_env(self):
        e = dict(os.environ)
        e.update({"SANLOCK_PRIVILEGED": "0", "SANLOCK_RUN_DIR": self.run_dir})
        return e

    def start_sanlock(self):
        # The daemon chowns its lockfile and socket to -U/-G: the user running the tests (root, or the
        # user who owns run_dir; "-U root" as anyone else fails with "lockfile chown error").
        user = pwd.getpwuid(os.geteuid()).pw_name
        group = grp.getgrgid(os.getegid()).gr_name
        self.sanlock = subprocess.Popen(
            ["sanlock", "daemon", "-D", "-w", "0", "-l", "0", "-h", "0", "-U", user, "-G", group,
             "-e", f"host{self.host_id}"],
            env=self.sanlock_env(), stdout=subprocess.DEVNULL, stderr=open(self.sanlock_log, "w"))
        for _ in range(200):
            if os.path.exists(os.path.join(self.run_dir, "sanlock.sock")):
                return
            if self.sanlock.poll() is not None:
                raise RuntimeError(f"sanlock daemon of host {self.host_id} exited: {open(self.sanlock_log).read()}")
            time.sleep(0.025)
        raise RuntimeError("sanlock daemon did not start")

    def start_vdiskd(self, extra_env=None):
        e = {"SANLOCK_RUN_DIR": self.run_dir, "DBUS_SYSTEM_BUS_ADDRESS": self.env.address}
        e.update(extra_env or {})
        return self.env.start(env=e)

    # sanlock fails a lease read or write that takes longer than IoTimeout (1 s here) with an I/O error,
    # which vdiskd answers as "(sanlock failed)"; on a loaded test machine that happens now and then. Calls
    # are tried again a few times for that answer only; every other answer is the test's to judge.
    TRANSIENT = "(sanlock failed)"

    def call(self, method, *args, timeout=120):
        for attempt in range(5):
            try:
                return self.env.call(method, *args, timeout=timeout)
            except vdisktest.dbus.exceptions.DBusException as e:
                if self.TRANSIENT not in e.get_dbus_message() or attempt == 4:
                    raise
                time.sleep(0.5)

    def try_call(self, method, *args, timeout=120):
        for attempt in range(5):
            err, res = self.env.try_call(method, *args, timeout=timeout)
            if not err or self.TRANSIENT not in str(res) or attempt == 4:
                return err, res
            time.sleep(0.5)

    def chain(self, vm, disk="vda"):
        """The layer ids of a disk's chain, top first."""
        return [str(x[0]) for x in self.call("GetChain", vm, disk)]

    def guest_hash(self, vm, disk="vda"):
        """sha256 of what the guest sees (qemu-img follows the sibling names vdisk writes into headers)."""
        top = self.call("GetChain", vm, disk)[0]
        out = os.path.join(self.cluster.tmp, "guest.raw")
        subprocess.run(["qemu-img", "convert", "-f", str(top[2]), "-O", "raw", os.path.join(self.cluster.store, str(top[1])), out],
                       check=True, capture_output=True)
        with open(out, "rb") as f:
            h = hashlib.sha256(f.read()).hexdigest()
        os.unlink(out)
        return h

    def write(self, vm, pattern, offset, length=1 << 20, disk="vda"):
        """Guest data written straight into the disk's top layer (the VM is not running)."""
        top = self.call("GetChain", vm, disk)[0]
        subprocess.run(["qemu-io", "-f", str(top[2]), "-c", f"write -P {pattern} {offset} {length}",
                        os.path.join(self.cluster.store, str(top[1]))], check=True, capture_output=True)

    def wait_joined(self, timeout=60):
        """Until a call no longer answers NotJoined (GetChain of a VM that does not exist: NotFound)."""
        end = time.time() + timeout
        while time.time() < end:
            err, _ = self.try_call("GetChain", "no-such-vm", "vda")
            if err != "org.vdisk1.Error.NotJoined":
                return err
            time.sleep(0.1)
        raise RuntimeError(f"host {self.host_id} did not join the lockspace")

    def close(self):
        try:
            self.env.close()
        finally:
            if self.sanlock and self.sanlock.poll() is None:
                subprocess.run(["sanlock", "client", "shutdown", "-f", "1"], env=self.sanlock_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
                try:
                    self.sanlock.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.sanlock.send_signal(signal.SIGKILL)
                    self.sanlock.wait()


class Cluster:
    def __init__(self, vdiskd, n, io_timeout=1, start=True):
        self.vdiskd = vdiskd
        self.io_timeout = io_timeout
        self.tmp = tempfile.mkdtemp(prefix="vdisk-cluster-")
        os.chmod(self.tmp, 0o755)
        self.store = os.path.join(self.tmp, "store")
        shared = os.path.join(self.tmp, "shared")
        os.makedirs(shared)
        self.lockspace = os.path.join(shared, "lockspace")
        self.leases = os.path.join(shared, "leases")
        for p in (self.lockspace, self.leases):
            open(p, "wb").close()
        # What an administrator does once per store (vdiskd.conf(5)).
        subprocess.run(["sanlock", "direct", "init", "-s", f"{LOCKSPACE}:0:{self.lockspace}:0", "-o", str(io_timeout), "-Z", "512", "-A", "1M"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["sanlock", "direct", "format", "-x", f"{LOCKSPACE}:{self.leases}:0", "-Z", "512", "-A", "1M"],
                       check=True, stdout=subprocess.DEVNULL)
        self.hosts = []
        try:
            for i in range(1, n + 1):
                h = Host(self, i)
                self.hosts.append(h)
                h.start_sanlock()
            if start:
                for h in self.hosts:
                    h.start_vdiskd()
                for h in self.hosts:
                    h.wait_joined()
        except BaseException:
            self.close()
            raise

    def store_files(self):
        out = set()
        for d in ("images", "records", "journal"):
            p = os.path.join(self.store, d)
            if os.path.isdir(p):
                out |= {f"{d}/{n}" for n in os.listdir(p)}
        return out

    def snapshot_store(self):
        """Every file of the store and the hash of its bytes. A file that goes between the listing and its
        reading (a host's vdiskd working meanwhile) is left out: the snapshot is then not equal to a
        quiet store's, and a caller waiting for one tries again."""
        out = {}
        for rel in sorted(self.store_files()):
            try:
                with open(os.path.join(self.store, rel), "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            except FileNotFoundError:
                continue
        return out

    def orphans(self):
        """Image files no layer record names, records of layers no VM or catalog uses, journal entries."""
        import json
        files = self.store_files()
        layers = {}
        for f in files:
            if f.startswith("records/layer-"):
                with open(os.path.join(self.store, f)) as fh:
                    rec = json.load(fh)
                layers[f[len("records/layer-"):-len(".json")]] = rec
        used = set()
        for f in files:
            if f.startswith("records/vm-"):
                with open(os.path.join(self.store, f)) as fh:
                    vm = json.load(fh)
                for d in vm.get("disks", []):
                    used |= set(d.get("chain", []))
        bad = [f for f in files if f.startswith("journal/")]
        for f in files:
            if f.startswith("images/"):
                stem = f[len("images/"):].split(".")[0]
                if stem not in layers:
                    bad.append(f)
        for lid, rec in layers.items():
            if lid not in used and not rec.get("catalog-name") and not rec.get("catalog_name"):
                bad.append(f"records/layer-{lid}.json (no disk uses it)")
        return sorted(bad)

    def check_clean(self, vms):
        """The end of a test: every VM of `vms` verifies clean on every host, the store holds no orphan,
        and no host's vdiskd reported a sanitizer error."""
        for h in self.hosts:
            for vm in vms:
                vdisktest.check_eq(list(h.call("Verify", vm)), [], f"Verify of {vm} on host {h.host_id} is clean")
        vdisktest.check_eq(self.orphans(), [], "no orphan files, records or journal entries")
        for h in self.hosts:
            h.env.check_sanitizers()

    def dump_logs(self):
        for h in self.hosts:
            print(f"---- host {h.host_id}: vdiskd log (tail) ----")
            print(h.env.log_text()[-4000:])
            try:
                print(f"---- host {h.host_id}: sanlock log (tail) ----")
                print(open(h.sanlock_log).read()[-4000:])
            except OSError:
                pass

    def close(self):
        if vdisktest.failures or sys.exc_info()[0] is not None:
            self.dump_logs()
        for h in self.hosts:
            try:
                h.close()
            except Exception as e:  # go on stopping the others
                print(f"closing host {h.host_id}: {e}")
        shutil.rmtree(self.tmp, ignore_errors=True)
