# SPDX-License-Identifier: LGPL-2.1-or-later
"""Harness for integration tests: a private dbus-daemon (own config, own socket) and the real vdiskd
on a temporary store. Never touches the host's system bus; stops only the processes it started."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import dbus

BUS_NAME = "org.vdisk1"
PATH = "/org/vdisk1"
IFACE = "org.vdisk1.Manager"
SKIP = 77

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <limit name="max_message_unix_fds">16</limit>
  <limit name="max_incoming_unix_fds">64</limit>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
    <allow receive_type="*"/>
  </policy>
</busconfig>
"""

# In-signatures of org.vdisk1.Manager (docs/dbus-api.md).
SIGNATURES = {
    "CreateImage": "ssta{sv}", "ImportImage": "ssha{sv}", "DeleteImage": "s", "ListImages": "",
    "CreateVM": "sua{sv}", "DeleteVM": "s", "ListVMs": "", "CreateDisk": "sssta{sv}", "DeleteDisk": "ss",
    "ListDisks": "s",
    "GetChain": "ss", "Snapshot": "ssa{sv}", "Rebase": "sssa{sv}", "Commit": "sssa{sv}", "OpenDisk": "ssa{sv}",
    "Verify": "s", "GetDomainXML": "ss", "AdoptDomainXML": "ssa{sv}", "Inspect": "hs", "ListJobs": "",
}

failures = []


def check(cond, what):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}")
        failures.append(what)
    return cond


def check_eq(got, want, what):
    ok = got == want
    check(ok, what if ok else f"{what}: got {got!r}, want {want!r}")
    return ok


def finish():
    if failures:
        print(f"{len(failures)} check(s) failed:")
        for f in failures:
            print("  " + f)
        sys.exit(1)
    print("all checks passed")
    sys.exit(0)


def require(*tools):
    for t in tools:
        if not shutil.which(t):
            print(f"SKIP: {t} not installed")
            sys.exit(SKIP)


# Whether the tests run as root. As another user, the vdiskd they start runs as that user too, and only
# uid 0 is an administrator by itself: Env makes the test user's group vdiskd's AdminGroup=. What only
# root can do (calls as other uids with setpriv, AdoptDomainXML, an unsafe Rebase, helpers under other
# uids) is then left out of the test, which says so (root_only()).
ROOT = os.geteuid() == 0


def _admin_access():
    if ROOT:
        return ""
    # vdiskd reads the supplementary groups of the caller's bus credentials: the group must be one of them.
    groups = os.getgroups()
    if not groups:
        raise RuntimeError(f"uid {os.geteuid()} has no supplementary group: vdiskd cannot make it an administrator "
                           "(run the tests as root, or as a user with a group, e.g. after 'su USER' or a login)")
    import grp
    gid = os.getegid() if os.getegid() in groups else groups[0]
    return f"[Access]\nAdminGroup={grp.getgrgid(gid).gr_name}\n"


def root_only(what):
    """True as root; otherwise says that `what` is left out (it needs root) and returns False."""
    if not ROOT:
        print(f"not as uid {os.geteuid()}: {what} (needs root)")
    return ROOT


