#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskd.service stays hardened: systemd-analyze security's exposure level is at most 2.0.

    test-unit-security.py UNIT_FILE

Runs "systemd-analyze security --offline=yes --threshold=20" on the unit file as built (no
running systemd needed) and parses the overall exposure level from its output. Exits 77
(skipped) if systemd-analyze is missing or too old for --offline (systemd < 250)."""

import re
import shutil
import subprocess
import sys

MAX_EXPOSURE = 2.0
THRESHOLD = "20"   # systemd-analyze's threshold is on a 0..100 scale: 20 = 2.0


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    unit = argv[1]

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        print("systemd-analyze not found; skipping")
        return 77
    helptext = subprocess.run([analyze, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True).stdout
    if "--offline" not in helptext or "--threshold" not in helptext:
        print("systemd-analyze lacks --offline/--threshold (systemd < 250); skipping")
        return 77

    r = subprocess.run([analyze, "security", "--offline=yes", f"--threshold={THRESHOLD}", "--no-pager", unit],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    print(r.stdout)
    if r.stderr:
        print(r.stderr, file=sys.stderr)

    m = re.search(r"Overall exposure level for \S+:\s*([0-9]+(?:\.[0-9]+)?)", r.stdout)
    if not m:
        print("FAIL: no exposure level in systemd-analyze's output")
        return 1
    exposure = float(m.group(1))
    print(f"exposure level {exposure} (limit {MAX_EXPOSURE}), systemd-analyze exit status {r.returncode}")
    if exposure > MAX_EXPOSURE:
        print(f"FAIL: exposure {exposure} > {MAX_EXPOSURE}: a hardening option was removed or weakened")
        return 1
    if r.returncode != 0:
        print("FAIL: systemd-analyze failed although the exposure is within the limit")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
