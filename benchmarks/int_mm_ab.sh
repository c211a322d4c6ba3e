#!/usr/bin/env bash
# arlm's int8 / int4 product at git revision REV (default HEAD) against the working tree's, alternating in one
# process (benchmarks/int_mm_ab.c): one thread in cache, two threads streaming 128 copies of the layer from memory.
#
#     bash benchmarks/int_mm_ab.sh [REV]
#
# "b / a" below 1: the working tree's kernel is faster. Time it on quiet cores.
# ARLM_AB_OUTPUTS=N (an N x 576 layer), ARLM_AB_ROWS=8,64,256 (row counts, else 1..8) and ARLM_AB_HUGE=1 (2 MiB
# pages) pass through to the harness; ARLM_AB_MARCH=haswell builds both for another CPU (there: AVX2's engine).
set -euo pipefail
rev="${1:-HEAD}"
root="$(git rev-parse --show-toplevel)"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
mkdir "$build/a" "$build/b"  # each version with its own headers (quantized_*.h where it has them)
for name in $(git -C "$root" ls-tree --name-only "$rev" src/arlm/model/ | grep -E '/(quantized[^/]*|kernels\.h)$'); do
    git -C "$root" show "$rev:$name" > "$build/a/$(basename "$name")"
done
cp "$root"/src/arlm/model/quantized*.[ch] "$root/src/arlm/model/kernels.h" "$build/b/"
flags=(-O3 -march="${ARLM_AB_MARCH:-native}" -ffp-contract=off -fopenmp)
for v in a b; do
    "${CC:-cc}" "${flags[@]}" -I "$build/$v" -c "$build/$v/quantized.c" -o "$build/$v.o" \
        -Darlm_int_mm="arlm_int_mm_$v" -Darlm_int_rows="arlm_int_rows_$v"
done
"${CC:-cc}" "${flags[@]}" -I "$build/b" "$root/benchmarks/int_mm_ab.c" "$build/a.o" "$build/b.o" -o "$build/int_mm_ab" -lm
echo "a: quantized.c at $rev; b: the working tree's; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
for kind in 1 2; do
    "$build/int_mm_ab" "$kind" 1 1
    "$build/int_mm_ab" "$kind" 2 128
done
