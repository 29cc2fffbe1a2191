# SPDX-License-Identifier: LGPL-2.1-or-later
"""GetDomainXML and AdoptDomainXML (docs/dbus-api.md, docs/design.md "Operations").

GetDomainXML: the exact structure of the <disk> element (parsed, compared with GetChain) for chains of
1, 3 and 50 layers and for a layer with an external data file; the element placed in a minimal domain
validates with libvirt's own schema (virt-xml-validate; <dataStore> only where libvirt >= 10.10);
access for root, the owner and the admin group, AccessDenied for anyone else.

AdoptDomainXML: chains made by qemu-img with and without a backing format (qemu-img 7.2 cannot create
an overlay without -F any more, so the extension is stripped from a file we built), with absolute and
relative backing names, after the directory was moved (dangling names), with "move", a single raw
layer, GetDomainXML output taken back in (1 and 50 layers), and through vdiskctl. Afterwards: GetChain
as described, Verify clean, every header in the store names its sibling with a backing format,
qemu-img compare against the original guest view, qemu-img check clean, the caller's files unchanged
(copy) or moved (same inodes). Refusals with their exact error names, each leaving the store, the
caller's files and the canary unchanged; DOCTYPEs and entities are refused without anything being
read (an external entity naming a FIFO would hang the daemon if it opened it). Crashes at every
injected point, copying and moving: after a restart the disk is wholly there or wholly absent, no
orphan is left, and the caller's data survives.

Crafted images only ever name files inside the test's temporary directory (docs/security.md)."""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import dbus

from vdisktest import ROOT, Env, check, check_eq, finish, opts, qemu_img, require, root_only

KiB, MiB = 1 << 10, 1 << 20
E = "org.vdisk1.Error."
NOTFOUND, EXISTS, INUSE, UNSAFE, CORRUPT = E + "NotFound", E + "AlreadyExists", E + "InUse", E + "UnsafeImage", E + "Corrupt"
NOTSUP, TOODEEP, LIMIT = E + "NotSupported", E + "ChainTooDeep", E + "LimitExceeded"
INVALID = "org.freedesktop.DBus.Error.InvalidArgs"
DENIED = "org.freedesktop.DBus.Error.AccessDenied"
OWNER, OTHER, ADMIN_GID = 65534, 1, 4  # nobody owns the VMs; uid 1 (daemon) is admin only with group adm (4)
SIZE = 4 * MiB
XML_MAX = 1 << 20  # DOMAIN_XML_MAX_SIZE
CRASH_POINTS = ["after-journal", "after-layer-record", "after-file", "after-header", "before-commit", "after-commit"]
COPY_CRASH_POINTS = [p for p in CRASH_POINTS if p != "after-header"]  # only a move rewrites headers in place

VDISKD = sys.argv[1]
VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
require("qemu-img", "qemu-io", "virt-xml-validate", "setpriv")


def t(n):
    return dbus.UInt64(n)


def u(n):
    return dbus.UInt32(n)


def run(*argv, **kw):
    p = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{argv}: {p.stderr}")
    return p.stdout


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def qemu_io(fmt, path, cmd):
    run("qemu-io", "-f", fmt, "-c", cmd, path)


def qinfo(path, fmt="qcow2"):
    return json.loads(run("qemu-img", "info", "-f", fmt, "--output=json", path))


def strip_backing_format(path):
    """Removes the backing-format header extension (0xe2792aca) from a v3 qcow2 image we made: the
    image then names its backing file without a format, as images made by older qemu-img without -F
    did. The other extensions and the backing name move up to close the gap."""
    with open(path, "r+b") as f:
        hdr = bytearray(f.read(64 * KiB))
        hlen = int.from_bytes(hdr[100:104], "big")
        name_off, name_len = int.from_bytes(hdr[8:16], "big"), int.from_bytes(hdr[16:20], "big")
        name = bytes(hdr[name_off:name_off + name_len])
        exts, pos = [], hlen
        while True:
            magic, length = int.from_bytes(hdr[pos:pos + 4], "big"), int.from_bytes(hdr[pos + 4:pos + 8], "big")
            if magic == 0:
                break
            size = 8 + (length + 7) // 8 * 8
            if magic != 0xE2792ACA:
                exts.append(bytes(hdr[pos:pos + size]))
            pos += size
        new = b"".join(exts) + bytes(8)
        end = name_off + name_len
        hdr[hlen:end] = bytes(end - hlen)
        hdr[hlen:hlen + len(new)] = new
        hdr[hlen + len(new):hlen + len(new) + name_len] = name
        hdr[8:16] = (hlen + len(new)).to_bytes(8, "big")
        f.seek(0)
        f.write(hdr[:end])
    check(qinfo(path).get("backing-filename-format") is None, f"{os.path.basename(path)}: backing format stripped")


