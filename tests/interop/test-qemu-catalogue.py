#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""
The catalogue: vdisk's verdict on an image against QEMU 7.2's, over valid but unusual images users
meet and the corruptions QEMU's own qcow2 iotests craft (header fields, L1/L2/refcount entries,
snapshot tables, header extensions, bitmaps directories, compressed descriptors), plus files that
other formats' probes would claim.

    python3 test-qemu-catalogue.py /path/to/vdisk-img

Every image is made here, in a private temporary directory, by qemu-img/qemu-io (and
qemu-system-x86_64 -machine none for a snapshot with VM state), and corrupted by byte edits written
below; nothing is copied from QEMU's test suite. Names inside crafted images only name files in
that directory; a canary file there must stay untouched.

QEMU's verdict on a qcow2 image is "valid" when all of these succeed:
  qemu-img check -f qcow2       (opens it; exit 0: no corruption, no leak)
  qemu-io -r -c 'read 0 SIZE'   (reads every byte, backing files and data file included)
  qemu-io -c info              on a copy (opens it read-write, as a VM would)
vdisk's verdict is `vdisk-img info --format=qcow2 --check` "valid" (what Inspect and ImportImage
decide with, daemon/ops/verify.c), and a valid image must also map (`vdisk-img map`).
For files declared raw: QEMU's verdict is whether `qemu-img info` (format probing) calls the file
raw; vdisk's is `vdisk-img info --format=raw` "valid".

The rule: vdisk may be stricter than QEMU (refuse what QEMU accepts) only for the cases listed in
STRICTER with the risk that justifies it, and never for images QEMU writes in normal use (kind
"normal"); it must never call valid what QEMU finds corrupt or cannot read.

Exit status: 0 no disagreement, 1 a disagreement or a broken case, 77 qemu tools missing.
"""

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

KiB, MiB = 1 << 10, 1 << 20

# Cases where vdisk refuses an image QEMU accepts, and why that refusal protects someone.
STRICTER = {
    'header: size not a multiple of 512':
        'QEMU silently drops the tail; the virtual size vdisk would record is not what a VM sees',
    'header: version 0 magic declared raw':
        'a qcow2 magic in a raw disk: a later tool or an older QEMU could take the guest\'s data for a header',
    'header: padding after compression type not zero':
        'docs/qcow2.md: the padding must be zero; non-zero bytes there are fields vdisk does not know',
    'header: backing name offset 0, size 8':
        'the header gives a backing name length but no name; QEMU then ignores the length, vdisk does not guess',
    'header: backing name inside the header fields':
        'the backing name would be read from the header\'s own fields: a name made of binary numbers',
    'header: backing name offset without size':
        'the header points at a backing name of no length; vdisk does not guess which field is wrong',
    'header: incompatible bit 0 (dirty)':
        'refcounts may be stale; QEMU repairs them on its first read-write open, which vdisk never does for it '
        '(issue 16, item 2: Inspect and Import refuse alike and say how to repair it)',
    'header: incompatible dirty bit, lazy refcounts, refcounts exact':
        'as for the dirty bit: vdisk keeps no image marked dirty in the store (issue 16, item 2)',
    'ext: feature name table length not a multiple of 48':
        'a malformed extension is a malformed header; QEMU only uses the table for messages',
    'ext: duplicate feature name table':
        'an extension that appears twice leaves the reader to choose; vdisk does not choose',
    'ext: backing format empty':
        'an empty backing format makes QEMU probe the backing file\'s format: the format-confusion hole',
    'ext: data file extension without the incompatible bit':
        'the header names an external data file it says it does not use; a reader that sets the bit reads it',
    'L2: unallocated entry with the copied flag':
        'docs/qcow2.md: COPIED means "refcount is exactly one", which an unallocated cluster cannot have',
    'extended L2: zero flag bit 0 of the entry set':
        'docs/qcow2.md: bit 0 is reserved with extended L2 entries; a reader giving it its usual meaning reads zeros',
    'refcount: leak past the end of the file':
        'a non-zero refcount past the end is a leak as soon as the file grows (allocators skip the cluster)',
    'backing: name with a control character':
        'names are printed in messages, logs and domain XML; an escape sequence there is an attack on a terminal',
    'ext: end marker with a non-zero length (v2)':
        'a reader that skips the marker by its length finds more extensions (a backing format, say) that QEMU '
        'does not: two readers, two headers',
    'raw: fixed VHD (footer at the end)':
        'other tools (and QEMU given the .vhd name) read the footer as a VHD; a guest can write it',
    'raw: DMG trailer (koly) at the end':
        'QEMU probes DMG by file name; a file copied under a .dmg name would be parsed',
    'raw: VMDK descriptor, CRLF, blank lines, other comment':
        'vdisk\'s VMDK probe is a superset of QEMU\'s (blank lines with CR or tabs), so that no descriptor QEMU '
        'takes for VMDK is ever called raw',
    'raw: cloop header':
        'vdisk matches the cloop magic\'s first lines only, a superset of QEMU\'s probe',
}


class Broken(Exception):
    """The case itself could not be built as described (not a verdict)."""


def no_core():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Runner:
    def __init__(self, vdisk, tmp):
        self.vdisk = vdisk
        self.tmp = tmp
        self.env = dict(os.environ, LC_ALL='C')
        self.base_cache = {}
        self.lock = threading.Lock()

    def path(self, name):
        return os.path.join(self.tmp, name)

    def run(self, argv, check=True, stdin=None, timeout=60):
        p = subprocess.run(argv, cwd=self.tmp, input=stdin, capture_output=True, text=True, env=self.env,
                           timeout=timeout, preexec_fn=no_core, stdin=None if stdin is not None else subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise Broken(f'{" ".join(argv)}: exit {p.returncode}: {(p.stderr or p.stdout).strip()[:300]}')
        return p

    def qimg(self, *args):
        return self.run(['qemu-img', *args])

    def qio(self, name, *cmds, fmt='qcow2'):
        argv = ['qemu-io', '-f', fmt]
        for c in cmds:
            argv += ['-c', c]
        p = self.run(argv + [name])
        out = p.stdout + p.stderr
        if 'error' in out.lower() or 'failed' in out.lower():
            raise Broken(f'qemu-io {cmds}: {out.strip()[:300]}')


# ---- a small qcow2 reader/editor, written for these tests ----------------------------------------

L2_OFFSET_MASK = 0x00fffffffffffe00
EXT_END, EXT_BACKING_FORMAT, EXT_FEATURES, EXT_BITMAPS, EXT_CRYPTO, EXT_DATA_FILE = \
    0, 0xe2792aca, 0x6803f857, 0x23852875, 0x0537be77, 0x44415441


class Q:
    """A qcow2 file in memory: read the structures, poke bytes, write it back."""

    def __init__(self, path):
        self.path = path
        with open(path, 'rb') as f:
            self.b = bytearray(f.read())
        self.version = self.u32(4)
        self.cluster_bits = self.u32(20)
        self.cs = 1 << self.cluster_bits
        self.l1_size = self.u32(36)
        self.l1_off = self.u64(40)
        self.rt_off = self.u64(48)
        self.rt_clusters = self.u32(56)
        self.nb_snapshots = self.u32(60)
        self.snap_off = self.u64(64)
        self.hlen = 72 if self.version == 2 else self.u32(100)
        self.refcount_bits = 16 if self.version == 2 else 1 << self.u32(96)
        self.extl2 = self.version >= 3 and bool(self.u64(72) & 16)

    def u8(self, o): return self.b[o]
    def u16(self, o): return struct.unpack_from('>H', self.b, o)[0]
    def u32(self, o): return struct.unpack_from('>I', self.b, o)[0]
    def u64(self, o): return struct.unpack_from('>Q', self.b, o)[0]

    def p8(self, o, v): self.b[o] = v
    def p16(self, o, v): struct.pack_into('>H', self.b, o, v)
    def p32(self, o, v): struct.pack_into('>I', self.b, o, v)
    def p64(self, o, v): struct.pack_into('>Q', self.b, o, v)

    def save(self):
        with open(self.path, 'wb') as f:
            f.write(self.b)

    def truncate(self, n):
        del self.b[n:]

    # tables
    def l1_pos(self, i=0):
        return self.l1_off + 8 * i

    def l2_off(self, i=0):
        return self.u64(self.l1_pos(i)) & L2_OFFSET_MASK

    def l2_entry_size(self):
        return 16 if self.extl2 else 8

    def l2_pos(self, j, i=0):
        return self.l2_off(i) + self.l2_entry_size() * j

    def l2_entry(self, j, i=0):
        return self.u64(self.l2_pos(j, i))

    def data_off(self, j, i=0):
        return self.l2_entry(j, i) & L2_OFFSET_MASK

    def rb_off(self, k=0):
        return self.u64(self.rt_off + 8 * k) & ~0x1ff

    def refcount_pos(self, host):
        """Byte position of the 16-bit refcount of the cluster at host offset `host`."""
        if self.refcount_bits != 16:
            raise Broken('refcount edits need 16-bit refcounts')
        per_block = self.cs // 2
        idx = host >> self.cluster_bits
        rb = self.rb_off(idx // per_block)
        if rb == 0:
            raise Broken(f'no refcount block for cluster {idx}')
        return rb + 2 * (idx % per_block)

    def set_refcount(self, host, value):
        self.p16(self.refcount_pos(host), value)

    def refcount(self, host):
        return self.u16(self.refcount_pos(host))

    # header extensions
    def exts(self):
        """[(position, magic, length)] up to (not including) the end marker."""
        out, pos = [], self.hlen
        limit = self.cs if self.u64(8) == 0 else self.u64(8)
        while pos + 8 <= limit:
            magic, length = struct.unpack_from('>II', self.b, pos)
            if magic == EXT_END:
                break
            out.append((pos, magic, length))
            pos += 8 + (length + 7) // 8 * 8
        return out

    def ext(self, magic):
        for pos, m, length in self.exts():
            if m == magic:
                return pos, length
        raise Broken(f'no header extension {magic:#x}')

    def set_exts(self, items):
        """Rewrites the extension area (and moves the backing file name after it)."""
        name_off, name_len = self.u64(8), self.u32(16)
        name = bytes(self.b[name_off:name_off + name_len])
        area = b''
        for magic, data in items:
            area += struct.pack('>II', magic, len(data)) + data + bytes(-len(data) % 8)
        area += bytes(8)
        end = self.hlen + len(area) + name_len
        if end > self.cs:
            raise Broken('extensions do not fit cluster 0')
        old_end = max(self.hlen, name_off + name_len if name_len else 0)
        for pos, _, length in self.exts():
            old_end = max(old_end, pos + 8 + (length + 7) // 8 * 8 + 8)
        self.b[self.hlen:old_end] = bytes(old_end - self.hlen)
        self.b[self.hlen:self.hlen + len(area)] = area
        if name_len:
            self.b[self.hlen + len(area):end] = name
            self.p64(8, self.hlen + len(area))

    def ext_items(self):
        return [(m, bytes(self.b[pos + 8:pos + 8 + length])) for pos, m, length in self.exts()]

    # snapshots
    def snapshots(self):
        out, pos = [], self.snap_off
        for _ in range(self.nb_snapshots):
            id_len, name_len = self.u16(pos + 12), self.u16(pos + 14)
            extra = self.u32(pos + 36)
            out.append({'pos': pos, 'l1_off': self.u64(pos), 'l1_size': self.u32(pos + 8), 'extra': extra,
                        'id_len': id_len, 'name_len': name_len})
            pos += 40 + extra + id_len + name_len
            pos += -pos % 8
        return out

    # bitmaps
    def bitmaps_ext(self):
        pos, _ = self.ext(EXT_BITMAPS)
        return {'pos': pos + 8, 'nb': self.u32(pos + 8), 'dir_size': self.u64(pos + 16), 'dir_off': self.u64(pos + 24)}

    def bitmap_dir(self):
        e = self.bitmaps_ext()
        out, pos = [], e['dir_off']
        for _ in range(e['nb']):
            extra, name_len = self.u32(pos + 20), self.u16(pos + 18)
            out.append({'pos': pos, 'table_off': self.u64(pos), 'table_size': self.u32(pos + 8)})
            pos += 24 + extra + name_len
            pos += -pos % 8
        return out


# ---- base images (built once, copied per case) -------------------------------------------------

def base_std(r, name):
    r.qimg('create', '-q', '-f', 'qcow2', name, '8M')
    r.qio(name, 'write -P 0x11 0 128k', 'write -P 0x22 1M 64k')


def base_v2(r, name):
    r.qimg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', name, '8M')
    r.qio(name, 'write -P 0x11 0 128k', 'write -P 0x22 1M 64k')


def base_snap(r, name):
    base_std(r, name)
    r.qimg('snapshot', '-c', 's1', name)
    r.qio(name, 'write -P 0x33 0 512')


def raw_source(r, name, clusters, cs):
    with open(r.path(name), 'wb') as f:
        for i in range(clusters):
            f.write(bytes([0 if i % 3 == 2 else 0x10 + i]) * cs)


def base_comp(r, name, ctype='zlib'):
    raw_source(r, name + '.src', 6, 64 * KiB)
    r.qimg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', f'compression_type={ctype}', name + '.src', name)


def base_bitmap(r, name):
    base_std(r, name)
    r.qimg('bitmap', '--add', name, 'b0')
    r.qio(name, 'write -P 0x44 2M 64k')


def base_xl2(r, name):
    r.qimg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', name, '8M')
    r.qio(name, 'write -P 0x11 0 64k', 'write -P 0x22 66k 2k', 'write -z 70k 4k')


BASES = {'std': base_std, 'v2': base_v2, 'snap': base_snap, 'comp': base_comp, 'bitmap': base_bitmap,
         'xl2': base_xl2}


def from_base(r, base, name):
    with r.lock:
        if base not in r.base_cache:
            bname = f'base-{base}.qcow2'
            BASES[base](r, bname)
            r.base_cache[base] = bname
    shutil.copyfile(r.path(r.base_cache[base]), r.path(name))
    return Q(r.path(name))


# ---- verdicts ------------------------------------------------------------------------------------

def qemu_verdict(r, name):
    """(valid, reason) for a qcow2 image, by QEMU's tools."""
    p = r.run(['qemu-img', 'check', '-f', 'qcow2', name], check=False)
    if p.returncode != 0:
        lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith(('ERROR', 'Leaked', 'qemu-img'))]
        return False, f'check exit {p.returncode}: ' + (lines[0] if lines else '')
    # qemu-img check opened the image, so its virtual size is the header's.
    with open(r.path(name), 'rb') as f:
        size = struct.unpack('>Q', f.read(32)[24:32])[0]
    if size > 0:
        p = r.run(['qemu-io', '-r', '-f', 'qcow2', '-c', f'read 0 {size // 512 * 512}', name], check=False)
        out = (p.stdout + p.stderr).strip()
        if p.returncode != 0 or 'error' in out.lower() or 'failed' in out.lower():
            return False, 'read: ' + out.splitlines()[-1] if out else 'read failed'
    copy = name + '.rw'
    shutil.copyfile(r.path(name), r.path(copy))
    p = r.run(['qemu-io', '-f', 'qcow2', '-c', 'info', copy], check=False)
    os.unlink(r.path(copy))
    out = (p.stdout + p.stderr).strip()
    if p.returncode != 0 or 'error' in out.lower() or 'failed' in out.lower():
        return False, 'read-write open: ' + out.splitlines()[-1] if out else 'read-write open failed'
    return True, ''


