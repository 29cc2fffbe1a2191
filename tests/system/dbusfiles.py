# SPDX-License-Identifier: LGPL-2.1-or-later
"""Reading vdisk's D-Bus files: the interface XML (dbus-interfaces/) and the bus policy
(data/org.vdisk1.conf). Shared by the tests in this directory; standard library only."""

import xml.etree.ElementTree as ET

BUS_NAME = "org.vdisk1"
OWNER_USERS = {"root", "vdisk"}

# Standard members the policy lets everyone call, besides every method of vdisk's own
# interfaces. Everything else of the standard interfaces (Properties.Set, Peer.GetMachineId,
# ObjectManager) must stay denied.
STANDARD_ALLOWED = {
    ("org.freedesktop.DBus.Introspectable", "Introspect"),
    ("org.freedesktop.DBus.Properties", "Get"),
    ("org.freedesktop.DBus.Properties", "GetAll"),
    ("org.freedesktop.DBus.Peer", "Ping"),
}


class Interface:
    def __init__(self, name, path):
        self.name = name
        self.path = path
        self.methods = {}      # name -> [(arg name, type, direction)]
        self.signals = {}      # name -> [(arg name, type)]
        self.properties = {}   # name -> (type, access, {annotation: value})
        self.docs = {}         # (kind, name) -> comment text or None


def parse_with_comments(path):
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    return ET.parse(path, parser=parser)


def load_interfaces(paths):
    """Returns {interface name: Interface} for every interface in the given XML files."""
    interfaces = {}
    for path in paths:
        root = parse_with_comments(path).getroot()
        if root.tag != "node":
            raise ValueError(f"{path}: root element is <{root.tag}>, not <node>")
        for iface_el in root.findall("interface"):
            iface = Interface(iface_el.get("name"), path)
            if iface.name in interfaces:
                raise ValueError(f"{path}: interface {iface.name} defined twice")
            previous = None
            for el in iface_el:
                if el.tag is ET.Comment:
                    previous = el
                    continue
                name = el.get("name")
                kind = el.tag
                if kind == "method":
                    iface.methods[name] = [(a.get("name"), a.get("type"), a.get("direction", "in"))
                                           for a in el.findall("arg")]
                elif kind == "signal":
                    iface.signals[name] = [(a.get("name"), a.get("type")) for a in el.findall("arg")]
                elif kind == "property":
                    annotations = {a.get("name"): a.get("value") for a in el.findall("annotation")}
                    iface.properties[name] = (el.get("type"), el.get("access"), annotations)
                if kind in ("method", "signal", "property"):
                    iface.docs[(kind, name)] = previous.text if previous is not None else None
                previous = None
            interfaces[iface.name] = iface
    return interfaces


def _matches_bus_name(rule):
    dest = rule.get("send_destination")
    prefix = rule.get("send_destination_prefix")
    if dest is not None and dest in ("*", BUS_NAME):
        return True
    if prefix is not None and (BUS_NAME == prefix or BUS_NAME.startswith(prefix + ".")):
        return True
    return False


def _context(policy):
    for key in ("context", "user", "group", "at_console"):
        if policy.get(key) is not None:
            return f'{key}="{policy.get(key)}"'
    return "(no context)"