def make_chain(d, spec, absolute=True, with_format=True):
    """Files made by qemu-img in directory d, spec = [(name, format)] bottom first, each qcow2 layer backed
    by the previous one; every layer gets its own data. Returns [(path, format)] top first."""
    os.makedirs(d, exist_ok=True)
    out = []
    for i, (name, fmt) in enumerate(spec):
        p = os.path.join(d, name)
        if i == 0:
            run("qemu-img", "create", "-q", "-f", fmt, p, str(SIZE))
        else:
            below, bfmt = spec[i - 1]
            run("qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(d, below) if absolute else below, "-F", bfmt, p)
        qemu_io(fmt, p, f"write -P {0x41 + i} {i * 256}k 192k")
        out.insert(0, (p, fmt))
    if not with_format:
        for p, fmt in out[:-1]:
            strip_backing_format(p)
    return out


def disk_el(target, layers, end=True):
    """A <disk> element for layers [(path, format)] top first, as an administrator would write it."""
    root = ET.Element("disk", type="file", device="disk")
    ET.SubElement(root, "driver", name="qemu", type=layers[0][1])
    ET.SubElement(root, "source", file=layers[0][0])
    node = root
    for path, fmt in layers[1:]:
        node = ET.SubElement(node, "backingStore", type="file")
        ET.SubElement(node, "format", type=fmt)
        ET.SubElement(node, "source", file=path)
    if end:
        ET.SubElement(node, "backingStore")
    ET.SubElement(root, "target", dev=target, bus="virtio")
    return root


def layer_node(root, i):
    node = root
    for _ in range(i):
        node = node.find("backingStore")
    return node


def to_xml(el):
    return ET.tostring(el, encoding="unicode")


def disk_xml(target, layers, end=True):
    return to_xml(disk_el(target, layers, end))


def validate(env, disk_text):
    """virt-xml-validate on the <disk> element placed in a minimal domain."""
    path = os.path.join(env.tmp, "domain.xml")
    with open(path, "w") as f:
        f.write("<domain type='kvm'><name>t</name><memory>131072</memory><os><type>hvm</type></os><devices>"
                + disk_text + "</devices></domain>")
    p = subprocess.run(["virt-xml-validate", path, "domain"], capture_output=True, text=True)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def libvirt_version():
    p = subprocess.run(["virsh", "--version"], capture_output=True, text=True)
    m = re.match(r"(\d+)\.(\d+)", p.stdout.strip()) if p.returncode == 0 else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def chain(env, vm, disk):
    return [tuple(str(x) if isinstance(x, dbus.String) else (bool(x) if isinstance(x, dbus.Boolean) else int(x))
                  for x in layer) for layer in env.call("GetChain", vm, disk)]


def layer_record(env, layer):
    with open(os.path.join(env.store, "records", f"layer-{layer}.json")) as f:
        return json.load(f)


def expected_tree(env, vm, disk):
    """What GetDomainXML must return, from GetChain and the layer records, as nested tuples."""
    ch = chain(env, vm, disk)

    def source(layer, rel):
        rec = layer_record(env, layer)
        kids = ()
        if rec.get("data_file"):
            kids = (("dataStore", {"type": "file"}, (("format", {"type": "raw"}, ()),
                     ("source", {"file": os.path.join(env.store, "images", rec["data_file"])}, ()))),)
        return ("source", {"file": os.path.join(env.store, rel)}, kids)

    inner = ("backingStore", {}, ())
    for layer, rel, fmt, _bfmt, _vs, _alloc, _cat in reversed(ch[1:]):
        inner = ("backingStore", {"type": "file"}, (("format", {"type": fmt}, ()), source(layer, rel), inner))
    return ("disk", {"type": "file", "device": "disk"},
            (("driver", {"name": "qemu", "type": ch[0][2]}, ()), source(ch[0][0], ch[0][1]), inner,
             ("target", {"dev": disk, "bus": "virtio"}, ())))


def tree(el):
    return (el.tag, dict(el.attrib), tuple(tree(c) for c in el))


def check_get_xml(env, vm, disk, label, expect_valid=True):
    text = str(env.call("GetDomainXML", vm, disk))
    root = ET.fromstring(text)
    check(not text.lstrip().startswith("<?xml"), f"{label}: the element alone, without an XML declaration")
    check_eq(tree(root), expected_tree(env, vm, disk), f"{label}: exact structure of the <disk> element")
    depth, node = 0, root
    while node.find("backingStore") is not None and node.find("backingStore").get("type"):
        node, depth = node.find("backingStore"), depth + 1
    check_eq(depth + 1, len(chain(env, vm, disk)), f"{label}: one <backingStore> per backing layer")
    ok, out = validate(env, text)
    if expect_valid:
        check(ok, f"{label}: virt-xml-validate accepts it in a domain" + ("" if ok else f": {out}"))
    return text, ok


def hashes(paths):
    """Content, inode and mode of each file: what "unchanged" means for the caller's files."""
    return {p: (sha(p), os.lstat(p).st_ino, stat.S_IMODE(os.lstat(p).st_mode)) if os.path.lexists(p) else None
            for p in paths}


def store_top(env, vm, disk):
    return os.path.join(env.store, chain(env, vm, disk)[0][1])


def view(path, fmt, out):
    """The guest view of an image (qemu-img follows the chain of images we made) as a raw file."""
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", path, out)
    return out


def check_adopted(env, vm, disk, layers, label, expected_raw=None, original_top=None):
    """After an adoption: chain, Verify, headers with backing formats, content, qemu-img check."""
    ch = chain(env, vm, disk)
    check_eq([(c[2], c[3], c[6]) for c in ch],
             [(fmt, layers[i + 1][1] if i + 1 < len(layers) else "", False) for i, (_, fmt) in enumerate(layers)],
             f"{label}: GetChain lists the described layers, formats and backing formats")
    check_eq(len({c[0] for c in ch}), len(layers), f"{label}: every layer has a new id")
    sizes_ok = all(c[4] == (qinfo(p, f)["virtual-size"] if os.path.exists(p) else c[4]) for c, (p, f) in zip(ch, layers))
    check(sizes_ok, f"{label}: virtual sizes as in the files")
    check_eq([tuple(map(str, p)) for p in env.call("Verify", vm)], [], f"{label}: Verify is clean")
    for i, c in enumerate(ch):
        path = os.path.join(env.store, c[1])
        st = os.stat(path)
        check(stat.S_IMODE(st.st_mode) == 0o600 and st.st_nlink == 1, f"{label}: layer {i} is 0600 with one link")
        if c[2] != "qcow2":
            continue
        info = qinfo(path)
        want = (os.path.basename(ch[i + 1][1]), ch[i + 1][2]) if i + 1 < len(ch) else (None, None)
        check_eq((info.get("backing-filename"), info.get("backing-filename-format")), want,
                 f"{label}: layer {i}'s header names its new sibling with its format")
        p = subprocess.run(["qemu-img", "check", "-f", "qcow2", path], capture_output=True, text=True)
        check(p.returncode == 0, f"{label}: qemu-img check of layer {i} is clean" + ("" if p.returncode == 0 else p.stdout))
    top = os.path.join(env.store, ch[0][1])
    if original_top:
        p = subprocess.run(["qemu-img", "compare", "-f", original_top[1], "-F", ch[0][2], original_top[0], top],
                           capture_output=True, text=True)
        check(p.returncode == 0, f"{label}: qemu-img compare with the original chain: identical" + ("" if p.returncode == 0
                                                                                                    else p.stdout + p.stderr))
    if expected_raw:
        p = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", ch[0][2], expected_raw, top],
                           capture_output=True, text=True)
        check(p.returncode == 0, f"{label}: qemu-img compare with the original guest view: identical"
              + ("" if p.returncode == 0 else p.stdout + p.stderr))