def vdisk_verdict(r, name, fmt='qcow2'):
    p = r.run([r.vdisk, 'info', f'--format={fmt}', '--check', name], check=False)
    if p.returncode < 0:
        raise Broken(f'vdisk-img info killed by signal {-p.returncode}')
    if p.returncode != 0:
        return False, 'info exit %d: %s' % (p.returncode, p.stderr.strip()[:200])
    o = json.loads(p.stdout)
    if not o['valid']:
        return False, '; '.join(o['problems'])[:200]
    p = r.run([r.vdisk, 'map', f'--format={fmt}', name], check=False)
    if p.returncode != 0:
        raise Broken(f'vdisk-img says valid but cannot map it: {p.stderr.strip()[:200]}')
    return True, ''


def qemu_raw_verdict(r, name):
    p = r.run(['qemu-img', 'info', '--output=json', name], check=False)
    if p.returncode != 0:
        return False, 'probe: ' + p.stderr.strip()[:200]
    fmt = json.loads(p.stdout)['format']
    return fmt == 'raw', f'probed as {fmt}'


# ---- the catalogue -------------------------------------------------------------------------------

CASES = []   # (name, kind, fn); kind: normal (QEMU writes it in normal use), unusual, corrupt, raw


def case(name, kind='corrupt'):
    def deco(fn):
        CASES.append((name, kind, fn))
        return fn
    return deco


def edit(name, base, fn, kind='corrupt'):
    """A case made by editing a copy of a base image with fn(Q)."""
    def build(r, img):
        q = from_base(r, base, img)
        fn(q)
        q.save()
    CASES.append((name, kind, build))


def poke(name, base, fmt, off, value, kind='corrupt'):
    edit(name, base, lambda q: struct.pack_into(fmt, q.b, off, value(q) if callable(value) else value), kind)


# -- valid images, as QEMU writes them in normal use

