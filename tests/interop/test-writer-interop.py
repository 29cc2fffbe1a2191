#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""
Interop tests for vdisk's writer: every image `vdisk-img create` / `vdisk-img set-backing` produces
must be accepted by QEMU 7.2 as it is meant to be.

    python3 test-writer-interop.py /path/to/vdisk-img

  * create --format=qcow2: cluster sizes 512 B..2 MiB (every power of two) x virtual sizes 0, 512,
    1M, 1G, 16T x without / with a backing file (--backing=base.qcow2 --backing-format=qcow2):
    `qemu-img check` clean (exit 0, no corruptions, no leaks) and `qemu-img info` shows the
    format, virtual size, cluster size, backing name and backing format asked for. Combinations
    that need an L1 table over QEMU's 32 MiB limit must be refused (exit != 0, no file left
    behind), and qemu-img must refuse them too.
  * qemu-io writes into vdisk-created images and reads the pattern back; check stays clean.
  * a vdisk overlay on a qemu-created base (qcow2 and raw) reads the base's data through.
  * --template=swap for raw and qcow2 (512 B and 64 KiB clusters): blkid sees a swap area.
  * set-backing on a qemu-created overlay: to a raw sibling, then removed.
  * --data-file (and --data-file-raw): qemu-img info shows the data file, check is clean.

SAFETY (docs/security.md, "Testing safely"): everything happens in a private temporary directory that
is the working directory of qemu-img and qemu-io; names written into images are bare sibling names
of files in that directory (never absolute, never ".."); a canary file there is checked after every
case; qemu-img is never given `-o` options that name files.

Exit status: 0 all passed, 1 a failure, 77 qemu-img or qemu-io missing.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
ABSENT = '<absent>'

CLUSTERS = [1 << b for b in range(9, 22)]  # 512 B .. 2 MiB
SIZES = [0, 512, 1 * MiB, 1 * GiB, 16 * TiB]
SWAP_MAGIC_OFFSET = 4086


class Failure(Exception):
    pass


