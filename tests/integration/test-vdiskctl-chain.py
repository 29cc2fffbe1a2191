# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl chain against the real vdiskd: the text output is a tree, top layer first, each backing layer
one level below the layer it backs (└─ in a UTF-8 locale, `- otherwise), with format, virtual size,
allocated bytes and the catalog image's name, in aligned columns under a header and over a footer;
--no-legend drops both; colours (bold header, grey connectors) only on a terminal and never with NO_COLOR;
the indentation stops growing at depth 8; a VM's owner (not an administrator) sees the same tree; and
--json / --json=short print exactly what they printed before the tree (GetChain's fields, same keys, same
order).

Usage: test-vdiskctl-chain.py VDISKD (VDISKCTL in the environment)."""

import json
import os
import pty
import pwd
import re
import select
import shutil
import subprocess
import sys

import dbus

from vdisktest import Env, check, check_eq, failures, finish, opts, root_only

GiB = 1 << 30
VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
# The user that owns one VM in this test; it must exist in /etc/passwd (dbus-daemon resolves uids).
OWNER = "nobody"

TREE_DEPTH_MAX = 8  # client/vdiskctl-disks.c: CHAIN_TREE_DEPTH_MAX


def vdiskctl_env(**extra):
    e = dict(os.environ)
    e.update({"LC_ALL": "C.UTF-8", "LANGUAGE": "", "NO_COLOR": "1", "TERM": "xterm"})
    e.pop("VDISKCTL_LOCALEDIR", None)
    for k, v in extra.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def run(*args, env=None, prefix=(), exe=(VDISKCTL,)):
    return subprocess.run([*prefix, *exe, *args], capture_output=True, text=True,
                          env=env or vdiskctl_env(), timeout=120)


def run_pty(*args, env):
    """Runs vdiskctl with its stdout on a pseudo-terminal; returns (exit status, output)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([VDISKCTL, *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    out = b""
    while True:
        r, _, _ = select.select([master], [], [], 60)
        if not r:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    p.wait(timeout=60)
    return p.returncode, out.decode().replace("\r\n", "\n")


def format_bytes(n):
    """client/output.c format_bytes(): binary units, one truncated decimal."""
    for suffix, factor in (("E", 1 << 60), ("P", 1 << 50), ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20),
                           ("K", 1 << 10)):
        if n >= factor:
            return f"{n // factor}.{(n % factor) * 10 // factor}{suffix}"
    return f"{n}B"


def chain_json(env, vm, disk):
    """What 'vdiskctl chain --json' printed before the tree: GetChain's entries, keys in this order."""
    return [{"layer": str(c[0]), "file": str(c[1]), "format": str(c[2]), "backing_format": str(c[3]),
             "virtual_size": int(c[4]), "allocated": int(c[5]), "catalog": bool(c[6])}
            for c in env.call("GetChain", vm, disk)]


def expected_tree(layers, names, branch="└─ ", legend=True):
    """The table vdiskctl must print: columns separated by two blanks, sizes right-aligned, no trailing
    blanks, the layer column drawn as a tree."""
    rows = [["LAYER", "FORMAT", "SIZE", "ALLOCATED", "CATALOG"]]
    for depth, l in enumerate(layers):
        d = min(depth, TREE_DEPTH_MAX)
        tree = "" if d == 0 else " " * (3 * (d - 1)) + branch
        rows.append([tree + l["layer"], l["format"], format_bytes(l["virtual_size"]),
                     format_bytes(l["allocated"]), names.get(l["layer"], "?") if l["catalog"] else "-"])
    if not legend:
        rows = rows[1:]
    widths = [max(len(r[c]) for r in rows) for c in range(5)]
    lines = []
    for r in rows:
        cells = []
        for c, s in enumerate(r):
            if c in (2, 3):
                cells.append(s.rjust(widths[c]))
            elif c == 4:
                cells.append(s)
            else:
                cells.append(s.ljust(widths[c]))
        lines.append("  ".join(cells))
    text = "\n".join(lines) + "\n"
    if legend:
        n = len(layers)
        text += f"\n{n} layer{'s' if n != 1 else ''}, the active one first.\n"
    return text


def catalog_names(env):
    return {str(i[1]): str(i[0]) for i in env.call("ListImages")}


def case_three_layers(env):
    layers = chain_json(env, "vm", "d")
    check_eq(len(layers), 3, "the chain has 3 layers")
    check_eq([l["catalog"] for l in layers], [False, False, True], "only the bottom layer is a catalog image")
    names = catalog_names(env)

    p = run("chain", "vm", "d")
    check_eq(p.returncode, 0, "chain: exit 0")
    check_eq(p.stdout, expected_tree(layers, names), "chain: the tree, aligned, with header and footer")
    lines = p.stdout.splitlines()
    check(lines[1].startswith(layers[0]["layer"] + " "), "chain: the active layer first, not indented")
    check(lines[2].startswith("└─ " + layers[1]["layer"]), "chain: its backing layer one level below")
    check(lines[3].startswith("   └─ " + layers[2]["layer"]), "chain: the catalog image two levels below")
    check(lines[3].endswith("  debian"), "chain: the catalog image's name in the last column")
    check(lines[1].endswith("  -") and lines[2].endswith("  -"), "chain: '-' for private layers")
    check(re.match(r"^LAYER +FORMAT +SIZE +ALLOCATED +CATALOG$", lines[0]) is not None, "chain: header line")
    check("\033" not in p.stdout, "chain: no escape sequences when stdout is not a terminal")

    p = run("chain", "vm", "d", "--no-legend")
    check_eq(p.stdout, expected_tree(layers, names, legend=False), "chain --no-legend: only the rows")

    p = run("chain", "vm", "d", env=vdiskctl_env(LC_ALL="C"))
    check_eq(p.stdout, expected_tree(layers, names, branch="`- "), "chain in the C locale: ASCII connectors")

    # Colours only on a terminal: a bold header and grey connectors, and the same text without them.
    status, out = run_pty("chain", "vm", "d", env=vdiskctl_env(NO_COLOR=None))
    check_eq(status, 0, "chain on a terminal: exit 0")
    check("\033[1mLAYER" in out, "chain on a terminal: bold header")
    check("\033[90m└─ \033[0m" + layers[1]["layer"] in out, "chain on a terminal: grey connectors")
    plain = re.sub(r"\033\[[0-9;]*m", "", out)
    check_eq(plain, expected_tree(layers, names), "chain on a terminal: the same columns once colours are removed")

    status, out = run_pty("chain", "vm", "d", env=vdiskctl_env(NO_COLOR="1"))
    check("\033" not in out, "chain on a terminal with NO_COLOR: no colours")
    status, out = run_pty("chain", "vm", "d", env=vdiskctl_env(NO_COLOR=None, TERM="dumb"))
    check("\033" not in out, "chain on a terminal with TERM=dumb: no colours")


def case_json(env):
    layers = chain_json(env, "vm", "d")

    p = run("chain", "vm", "d", "--json=short")
    check_eq(p.returncode, 0, "chain --json=short: exit 0")
    check_eq(p.stdout, json.dumps(layers, separators=(",", ":")) + "\n",
             "chain --json=short: GetChain's fields, byte for byte as before")

    p = run("chain", "vm", "d", "--json")
    got = json.loads(p.stdout)
    check_eq(got, layers, "chain --json: the same values")
    check_eq([list(o) for o in got], [list(o) for o in layers], "chain --json: the same keys in the same order")
    check(p.stdout.startswith("[\n") and "\n  {\n" in p.stdout, "chain --json: pretty-printed")

    p = run("--json=short", "chain", "vm", "d")
    check_eq(json.loads(p.stdout), layers, "--json=short before the command: the same")


def case_deep(env):
    """Indentation grows one level per layer up to depth 8 and stays there."""
    env.call("CreateDisk", "vm", "deep", "debian", dbus.UInt64(0), opts())
    for _ in range(10):
        env.call("Snapshot", "vm", "deep", opts())
    layers = chain_json(env, "vm", "deep")
    check_eq(len(layers), 12, "deep: 12 layers")

    p = run("chain", "vm", "deep", "--no-legend")
    check_eq(p.stdout, expected_tree(layers, catalog_names(env), legend=False), "deep: the tree")
    lines = p.stdout.splitlines()
    check(lines[8].startswith(" " * 21 + "└─ "), "deep: depth 8 indented by 7 levels")
    check(lines[11].startswith(" " * 21 + "└─ " + layers[11]["layer"]), "deep: deeper layers stay at depth 8")
    check(lines[11].endswith("  debian"), "deep: the catalog image at the bottom")


def case_owner(env):
    """A VM's owner may call GetChain and ListImages: the same tree, catalog name included."""
    if not shutil.which("setpriv"):
        print("setpriv not installed: owner case skipped")
        return
    if not root_only("the VM owner's vdiskctl chain (as the user nobody)"):
        return
    pw = pwd.getpwnam(OWNER)
    as_owner = ("setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups")
    env.call("CreateVM", "owned", dbus.UInt32(pw.pw_uid), opts())
    env.call("CreateDisk", "owned", "d", "debian", dbus.UInt64(0), opts())
    env.call("Snapshot", "owned", "d", opts())
    layers = chain_json(env, "owned", "d")
    # The owner runs a copy it can read: the build directory may be one only root can enter.
    p = run("chain", "owned", "d", prefix=(*as_owner, env.readable_copy(VDISKCTL)), exe=())
    check_eq((p.returncode, p.stderr), (0, ""), "chain as the VM's owner: exit 0")
    check_eq(p.stdout, expected_tree(layers, catalog_names(env)), "chain as the VM's owner: the same tree")

    p = run("chain", "vm", "d", prefix=(*as_owner, env.readable_copy(VDISKCTL)), exe=())
    check_eq(p.returncode, 3, "chain of another user's VM: refused (exit 3)")


def case_errors(env):
    p = run("chain", "vm", "nosuchdisk")
    check_eq(p.returncode, 3, "chain of a missing disk: exit 3")
    check("NotFound" in p.stderr, "chain of a missing disk: names the error")
    check_eq(p.stdout, "", "chain of a missing disk: prints nothing on stdout")


def main():
    env = Env(sys.argv[1])
    try:
        env.start()
        env.call("CreateImage", "debian", "qcow2", dbus.UInt64(GiB), opts())
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        env.call("CreateDisk", "vm", "d", "debian", dbus.UInt64(0), opts())
        env.call("Snapshot", "vm", "d", opts())

        case_three_layers(env)
        case_json(env)
        case_deep(env)
        case_owner(env)
        case_errors(env)
    finally:
        env.close()
    finish()


if __name__ == "__main__":
    main()