def check_policy(policy_root, interfaces):
    """Checks a parsed bus policy (an Element <busconfig>) against the interfaces.
    Returns a list of problems; empty means the policy is right."""
    problems = []
    if policy_root.tag != "busconfig":
        return [f"root element is <{policy_root.tag}>, not <busconfig>"]

    expected = set(STANDARD_ALLOWED)
    for iface in interfaces.values():
        expected |= {(iface.name, m) for m in iface.methods}
    vdisk_ifaces = set(interfaces)

    allowed = {}          # (interface, member) -> context of the rule
    owners = set()
    default_deny_seen = False

    for policy in policy_root.findall("policy"):
        ctx = _context(policy)
        is_default = policy.get("context") == "default"
        first_allow_index = None
        for index, rule in enumerate(policy):
            if rule.tag is ET.Comment:
                continue
            if rule.tag not in ("allow", "deny"):
                problems.append(f"unexpected element <{rule.tag}> in <policy {ctx}>")
                continue
            allow = rule.tag == "allow"
            attrs = dict(rule.attrib)

            # Ownership.
            if "own" in attrs or "own_prefix" in attrs:
                own = attrs.get("own", attrs.get("own_prefix"))
                if allow:
                    if "own_prefix" in attrs or own != BUS_NAME:
                        problems.append(f"<policy {ctx}> allows owning {own!r}: only {BUS_NAME} may be owned")
                    elif policy.get("user") not in OWNER_USERS:
                        problems.append(f"<policy {ctx}> allows owning {BUS_NAME}: only users "
                                        f"{sorted(OWNER_USERS)} may")
                    else:
                        owners.add(policy.get("user"))
                continue

            touches_vdisk = _matches_bus_name(rule) or any(
                (attrs.get("send_interface") or "").startswith(i) for i in vdisk_ifaces)
            if not touches_vdisk:
                if allow and any(k.startswith("send_") for k in attrs):
                    problems.append(f"<policy {ctx}> has an allow rule unrelated to {BUS_NAME}: {attrs}")
                continue

            if not allow:
                if is_default and attrs == {"send_destination": BUS_NAME}:
                    if first_allow_index is not None:
                        problems.append('the default-deny rule <deny send_destination="org.vdisk1"/> '
                                        "comes after allow rules, which it then cancels")
                    default_deny_seen = True
                elif first_allow_index is not None:
                    problems.append(f"<policy {ctx}> has a deny rule after allow rules, which silently "
                                    f"cancels part of the allow-list: {attrs}")
                continue

            # An allow rule for the daemon: it must name exactly one method call.
            if first_allow_index is None:
                first_allow_index = index
            if not is_default:
                problems.append(f"<policy {ctx}> widens the surface for some callers only: {attrs}; "
                                'the allow-list belongs to <policy context="default">')
            if attrs.get("send_destination") != BUS_NAME:
                problems.append(f"allow rule without send_destination=\"{BUS_NAME}\": {attrs}")
            if attrs.get("send_type", "method_call") != "method_call":
                problems.append(f"allow rule for a message type other than method_call: {attrs}")
            if "send_interface" not in attrs or "send_member" not in attrs:
                problems.append(f"allow rule without both send_interface and send_member "
                                f"(it would allow whole interfaces or everything): {attrs}")
                continue
            unknown = set(attrs) - {"send_destination", "send_type", "send_interface", "send_member"}
            if unknown:
                problems.append(f"allow rule with unexpected attributes {sorted(unknown)}: {attrs}")
            key = (attrs["send_interface"], attrs["send_member"])
            if key in allowed:
                problems.append(f"{key[0]}.{key[1]} is allowed twice")
            allowed[key] = ctx

    if not default_deny_seen:
        problems.append('<policy context="default"> lacks <deny send_destination="org.vdisk1"/> '
                        "before its allow rules: the policy must deny by default")
    if "root" not in owners:
        problems.append(f"root may not own {BUS_NAME}")

    for iface, member in sorted(expected - set(allowed)):
        if iface in vdisk_ifaces:
            problems.append(f"method {iface}.{member} (in {interfaces[iface].path}) is not allowed by the policy")
        else:
            problems.append(f"standard method {iface}.{member} is not allowed by the policy")
    for iface, member in sorted(set(allowed) - expected):
        if iface in vdisk_ifaces:
            problems.append(f"the policy allows {iface}.{member}, which is not a method of {iface} "
                            f"in {interfaces[iface].path}")
        else:
            problems.append(f"the policy allows {iface}.{member}, which is neither a vdisk method nor "
                            f"one of the allowed standard members")

    # The policy denies Properties.Set, so no property may be writable.
    for iface in interfaces.values():
        for name, (_, access, _) in iface.properties.items():
            if access != "read":
                problems.append(f"property {iface.name}.{name} has access={access!r}, but the policy "
                                "denies org.freedesktop.DBus.Properties.Set")
    return problems