def can_address(cs, size):
    """QEMU's (and vdisk's) limit: the L1 table holds at most 32 MiB of entries."""
    entries = -(-size // (cs * (cs // 8)))
    return entries * 8 <= 32 * MiB


def human(n):
    for unit, div in (('T', TiB), ('G', GiB), ('M', MiB), ('K', KiB)):
        if n >= div and n % div == 0:
            return f'{n // div}{unit}'
    return str(n)


def bare(name):
    """Names that end up inside images are bare sibling names, never paths."""
    if '/' in name or name in ('', '.', '..') or '\0' in name:
        raise Failure(f'refusing to use {name!r} as a name inside an image')
    return name


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

    def eq(self, what, got, want):
        if got != want:
            self.fail(f'{what}: got {got!r}, expected {want!r}')
            return False
        return True

    def run(self, argv, rc=0):
        p = subprocess.run(argv, cwd=self.suite.tmp, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           env=self.suite.env, timeout=300)
        if rc is not None and p.returncode != rc:
            raise Failure(f'{" ".join(argv)}: exit {p.returncode}, expected {rc}; '
                          f'output: {(p.stdout + p.stderr).strip()[:500]}')
        return p

    def json(self, p):
        try:
            return json.loads(p.stdout)
        except ValueError as e:
            raise Failure(f'{" ".join(p.args)}: output is not JSON ({e}): {p.stdout[:300]!r}')

    def path(self, name):
        return os.path.join(self.suite.tmp, bare(name))

    # -- tools --

    def vdisk(self, *args, rc=0):
        return self.run([self.suite.vdisk, *args], rc=rc)

    def qemu_io(self, name, *ops, fmt='qcow2', rc=0):
        argv = ['qemu-io', '-f', fmt]
        for op in ops:
            argv += ['-c', op]
        p = self.run(argv + [bare(name)], rc=rc)
        if rc == 0:
            for line in (p.stdout + p.stderr).splitlines():
                low = line.lower()
                if 'failed' in low or 'error' in low:
                    raise Failure(f'qemu-io {list(ops)}: {line}')
        return p

    def qemu_check(self, name, fmt='qcow2'):
        """qemu-img check must be clean: exit 0, no corruptions, no leaks, no check errors."""
        p = self.run(['qemu-img', 'check', '-f', fmt, '--output=json', bare(name)], rc=None)
        try:
            o = json.loads(p.stdout)
        except ValueError:
            self.fail(f'qemu-img check {name}: exit {p.returncode}, no JSON: {(p.stdout + p.stderr).strip()[:300]}')
            return None
        self.eq(f'qemu-img check {name} exit code', p.returncode, 0)
        for key in ('corruptions', 'leaks', 'check-errors'):
            self.eq(f'qemu-img check {name} {key}', o.get(key, 0), 0)
        return o

    def qemu_info(self, name, fmt='qcow2'):
        return self.json(self.run(['qemu-img', 'info', '-f', fmt, '--output=json', bare(name)]))

    def expect_info(self, name, size, cs=None, backing=None, backing_fmt=None, fmt='qcow2'):
        qi = self.qemu_info(name, fmt)
        self.eq(f'qemu-img info {name} format', qi.get('format'), fmt)
        self.eq(f'qemu-img info {name} virtual-size', qi.get('virtual-size'), size)
        if cs is not None:
            self.eq(f'qemu-img info {name} cluster-size', qi.get('cluster-size'), cs)
        self.eq(f'qemu-img info {name} backing-filename', qi.get('backing-filename', ABSENT), backing or ABSENT)
        self.eq(f'qemu-img info {name} backing-filename-format', qi.get('backing-filename-format', ABSENT),
                backing_fmt or ABSENT)
        if fmt == 'qcow2':
            data = qi.get('format-specific', {}).get('data', {})
            # The writer's rules (docs/qcow2.md): v3, 16-bit refcounts, no lazy refcounts, not dirty/corrupt.
            for key, want in (('compat', '1.1'), ('refcount-bits', 16), ('lazy-refcounts', False),
                              ('corrupt', False), ('extended-l2', False), ('compression-type', 'zlib')):
                self.eq(f'qemu-img info {name} format-specific.data.{key}', data.get(key, ABSENT), want)
            self.eq(f'qemu-img info {name} dirty-flag', qi.get('dirty-flag'), False)
        return qi

    def vdisk_clean(self, name):
        """vdisk's own view of the image afterwards: valid, metadata walk clean."""
        o = self.json(self.vdisk('info', '--format=qcow2', '--check', bare(name)))
        self.eq(f'vdisk info {name} valid', o.get('valid'), True)
        self.eq(f'vdisk info {name} problems', o.get('problems'), [])
        return o


class Suite:
    def __init__(self, vdisk, tmp):
        self.vdisk = vdisk
        self.tmp = tmp
        self.env = dict(os.environ, LC_ALL='C')
        self.passed = 0
        self.failed = []
        self.canary = os.path.join(tmp, 'canary')
        with open(self.canary, 'wb') as f:
            f.write(b'vdisk interop canary\n' + os.urandom(4096))
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


UMASK = os.umask(0o022)
os.umask(UMASK)


# ---- cases --------------------------------------------------------------------------------------

def case_create(c, cs, size, backing):
    name = f'w-{cs}-{human(size)}{"-b" if backing else ""}.qcow2'
    args = ['create', '--format=qcow2', f'--cluster-size={cs}']
    if backing:
        args += [f'--backing={bare("base.qcow2")}', '--backing-format=qcow2']
    if can_address(cs, size):
        c.vdisk(*args, name, str(size))
        # Created like any file a tool creates: 0666 minus the umask (not whatever open() found on the
        # stack without its mode argument; root reads any mode, an unprivileged user then cannot).
        mode = os.stat(c.path(name)).st_mode & 0o7777
        c.expect(mode == 0o666 & ~UMASK, f'vdisk-img create made {name} with mode {mode:o}, want {0o666 & ~UMASK:o}')
        c.qemu_check(name)
        c.expect_info(name, size, cs, 'base.qcow2' if backing else None, 'qcow2' if backing else None)
        c.vdisk_clean(name)
    else:
        p = c.vdisk(*args, name, str(size), rc=None)
        c.expect(p.returncode != 0, f'vdisk-img create {name} {size} was accepted')
        c.expect(not os.path.lexists(c.path(name)), f'{name} was left behind after a refused create')
        # qemu-img refuses the same combination.
        q = f'q-{cs}-{human(size)}.qcow2'
        p = c.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', f'cluster_size={cs}', q, str(size)], rc=None)
        c.expect(p.returncode != 0, f'qemu-img accepted {human(size)} with {cs} B clusters, vdisk refused it')
        if os.path.lexists(c.path(q)):
            os.unlink(c.path(q))


def case_create_refused(c, cluster_size):
    name = f'bad-cs-{cluster_size}.qcow2'
    p = c.vdisk('create', '--format=qcow2', f'--cluster-size={cluster_size}', name, '1M', rc=None)
    c.expect(p.returncode != 0, f'cluster size {cluster_size} was accepted')
    c.expect(not os.path.lexists(c.path(name)), f'{name} was left behind after a refused create')


def case_size_refused(c, size):
    name = f'bad-size-{size}.qcow2'
    p = c.vdisk('create', '--format=qcow2', name, str(size), rc=None)
    c.expect(p.returncode != 0, f'virtual size {size} was accepted')
    c.expect(not os.path.lexists(c.path(name)), f'{name} was left behind after a refused create')


def case_qemu_writes(c, cs, size, backing):
    name = f'io-{cs}{"-b" if backing else ""}.qcow2'
    args = ['create', '--format=qcow2', f'--cluster-size={cs}']
    if backing:
        args += ['--backing=base.qcow2', '--backing-format=qcow2']
    c.vdisk(*args, name, str(size))
    c.qemu_io(name, 'write -P 0x5a 0 1M')
    c.qemu_check(name)
    c.qemu_io(name, 'read -P 0x5a 0 1M')
    # the next MiB: zeros without a backing file, the (zero-filled) base with one
    c.qemu_io(name, 'read -P 0 1M 1M')
    # the read must be able to fail
    c.qemu_io(name, 'read -P 0x5b 0 512', rc=1)
    c.expect_info(name, size, cs, 'base.qcow2' if backing else None, 'qcow2' if backing else None)
    c.vdisk_clean(name)


def case_overlay_on_qemu_base(c, cs, base, base_fmt, size):
    name = f'ov-{cs}-{base_fmt}-{human(size)}.qcow2'
    c.vdisk('create', '--format=qcow2', f'--cluster-size={cs}', f'--backing={bare(base)}',
            f'--backing-format={base_fmt}', name, str(size))
    c.qemu_check(name)
    c.expect_info(name, size, cs, base, base_fmt)
    # The base (4 MiB) holds 0xa5 in [0, 1M), 0xa6 in [3M, 3.5M), zeros elsewhere.
    c.qemu_io(name, 'read -P 0xa5 0 1M', 'read -P 0 1M 2M', 'read -P 0xa6 3M 512K', 'read -P 0 3670016 512K')
    if size > 4 * MiB:
        c.qemu_io(name, f'read -P 0 4M {size - 4 * MiB}')  # past the end of the base: zeros
    # a write into the overlay hides the base there and nowhere else
    c.qemu_io(name, 'write -P 0x5b 512K 4K')
    c.qemu_io(name, 'read -P 0xa5 0 512K', 'read -P 0x5b 512K 4K', 'read -P 0xa5 528384 520192')
    c.qemu_io(name, 'read -P 0xa5 512K 4K', rc=1)
    c.qemu_check(name)
    c.vdisk_clean(name)
    # the base is untouched
    c.qemu_io(base, 'read -P 0xa5 512K 4K', fmt=base_fmt)


def swap_check(c, raw_name, size):
    with open(c.path(raw_name), 'rb') as f:
        f.seek(SWAP_MAGIC_OFFSET)
        c.eq(f'{raw_name} bytes at {SWAP_MAGIC_OFFSET}', f.read(10), b'SWAPSPACE2')
    c.eq(f'{raw_name} size', os.path.getsize(c.path(raw_name)), size)
    if shutil.which('blkid'):
        p = c.run(['blkid', '-p', '-o', 'value', '-s', 'TYPE', bare(raw_name)], rc=None)
        c.eq(f'blkid -p {raw_name} TYPE', p.stdout.strip(), 'swap')


def case_swap_raw(c, size):
    name = f'swap-{human(size)}.img'
    c.vdisk('create', '--format=raw', '--template=swap', name, str(size))
    c.expect_info(name, size, fmt='raw')
    swap_check(c, name, size)
    o = c.json(c.vdisk('probe', '--format=raw', name))
    c.eq(f'vdisk probe --format=raw {name} matches', o.get('matches'), True)


def case_swap_qcow2(c, cs, size):
    name = f'swap-{cs}.qcow2'
    c.vdisk('create', '--format=qcow2', f'--cluster-size={cs}', '--template=swap', name, str(size))
    c.qemu_check(name)
    c.expect_info(name, size, cs)
    c.vdisk_clean(name)
    raw = f'swap-{cs}.converted.img'
    c.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', name, raw])
    swap_check(c, raw, size)
    # and only the first page holds data
    c.qemu_io(name, f'read -P 0 4096 {size - 4096}')


def case_swap_refused(c):
    for fmt, name in (('raw', 'tiny-swap.img'), ('qcow2', 'tiny-swap.qcow2')):
        p = c.vdisk('create', f'--format={fmt}', '--template=swap', name, '16K', rc=None)
        c.expect(p.returncode != 0, f'a {fmt} swap area of 4 pages was accepted')
        c.expect(not os.path.lexists(c.path(name)), f'{name} was left behind after a refused create')


def case_set_backing(c, cs, compat):
    tag = f'{cs}-{compat}'
    base, other, ov = f'sb-base-{tag}.qcow2', f'sb-other-{tag}.raw', f'sb-ov-{tag}.qcow2'
    size = 4 * MiB
    c.run(['qemu-img', 'create', '-q', '-f', 'qcow2', base, str(size)])
    c.qemu_io(base, f'write -P 0xb1 0 {size}')
    c.run(['qemu-img', 'create', '-q', '-f', 'raw', other, str(size)])
    c.qemu_io(other, f'write -P 0xc3 0 {size}', fmt='raw')
    c.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-o', f'cluster_size={cs},compat={compat}', '-b', base,
           '-F', 'qcow2', ov, str(size)])
    c.qemu_io(ov, 'write -P 0x5c 1M 64K')
    # The write allocated the overlay's clusters around it, filled from the old base (COW).
    alloc_start, alloc_end = (1 * MiB) // cs * cs, min(-(-(1 * MiB + 64 * KiB) // cs) * cs, size)

    def reads(below):
        """qemu-io reads of the whole overlay; `below` is the pattern of the current backing."""
        segs = [(0, alloc_start, below), (alloc_start, 1 * MiB - alloc_start, 0xb1), (1 * MiB, 64 * KiB, 0x5c),
                (1 * MiB + 64 * KiB, alloc_end - 1 * MiB - 64 * KiB, 0xb1), (alloc_end, size - alloc_end, below)]
        return [f'read -P {pat:#x} {start} {length}' for start, length, pat in segs if length > 0]

    c.qemu_io(ov, *reads(0xb1))

    # to another sibling, format raw
    c.vdisk('set-backing', ov, bare(other), 'raw')
    qi = c.qemu_info(ov)
    c.eq('after set-backing: backing-filename', qi.get('backing-filename', ABSENT), other)
    c.eq('after set-backing: backing-filename-format', qi.get('backing-filename-format', ABSENT), 'raw')
    c.eq('after set-backing: virtual-size', qi.get('virtual-size'), size)
    c.eq('after set-backing: cluster-size', qi.get('cluster-size'), cs)
    c.eq('after set-backing: compat', qi.get('format-specific', {}).get('data', {}).get('compat'), compat)
    c.qemu_check(ov)
    vi = c.vdisk_clean(ov)
    c.eq('vdisk info after set-backing: backing-filename', vi.get('backing-filename', ABSENT), other)
    c.eq('vdisk info after set-backing: backing-filename-format', vi.get('backing-filename-format', ABSENT), 'raw')
    c.qemu_io(ov, *reads(0xc3))
    c.qemu_io(ov, f'read -P 0xb1 0 {alloc_start or size}', rc=1)  # the old base is no longer read

    # removed
    c.vdisk('set-backing', ov)
    qi = c.qemu_info(ov)
    c.eq('after removal: backing-filename', qi.get('backing-filename', ABSENT), ABSENT)
    c.eq('after removal: backing-filename-format', qi.get('backing-filename-format', ABSENT), ABSENT)
    c.eq('after removal: virtual-size', qi.get('virtual-size'), size)
    c.qemu_check(ov)
    vi = c.vdisk_clean(ov)
    c.eq('vdisk info after removal: backing-filename', vi.get('backing-filename', ABSENT), ABSENT)
    c.qemu_io(ov, *reads(0))