def data_image(r, img, opts, size='4M', ops=None):
    r.qimg('create', '-q', '-f', 'qcow2', '-o', opts, img, size)
    r.qio(img, *(ops or ['write -P 0x11 0 100k', 'write -P 0x22 1M 3000', 'write -z 2M 64k',
                         'discard 0 8k', 'write -P 0x33 4190208 4096']))


for cs in [512 << i for i in range(13)]:
    CASES.append((f'valid: cluster_size={cs}', 'normal',
                  lambda r, img, cs=cs: data_image(r, img, f'cluster_size={cs}')))
for rb in (1, 2, 4, 8, 16, 32, 64):
    CASES.append((f'valid: refcount_bits={rb}', 'normal',
                  lambda r, img, rb=rb: data_image(r, img, f'refcount_bits={rb},cluster_size=4096')))
for cs in (16 * KiB, 64 * KiB, 2 * MiB):
    CASES.append((f'valid: extended_l2 cluster_size={cs}', 'normal',
                  lambda r, img, cs=cs: data_image(r, img, f'extended_l2=on,cluster_size={cs}', size=str(4 * cs), ops=[
                      'write -P 0x11 0 1k', f'write -P 0x12 {cs // 32 * 3} {cs // 32}', f'write -z {cs} {cs // 16}',
                      f'write -P 0x13 {2 * cs} {cs}', f'write -z -u {2 * cs + cs // 32} {cs // 32}'])))
for pre in ('off', 'metadata', 'falloc', 'full'):
    CASES.append((f'valid: preallocation={pre}', 'normal',
                  lambda r, img, pre=pre: data_image(r, img, f'preallocation={pre}', size='2M',
                                                     ops=['write -P 0x11 0 64k'])))
for ctype in ('zlib', 'zstd'):
    CASES.append((f'valid: compressed {ctype}', 'normal', lambda r, img, c=ctype: base_comp(r, img, c)))


@case('valid: compressed zstd, partly overwritten, snapshot', 'normal')
def _(r, img):
    base_comp(r, img, 'zstd')
    r.qimg('snapshot', '-c', 's1', img)
    r.qio(img, 'write -P 0x99 64k 512', 'write -z 192k 64k')


@case('valid: compressed with cluster_size=512', 'normal')
def _(r, img):
    raw_source(r, img + '.src', 24, 512)
    r.qimg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=512', img + '.src', img)


@case('valid: compressed with cluster_size=2M', 'normal')
def _(r, img):
    raw_source(r, img + '.src', 2, 2 * MiB)
    r.qimg('convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=2M', img + '.src', img)


@case('valid: qemu-io write -c (compressed writes)', 'normal')
def _(r, img):
    r.qimg('create', '-q', '-f', 'qcow2', img, '1M')
    r.qio(img, 'write -c -P 0x41 0 64k', 'write -c -P 0x42 128k 64k')


@case('valid: lazy_refcounts, closed cleanly', 'normal')
def _(r, img):
    data_image(r, img, 'lazy_refcounts=on')


@case('valid: compat=0.10 with data', 'normal')
def _(r, img):
    data_image(r, img, 'compat=0.10')


@case('valid: compat=0.10 with a snapshot', 'normal')
def _(r, img):
    data_image(r, img, 'compat=0.10')
    r.qimg('snapshot', '-c', 's1', img)
    r.qio(img, 'write -P 0x55 0 4k')