def store_invariants(env, label):
    """No orphans: image files and ready layer records match one to one, the journal is empty, every
    private layer belongs to a disk."""
    recs = {}
    for n in os.listdir(os.path.join(env.store, "records")):
        with open(os.path.join(env.store, "records", n)) as f:
            recs[n] = json.load(f)
    files = set(os.listdir(os.path.join(env.store, "images")))
    layers = {r["file"]: r for n, r in recs.items() if n.startswith("layer-")}
    data = {r["data_file"] for r in layers.values() if r.get("data_file")}
    check_eq(sorted(files), sorted(set(layers) | data), f"{label}: image files and layer records match")
    check(all(r["state"] == "ready" for r in layers.values()), f"{label}: every layer record is ready")
    check_eq(os.listdir(os.path.join(env.store, "journal")), [], f"{label}: the journal is empty")
    used = set()
    for n, r in recs.items():
        if n.startswith("vm-"):
            for d in r["disks"]:
                used |= set(d["chain"])
    check({r["layer"] for r in layers.values() if r["vm"]} <= used, f"{label}: every private layer belongs to a disk")


class Refusals:
    def __init__(self, env, files):
        self.env, self.files = env, files
        self.count = 0

    def expect(self, label, want, xml, options=None, user=None, groups=None, timeout=60, files=(), contains=None,
               absent=None):
        env = self.env
        watched = list(self.files) + list(files)
        before_store, before_files = env.snapshot_store(), hashes(watched)
        start = time.monotonic()
        if user is None:
            err, msg = env.try_call("AdoptDomainXML", "vm2", xml, options if options is not None else opts(), timeout=timeout)
        else:
            err, msg = env.call_as(user, "AdoptDomainXML", "vm2", xml, {}, groups=groups)
        elapsed = time.monotonic() - start
        self.count += 1
        check_eq(err, want, f"{label}: {want.rsplit('.', 1)[1]}" + (f" ({msg})" if err != want else ""))
        msg = str(msg)
        print(f"     {label}: {msg[:200]}")
        check("\n" not in msg and msg != "", f"{label}: one-line message")
        if contains:
            check(contains in msg, f"{label}: the message says {contains!r} ({msg})")
        if absent:
            check(absent not in msg, f"{label}: the message does not contain {absent!r}")
        check_eq(env.snapshot_store(), before_store, f"{label}: store unchanged")
        check_eq(hashes(watched), before_files, f"{label}: the caller's files unchanged")
        check(env.canary_unchanged(), f"{label}: canary unchanged")
        return msg, elapsed


def crash_run(env, point, call):
    """Restarts vdiskd armed with VDISKD_CRASH_AT=point, runs call, expects the daemon to die there."""
    env.stop()
    daemon = env.start({"VDISKD_CRASH_AT": point})
    try:
        call()
        died = False
    except dbus.exceptions.DBusException:
        died = True
    try:
        daemon.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    check(died and daemon.returncode == -9, f"{point}: vdiskd killed itself at the crash point (rc {daemon.returncode})")
    env.wait_name_gone()
    env.start()


