#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Fetches qemu-img from bookworm-backports (the newest peer of docs/benchmarks.md) without
# installing anything: apt downloads qemu-utils into a private apt state, dpkg -x unpacks it.
# Usage: fetch-qemu-img.sh DIR   -> DIR/root/usr/bin/qemu-img (cached: nothing is fetched twice)
set -eu
D=${1:?usage: fetch-qemu-img.sh DIR}
mkdir -p "$D"
D=$(cd "$D" && pwd)
if [ -x "$D/root/usr/bin/qemu-img" ] && "$D/root/usr/bin/qemu-img" --version >/dev/null 2>&1; then
    echo "$D/root/usr/bin/qemu-img"
    exit 0
fi
T=$(mktemp -d "$D/fetch.XXXXXX")
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/lists/partial" "$T/cache/archives/partial" "$T/src"
awk 'BEGIN{RS="";ORS="\n\n"} NR==1' /etc/apt/sources.list.d/debian.sources \
    | sed 's/^Suites:.*/Suites: bookworm-backports/' > "$T/src/bpo.sources"
O="-o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=$T/src -o Dir::State::Lists=$T/lists -o Dir::Cache=$T/cache"
# shellcheck disable=SC2086
apt-get $O update >&2
# shellcheck disable=SC2086
(cd "$T" && apt-get $O download qemu-utils/bookworm-backports >&2)
rm -rf "$D/root"
dpkg -x "$T"/qemu-utils_*.deb "$D/root"
"$D/root/usr/bin/qemu-img" --version >&2
echo "$D/root/usr/bin/qemu-img"
