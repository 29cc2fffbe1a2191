#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""
Differential tests: vdisk's format engine (vdisk-img) must see every image the way QEMU 7.2's
qemu-img sees it.

    python3 test-qemu-img-diff.py /path/to/vdisk-img

Every image is built here, by qemu-img/qemu-io (or by this script for the few things qemu-img
refuses to build), inside a private temporary directory; qemu-img and qemu-io only ever open
those images and the backing files built next to them, with the temporary directory as working
directory. A canary file in that directory must stay untouched (docs/security.md, "Testing safely").

For each qcow2 image:
  info   `vdisk-img info --format=qcow2 --check` vs `qemu-img info --output=json`
  check  `vdisk-img check` vs `qemu-img check --output=json`
  map    `vdisk-img map --format=qcow2` vs `qemu-img map --output=json`, both normalised to
         (start, length, kind, offset) with kind in data/zero/unallocated and merged
and both are also compared with what was asked for (size, cluster size, backing name...), so
that the two tools agreeing on a wrong value still fails.

Matrix:
  empty images   cluster sizes 512, 4K, 64K, 2M x compat 0.10/1.1 x no backing / backing with -F /
                 backing without format x virtual sizes 0, 512, 1M, 1G, 16T (16T where the L1 table
                 fits QEMU's 32 MiB, i.e. clusters >= 8K); 1K..1M (the other powers of two): compat
                 1.1, no backing, the same sizes
  data images    qemu-io writes (full, partial, byte-unaligned), write -z, write -z -u, discard, on
                 the main cluster sizes x compat x the three backing kinds; internal snapshot
                 (snapshot -c, then writes: shared and COWed clusters); compressed clusters
                 (convert -c, then partial overwrite, zeroing, discard); lazy_refcounts=on;
                 extended_l2=on (clusters >= 16K, with subcluster writes); refcount_bits 1..64;
                 persistent bitmaps; a refcount table grown past one cluster; a dirty image
                 (lazy refcounts, qemu-io abort) where both must find the same corruptions.
                 The other cluster sizes: with backing, compat 0.10, compressed + snapshot, ext-L2.
  raw images     `vdisk-img info/map --format=raw` vs qemu-img: sizes 0..1G, holes and data
  probe          a qcow2 file declared raw is refused naming qcow2; zeros declared raw match;
                 `info --format=qcow2` of a raw file is not valid

Known, documented differences (not bugs, compared as described):
  * qemu-img check's "allocated-clusters" counts normal, zero-allocated (preallocated zero) and
    compressed clusters of the active L1; vdisk's counts normal clusters only and reports
    compressed ones separately. We compare
        qemu allocated == vdisk allocated + vdisk compressed + zero-allocated clusters
    where the last term is counted from vdisk's own map (zero extents that carry a host offset).
    Snapshot L1 tables are counted by neither.
  * QEMU 7.2 has no "compressed" map key: compressed clusters are "data" without an offset; vdisk's
    "compressed" extents are mapped to exactly that.
  * Host offsets of zero extents: both report the preallocated host cluster of a zero-allocated
    cluster (compared), but with extended L2 entries qemu also reports the host offset of zero
    subclusters inside an allocated cluster while vdisk does not, so zero offsets are not
    compared for extended-L2 images (data offsets always are).
  * For compat=0.10 qemu-img info omits lazy-refcounts, corrupt and extended-l2; vdisk reports
    them as false, which is what a version 2 header implies; that is what we check.
  * qemu-img 7.2 refuses to create a backing reference without a backing format; such images
    (old QEMUs wrote them) are made by removing the backing-format extension from a qemu-created
    overlay (strip_backing_format()).

Exit status: 0 all passed, 1 a failure, 77 qemu-img or qemu-io missing.
"""

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
ABSENT = '<absent>'

MAIN_CLUSTERS = [512, 4 * KiB, 64 * KiB, 2 * MiB]
REDUCED_CLUSTERS = [1 * KiB, 2 * KiB, 8 * KiB, 16 * KiB, 32 * KiB, 128 * KiB, 256 * KiB, 512 * KiB, 1 * MiB]
SIZES = [0, 512, 1 * MiB, 1 * GiB, 16 * TiB]

SPEC_KEYS = ['compat', 'lazy-refcounts', 'refcount-bits', 'corrupt', 'extended-l2', 'compression-type']
# What a version 2 header implies for the keys qemu-img leaves out with compat=0.10.
V2_IMPLIED = {'lazy-refcounts': False, 'corrupt': False, 'extended-l2': False}


class Failure(Exception):
    pass


def can_address(cs, size):
    """Whether QEMU (and vdisk) can map `size` with `cs` clusters: the L1 table is at most 32 MiB."""
    entries = -(-size // (cs * (cs // 8)))
    return entries * 8 <= 32 * MiB


def human(n):
    for unit, div in (('T', TiB), ('G', GiB), ('M', MiB), ('K', KiB)):
        if n >= div and n % div == 0:
            return f'{n // div}{unit}'
    return str(n)


def no_core():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Case:
    def __init__(self, suite, name):
        self.suite = suite
        self.name = name
        self.errors = []

    def fail(self, msg):
        self.errors.append(msg)

    def expect(self, cond, msg):
        if not cond:
            self.fail(msg)
        return cond

    def eq(self, what, vdisk, qemu, left='vdisk', right='qemu'):
        if vdisk != qemu:
            self.fail(f'{what}: {left}={vdisk!r} {right}={qemu!r}')
            return False
        return True

    def run(self, argv, rc=0, core=True):
        # core=False: no core dump (for a deliberate abort)
        p = subprocess.run(argv, cwd=self.suite.tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=self.suite.env, timeout=300, preexec_fn=None if core else no_core)
        if rc is not None and p.returncode != rc:
            raise Failure(f'{" ".join(argv)}: exit {p.returncode}, expected {rc}; stderr: {p.stderr.strip()[:500]}')
        return p

    def json(self, p):
        try:
            return json.loads(p.stdout)
        except ValueError as e:
            raise Failure(f'{" ".join(p.args)}: output is not JSON ({e}): {p.stdout[:300]!r}')

    def path(self, name):
        return os.path.join(self.suite.tmp, name)


class Suite:
    def __init__(self, vdisk, tmp):
        self.vdisk = vdisk
        self.tmp = tmp
        self.env = dict(os.environ, LC_ALL='C')
        self.passed = 0
        self.failed = []
        self.canary = os.path.join(tmp, 'canary')
        with open(self.canary, 'wb') as f:
            f.write(os.urandom(4096))
        self.canary_state = self.canary_read()

    def canary_read(self):
        st = os.stat(self.canary)
        with open(self.canary, 'rb') as f:
            return (f.read(), st.st_size, st.st_mtime_ns)

    def case(self, name, fn, *args, **kw):
        c = Case(self, name)
        t0 = time.monotonic()
        try:
            fn(c, *args, **kw)
        except Failure as e:
            c.fail(str(e))
        except (subprocess.SubprocessError, OSError, KeyError, TypeError, ValueError) as e:
            c.fail(f'{type(e).__name__}: {e}')
        if self.canary_read() != self.canary_state:
            c.fail('SAFETY: the canary file changed')
        took = f'({time.monotonic() - t0:.2f} s)'
        if c.errors:
            print(f'FAIL {name} {took}')
            for e in c.errors:
                print(f'       {e}')
            self.failed.append(name)
        else:
            print(f'ok   {name} {took}')
            self.passed += 1
        sys.stdout.flush()
        return not c.errors


# ---- building images ----------------------------------------------------------------------------

def bare(name):
    """Names that end up inside images are bare sibling names, never paths."""
    if '/' in name or name in ('', '.', '..') or '\0' in name:
        raise Failure(f'refusing to use {name!r} as a name inside an image')
    return name


def strip_backing_format(path):
    """
    Removes the backing-format extension (0xe2792aca) from a qcow2 file we built, moving the other
    extensions and the backing name up: the image then names a backing file without a format, which
    qemu-img 7.2 refuses to create but still opens.
    """
    with open(path, 'r+b') as f:
        head = f.read(72)
        cs = 1 << struct.unpack_from('>I', head, 20)[0]
        f.seek(0)
        hdr = bytearray(f.read(cs))
        version = struct.unpack_from('>I', hdr, 4)[0]
        hlen = 72 if version == 2 else struct.unpack_from('>I', hdr, 100)[0]
        name_off, name_len = struct.unpack_from('>QI', hdr, 8)
        name = bytes(hdr[name_off:name_off + name_len])
        pos, kept, found = hlen, [], False
        while True:
            magic, length = struct.unpack_from('>II', hdr, pos)
            if magic == 0:
                break
            total = 8 + (length + 7) // 8 * 8
            if magic == 0xe2792aca:
                found = True
            else:
                kept.append(bytes(hdr[pos:pos + total]))
            pos += total
        if not found or name_len == 0:
            raise Failure(f'{path}: no backing format extension to strip')
        area = b''.join(kept) + bytes(8)
        end = name_off + name_len
        hdr[hlen:end] = bytes(end - hlen)
        hdr[hlen:hlen + len(area)] = area
        new_off = hlen + len(area)
        hdr[new_off:new_off + name_len] = name
        struct.pack_into('>Q', hdr, 8, new_off)
        f.seek(0)
        f.write(hdr[:end])


def qemu_create(c, name, size, cs, compat='1.1', backing=None, backing_fmt=True, lazy=False, extl2=False,
                refcount_bits=16):
    opts = [f'cluster_size={cs}', f'compat={compat}', f'refcount_bits={refcount_bits}']
    if lazy:
        opts.append('lazy_refcounts=on')
    if extl2:
        opts.append('extended_l2=on')
    argv = ['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', ','.join(opts)]
    if backing:
        argv += ['-b', bare(backing), '-F', 'qcow2']
    c.run(argv + [bare(name), str(size)])
    if backing and not backing_fmt:
        strip_backing_format(c.path(name))


def qemu_io(c, name, ops, fmt='qcow2'):
    if not ops:
        return
    argv = ['qemu-io', '-f', fmt]
    for op in ops:
        argv += ['-c', op]
    p = c.run(argv + [bare(name)])
    # qemu-io reports some command errors on stdout only.
    for line in (p.stdout + p.stderr).splitlines():
        if 'failed' in line.lower() or 'error' in line.lower():
            raise Failure(f'qemu-io {ops}: {line}')


def data_size(cs):
    """Virtual size of data images: several L2 tables for small clusters, a partial last cluster."""
    return max(24 * cs, 1 * MiB) + (cs // 2 if cs >= 1024 else 0)


def data_ops(cs, size):
    """qemu-io writes covering full, partial and byte-unaligned clusters, zeroing and discards."""
    c = cs
    mid = size // 2 // 512 * 512
    return [
        f'write -P 0x11 0 {c + c // 2}',          # one full cluster and half of the next
        f'write -P 0x22 {3 * c + 512} 1024',      # inside a cluster (or two 512 B clusters)
        f'write -P 0x33 {5 * c + 100} 300',       # byte-unaligned
        f'write -P 0x44 {6 * c} {4 * c}',
        f'write -z {6 * c} {c}',                  # zero over data (zero-allocated on v3)
        f'write -z -u {7 * c} {c}',               # zero with unmap over data
        f'discard {8 * c} {c}',                   # discard data
        f'write -z {11 * c} {c}',                 # zero over unallocated
        f'write -z -u {12 * c} {c}',              # zero with unmap over unallocated
        f'discard {13 * c} {2 * c}',              # discard unallocated
        f'write -P 0x55 {14 * c} {c}',
        f'write -z -u {14 * c} {max(c // 2, 512)}',  # partial zero with unmap
        f'write -P 0x66 {mid} 4096',
        f'write -P 0x77 {size - 512} 512',        # the last sector (partial last cluster)
    ]


def extl2_ops(cs):
    c, sub = cs, cs // 32
    return [
        f'write -P 0x81 {16 * c + sub} {sub}',    # one subcluster of an unallocated cluster
        f'write -z {16 * c + 3 * sub} {2 * sub}',  # zero subclusters of the same cluster
        f'write -P 0x82 {17 * c} {c}',
        f'write -z {17 * c + 4 * sub} {sub}',     # zero subcluster inside an allocated cluster
        f'write -z -u {17 * c + 10 * sub} {3 * sub}',
        f'write -P 0x83 {18 * c + 5 * sub} 700',  # byte-unaligned inside a subcluster
    ]


def snapshot_ops(cs):
    """After `snapshot -c`: writes that COW shared clusters, leave others shared, allocate new ones."""
    c = cs
    return [
        f'write -P 0x91 0 512',                   # COW of a shared data cluster
        f'write -z {9 * c} {c}',                  # zero over shared data
        f'discard {14 * c} {c}',
        f'write -P 0x92 {19 * c} {2 * c}',        # new clusters
    ]


# ---- normalisation ------------------------------------------------------------------------------

def merge(entries):
    out = []
    for start, length, kind, off in entries:
        if length == 0:
            continue
        if out:
            ps, pl, pk, po = out[-1]
            if pk == kind and ps + pl == start and (
                    (po is None and off is None) or (po is not None and off is not None and po + pl == off)):
                out[-1] = (ps, pl + length, pk, po)
                continue
        out.append((start, length, kind, off))
    return out


def norm_qemu(entries, zero_offsets):
    out = []
    for e in entries:
        if e['depth'] > 0 or not e['present']:
            out.append((e['start'], e['length'], 'unallocated', None))
        elif e['data']:
            # "zero" is ignored when data is true: holes in the host file make qemu say zero.
            out.append((e['start'], e['length'], 'data', e.get('offset')))
        elif e['zero']:
            out.append((e['start'], e['length'], 'zero', e.get('offset') if zero_offsets else None))
        else:
            raise Failure(f'qemu-img map entry of unknown kind: {e}')
    return merge(out)


def norm_vdisk(entries, zero_offsets):
    out = []
    for e in entries:
        s = e['state']
        if s == 'data':
            if 'offset' not in e:
                raise Failure(f'vdisk data extent without offset: {e}')
            out.append((e['start'], e['length'], 'data', e['offset']))
        elif s == 'compressed':
            out.append((e['start'], e['length'], 'data', None))  # what qemu 7.2 reports
        elif s == 'zero':
            out.append((e['start'], e['length'], 'zero', e.get('offset') if zero_offsets else None))
        elif s == 'unallocated':
            out.append((e['start'], e['length'], 'unallocated', None))
        else:
            raise Failure(f'vdisk map extent of unknown state: {e}')
    return merge(out)


def check_coverage(c, who, entries, size):
    pos = 0
    for start, length, _, _ in entries:
        if start != pos:
            c.fail(f'{who} map: gap or overlap at {pos:#x} (next extent starts at {start:#x})')
            return
        pos += length
    c.eq(f'{who} map covers', pos, size, left='end', right='virtual-size')


def compare_maps(c, vmap, qmap, size, zero_offsets):
    a, b = norm_vdisk(vmap, zero_offsets), norm_qemu(qmap, zero_offsets)
    check_coverage(c, 'vdisk', a, size)
    check_coverage(c, 'qemu', b, size)
    if a != b:
        diffs = []
        for i in range(max(len(a), len(b))):
            x = a[i] if i < len(a) else None
            y = b[i] if i < len(b) else None
            if x != y:
                diffs.append(f'#{i}: vdisk={x} qemu={y}')
        c.fail(f'map differs ({len(a)} vs {len(b)} extents): ' + '; '.join(diffs[:6]))


# ---- qcow2 comparison ---------------------------------------------------------------------------

def compare_qcow2(c, img, size, cs, compat='1.1', backing=None, backing_fmt=None, lazy=False, extl2=False,
                  dirty=False, clean=True, refcount_bits=16):
    v = c.suite.vdisk

    # info
    vi = c.json(c.run([v, 'info', '--format=qcow2', '--check', img]))
    qi = c.json(c.run(['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json', img]))
    for key in ('format', 'virtual-size', 'cluster-size', 'backing-filename', 'backing-filename-format',
                'dirty-flag'):
        c.eq(f'info {key}', vi.get(key, ABSENT), qi.get(key, ABSENT))
    expected = {
        'format': 'qcow2',
        'virtual-size': size,
        'cluster-size': cs,
        'backing-filename': backing if backing else ABSENT,
        'backing-filename-format': backing_fmt if backing_fmt else ABSENT,
        'dirty-flag': dirty,
    }
    for key, want in expected.items():
        c.eq(f'qemu info {key} vs expected', qi.get(key, ABSENT), want, left='qemu', right='expected')

    vs, qs = vi.get('format-specific', {}), qi.get('format-specific', {})
    c.eq('format-specific.type', vs.get('type'), qs.get('type'))
    vd, qd = vs.get('data', {}), qs.get('data', {})
    for key in SPEC_KEYS:
        if key in qd:
            c.eq(f'format-specific.data.{key}', vd.get(key, ABSENT), qd[key])
        elif compat == '0.10' and key in V2_IMPLIED:
            c.eq(f'format-specific.data.{key} (implied by compat 0.10)', vd.get(key, ABSENT), V2_IMPLIED[key],
                 right='implied')
        else:
            c.fail(f'qemu-img info lacks format-specific.data.{key}')
    for key in ('data-file', 'data-file-raw'):
        c.eq(f'format-specific.data.{key}', vd.get(key, ABSENT), qd.get(key, ABSENT))
    want_spec = {'compat': compat, 'lazy-refcounts': lazy, 'extended-l2': extl2, 'refcount-bits': refcount_bits,
                 'corrupt': False, 'compression-type': 'zlib'}
    for key, want in want_spec.items():
        c.eq(f'vdisk format-specific.data.{key} vs expected', vd.get(key, ABSENT), want, right='expected')
    if clean:
        c.eq('vdisk info valid', vi.get('valid'), True)
        c.eq('vdisk info problems', vi.get('problems'), [])
    else:
        c.eq('vdisk info valid', vi.get('valid'), False)
        c.expect(vi.get('problems'), 'vdisk info: not valid, but no problem listed')

    # check
    vcp = c.run([v, 'check', img], rc=None)
    qcp = c.run(['qemu-img', 'check', '-U', '-f', 'qcow2', '--output=json', img], rc=None)
    c.eq('check exit code', vcp.returncode, qcp.returncode)
    vc, qc = c.json(vcp), c.json(qcp)
    for key in ('corruptions', 'leaks'):
        c.eq(f'check {key}', vc.get(key, ABSENT), qc.get(key, 0))  # qemu omits zero counts
        c.eq(f'info --check {key} vs check', vi.get('check', {}).get(key, ABSENT), vc.get(key), left='info',
             right='check')
    c.eq('qemu check-errors', qc.get('check-errors', 0), 0, left='qemu', right='expected')
    if clean:
        c.eq('check exit code vs expected', vcp.returncode, 0, right='expected')
        c.eq('check corruptions+leaks vs expected', vc.get('corruptions', 0) + vc.get('leaks', 0), 0,
             right='expected')
        c.eq('check problems', vc.get('problems'), [])
    else:
        c.expect(qc.get('corruptions', 0) + qc.get('leaks', 0) > 0,
                 'the image was meant to be inconsistent, but qemu-img check finds nothing')

    # map (the top image only: depth > 0 is "unallocated" here)
    vm = c.json(c.run([v, 'map', '--format=qcow2', img]))
    qm = c.json(c.run(['qemu-img', 'map', '-U', '-f', 'qcow2', '--output=json', img]))
    compare_maps(c, vm, qm, size, zero_offsets=not extl2)

    # allocated clusters, counted the way qemu does (see the module docstring)
    zero_alloc = 0
    for e in vm:
        if e['state'] == 'zero' and 'offset' in e:
            zero_alloc += -(-(e['start'] + e['length']) // cs) - e['start'] // cs
    compressed = vi.get('check', {}).get('compressed-clusters', 0)
    c.eq('info --check allocated-clusters vs check', vi.get('check', {}).get('allocated-clusters'),
         vc.get('allocated-clusters'), left='info', right='check')
    c.eq('allocated clusters (vdisk data + compressed + zero-allocated)',
         vc.get('allocated-clusters', 0) + compressed + zero_alloc, qc.get('allocated-clusters', 0))
    c.eq('compressed clusters', compressed, qc.get('compressed-clusters', 0))
    return vm


# ---- cases --------------------------------------------------------------------------------------

def make_base(c, name, cs, size):
    """A qcow2 backing file with data, so that the overlay's map has depth-1 data to hide."""
    if os.path.exists(c.path(name)):
        return
    qemu_create(c, name, size, cs)
    if size:
        qemu_io(c, name, [f'write -P 0xb1 0 {min(size, 4 * cs)}',
                          f'write -P 0xb2 {size // 2 // 512 * 512} {min(size - size // 2 // 512 * 512, 2 * cs)}'])


def case_empty(c, cs, size, compat, backing):
    name = f'e-{cs}-{human(size)}-{compat}-{backing or "nb"}.qcow2'
    base = None
    if backing:
        base = f'base-{cs}-{human(size)}.qcow2'
        make_base(c, base, cs, min(size, 64 * MiB))
    qemu_create(c, name, size, cs, compat, backing=base, backing_fmt=(backing == 'F'))
    compare_qcow2(c, name, size, cs, compat, backing=base, backing_fmt='qcow2' if backing == 'F' else None)


def case_data(c, cs, compat='1.1', backing=None, lazy=False, extl2=False, snapshot=False, refcount_bits=16,
              bitmaps=False, extra_ops=(), size=None, min_reftable_clusters=1, tag='d'):
    size = size or data_size(cs)
    name = f'{tag}-{cs}-{compat}-{backing or "nb"}{"-lazy" if lazy else ""}{"-xl2" if extl2 else ""}' \
           f'{"-snap" if snapshot else ""}-rb{refcount_bits}{"-bitmaps" if bitmaps else ""}.qcow2'
    base = None
    if backing:
        base = f'dbase-{cs}.qcow2'
        make_base(c, base, cs, size)
    qemu_create(c, name, size, cs, compat, backing=base, backing_fmt=(backing == 'F'), lazy=lazy, extl2=extl2,
                refcount_bits=refcount_bits)
    if bitmaps:
        # persistent dirty bitmaps: their directory, tables and data clusters are metadata to both
        c.run(['qemu-img', 'bitmap', '--add', name, 'b0'])
        c.run(['qemu-img', 'bitmap', '--add', '-g', str(max(cs, 64 * KiB) * 4), name, 'b1'])
    ops = data_ops(cs, size) + (extl2_ops(cs) if extl2 else []) + list(extra_ops)
    qemu_io(c, name, ops)
    if snapshot:
        c.run(['qemu-img', 'snapshot', '-c', 's1', name])
        qemu_io(c, name, snapshot_ops(cs))
        snaps = c.json(c.run(['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json', name])).get('snapshots', [])
        c.eq('snapshots', [s.get('name') for s in snaps], ['s1'], left='qemu', right='expected')
    with open(c.path(name), 'rb') as f:
        rt_clusters = struct.unpack_from('>I', f.read(72), 56)[0]
    c.expect(rt_clusters >= min_reftable_clusters,
             f'refcount table has {rt_clusters} clusters, the case needs at least {min_reftable_clusters}')
    if bitmaps:
        qi = c.json(c.run(['qemu-img', 'info', '-U', '-f', 'qcow2', '--output=json', name]))
        names = [b.get('name') for b in qi.get('format-specific', {}).get('data', {}).get('bitmaps', [])]
        c.eq('bitmaps', names, ['b0', 'b1'], left='qemu', right='expected')
    vm = compare_qcow2(c, name, size, cs, compat, backing=base, backing_fmt='qcow2' if backing == 'F' else None,
                       lazy=lazy, extl2=extl2, refcount_bits=refcount_bits)
    # The ops must have produced what they are meant to test (else the comparison proves little).
    states = {e['state'] for e in vm}
    c.expect('data' in states, 'no data extent in the map')
    if compat == '1.1':
        c.expect('zero' in states, 'no zero extent in the map')


def case_compressed(c, cs, compat='1.1', snapshot=False, extl2=False):
    n = 12
    raw = f'src-{cs}.raw'
    if not os.path.exists(c.path(raw)):
        with open(c.path(raw), 'wb') as f:
            for i in range(n):
                # every third cluster all zero: convert leaves it unallocated
                f.write(bytes([0 if i % 3 == 2 else 0x10 + i]) * cs)
    name = f'c-{cs}-{compat}{"-xl2" if extl2 else ""}{"-snap" if snapshot else ""}.qcow2'
    opts = f'cluster_size={cs},compat={compat}' + (',extended_l2=on' if extl2 else '')
    c.run(['qemu-img', 'convert', '-c', '-f', 'raw', '-O', 'qcow2', '-o', opts, raw, name])
    if snapshot:
        c.run(['qemu-img', 'snapshot', '-c', 's1', name])
    qemu_io(c, name, [f'write -P 0xa1 {cs} 512',        # partial overwrite: decompress and COW
                      f'write -z {3 * cs} {cs}',        # zero over compressed
                      f'discard {4 * cs} {cs}',         # discard compressed
                      f'write -z -u {6 * cs} {cs}'])
    vi = c.json(c.run([c.suite.vdisk, 'info', '--format=qcow2', '--check', name]))
    c.expect(vi.get('check', {}).get('compressed-clusters', 0) > 0, 'no compressed cluster left in the image')
    compare_qcow2(c, name, n * cs, cs, compat, extl2=extl2)


def case_dirty(c, cs):
    """Lazy refcounts and a qemu-io abort: dirty bit set, refcounts behind; both must say so alike."""
    name = f'dirty-{cs}.qcow2'
    qemu_create(c, name, 4 * MiB, cs, lazy=True)
    p = c.run(['qemu-io', '-f', 'qcow2', '-c', f'write -P 0x12 0 {max(4 * cs, 256 * KiB)}', '-c', 'abort', name],
              rc=None, core=False)
    c.expect(p.returncode != 0, 'qemu-io abort did not abort')
    compare_qcow2(c, name, 4 * MiB, cs, lazy=True, dirty=True, clean=False)


# ---- raw -----------------------------------------------------------------------------------------

def case_raw(c, size, ops):
    name = f'r-{human(size)}-{len(ops)}.img'
    c.run(['qemu-img', 'create', '-q', '-f', 'raw', name, str(size)])
    qemu_io(c, name, ops, fmt='raw')
    v = c.suite.vdisk
    vi = c.json(c.run([v, 'info', '--format=raw', name]))
    qi = c.json(c.run(['qemu-img', 'info', '-U', '-f', 'raw', '--output=json', name]))
    c.eq('info format', vi.get('format'), qi.get('format'))
    c.eq('info virtual-size', vi.get('virtual-size'), qi.get('virtual-size'))
    c.eq('qemu info virtual-size vs expected', qi.get('virtual-size'), size, left='qemu', right='expected')
    c.eq('vdisk info valid', vi.get('valid'), True)
    c.eq('vdisk info problems', vi.get('problems'), [])
    # Both tools ask the file system the same SEEK_DATA/SEEK_HOLE questions on the same file, and
    # qemu's only rounding (a partial sector at EOF up to the request alignment) cannot happen with
    # these 512-multiple sizes, so the comparison is exact. Holes are "zero" on both sides (qemu
    # adds an offset to them, ignored); data extents carry offset == start.
    vm = c.json(c.run([v, 'map', '--format=raw', name]))
    qm = c.json(c.run(['qemu-img', 'map', '-U', '-f', 'raw', '--output=json', name]))
    compare_maps(c, vm, qm, size, zero_offsets=False)
    for e in vm:
        if e['state'] == 'data':
            c.eq(f'raw data extent at {e["start"]:#x} offset', e.get('offset'), e['start'], right='start')
    if ops:
        c.expect(any(e['state'] == 'data' for e in vm) and any(e['state'] == 'zero' for e in vm),
                 'raw image has no data or no hole: the file system does not report holes?')


# ---- probe ---------------------------------------------------------------------------------------

def case_probe_qcow2_as_raw(c):
    c.run(['qemu-img', 'create', '-q', '-f', 'qcow2', 'p.qcow2', '1M'])
    p = c.run([c.suite.vdisk, 'probe', '--format=raw', 'p.qcow2'], rc=1)
    o = c.json(p)
    c.eq('matches', o.get('matches'), False, right='expected')
    c.expect('qcow2' in o.get('signatures', []), f'signatures do not name qcow2: {o.get("signatures")}')
    c.expect('qcow2' in o.get('reason', ''), f'reason does not name qcow2: {o.get("reason")!r}')
    # declared correctly, the same file matches
    o = c.json(c.run([c.suite.vdisk, 'probe', '--format=qcow2', 'p.qcow2'], rc=0))
    c.eq('matches as qcow2', o.get('matches'), True, right='expected')
    # and "info --format=raw" on it is not valid
    o = c.json(c.run([c.suite.vdisk, 'info', '--format=raw', 'p.qcow2']))
    c.eq('info --format=raw valid on a qcow2 file', o.get('valid'), False, right='expected')


def case_probe_raw_zeros(c):
    with open(c.path('z.img'), 'wb') as f:
        f.write(bytes(1 * MiB))
    o = c.json(c.run([c.suite.vdisk, 'probe', '--format=raw', 'z.img'], rc=0))
    c.eq('matches', o.get('matches'), True, right='expected')
    c.eq('signatures', o.get('signatures'), [], right='expected')
    # the same file declared qcow2 is not a valid qcow2 image
    o = c.json(c.run([c.suite.vdisk, 'info', '--format=qcow2', 'z.img']))
    c.eq('info --format=qcow2 valid on a raw file', o.get('valid'), False, right='expected')
    c.expect(len(o.get('problems', [])) > 0, 'info --format=qcow2 on a raw file reports no problem')
    c.expect('virtual-size' not in o, 'info --format=qcow2 on a raw file reports a virtual size')
    p = c.run([c.suite.vdisk, 'probe', '--format=qcow2', 'z.img'], rc=1)
    c.eq('matches as qcow2', c.json(p).get('matches'), False, right='expected')


# ---- main ----------------------------------------------------------------------------------------

def main():
    if len(sys.argv) != 2:
        print(f'usage: {sys.argv[0]} VDISK-IMG', file=sys.stderr)
        return 1
    vdisk = os.path.abspath(sys.argv[1])
    missing = [t for t in ('qemu-img', 'qemu-io') if not shutil.which(t)]
    if missing:
        print(f'SKIP: {", ".join(missing)} not found')
        return 77
    if not os.access(vdisk, os.X_OK):
        print(f'FAIL: {vdisk} is not executable')
        return 1

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='vdisk-diff-') as tmp:
        s = Suite(vdisk, tmp)

        # Empty images: main cluster sizes x compat x backing (none, with -F, without format) x sizes.
        for cs in MAIN_CLUSTERS:
            for compat in ('0.10', '1.1'):
                for backing in (None, 'F', 'noF'):
                    for size in SIZES:
                        if not can_address(cs, size):
                            continue
                        s.case(f'empty cs={human(cs)} compat={compat} backing={backing or "none"} size={human(size)}',
                               case_empty, cs, size, compat, backing)
        # Reduced subset: compat 1.1, no backing.
        for cs in REDUCED_CLUSTERS:
            for size in SIZES:
                if can_address(cs, size):
                    s.case(f'empty cs={human(cs)} compat=1.1 backing=none size={human(size)}', case_empty, cs, size,
                           '1.1', None)

        # Images with data written by qemu-io.
        for cs in MAIN_CLUSTERS:
            for compat in ('0.10', '1.1'):
                for backing in (None, 'F', 'noF'):
                    s.case(f'data cs={human(cs)} compat={compat} backing={backing or "none"}', case_data, cs, compat,
                           backing)
                s.case(f'snapshot cs={human(cs)} compat={compat}', case_data, cs, compat, snapshot=True)
                s.case(f'compressed cs={human(cs)} compat={compat}', case_compressed, cs, compat)
            s.case(f'data cs={human(cs)} lazy_refcounts=on', case_data, cs, '1.1', lazy=True)
            if cs >= 16 * KiB:
                s.case(f'data cs={human(cs)} extended_l2=on', case_data, cs, '1.1', extl2=True)
                s.case(f'data cs={human(cs)} extended_l2=on backing=F snapshot', case_data, cs, '1.1', backing='F',
                       extl2=True, snapshot=True)
                s.case(f'compressed cs={human(cs)} extended_l2=on', case_compressed, cs, '1.1', extl2=True)
        for cs in REDUCED_CLUSTERS:
            s.case(f'data cs={human(cs)} compat=1.1 backing=F', case_data, cs, '1.1', 'F')
            s.case(f'data cs={human(cs)} compat=0.10 backing=none', case_data, cs, '0.10')
            s.case(f'compressed+snapshot cs={human(cs)}', case_compressed, cs, '1.1', snapshot=True)
            if cs >= 16 * KiB:
                s.case(f'data cs={human(cs)} extended_l2=on', case_data, cs, '1.1', extl2=True)
        # Refcount widths other than 16 bits (sub-byte ones included); a snapshot where 2 fits.
        for rb in (1, 2, 4, 8, 32, 64):
            s.case(f'data cs=4K refcount_bits={rb}{" snapshot" if rb > 1 else ""}', case_data, 4 * KiB, '1.1',
                   refcount_bits=rb, snapshot=rb > 1)
        for cs in (512, 64 * KiB):
            s.case(f'data cs={human(cs)} with persistent bitmaps', case_data, cs, '1.1', bitmaps=True)
        # 512 B clusters, 10 MiB of data: the refcount table grows past its first cluster.
        s.case('data cs=512 refcount table growth', case_data, 512, '1.1', extra_ops=['write -P 0x5e 1M 10M'],
               size=12 * MiB, min_reftable_clusters=2, tag='grow')
        s.case('dirty cs=64K lazy_refcounts=on after abort', case_dirty, 64 * KiB)
        s.case('dirty cs=512 lazy_refcounts=on after abort', case_dirty, 512)

        # Raw images.
        raw_ops = [
            'write -P 0x11 65536 100',
            'write -P 0x22 1048576 65536',
            'write -z 1048576 4096',
            'write -P 0x33 2097152 65536',
            'write -z -u 2097152 8192',
            'discard 2105344 4096',
            'write -P 0x44 4193792 512',
        ]
        for size in (0, 512, 1 * MiB, 1 * GiB):
            s.case(f'raw size={human(size)}', case_raw, size, [])
        s.case('raw size=4M with writes', case_raw, 4 * MiB, raw_ops)
        s.case('raw size=1G with scattered writes', case_raw, 1 * GiB,
               [f'write -P {i + 1} {i * 37 * MiB + i * 4096} {(i + 1) * 8192}' for i in range(20)] +
               ['write -z -u 37748736 4096', 'write -P 0x55 1073741312 512'])

        # Probe refusals.
        s.case('probe: qcow2 declared raw is refused, naming qcow2', case_probe_qcow2_as_raw)
        s.case('probe: zeros declared raw match; declared qcow2 invalid', case_probe_raw_zeros)

    elapsed = time.monotonic() - t0
    total = s.passed + len(s.failed)
    print(f'\n{total} cases: {s.passed} passed, {len(s.failed)} failed ({elapsed:.1f} s)')
    for name in s.failed:
        print(f'  failed: {name}')
    return 1 if s.failed else 0


if __name__ == '__main__':
    sys.exit(main())