def case_data_file(c, cs, raw):
    tag = f'{cs}{"-raw" if raw else ""}'
    data, name = f'data-{tag}.bin', f'df-{tag}.qcow2'
    size = 4 * MiB
    # The data file is created here, before the image names it (never by qemu-img).
    with open(c.path(data), 'wb') as f:
        f.truncate(size)
    args = ['create', '--format=qcow2', f'--cluster-size={cs}', f'--data-file={bare(data)}']
    if raw:
        args.append('--data-file-raw')
    c.vdisk(*args, name, str(size))
    qi = c.expect_info(name, size, cs)
    d = qi.get('format-specific', {}).get('data', {})
    c.eq('qemu-img info data-file', d.get('data-file', ABSENT), data)
    c.eq('qemu-img info data-file-raw', d.get('data-file-raw', ABSENT), raw)
    c.qemu_check(name)
    vi = c.vdisk_clean(name)
    c.eq('vdisk info data-file', vi.get('format-specific', {}).get('data', {}).get('data-file', ABSENT), data)
    # Guest writes land in the data file at the guest offset.
    c.qemu_io(name, 'write -P 0x6d 64K 64K')
    c.qemu_check(name)
    c.qemu_io(name, 'read -P 0x6d 64K 64K', 'read -P 0 0 64K')
    with open(c.path(data), 'rb') as f:
        f.seek(64 * KiB)
        c.eq('data file bytes at 64K', f.read(64 * KiB), b'\x6d' * (64 * KiB))
    c.eq('data file size', os.path.getsize(c.path(data)), size)
    c.vdisk_clean(name)


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
    if not shutil.which('blkid'):
        print('note: blkid not found, swap areas are checked by their SWAPSPACE2 bytes only')

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix='vdisk-writer-') as tmp:
        s = Suite(vdisk, tmp)
        setup = Case(s, 'setup')
        # The backing file of the create matrix, a qemu-created sibling.
        setup.run(['qemu-img', 'create', '-q', '-f', 'qcow2', 'base.qcow2', '1M'])
        # The base of the overlay cases: 4 MiB, 0xa5 in [0, 1M), 0xa6 in [3M, 3.5M).
        setup.run(['qemu-img', 'create', '-q', '-f', 'qcow2', 'data-base.qcow2', '4M'])
        setup.qemu_io('data-base.qcow2', 'write -P 0xa5 0 1M', 'write -P 0xa6 3M 512K')
        setup.run(['qemu-img', 'create', '-q', '-f', 'raw', 'data-base.raw', '4M'])
        setup.qemu_io('data-base.raw', 'write -P 0xa5 0 1M', 'write -P 0xa6 3M 512K', fmt='raw')
        if setup.errors:
            print('FAIL setup: ' + '; '.join(setup.errors))
            return 1

        for cs in CLUSTERS:
            for size in SIZES:
                for backing in (False, True):
                    what = 'refused' if not can_address(cs, size) else 'create'
                    s.case(f'{what} qcow2 cs={human(cs)} size={human(size)} backing={"base.qcow2" if backing else "none"}',
                           case_create, cs, size, backing)
        for bad in ('256', '4M', '3000'):
            s.case(f'refused qcow2 cluster size {bad}', case_create_refused, bad)
        for bad in ('1000', str(65 * TiB)):
            s.case(f'refused qcow2 virtual size {bad}', case_size_refused, bad)

        for cs in CLUSTERS:
            s.case(f'qemu-io writes into vdisk image cs={human(cs)}', case_qemu_writes, cs, 1 * GiB, False)
        for cs in (512, 64 * KiB, 2 * MiB):
            s.case(f'qemu-io writes into vdisk overlay cs={human(cs)}', case_qemu_writes, cs, 16 * MiB, True)

        for cs in (512, 4 * KiB, 64 * KiB, 2 * MiB):
            s.case(f'vdisk overlay cs={human(cs)} on qemu qcow2 base reads through', case_overlay_on_qemu_base, cs,
                   'data-base.qcow2', 'qcow2', 4 * MiB)
        s.case('vdisk overlay cs=64K (8M) on qemu qcow2 base (4M) reads through', case_overlay_on_qemu_base,
               64 * KiB, 'data-base.qcow2', 'qcow2', 8 * MiB)
        for cs in (512, 64 * KiB):
            s.case(f'vdisk overlay cs={human(cs)} on qemu raw base reads through', case_overlay_on_qemu_base, cs,
                   'data-base.raw', 'raw', 4 * MiB)

        s.case('swap template raw 64M', case_swap_raw, 64 * MiB)
        s.case('swap template raw 1G', case_swap_raw, 1 * GiB)
        for cs in (512, 64 * KiB):
            s.case(f'swap template qcow2 cs={human(cs)}', case_swap_qcow2, cs, 64 * MiB)
        s.case('swap template refused below 10 pages', case_swap_refused)

        for cs, compat in ((64 * KiB, '1.1'), (512, '1.1'), (64 * KiB, '0.10'), (2 * MiB, '1.1')):
            s.case(f'set-backing on qemu overlay cs={human(cs)} compat={compat}: raw sibling, then none',
                   case_set_backing, cs, compat)

        for cs, raw in ((64 * KiB, False), (64 * KiB, True), (512, False), (2 * MiB, True)):
            s.case(f'data file cs={human(cs)}{" raw" if raw else ""}', case_data_file, cs, raw)

    elapsed = time.monotonic() - t0
    total = s.passed + len(s.failed)
    print(f'\n{total} cases: {s.passed} passed, {len(s.failed)} failed ({elapsed:.1f} s)')
    for name in s.failed:
        print(f'  failed: {name}')
    return 1 if s.failed else 0


if __name__ == '__main__':
    sys.exit(main())