def proc_status(pid):
    """/proc/PID/status as {key: value}."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def alive(pid):
    """Whether process `pid` runs (exists and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


class Env:
    def __init__(self, vdiskd, config_extra="", spares=False):
        require("dbus-daemon", "qemu-img")
        self.vdiskd = vdiskd
        self.tmp = tempfile.mkdtemp(prefix="vdisk-test-")
        os.chmod(self.tmp, 0o755)
        self.copies_for_others = {}  # readable_copy()
        self.socket = os.path.join(self.tmp, "bus.sock")
        self.store = os.path.join(self.tmp, "store")
        self.runtime_dir = os.path.join(self.tmp, "run")
        self.address = "unix:path=" + self.socket
        with open(os.path.join(self.tmp, "bus.conf"), "w") as f:
            f.write(BUS_CONF.format(socket=self.socket))
        self.config = os.path.join(self.tmp, "vdiskd.conf")
        with open(self.config, "w") as f:
            # Spare storage helpers (one QEMU each, a second after the start) only where a test asks for them
            # (spares=True: the built-in default; or SpareHelpers= in config_extra): elsewhere they would add
            # processes and fds to every vdiskd a test starts. A later SpareHelpers= replaces this one.
            no_spares = "" if spares or "SpareHelpers" in config_extra else "[Exports]\nSpareHelpers=0\n"
            f.write(_admin_access() + no_spares + config_extra)  # a later AdminGroup= (config_extra's) replaces it
        # A canary that crafted images may name: it must never change.
        self.canary = os.path.join(self.tmp, "canary")
        with open(self.canary, "wb") as f:
            f.write(b"canary " * 1000)
        st = os.stat(self.canary)
        self.canary_state = (st.st_size, st.st_mtime_ns, open(self.canary, "rb").read())
        self.bus_proc = subprocess.Popen(
            ["dbus-daemon", "--config-file", os.path.join(self.tmp, "bus.conf"), "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.tmp, "bus.log"), "w"))
        for _ in range(100):
            if os.path.exists(self.socket):
                break
            time.sleep(0.05)
        os.chmod(self.socket, 0o777)
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.address
        # The socket exists once bound, a moment before dbus-daemon listens on it (seen under load).
        for attempt in range(100):
            try:
                self.bus = dbus.bus.BusConnection(self.address)
                break
            except dbus.exceptions.DBusException:
                if attempt == 99:
                    raise
                time.sleep(0.05)
        self.daemon = None
        self.log = os.path.join(self.tmp, "vdiskd.log")

    # ---- daemon lifecycle ----
    def start(self, env=None, expect_ready=True):
        e = dict(os.environ)
        e.update(env or {})
        # VDISK_TEST_WRAPPER: a command that runs vdiskd, e.g. valgrind (tests/ROBUSTNESS.md); its start
        # takes longer, hence the longer wait for the bus name.
        wrapper = shlex.split(os.environ.get("VDISK_TEST_WRAPPER", ""))
        self.daemon = subprocess.Popen(wrapper + [self.vdiskd, "--store", self.store, "--config", self.config,
                                                  "--runtime-dir", self.runtime_dir],
                                       env=e, stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))
        if not expect_ready:
            return self.daemon
        for _ in range(200 * (20 if wrapper else 1)):
            # The name must be this daemon's: a stopped one's connection may still hold it for a moment
            # under load, and calls would then fail at once without reaching the new daemon.
            if self.bus.name_has_owner(BUS_NAME) and self.owner_pid() == self.daemon.pid:
                return self.daemon
            if self.daemon.poll() is not None:
                raise RuntimeError(f"vdiskd exited with {self.daemon.returncode}: {self.log_text()[-2000:]}")
            time.sleep(0.025)
        raise RuntimeError("vdiskd did not acquire its name")

    def owner_pid(self):
        try:
            dbus_iface = dbus.Interface(self.bus.get_object("org.freedesktop.DBus", "/org/freedesktop/DBus"),
                                        "org.freedesktop.DBus")
            return int(dbus_iface.GetConnectionUnixProcessID(BUS_NAME))
        except dbus.exceptions.DBusException:
            return None

    def stop(self):
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(timeout=20)
            check_eq(self.daemon.returncode, 0, "vdiskd exits cleanly on SIGTERM")
        self.check_sanitizers()
        self.wait_name_gone()

    def check_sanitizers(self):
        """Under ASan/UBSan builds the daemon reports leaks and undefined behaviour in its log."""
        text = self.log_text()
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            if marker in text:
                i = text.index(marker)
                check(False, f"vdiskd log is free of sanitizer reports: {text[max(0, i - 200):i + 1500]}")
                # Report once per log.
                with open(self.log, "a") as f:
                    f.write("\n[sanitizer report above was counted]\n")
                os.rename(self.log, self.log + ".reported")
                return

    def wait_name_gone(self):
        for _ in range(200):
            if not self.bus.name_has_owner(BUS_NAME):
                return
            time.sleep(0.025)

    def restart(self, env=None):
        self.stop()
        return self.start(env)

    def log_text(self):
        try:
            return open(self.log).read()
        except OSError:
            return ""

    def helper_pids(self):
        """The storage helpers of exports and the spare helpers (they outlive a vdiskd killed with SIGKILL), from
        their state files."""
        pids = []
        found = []
        for sub, state, key in (("exports", "state.json", "helper-pid"), ("spares", "spare.json", "pid")):
            parent = os.path.join(self.runtime_dir, sub)
            found += [(parent, d, state, key) for d in (os.listdir(parent) if os.path.isdir(parent) else [])]
        for parent, d, state, key in found:
            try:
                with open(os.path.join(parent, d, state)) as f:
                    pid = int(json.load(f)[key])
                # Only while that pid is still the helper of this lease or spare (pids are reused).
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f"\0-name\0{d}\0".encode() in f.read():
                        pids.append(pid)
            except (OSError, ValueError, KeyError):
                pass
        return pids

    def close(self):
        helpers = self.helper_pids()
        try:
            if self.daemon and self.daemon.poll() is None:
                self.daemon.send_signal(signal.SIGTERM)
                try:
                    self.daemon.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.daemon.kill()
                    self.daemon.wait()
            self.check_sanitizers()
        finally:
            for pid in helpers:  # started by the vdiskd this harness started
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self.bus.close()
            self.bus_proc.terminate()
            self.bus_proc.wait()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def readable_copy(self, path):
        """A copy of `path` (a script or a program of the checkout or the build directory) that other users
        can read and run. Tests that run something as another uid use it: the checkout may be in a directory
        only its owner can enter (a clone under /root, mode 0700). The copies are in a directory of the
        test's temporary directory (both mode 0755), which goes away with it."""
        copies = self.copies_for_others
        path = os.path.abspath(path)
        if path not in copies:
            # One directory per file: the completion script and the program have the same name.
            d = os.path.join(self.tmp, "for-other-users", str(len(copies)))
            os.makedirs(d)
            os.chmod(os.path.dirname(d), 0o755)
            os.chmod(d, 0o755)
            copies[path] = os.path.join(d, os.path.basename(path))
            shutil.copyfile(path, copies[path])
            os.chmod(copies[path], 0o755 if os.access(path, os.X_OK) else 0o644)
        return copies[path]

    def canary_unchanged(self):
        st = os.stat(self.canary)
        return (st.st_size, st.st_mtime_ns, open(self.canary, "rb").read()) == self.canary_state

    # ---- calls ----
    def manager(self):
        return dbus.Interface(self.bus.get_object(BUS_NAME, PATH, introspect=False), IFACE)

    def call(self, method, *args, timeout=120):
        return getattr(self.manager(), method)(*args, timeout=timeout)

    def error(self, method, *args):
        """Calls and returns (error name, message), or (None, result) on success."""
        try:
            return None, self.call(method, *args)
        except dbus.exceptions.DBusException as e:
            return e.get_dbus_name(), e.get_dbus_message()

    def call_as(self, user, method, *args, fds=(), groups=None):
        """Calls as another user (setpriv) in a child process; returns (error name or None, result).
        groups: supplementary gids for the child (default: none)."""
        sig = SIGNATURES[method]
        code = f"""
import dbus, json, os, sys
bus = dbus.bus.BusConnection({self.address!r})
m = dbus.Interface(bus.get_object({BUS_NAME!r}, {PATH!r}, introspect=False), {IFACE!r})
args = json.loads(sys.argv[1])
args = [dbus.types.UnixFd(int(a[3:])) if isinstance(a, str) and a.startswith("fd:") else a for a in args]
try:
    r = getattr(m, {method!r})(*args, signature={sig!r})
    print(json.dumps([None, r], default=str))
except dbus.exceptions.DBusException as e:
    print(json.dumps([e.get_dbus_name(), e.get_dbus_message()]))
"""
        argv = [*_as_user(user, groups), sys.executable, "-c", code, json.dumps(list(args))]
        p = subprocess.run(argv, capture_output=True, text=True, pass_fds=fds, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
        return tuple(json.loads(p.stdout))

    def call_object_as(self, user, path, interface, method, *args, signature="", groups=None):
        """Calls any method of any object as another user (e.g. org.freedesktop.DBus.Properties.Get on a
        job, or Job.Cancel); returns (error name or None, result) like call_as()."""
        code = f"""
import dbus, json, sys
bus = dbus.bus.BusConnection({self.address!r})
o = dbus.Interface(bus.get_object({BUS_NAME!r}, {path!r}, introspect=False), {interface!r})
try:
    r = getattr(o, {method!r})(*json.loads(sys.argv[1]), signature={signature!r})
    print(json.dumps([None, r], default=str))
except dbus.exceptions.DBusException as e:
    print(json.dumps([e.get_dbus_name(), e.get_dbus_message()]))
"""
        argv = [*_as_user(user, groups), sys.executable, "-c", code, json.dumps(list(args))]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(p.stderr)
        return tuple(json.loads(p.stdout))

    def get_property_as(self, user, name, path=PATH, interface=IFACE, groups=None):
        return self.call_object_as(user, path, "org.freedesktop.DBus.Properties", "Get", interface, name,
                                   signature="ss", groups=groups)

    def try_call(self, method, *args, timeout=120):
        """Like error(), with the method's exact in-signature (plain Python ints become 't'/'u' as the
        contract says): returns (error name or None, result or message)."""
        try:
            return None, getattr(self.manager(), method)(*args, signature=SIGNATURES[method], timeout=timeout)
        except dbus.exceptions.DBusException as e:
            return e.get_dbus_name(), e.get_dbus_message()

    def wait_job(self, path, timeout=120):
        job = self.bus.get_object(BUS_NAME, path, introspect=False)
        props = dbus.Interface(job, "org.freedesktop.DBus.Properties")
        end = time.time() + timeout
        while time.time() < end:
            state = props.Get("org.vdisk1.Job", "State")
            if state != "running":
                return (str(state), str(props.Get("org.vdisk1.Job", "ErrorName")),
                        str(props.Get("org.vdisk1.Job", "ErrorMessage")))
            time.sleep(0.02)
        raise RuntimeError("job did not finish")

    def import_file(self, name, fmt, path):
        with open(path, "rb") as f:
            err, res = self.error("ImportImage", name, fmt, dbus.types.UnixFd(f.fileno()), dbus.Dictionary({}, signature="sv"))
        if err:
            return (err, res)
        state, ename, emsg = self.wait_job(res)
        return (None if state == "done" else ename, emsg)

    # ---- store inspection ----
    def store_files(self):
        out = set()
        for d in ("images", "records", "journal"):
            p = os.path.join(self.store, d)
            if os.path.isdir(p):
                out |= {f"{d}/{n}" for n in os.listdir(p)}
        return out

    def snapshot_store(self):
        """Names and contents of everything in the store (records byte-exact, images by size+hash)."""
        import hashlib
        out = {}
        for rel in sorted(self.store_files()):
            with open(os.path.join(self.store, rel), "rb") as f:
                out[rel] = hashlib.sha256(f.read()).hexdigest()
        return out


def _as_user(user, groups):
    """setpriv's argv to run as `user` with `groups`; nothing for the test's own uid when it is not root (it
    could not switch; such a child is just another connection with the test's own credentials)."""
    if not ROOT and user == os.geteuid() and groups is None:
        return []
    return ["setpriv", f"--reuid={user}", f"--regid={user}", *_setpriv_groups(groups)]


def _setpriv_groups(groups):
    if groups is None:
        return ["--clear-groups"]
    if isinstance(groups, (int, str)):
        groups = [groups]
    return [f"--groups={','.join(str(g) for g in groups)}"]


def opts(**kw):
    d = dbus.Dictionary({}, signature="sv")
    for k, v in kw.items():
        if isinstance(v, bool):
            d[k] = dbus.Boolean(v)
        elif isinstance(v, int):
            d[k] = dbus.UInt32(v)
        else:
            d[k] = dbus.String(v)
    return d


def qemu_img(*args, cwd=None):
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, cwd=cwd)
