#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Regenerates the record seed corpus (tests/fuzz/corpus/record): layer and VM records and journal
intents as vdiskd writes them (daemon/store/record.c, store.c), plus a few that must be refused."""

import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "record")
os.makedirs(out, exist_ok=True)

A, B, C, D = ("%032x" % (0x1111 * k) for k in (1, 2, 3, 4))


def layer(lid, fmt="qcow2", backing=None, bfmt=None, vm="vm1", catalog=None, state="ready", data=None, raw=False,
          gen=1, size=1 << 30, inode=1234):
    o = {"schema": 1, "layer": lid, "file": f"{lid}.{fmt}", "format": fmt, "virtual_size": size,
         "backing_layer": backing, "backing_format": bfmt, "data_file": data}
    if data:
        o["data_file_raw"] = raw
        o["data_file_inode"] = 99
    o.update({"catalog_name": catalog, "vm": None if catalog else vm, "state": state, "generation": gen,
              "inode": inode})
    return o


def vm(name="vm1", uid=1000, gen=3, disks=(("vda", (A, B), None),)):
    return {"schema": 1, "name": name, "owner_uid": uid, "generation": gen,
            "disks": [dict({"name": n, "chain": list(c)}, **({"quarantine": q} if q else {})) for n, c, q in disks]}


def intent(op, commit, name, gen=0, new=(), drop=(), disk=None, chain=None, modify=(), unlink=()):
    o = {"schema": 1, "op": op, "commit": commit, "commit_name": name, "commit_generation": gen,
         "new_layers": list(new), "drop_layers": list(drop)}
    if unlink:
        o["unlink_after"] = [{"path": u[0], "dev": u[1], "inode": u[2], **({"mode": u[3]} if len(u) > 3 else {})}
                             for u in unlink]
    if disk:
        o["commit_disk"] = disk
        o["commit_chain"] = list(chain)
    if modify:
        o["modify"] = [{"layer": b["layer"], "before": b, "after": a} for b, a in modify]
    return o


seeds = {
    "layer-catalog.json": layer(A, catalog="debian-12", vm=None),
    "layer-raw-catalog.json": layer(C, fmt="raw", catalog="iso.img", vm=None, size=512 << 20),
    "layer-overlay.json": layer(B, backing=A, bfmt="qcow2", gen=7),
    "layer-raw-backing.json": layer(D, backing=C, bfmt="raw", state="creating"),
    "layer-data-file.json": layer(B, data=f"{B}.data", raw=True, state="modifying", gen=2**63, inode=2**64 - 1),
    "vm.json": vm(),
    "vm-disks.json": vm("web-01", 0, 12, (("vda", (B, A), None), ("vdb", (D, C), "layer D: header changed"),
                                          ("data.disk", (C,), None))),
    "vm-empty.json": vm("e", 4294967294, 0, ()),
    "intent-create.json": intent("CreateDisk", "vm", "vm1", 4, new=(B,)),
    "intent-delete.json": intent("DeleteVM", "vm-deleted", "vm1", drop=(A, B)),
    "intent-import.json": intent("ImportImage", "layer-ready", A, new=(A,)),
    "intent-delete-image.json": intent("DeleteImage", "layer-deleted", C, drop=(C,)),
    "intent-adopt-move.json": intent("AdoptDomainXML", "vm", "vm1", 5, new=(C, D),
                                     unlink=(("/var/lib/libvirt/images/top.qcow2", 2049, 131, 0o640),
                                             ("/srv/base image.raw", 2**64 - 1, 7))),
    "intent-commit.json": intent("Commit", "chain", "vm1", disk="vda", chain=(A,), drop=(B,),
                                 modify=((layer(A, catalog=None), layer(A, state="modifying", gen=2)),)),
    "intent-rebase.json": intent("Rebase", "chain", "vm1", disk="vda", chain=(B, D), new=(D,),
                                 modify=((layer(B, backing=A, bfmt="qcow2"), layer(B, backing=D, bfmt="qcow2", gen=2)),
                                         (layer(C, data=f"{C}.data"), layer(C, data=f"{C}.data", gen=3)))),
}
for name, o in seeds.items():
    with open(os.path.join(out, name), "w") as f:
        json.dump(o, f, indent=2)

# Refused: newer schema, nesting past the depth limit, trailing bytes, not an object, wrong types.
bad = {
    "bad-schema.json": json.dumps(dict(layer(A), schema=2)),
    "bad-deep.json": "[" * 9 + "]" * 9,
    "bad-deep-object.json": json.dumps({"schema": 1, "a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}),
    "bad-trailing.json": json.dumps(vm()) + " {}",
    "bad-array.json": "[1, 2]",
    "bad-unlink-relative.json": json.dumps(intent("AdoptDomainXML", "vm", "vm1", unlink=(("images/x", 1, 2),))),
    "bad-unlink-mode.json": json.dumps(intent("AdoptDomainXML", "vm", "vm1", unlink=(("/x", 1, 2, 0o10000),))),
    "bad-types.json": json.dumps(dict(layer(A), virtual_size=-1, generation="1")),
    "bad-unicode.json": '{"schema":1,"name":"v\\u0000m","op":"\\ud800","disks":[]}',
}
for name, text in bad.items():
    with open(os.path.join(out, name), "w") as f:
        f.write(text)
print(f"{len(seeds) + len(bad)} records in {out}")
