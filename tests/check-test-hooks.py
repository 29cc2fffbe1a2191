#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The test hooks (daemon/shared/test-hooks.c, meson option test_hooks) are in vdiskd exactly when the
build asked for them.

  check-test-hooks.py --absent VDISKD TEST_HOOKS_C    a default build: no hook's name is in the binary
  check-test-hooks.py --present VDISKD TEST_HOOKS_C   a -Dtest_hooks=true build: every hook's name is

The hooks are the variables test-hooks.c reads; no other daemon source may read a VDISKD_ variable.
Run in a test build, --present also shows that the search finds the names when they are there."""
import glob
import os
import re
import sys

if len(sys.argv) != 4 or sys.argv[1] not in ("--absent", "--present"):
    sys.exit(__doc__)
mode, binary, hooks_c = sys.argv[1:]
failures = []

hooks = sorted(set(re.findall(r'secure_getenv\("([A-Z0-9_]+)"\)', open(hooks_c).read())))
expected = {"VDISKD_CRASH_AT", "VDISKD_TEST_JOB_LINGER_SEC", "VDISKD_TEST_STEP_DELAY_MS", "VDISKD_TEST_STEP_BYTES"}
if not expected <= set(hooks):
    failures.append(f"{hooks_c} reads {hooks}, expected at least {sorted(expected)}")
if any(not h.startswith("VDISKD_") for h in hooks):
    failures.append(f"{hooks_c}: every hook is named VDISKD_*: {hooks}")

daemon_dir = os.path.dirname(os.path.dirname(os.path.abspath(hooks_c)))
for src in glob.glob(os.path.join(daemon_dir, "**", "*.c"), recursive=True):
    if os.path.abspath(src) == os.path.abspath(hooks_c):
        continue
    for name in re.findall(r'getenv\("(VDISKD_[A-Z0-9_]*)"\)', open(src).read()):
        failures.append(f"{os.path.relpath(src, daemon_dir)} reads {name}: test hooks belong in test-hooks.c")

data = open(binary, "rb").read()
for h in hooks:
    found = h.encode() in data
    if mode == "--absent" and found:
        failures.append(f"{binary} contains {h}: a default build must not have test hooks")
    if mode == "--present" and not found:
        failures.append(f"{binary} lacks {h}: a -Dtest_hooks=true build must have it")
if mode == "--absent" and b"VDISKD_" in data:
    at = data.index(b"VDISKD_")
    failures.append(f"{binary} contains {data[at:at + 40]!r}")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"{binary}: test hooks {'absent' if mode == '--absent' else 'all present'} ({', '.join(hooks)})")
