#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl libvirt start/stop against a real libvirtd + virtlogd that this test starts itself.

libvirtd runs as root in a private mount namespace (unshare -m) where /etc/libvirt, /run, /var/lib,
/var/cache, /var/log and the user database are the test's own directories and files: it sees neither
the host's libvirt state nor the host's system bus, and the host sees nothing of it. A TCG domain that
sits in firmware runs on two vdisk disks (a three-layer qcow2 chain and a blank qcow2).

Checks: the domain runs on the fds (QEMU's command line names /dev/fdset only, query-named-block-nodes
shows /dev/fdset nodes only, read-write exactly for the top layers, QEMU's fds of backing layers are
O_RDONLY); the store's files keep owner, mode and inode; while it runs the disks are leased (OpenDisk
is InUse, a second domain on the same disk is refused with InUse, starting the running domain again
is refused); "virsh destroy" ends the leases at once and vdiskd re-checks the headers then (a header
changed behind vdiskd's back quarantines the disk: Corrupt, and Verify names it); SIGKILL of the holder
destroys the domain before the leases end (at no time is a lease free while QEMU still runs);
"vdiskctl libvirt stop" stops the domain and returns once the leases are released; a domain XML naming
a missing disk is refused with NotFound and defines nothing.

Usage: test-libvirt.py VDISKD (VDISKCTL in the environment). Exits 77 when libvirtd, virtlogd, virsh or
qemu-system-x86_64 is not installed. As another user than root, the same checks with libvirtd's session
instance (qemu:///session) instead: its state in the test's directories (XDG_*), QEMU as that user."""

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

from vdisktest import SKIP, Env, check, check_eq, failures, opts

MiB = 1 << 20
VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
INUSE = "org.vdisk1.Error.InUse"
QEMU = "/usr/bin/qemu-system-x86_64"

for tool in ("/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "/usr/bin/virsh", QEMU, "/usr/bin/unshare"):
    if not os.path.exists(tool):
        print(f"SKIP: {tool} not installed (Debian: libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients "
              "qemu-system-x86)")
        sys.exit(SKIP)
# As root: the system instance (qemu:///system) in a private mount namespace. As another user: libvirtd's
# session mode (qemu:///session), which keeps all its state under the XDG_* directories given to it (the
# test's own) and runs QEMU as that user; no namespace is needed.
SESSION = os.geteuid() != 0

LAUNCH = r"""set -e
T="$1"
mount --make-rprivate /
mount --bind "$T/etc" /etc/libvirt
mount --bind "$T/run" /run
mount --bind "$T/lib" /var/lib
mount --bind "$T/cache" /var/cache
mount --bind "$T/log" /var/log
mount --bind "$T/passwd" /etc/passwd
mount --bind "$T/group" /etc/group
/usr/sbin/virtlogd &
echo $! > "$T/virtlogd.pid"
exec /usr/sbin/libvirtd -f /etc/libvirt/libvirtd.conf
"""

LAUNCH_SESSION = r"""set -e
T="$1"
/usr/sbin/virtlogd &
echo $! > "$T/virtlogd.pid"
exec /usr/sbin/libvirtd -f "$T/etc/libvirtd.conf"
"""

# No namespace, no relabelling, no chown: vdisk hands out the fds (docs: README, libvirt).
QEMU_CONF = """namespaces = []
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
"""

LIBVIRTD_CONF = """unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
"""

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{disks}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def disk_xml(disk, dev):
    return (f"    <disk type='file' device='disk'><source vdisk='{disk}'/>"
            f"<target dev='{dev}' bus='virtio'/></disk>")


class Libvirt:
    """libvirtd + virtlogd in a private mount namespace; stopped by their pids."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "libvirt")
        for d in ("etc", "run", "lib", "cache", "log"):
            os.makedirs(os.path.join(self.dir, d))
        if SESSION:  # the session instance reads $XDG_CONFIG_HOME/libvirt/; QEMU runs as the test user
            os.makedirs(os.path.join(self.dir, "config", "libvirt"))
        with open(os.path.join(self.dir, *(("config", "libvirt") if SESSION else ("etc",)), "qemu.conf"), "w") as f:
            f.write(QEMU_CONF.replace('user = "root"\ngroup = "root"\n', "") if SESSION else QEMU_CONF)
        with open(os.path.join(self.dir, "etc", "libvirtd.conf"), "w") as f:
            f.write(LIBVIRTD_CONF)
        # libvirt's QEMU driver looks up its compiled-in user even when qemu.conf names root: it exists
        # in the namespace's copy of the user database only.
        for name, line in (("passwd", "libvirt-qemu:x:64055:64055::/nonexistent:/usr/sbin/nologin\n"),
                           ("group", "libvirt-qemu:x:64055:\n")):
            with open(f"/etc/{name}") as src, open(os.path.join(self.dir, name), "w") as dst:
                text = src.read()
                dst.write(text if text.endswith("\n") else text + "\n")
                if not any(l.startswith("libvirt-qemu:") for l in text.splitlines()):
                    dst.write(line)
        with open(os.path.join(self.dir, "launch.sh"), "w") as f:
            f.write(LAUNCH_SESSION if SESSION else LAUNCH)
        self.socket = os.path.join(self.dir, "run", "libvirt", "libvirt-sock")
        self.uri = f"qemu+unix:///{'session' if SESSION else 'system'}?socket={self.socket}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
        if SESSION:
            # Everything of the session instance in the test's directories; its D-Bus connections (it
            # tries both buses) go to a socket that does not exist, never to the host's buses.
            nobus = "unix:path=" + os.path.join(self.dir, "no-bus")
            env.update({"XDG_RUNTIME_DIR": os.path.join(self.dir, "run"), "XDG_CONFIG_HOME": os.path.join(self.dir, "config"),
                        "XDG_CACHE_HOME": os.path.join(self.dir, "cache"), "XDG_DATA_HOME": os.path.join(self.dir, "lib"),
                        "HOME": self.dir, "DBUS_SYSTEM_BUS_ADDRESS": nobus, "DBUS_SESSION_BUS_ADDRESS": nobus})
        self.log = open(os.path.join(self.dir, "libvirtd.log"), "w")
        # unshare and sh exec: this pid is libvirtd's.
        self.proc = subprocess.Popen([*(() if SESSION else ("unshare", "-m")), "sh", os.path.join(self.dir, "launch.sh"), self.dir],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.virtlogd = None
        end = time.time() + 60
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("libvirtd exited: " + open(self.log.name).read()[-2000:])
            if os.path.exists(self.socket) and self.virsh("version").returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("libvirtd did not start")
        self.virtlogd = int(open(os.path.join(self.dir, "virtlogd.pid")).read())

    def virsh(self, *args):
        return subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if not k.startswith("DBUS_")})

    def state(self, name):
        p = self.virsh("domstate", name)
        return p.stdout.strip() if p.returncode == 0 else None

    def qemu_state_dir(self):
        return os.path.join(self.dir, "run", "libvirt", "qemu", *(("run",) if SESSION else ()))

    def qemu_pid(self, name):
        try:
            return int(open(os.path.join(self.qemu_state_dir(), name + ".pid")).read())
        except (OSError, ValueError):
            return None

    def close(self):
        for name in os.listdir(self.qemu_state_dir()) if os.path.isdir(self.qemu_state_dir()) else []:
            if name.endswith(".pid"):
                kill_pid(self.qemu_pid(name[:-4]))
        kill_pid(self.proc.pid, wait=self.proc)
        kill_pid(self.virtlogd)
        self.log.close()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_pid(pid, wait=None):
    if not pid or not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    end = time.time() + 15
    while time.time() < end and pid_alive(pid):
        time.sleep(0.1)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    if wait:
        wait.wait(timeout=15)


def wait_for(cond, timeout=30, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return False


def vdiskctl(*args):
    # The holder keeps no pipe of ours: run() returns as soon as the domain runs.
    return subprocess.run([VDISKCTL, *args], capture_output=True, text=True, timeout=180)


def store_stat(env):
    out = {}
    for rel in sorted(env.store_files()):
        if rel.startswith("images/"):
            st = os.stat(os.path.join(env.store, rel))
            out[rel] = (st.st_uid, st.st_gid, st.st_mode, st.st_ino, st.st_dev)
    return out


def open_rw(env, disk):
    """A read-write OpenDisk, released again at once: (None, None) if it succeeded, else (error, message)."""
    import dbus
    err, res = env.try_call("OpenDisk", "vm1", disk, opts())
    if err:
        return err, str(res)
    lease = env.bus.get_object("org.vdisk1", res[0], introspect=False)
    dbus.Interface(lease, "org.vdisk1.Lease").Release()
    for fd in res[2]:
        os.close(fd.take())
    return None, None


def lease_free(env, disk):
    return open_rw(env, disk) == (None, None)


def main():
    # meson's timeout sends SIGTERM: clean up (QEMU, libvirtd, virtlogd, vdiskd) on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("SIGTERM"))
    env = Env(sys.argv[1])
    lv = None
    try:
        env.start()
        for call in (("CreateVM", "vm1", 0, opts()), ("CreateImage", "base", "qcow2", 16 * MiB, opts()),
                     ("CreateDisk", "vm1", "root", "base", 0, opts()), ("Snapshot", "vm1", "root", opts()),
                     ("CreateDisk", "vm1", "scratch", "", 8 * MiB, opts())):
            err, res = env.try_call(*call)
            if err:
                raise RuntimeError(f"{call[0]}: {err} {res}")
        chain = env.try_call("GetChain", "vm1", "root")[1]
        check_eq(len(chain), 3, "disk root is a chain of three layers")
        before = store_stat(env)

        t0 = time.time()
        lv = Libvirt(env.tmp)
        print(f"private libvirtd up in {time.time() - t0:.1f} s")

        xml1 = os.path.join(env.tmp, "d1.xml")
        with open(xml1, "w") as f:
            f.write(DOMAIN.format(name="d1", disks=disk_xml("root", "vda") + "\n" + disk_xml("scratch", "vdb")))

        # ---- start ----
        t0 = time.time()
        p = vdiskctl("libvirt", "start", "vm1", "--domain", xml1, "--connect", lv.uri, "--json=short")
        print(f"libvirt start took {time.time() - t0:.1f} s")
        if not check_eq(p.returncode, 0, f"libvirt start succeeds ({p.stderr.strip()})"):
            print(open(lv.log.name).read()[-3000:])
            return
        info = json.loads(p.stdout)
        holder, guardian = info["holder"], info["guardian"]
        check(pid_alive(holder) and pid_alive(guardian), "the holder and its guardian run")
        check_eq(lv.state("d1"), "running", "domain d1 runs")
        qemu = lv.qemu_pid("d1")
        check(qemu is not None and pid_alive(qemu), "QEMU of d1 runs")

        # QEMU's command line: fd sets only, no path of the store.
        cmdline = open(f"/proc/{qemu}/cmdline", "rb").read().split(b"\0")
        text = b" ".join(cmdline).decode()
        check(env.store not in text and "/vdisk/" not in text, "QEMU's command line names no file of the store")
        blockdevs = [json.loads(cmdline[i + 1]) for i, a in enumerate(cmdline) if a == b"-blockdev"]
        files = [b.get("filename") for b in blockdevs if b.get("driver") == "file"]
        check_eq(len(files), 4, "four file nodes (three layers of root, one of scratch)")
        check(files and all(f.startswith("/dev/fdset/") for f in files), f"every file node is an fd set: {files}")
        check_eq(cmdline.count(b"-add-fd"), 4, "four -add-fd")

        # The monitor's view: /dev/fdset nodes only; read-write exactly the two top layers.
        p = lv.virsh("qemu-monitor-command", "d1", '{"execute":"query-named-block-nodes"}')
        check_eq(p.returncode, 0, "query-named-block-nodes")
        nodes = json.loads(p.stdout)["return"] if p.returncode == 0 else []
        # A format node with a backing chain is named by the json: of its chain; every file in it must
        # be an fd set too. A node's own file is its protocol node's (the outermost "file").
        def filenames(o):
            if isinstance(o, dict):
                return [v for k, v in o.items() if k == "filename"] + [f for v in o.values() for f in filenames(v)]
            return []

        def own_file(n):
            if n["file"].startswith("json:"):
                return json.loads(n["file"][5:])["file"]["filename"]
            return n["file"]

        all_files = [f for n in nodes for f in (filenames(json.loads(n["file"][5:])) if n["file"].startswith("json:")
                                                else [n["file"]])]
        check(nodes and all(f.startswith("/dev/fdset/") for f in all_files),
              f"every block node is an fd set: {sorted(set(all_files))}")
        rw_files = {own_file(n) for n in nodes if not n["ro"]}
        ro_files = {own_file(n) for n in nodes if n["ro"]}
        check_eq((len(rw_files), len(ro_files)), (2, 2), "two layers read-write (the tops), two read-only")
        check(not (rw_files & ro_files), "no layer is both read-write and read-only")

        # QEMU's own fds of the store's files: tops O_RDWR, backing layers O_RDONLY.
        modes = {}
        for fd in os.listdir(f"/proc/{qemu}/fd"):
            try:
                target = os.readlink(f"/proc/{qemu}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(os.path.join(env.store, "images") + "/"):
                flags = int(open(f"/proc/{qemu}/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
                modes.setdefault(os.path.relpath(target, env.store), set()).add(flags & 3)
        root_chain = [c[1] for c in chain]
        scratch_top = env.try_call("GetChain", "vm1", "scratch")[1][0][1]
        want = {root_chain[0]: {os.O_RDWR}, root_chain[1]: {os.O_RDONLY}, root_chain[2]: {os.O_RDONLY},
                scratch_top: {os.O_RDWR}}
        check_eq(modes, {str(k): v for k, v in want.items()}, "QEMU holds the tops read-write, the backing read-only")

        check_eq(store_stat(env), before, "the store's files keep owner, mode and inode")
        check(not [f for f in os.listdir(os.path.join(lv.dir, "run", "libvirt", "qemu")) if "vdisk" in f],
              "libvirt created nothing for the disks")

        # ---- refusals while d1 runs ----
        err, _ = env.try_call("OpenDisk", "vm1", "root", opts())
        check_eq(err, INUSE, "root is leased while d1 runs")

        xml2 = os.path.join(env.tmp, "d2.xml")
        with open(xml2, "w") as f:
            f.write(DOMAIN.format(name="d2", disks=disk_xml("root", "vda")))
        p = vdiskctl("libvirt", "start", "vm1", "--domain", xml2, "--connect", lv.uri)
        check_eq(p.returncode, 3, "a second domain on root is refused (exit 3)")
        check(INUSE in p.stderr and "Failed to open disk 'root' of VM 'vm1'" in p.stderr,
              f"... naming InUse: {p.stderr.strip()}")
        check(lv.state("d2") is None, "... and d2 is not defined")

        p = vdiskctl("libvirt", "start", "vm1", "--domain", xml1, "--connect", lv.uri)
        check_eq(p.returncode, 3, "starting the running d1 again is refused (exit 3)")
        check("Domain 'd1' is already running." in p.stderr, f"... saying so: {p.stderr.strip()}")
        check_eq(lv.state("d1"), "running", "... and d1 still runs")
        check(pid_alive(holder), "... and its holder too")

        xml3 = os.path.join(env.tmp, "d3.xml")
        with open(xml3, "w") as f:
            f.write(DOMAIN.format(name="d3", disks=disk_xml("nosuch", "vda")))
        p = vdiskctl("libvirt", "start", "vm1", "--domain", xml3, "--connect", lv.uri)
        check_eq(p.returncode, 3, "a domain XML naming a missing disk is refused (exit 3)")
        check("org.vdisk1.Error.NotFound" in p.stderr and "'nosuch'" in p.stderr, f"... NotFound: {p.stderr.strip()}")
        check(lv.state("d3") is None, "... and d3 is not defined")

        # ---- virsh destroy: the leases end, vdiskd re-checks the headers right then ----
        # A change to scratch's header behind vdiskd's back (its virtual size, through QEMU's fd): the
        # check after the lease must catch it.
        scratch_file = os.path.join(env.store, scratch_top)
        for fd in os.listdir(f"/proc/{qemu}/fd"):
            try:
                if os.readlink(f"/proc/{qemu}/fd/{fd}") == scratch_file:
                    with open(f"/proc/{qemu}/fd/{fd}", "r+b") as f:
                        f.seek(24)
                        f.write(struct.pack(">Q", 4 * MiB))
                    break
            except OSError:
                continue
        t0 = time.time()
        p = lv.virsh("destroy", "d1")
        check_eq(p.returncode, 0, "virsh destroy d1")
        check(wait_for(lambda: not pid_alive(holder), 30), "the holder exits after the domain stopped")
        print(f"leases released {time.time() - t0:.2f} s after virsh destroy")
        check(lease_free(env, "root"), "root's lease ended: OpenDisk read-write succeeds")
        err, msg = env.try_call("OpenDisk", "vm1", "scratch", opts())
        check_eq(err, "org.vdisk1.Error.Corrupt", f"scratch was re-checked at the release and quarantined ({msg})")
        problems = env.try_call("Verify", "vm1")[1]
        check(any(str(pr[0]) == "scratch" for pr in problems), f"Verify names scratch: {[tuple(map(str, x)) for x in problems]}")
        check(wait_for(lambda: not pid_alive(guardian), 10), "the guardian exits too")

        # ---- SIGKILL of the holder: the domain goes before the leases do ----
        xml4 = os.path.join(env.tmp, "d4.xml")
        with open(xml4, "w") as f:
            f.write(DOMAIN.format(name="d4", disks=disk_xml("root", "vda")))
        p = vdiskctl("libvirt", "start", "vm1", "--domain", xml4, "--connect", lv.uri, "--json")
        check_eq(p.returncode, 0, f"d4 starts on root ({p.stderr.strip()})")
        info = json.loads(p.stdout) if p.returncode == 0 else {"holder": 0, "guardian": 0}
        qemu = lv.qemu_pid("d4")
        check(qemu is not None and pid_alive(qemu), "QEMU of d4 runs")
        os.kill(info["holder"], signal.SIGKILL)
        # vdiskd answers OpenDisk with "open read-write by" while the lease exists, with "locked by
        # another process" once the lease is gone but QEMU still holds its image locks: that second
        # answer would be a domain running on a released lease.
        t0 = time.time()
        answers = set()
        freed = False
        while time.time() - t0 < 60:
            err, msg = open_rw(env, "root")
            if err is None:
                freed = True
                break
            answers.add("lease" if "is open read-write by" in msg else "locked" if "locked by another" in msg else msg)
            time.sleep(0.005)
        check(freed, "after SIGKILL of the holder the lease ends")
        print(f"lease free {time.time() - t0:.2f} s after SIGKILL of the holder")
        check("locked" not in answers and not pid_alive(qemu),
              f"QEMU was gone before the lease ended (vdiskd's answers meanwhile: {sorted(answers)})")
        state = lv.state("d4")
        check_eq(state, "shut off", "d4 is shut off")
        check(wait_for(lambda: not pid_alive(info["guardian"]), 10), "the guardian exits")

        # ---- vdiskctl libvirt stop ----
        p = vdiskctl("libvirt", "start", "vm1", "--domain", xml4, "--connect", lv.uri, "--json")
        check_eq(p.returncode, 0, f"d4 starts again on root ({p.stderr.strip()})")
        info = json.loads(p.stdout) if p.returncode == 0 else {"holder": 0}
        p = vdiskctl("libvirt", "stop", "d4", "--connect", lv.uri)
        check_eq(p.returncode, 0, f"libvirt stop d4 ({p.stderr.strip()})")
        check(not pid_alive(info["holder"]), "libvirt stop returns once the holder has gone")
        check(lease_free(env, "root"), "... and the lease has ended")
        check_eq(lv.state("d4"), "shut off", "d4 is shut off")
        p = vdiskctl("libvirt", "stop", "d4", "--connect", lv.uri)
        check_eq((p.returncode, p.stderr.strip()), (3, "Domain 'd4' is not running."), "stop of a stopped domain")

        check_eq({k: v for k, v in store_stat(env).items() if k in before}, before,
                 "after all this the store's files keep owner, mode and inode")
    finally:
        if lv:
            lv.close()
        env.close()


main()
if failures:
    print(f"{len(failures)} check(s) failed:")
    for f in failures:
        print("  " + f)
    sys.exit(1)
print("all checks passed")
