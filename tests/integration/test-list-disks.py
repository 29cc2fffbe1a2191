# SPDX-License-Identifier: LGPL-2.1-or-later
"""Manager.ListDisks, "vdiskctl list-disks" and the completion of DISK arguments against the real vdiskd.

- ListDisks(vm) is one (name, top layer, top format, depth, top virtual size) per disk, sorted by name,
  and agrees with GetChain after CreateDisk (overlay, copy, blank qcow2 and raw, larger than its image),
  Snapshot, Rebase (flatten) and DeleteDisk, and across a restart; a VM without disks gives [].
- Authorization is GetChain's: root, an admin-group member and the VM's owner may list; anyone else gets
  GetChain's AccessDenied with the same message for someone else's VM and a missing one; root gets
  GetChain's NotFound for a missing VM; a malformed VM name is InvalidArgs.
- vdiskctl list-disks: the aligned table with header and footer, --no-legend, --json and --json=short,
  a VM without disks, refusals (exit 3), and the same table for the VM's owner.
- shell-completion/bash/vdiskctl completes DISK of chain/open/... from the running daemon, and is silent
  for a caller who may not see the VM.

Usage: test-list-disks.py VDISKD (VDISKCTL in the environment)."""

import grp
import json
import os
import subprocess
import sys

import dbus

from vdisktest import Env, check, check_eq, finish, opts, require, root_only

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
NOTFOUND = "org.vdisk1.Error.NotFound"
DENIED = "org.freedesktop.DBus.Error.AccessDenied"
INVALID = "org.freedesktop.DBus.Error.InvalidArgs"
OWNER, OTHER = 65534, 1  # nobody owns vm1; daemon (uid 1) owns nothing; both are in /etc/passwd
VDISKD = sys.argv[1]
VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
COMPLETION = os.path.join(SRC, "shell-completion", "bash", "vdiskctl")

require("setpriv", "groupadd", "groupdel", "bash")

# What runs as another uid (as_user()): copies of vdiskctl and of the completion script that the uid can
# read, made by main() (Env.readable_copy()); the checkout may be in a directory only root can enter.
FOR_OTHERS = {"vdiskctl": VDISKCTL, "completion": COMPLETION}


def t(n):
    return dbus.UInt64(n)


def plain(x):
    """dbus values → what call_as() returns (JSON round trip)."""
    return json.loads(json.dumps(x))


def list_disks(env, vm):
    return [tuple(plain(d)) for d in env.call("ListDisks", vm)]


def expected_from_chains(env, vm, disks):
    """What ListDisks must say, from GetChain of each disk (sorted by name as bytes)."""
    out = []
    for disk in sorted(disks, key=lambda d: d.encode()):
        chain = plain(env.call("GetChain", vm, disk))
        top = chain[0]
        out.append((disk, top[0], top[2], len(chain), top[4]))
    return out


def check_matches_chains(env, vm, disks, label):
    got = list_disks(env, vm)
    check_eq(got, expected_from_chains(env, vm, disks), f"{label}: ListDisks agrees with GetChain (sorted by name)")
    return got


def format_bytes(n):
    """client/output.c format_bytes(): binary units, one truncated decimal."""
    for suffix, factor in (("E", 1 << 60), ("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20),
                           ("K", 1 << 10)):
        if n >= factor:
            return f"{n // factor}.{(n % factor) * 10 // factor}{suffix}"
    return f"{n}B"


def expected_table(entries, legend=True):
    """vdiskctl's table: two blanks between columns, LAYERS and SIZE right-aligned, no trailing blanks."""
    rows = [["DISK", "TOP LAYER", "FORMAT", "LAYERS", "SIZE"]]
    rows += [[e[0], e[1], e[2], str(e[3]), format_bytes(e[4])] for e in entries]
    if not legend:
        rows = rows[1:]
    widths = [max((len(r[c]) for r in rows), default=0) for c in range(5)]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].ljust(widths[2]), r[3].rjust(widths[3]),
                 r[4].rjust(widths[4])]
        lines.append("  ".join(cells))
    text = "".join(line + "\n" for line in lines)
    if legend:
        n = len(entries)
        text += f"\n{n} disk{'s' if n != 1 else ''} listed.\n"
    return text


def expected_json(entries):
    return [{"name": e[0], "top_layer": e[1], "format": e[2], "depth": e[3], "virtual_size": e[4]} for e in entries]


