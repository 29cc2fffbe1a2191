#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Regenerates the AdoptDomainXML seed corpus (tests/fuzz/corpus/domain-xml): <disk> elements as
GetDomainXML and libvirt write them, and ones that must be refused. Paths are made up: the parser
opens nothing."""

import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "domain-xml")
os.makedirs(out, exist_ok=True)


def chain(formats, target="vda", top_extra="", end="<backingStore/>", disk_attrs="type='file' device='disk'"):
    """A <disk> whose layers have the given formats, top first."""
    inner = end
    for i in range(len(formats) - 1, 0, -1):
        inner = (f"<backingStore type='file'><format type='{formats[i]}'/>"
                 f"<source file='/var/lib/images/l{i}.{formats[i]}'/>{inner}</backingStore>")
    return (f"<disk {disk_attrs}>\n  <driver name='qemu' type='{formats[0]}'/>\n"
            f"  <source file='/var/lib/images/top.{formats[0]}'>{top_extra}</source>\n  {inner}\n"
            f"  <target dev='{target}' bus='virtio'/>\n</disk>\n")


seeds = {
    "one-qcow2.xml": chain(["qcow2"]),
    "one-raw.xml": chain(["raw"]),
    "chain3.xml": chain(["qcow2", "qcow2", "raw"], target="sda"),
    "deep.xml": chain(["qcow2"] * 20),
    "seclabel.xml": chain(["qcow2", "qcow2"], top_extra="<seclabel model='dac' relabel='no'/>"),
    # As libvirt's virsh dumpxml shows a running domain's disk (extra elements and attributes).
    "libvirt.xml": "<?xml version='1.0' encoding='UTF-8'?>\n" + chain(["qcow2", "qcow2"]).replace(
        "<target", "<alias name='virtio-disk0'/>\n  <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>\n  <target"),
    "comments.xml": "<!-- vm1 --><disk type=\"file\"><?pi x?><driver type=\"raw\"/><source file=\"/a&amp;b&#x20;c\"/>"
                    "<backingStore/><target dev=\"x.y-z_1\"/><![CDATA[text]]></disk>",
    # Refused.
    "bad-doctype.xml": "<!DOCTYPE disk [<!ENTITY a 'aaaa'>]><disk type='file'>&a;</disk>",
    "bad-no-end.xml": chain(["qcow2"], end=""),
    "bad-raw-backing.xml": chain(["raw", "qcow2"]),
    "bad-block.xml": chain(["qcow2"], disk_attrs="type='block' device='disk'"),
    "bad-cdrom.xml": chain(["raw"], disk_attrs="type='file' device='cdrom'"),
    "bad-datastore.xml": chain(["qcow2"], top_extra="<dataStore type='file'><format type='raw'/><source file='/d'/></dataStore>"),
    "bad-encryption.xml": chain(["qcow2"]).replace("<target", "<encryption format='luks'/><target"),
    "bad-format.xml": chain(["vmdk"]),
    "bad-relative.xml": chain(["qcow2"]).replace("/var/lib/images/top.qcow2", "../top.qcow2"),
    "bad-target.xml": chain(["qcow2"], target="../vda"),
    "bad-two-sources.xml": chain(["qcow2"]).replace("<target", "<source file='/b'/><target"),
    "bad-namespace.xml": "<d:disk xmlns:d='urn:x' type='file'/>",
    "bad-not-wellformed.xml": "<disk type='file'><driver type='qcow2'>",
}
for name, text in seeds.items():
    with open(os.path.join(out, name), "w") as f:
        f.write(text)
with open(os.path.join(out, "bad-nul.xml"), "wb") as f:
    f.write(chain(["raw"]).encode().replace(b"vda", b"v\0a"))
print(f"{len(seeds) + 1} documents in {out}")
