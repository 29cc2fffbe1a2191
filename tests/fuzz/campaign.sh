#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The long fuzz campaign of CAMPAIGN.md: each target in turn for RUNS executions, on a work copy of its
# seed corpora, with the command line the campaign used. Logs, work corpora and crash artifacts go to
# OUTDIR/<target>.log, OUTDIR/<target>-work/, OUTDIR/<target>-art/.
#
#   CC=clang meson setup build-fuzz -Dfuzzing=true                                  # ASan + UBSan
#   CC=clang meson setup build-fuzz-fast -Dfuzzing=true -Dfuzzing_sanitizers=false   # coverage only
#   tests/fuzz/campaign.sh BUILDDIR [RUNS [OUTDIR [TARGET...]]]
#
# tests/fuzz/campaign.sh --corpora TARGET prints the corpus directories that seed TARGET (the same as
# tests/fuzz/meson.build gives its seeds test).
set -u

corpora() {
        case "$1" in
        fuzz-qcow2) echo qcow2 qcow2-read ;;
        fuzz-qcow2-header) echo qcow2 qcow2-header ;;
        fuzz-qcow2-walk) echo qcow2 qcow2-walk ;;
        fuzz-record) echo record ;;
        fuzz-domain-xml) echo domain-xml ;;
        *) echo "unknown fuzz target $1" >&2; return 1 ;;
        esac
}

if [ "${1:-}" = --corpora ]; then
        corpora "${2:?target}"
        exit
fi

build=${1:?usage: campaign.sh BUILDDIR [RUNS [OUTDIR [TARGET...]]]}
runs=${2:-10000000}
out=${3:-$build/fuzz-campaign}
shift $(($# < 3 ? $# : 3))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz-record fuzz-domain-xml fuzz-qcow2-header fuzz-qcow2 fuzz-qcow2-walk)
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
status=0

for t in "${targets[@]}"; do
        bin=$build/tests/fuzz/$t
        [ -x "$bin" ] || { echo "$bin: not built (meson setup with -Dfuzzing=true)" >&2; exit 2; }
        work=$out/$t-work
        art=$out/$t-art/
        mkdir -p "$work" "$art"
        for c in $(corpora "$t"); do
                cp -n "$src/corpus/$c"/* "$work"/
        done
        dict=()
        name=${t#fuzz-}
        [ -f "$src/$name.dict" ] && dict=(-dict="$src/$name.dict")
        start=$(date +%s)
        "$bin" -runs="$runs" -max_len=131072 -print_final_stats=1 -rss_limit_mb=2048 -timeout=10 \
                "${dict[@]}" -artifact_prefix="$art" "$work" >"$out/$t.log" 2>&1
        rc=$?
        [ $rc -eq 0 ] || status=1
        printf '%-18s rc=%d wall=%ds %s, %s/s, peak RSS %s MB, corpus %s files, artifacts %s\n' "$t" $rc \
                $(($(date +%s) - start)) \
                "$(grep -o 'Done [0-9]* runs' "$out/$t.log")" \
                "$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out/$t.log")" \
                "$(sed -n 's/^stat::peak_rss_mb: *//p' "$out/$t.log")" \
                "$(find "$work" -type f | wc -l)" "$(find "$art" -type f | wc -l)"
done
exit $status
