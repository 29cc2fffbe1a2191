#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The bus policy's allow-list and the interface XML agree.

    check-bus-policy.py POLICY INTERFACE.xml...              check the real files
    check-bus-policy.py --self-test POLICY INTERFACE.xml...  check that the checker fails on
                                                             broken variants of them

Every method of org.vdisk1.Manager (and of Job and Lease) must be on the allow-list, and the
allow-list may name nothing else than those methods and the standard Introspect, Get, GetAll
and Ping; see dbusfiles.check_policy for the other rules (deny by default, one exact method
per rule, ownership by root and vdisk only, no writable property)."""

import copy
import sys
import xml.etree.ElementTree as ET

from dbusfiles import BUS_NAME, check_policy, load_interfaces


def allow_rule(interface, member, **extra):
    attrs = {"send_destination": BUS_NAME, "send_type": "method_call",
             "send_interface": interface, "send_member": member}
    attrs.update(extra)
    return ET.Element("allow", attrs)


def default_policy(root):
    for policy in root.findall("policy"):
        if policy.get("context") == "default":
            return policy
    raise SystemExit('self-test: the policy has no <policy context="default">')


def find_allow(policy, interface, member):
    for rule in policy.findall("allow"):
        if rule.get("send_interface") == interface and rule.get("send_member") == member:
            return rule
    raise SystemExit(f"self-test: the policy does not allow {interface}.{member}")


def mutations(root, interfaces):
    """Yields (description, policy root, interfaces), each of which must fail the check."""
    def variant():
        r = copy.deepcopy(root)
        return r, default_policy(r)

    r, p = variant()
    p.remove(find_allow(p, "org.vdisk1.Manager", "CreateImage"))
    yield "a Manager method missing from the allow-list", r, interfaces

    r, p = variant()
    p.append(allow_rule("org.freedesktop.DBus.Properties", "Set"))
    yield "Properties.Set allowed", r, interfaces

    r, p = variant()
    p.append(allow_rule("org.vdisk1.Manager", "Frobnicate"))
    yield "a member that is not in the interface XML", r, interfaces

    r, p = variant()
    p.append(allow_rule("org.vdisk1.Manager", "JobRemoved"))
    yield "a signal name allowed as a method", r, interfaces

    r, p = variant()
    p.append(ET.Element("allow", {"send_destination": BUS_NAME}))
    yield "a blanket allow for the destination", r, interfaces

    r, p = variant()
    p.append(ET.Element("allow", {"send_destination": BUS_NAME, "send_interface": "org.vdisk1.Manager"}))
    yield "a whole interface allowed", r, interfaces

    r, p = variant()
    deny = [d for d in p.findall("deny") if d.attrib == {"send_destination": BUS_NAME}][0]
    p.remove(deny)
    p.append(deny)
    yield "the default deny after the allow-list", r, interfaces

    r, p = variant()
    p.remove([d for d in p.findall("deny") if d.attrib == {"send_destination": BUS_NAME}][0])
    yield "no default deny", r, interfaces

    r, p = variant()
    p.append(ET.Element("allow", {"own": BUS_NAME}))
    yield "everyone may own the bus name", r, interfaces

    r, p = variant()
    extra = ET.SubElement(r, "policy", {"user": "nobody"})
    extra.append(allow_rule("org.vdisk1.Manager", "CreateImage"))
    yield "an allow rule outside the default context", r, interfaces

    r, p = variant()
    rule = find_allow(p, "org.vdisk1.Lease", "Release")
    rule.set("send_type", "signal")
    yield "an allow rule for signals", r, interfaces

    added = copy.deepcopy(interfaces)
    added["org.vdisk1.Manager"].methods["NewMethod"] = []
    yield "a method added to the interface XML only", copy.deepcopy(root), added

    writable = copy.deepcopy(interfaces)
    ptype, _, annotations = writable["org.vdisk1.Manager"].properties["Version"]
    writable["org.vdisk1.Manager"].properties["Version"] = (ptype, "readwrite", annotations)
    yield "a writable property while Set is denied", copy.deepcopy(root), writable


def main(argv):
    self_test = len(argv) > 1 and argv[1] == "--self-test"
    args = argv[2:] if self_test else argv[1:]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    policy_path, interface_paths = args[0], args[1:]
    root = ET.parse(policy_path).getroot()
    interfaces = load_interfaces(interface_paths)

    if "org.vdisk1.Manager" not in interfaces or not interfaces["org.vdisk1.Manager"].methods:
        print("no methods of org.vdisk1.Manager found in the interface XML", file=sys.stderr)
        return 1

    problems = check_policy(root, interfaces)
    if not self_test:
        n = sum(len(i.methods) for i in interfaces.values())
        for p in problems:
            print(f"{policy_path}: {p}")
        if problems:
            return 1
        print(f"{policy_path}: allow-list matches the {n} methods of {', '.join(sorted(interfaces))} "
              f"plus the standard read-only members")
        return 0

    if problems:
        print("self-test: the real files already fail the check:", *problems, sep="\n  ")
        return 1
    failures = 0
    for description, variant_root, variant_interfaces in mutations(root, interfaces):
        found = check_policy(variant_root, variant_interfaces)
        if found:
            print(f"caught: {description}: {found[0]}")
        else:
            print(f"NOT caught: {description}")
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
