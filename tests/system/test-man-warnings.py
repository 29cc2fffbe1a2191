#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Each built man page formats without a single warning: man --warnings (groff -ww through man's own
pipeline: preconv, tbl, troff) and groff -k -Tutf8 -man -ww -z, and has the sections every page needs.
Usage: test-man-warnings.py PAGE...   Exits 77 if neither man nor groff is installed."""

import os
import re
import shutil
import subprocess
import sys

failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


pages = sys.argv[1:]
have_man = shutil.which("man") is not None
have_groff = shutil.which("groff") is not None
if not have_man and not have_groff:
    print("SKIP: neither man nor groff is installed")
    sys.exit(77)

env = dict(os.environ, LC_ALL="C.UTF-8", LANGUAGE="", MANWIDTH="80", MAN_KEEP_FORMATTING="", MANPAGER="cat",
           PAGER="cat")

for page in pages:
    name = os.path.basename(page)
    title, section = name.rsplit(".", 1)
    check(os.path.getsize(page) > 0, f"{name}: built")
    roff = open(page, encoding="utf-8").read()
    check(re.search(rf'^\.TH "{re.escape(title)}" "{section}"', roff, re.M) is not None,
          f"{name}: .TH names the page and section {section}")
    for sh in ("NAME", "DESCRIPTION", "SEE ALSO"):
        check(f'.SH {sh}' in roff, f"{name}: has a {sh} section")

    if have_man:
        p = subprocess.run(["man", "--warnings", "-l", "-E", "UTF-8", page], capture_output=True, text=True, env=env,
                           timeout=120)
        check(p.returncode == 0, f"{name}: man exits 0 ({p.returncode})")
        check(p.stderr.strip() == "", f"{name}: man --warnings prints no warning: {p.stderr.strip()[:2000]}")
        check(f"{title}(" in p.stdout and "NAME" in p.stdout, f"{name}: man renders it")
    if have_groff:
        p = subprocess.run(["groff", "-k", "-Tutf8", "-man", "-t", "-ww", "-z", page], capture_output=True, text=True, env=env,
                           timeout=120)
        check(p.returncode == 0 and p.stderr.strip() == "",
              f"{name}: groff -k -Tutf8 -man -t -ww -z prints no warning: {p.stderr.strip()[:2000]}")

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("all checks passed")