def main():
    env = Env(VDISKD, config_extra="[Access]\nAdminGroup=adm\n" if ROOT else "")  # a user: its own group (Env)
    started = time.monotonic()
    try:
        env.start()
        work = os.path.join(env.tmp, "work")
        os.makedirs(work)
        os.chmod(work, 0o755)

        # ------------------------------------------------------------------ GetDomainXML
        env.call("CreateImage", "base", "raw", t(SIZE), opts())
        env.call("CreateVM", "vm1", u(OWNER), opts())
        env.call("CreateDisk", "vm1", "vda", "", t(SIZE), opts())
        env.call("CreateDisk", "vm1", "vdb", "base", t(0), opts())
        env.call("Snapshot", "vm1", "vdb", opts())
        env.call("CreateDisk", "vm1", "vdc", "", t(SIZE), opts())
        for _ in range(49):
            env.call("Snapshot", "vm1", "vdc", opts())
        for disk, n in (("vda", 1), ("vdb", 3), ("vdc", 50)):
            check_eq(len(chain(env, "vm1", disk)), n, f"vm1/{disk} has {n} layer(s)")
            check_get_xml(env, "vm1", disk, f"GetDomainXML of a {n}-layer chain")
        xml_vdb = str(env.call("GetDomainXML", "vm1", "vdb"))
        xml_vdc = str(env.call("GetDomainXML", "vm1", "vdc"))

        # A layer with an external data file: <dataStore> inside its <source> (libvirt >= 10.10).
        err, res = env.try_call("CreateDisk", "vm1", "vdd", "", t(SIZE), opts(data_file=True))
        if check_eq(err, None, f"CreateDisk with data_file ({res})"):
            env.call("Snapshot", "vm1", "vdd", opts())
            text, ok = check_get_xml(env, "vm1", "vdd", "GetDomainXML with a data file", expect_valid=False)
            version = libvirt_version()
            if version and version >= (10, 10):
                check(ok, f"libvirt {version}: the schema accepts <dataStore>")
            else:
                check(not ok, f"libvirt {version}: the schema predates <dataStore> and rejects it, as documented")
            el = ET.fromstring(text)
            for ds in el.iter("dataStore"):
                ds_parent = next(p for p in el.iter() if ds in list(p))
                ds_parent.remove(ds)
            ok, out = validate(env, to_xml(el))
            check(ok, "GetDomainXML with a data file: valid once <dataStore> is taken out" + ("" if ok else f": {out}"))

        # Access: root, the owner, the admin group; anyone else is denied, whether the VM exists or not.
        if root_only("GetDomainXML as uids 65534 and 1"):
            err, res = env.call_as(OWNER, "GetDomainXML", "vm1", "vdb")
            check_eq((err, res), (None, xml_vdb), "GetDomainXML as the VM's owner: the same XML")
            err, res = env.call_as(OTHER, "GetDomainXML", "vm1", "vdb", groups=ADMIN_GID)
            check_eq((err, res), (None, xml_vdb), "GetDomainXML as an admin-group member")
            check_eq(env.call_as(OTHER, "GetDomainXML", "vm1", "vdb")[0], DENIED, "GetDomainXML as another uid: AccessDenied")
            check_eq(env.call_as(OTHER, "GetDomainXML", "ghost", "vdb")[0], DENIED,
                     "GetDomainXML of a missing VM as another uid: AccessDenied, not NotFound")
            check_eq(env.call_as(OWNER, "GetDomainXML", "vm1", "nope")[0], NOTFOUND, "GetDomainXML of a missing disk: NotFound")
        check_eq(env.try_call("GetDomainXML", "ghost", "vda")[0], NOTFOUND, "GetDomainXML of a missing VM as root: NotFound")
        check_eq(env.try_call("GetDomainXML", "vm1", "../x")[0], INVALID, "GetDomainXML with an invalid disk name")

        # vdiskctl xml prints the same element.
        p = subprocess.run([VDISKCTL, "xml", "vm1", "vdb"], capture_output=True, text=True)
        check_eq((p.returncode, p.stdout), (0, xml_vdb), "vdiskctl xml prints GetDomainXML's element")

        # ------------------------------------------------------------------ adoption
        if not root_only("AdoptDomainXML (uid 0 only), the rest of this test"):
            # What a user can check: an admin-group member may not adopt, and nothing changes.
            raw = os.path.join(work, "a.raw")
            with open(raw, "wb") as f:
                f.truncate(SIZE)
            before = env.snapshot_store()
            err, _ = env.try_call("AdoptDomainXML", "vm2", "<disk type='file' device='disk'><driver name='qemu' "
                                  f"type='raw'/><source file='{raw}'/><target dev='vda' bus='virtio'/></disk>", opts())
            check_eq(err, DENIED, "AdoptDomainXML by an admin-group member: AccessDenied")
            check_eq(env.snapshot_store(), before, "AdoptDomainXML refused: the store is unchanged")
            check(env.canary_unchanged(), "canary unchanged at the end")
            env.stop()
            finish()
        env.call("CreateVM", "vm2", u(OWNER), opts())
        env.call("CreateVM", "vm3", u(OWNER), opts())

        def adopt(label, vm, text, layers, move=False, expected_raw=None, original_top=None, want_disk=None):
            err, res = env.try_call("AdoptDomainXML", vm, text, opts(move=True) if move else opts())
            if not check_eq(err, None, f"{label}: AdoptDomainXML succeeds" + (f" ({res})" if err else "")):
                return None
            check_eq(str(res), want_disk or ET.fromstring(text).find("target").get("dev"),
                     f"{label}: returns the disk name from <target dev>")
            check_adopted(env, vm, str(res), layers, label, expected_raw, original_top)
            return str(res)

        # 1: qemu-img with -F, absolute backing names, a raw bottom; copied.
        s1 = make_chain(os.path.join(work, "s1"), [("base.raw", "raw"), ("mid.qcow2", "qcow2"), ("top.qcow2", "qcow2")])
        before = hashes([p for p, _ in s1])
        adopt("with -F, absolute names", "vm2", disk_xml("vda", s1), s1, original_top=s1[0])
        check_eq(hashes([p for p, _ in s1]), before, "with -F, absolute names: the caller's files unchanged")

        # 2: without -F (no backing format in the headers), relative names, a qcow2 bottom.
        s2 = make_chain(os.path.join(work, "s2"), [("b.qcow2", "qcow2"), ("m.qcow2", "qcow2"), ("t.qcow2", "qcow2")],
                        absolute=False, with_format=False)
        check_eq(qinfo(s2[0][0]).get("backing-filename"), "m.qcow2", "s2: the top names its backing relatively")
        before = hashes([p for p, _ in s2])
        adopt("without -F, relative names", "vm2", disk_xml("vdb", s2), s2, original_top=s2[0])
        check_eq(hashes([p for p, _ in s2]), before, "without -F, relative names: the caller's files unchanged")

        # 3: a moved directory: the absolute names in the headers dangle; the XML is the authority.
        s3 = make_chain(os.path.join(work, "s3-old"), [("base.raw", "raw"), ("mid.qcow2", "qcow2"), ("top.qcow2", "qcow2")])
        s3_raw = view(s3[0][0], "qcow2", os.path.join(work, "s3-view.raw"))
        os.rename(os.path.join(work, "s3-old"), os.path.join(work, "s3-new"))
        s3 = [(p.replace("s3-old", "s3-new"), f) for p, f in s3]
        check(subprocess.run(["qemu-img", "info", "--backing-chain", s3[0][0]], capture_output=True).returncode != 0,
              "s3: the moved chain no longer opens by its own names")
        adopt("moved directory (dangling names)", "vm2", disk_xml("vdc", s3), s3, expected_raw=s3_raw)

        # 4: move: the files become the store's (same inodes), their old names go.
        s4 = make_chain(os.path.join(work, "s4"), [("base.raw", "raw"), ("m.qcow2", "qcow2"), ("t.qcow2", "qcow2")],
                        absolute=False, with_format=False)
        s4_raw = view(s4[0][0], "qcow2", os.path.join(work, "s4-view.raw"))
        inodes = [os.stat(p).st_ino for p, _ in s4]
        for p, _ in s4:
            os.chmod(p, 0o644)
        disk = adopt("move", "vm2", disk_xml("vdd", s4), s4, move=True, expected_raw=s4_raw)
        if disk:
            check(not any(os.path.exists(p) for p, _ in s4), "move: the old names are gone")
            check_eq([os.stat(os.path.join(env.store, c[1])).st_ino for c in chain(env, "vm2", disk)], inodes,
                     "move: the store's files are the caller's inodes (nothing copied)")

        # 5: a single raw layer.
        s5 = make_chain(os.path.join(work, "s5"), [("disk.raw", "raw")])
        adopt("a single raw layer", "vm2", disk_xml("vde", s5), s5, original_top=s5[0])

        # 6: a qcow2 bottom whose header still names a backing file that is gone: the XML ends the chain.
        s6 = os.path.join(work, "s6")
        os.makedirs(s6)
        s6_img = os.path.join(s6, "bottom.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", os.path.join(s6, "gone.raw"), "-F", "raw", s6_img, str(SIZE))
        spec = {"driver": "qcow2", "backing": None, "file": {"driver": "file", "filename": s6_img}}
        run("qemu-io", "-c", "write -P 0x66 1M 64k", "json:" + json.dumps(spec))
        s6_raw = os.path.join(work, "s6-view.raw")
        run("qemu-img", "convert", "-O", "raw", "json:" + json.dumps(spec), s6_raw)
        adopt("a bottom naming a backing file that is gone", "vm2", disk_xml("vdh", [(s6_img, "qcow2")]),
              [(s6_img, "qcow2")], expected_raw=s6_raw)

        # 7: GetDomainXML's output adopted again (a copy of a store chain), 3 and 50 layers.
        for text, n in ((xml_vdb, 3), (xml_vdc, 50)):
            src = [(os.path.join(env.store, c[1]), c[2]) for c in chain(env, "vm1", ET.fromstring(text).find("target").get("dev"))]
            disk = adopt(f"GetDomainXML output of {n} layers", "vm3", text, src, original_top=src[0])
            if disk:
                ok, out = validate(env, str(env.call("GetDomainXML", "vm3", disk)))
                check(ok, f"GetDomainXML output of {n} layers: the adopted disk's XML validates" + ("" if ok else out))

        # 8: vdiskctl adopt (copy and --move).
        s7 = make_chain(os.path.join(work, "s7"), [("b.qcow2", "qcow2"), ("t.qcow2", "qcow2")])
        s7_raw = view(s7[0][0], "qcow2", os.path.join(work, "s7-view.raw"))
        xml_file = os.path.join(work, "s7.xml")
        with open(xml_file, "w") as f:
            f.write(disk_xml("vdf", s7))
        p = subprocess.run([VDISKCTL, "adopt", "vm2", xml_file], capture_output=True, text=True)
        check_eq((p.returncode, p.stdout.strip()), (0, "vdf"), f"vdiskctl adopt prints the new disk ({p.stderr.strip()})")
        check_adopted(env, "vm2", "vdf", s7, "vdiskctl adopt", expected_raw=s7_raw)
        with open(xml_file, "w") as f:
            f.write(disk_xml("vdg", s7))
        p = subprocess.run([VDISKCTL, "adopt", "--move", "vm2", xml_file], capture_output=True, text=True)
        check_eq((p.returncode, p.stdout.strip()), (0, "vdg"), f"vdiskctl adopt --move ({p.stderr.strip()})")
        check_adopted(env, "vm2", "vdg", s7, "vdiskctl adopt --move", expected_raw=s7_raw)
        check(not any(os.path.exists(p) for p, _ in s7), "vdiskctl adopt --move: the old names are gone")
        p = subprocess.run([VDISKCTL, "adopt", "vm2", xml_file], capture_output=True, text=True)
        check(p.returncode != 0 and p.stderr.strip() != "", "vdiskctl adopt of an existing disk fails: " + " ".join(p.stderr.split()))

        # ------------------------------------------------------------------ refusals
        rdir = os.path.join(work, "r")
        good = make_chain(rdir, [("base.raw", "raw"), ("mid.qcow2", "qcow2"), ("top.qcow2", "qcow2")])
        (top, _), (mid, _), (base, _) = good
        rq = os.path.join(rdir, "q.qcow2")  # a self-contained qcow2 for single-layer cases
        run("qemu-img", "create", "-q", "-f", "qcow2", rq, str(SIZE))
        canary = env.canary
        R = Refusals(env, [p for p, _ in good] + [rq])

        def el_without(path_fn):
            el = disk_el("new", good)
            path_fn(el)
            return to_xml(el)

        # What the XML must state.
        R.expect("top layer without <driver type>", INVALID, el_without(lambda el: el.find("driver").attrib.pop("type")),
                 contains="top layer has no format")
        R.expect("top layer without <driver>", INVALID, el_without(lambda el: el.remove(el.find("driver"))),
                 contains="top layer has no format")
        R.expect("backing layer without <format>", INVALID,
                 el_without(lambda el: layer_node(el, 1).remove(layer_node(el, 1).find("format"))),
                 contains="backing layer 1 has no format")
        R.expect("bottom layer without <format type>", INVALID,
                 el_without(lambda el: layer_node(el, 2).find("format").attrib.pop("type")),
                 contains="backing layer 2 has no format")
        R.expect("no terminating <backingStore/>", INVALID, disk_xml("new", good, end=False), contains="<backingStore/>")
        R.expect("no <backingStore> at all below the top", INVALID, disk_xml("new", good[:1], end=False),
                 contains="<backingStore")
        R.expect("unknown format", INVALID, el_without(lambda el: layer_node(el, 1).find("format").set("type", "vmdk")))
        R.expect("no <target>", INVALID, el_without(lambda el: el.remove(el.find("target"))), contains="<target>")
        R.expect("<target> without dev", INVALID, el_without(lambda el: el.find("target").attrib.pop("dev")))
        R.expect("invalid disk name in <target dev>", INVALID, disk_xml("../x", good))
        R.expect("no <source>", INVALID, el_without(lambda el: layer_node(el, 1).remove(layer_node(el, 1).find("source"))))
        R.expect("relative source path", INVALID, disk_xml("new", [("mid.qcow2", "qcow2")] + good[2:]))
        R.expect("two <backingStore> elements", INVALID,
                 el_without(lambda el: ET.SubElement(layer_node(el, 2), "backingStore")))
        R.expect("a raw layer with a backing layer below it", INVALID,
                 disk_xml("new", [(base, "raw"), (os.path.join(rdir, "q.qcow2"), "qcow2")]), contains="raw")
        R.expect("a raw layer in the middle", INVALID, disk_xml("new", [(top, "qcow2"), (base, "raw"), (rq, "qcow2")]))
        R.expect("the same file twice", INVALID, disk_xml("new", [(top, "qcow2"), (top, "qcow2")]), contains="same file")
        R.expect("<disk type='block'>", NOTSUP, el_without(lambda el: el.set("type", "block")))
        R.expect("<disk> without type", INVALID, el_without(lambda el: el.attrib.pop("type")))
        R.expect("<disk device='cdrom'>", NOTSUP, el_without(lambda el: el.set("device", "cdrom")))
        R.expect("<backingStore type='network'>", NOTSUP, el_without(lambda el: layer_node(el, 1).set("type", "network")))

        def add_datastore(el):
            ds = ET.SubElement(el.find("source"), "dataStore", type="file")
            ET.SubElement(ds, "format", type="raw")
            ET.SubElement(ds, "source", file=os.path.join(rdir, "data.raw"))
        R.expect("<dataStore> in the XML", NOTSUP, el_without(add_datastore), contains="dataStore")

        # Not XML, or not a <disk>.
        for label, text in (("empty string", ""), ("not XML", "this is not XML"),
                            ("unclosed element", disk_xml("new", good)[:-7]), ("two root elements", disk_xml("new", good) * 2),
                            ("undeclared entity", disk_xml("new", good).replace('dev="new"', 'dev="&x;"')),
                            ("root element <domain>", "<domain type='kvm'/>")):
            R.expect(f"malformed XML: {label}", INVALID, text)

        # DOCTYPEs and entities: refused before anything is read or expanded.
        fifo = os.path.join(env.tmp, "fifo")
        os.mkfifo(fifo)
        doc_good = disk_xml("new", good)
        cases = [
            ("external entity naming the canary", f'<!DOCTYPE disk [<!ENTITY c SYSTEM "file://{canary}">]>'
             + doc_good.replace('dev="new"', 'dev="&c;"')),
            ("external entity naming a FIFO", f'<!DOCTYPE disk [<!ENTITY f SYSTEM "file://{fifo}">]>'
             + doc_good.replace(f'file="{top}"', 'file="&f;"')),
            ("external parameter entity naming a FIFO", f'<!DOCTYPE disk [<!ENTITY % p SYSTEM "file://{fifo}"> %p;]>' + doc_good),
            ("external DTD naming a FIFO", f'<!DOCTYPE disk SYSTEM "file://{fifo}">' + doc_good),
            ("billion laughs", '<!DOCTYPE disk [<!ENTITY a "aaaaaaaaaa">'
             + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9))
             + "]>" + doc_good.replace('dev="new"', 'dev="&j;"')),
            ("internal entity", '<!DOCTYPE disk [<!ENTITY n "new">]>' + doc_good.replace('dev="new"', 'dev="&n;"')),
            ("XML declaration and DOCTYPE", '<?xml version="1.0"?>\n<!DOCTYPE disk>' + doc_good),
        ]
        for label, text in cases:
            msg, elapsed = R.expect(f"DOCTYPE: {label}", INVALID, text, timeout=30, contains="not accepted",
                                    absent="canary canary")
            check(elapsed < 10, f"DOCTYPE: {label}: refused at once ({elapsed:.1f} s)")
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            check(False, "nobody holds the FIFO open for reading")
        except OSError as e:
            check(e.errno == 6, f"nobody holds the FIFO open for reading ({e})")  # ENXIO

        # Size and depth.
        padded = doc_good.replace("<target", "<!--" + "x" * (XML_MAX - len(doc_good) - 7) + "--><target")
        check_eq(len(padded.encode()), XML_MAX, "an XML of exactly the size limit")
        R.expect("XML of exactly the limit is parsed (then: the VM has that disk)", EXISTS,
                 padded.replace('dev="new"', 'dev="vda"'))
        R.expect("XML one byte above the limit", LIMIT, padded.replace("<!--", "<!-- "))
        # (ElementTree cannot serialize that deep: the nesting is written by hand.)
        deep = ("<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/nonexistent/0'/>"
                + "".join(f"<backingStore type='file'><format type='qcow2'/><source file='/nonexistent/{i}'/>"
                          for i in range(1, 1025))
                + "<backingStore/>" + "</backingStore>" * 1024 + "<target dev='new'/></disk>")
        R.expect("1025 layers (MaxChainDepth 1024)", TOODEEP, deep, contains="1024")

        # Files: missing, symlinks, not regular.
        R.expect("missing file", NOTFOUND, disk_xml("new", [(os.path.join(rdir, "nope.qcow2"), "qcow2")]))
        R.expect("missing directory", NOTFOUND, disk_xml("new", [(os.path.join(rdir, "nope", "x.qcow2"), "qcow2")]))
        os.symlink("top.qcow2", os.path.join(rdir, "link-top.qcow2"))
        os.symlink(base, os.path.join(rdir, "link-base.raw"))
        R.expect("the top layer's path is a symlink", INVALID,
                 disk_xml("new", [(os.path.join(rdir, "link-top.qcow2"), "qcow2")] + good[1:]), contains="symbolic link")
        R.expect("a backing layer's path is a symlink", INVALID,
                 disk_xml("new", good[:2] + [(os.path.join(rdir, "link-base.raw"), "raw")]), contains="symbolic link")
        R.expect("a FIFO as a layer", INVALID, disk_xml("new", [(fifo, "raw")]), timeout=30, contains="not a regular file")
        R.expect("a directory as a layer", INVALID, disk_xml("new", [(rdir, "raw")]))
        R.expect("a path ending in /", INVALID, disk_xml("new", [(rdir + "/", "raw")]))

        # Content against the declared format.
        R.expect("qcow2 declared raw", UNSAFE, disk_xml("new", [(rq, "raw")]))
        R.expect("raw declared qcow2", UNSAFE, disk_xml("new", [(base, "qcow2")]))
        trunc = os.path.join(rdir, "trunc.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", trunc, str(SIZE))
        qemu_io("qcow2", trunc, "write -P 0x55 0 1M")
        os.truncate(trunc, 256 * KiB)
        R.expect("truncated qcow2 (tables past the end)", CORRUPT, disk_xml("new", [(trunc, "qcow2")]), files=[trunc])

        # Headers against the XML. Crafted images name only files of the temporary directory.
        evil = os.path.join(rdir, "evil.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", canary, "-F", "raw", evil, str(SIZE))
        R.expect("header names another existing file (absolute)", UNSAFE, disk_xml("new", [(evil, "qcow2"), (base, "raw")]),
                 files=[evil], contains="other than")
        evil_rel = os.path.join(rdir, "evil-rel.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "../../canary", "-F", "raw", evil_rel, str(SIZE))
        R.expect("header names another existing file (relative to the layer's directory)", UNSAFE,
                 disk_xml("new", [(evil_rel, "qcow2"), (base, "raw")]), files=[evil_rel])
        R.expect("header names an existing file where the XML ends the chain", UNSAFE, disk_xml("new", [(evil, "qcow2")]),
                 files=[evil], contains="ends the chain")
        R.expect("XML leaves out a layer the header names", UNSAFE, disk_xml("new", good[:2]))
        lie = os.path.join(rdir, "fmt-lie.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "mid.qcow2", "-F", "raw", lie, str(SIZE))
        R.expect("header's backing format disagrees with the XML", UNSAFE, disk_xml("new", [(lie, "qcow2")] + good[1:]),
                 files=[lie], contains="backing format")
        jname = os.path.join(rdir, "json.qcow2")
        jspec = json.dumps({"driver": "raw", "file": {"driver": "file", "filename": canary}})
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "json:" + jspec, "-F", "raw", jname, str(SIZE))
        R.expect("header's backing name is json:{…}", UNSAFE, disk_xml("new", [(jname, "qcow2"), (base, "raw")]),
                 files=[jname], contains="not a plain file name")
        df = os.path.join(rdir, "df.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={os.path.join(rdir, 'df.data')}", df, str(SIZE))
        R.expect("image with an external data file", UNSAFE, disk_xml("new", [(df, "qcow2")]),
                 files=[df, os.path.join(rdir, "df.data")], contains="data file")
        dfr = os.path.join(rdir, "dfr.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={os.path.join(rdir, 'dfr.data')},data_file_raw=on",
            dfr, str(SIZE))
        R.expect("image with a raw external data file", UNSAFE, disk_xml("new", [(dfr, "qcow2")]), files=[dfr])
        over_df = os.path.join(rdir, "over-df.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "df.qcow2", "-F", "qcow2", over_df, str(SIZE))
        R.expect("data-file image as a backing layer", UNSAFE, disk_xml("new", [(over_df, "qcow2"), (df, "qcow2")]),
                 files=[df, over_df], contains="backing layer 1")

        # In use by a QEMU (qemu-io holds the image open, with QEMU's locks, until its stdin closes).
        holder = subprocess.Popen(["qemu-io", "-f", "qcow2", top], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if "qemu-io" in open(f"/proc/{holder.pid}/cmdline").read() and \
                        any(os.path.realpath(f"/proc/{holder.pid}/fd/{fd}") == top for fd in os.listdir(f"/proc/{holder.pid}/fd")):
                    break
                time.sleep(0.05)
            R.expect("the top layer is in use by a QEMU", INUSE, disk_xml("new", good), contains="in use")
            R.expect("the top layer is in use by a QEMU (move)", INUSE, disk_xml("new", good), options=opts(move=True))
        finally:
            holder.stdin.close()
            holder.wait(timeout=20)

        # move: what it needs, each refused before anything moves.
        store_images = os.path.join(env.store, "images")
        vda = os.path.join(env.store, chain(env, "vm1", "vda")[0][1])
        R.expect("move of a file of the store", INVALID, disk_xml("new", [(vda, "qcow2")]), options=opts(move=True),
                 files=[vda], contains="already a file of the store")
        hl = os.path.join(rdir, "hardlinked.qcow2")
        os.link(rq, hl)
        R.expect("move of a file with two links", NOTSUP, disk_xml("new", [(hl, "qcow2")]), options=opts(move=True),
                 files=[hl])
        os.unlink(hl)
        shm = tempfile.mkdtemp(prefix="vdisk-test-", dir="/dev/shm") if os.path.isdir("/dev/shm") else None
        try:
            if shm and os.stat(shm).st_dev != os.stat(store_images).st_dev:
                other = make_chain(shm, [("b.raw", "raw"), ("t.qcow2", "qcow2")])
                R.expect("move across file systems", NOTSUP, disk_xml("new", other), options=opts(move=True),
                         files=[p for p, _ in other], contains="another file system")
                before = hashes([p for p, _ in other])
                err, res = env.try_call("AdoptDomainXML", "vm3", disk_xml("shm", other), opts())
                check_eq(err, None, f"the same chain copied across file systems ({res})")
                check_eq(hashes([p for p, _ in other]), before, "copy across file systems: the caller's files unchanged")
            else:
                print("note: no second file system for the cross-device move case")
        finally:
            if shm:
                shutil.rmtree(shm, ignore_errors=True)
        # A move refused for its bottom layer leaves every file where and as it was.
        R.expect("move refused for the bottom layer", UNSAFE, disk_xml("new", [(over_df, "qcow2"), (df, "qcow2")]),
                 options=opts(move=True), files=[df, over_df], contains="backing layer 1")

        # Arguments, access, existing names.
        R.expect("unknown option", INVALID, doc_good, options=opts(copy=True))
        R.expect("option move of the wrong type", INVALID, doc_good, options=opts(move="yes"))
        R.expect("existing disk name", EXISTS, disk_xml("vda", good), contains="already has")
        err, _ = env.try_call("AdoptDomainXML", "ghost", doc_good, opts())
        check_eq(err, NOTFOUND, "AdoptDomainXML into a missing VM: NotFound")
        err, _ = env.try_call("AdoptDomainXML", "../vm", doc_good, opts())
        check_eq(err, INVALID, "AdoptDomainXML with an invalid VM name: InvalidArgs")
        R.expect("as an admin-group member (root only)", DENIED, doc_good, user=OTHER, groups=ADMIN_GID)
        R.expect("as the VM's owner", DENIED, doc_good, user=OWNER)
        R.expect("as another uid", DENIED, doc_good, user=OTHER)
        print(f"{R.count} refusals checked")

        # The chain that was refused so often is still adoptable, and unchanged.
        adopt("the refusals' chain, finally", "vm3", disk_xml("good", good), good, original_top=good[0])

        # ------------------------------------------------------------------ crashes
        for mode in ("copy", "move"):
            for point in COPY_CRASH_POINTS if mode == "copy" else CRASH_POINTS:
                d = os.path.join(work, f"crash-{mode}-{point}")
                layers = make_chain(d, [("b.raw", "raw"), ("m.qcow2", "qcow2"), ("t.qcow2", "qcow2")], absolute=False,
                                    with_format=False)
                raw = view(layers[0][0], "qcow2", os.path.join(work, f"crash-{mode}-{point}.raw"))
                for p, _ in layers:
                    os.chmod(p, 0o640)  # not the store's 0600: a move changes it, a roll-back gives it back
                before = hashes([p for p, _ in layers])
                name = f"c-{mode}-{point}"
                text = disk_xml(name, layers)
                label = f"crash {mode} adopt:{point}"
                crash_run(env, f"adopt:{point}",
                          lambda: env.call("AdoptDomainXML", "vm3", text, opts(move=True) if mode == "move" else opts()))
                store_invariants(env, label)
                err, _ = env.error("GetChain", "vm3", name)
                committed = point == "after-commit"
                check_eq(err, None if committed else NOTFOUND, f"{label}: the disk is {'there' if committed else 'absent'}")
                if mode == "copy":
                    check_eq(hashes([p for p, _ in layers]), before, f"{label}: the caller's files unchanged")
                    if committed:
                        check_adopted(env, "vm3", name, layers, label, expected_raw=raw)
                    continue
                if committed:
                    # Crashed before the old names were removed: recovery removed them (the journal entry
                    # names them), so the store's files have one link each and Verify is clean.
                    check(not any(os.path.exists(p) for p, _ in layers), f"{label}: recovery removed the old names")
                    check_eq([tuple(map(str, p)) for p in env.call("Verify", "vm3")], [], f"{label}: Verify clean")
                    check_adopted(env, "vm3", name, layers, label, expected_raw=raw)
                    store_invariants(env, label)
                    continue
                check(all(os.path.exists(p) for p, _ in layers), f"{label}: the caller's files are still there")
                # Even after their headers were rewritten and their mode changed in the store (after-header,
                # before-commit): the roll-back gives them back byte for byte, with their mode.
                check_eq(hashes([p for p, _ in layers]), before, f"{label}: the caller's files unchanged")
                # And the same XML adopts the chain, content intact.
                err, res = env.try_call("AdoptDomainXML", "vm3", text, opts(move=True))
                check_eq(err, None, f"{label}: adopting again after the crash succeeds ({res})")
                if err is None:
                    check_adopted(env, "vm3", name, layers, f"{label}, again", expected_raw=raw)
        store_invariants(env, "after all crashes")

        check_eq(len([p for p in env.call("Verify", "vm2")]), 0, "vm2: Verify clean at the end")
        check(env.canary_unchanged(), "canary unchanged at the end")
        env.stop()
    finally:
        env.close()
    print(f"runtime {time.monotonic() - started:.1f} s")
    finish()


if __name__ == "__main__":
    main()
