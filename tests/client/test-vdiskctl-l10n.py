#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl speaks German with LANGUAGE=de, from the catalog built in build/po.

meson runs this with LANGUAGE=de, LC_ALL=C.UTF-8 and VDISKCTL_LOCALEDIR=<build>/po. The same
commands are run once more with an empty locale directory, which must give English: this shows
that the German text comes from the built catalog.
Usage: test-vdiskctl-l10n.py VDISKCTL HAVE_GETTEXT(yes|no)
"""

import os
import subprocess
import sys
import tempfile

VDISKCTL = sys.argv[1]
if len(sys.argv) > 2 and sys.argv[2] != "yes":
    print("msgfmt was not found at configure time: no catalogs to test")
    sys.exit(77)

NO_BUS = "unix:path=/nonexistent/vdisk-test/system_bus_socket"
localedir = os.environ.get("VDISKCTL_LOCALEDIR", "")
failures = []


def run(*args, env=None):
    e = dict(os.environ)
    e.update({"NO_COLOR": "1", "DBUS_SYSTEM_BUS_ADDRESS": NO_BUS})
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


mo = os.path.join(localedir, "de", "LC_MESSAGES", "vdisk.mo")
if not os.environ.get("LANGUAGE", "").startswith("de") or not os.path.isfile(mo):
    print(f"FAIL: needs LANGUAGE=de and VDISKCTL_LOCALEDIR with de/LC_MESSAGES/vdisk.mo (looked for {mo})")
    sys.exit(1)

# A usage error (exit 2) in German.
p = run("frobnicate")
check(p.returncode == 2, "unknown command exits 2", p)
check("Unbekannter Befehl „frobnicate“." in p.stderr, "unknown command in German", p)
check("Unknown command" not in p.stderr, "no English left in the usage error", p)

p = run("create-disk", "vm1", "d1")
check(p.returncode == 2, "blank disk without --size exits 2", p)
check("Ein leerer Datenträger braucht --size=SIZE" in p.stderr, "create-disk usage error in German", p)

# Help texts in German.
p = run("--help")
check(p.returncode == 0, "--help exits 0", p)
check(p.stdout.startswith("Aufruf: vdiskctl"), "--help in German", p)
check("Rückgabewert:" in p.stdout, "exit status section in German", p)
check("Abbilder im Katalog:" in p.stdout, "section titles in German", p)
check("Usage:" not in p.stdout and "Exit status" not in p.stdout, "no English left in --help", p)

p = run("create-disk", "--help")
check(p.returncode == 0, "create-disk --help exits 0", p)
check(p.stdout.startswith("Aufruf: vdiskctl create-disk VM DISK"), "create-disk --help in German", p)
check("Katalogabbild" in p.stdout, "create-disk description in German", p)

p = run("list-disks", "--help")
check(p.returncode == 0 and p.stdout.startswith("Aufruf: vdiskctl list-disks VM"), "list-disks --help in German", p)
check("Die Datenträger einer virtuellen Maschine auflisten." in p.stdout and "nach Namen sortiert" in p.stdout,
      "list-disks summary and description in German", p)

# A failure (exit 4) in German.
p = run("status")
check(p.returncode == 4, "status without a bus exits 4", p)
check("Verbindung zum Systembus fehlgeschlagen" in p.stderr, "bus failure in German", p)

# Control: the same commands without the catalog are English, so the checks above can fail.
with tempfile.TemporaryDirectory() as empty:
    p = run("frobnicate", env={"VDISKCTL_LOCALEDIR": empty})
    check(p.returncode == 2 and "Unknown command 'frobnicate'." in p.stderr,
          "without the catalog the usage error is English", p)
    p = run("--help", env={"VDISKCTL_LOCALEDIR": empty})
    check(p.stdout.startswith("Usage: vdiskctl"), "without the catalog --help is English", p)

if failures:
    for f in failures:
        print("FAIL:", f)
    print(f"{len(failures)} checks failed")
    sys.exit(1)
print("all checks passed")
