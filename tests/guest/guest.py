# SPDX-License-Identifier: LGPL-2.1-or-later
"""A real Linux test guest under QEMU TCG: the host's Debian kernel (/boot/vmlinuz-*), an initramfs built
here (busybox-static, the virtio modules, /init and tests/guest/guest-io.c linked statically), and a
command channel over the serial console.

    import guest
    reason = guest.unavailable()            # None, or why no guest can run here (tests exit 77)
    argv = guest.qemu_argv(["-device", "virtio-blk-pci,drive=d"])   # qemu-system-x86_64 -accel tcg ...
    with guest.Guest([VDISKCTL, "open", "vm", "d", "--", *argv]) as g:   # or just Guest(argv)
        g.start()                            # waits for the guest's shell; g.boot_seconds
        status, out = g.run("guest-io size /dev/vda", timeout=30)
        info = g.run_json("guest-io check /dev/vda 0 1M 42")          # status 0 and the last JSON line
        pid = g.spawn("guest-io writer /dev/vda --log", "/tmp/w.log") # in the background
        g.poweroff()                         # clean shutdown; returns QEMU's exit status

The console protocol: the host writes one line per command, "@@RUN <id> <base64 of the command>"; the
guest's /init runs it with sh -c (stdin /dev/null, stderr into stdout) and prints "@@BEGIN <id>@@",
the output, then a newline and "@@END <id> <status>@@". Input echo is off and the kernel logs nothing
to the console, so only the guest's own lines appear. Commands must be text of at most 3000 bytes.

The initramfs and guest-io are cached in the cache directory (VDISK_GUEST_CACHE, else
build/tests/guest next to this file's checkout, else a temporary one) under a name that hashes every
input, so a change of the kernel, busybox, a module, guest-io.c or this file rebuilds them.

Also the host side of guest-io's data layouts: pattern(), counter_block(), fnv1a64()."""

import base64
import codecs
import hashlib
import json
import lzma
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_IO_C = os.path.join(HERE, "guest-io.c")
QEMU = "qemu-system-x86_64"
BUSYBOX_CANDIDATES = ["/bin/busybox", "/usr/bin/busybox"]
# The modules the guest loads (with what modules.dep says they need), unless built in.
MODULES = ["virtio_pci", "virtio_blk"]
# Quiet and fast under TCG: no console logging, no KASLR/mitigations, no i8042 or TSC probing, no
# crypto self-tests, no read-only kernel data (and its W+X check); a panic exits QEMU (with -no-reboot) instead of hanging.
KERNEL_APPEND = ("console=ttyS0 quiet loglevel=0 panic=-1 rdinit=/init nokaslr mitigations=off "
                 "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd tsc=reliable no_timer_check "
                 "cryptomgr.notests random.trust_cpu=on nowatchdog audit=0 noresume rodata=off")
