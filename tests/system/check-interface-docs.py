#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every member of the interface XML is documented and well-formed.

    check-interface-docs.py INTERFACE.xml...

- each method, signal and property is immediately preceded by a comment that starts with
  "Name:" and mentions every argument as "@arg:";
- every argument has a name and a valid single complete D-Bus type, method arguments a
  direction, signal arguments none;
- every property carries org.freedesktop.DBus.Property.EmitsChangedSignal."""

import re
import sys
import xml.etree.ElementTree as ET

from dbusfiles import load_interfaces, parse_with_comments

EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"
BASIC = set("ybnqiuxtdhsog")


def parse_type(sig, i=0, depth=0):
    """Returns the index after one complete type starting at sig[i], or raises ValueError."""
    if depth > 64 or i >= len(sig):
        raise ValueError("truncated or too deeply nested")
    c = sig[i]
    if c in BASIC or c == "v":
        return i + 1
    if c == "a":
        if i + 1 < len(sig) and sig[i + 1] == "{":
            if i + 2 >= len(sig) or sig[i + 2] not in BASIC:
                raise ValueError("dict key must be a basic type")
            j = parse_type(sig, i + 3, depth + 1)
            if j >= len(sig) or sig[j] != "}":
                raise ValueError("unterminated dict entry")
            return j + 1
        return parse_type(sig, i + 1, depth + 1)
    if c == "(":
        j = i + 1
        if j < len(sig) and sig[j] == ")":
            raise ValueError("empty struct")
        while j < len(sig) and sig[j] != ")":
            j = parse_type(sig, j, depth + 1)
        if j >= len(sig):
            raise ValueError("unterminated struct")
        return j + 1
    raise ValueError(f"unexpected {c!r}")


def single_complete_type(sig):
    try:
        return sig is not None and parse_type(sig) == len(sig)
    except ValueError:
        return False


def check_file(path):
    problems = []
    interfaces = load_interfaces([path])
    if not interfaces:
        problems.append("no <interface>")
    for iface in interfaces.values():
        for (kind, name), doc in iface.docs.items():
            where = f"{iface.name}: {kind} {name}"
            if doc is None or not doc.strip():
                problems.append(f"{where}: no documentation comment right before it")
                continue
            if not re.match(rf"\s*{re.escape(name)}:", doc):
                problems.append(f'{where}: its comment does not start with "{name}:"')
            args = iface.methods.get(name, []) if kind == "method" else \
                iface.signals.get(name, []) if kind == "signal" else []
            for arg in args:
                if arg[0] and f"@{arg[0]}:" not in doc:
                    problems.append(f'{where}: argument "{arg[0]}" is not documented as "@{arg[0]}:"')
        for name, args in iface.methods.items():
            for arg_name, arg_type, direction in args:
                if not arg_name:
                    problems.append(f"{iface.name}.{name}: an argument has no name")
                if not single_complete_type(arg_type):
                    problems.append(f"{iface.name}.{name}: argument {arg_name}: bad type {arg_type!r}")
                if direction not in ("in", "out"):
                    problems.append(f"{iface.name}.{name}: argument {arg_name}: bad direction {direction!r}")
        for name, args in iface.signals.items():
            for arg_name, arg_type in args:
                if not arg_name:
                    problems.append(f"{iface.name}.{name}: an argument has no name")
                if not single_complete_type(arg_type):
                    problems.append(f"{iface.name}.{name}: argument {arg_name}: bad type {arg_type!r}")
        for name, (ptype, access, annotations) in iface.properties.items():
            if not single_complete_type(ptype):
                problems.append(f"{iface.name}.{name}: bad property type {ptype!r}")
            if annotations.get(EMITS) not in ("const", "true", "invalidates", "false"):
                problems.append(f"{iface.name}.{name}: missing or bad {EMITS} annotation")

    # Signal arguments carry no direction.
    for iface_el in parse_with_comments(path).getroot().iter("interface"):
        for sig in iface_el.findall("signal"):
            for arg in sig.findall("arg"):
                if arg.get("direction") is not None:
                    problems.append(f"{iface_el.get('name')}.{sig.get('name')}: signal argument "
                                    f"{arg.get('name')} has a direction")
    return problems


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        try:
            problems = check_file(path)
        except (ET.ParseError, ValueError) as e:
            problems = [str(e)]
        for p in problems:
            print(f"{path}: {p}")
        failed |= bool(problems)
        if not problems:
            print(f"{path}: ok")

    # The checker itself must be able to fail.
    assert not single_complete_type("a{vs}") and not single_complete_type("ss")
    assert single_complete_type("a(ssssttb)") and single_complete_type("a{sv}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