def vdiskctl_env():
    e = dict(os.environ)
    e.update({"LC_ALL": "C", "LANGUAGE": "", "NO_COLOR": "1"})
    e.pop("VDISKCTL_LOCALEDIR", None)
    return e


def as_user(uid):
    return ("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups")


def run(*args, prefix=()):
    exe = FOR_OTHERS["vdiskctl"] if prefix else VDISKCTL
    return subprocess.run([*prefix, exe, *args], capture_output=True, text=True, env=vdiskctl_env(), timeout=120)


COMPLETION_DRIVER = r"""
source "$COMPLETION" || exit 99
COMP_WORDS=("$@")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
_vdiskctl
printf '%s\n' "${COMPREPLY[@]}"
"""


def complete(*words, prefix=()):
    """COMPREPLY of the real completion script for 'VDISKCTL words...' (the last word is completed), with the
    built vdiskctl as the command being completed; returns (exit status, stderr, words)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/", "LC_ALL": "C",
           "COMPLETION": FOR_OTHERS["completion"] if prefix else COMPLETION,
           "DBUS_SYSTEM_BUS_ADDRESS": os.environ["DBUS_SYSTEM_BUS_ADDRESS"]}
    exe = FOR_OTHERS["vdiskctl"] if prefix else VDISKCTL
    p = subprocess.run([*prefix, "bash", "--norc", "--noprofile", "-c", COMPLETION_DRIVER, "bash", exe, *words],
                       capture_output=True, text=True, env=env, timeout=60, cwd="/")
    return p.returncode, p.stderr, [w for w in p.stdout.split("\n") if w]


def case_api(env, base_layer):
    check_eq(list_disks(env, "empty"), [], "a VM without disks: []")

    # Created out of name order, of every kind.
    env.call("CreateDisk", "vm1", "zeta", "base", t(0), opts())
    env.call("CreateDisk", "vm1", "alpha", "", t(MiB), opts(format="raw"))
    env.call("CreateDisk", "vm1", "Mid", "base", t(2 * GiB), opts())
    env.call("CreateDisk", "vm1", "beta", "", t(64 * MiB), opts())
    env.call("CreateDisk", "vm1", "copy", "base", t(0), opts(mode="copy"))
    disks = {"zeta", "alpha", "Mid", "beta", "copy"}
    got = check_matches_chains(env, "vm1", disks, "after CreateDisk")
    check_eq([d[0] for d in got], ["Mid", "alpha", "beta", "copy", "zeta"], "sorted by name, byte order")
    by_name = {d[0]: d for d in got}
    check_eq(by_name["zeta"][2:], ("qcow2", 2, GiB), "overlay: qcow2, 2 layers, the image's size")
    check_eq(by_name["Mid"][2:], ("qcow2", 2, 2 * GiB), "overlay larger than its image: the top layer's size")
    check_eq(by_name["alpha"][2:], ("raw", 1, MiB), "blank raw disk: raw, 1 layer")
    check_eq(by_name["beta"][2:], ("qcow2", 1, 64 * MiB), "blank qcow2 disk: qcow2, 1 layer")
    check_eq(by_name["copy"][3], 1, "a copy of the image: 1 layer")
    check(by_name["zeta"][1] != base_layer and by_name["copy"][1] != base_layer,
          "the top layer of an overlay or copy is not the catalog image's")

    env.call("Snapshot", "vm1", "zeta", opts())
    top = str(env.call("Snapshot", "vm1", "zeta", opts()))
    got = check_matches_chains(env, "vm1", disks, "after two snapshots")
    zeta = [d for d in got if d[0] == "zeta"][0]
    check_eq((zeta[1], zeta[3]), (top, 4), "after two snapshots: the new top layer, 4 layers")

    job = env.call("Rebase", "vm1", "zeta", "", opts())
    check_eq(env.wait_job(job)[0], "done", "flatten zeta: job done")
    got = check_matches_chains(env, "vm1", disks, "after a flatten")
    check_eq([d[3] for d in got if d[0] == "zeta"], [1], "after a flatten: 1 layer")

    env.call("DeleteDisk", "vm1", "alpha")
    disks.discard("alpha")
    got = check_matches_chains(env, "vm1", disks, "after DeleteDisk")
    check("alpha" not in [d[0] for d in got], "a deleted disk is not listed")

    env.call("CreateDisk", "root-vm", "d", "base", t(0), opts())
    check_matches_chains(env, "root-vm", {"d"}, "root's VM")
    check_eq(list_disks(env, "empty"), [], "a VM without disks: still []")

    # Records only: the same answers after a restart.
    before = {vm: list_disks(env, vm) for vm in ("vm1", "root-vm", "empty")}
    env.restart()
    check_eq({vm: list_disks(env, vm) for vm in ("vm1", "root-vm", "empty")}, before, "after a restart: identical")
    return disks


def case_errors(env):
    err = env.try_call("ListDisks", "ghost")
    check_eq(err[0], NOTFOUND, "missing VM (root): NotFound")
    check_eq(err, env.try_call("GetChain", "ghost", "d"), "missing VM (root): GetChain's error and message")
    for label, name in {"empty": "", "slash": "a/b", "dotdot": "..", "newline": "a\nb", "65 chars": "x" * 65}.items():
        check_eq(env.try_call("ListDisks", name)[0], INVALID, f"VM name {label}: InvalidArgs")
    try:
        env.manager().ListDisks("vm1", "zeta", signature="ss")
        err = None
    except dbus.exceptions.DBusException as e:
        err = e.get_dbus_name()
    check_eq(err, INVALID, "ListDisks with (ss): InvalidArgs")


def case_authorization(env):
    root_answer = plain(env.call("ListDisks", "vm1"))
    check_eq(env.call_as(OWNER, "ListDisks", "vm1"), (None, root_answer), "the owner: the same list as root's")
    check_eq(env.call_as(OWNER, "ListDisks", "empty"), (None, []), "the owner, a VM without disks: []")
    for user in (OWNER, OTHER):
        answers = set()
        for vm in ("vm1", "root-vm", "ghost"):
            if user == OWNER and vm == "vm1":
                continue
            err, msg = env.call_as(user, "ListDisks", vm)
            check_eq(err, DENIED, f"uid {user}, VM {vm}: AccessDenied")
            disk = "zeta" if vm == "vm1" else "d"
            check_eq((err, msg), env.call_as(user, "GetChain", vm, disk),
                     f"uid {user}, VM {vm}: GetChain's error and message")
            answers.add(msg.replace(f"'{vm}'", "'VM'"))
        check_eq(len(answers), 1, f"uid {user}: the same answer for someone else's VM and a missing one")


def case_admin_group(group_name):
    gid = grp.getgrnam(group_name).gr_gid
    genv = Env(VDISKD, config_extra=f"[Access]\nAdminGroup={group_name}\n")
    try:
        genv.start()
        genv.call("CreateImage", "img", "qcow2", t(MiB), opts())
        genv.call("CreateVM", "root-vm", dbus.UInt32(0), opts())
        genv.call("CreateDisk", "root-vm", "d", "img", t(0), opts())
        want = plain(genv.call("ListDisks", "root-vm"))
        check_eq(genv.call_as(OTHER, "ListDisks", "root-vm", groups=gid), (None, want),
                 "admin group: root's VM, the same list as root's")
        check_eq(genv.call_as(OTHER, "ListDisks", "ghost", groups=gid), genv.try_call("GetChain", "ghost", "d"),
                 "admin group: a missing VM is GetChain's NotFound")
        check_eq(genv.call_as(OTHER, "ListDisks", "root-vm")[0], DENIED, "without the group: AccessDenied")
    finally:
        genv.close()


def case_vdiskctl(env):
    entries = list_disks(env, "vm1")
    p = run("list-disks", "vm1")
    check_eq((p.returncode, p.stderr), (0, ""), "vdiskctl list-disks: exit 0")
    check_eq(p.stdout, expected_table(entries), "vdiskctl list-disks: the aligned table, header and footer")
    check(p.stdout.startswith("DISK  "), "vdiskctl list-disks: header line first")

    p = run("list-disks", "vm1", "--no-legend")
    check_eq(p.stdout, expected_table(entries, legend=False), "vdiskctl list-disks --no-legend: only the rows")

    p = run("list-disks", "vm1", "--json=short")
    check_eq(p.returncode, 0, "vdiskctl list-disks --json=short: exit 0")
    check_eq(p.stdout, json.dumps(expected_json(entries), separators=(",", ":")) + "\n",
             "vdiskctl list-disks --json=short: one line, keys in order")
    p = run("--json", "list-disks", "vm1")
    check_eq(json.loads(p.stdout), expected_json(entries), "vdiskctl --json list-disks: the same values")
    check(p.stdout.startswith("[\n"), "vdiskctl --json list-disks: pretty-printed")

    p = run("list-disks", "empty")
    check_eq((p.returncode, p.stdout), (0, expected_table([])), "a VM without disks: the header and '0 disks listed.'")
    p = run("list-disks", "empty", "--json=short")
    check_eq(p.stdout, "[]\n", "a VM without disks, --json=short: []")
    p = run("list-disks", "empty", "--no-legend")
    check_eq(p.stdout, "", "a VM without disks, --no-legend: nothing")

    p = run("list-disks", "ghost")
    check_eq((p.returncode, p.stdout), (3, ""), "a missing VM: exit 3, nothing on stdout")
    check("Failed to list the disks of VM 'ghost'" in p.stderr and "NotFound" in p.stderr,
          f"a missing VM: says what failed and why ({p.stderr.strip()})")

    if not root_only("vdiskctl list-disks as uids 65534 and 1"):
        return
    p = run("list-disks", "vm1", prefix=as_user(OWNER))
    check_eq((p.returncode, p.stderr, p.stdout), (0, "", expected_table(entries)), "the owner: the same table")
    p = run("list-disks", "vm1", prefix=as_user(OTHER))
    check_eq((p.returncode, p.stdout), (3, ""), "another user: refused (exit 3)")
    check("AccessDenied" in p.stderr, "another user: says AccessDenied")


def case_completion(env, disks):
    want = sorted(disks, key=lambda d: d.encode())
    for verb in ("delete-disk", "chain", "snapshot", "rebase", "commit", "xml", "open"):
        check_eq(complete(verb, "vm1", ""), (0, "", want), f"completion of {verb} vm1 DISK: the disks of vm1")
    check_eq(complete("chain", "vm1", "c"), (0, "", ["copy"]), "completion of a DISK prefix")
    check_eq(complete("open", "--read-only", "root-vm", ""), (0, "", ["d"]), "completion of open's DISK after an option")
    check_eq(complete("chain", "empty", ""), (0, "", []), "completion for a VM without disks: nothing")
    check_eq(complete("chain", "ghost", ""), (0, "", []), "completion for a missing VM: nothing, silently")
    if root_only("completion as uids 65534 and 1"):
        check_eq(complete("chain", "vm1", "", prefix=as_user(OWNER)), (0, "", want), "completion as the owner")
        check_eq(complete("chain", "vm1", "", prefix=as_user(OTHER)), (0, "", []),
                 "completion as another user: nothing, silently")
    check_eq(complete("create-disk", "vm1", ""), (0, "", []), "create-disk's new DISK: not completed")


def main():
    env = Env(VDISKD)
    group_name = f"vdl{os.getpid()}"
    group_created = False
    try:
        env.start()
        FOR_OTHERS.update({k: env.readable_copy(v) for k, v in FOR_OTHERS.items()})
        base_layer = str(env.call("CreateImage", "base", "qcow2", t(GiB), opts()))
        env.call("CreateVM", "vm1", dbus.UInt32(OWNER), opts())
        env.call("CreateVM", "empty", dbus.UInt32(OWNER), opts())
        env.call("CreateVM", "root-vm", dbus.UInt32(0), opts())

        disks = case_api(env, base_layer)
        case_errors(env)
        if root_only("ListDisks as uids 65534 and 1"):
            case_authorization(env)
        case_vdiskctl(env)
        case_completion(env, disks)

        p = subprocess.run(["groupadd", group_name], capture_output=True, text=True) if root_only("groupadd") else None
        group_created = p is not None and check_eq(p.returncode, 0, f"groupadd {group_name} ({p.stderr.strip()})")
        if group_created:
            case_admin_group(group_name)
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = env.address  # Env() points the process at its own bus
        check_eq(list(env.call("Verify", "vm1")), [], "Verify vm1: consistent at the end")
    finally:
        env.close()
        if group_created:
            subprocess.run(["groupdel", group_name], capture_output=True)
    finish()


if __name__ == "__main__":
    main()
