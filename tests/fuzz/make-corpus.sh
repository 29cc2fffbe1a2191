#!/bin/bash
# Regenerates the qcow2 seed corpus with qemu-img/qemu-io (small images: 512-byte clusters mostly).
# The images reference only siblings inside a temporary directory; the backing names are bare.
set -euo pipefail
out=$(realpath "${1:-$(dirname "$0")/corpus/qcow2}")
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
cd "$t"
mk() { qemu-img create -q -f qcow2 "$@"; }
mk -o cluster_size=512 empty-v3.qcow2 1M
mk -o cluster_size=512,compat=0.10 empty-v2.qcow2 1M
mk -o cluster_size=512 data.qcow2 64K
qemu-io -c 'write -P 0xab 0 4k' -c 'write -z 8k 1k' -c 'discard 16k 512' data.qcow2 >/dev/null
mk -o cluster_size=512 base.qcow2 64K
mk -o cluster_size=512 -b base.qcow2 -F qcow2 overlay.qcow2
qemu-io -c 'write -P 0x11 1k 2k' overlay.qcow2 >/dev/null
mk -o cluster_size=512 snap.qcow2 64K
qemu-io -c 'write -P 0x22 0 2k' snap.qcow2 >/dev/null
qemu-img snapshot -c s1 snap.qcow2
qemu-io -c 'write -P 0x33 512 1k' snap.qcow2 >/dev/null
head -c 8192 /dev/urandom > r.raw; head -c 8192 /dev/zero >> r.raw
qemu-img convert -c -f raw -O qcow2 -o cluster_size=512 r.raw compressed.qcow2
yes 'vdisk corpus' | head -c 8192 > t.raw  # compressible: clusters stay compressed
qemu-img convert -c -f raw -O qcow2 -o cluster_size=512,compression_type=zstd t.raw compressed-zstd.qcow2
# header_length 512 = the cluster size: no room for extensions, none read (as QEMU reads it)
mk -o cluster_size=512 hlen-cluster.qcow2 64K
printf '\x00\x00\x02\x00' | dd of=hlen-cluster.qcow2 bs=1 seek=100 conv=notrunc status=none
mk -o cluster_size=16k,extended_l2=on extl2.qcow2 1M
qemu-io -c 'write -P 0x44 0 2k' extl2.qcow2 >/dev/null
mk -o cluster_size=512,lazy_refcounts=on lazy.qcow2 64K
mk -o cluster_size=512,refcount_bits=1 refbits1.qcow2 64K
mk -o cluster_size=512,refcount_bits=64 refbits64.qcow2 64K
mk -o cluster_size=512,data_file=data.bin ext-data.qcow2 64K
mkdir -p "$out"
for f in *.qcow2; do cp "$f" "$out/$f"; done
ls -l "$out"