READY = "@@VDISK-GUEST-READY@@"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
echo 0 > /proc/sys/kernel/printk
for m in $(cat /etc/modules); do insmod /lib/modules/$m || echo "insmod $m failed"; done
stty -echo 2>/dev/null
echo "@@VDISK-GUEST-READY@@"
while IFS= read -r line; do
        case "$line" in
        "@@RUN "*)
                rest=${line#@@RUN }
                id=${rest%% *}
                cmd=$(echo "${rest#* }" | base64 -d)
                echo "@@BEGIN $id@@"
                sh -c "$cmd" </dev/null 2>&1
                st=$?
                echo
                echo "@@END $id $st@@"
                ;;
        esac
done
poweroff -f
"""


class GuestError(Exception):
    pass


# ---- host side of guest-io's layouts ----

MASK = (1 << 64) - 1
BLOCK = 4096


def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def pattern(offset, length, seed):
    """The bytes guest-io fill writes at disk offset `offset` (8-aligned): word i of the disk is
    splitmix64(seed ^ i), little endian."""
    assert offset % 8 == 0 and length % 8 == 0
    first = offset // 8
    return struct.pack(f"<{length // 8}Q", *(_splitmix64(seed ^ (first + k)) for k in range(length // 8)))


def fnv1a64(data, h=0xCBF29CE484222325):
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def counter_block(block, seq, run_id=0):
    """The 4096 bytes guest-io write-counter and writer put at block `block` for `seq`."""
    buf = bytearray(pattern(block * BLOCK, BLOCK, seq ^ ((run_id << 32) & MASK)))
    buf[0:32] = b"VDGIOCNT" + struct.pack("<QQQ", seq, block, run_id)
    buf[BLOCK - 8:] = struct.pack("<Q", fnv1a64(bytes(buf[:BLOCK - 8])))
    return bytes(buf)


# ---- what the guest is made of ----

def find_kernel():
    """(vmlinuz, module directory) of the newest kernel in /boot that has its modules, or None."""
    found = []
    for name in os.listdir("/boot") if os.path.isdir("/boot") else []:
        if not name.startswith("vmlinuz-"):
            continue
        version = name[len("vmlinuz-"):]
        moddir = os.path.join("/lib/modules", version)
        path = os.path.join("/boot", name)
        if os.path.isfile(os.path.join(moddir, "modules.dep")) and os.access(path, os.R_OK):
            found.append((os.stat(path).st_mtime, path, moddir))
    if not found:
        return None
    found.sort()
    return found[-1][1], found[-1][2]


def find_busybox():
    for b in BUSYBOX_CANDIDATES:
        if os.path.isfile(b):
            # busybox-static: no interpreter needed (a dynamic busybox would not run in the initramfs).
            with open(b, "rb") as f:
                head = f.read(1 << 16)
            if b"/lib64/ld-linux" not in head and b"ld-linux-x86-64" not in head:
                return b
    return None


def unavailable():
    """Why no guest can run here (a sentence), or None."""
    if not shutil.which(QEMU):
        return f"{QEMU} not installed"
    if not find_kernel():
        # Debian installs /boot/vmlinuz-* mode 0600: as another user than root, say so.
        unreadable = [os.path.join("/boot", n) for n in sorted(os.listdir("/boot") if os.path.isdir("/boot") else [])
                      if n.startswith("vmlinuz-") and not os.access(os.path.join("/boot", n), os.R_OK)]
        if unreadable:
            return (f"the kernel {unreadable[-1]} is not readable by uid {os.geteuid()} (Debian installs it mode "
                    "0600; run the guest tests as root, or have root make it readable, see README.md)")
        return "no kernel with modules in /boot and /lib/modules (install linux-image-amd64)"
    if not find_busybox():
        return "no static busybox (install busybox-static)"
    if not shutil.which("gcc"):
        return "no gcc to build guest-io"
    return None


def _module_paths(moddir, names):
    """The .ko files (relative to moddir) to load for `names`, dependencies first; built-in ones left out."""
    deps = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            if ":" in line:
                mod, rest = line.split(":", 1)
                deps[mod.strip()] = rest.split()
    builtin = set()
    try:
        with open(os.path.join(moddir, "modules.builtin")) as f:
            builtin = {line.strip() for line in f}
    except OSError:
        pass

    def modname(path):
        return re.sub(r"\.ko(\.(xz|zst|gz))?$", "", os.path.basename(path)).replace("-", "_")

    by_name = {modname(p): p for p in deps}
    builtin_names = {modname(p) for p in builtin}
    order = []

    def visit(path):
        if path in order:
            return
        for d in deps.get(path, []):
            visit(d)
        order.append(path)

    for n in names:
        n = n.replace("-", "_")
        if n in builtin_names:
            continue
        if n not in by_name:
            raise GuestError(f"module {n} neither built in nor in {moddir}/modules.dep")
        visit(by_name[n])
    return order


def _decompress(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout
    if path.endswith(".gz"):
        return zlib.decompress(data, 31)
    return data


class _Cpio:
    """A newc cpio archive (the format the kernel unpacks as initramfs)."""

    def __init__(self):
        self.out = bytearray()
        self.ino = 1

    def _entry(self, name, mode, data=b"", rdev=(0, 0), nlink=1):
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
        self.ino += 1
        self.out += b"070701" + b"".join(b"%08X" % v for v in fields) + name_b
        self.out += b"\0" * (-len(self.out) % 4)
        self.out += data
        self.out += b"\0" * (-len(self.out) % 4)

    def dir(self, name):
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name, data, mode=0o755):
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name, major, minor):
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self):
        self._entry("TRAILER!!!", 0)
        self.out += b"\0" * (-len(self.out) % 512)
        return bytes(self.out)


def default_cache_dir():
    d = os.environ.get("VDISK_GUEST_CACHE")
    if d:
        return d
    build = os.path.join(os.path.dirname(os.path.dirname(HERE)), "build")
    if os.path.isdir(build):
        return os.path.join(build, "tests", "guest")
    return os.path.join(tempfile.gettempdir(), "vdisk-guest-cache")


def _digest(paths, texts):
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for t in texts:
        h.update(t if isinstance(t, bytes) else t.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _atomic_write(path, data, mode=0o644):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def build_guest_io(cache_dir=None):
    """guest-io linked statically (cached): its path."""
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    src = open(GUEST_IO_C, "rb").read()
    out = os.path.join(cache_dir, f"guest-io-{hashlib.sha256(src).hexdigest()[:16]}")
    if not os.path.exists(out):
        tmp = f"{out}.tmp{os.getpid()}"
        p = subprocess.run(["gcc", "-static", "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-pthread",
                            "-o", tmp, GUEST_IO_C], capture_output=True, text=True)
        if p.returncode != 0:
            raise GuestError(f"building guest-io failed:\n{p.stderr}")
        os.rename(tmp, out)
    return out


def _kernel_for_qemu(kernel, cache_dir):
    """The kernel QEMU boots fastest: the uncompressed vmlinux ELF, booted through its PVH entry point (no
    firmware real-mode setup, no decompression under TCG: 3-4 s to the shell instead of 10), cached;
    the bzImage itself when the kernel has no PVH entry or its compression is unknown."""
    version = os.path.basename(kernel)[len("vmlinuz-"):]
    try:
        with open(f"/boot/config-{version}") as f:
            if "CONFIG_PVH=y\n" not in f.read():
                return kernel
    except OSError:
        return kernel
    out = os.path.join(cache_dir, f"vmlinux-{_digest([kernel], [])}")
    if os.path.exists(out):
        return out
    data = open(kernel, "rb").read()
    formats = [(b"\xfd7zXZ\x00", lambda d: lzma.LZMADecompressor().decompress(d)),
               (b"\x28\xb5\x2f\xfd", lambda d: subprocess.run(["zstd", "-dc"], input=d, capture_output=True).stdout),
               (b"\x1f\x8b\x08", lambda d: zlib.decompressobj(31).decompress(d))]
    for magic, unpack in formats:
        i = data.find(magic)
        while i >= 0:
            try:
                elf = unpack(data[i:])
            except Exception:
                elf = b""
            if elf.startswith(b"\x7fELF"):
                _atomic_write(out, elf)
                return out
            i = data.find(magic, i + 1)
    return kernel


def build_initramfs(cache_dir=None, modules=MODULES):
    """(kernel, initramfs path) for QEMU's -kernel and -initrd, built or taken from the cache."""
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    kernel, moddir = find_kernel() or (None, None)
    busybox = find_busybox()
    if not kernel or not busybox:
        raise GuestError(unavailable() or "no kernel or busybox")
    guest_io = build_guest_io(cache_dir)
    mods = _module_paths(moddir, modules)
    mod_files = [os.path.join(moddir, m) for m in mods]
    key = _digest([kernel, busybox, guest_io, *mod_files], [INIT, open(__file__, "rb").read(), " ".join(modules)])
    out = os.path.join(cache_dir, f"initramfs-{key}.cpio")
    kernel = _kernel_for_qemu(kernel, cache_dir)
    if os.path.exists(out):
        return kernel, out
    c = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "root"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.file("bin/busybox", open(busybox, "rb").read())
    c.file("bin/guest-io", open(guest_io, "rb").read())
    names = []
    for m in mod_files:
        name = re.sub(r"\.(xz|zst|gz)$", "", os.path.basename(m))
        c.file(f"lib/modules/{name}", _decompress(m), 0o644)
        names.append(name)
    c.file("etc/modules", ("\n".join(names) + "\n").encode(), 0o644)
    c.file("init", INIT.encode())
    _atomic_write(out, c.finish())
    # Older builds of the cache go (other processes may still boot them: only ones over an hour old).
    for n in os.listdir(cache_dir):
        p = os.path.join(cache_dir, n)
        if n.startswith(("initramfs-", "guest-io-", "vmlinux-")) and p not in (out, guest_io, kernel) and ".tmp" not in n:
            try:
                if time.time() - os.stat(p).st_mtime > 3600:
                    os.unlink(p)
            except OSError:
                pass
    return kernel, out


def qemu_argv(extra=(), memory=256, smp=1, append="", cache_dir=None, qmp=None, shared_memory=False):
    """The QEMU command line of a guest (serial console on stdio, no other default device), then `extra`.
    memory in MiB. qmp: a socket path for a QMP server (QEMU listens, does not wait). shared_memory: guest
    RAM from a shared memfd, which a vhost-user back end needs to map."""
    kernel, initrd = build_initramfs(cache_dir)
    argv = [QEMU, "-accel", "tcg", "-m", str(memory), "-smp", str(smp), "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", kernel, "-initrd", initrd, "-append", (KERNEL_APPEND + " " + append).strip()]
    if shared_memory:
        argv += ["-object", f"memory-backend-memfd,id=guest-ram,size={memory}M,share=on",
                 "-machine", "memory-backend=guest-ram"]
    if qmp:
        argv += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    return argv + list(extra)


class Guest:
    """A running guest: `argv` is the whole command (QEMU itself, or a launcher such as vdiskctl open that
    execs it). The console goes to `log` (a path) too. Stops only the process it started."""

    def __init__(self, argv, log=None, env=None, cwd=None):
        self.argv = list(argv)
        self.log_path = log
        self.env = env
        self.cwd = cwd
        self.proc = None
        self.boot_seconds = None
        self._buf = ""
        self._pos = 0        # what run() has consumed of _buf
        self._cond = threading.Condition()
        self._eof = False
        self._next_id = 1
        self._reader = None
        self._log = None

    # ---- lifecycle ----
    def start(self, timeout=60):
        self._log = open(self.log_path, "a") if self.log_path else None
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._wait_for(lambda: READY in self._buf, timeout, "the guest's shell")
        self._pos = self._buf.index(READY) + len(READY)
        self.boot_seconds = time.monotonic() - t0
        return self

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _read(self):
        fd = self.proc.stdout.fileno()
        dec = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            text = dec.decode(chunk, final=not chunk).replace("\r", "")
            with self._cond:
                self._buf += text
                if not chunk:
                    self._eof = True
                self._cond.notify_all()
            if self._log:
                self._log.write(text)
                self._log.flush()
            if not chunk:
                return

    def _wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = deadline - time.monotonic()
                if self._eof:
                    raise GuestError(f"QEMU exited (status {self.proc.wait()}) while waiting for {what}; "
                                     f"console:\n{self._buf[-3000:]}")
                if left <= 0:
                    raise GuestError(f"timeout ({timeout} s) waiting for {what}; console:\n{self._buf[-3000:]}")
                self._cond.wait(min(left, 0.5))

    def console(self):
        """Everything the console printed so far."""
        with self._cond:
            return self._buf

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def poweroff(self, timeout=60):
        """Syncs and powers the guest off, waits for QEMU to exit: its exit status."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self._send("sync; poweroff -f")
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise GuestError(f"the guest did not power off in {timeout} s")
        finally:
            self._close()

    def kill(self):
        """SIGKILL to the process this object started (QEMU, or the launcher that became QEMU)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._close()

    def _close(self):
        if self._reader:
            self._reader.join(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout) if self.proc else ():
            try:
                f.close()
            except OSError:
                pass
        if self._log:
            self._log.close()
            self._log = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()

    # ---- commands ----
    def _send(self, cmd):
        data = cmd.encode()
        if len(data) > 3000:
            raise GuestError("command too long for the console channel")
        cid = self._next_id
        self._next_id += 1
        line = f"@@RUN {cid} {base64.b64encode(data).decode()}\n"
        try:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise GuestError(f"QEMU is gone (status {self.proc.poll()}); console:\n{self.console()[-3000:]}")
        return cid

    def run(self, cmd, timeout=60):
        """Runs `cmd` with the guest's sh: (exit status, output with stderr)."""
        cid = self._send(cmd)
        begin = f"@@BEGIN {cid}@@\n"
        end = re.compile(rf"\n@@END {cid} (\d+)@@\n")
        self._wait_for(lambda: end.search(self._buf, self._pos), timeout, f"the end of {cmd!r}")
        with self._cond:
            m = end.search(self._buf, self._pos)
            start = self._buf.find(begin, self._pos)
            out = self._buf[start + len(begin):m.start()] if 0 <= start <= m.start() else ""
            self._pos = m.end()
        return int(m.group(1)), out

    def check(self, cmd, timeout=60):
        """run() that raises unless the status is 0: the output."""
        st, out = self.run(cmd, timeout)
        if st != 0:
            raise GuestError(f"{cmd!r} exited with {st}: {out[-2000:]}")
        return out

    def run_json(self, cmd, timeout=60, want_status=0):
        """run(), then the last output line that is a JSON object; raises unless the status is want_status."""
        st, out = self.run(cmd, timeout)
        if want_status is not None and st != want_status:
            raise GuestError(f"{cmd!r} exited with {st} (want {want_status}): {out[-2000:]}")
        for line in reversed(out.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise GuestError(f"{cmd!r} printed no JSON: {out[-2000:]}")

    def spawn(self, cmd, log):
        """Starts `cmd` in the background in the guest, output to the guest file `log`: its guest pid."""
        return int(self.check(f"({cmd}) > {log} 2>&1 & echo $!").strip())

    def stop(self, guest_pid, sig="TERM", timeout=30):
        """Signals a spawn()ed process and waits for it to end."""
        self.run(f"kill -{sig} {guest_pid}")
        # Orphans are reparented to /init, which reaps them only now and then: a zombie counts as ended.
        self.check(f"while [ -e /proc/{guest_pid} ] && ! grep -q '^State:.*Z' /proc/{guest_pid}/status 2>/dev/null; "
                   f"do sleep 0.1; done", timeout)

    def wait_device(self, dev="/dev/vda", timeout=30):
        self.check(f"i=0; while [ ! -b {dev} ]; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.1; done", timeout)

    # ---- guest-io writer's log (one JSON object per line) ----
    def writer_log(self, path):
        """Every JSON line of a writer's log: {"seq","block","lat_us"} per acknowledged write, then its summary."""
        return [json.loads(x) for x in self.check(f"cat {path}").splitlines() if x.startswith("{")]

    def last_seq(self, path):
        """The last acknowledged seq in a running writer's log (0 before the first); reads only its tail."""
        seqs = []
        for x in self.check(f"grep '^{{\"seq\"' {path} | tail -n 2; true").splitlines():
            try:
                seqs.append(json.loads(x)["seq"])
            except (ValueError, KeyError, TypeError):
                pass   # a line the writer is still printing
        return max(seqs, default=0)


# ---- host side of the guest tests: processes, fds, exports ----

def wait_for(cond, timeout, step=0.05):
    """Polls cond() until it is true or timeout seconds passed: its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def alive(pid):
    """pid runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def fd_links(pid):
    """The targets of a process's open fds (/proc/PID/fd)."""
    out = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{name}"))
        except OSError:
            pass
    return out


def fd_table(pid):
    """{target path: access modes (0 O_RDONLY, 1 O_WRONLY, 2 O_RDWR)} of a process's open files."""
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                flags = next(int(line.split()[1], 8) for line in f if line.startswith("flags:"))
        except (OSError, StopIteration):
            continue
        out.setdefault(target, set()).add(flags & 3)
    return out


# What a VM on an export may hold: no regular file at all (no image, no store file).
EXPORT_VM_FD_PREFIXES = ("socket:[", "pipe:[", "anon_inode:", "/dev/", "/memfd:")


def image_fds(pid):
    """The fds of a process that are not sockets, pipes, devices, memfds or anonymous inodes."""
    return [t for t in fd_links(pid) if not t.startswith(EXPORT_VM_FD_PREFIXES)]


def socket_inodes(pid):
    return {int(t[len("socket:["):-1]) for t in fd_links(pid) if t.startswith("socket:[")}


def unix_table():
    """{inode: (flags, state, path or '')} from /proc/net/unix."""
    out = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            p = line.split()
            out[int(p[6])] = (int(p[3], 16), int(p[5], 16), p[7] if len(p) > 7 else "")
    return out


def lease_dirs(runtime_dir):
    """The export lease directories under vdiskd's runtime directory."""
    d = os.path.join(runtime_dir, "exports")
    return [os.path.join(d, n) for n in sorted(os.listdir(d))] if os.path.isdir(d) else []


def helper_pid(lease_dir):
    with open(os.path.join(lease_dir, "state.json")) as f:
        return int(json.load(f)["helper-pid"])


def export_listeners(lease_dir):
    """The listening AF_UNIX sockets of an export's helper other than its QMP monitor (qmp.sock in the
    lease directory), as [(inode, bound path or '')]: the export's own listener, which must have no name
    anyone could connect to."""
    table = unix_table()
    monitor = os.path.join(lease_dir, "qmp.sock")
    return [(i, table[i][2]) for i in socket_inodes(helper_pid(lease_dir))
            if i in table and table[i][0] & 0x10000 and table[i][2] != monitor]   # __SO_ACCEPTCON: listening


def connectable(path):
    """A socket path someone else could connect to (abstract, or still in the file system)."""
    return bool(path) and (path.startswith("@") or os.path.exists(path))


# ---- set-up shared by the guest tests (env: a tests/integration/vdisktest.py Env, started) ----

def import_base(env, size, seed, data_len=None, fmt="raw", name="base"):
    """Imports catalog image `name` of `size` bytes whose first data_len bytes (all by default) hold
    pattern(0, data_len, seed) and the rest zeros; as qcow2 only the data is allocated. (None, "") on
    success, else (error name, message)."""
    data_len = size if data_len is None else data_len
    raw = os.path.join(env.tmp, f"{name}.raw")
    with open(raw, "wb") as f:
        f.truncate(size)
        f.write(pattern(0, data_len, seed))
    path = raw
    if fmt != "raw":
        path = os.path.join(env.tmp, f"{name}.{fmt}")
        p = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, raw, path], capture_output=True, text=True)
        if p.returncode != 0:
            raise GuestError(f"qemu-img convert to {fmt}: {p.stderr.strip()}")
        os.unlink(raw)
    r = env.import_file(name, fmt, path)
    os.unlink(path)
    return r


def create_chain(env, vm, image="base", snapshots=1):
    """VM `vm` with disk d: a private overlay on catalog image `image` and `snapshots` offline snapshots on
    top. The chain's files (absolute), top first."""
    import dbus
    from vdisktest import opts
    env.call("CreateVM", vm, dbus.UInt32(0), opts())
    env.call("CreateDisk", vm, "d", image, dbus.UInt64(0), opts())
    for _ in range(snapshots):
        env.call("Snapshot", vm, "d", opts())
    return chain_files(env, vm)


def chain_files(env, vm, disk="d"):
    """The files of a disk's chain (absolute), top first, from GetChain."""
    return [os.path.join(env.store, str(layer[1])) for layer in env.call("GetChain", vm, disk)]


def exports_work(env, vdiskctl, kind="nbd"):
    """None if `vdiskctl open --export=KIND --print` works against env's vdiskd (on a probe VM it creates),
    else why not (vdiskctl's message)."""
    create_chain(env, "probe", snapshots=0)
    p = subprocess.run([vdiskctl, "open", "probe", "d", f"--export={kind}", "--print", "--", QEMU],
                       capture_output=True, text=True)
    return None if p.returncode == 0 else f"vdiskctl open --export does not work here: {p.stderr.strip()[-300:]}"
