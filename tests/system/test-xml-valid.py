#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""All XML files of vdisk's system integration are well-formed (xmllint), and the interface
XML also validates against the introspection DTD named by its DOCTYPE (resolved to the local
copy INTROSPECT_DTD through an XML catalog). Never touches the network (--nonet).

    test-xml-valid.py INTROSPECT_DTD --interfaces FILE... --other FILE...

Exits 77 (skipped) if xmllint (Debian package libxml2-utils) is missing."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

CATALOG = """<?xml version="1.0"?>
<catalog xmlns="urn:oasis:names:tc:entity:xmlns:xml:catalog">
  <public publicId="-//freedesktop//DTD D-BUS Object Introspection 1.0//EN" uri="{dtd}"/>
</catalog>
"""


def xmllint(xmllint_path, *args):
    r = subprocess.run([xmllint_path, "--noout", "--nonet", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return r.returncode, r.stdout.strip()


def main(argv):
    if len(argv) < 3 or argv[2] != "--interfaces" or "--other" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    dtd = argv[1]
    split = argv.index("--other")
    interfaces, others = argv[3:split], argv[split + 1:]

    path = shutil.which("xmllint")
    if path is None:
        print("xmllint not found (Debian: libxml2-utils); skipping")
        return 77

    failed = 0
    for f in interfaces + others:
        rc, out = xmllint(path, f)
        print(f"{'ok  ' if rc == 0 else 'FAIL'} well-formed: {f}{': ' + out if out else ''}")
        failed += rc != 0
    # Validate through the files' own DOCTYPE, resolved by a catalog to the local DTD: this also
    # checks that they declare the standard introspection DOCTYPE.
    with tempfile.TemporaryDirectory(prefix="vdisk-xml-") as tmp:
        catalog = os.path.join(tmp, "catalog.xml")
        with open(catalog, "w") as f:
            f.write(CATALOG.format(dtd=pathlib.Path(dtd).resolve().as_uri()))
        os.environ["XML_CATALOG_FILES"] = catalog
        for f in interfaces:
            rc, out = xmllint(path, "--valid", f)
            print(f"{'ok  ' if rc == 0 else 'FAIL'} valid (introspection DTD): {f}{': ' + out if out else ''}")
            failed += rc != 0

    # The check itself must be able to fail.
    bad = subprocess.run([path, "--noout", "--nonet", "-"], input="<node><interface></node>", text=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if bad.returncode == 0:
        print("FAIL xmllint accepted malformed XML")
        failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
