#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The bash completion of vdiskctl (shell-completion/bash/vdiskctl), sourced into bash with a fake vdiskctl
on PATH that prints canned 'vdiskctl --json=short ...' answers: commands and their options (exactly those
of the real vdiskctl's --help and 'help COMMAND'), option values, VM and image names, the disk names of
the VM on the command line (list-disks VM), layer ids for rebase and commit, job ids and paths, files,
the hypervisor's command after 'open ... --'. And silence:
when the fake vdiskctl fails, hangs or is missing, the daemon-backed completions are empty and nothing
reaches stderr.

Usage: test-completion.py COMPLETION_SCRIPT VDISKCTL   Exits 77 without bash."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

script, real_vdiskctl = sys.argv[1:3]
failures = []

if not shutil.which("bash"):
    print("SKIP: bash not installed")
    sys.exit(77)

VMS = '[{"name":"web","owner_uid":1000},{"name":"db","owner_uid":0},{"name":"web2","owner_uid":0}]'
IMAGES = ('[{"name":"debian","layer":"aaaa0001","format":"qcow2","virtual_size":1073741824,"allocated":200704},'
          '{"name":"swap","layer":"bbbb0002","format":"raw","virtual_size":1048576,"allocated":0}]')
CHAIN = ('[{"layer":"cccc0003","file":"images/cccc0003.qcow2","format":"qcow2","backing_format":"qcow2",'
         '"virtual_size":1073741824,"allocated":196608,"catalog":false},'
         '{"layer":"dddd0004","file":"images/dddd0004.qcow2","format":"qcow2","backing_format":"qcow2",'
         '"virtual_size":1073741824,"allocated":196608,"catalog":false},'
         '{"layer":"aaaa0001","file":"images/aaaa0001.qcow2","format":"qcow2","backing_format":"",'
         '"virtual_size":1073741824,"allocated":200704,"catalog":true}]')
DISKS = ('[{"name":"data","top_layer":"eeee0005","format":"raw","depth":1,"virtual_size":1048576},'
         '{"name":"root","top_layer":"cccc0003","format":"qcow2","depth":3,"virtual_size":1073741824},'
         '{"name":"rootfs","top_layer":"ffff0006","format":"qcow2","depth":1,"virtual_size":1073741824}]')
JOBS = ('[{"job":"/org/vdisk1/job/7","id":"7","operation":"rebase","vm":"web","disk":"root","state":"running",'
        '"progress":0.5},{"job":"/org/vdisk1/job/12","id":"12","operation":"import","vm":"","disk":"",'
        '"state":"done","progress":1}]')

STUB = f"""#!/bin/sh
# A fake vdiskctl: canned answers of vdiskd through 'vdiskctl --json=short ...'.
echo "$*" >> "$STUB_LOG"
case "$STUB_MODE" in
fail) echo "Failed to connect to the system bus: No such file or directory" >&2; exit 4 ;;
hang) sleep 30; exit 4 ;;
esac
case "$*" in
"--json=short list-vms") echo '{VMS}' ;;
"--json=short list-images") echo '{IMAGES}' ;;
"--json=short chain web root") echo '{CHAIN}' ;;
"--json=short list-disks web") echo '{DISKS}' ;;
"--json=short list-disks db") echo '[]' ;;
"--json=short list-disks web2") echo "Failed to list the disks of VM 'web2': Access denied" >&2; exit 3 ;;
"--json=short jobs") echo '{JOBS}' ;;
*) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""

DRIVER = r"""
source "$COMPLETION" || exit 99
COMP_WORDS=("$@")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
_vdiskctl
printf '%s\n' "${COMPREPLY[@]}"
"""


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
    return cond


def check_eq(got, want, what):
    return check(got == want, what if got == want else f"{what}: got {got!r}, want {want!r}")


tmp = tempfile.mkdtemp(prefix="vdisk-completion-")
bindir = os.path.join(tmp, "bin")
os.mkdir(bindir)
stub = os.path.join(bindir, "vdiskctl")
with open(stub, "w") as f:
    f.write(STUB)
os.chmod(stub, 0o755)
log = os.path.join(tmp, "calls.log")
# bash, the stub's sh, timeout, tail, and nothing else named vdiskctl.
base_path = ":".join(d for d in ("/usr/local/bin", "/usr/bin", "/bin") if os.path.isdir(d))


def complete(*words, mode="ok", path=None, preload=None, timeout=60):
    """COMPREPLY for the command line `words` (the last word is the one being completed)."""
    env = {"PATH": path if path is not None else bindir + ":" + base_path, "HOME": tmp, "LC_ALL": "C",
           "COMPLETION": os.path.abspath(script), "STUB_LOG": log, "STUB_MODE": mode}
    driver = DRIVER if not preload else f'source "{preload}" >/dev/null 2>&1\n' + DRIVER
    p = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver, "bash", *words], capture_output=True,
                       text=True, env=env, timeout=timeout, cwd=tmp)
    stderr = p.stderr
    if preload:
        # bash-completion's own helpers call compopt, which complains outside a real completion (this driver).
        stderr = re.sub(r"(?m)^.*compopt: not currently executing completion function\n", "", stderr)
    check_eq((p.returncode, stderr), (0, ""), f"complete {' '.join(words)!r} ({mode}): exit 0, nothing on stderr")
    return [w for w in p.stdout.split("\n") if w]


def real(*args):
    env = dict(os.environ, LC_ALL="C", LANGUAGE="", NO_COLOR="1")
    env.pop("VDISKCTL_LOCALEDIR", None)
    return subprocess.run([real_vdiskctl, *args], capture_output=True, text=True, env=env, timeout=60).stdout


# ---- commands and options, against the real vdiskctl ----

verbs = [m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]+)(?: |$)", real("--help"), re.M)]
check(len(verbs) >= 20, f"the real vdiskctl lists its commands ({len(verbs)})")
check_eq(complete("vdiskctl", ""), verbs, "commands: every command of 'vdiskctl --help', in its order")
check_eq(complete("vdiskctl", "ch"), ["chain"], "commands: prefix 'ch'")
check_eq(sorted(complete("vdiskctl", "c")), sorted(v for v in verbs if v.startswith("c")), "commands: prefix 'c'")
check_eq(sorted(complete("vdiskctl", "-")), sorted(["-h", "--help", "--version", "--json", "--no-legend"]),
         "global options")
check_eq(complete("vdiskctl", "--json", "=", ""), ["pretty", "short", "off"], "--json=MODE values")
check_eq(complete("vdiskctl", "--json=sh"), ["--json=short"], "--json=MODE values without '=' as a word break")

for verb in verbs:
    want = {"-h", "--help"}
    for line in real("help", verb).split("\nOptions:\n", 1)[-1].splitlines():
        m = re.match(r"^\s+(?:-h )?(--[a-z-]+)(=)?", line)
        if m:
            want.add(m.group(1) + ("=" if m.group(2) else ""))
    check_eq(set(complete("vdiskctl", verb, "-")), want, f"options of '{verb}': those of 'vdiskctl help {verb}'")
check_eq(complete("vdiskctl", "create-disk", "web", "d", "--im"), ["--image="], "options: prefix '--im'")

check_eq(complete("vdiskctl", "create-image", "x", ""), ["qcow2", "raw"], "create-image FORMAT")
check_eq(complete("vdiskctl", "create-image", "x", "qcow2", "1G", "--template", "=", ""), ["blank", "swap"],
         "--template values")
check_eq(complete("vdiskctl", "create-disk", "web", "d", "--mode=c"), ["--mode=copy"], "--mode values")
check_eq(complete("vdiskctl", "create-disk", "web", "d", "--format", ""), ["qcow2", "raw"],
         "--format values as the next word")
check_eq(complete("vdiskctl", "help", "ad"), ["adopt"], "help COMMAND")

# ---- names from the daemon ----

open(log, "w").close()
check_eq(complete("vdiskctl", "chain", ""), ["web", "db", "web2"], "chain VM: the VMs of list-vms")
check_eq(complete("vdiskctl", "chain", "we"), ["web", "web2"], "chain VM: prefix 'we'")
check_eq(complete("vdiskctl", "--no-legend", "verify", "d"), ["db"], "verify VM after a global option")
check_eq(complete("vdiskctl", "open", "--read-only", ""), ["web", "db", "web2"], "open VM after an option")
calls = open(log).read().splitlines()
check(calls and all(c == "--json=short list-vms" for c in calls), f"VMs come from 'vdiskctl --json=short list-vms' ({calls})")

check_eq(complete("vdiskctl", "delete-image", ""), ["debian", "swap"], "delete-image NAME: the catalog")
check_eq(complete("vdiskctl", "create-disk", "web", "d", "--image", "=", ""), ["debian", "swap"],
         "--image=NAME: the catalog")
check_eq(complete("vdiskctl", "create-disk", "web", "d", "--image", "=", "sw"), ["swap"], "--image=NAME: prefix")
check_eq(complete("vdiskctl", "create-disk", "web", "d", "--image", ""), ["debian", "swap"],
         "--image NAME as the next word")
check_eq(complete("vdiskctl", "create-disk", "web", "d", "--image=de"), ["--image=debian"],
         "--image=NAME without '=' as a word break")
check_eq(complete("vdiskctl", "create-disk", "--image", "debian", "web", ""), [],
         "create-disk: an option's value is not an argument; the new DISK is not completed")

check_eq(complete("vdiskctl", "rebase", "web", "root", ""), ["dddd0004", "aaaa0001", "bbbb0002", "none"],
         "rebase BACKING: lower layers of the chain, catalog layers, none")
check_eq(complete("vdiskctl", "commit", "web", "root", ""), ["cccc0003", "dddd0004"],
         "commit LAYER: the private layers of the chain")
check_eq(complete("vdiskctl", "cancel", ""), ["7", "12"], "cancel JOB: job ids")
check_eq(complete("vdiskctl", "cancel", "1"), ["12"], "cancel JOB: prefix")
check_eq(complete("vdiskctl", "cancel", "/"), ["/org/vdisk1/job/7", "/org/vdisk1/job/12"], "cancel JOB: object paths")
# DISK: the disks of the VM on the command line, from 'vdiskctl --json=short list-disks VM'.
open(log, "w").close()
for verb in ("delete-disk", "chain", "snapshot", "rebase", "commit", "xml", "open"):
    check_eq(complete("vdiskctl", verb, "web", ""), ["data", "root", "rootfs"],
             f"{verb} VM DISK: the disks of list-disks VM")
calls = open(log).read().splitlines()
check(calls and all(c == "--json=short list-disks web" for c in calls),
      f"disks come from 'vdiskctl --json=short list-disks VM' with the VM of the command line ({calls})")
check_eq(complete("vdiskctl", "chain", "web", "ro"), ["root", "rootfs"], "chain DISK: prefix 'ro'")
check_eq(complete("vdiskctl", "--json", "chain", "--no-legend", "web", "d"), ["data"],
         "chain DISK after options before and after the command")
check_eq(complete("vdiskctl", "open", "--read-only", "web", "r"), ["root", "rootfs"], "open DISK after an option")
check_eq(complete("vdiskctl", "open", "web", "--export", "=", ""), ["vhost-user-blk", "nbd"], "--export=TYPE values")
check_eq(complete("vdiskctl", "open", "web", "--export=n"), ["--export=nbd"], "--export=TYPE without '=' as a word break")
check_eq(complete("vdiskctl", "open", "--export", "nbd", "web", "r"), ["root", "rootfs"],
         "open DISK after --export TYPE: the option's value is not the VM")
check_eq(complete("vdiskctl", "open", "web", "root,"), ["root,data", "root,rootfs"],
         "open DISK,DISK: the disks after the comma, without those already named")
check_eq(complete("vdiskctl", "open", "web", "data,root,r"), ["data,root,rootfs"], "open DISK,DISK,DISK: prefix 'r'")
check_eq(complete("vdiskctl", "open", "web", "data,root,rootfs,"), [], "open: every disk named, nothing left")
check_eq(complete("vdiskctl", "chain", "web", "root,"), [], "chain takes one DISK: no list")
check_eq(complete("vdiskctl", "chain", "db", ""), [], "chain DISK of a VM without disks: nothing")
check_eq(complete("vdiskctl", "chain", "web2", ""), [], "chain DISK of a VM the caller may not see: nothing")
check_eq(complete("vdiskctl", "chain", "web", "root", ""), [], "chain: nothing after DISK")
check_eq(complete("vdiskctl", "list-disks", "w"), ["web", "web2"], "list-disks VM: the VMs of list-vms")
check_eq(complete("vdiskctl", "list-disks", "web", ""), [], "list-disks: nothing after VM")
open(log, "w").close()
check_eq(complete("vdiskctl", "create-disk", "web", ""), [], "create-disk: the new DISK is not completed")
check_eq(open(log).read(), "", "create-disk DISK: vdiskd is not asked")
check_eq(complete("vdiskctl", "status", ""), [], "status takes no arguments")

# ---- files and the hypervisor's command ----

os.mkdir(os.path.join(tmp, "images"))
open(os.path.join(tmp, "images", "debian.qcow2"), "w").close()
check_eq(complete("vdiskctl", "inspect", "--format=qcow2", "images/deb"), ["images/debian.qcow2"], "inspect FILE")
check_eq(complete("vdiskctl", "import", "debian", "qcow2", "images/"), ["images/debian.qcow2"], "import ... FILE")
check_eq(complete("vdiskctl", "adopt", "web", "imag"), ["images"], "adopt VM FILE")
check("vdiskctl" in complete("vdiskctl", "open", "web", "root", "--", "vdisk"),
      "open ... -- COMMAND: command names")
bash_completion = "/usr/share/bash-completion/bash_completion"
if os.path.exists(bash_completion):
    check("vdiskctl" in complete("vdiskctl", "open", "web", "root", "--", "vdisk", preload=bash_completion),
          "open ... -- COMMAND with bash-completion loaded: command names")
    check_eq(complete("vdiskctl", "chain", "d", preload=bash_completion), ["db"],
             "with bash-completion loaded: VM names")

# ---- the vdiskctl being completed ----

other = os.path.join(tmp, "other")
os.mkdir(other)
with open(os.path.join(other, "vdiskctl"), "w") as f:
    f.write("#!/bin/sh\necho '[{\"name\":\"elsewhere\",\"owner_uid\":0}]'\n")
os.chmod(os.path.join(other, "vdiskctl"), 0o755)
check_eq(complete(os.path.join(other, "vdiskctl"), "verify", ""), ["elsewhere"],
         "a vdiskctl given as a path is the one that is asked")

# ---- silence when the daemon cannot be reached ----

for words in (("chain", ""), ("chain", "web", ""), ("open", "web", ""), ("delete-image", ""), ("rebase", "web", "root", ""), ("commit", "web", "root", ""),
              ("cancel", ""), ("create-disk", "web", "d", "--image=")):
    # "none" (flatten) is not the daemon's: it stays.
    want = ["none"] if words[0] == "rebase" else []
    check_eq(complete("vdiskctl", *words, mode="fail"), want, f"failing vdiskctl: {' '.join(words)!r} completes nothing")
    check_eq(complete("vdiskctl", *words, path=base_path), want,
             f"no vdiskctl on PATH: {' '.join(words)!r} completes nothing")
check_eq(complete("vdiskctl", "", mode="fail"), verbs, "failing vdiskctl: commands still complete")
check_eq(complete("vdiskctl", "chain", "-", mode="fail"), ["-h", "--help", "--json", "--no-legend"],
         "failing vdiskctl: options still complete")
if shutil.which("timeout"):
    start = time.monotonic()
    check_eq(complete("vdiskctl", "chain", "", mode="hang", timeout=60), [], "hanging vdiskctl: nothing")
    check(time.monotonic() - start < 20, f"hanging vdiskctl: given up after a few seconds "
                                         f"({time.monotonic() - start:.1f} s)")

shutil.rmtree(tmp, ignore_errors=True)
if failures:
    print(f"{len(failures)} check(s) failed:")
    for f in failures:
        print("  " + f)
    sys.exit(1)
print("all checks passed")