@case('valid: one snapshot after writes', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=65536')
    r.qimg('snapshot', '-c', 's1', img)


@case('valid: 20 snapshots', 'normal')
def _(r, img):
    r.qimg('create', '-q', '-f', 'qcow2', img, '4M')
    for i in range(20):
        r.qio(img, f'write -P {i + 1} {i * 4096} 4096')
        r.qimg('snapshot', '-c', f'snapshot-number-{i}', img)


@case('valid: snapshot deleted', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=65536')
    r.qimg('snapshot', '-c', 's1', img)
    r.qimg('snapshot', '-c', 's2', img)
    r.qio(img, 'write -P 0x66 0 64k')
    r.qimg('snapshot', '-d', 's1', img)


@case('valid: snapshot applied', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=65536')
    r.qimg('snapshot', '-c', 's1', img)
    r.qio(img, 'write -P 0x66 0 64k')
    r.qimg('snapshot', '-a', 's1', img)


@case('valid: snapshot with a 1-byte name and a 64-byte name', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=4096')
    r.qimg('snapshot', '-c', 'a', img)
    r.qimg('snapshot', '-c', 'n' * 64, img)


def savevm(r, img, tag):
    if not shutil.which('qemu-system-x86_64'):
        raise Broken('qemu-system-x86_64 is needed for a snapshot with VM state')
    r.run(['qemu-system-x86_64', '-machine', 'none', '-nodefaults', '-display', 'none', '-no-user-config',
           '-nic', 'none', '-drive', f'file={img},format=qcow2,if=none,id=d0', '-monitor', 'stdio'],
          stdin=f'savevm {tag}\nquit\n', timeout=60)


@case('valid: snapshot with VM state (savevm)', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=65536')
    savevm(r, img, 'vm1')
    info = json.loads(r.qimg('info', '--output=json', img).stdout)
    if not any(s.get('vm-state-size', 0) > 0 for s in info.get('snapshots', [])):
        raise Broken('savevm left no VM state')


@case('valid: VM state snapshot, then a disk snapshot', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=4096')
    savevm(r, img, 'vm1')
    r.qio(img, 'write -P 0x77 0 8k')
    r.qimg('snapshot', '-c', 'disk', img)


@case('valid: persistent bitmap', 'normal')
def _(r, img):
    base_bitmap(r, img)


@case('valid: bitmaps: granularity, disabled, merged, one removed', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=4096')
    r.qimg('bitmap', '--add', '-g', '512', img, 'fine')
    r.qimg('bitmap', '--add', '-g', '1M', img, 'coarse')
    r.qimg('bitmap', '--add', '--disable', img, 'off')
    r.qio(img, 'write -P 0x12 0 300k')
    r.qimg('bitmap', '--add', img, 'merged')
    r.qimg('bitmap', '--merge', 'fine', img, 'merged')
    r.qimg('bitmap', '--remove', img, 'coarse')


@case('valid: external data file', 'normal')
def _(r, img):
    data_image(r, img, f'data_file={img}.data')


@case('valid: external data file, data_file_raw', 'normal')
def _(r, img):
    data_image(r, img, f'data_file={img}.data,data_file_raw=on')


@case('valid: backing chain, backing format qcow2', 'normal')
def _(r, img):
    data_image(r, img + '.base', 'cluster_size=65536')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.base', '-F', 'qcow2', img)
    r.qio(img, 'write -P 0x88 64k 4k')


@case('valid: backing chain, backing format raw', 'normal')
def _(r, img):
    with open(r.path(img + '.base'), 'wb') as f:
        f.write(b'\x5a' * (1 * MiB))
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.base', '-F', 'raw', img)
    r.qio(img, 'write -P 0x88 64k 4k')


@case('valid: three-layer chain', 'normal')
def _(r, img):
    data_image(r, img + '.0', 'cluster_size=4096')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.0', '-F', 'qcow2', img + '.1')
    r.qio(img + '.1', 'write -P 0x81 0 4k')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.1', '-F', 'qcow2', img)
    r.qio(img, 'write -P 0x82 8k 4k')


@case('valid: backing without a backing format (old QEMU)', 'unusual')
def _(r, img):
    data_image(r, img + '.base', 'cluster_size=65536')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.base', '-F', 'qcow2', img)
    q = Q(r.path(img))
    q.set_exts([(m, d) for m, d in q.ext_items() if m != EXT_BACKING_FORMAT])
    q.save()


@case('valid: virtual size 0', 'normal')
def _(r, img):
    r.qimg('create', '-q', '-f', 'qcow2', img, '0')


@case('valid: odd requested size (rounded up by qemu-img)', 'normal')
def _(r, img):
    r.qimg('create', '-q', '-f', 'qcow2', img, '1000')


@case('valid: resized larger (L1 grows)', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=512')
    r.qimg('resize', '-q', img, '64M')
    r.qio(img, 'write -P 0x21 60M 4k')


@case('valid: resized smaller', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=4096')
    r.qimg('resize', '-q', '--shrink', img, '2M')


@case('valid: amended to compat=0.10', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=4096')
    r.qimg('amend', '-o', 'compat=0.10', img)


@case('valid: amended to refcount_bits=64, then 1', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=4096')
    r.qimg('amend', '-o', 'refcount_bits=64', img)
    r.qimg('amend', '-o', 'refcount_bits=1', img)


@case('valid: converted from a chain, compressed', 'normal')
def _(r, img):
    data_image(r, img + '.base', 'cluster_size=65536')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.base', '-F', 'qcow2', img + '.top')
    r.qio(img + '.top', 'write -P 0x88 64k 4k')
    r.qimg('convert', '-c', '-O', 'qcow2', img + '.top', img)


@case('valid: committed into its backing file', 'normal')
def _(r, img):
    data_image(r, img, 'cluster_size=65536')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img, '-F', 'qcow2', img + '.top')
    r.qio(img + '.top', 'write -P 0x88 64k 200k')
    r.qimg('commit', '-q', img + '.top')


@case('valid: rebased onto nothing', 'normal')
def _(r, img):
    data_image(r, img + '.base', 'cluster_size=65536')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.base', '-F', 'qcow2', img)
    r.qio(img, 'write -P 0x88 64k 4k')
    r.qimg('rebase', '-b', '', img)


@case('valid: dirty lazy-refcounts image after a crash', 'unusual')
def _(r, img):
    r.qimg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', img, '4M')
    r.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x12 0 256k', '-c', 'abort', img], check=False)


def luks_create(r, img, fmt, opts):
    # qemu-img benchmarks the key derivation, which fails now and then on a busy CPU: retry.
    for it in (10, 100, 500):
        p = r.run(['qemu-img', 'create', '-q', '--object', 'secret,id=s0,data=catalogue', '-f', fmt, '-o',
                   opts.format(it=it), img, '1M'], check=False)
        if p.returncode == 0:
            return
        if os.path.exists(r.path(img)):
            os.unlink(r.path(img))
    raise Broken(f'qemu-img cannot create a LUKS image: {p.stderr.strip()[:200]}')


@case('valid: LUKS-encrypted', 'unusual')
def _(r, img):
    luks_create(r, img, 'qcow2', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time={it}')


# -- header fields out of range (the edits of iotests 080 and friends, on our own images)

poke('header: version 1', 'std', '>I', 4, 1)
poke('header: version 4', 'std', '>I', 4, 4)
poke('header: version 0', 'std', '>I', 4, 0)
poke('header: version 3 on a version 2 layout', 'v2', '>I', 4, 3)
for bits in (0, 8, 13, 22, 31, 63):
    poke(f'header: cluster_bits {bits}', 'std', '>I', 20, bits)
poke('header: size not a multiple of 512', 'std', '>Q', 24, 8 * MiB - 100, kind='unusual')
poke('header: size 0 with data', 'std', '>Q', 24, 0, kind='unusual')
poke('header: size larger, still covered by the L1 table', 'std', '>Q', 24, 256 * MiB, kind='unusual')
poke('header: size past what the L1 table covers', 'std', '>Q', 24, 1 << 30)
poke('header: size 2^62', 'std', '>Q', 24, 1 << 62)
poke('header: size 2^64-512', 'std', '>Q', 24, (1 << 64) - 512)
poke('header: crypt_method 1 (AES)', 'std', '>I', 32, 1)
poke('header: crypt_method 2 (LUKS) without its extension', 'std', '>I', 32, 2)
poke('header: crypt_method 3', 'std', '>I', 32, 3)
poke('header: l1_size 0 with data', 'std', '>I', 36, 0)
poke('header: l1_size 0xffffffff', 'std', '>I', 36, 0xffffffff)
poke('header: l1_size 0x7fffffff', 'std', '>I', 36, 0x7fffffff)
poke('header: l1_size 0x10000 (past the end of the file)', 'std', '>I', 36, 0x10000)
poke('header: l1_size 2 (larger than needed)', 'std', '>I', 36, 2, kind='unusual')
poke('header: l1_table_offset unaligned', 'std', '>Q', 40, lambda q: q.l1_off + 0x200)
poke('header: l1_table_offset past the end', 'std', '>Q', 40, 0x7fffffff0000)
poke('header: l1_table_offset 0x1234567890abcdef', 'std', '>Q', 40, 0x1234567890abcdef)
poke('header: l1_table_offset 0 (the header)', 'std', '>Q', 40, 0)
poke('header: l1_table_offset on the refcount table', 'std', '>Q', 40, lambda q: q.rt_off)
poke('header: refcount_table_offset unaligned', 'std', '>Q', 48, 0x1234567890abcdef)
poke('header: refcount_table_offset past the end', 'std', '>Q', 48, 0xffffffff0000)
poke('header: refcount_table_offset 0', 'std', '>Q', 48, 0)
poke('header: refcount_table_offset on the L1 table', 'std', '>Q', 48, lambda q: q.l1_off)
poke('header: refcount_table_clusters 0', 'std', '>I', 56, 0)
poke('header: refcount_table_clusters 0xffffffff', 'std', '>I', 56, 0xffffffff)
poke('header: refcount_table_clusters 0x20001', 'std', '>I', 56, 0x20001)
poke('header: refcount_table_clusters 2 (into the refcount block)', 'std', '>I', 56, 2)
poke('header: nb_snapshots 0xffffffff', 'std', '>I', 60, 0xffffffff)
poke('header: nb_snapshots 1, snapshots_offset 0', 'std', '>I', 60, 1)
poke('header: nb_snapshots 0x7fffffff', 'std', '>I', 60, 0x7fffffff)
edit('header: snapshots_offset unaligned, nb_snapshots 0', 'std', lambda q: q.p64(64, 0x1234567890abcdef),
     kind='unusual')
edit('header: nb_snapshots 0xffff, snapshots_offset past the end', 'std',
     lambda q: (q.p64(64, 0xffffffff0000), q.p32(60, 0xffff)))
poke('header: snapshots_offset unaligned', 'snap', '>Q', 64, lambda q: q.snap_off + 8)
poke('header: snapshots_offset past the end', 'snap', '>Q', 64, 0x7fffff000000)
poke('header: nb_snapshots 2, one entry', 'snap', '>I', 60, 2)
poke('header: snapshots_offset on the L1 table', 'snap', '>Q', 64, lambda q: q.l1_off)
for bit, what in ((0, 'dirty'), (1, 'corrupt'), (2, 'external data file'), (3, 'compression type'),
                  (4, 'extended L2'), (5, 'unknown 5'), (63, 'unknown 63')):
    poke(f'header: incompatible bit {bit} ({what})', 'std', '>Q', 72, 1 << bit)
poke('header: incompatible dirty bit, lazy refcounts, refcounts exact', 'std', '>Q', 72, 1, kind='unusual')
poke('header: compatible bit 0 (lazy refcounts) on a clean image', 'std', '>Q', 80, 1, kind='unusual')
poke('header: unknown compatible bit 7', 'std', '>Q', 80, 1 << 7, kind='unusual')
poke('header: unknown compatible bit 63', 'std', '>Q', 80, 1 << 63, kind='unusual')
poke('header: autoclear bit 0 (bitmaps) without the extension', 'std', '>Q', 88, 1, kind='unusual')
poke('header: autoclear bit 1 (raw data file) without a data file', 'std', '>Q', 88, 2, kind='unusual')
poke('header: unknown autoclear bit 17', 'std', '>Q', 88, 1 << 17, kind='unusual')
for order, what in ((7, 'above 6'), (3, 'narrower than written'), (5, 'wider than written'), (0xffffffff, 'huge')):
    poke(f'header: refcount_order {order} ({what})', 'std', '>I', 96, order)
for hl in (0, 96, 100, 104, 120, 0x10000, 0xffffffff):
    poke(f'header: header_length {hl}', 'std', '>I', 100, hl, kind='unusual' if hl == 104 else 'corrupt')
poke('header: compression type 1 without the bit', 'std', '>B', 104, 1)
edit('header: compression type 2 with the bit', 'std', lambda q: (q.p64(72, 8), q.p8(104, 2)))
edit('header: unknown compression type bit set with type 0', 'std', lambda q: q.p64(72, 8), kind='unusual')


@case('header: zstd image claims zlib')
def _(r, img):
    base_comp(r, img, 'zstd')
    q = Q(r.path(img))
    q.p64(72, q.u64(72) & ~8)
    q.p8(104, 0)
    q.save()


edit('header: padding after compression type not zero', 'std', lambda q: q.p8(107, 0xff), kind='unusual')
edit('header: backing name size 0xffffffff at 0x1000', 'std', lambda q: (q.p64(8, 0x1000), q.p32(16, 0xffffffff)))
edit('header: backing name size 1024 bytes', 'std', lambda q: (q.p64(8, 0x1000), q.p32(16, 1024),
                                                                 q.b.__setitem__(slice(0x1000, 0x1400), b'a' * 1024)))
edit('header: backing name past cluster 0', 'std', lambda q: (q.p64(8, 0xfffe), q.p32(16, 16)))
edit('header: backing name offset 0, size 8', 'std', lambda q: (q.p64(8, 0), q.p32(16, 8)))
edit('header: backing name inside the header fields', 'std', lambda q: (q.p64(8, 24), q.p32(16, 8)))
edit('header: backing name offset without size', 'std', lambda q: (q.p64(8, 0x1000), q.p32(16, 0)), kind='unusual')


# -- header extensions

def with_exts(fn):
    def apply(q):
        q.set_exts(fn(q.ext_items()))
    return apply


edit('ext: unknown extension', 'std', with_exts(lambda e: e + [(0x12345678, b'hello')]), kind='unusual')
edit('ext: unknown extension of length 0', 'std', with_exts(lambda e: [(0x0badcafe, b'')] + e), kind='unusual')
edit('ext: huge unknown extension length', 'std',
     lambda q: (q.set_exts([(0x12345678, b'')]), q.p32(q.hlen + 4, 0x7fffffff)))
edit('ext: huge unknown extension, backing offset after it', 'std',
     lambda q: (q.set_exts([(0x12345678, b'')]), q.p32(q.hlen + 4, 0x7fffffff), q.p64(8, q.hlen + 4)))
edit('ext: extension length past the cluster', 'std',
     lambda q: (q.set_exts([(0x12345678, b'')]), q.p32(q.hlen + 4, q.cs)))
edit('ext: feature name table length not a multiple of 48', 'std',
     with_exts(lambda e: [(m, d[:-8] if m == EXT_FEATURES else d) for m, d in e]), kind='unusual')
edit('ext: duplicate feature name table', 'std',
     with_exts(lambda e: e + [(m, d) for m, d in e if m == EXT_FEATURES]), kind='unusual')
edit('ext: no feature name table', 'std', with_exts(lambda e: [(m, d) for m, d in e if m != EXT_FEATURES]),
     kind='unusual')
edit('ext: backing format extension without a backing file', 'std',
     with_exts(lambda e: [(EXT_BACKING_FORMAT, b'qcow2')] + e), kind='unusual')


@case('ext: backing format foo (iotest 114)')
def _(r, img):
    data_image(r, img + '.base', 'cluster_size=65536')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.base', '-F', 'qcow2', img)
    q = Q(r.path(img))
    q.set_exts([(m, b'foo' if m == EXT_BACKING_FORMAT else d) for m, d in q.ext_items()])
    q.save()


@case('ext: backing format empty')
def _(r, img):
    data_image(r, img + '.base', 'cluster_size=65536')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.base', '-F', 'qcow2', img)
    q = Q(r.path(img))
    q.set_exts([(m, b'' if m == EXT_BACKING_FORMAT else d) for m, d in q.ext_items()])
    q.save()


edit('ext: data file extension without the incompatible bit', 'std',
     with_exts(lambda e: e + [(EXT_DATA_FILE, b'data.bin')]), kind='unusual')
edit('ext: data file bit, empty data file name', 'std',
     lambda q: (q.set_exts(q.ext_items() + [(EXT_DATA_FILE, b'')]), q.p64(72, 4)))
edit('ext: crypto header extension on a plain image', 'std',
     with_exts(lambda e: e + [(EXT_CRYPTO, struct.pack('>QQ', 0x50000, 0x10000))]))
edit('ext: bitmaps extension on an image without bitmaps', 'std',
     lambda q: (q.set_exts(q.ext_items() + [(EXT_BITMAPS, struct.pack('>IIQQ', 1, 0, 64, 0x70000))]), q.p64(88, 1)))


# -- bitmaps extension and directory (on an image qemu gave one persistent bitmap)

def bm(fn):
    def apply(q):
        fn(q, q.bitmaps_ext(), q.bitmap_dir())
    return apply


edit('bitmaps: nb_bitmaps 0', 'bitmap', bm(lambda q, e, d: q.p32(e['pos'], 0)))
edit('bitmaps: nb_bitmaps 2, one entry', 'bitmap', bm(lambda q, e, d: q.p32(e['pos'], 2)))
edit('bitmaps: reserved field set', 'bitmap', bm(lambda q, e, d: q.p32(e['pos'] + 4, 1)))
edit('bitmaps: directory size 0', 'bitmap', bm(lambda q, e, d: q.p64(e['pos'] + 8, 0)))
edit('bitmaps: directory size huge', 'bitmap', bm(lambda q, e, d: q.p64(e['pos'] + 8, 1 << 40)))
edit('bitmaps: directory offset unaligned', 'bitmap', bm(lambda q, e, d: q.p64(e['pos'] + 16, e['dir_off'] + 8)))
edit('bitmaps: directory offset past the end', 'bitmap', bm(lambda q, e, d: q.p64(e['pos'] + 16, 0x7fffff0000)))
edit('bitmaps: directory on the L1 table', 'bitmap', bm(lambda q, e, d: q.p64(e['pos'] + 16, q.l1_off)))
edit('bitmaps: autoclear bit cleared (stale extension)', 'bitmap', lambda q: q.p64(88, 0), kind='unusual')
edit('bitmaps: table offset unaligned', 'bitmap', bm(lambda q, e, d: q.p64(d[0]['pos'], d[0]['table_off'] + 8)))
edit('bitmaps: table offset past the end', 'bitmap', bm(lambda q, e, d: q.p64(d[0]['pos'], 0x7fffff0000)))
edit('bitmaps: table size 0', 'bitmap', bm(lambda q, e, d: q.p32(d[0]['pos'] + 8, 0)))
edit('bitmaps: table size too large', 'bitmap', bm(lambda q, e, d: q.p32(d[0]['pos'] + 8, 0x10000000)))
edit('bitmaps: in-use flag', 'bitmap', bm(lambda q, e, d: q.p32(d[0]['pos'] + 12, 1 | q.u32(d[0]['pos'] + 12))))
edit('bitmaps: unknown flag', 'bitmap', bm(lambda q, e, d: q.p32(d[0]['pos'] + 12, 0x100 | q.u32(d[0]['pos'] + 12))))
edit('bitmaps: type 2', 'bitmap', bm(lambda q, e, d: q.p8(d[0]['pos'] + 16, 2)))
edit('bitmaps: granularity bits 8', 'bitmap', bm(lambda q, e, d: q.p8(d[0]['pos'] + 17, 8)))
edit('bitmaps: granularity bits 32', 'bitmap', bm(lambda q, e, d: q.p8(d[0]['pos'] + 17, 32)))
edit('bitmaps: name size 0', 'bitmap', bm(lambda q, e, d: q.p16(d[0]['pos'] + 18, 0)))
edit('bitmaps: name size past the directory', 'bitmap', bm(lambda q, e, d: q.p16(d[0]['pos'] + 18, 0xffff)))
edit('bitmaps: extra data size 8', 'bitmap', bm(lambda q, e, d: q.p32(d[0]['pos'] + 20, 8)))


def bitmap_table_entry(q, e, d, value):
    t = d[0]['table_off']
    for i in range(d[0]['table_size']):
        if q.u64(t + 8 * i) > 1:
            q.p64(t + 8 * i, value(q, q.u64(t + 8 * i)))
            return
    raise Broken('no allocated bitmap table entry')


edit('bitmaps: table entry past the end', 'bitmap', bm(lambda q, e, d: bitmap_table_entry(q, e, d, lambda q, v: 0x7fffff0000)))
edit('bitmaps: table entry unaligned', 'bitmap', bm(lambda q, e, d: bitmap_table_entry(q, e, d, lambda q, v: v + 0x200)))
edit('bitmaps: table entry on the L1 table', 'bitmap', bm(lambda q, e, d: bitmap_table_entry(q, e, d, lambda q, v: q.l1_off)))
edit('bitmaps: table entry with reserved bits', 'bitmap', bm(lambda q, e, d: bitmap_table_entry(q, e, d, lambda q, v: v | 2)))


# -- L1 entries

edit('L1: entry unaligned', 'std', lambda q: q.p64(q.l1_pos(), q.u64(q.l1_pos()) + 0x200))
edit('L1: entry past the end', 'std', lambda q: q.p64(q.l1_pos(), (1 << 63) | 0x7fffff0000))
edit('L1: entry on the header', 'std', lambda q: q.p64(q.l1_pos(), 1 << 63))
edit('L1: entry on the L1 table itself (iotest 060)', 'std', lambda q: q.p64(q.l1_pos(), (1 << 63) | q.l1_off))
edit('L1: entry on the refcount table', 'std', lambda q: q.p64(q.l1_pos(), (1 << 63) | q.rt_off))
edit('L1: entry on the refcount block', 'std', lambda q: q.p64(q.l1_pos(), (1 << 63) | q.rb_off()))
edit('L1: entry on a data cluster', 'std', lambda q: q.p64(q.l1_pos(), (1 << 63) | q.data_off(0)))
edit('L1: reserved bit 1', 'std', lambda q: q.p64(q.l1_pos(), q.u64(q.l1_pos()) | 2))
edit('L1: reserved bit 62', 'std', lambda q: q.p64(q.l1_pos(), q.u64(q.l1_pos()) | (1 << 62)))
edit('L1: copied flag cleared', 'std', lambda q: q.p64(q.l1_pos(), q.u64(q.l1_pos()) & ~(1 << 63)))
edit('L1: entry past the virtual size set', 'std', lambda q: q.p64(q.l1_pos(1), q.u64(q.l1_pos())), kind='unusual')
edit('L1: two entries share an L2 table', 'std',
     lambda q: (q.p32(36, 2), q.p64(24, 1 << 30), q.p64(q.l1_pos(1), q.u64(q.l1_pos()))))


# -- L2 entries

def l2set(j, value):
    return lambda q: q.p64(q.l2_pos(j), value(q, q.l2_entry(j)))


edit('L2: entry unaligned', 'std', l2set(0, lambda q, v: v + 0x200))
edit('L2: entry past the end (iotest 080)', 'std', l2set(0, lambda q, v: (1 << 63) | 0xffffff0000))
edit('L2: entry huge offset', 'std', l2set(0, lambda q, v: 0xbfffffffffff0000))
edit('L2: entry on the header', 'std', l2set(0, lambda q, v: 1 << 63))
edit('L2: entry on the refcount block (iotest 060)', 'std', l2set(0, lambda q, v: (1 << 63) | q.rb_off()))
edit('L2: entry on the refcount table', 'std', l2set(0, lambda q, v: (1 << 63) | q.rt_off))
edit('L2: entry on the L1 table', 'std', l2set(0, lambda q, v: (1 << 63) | q.l1_off))
edit('L2: entry on its own L2 table', 'std', l2set(0, lambda q, v: (1 << 63) | q.l2_off()))
edit('L2: two entries on one cluster', 'std', l2set(1, lambda q, v: q.l2_entry(0)))
edit('L2: reserved bit 56', 'std', l2set(0, lambda q, v: v | (1 << 56)))
edit('L2: reserved bit 1', 'std', l2set(0, lambda q, v: v | 2))
edit('L2: copied flag cleared', 'std', l2set(0, lambda q, v: v & ~(1 << 63)))
edit('L2: zero flag on an allocated cluster', 'std', l2set(0, lambda q, v: v | 1), kind='unusual')
edit('L2: zero flag with an unaligned offset', 'std', l2set(0, lambda q, v: v + 0x200 | 1))
edit('L2: zero flag on a version 2 image', 'v2', l2set(0, lambda q, v: v | 1))
edit('L2: zero flag, no offset (zero cluster)', 'std', l2set(5, lambda q, v: 1), kind='unusual')
edit('L2: compressed bit on a normal entry', 'std', l2set(0, lambda q, v: v | (1 << 62)))
edit('L2: unallocated entry with the copied flag', 'std', l2set(5, lambda q, v: 1 << 63))


def l2_find(q, pred):
    for j in range(q.cs // q.l2_entry_size()):
        if pred(q.l2_entry(j)):
            return j
    raise Broken('no such L2 entry')


# -- compressed clusters (iotests 122, 214)

def comp_edit(fn):
    def apply(q):
        j = l2_find(q, lambda v: v & (1 << 62))
        x = 62 - (q.cluster_bits - 8)
        v = q.l2_entry(j)
        off, sectors = v & ((1 << x) - 1), (v >> x) & ((1 << (62 - x)) - 1)
        q.p64(q.l2_pos(j), fn(q, v, off, sectors, x))
    return apply


edit('compressed: sector count past the end of the file (iotest 214)', 'comp',
     comp_edit(lambda q, v, off, n, x: (1 << 62) | (((len(q.b) // 512) + 4) << x) | off))
edit('compressed: offset past the end', 'comp',
     comp_edit(lambda q, v, off, n, x: (1 << 62) | (n << x) | 0x7ffff000))
edit('compressed: offset on the L1 table', 'comp', comp_edit(lambda q, v, off, n, x: (1 << 62) | (n << x) | q.l1_off))
edit('compressed: offset on the header', 'comp', comp_edit(lambda q, v, off, n, x: (1 << 62) | (n << x) | 0))
edit('compressed: copied flag set', 'comp', comp_edit(lambda q, v, off, n, x: v | (1 << 63)))
edit('compressed: sector count larger, still inside the file', 'comp',
     comp_edit(lambda q, v, off, n, x: (1 << 62) | ((n + 1) << x) | off), kind='unusual')
edit('compressed: data garbled', 'comp',
     comp_edit(lambda q, v, off, n, x: (q.b.__setitem__(slice(off, off + 64), b'\xff' * 64), v)[1]))
edit('compressed: zlib data declared zstd', 'comp', lambda q: (q.p64(72, 8), q.p8(104, 1)))


@case('compressed: extended L2 entry with a non-zero bitmap')
def _(r, img):
    base_comp(r, img + '.tmp')
    r.qimg('convert', '-c', '-O', 'qcow2', '-o', 'extended_l2=on', img + '.tmp', img)
    q = Q(r.path(img))
    j = l2_find(q, lambda v: v & (1 << 62))
    q.p64(q.l2_pos(j) + 8, 1)
    q.save()


# -- extended L2 subcluster bitmaps

def xl2_bitmap(j, value):
    return lambda q: q.p64(q.l2_pos(j) + 8, value(q.u64(q.l2_pos(j) + 8)))


edit('extended L2: a subcluster both allocated and zero', 'xl2', xl2_bitmap(0, lambda v: v | (1 << 32) | 1))
edit('extended L2: allocation bits on an unallocated cluster', 'xl2', xl2_bitmap(5, lambda v: 1))
edit('extended L2: zero bits on an unallocated cluster', 'xl2', xl2_bitmap(5, lambda v: 0xffffffff << 32),
     kind='unusual')
edit('extended L2: unallocated subclusters in an allocated cluster', 'xl2', xl2_bitmap(0, lambda v: 1), kind='unusual')
edit('extended L2: zero flag bit 0 of the entry set', 'xl2', l2set(0, lambda q, v: v | 1))
edit('extended L2 bit on a normal image', 'std', lambda q: q.p64(72, 16))
edit('extended L2 bit cleared on an extended L2 image', 'xl2', lambda q: q.p64(72, 0))


# -- refcounts

edit('refcount: 0 for a data cluster', 'std', lambda q: q.set_refcount(q.data_off(0), 0))
edit('refcount: 0 for the L2 table', 'std', lambda q: q.set_refcount(q.l2_off(), 0))
edit('refcount: 0 for the L1 table', 'std', lambda q: q.set_refcount(q.l1_off, 0))
edit('refcount: 0 for the header', 'std', lambda q: q.set_refcount(0, 0))
edit('refcount: 0 for the refcount table', 'std', lambda q: q.set_refcount(q.rt_off, 0))
edit('refcount: 0 for the refcount block', 'std', lambda q: q.set_refcount(q.rb_off(), 0))
edit('refcount: 2 for a data cluster with the copied flag', 'std', lambda q: q.set_refcount(q.data_off(0), 2))
edit('refcount: 2 for the L2 table with the copied flag', 'std', lambda q: q.set_refcount(q.l2_off(), 2))
edit('refcount: leak of an unused cluster', 'std', lambda q: (q.b.extend(bytes(q.cs)), q.set_refcount(len(q.b) - q.cs, 1)))
edit('refcount: leak past the end of the file', 'std', lambda q: q.set_refcount(len(q.b) + 4 * q.cs, 1))
edit('refcount: 0xffff for a data cluster', 'std', lambda q: q.set_refcount(q.data_off(0), 0xffff))
edit('refcount: table entry unaligned', 'std', lambda q: q.p64(q.rt_off, q.u64(q.rt_off) + 0x200))
edit('refcount: table entry past the end', 'std', lambda q: q.p64(q.rt_off, 0x7fffff0000))
edit('refcount: table entry 0', 'std', lambda q: q.p64(q.rt_off, 0))
edit('refcount: table entry on the L1 table', 'std', lambda q: q.p64(q.rt_off, q.l1_off))
edit('refcount: table entry on the header', 'std', lambda q: q.p64(q.rt_off, 0))
edit('refcount: table entry reserved bits', 'std', lambda q: q.p64(q.rt_off, q.u64(q.rt_off) | 0x100))
edit('refcount: second table entry past the end', 'std', lambda q: q.p64(q.rt_off + 8, 0x7fffff0000))
edit('refcount: second table entry on a data cluster', 'std', lambda q: q.p64(q.rt_off + 8, q.data_off(0)))
edit('refcount: 0 for a snapshot-shared data cluster', 'snap', lambda q: q.set_refcount(q.data_off(1), 0))
edit('refcount: 1 for a snapshot-shared data cluster', 'snap', lambda q: q.set_refcount(q.data_off(1), 1))
edit('refcount: 3 for a snapshot-shared data cluster', 'snap', lambda q: q.set_refcount(q.data_off(1), 3))


# -- internal snapshot table (iotests 080, 261)

def snap(fn):
    def apply(q):
        fn(q, q.snapshots()[0])
    return apply


edit('snapshot: L1 offset unaligned', 'snap', snap(lambda q, s: q.p64(s['pos'], s['l1_off'] + 0x200)))
edit('snapshot: L1 offset past the end', 'snap', snap(lambda q, s: q.p64(s['pos'], 0x7fffff0000)))
edit('snapshot: L1 offset 0', 'snap', snap(lambda q, s: q.p64(s['pos'], 0)))
edit('snapshot: L1 offset on the active L1', 'snap', snap(lambda q, s: q.p64(s['pos'], q.l1_off)))
edit('snapshot: L1 size 0x10000000 (iotest 080)', 'snap', snap(lambda q, s: q.p32(s['pos'] + 8, 0x10000000)))
edit('snapshot: L1 size 0', 'snap', snap(lambda q, s: q.p32(s['pos'] + 8, 0)), kind='unusual')
edit('snapshot: L1 size 1000', 'snap', snap(lambda q, s: q.p32(s['pos'] + 8, 1000)))
edit('snapshot: id size past the table', 'snap', snap(lambda q, s: q.p16(s['pos'] + 12, 0xffff)))
edit('snapshot: name size past the table', 'snap', snap(lambda q, s: q.p16(s['pos'] + 14, 0xffff)))
edit('snapshot: extra data size past the table', 'snap', snap(lambda q, s: q.p32(s['pos'] + 36, 0x10000)))
edit('snapshot: extra data size 0xffffffff', 'snap', snap(lambda q, s: q.p32(s['pos'] + 36, 0xffffffff)))
edit('snapshot: vm state size huge', 'snap', snap(lambda q, s: q.p32(s['pos'] + 32, 0xffffffff)), kind='unusual')
edit('snapshot: disk size in extra data 2^62', 'snap', snap(lambda q, s: q.p64(s['pos'] + 48, 1 << 62)),
     kind='unusual')


@case('snapshot: extra data size 0 (an old QEMU\'s entry)', 'unusual')
def _(r, img):
    from_base(r, 'snap', img)
    q = Q(r.path(img))
    s = q.snapshots()[0]
    extra = s['extra']
    tail = bytes(q.b[s['pos'] + 40 + extra:s['pos'] + 40 + extra + s['id_len'] + s['name_len']])
    q.p32(s['pos'] + 36, 0)
    q.b[s['pos'] + 40:s['pos'] + 40 + extra + len(tail)] = tail + bytes(extra)
    q.save()


edit('snapshot: inactive L2 entry past the end', 'snap',
     snap(lambda q, s: q.p64((q.u64(s['l1_off']) & L2_OFFSET_MASK) + 8, 0x7fffff0000)))
edit('snapshot: inactive L2 table on the refcount block (iotest 060)', 'snap',
     snap(lambda q, s: q.p64(s['l1_off'], q.rb_off())))
edit('snapshot: inactive L1 entry unaligned', 'snap',
     snap(lambda q, s: q.p64(s['l1_off'], q.u64(s['l1_off']) + 0x200)))


# -- more: other layouts, other widths, other places

@case('refcount: 0 for a data cluster, refcount_bits=1')
def _(r, img):
    data_image(r, img, 'refcount_bits=1,cluster_size=4096')
    q = Q(r.path(img))
    host = q.data_off(0)
    idx = host >> q.cluster_bits
    rb = q.rb_off(idx // (q.cs * 8))
    q.b[rb + (idx % (q.cs * 8)) // 8] &= ~(1 << (idx % 8)) & 0xff
    q.save()


@case('refcount: 2 for a data cluster, refcount_bits=64')
def _(r, img):
    data_image(r, img, 'refcount_bits=64,cluster_size=4096')
    q = Q(r.path(img))
    host = q.data_off(0)
    idx = host >> q.cluster_bits
    rb = q.rb_off(idx // (q.cs // 8))
    q.p64(rb + 8 * (idx % (q.cs // 8)), 2)
    q.save()


@case('L2: entry on the snapshot table')
def _(r, img):
    from_base(r, 'snap', img)
    q = Q(r.path(img))
    q.p64(q.l2_pos(0), (1 << 63) | (q.snap_off & ~(q.cs - 1)))
    q.save()


@case('L2: entry on the bitmap directory')
def _(r, img):
    from_base(r, 'bitmap', img)
    q = Q(r.path(img))
    q.p64(q.l2_pos(0), (1 << 63) | (q.bitmaps_ext()['dir_off'] & ~(q.cs - 1)))
    q.save()


@case('L2: two L2 tables share a data cluster (cluster_size=512)')
def _(r, img):
    data_image(r, img, 'cluster_size=512')
    q = Q(r.path(img))
    q.p64(q.l2_pos(0, 1), q.l2_entry(0, 0))
    q.save()


@case('L1: second L2 table on the first (cluster_size=512)')
def _(r, img):
    data_image(r, img, 'cluster_size=512')
    q = Q(r.path(img))
    q.p64(q.l1_pos(1), q.u64(q.l1_pos(0)))
    q.save()




@case('snapshot: two snapshots with the same name and id', 'unusual')
def _(r, img):
    from_base(r, 'snap', img)
    r.qimg('snapshot', '-c', 's2', img)
    q = Q(r.path(img))
    a, b = q.snapshots()
    ida = bytes(q.b[a['pos'] + 40 + a['extra']:a['pos'] + 40 + a['extra'] + a['id_len'] + a['name_len']])
    if a['id_len'] != b['id_len'] or a['name_len'] != b['name_len']:
        raise Broken('snapshot entries differ in size')
    q.b[b['pos'] + 40 + b['extra']:b['pos'] + 40 + b['extra'] + len(ida)] = ida
    q.save()


edit('snapshot: L1 entry with reserved bits', 'snap',
     snap(lambda q, s: q.p64(s['l1_off'], q.u64(s['l1_off']) | (1 << 62))))
edit('snapshot: L1 table on the active L2 table', 'snap', snap(lambda q, s: q.p64(s['pos'], q.l2_off())))


@case('backing: name of 1023 bytes', 'unusual')
def _(r, img):
    # QEMU's longest backing name: a path of directories inside the test's directory, to a raw file.
    name = '/'.join([img[:3] + 'd' * 247] * 4) + '/' + 'f' * 19
    os.makedirs(r.path(os.path.dirname(name)), exist_ok=True)
    write_file(r, name, b'\x42' * 4096, 8 * MiB)
    from_base(r, 'std', img)
    q = Q(r.path(img))
    q.p64(8, 0x1000)
    q.p32(16, len(name))
    q.b[0x1000:0x1000 + len(name)] = name.encode()
    q.set_exts([(EXT_BACKING_FORMAT, b'raw')] + q.ext_items())
    q.save()


@case('backing: name with a control character', 'unusual')
def _(r, img):
    data_image(r, img + '.base', 'cluster_size=65536')
    r.qimg('create', '-q', '-f', 'qcow2', '-b', img + '.base', '-F', 'qcow2', img)
    q = Q(r.path(img))
    q.b[q.u64(8)] = 0x1b
    q.save()
    os.rename(r.path(img + '.base'), r.path('\x1b' + (img + '.base')[1:]))


@case('data file: L2 entry maps elsewhere in a raw data file')
def _(r, img):
    data_image(r, img, f'data_file={img}.data,data_file_raw=on')
    q = Q(r.path(img))
    q.p64(q.l2_pos(0), q.l2_entry(1))
    q.save()


@case('data file: compressed entry with a data file')
def _(r, img):
    data_image(r, img, f'data_file={img}.data')
    q = Q(r.path(img))
    q.p64(q.l2_pos(0), (1 << 62) | 0x10000)
    q.save()


edit('v2: refcount 0 for a data cluster', 'v2', lambda q: q.set_refcount(q.data_off(0), 0))
edit('v2: L1 entry past the end', 'v2', lambda q: q.p64(q.l1_pos(), (1 << 63) | 0x7fffff0000))
edit('v2: garbage after the 72-byte header', 'v2', lambda q: q.b.__setitem__(slice(72, 104), b'\xee' * 32),
     kind='unusual')
edit('ext: end marker with a non-zero length (v2)', 'v2', lambda q: q.p64(72, 2), kind='unusual')


# -- the file itself

edit('file: truncated inside a data cluster', 'std', lambda q: q.truncate(len(q.b) - q.cs // 2), kind='unusual')
edit('file: truncated before the last data cluster', 'std', lambda q: q.truncate(len(q.b) - q.cs), kind='unusual')
edit('file: truncated inside the L2 table', 'std', lambda q: q.truncate(q.l2_off() + 512))
edit('file: truncated inside the L1 table', 'std', lambda q: q.truncate(q.l1_off + 4))
edit('file: truncated inside the refcount table', 'std', lambda q: q.truncate(q.rt_off + 4))
edit('file: truncated to the header', 'std', lambda q: q.truncate(104))
edit('file: truncated to 64 bytes', 'std', lambda q: q.truncate(64))
edit('file: trailing bytes', 'std', lambda q: q.b.extend(b'\xaa' * 100), kind='unusual')
edit('file: trailing unreferenced cluster', 'std', lambda q: q.b.extend(b'\xaa' * q.cs), kind='unusual')
edit('file: snapshot table truncated', 'snap', lambda q: q.truncate(q.snap_off + 20))


# -- files declared raw that another format's probe claims (or not)

def write_file(r, img, data, size=1 * MiB):
    with open(r.path(img), 'wb') as f:
        f.write(data)
        if size > len(data):
            f.write(bytes(size - len(data)))


def raw_case(name, data):
    CASES.append((name, 'raw', lambda r, img: write_file(r, img, data(r) if callable(data) else data)))


for fmt, opts in (('vmdk', ''), ('vmdk', 'subformat=streamOptimized'), ('vdi', ''), ('vhdx', ''),
                  ('vpc', ''), ('qed', ''), ('qcow', ''), ('parallels', ''), ('qcow2', 'compat=0.10')):
    def made(r, img, fmt=fmt, opts=opts):
        argv = ['create', '-q', '-f', fmt] + (['-o', opts] if opts else []) + [img, '1M']
        r.qimg(*argv)
    CASES.append((f'raw: a {fmt} image{" " + opts if opts else ""}', 'raw', made))


@case('raw: fixed VHD (footer at the end)', 'raw')
def _(r, img):
    r.qimg('create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', img, '1M')


@case('raw: LUKS volume', 'raw')
def _(r, img):
    luks_create(r, img, 'luks', 'key-secret=s0,iter-time={it}')


raw_case('raw: all zeros', b'')
raw_case('raw: an MBR boot sector', b'\xeb\x63\x90' + bytes(507) + b'\x55\xaa')
raw_case('raw: VMDK descriptor', b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
         b'createType="monolithicFlat"\nRW 2048 FLAT "canary" 0\n')
raw_case('raw: VMDK descriptor without the comment line', b'version=1\nCID=fffffffe\nparentCID=ffffffff\n'
         b'createType="monolithicFlat"\nRW 2048 FLAT "canary" 0\n')
raw_case('raw: VMDK descriptor, CRLF, blank lines, other comment', b'# something\r\n\r\n  \nversion=2\r\n'
         b'CID=fffffffe\r\nparentCID=ffffffff\r\ncreateType="monolithicFlat"\r\nRW 2048 FLAT "canary" 0\r\n')
raw_case('raw: text that is not a VMDK descriptor', b'# notes\nversion=9\nhello\n')
raw_case('raw: VMDK sparse magic KDMV', b'KDMV' + struct.pack('<I', 1))
raw_case('raw: VMDK3 magic COWD', b'COWD' + struct.pack('<I', 1))
raw_case('raw: qcow2 magic version 3', b'QFI\xfb\x00\x00\x00\x03')
raw_case('raw: qcow2 magic version 7', b'QFI\xfb\x00\x00\x00\x07')
raw_case('header: version 0 magic declared raw', b'QFI\xfb\x00\x00\x00\x00')
raw_case('raw: QED magic', b'QED\x00')
raw_case('raw: VDI signature', bytes(0x40) + struct.pack('<I', 0xbeda107f))
raw_case('raw: VHDX magic', b'vhdxfile')
raw_case('raw: VHD footer copy at the start', b'conectix')
raw_case('raw: Bochs header', b'Bochs Virtual HD Image\x00' + bytes(9) + b'Redolog\x00' + bytes(8) + b'Growing\x00'
         + bytes(8) + struct.pack('<I', 0x00020000))
raw_case('raw: Parallels header', b'WithoutFreeSpace' + struct.pack('<I', 2))
raw_case('raw: cloop header', b'#!/bin/sh\n#V2.0 Format\n')
raw_case('raw: LUKS magic version 1', b'LUKS\xba\xbe\x00\x01')
raw_case('raw: DMG trailer (koly) at the end', lambda r: bytes(1 * MiB - 512) + b'koly' + bytes(508))
raw_case('raw: ISO 9660 file system', bytes(0x8001) + b'CD001')


# ---- running -------------------------------------------------------------------------------------

def slug(name):
    return ''.join(ch if ch.isalnum() else '-' for ch in name)[:60]


def run_case(r, i, name, kind, build):
    """(name, (qemu ok, why, vdisk ok, why, kind), None), or (name, None, error) for a case that could not run."""
    img = f'{i:03d}-{slug(name)}.img'
    try:
        build(r, img)
        if kind == 'raw':
            q_ok, q_why = qemu_raw_verdict(r, img)
            v_ok, v_why = vdisk_verdict(r, img, 'raw')
        else:
            q_ok, q_why = qemu_verdict(r, img)
            v_ok, v_why = vdisk_verdict(r, img)
        if kind == 'normal' and not q_ok:
            raise Broken(f'QEMU refuses an image it wrote itself: {q_why}')
    except (Broken, subprocess.SubprocessError, OSError, ValueError, KeyError, IndexError, struct.error) as e:
        return name, None, f'{type(e).__name__}: {e}'
    return name, (q_ok, q_why, v_ok, v_why, kind), None


def main():
    if len(sys.argv) != 2:
        print(f'usage: {sys.argv[0]} VDISK-IMG', file=sys.stderr)
        return 1
    vdisk = os.path.abspath(sys.argv[1])
    missing = [t for t in ('qemu-img', 'qemu-io') if not shutil.which(t)]
    if missing:
        print(f'SKIP: {", ".join(missing)} not found')
        return 77

    names = [n for n, _, _ in CASES]
    dup = {n for n in names if names.count(n) > 1}
    unknown = set(STRICTER) - set(names)
    t0 = time.monotonic()
    agree, stricter, disagree, broken, stale = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix='vdisk-catalogue-') as tmp:
        r = Runner(vdisk, tmp)
        canary = r.path('canary')
        with open(canary, 'wb') as f:
            f.write(os.urandom(4096))
        canary_state = (open(canary, 'rb').read(), os.stat(canary).st_mtime_ns)
        only = os.environ.get('CATALOGUE_ONLY')  # a developer's filter: cases whose name contains it
        todo = [(i, n, k, b) for i, (n, k, b) in enumerate(CASES) if not only or only in n]
        # Two cases at a time: most of the time goes into starting qemu-img, qemu-io and vdisk-img.
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(lambda c: run_case(r, *c), todo))
        for name, verdicts, error in results:
            if error:
                broken.append(name)
                print(f'BROKEN    {name}: {error}')
                continue
            q_ok, q_why, v_ok, v_why, kind = verdicts
            if q_ok == v_ok:
                agree.append(name)
                status = 'agree'
                if name in STRICTER:
                    stale.append(name)
                    status = 'STALE    '
            elif not q_ok:
                disagree.append(name)
                status = 'DISAGREE '
            elif kind != 'normal' and name in STRICTER:
                stricter.append(name)
                status = 'stricter '
            else:
                disagree.append(name)
                status = 'DISAGREE '
            print(f'{status:9s} {name}  [qemu: {"valid" if q_ok else q_why}] [vdisk: {"valid" if v_ok else v_why}]')
        if (open(canary, 'rb').read(), os.stat(canary).st_mtime_ns) != canary_state:
            print('SAFETY: the canary file changed')
            broken.append('canary')

    total = len(todo)
    print(f'\n{total} cases, {len(agree)} agree, {len(stricter)} stricter (listed), {len(disagree)} disagree'
          f' ({time.monotonic() - t0:.1f} s)')
    for n in stricter:
        print(f'  stricter: {n}: {STRICTER[n]}')
    for n in disagree:
        print(f'  DISAGREE: {n}')
    for n in broken:
        print(f'  BROKEN: {n}')
    for n in stale:
        print(f'  listed as stricter but agrees: {n}')
    for n in sorted(dup):
        print(f'  duplicate case name: {n}')
    for n in sorted(unknown):
        print(f'  STRICTER names no case: {n}')
    if total < 150:
        print(f'  only {total} cases; the catalogue promises at least 150')
    return 1 if disagree or broken or stale or dup or unknown or total < 150 else 0


if __name__ == '__main__':
    sys.exit(main())
