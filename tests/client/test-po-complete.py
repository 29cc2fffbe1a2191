#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every translatable string of the files in po/POTFILES.in has a finished translation in each
po/<lang>.po of po/LINGUAS, and the catalogs pass msgfmt --check (format strings match).
Usage: test-po-complete.py SOURCE_ROOT
"""

import os
import shutil
import subprocess
import sys
import tempfile

root = sys.argv[1]
po = os.path.join(root, "po")

for tool in ("xgettext", "msgcmp", "msgfmt"):
    if not shutil.which(tool):
        print(f"{tool} not found")
        sys.exit(77)

# The same keywords as po/meson.build (i18n preset 'glib' plus ngettext).
KEYWORDS = ["--keyword=_", "--keyword=N_", "--keyword=ngettext:1,2", "--flag=N_:1:pass-c-format"]

failures = []
languages = [l.strip() for l in open(os.path.join(po, "LINGUAS")) if l.strip() and not l.startswith("#")]
if not languages:
    failures.append("po/LINGUAS lists no language")

with tempfile.TemporaryDirectory() as tmp:
    pot = os.path.join(tmp, "vdisk.pot")
    subprocess.run(["xgettext", "--from-code=UTF-8", *KEYWORDS, "-D", root,
                    "-f", os.path.join(po, "POTFILES.in"), "-o", pot], check=True)

    for lang in languages:
        po_file = os.path.join(po, lang + ".po")
        # msgcmp ignores fuzzy and untranslated entries: each missing string is reported.
        p = subprocess.run(["msgcmp", po_file, pot], capture_output=True, text=True)
        if p.returncode != 0:
            failures.append(f"{lang}.po lacks translations:\n{p.stderr}")
        p = subprocess.run(["msgfmt", "--check", "--statistics", "-o", os.devnull, po_file],
                           capture_output=True, text=True, env=dict(os.environ, LC_ALL="C"))
        if p.returncode != 0 or "fuzzy" in p.stderr or "untranslated" in p.stderr:
            failures.append(f"{lang}.po: msgfmt --check: {p.stderr.strip()}")
        else:
            print(f"{lang}: {p.stderr.strip()}")

if failures:
    for f in failures:
        print("FAIL:", f)
    sys.exit(1)
print("all catalogs complete")
