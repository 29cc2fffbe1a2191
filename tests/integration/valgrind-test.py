#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Runs an integration test with every vdiskd it starts under valgrind memcheck (tests/ROBUSTNESS.md).

usage: valgrind-test.py TEST.py [ARGS...]

The test runs as usual with VDISK_TEST_WRAPPER set (Env.start() honours it); afterwards every
valgrind log is read. The result fails if the test fails or if any daemon had a memcheck error
(invalid access, uninitialised value, bad free, fd passed to a syscall wrongly...) or definitely
lost memory. A daemon the test killed with SIGKILL has no summary: the errors it reported before
are still counted; one that SIGKILLed itself at a crash point (test hooks) is judged by its error
reports only, its leak summary being taken without its stack. Skips (77) when valgrind is missing or vdiskd is built with AddressSanitizer."""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

SKIP = 77
# Error kinds memcheck reports, as the first line of each error.
ERROR_LINE = re.compile(r"^==(\d+)== (Invalid (read|write|free)|Mismatched free|Conditional jump|Use of uninitialised|"
                        r"Syscall param|Source and destination overlap|Argument '.*' of function|"
                        r"Process terminating with default action of signal (?!9 |15 )|Warning: invalid file descriptor)")


def parse_log(path):
    text = open(path, errors="replace").read()
    pid = re.search(r"^==(\d+)== Command:", text, re.M)
    summary = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    lost = re.search(r"definitely lost: ([\d,]+) bytes in ([\d,]+) blocks", text)
    # A daemon that SIGKILLed itself at a test hook's crash point (daemon/shared/test-hooks.c marks it in
    # the log) still gets a summary, but one taken without its stack: its leak count means nothing.
    # Its memcheck error reports still count.
    crashed = re.search(r"vdiskd: crash point \S+ reached", text) is not None
    return {
        "log": path,
        "pid": pid.group(1) if pid else "?",
        "finished": summary is not None,
        "errors": int(summary.group(1)) if summary else None,
        "error_lines": sum(1 for line in text.splitlines() if ERROR_LINE.match(line)),
        "definitely_lost": int(lost.group(1).replace(",", "")) if lost else 0,
        "crashed": crashed,
        "text": text,
    }


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    if not shutil.which("valgrind"):
        print("SKIP: valgrind not installed")
        return SKIP
    vdiskd = next((a for a in sys.argv[2:] if os.path.basename(a) == "vdiskd"), None)
    if vdiskd and b"__asan_init" in open(vdiskd, "rb").read():
        print("SKIP: vdiskd is built with AddressSanitizer, which valgrind cannot run")
        return SKIP

    logdir = tempfile.mkdtemp(prefix="vdisk-valgrind-")
    env = dict(os.environ)
    env["VDISK_TEST_WRAPPER"] = (
        "valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --track-fds=no "
        f"--log-file={logdir}/vdiskd.%p.log")
    rc = subprocess.call([sys.executable, *sys.argv[1:]], env=env)

    logs = [parse_log(p) for p in sorted(glob.glob(os.path.join(logdir, "vdiskd.*.log")))]
    bad = [l for l in logs
           if l["error_lines"] > 0 or (not l["crashed"] and ((l["errors"] or 0) > 0 or l["definitely_lost"] > 0))]
    print(f"valgrind: {len(logs)} vdiskd process(es) ({sum(not l['finished'] for l in logs)} killed before their "
          f"summary, {sum(l['crashed'] for l in logs)} at a crash point), "
          f"{sum(l['errors'] or 0 for l in logs if not l['crashed'])} error(s) in summaries, "
          f"{sum(l['error_lines'] for l in logs)} error report(s), "
          f"{sum(l['definitely_lost'] for l in logs if not l['crashed'])} byte(s) definitely lost")
    for l in bad:
        print(f"---- valgrind log of vdiskd pid {l['pid']} ({l['log']}) ----")
        print(l["text"][-20000:])
    if bad:
        print(f"FAIL: {len(bad)} vdiskd process(es) with memcheck errors or leaks; logs kept in {logdir}")
        return 1
    shutil.rmtree(logdir, ignore_errors=True)
    if rc == 0 and not logs:
        print("FAIL: the test started no vdiskd under valgrind")
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
