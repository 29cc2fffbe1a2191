# SPDX-License-Identifier: LGPL-2.1-or-later
"""The running daemon's introspection against dbus-interfaces/*.xml: every member the daemon exports is
in the XML with identical argument names, types and directions (properties: type, access and
EmitsChangedSignal), and every member of the XML is exported, except the methods listed in
NOT_YET_IMPLEMENTED. org.vdisk1.Manager on /org/vdisk1, org.vdisk1.Job on a live job object and
org.vdisk1.Lease on a live lease object."""

import os
import sys
import xml.etree.ElementTree as ET

import dbus

from vdisktest import BUS_NAME, PATH, Env, check, check_eq, finish, opts

# Methods of the contract that later issues implement. Anything else missing from the daemon fails.
NOT_YET_IMPLEMENTED = {"org.vdisk1.Manager": set()}

IFACES_DIR = os.environ.get("VDISK_INTERFACES_DIR") or os.path.join(os.path.dirname(__file__), "..", "..",
                                                                     "dbus-interfaces")


def members(iface):
    """{(kind, name): description} of one <interface> element."""
    out = {}
    for el in iface:
        if el.tag == "method":
            out[("method", el.get("name"))] = [(a.get("name"), a.get("type"), a.get("direction") or "in")
                                               for a in el.findall("arg")]
        elif el.tag == "signal":
            # Signal arguments are always "out"; a direction attribute, if any, must say so.
            out[("signal", el.get("name"))] = [(a.get("name"), a.get("type"), a.get("direction") or "out")
                                               for a in el.findall("arg")]
        elif el.tag == "property":
            ann = {a.get("name"): a.get("value") for a in el.findall("annotation")}
            # sd-bus writes no EmitsChangedSignal annotation for emits-change properties: absent means "true".
            emits = ann.get("org.freedesktop.DBus.Property.EmitsChangedSignal", "true")
            out[("property", el.get("name"))] = (el.get("type"), el.get("access"), emits)
    return out


def interfaces(xml_text):
    root = ET.fromstring(xml_text)
    return {i.get("name"): members(i) for i in root.findall("interface")
            if not i.get("name").startswith("org.freedesktop.DBus.")}, root


def compare(label, live, ref, allowed_missing):
    for key, desc in sorted(live.items()):
        if key not in ref:
            check(False, f"{label}: {key[0]} {key[1]} exported by the daemon is in the XML")
            continue
        check_eq(desc, ref[key], f"{label}: {key[0]} {key[1]} matches the XML (names, types, directions)")
    for key in sorted(ref):
        if key in live:
            continue
        if key[0] == "method" and key[1] in allowed_missing:
            print(f"# {label}: {key[1]} not implemented yet (listed in NOT_YET_IMPLEMENTED)")
            continue
        check(False, f"{label}: {key[0]} {key[1]} of the XML is exported by the daemon")
    for name in sorted(allowed_missing):
        check(("method", name) in ref, f"{label}: NOT_YET_IMPLEMENTED {name} is a method of the XML")


def introspect(env, path):
    obj = env.bus.get_object(BUS_NAME, path, introspect=False)
    return str(dbus.Interface(obj, "org.freedesktop.DBus.Introspectable").Introspect())


def reference(name):
    with open(os.path.join(IFACES_DIR, f"{name}.xml")) as f:
        ifs, _ = interfaces(f.read())
    check_eq(sorted(ifs), [name], f"{name}.xml defines exactly that interface")
    return ifs.get(name, {})


env = Env(sys.argv[1])
try:
    env.start()
    manager_ref = reference("org.vdisk1.Manager")
    job_ref = reference("org.vdisk1.Job")
    lease_ref = reference("org.vdisk1.Lease")
    check(len(manager_ref) >= 20 and len(job_ref) >= 10 and len(lease_ref) >= 6,
          "the reference XML files have their members")

    # ---- the Manager
    live, root = interfaces(introspect(env, PATH))
    check_eq(sorted(live), ["org.vdisk1.Manager"], "/org/vdisk1 exports org.vdisk1.Manager (and only it, besides "
                                                    "the standard interfaces)")
    compare("org.vdisk1.Manager", live.get("org.vdisk1.Manager", {}), manager_ref, NOT_YET_IMPLEMENTED["org.vdisk1.Manager"])

    # ---- a live Job object: start an import; finished jobs stay on the bus for 60 s
    src = os.path.join(env.tmp, "src.raw")
    with open(src, "wb") as f:
        f.write(b"\x5a" * (1 << 20))
    with open(src, "rb") as f:
        job = str(env.call("ImportImage", "src", "raw", dbus.types.UnixFd(f.fileno()), opts()))
    check_eq(env.wait_job(job)[0], "done", "import job done")
    check(job.startswith("/org/vdisk1/job/"), f"job object path ({job})")
    _, root = interfaces(introspect(env, PATH))
    children = {n.get("name") for n in root.findall("node")}
    check("job" in children, f"/org/vdisk1 lists the job subtree ({sorted(children)})")
    live, jroot = interfaces(introspect(env, job))
    check_eq(sorted(live), ["org.vdisk1.Job"], f"{job} exports org.vdisk1.Job")
    compare("org.vdisk1.Job", live.get("org.vdisk1.Job", {}), job_ref, set())
    _, sub = interfaces(introspect(env, "/org/vdisk1/job"))
    check(job.rsplit("/", 1)[1] in {n.get("name") for n in sub.findall("node")}, "/org/vdisk1/job lists the job")

    # ---- a live Lease object (OpenDisk), released at the end
    env.call("CreateVM", "vm", dbus.UInt32(0), opts())
    env.call("CreateDisk", "vm", "d", "src", dbus.UInt64(0), opts())
    lease, blockdev, fds = env.call("OpenDisk", "vm", "d", opts(read_only=True))
    for fd in fds:
        os.close(fd.take())
    lease = str(lease)
    check(lease.startswith("/org/vdisk1/lease/"), f"lease object path ({lease})")
    live, _ = interfaces(introspect(env, lease))
    check_eq(sorted(live), ["org.vdisk1.Lease"], f"{lease} exports org.vdisk1.Lease")
    compare("org.vdisk1.Lease", live.get("org.vdisk1.Lease", {}), lease_ref, set())
    dbus.Interface(env.bus.get_object(BUS_NAME, lease, introspect=False), "org.vdisk1.Lease").Release()
    # A job path that does not exist is no object at all.
    try:
        introspect(env, "/org/vdisk1/job/999999")
        err = None
    except dbus.exceptions.DBusException as e:
        err = e.get_dbus_name()
    check_eq(err, "org.freedesktop.DBus.Error.UnknownObject", "a job path that does not exist is an unknown object")
finally:
    env.close()
finish()
