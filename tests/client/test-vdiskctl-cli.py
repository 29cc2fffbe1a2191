#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl without a daemon: the help texts, usage errors (exit 2) and a missing bus (exit 4).

Every usage error is checked with DBUS_SYSTEM_BUS_ADDRESS pointing at a socket that does not exist:
an exit status of 2 (not 4) proves that vdiskctl validates its arguments before it connects.
Usage: test-vdiskctl-cli.py VDISKCTL
"""

import os
import subprocess
import sys

VDISKCTL = sys.argv[1]
NO_BUS = "unix:path=/nonexistent/vdisk-test/system_bus_socket"

COMMANDS = {
    # command: options its --help must mention
    "list-images": ["--json", "--no-legend"],
    "create-image": ["--template=", "--cluster-size=", "--json"],
    "import": ["--no-wait"],
    "delete-image": [],
    "list-vms": ["--json", "--no-legend"],
    "create-vm": ["--owner="],
    "delete-vm": [],
    "list-disks": ["--json", "--no-legend", "VM"],
    "create-disk": ["--image=", "--size=", "--mode=", "--format="],
    "delete-disk": [],
    "chain": ["--json", "--no-legend"],
    "snapshot": ["--json"],
    "rebase": ["--unsafe", "--no-wait"],
    "commit": ["--no-wait"],
    "verify": ["--json"],
    "xml": [],
    "adopt": ["--move"],
    "open": ["--read-only", "--print", "--export=TYPE", "vhost-user-blk", "nbd", "--json", "-- COMMAND"],
    "jobs": ["--json"],
    "cancel": [],
    "inspect": ["--format="],
    "status": ["--json"],
    "help": [],
}

failures = []


def run(*args, env=None):
    e = dict(os.environ)
    # English, no colours, and no bus, whatever the caller's environment says.
    e.update({"LC_ALL": "C", "LANGUAGE": "", "NO_COLOR": "1", "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS})
    e.pop("VDISKCTL_LOCALEDIR", None)
    if env:
        e.update(env)
    return subprocess.run([VDISKCTL, *args], capture_output=True, text=True, env=e, timeout=60)


def check(cond, what, p=None):
    if cond:
        return
    msg = what
    if p is not None:
        msg += f"\n  exit {p.returncode}\n  stdout: {p.stdout!r}\n  stderr: {p.stderr!r}"
    failures.append(msg)


# --- help -----------------------------------------------------------------------------------------

p = run("--help")
check(p.returncode == 0, "--help exits 0", p)
check(p.stdout.startswith("Usage: vdiskctl"), "--help starts with Usage", p)
check(p.stderr == "", "--help prints nothing on stderr", p)
check("\x1b[" not in p.stdout, "no colours with NO_COLOR and a pipe", p)
for cmd in COMMANDS:
    check(f"\n  {cmd}" in p.stdout, f"--help lists {cmd}", p)
check("Exit status" in p.stdout, "--help documents the exit status", p)
for code, word in [("0", "success"), ("1", "verify"), ("2", "usage"), ("3", "refused"), ("4", "other")]:
    check(any(l.strip().startswith(code + " ") and word in l for l in p.stdout.splitlines()),
          f"--help documents exit status {code}", p)
main_help = p.stdout

p = run("-h")
check(p.returncode == 0 and p.stdout == main_help, "-h is --help", p)
p = run("help")
check(p.returncode == 0 and p.stdout == main_help, "'help' is --help", p)

p = run("--version")
check(p.returncode == 0 and p.stdout.startswith("vdiskctl ") and p.stdout.strip() != "vdiskctl",
      "--version prints the version", p)

for cmd, options in COMMANDS.items():
    p = run(cmd, "--help")
    check(p.returncode == 0, f"{cmd} --help exits 0", p)
    check(p.stdout.startswith(f"Usage: vdiskctl {cmd}"), f"{cmd} --help shows its usage", p)
    check("-h --help" in p.stdout, f"{cmd} --help lists --help", p)
    for o in options:
        check(o in p.stdout, f"{cmd} --help mentions {o}", p)
    q = run("help", cmd)
    check(q.returncode == 0 and q.stdout == p.stdout, f"'help {cmd}' is '{cmd} --help'", q)
    # --help wins over missing arguments: nothing is validated or connected
    q = run("--help", cmd)
    check(q.returncode == 0 and q.stdout == p.stdout, f"'--help {cmd}' is '{cmd} --help'", q)

p = run("open", "--help")
check(p.stdout.startswith("Usage: vdiskctl open VM DISK[,DISK...] [OPTIONS...] [-- COMMAND...]\n"),
      "open --help puts the options before '-- COMMAND'", p)
check("lease" in p.stdout and "exits" in p.stdout, "open --help says how long the lease lives", p)

p = run("verify", "--help")
check("1" in p.stdout and "problems" in p.stdout, "verify --help explains exit status 1", p)

# --- usage errors: exit 2, a message on stderr, nothing on stdout --------------------------------

USAGE_ERRORS = [
    ([], "No command given"),
    (["frobnicate"], "Unknown command 'frobnicate'"),
    (["help", "frobnicate"], "Unknown command 'frobnicate'"),
    (["frobnicate", "--help"], "Unknown command 'frobnicate'"),
    (["--frobnicate"], "Unknown option '--frobnicate'"),
    (["-x", "status"], "Unknown option '-x'"),
    (["status", "--unsafe=yes"], "Unknown option"),
    (["status", "extra"], "Wrong number of arguments for 'status'"),
    (["create-image", "img", "qcow2"], "Wrong number of arguments for 'create-image'"),
    (["create-image", "img", "qcow2", "1G", "extra"], "Wrong number of arguments"),
    (["create-image", "img", "qcow2", "1X"], "Invalid size '1X'"),
    (["create-image", "img", "qcow2", "-1"], "Unknown option '-1'"),
    (["create-image", "img", "qcow2", "--", "-1"], "Invalid size '-1'"),
    (["create-image", "img", "qcow2", "1.1G"], "Invalid size '1.1G'"),
    (["create-image", "img", "vmdk", "1G"], "Unknown format 'vmdk'"),
    (["create-image", "img", "raw", "1G", "--cluster-size=64K"], "--cluster-size applies to qcow2"),
    (["create-image", "img", "qcow2", "1G", "--cluster-size=huge"], "Invalid cluster size"),
    (["create-image", "img", "qcow2", "1G", "--template=zeros"], "Invalid value 'zeros' for --template"),
    (["import", "img", "qed", "/dev/null"], "Unknown format 'qed'"),
    (["list-images", "--image=debian"], "Option --image cannot be used with 'list-images'"),
    (["delete-vm", "vm1", "--no-wait"], "Option --no-wait cannot be used with 'delete-vm'"),
    (["create-vm", "vm1", "--owner=no-such-user-for-vdisk-tests"], "Invalid owner"),
    (["create-disk", "vm1", "d1"], "A blank disk needs --size"),
    (["create-disk", "vm1", "d1", "--mode=copy"], "--mode needs --image"),
    (["create-disk", "vm1", "d1", "--image=debian", "--format=raw"], "--format is for blank disks only"),
    (["create-disk", "vm1", "d1", "--image=debian", "--mode=clone"], "Invalid value 'clone' for --mode"),
    (["create-disk", "vm1", "d1", "--size"], "Option '--size' needs a value"),
    (["create-disk", "vm1", "d1", "--size=ten"], "Invalid size 'ten'"),
    (["inspect", "/dev/null"], "needs --format"),
    (["inspect", "/dev/null", "--format=vdi"], "Invalid value 'vdi' for --format"),
    (["cancel", "a/b"], "neither a job id"),
    (["--json=fancy", "status"], "Invalid value 'fancy' for --json"),
    (["open", "vm1"], "Wrong number of arguments for 'open'"),
    (["open", "vm1", "d1", "--print"], "--print needs a COMMAND"),
    (["open", "vm1", "d1", "--print", "--"], "--print needs a COMMAND"),
    (["open", "vm1", "d1", "--unsafe"], "Option --unsafe cannot be used with 'open'"),
    (["open", "vm1", "d1", "--export=iscsi"], "Invalid value 'iscsi' for --export: use vhost-user-blk or nbd."),
    (["open", "vm1", "d1", "--export"], "Option '--export' needs a value."),
    (["snapshot", "vm1", "d1", "--export=nbd"], "Option --export cannot be used with 'snapshot'"),
    # The command line is checked before the leases are taken (and before vdiskctl connects).
    (["open", "vm1", "d1", "--export=vhost-user-blk", "--", "qemu-system-x86_64", "-device",
      "virtio-blk-pci,drive=d1,serial=abc"],
     "Property 'serial' of '-device virtio-blk-pci,drive=d1,serial=abc' does not exist in vhost-user-blk-pci, "
     "which attaches disk 'd1' (--export=vhost-user-blk): remove it."),
    (["open", "vm1", "d0,d1", "--export=vhost-user-blk", "--print", "--", "qemu-system-x86_64", "--device",
      "driver=virtio-blk-pci,drive=d1,config-wce=on"],
     "'-device driver=virtio-blk-pci,drive=d1,config-wce=on' turns config-wce on: disk 'd1' is exported as "
     "vhost-user-blk, which needs config-wce=off so that the guest flushes its writes."),
    (["open", "vm1", "d1", "--export=vhost-user-blk", "--", "qemu-system-x86_64", "-device", "scsi-hd,drive=d1"],
     "Disk 'd1' is exported as vhost-user-blk: '-device scsi-hd,drive=d1' cannot attach it. Use virtio-blk-pci, "
     "which vdiskctl turns into vhost-user-blk-pci."),
    (["open", "vm1", "d1", "--export=vhost-user-blk", "--", "qemu-system-x86_64", "-m", "lots"],
     "Invalid memory size in '-m lots'."),
    (["snapshot", "vm1", "d1", "--read-only"], "Option --read-only cannot be used with 'snapshot'"),
    (["chain", "vm1", "d1", "--print"], "Option --print cannot be used with 'chain'"),
    (["list-disks"], "Wrong number of arguments for 'list-disks'. Usage: vdiskctl list-disks VM"),
    (["list-disks", "vm1", "d1"], "Wrong number of arguments for 'list-disks'"),
    (["list-disks", "vm1", "--image=debian"], "Option --image cannot be used with 'list-disks'"),
]

for args, message in USAGE_ERRORS:
    p = run(*args)
    name = "vdiskctl " + " ".join(args)
    check(p.returncode == 2, f"'{name}' exits 2 (usage error)", p)
    check(message in p.stderr, f"'{name}' says {message!r}", p)
    check("--help" in p.stderr, f"'{name}' says where to find help", p)
    check(p.stdout == "", f"'{name}' prints nothing on stdout", p)

# --- failures: exit 4 ------------------------------------------------------------------------------

for args in (["status"], ["list-images", "--json"], ["list-disks", "vm1"], ["list-disks", "vm1", "--json=short"],
             ["delete-vm", "vm1"], ["cancel", "5"], ["open", "vm1", "d1"],
             ["open", "vm1", "d1", "--print", "--", "qemu-system-x86_64", "-S"],
             ["open", "vm1", "d1", "--export=nbd"],
             # Accepted as they are: the properties vhost-user-blk-pci has; nbd does not read -m or -device.
             ["open", "vm1", "d1", "--export=vhost-user-blk", "--print", "--", "qemu-system-x86_64", "-m", "1G",
              "-device", "virtio-blk-pci,drive=d1,id=v1,bootindex=1,config-wce=off"],
             ["open", "vm1", "d1", "--export=nbd", "--", "qemu-system-x86_64", "-m", "lots", "-device",
              "virtio-blk-pci,drive=d1,serial=abc"]):
    p = run(*args)
    name = "vdiskctl " + " ".join(args)
    check(p.returncode == 4, f"'{name}' without a bus exits 4", p)
    check("Failed to connect to the system bus" in p.stderr, f"'{name}' says that the bus connection failed", p)
    check("DBUS_SYSTEM_BUS_ADDRESS" in p.stderr and NO_BUS in p.stderr,
          f"'{name}' names the bus address to check", p)
    check(p.stdout == "", f"'{name}' prints nothing on stdout", p)

p = run("import", "img", "raw", "/nonexistent/vdisk-test.img")
check(p.returncode == 4, "import of a missing file exits 4", p)
check("Failed to open '/nonexistent/vdisk-test.img'" in p.stderr and "No such file" in p.stderr,
      "import of a missing file says which file and why", p)

p = run("adopt", "vm1", "/nonexistent/vdisk-test.xml")
check(p.returncode == 4 and "Failed to read '/nonexistent/vdisk-test.xml'" in p.stderr,
      "adopt of a missing file exits 4 and says which file", p)

# --- start-up ---------------------------------------------------------------------------------------

# libvirt and libxml2 (with ICU, GnuTLS, GLib: some forty libraries) are loaded by "vdiskctl libvirt"
# only: loaded at every start they made each vdiskctl process several times slower (B1). The dynamic
# loader lists what it loads at start without running the program.
p = run(env={"LD_TRACE_LOADED_OBJECTS": "1"})
loaded = [l.split()[0] for l in p.stdout.splitlines() if l.strip()]
check(p.returncode == 0 and any(n.startswith("libsystemd.so") for n in loaded),
      "the dynamic loader lists what vdiskctl loads at start", p)
check(not any(n.startswith(("libvirt", "libxml2", "libicu", "libgnutls", "libglib")) for n in loaded),
      f"vdiskctl loads no libvirt, libxml2, ICU, GnuTLS or GLib at start (loads {loaded})", p)

if failures:
    for f in failures:
        print("FAIL:", f)
    print(f"{len(failures)} checks failed")
    sys.exit(1)
print("all checks passed")
