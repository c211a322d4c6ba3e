#!/usr/bin/env bash
# Export an arlm model as GGUF (`arlm export gguf`) and run it in llama.cpp: the token ids of llama-tokenize
# against arlm's, a greedy continuation from each, and llama-bench's tokens/s.
#   bash benchmarks/export_gguf_llamacpp.sh [MODEL] [OUT.gguf]
#     MODEL  an arlm run or checkpoint with a bpe tokenizer, an HF folder, or smollm2 (default runs/quickstart,
#            which `make demo` trains)
#     OUT    default runs/gguf/<model name>-<OUTTYPE>.gguf
#   LLAMACPP_DIR  a llama.cpp build folder holding llama-bench, llama-cli / llama-completion, llama-tokenize
#                 (searched in it, bin/ and build/bin/); without it only the export and arlm's side run.
#   OUTTYPE (f32 | f16 | bf16 | q8_0, default f32), THREADS (default 2), PROMPT, TOKENS (default 32)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
MODEL=${1:-runs/quickstart}
OUTTYPE=${OUTTYPE:-f32}
OUT=${2:-runs/gguf/$(basename "$MODEL")-$OUTTYPE.gguf}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-The }
TOKENS=${TOKENS:-32}

"$PYTHON" -m arlm export gguf "$MODEL" "$OUT" --outtype "$OUTTYPE" --overwrite
echo "== arlm greedy continuation of the exported file"
"$PYTHON" -m arlm generate "$OUT" --prompt "$PROMPT" --temperature 0 --max-new-tokens "$TOKENS"
echo

find_tool() {  # the path of a llama.cpp program in $LLAMACPP_DIR, bin/ or build/bin/, or nothing
    local dir
    for dir in "$LLAMACPP_DIR" "$LLAMACPP_DIR/bin" "$LLAMACPP_DIR/build/bin"; do
        if [[ -x "$dir/$1" ]]; then echo "$dir/$1"; return; fi
    done
}

if [[ -z "${LLAMACPP_DIR:-}" ]]; then
    cat <<'EOF'
LLAMACPP_DIR is not set, so llama.cpp was not run. To build it (about 10 minutes on 2 cores):
    git clone https://github.com/ggml-org/llama.cpp && cd llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF
    cmake --build build -j 2 --target llama-bench llama-cli llama-completion llama-tokenize
(or unpack the llama-cpp-python source distribution from PyPI and build its vendor/llama.cpp the same way),
then run again with LLAMACPP_DIR=/path/to/llama.cpp/build.
EOF
    exit 0
fi

TOKENIZE=$(find_tool llama-tokenize)
if [[ -n "$TOKENIZE" ]]; then
    echo "== token ids of the prompt: llama.cpp vs arlm"
    theirs=$("$TOKENIZE" -m "$OUT" -p "$PROMPT" --ids --no-bos --log-disable 2>/dev/null | tail -n 1 | tr -d ' ')
    ours=$("$PYTHON" -c "import sys; from arlm.data.tokenizers import load_tokenizer; \
print(str(load_tokenizer(sys.argv[1]).encode(sys.argv[2])).replace(' ', ''))" "$OUT" "$PROMPT")
    echo "llama.cpp $theirs"
    echo "arlm      $ours"
    [[ "$theirs" == "$ours" ]] && echo "identical" || { echo "token ids DIFFER"; exit 1; }
fi

COMPLETE=$(find_tool llama-completion)
[[ -n "$COMPLETE" ]] || COMPLETE=$(find_tool llama-cli)
if [[ -n "$COMPLETE" ]]; then
    echo "== llama.cpp greedy continuation ($(basename "$COMPLETE"))"
    "$COMPLETE" -m "$OUT" -p "$PROMPT" -n "$TOKENS" --temp 0 -t "$THREADS" -no-cnv --no-warmup 2>/dev/null
    echo
fi

BENCH=$(find_tool llama-bench)
if [[ -z "$BENCH" ]]; then
    echo "no llama-bench in $LLAMACPP_DIR (build it: cmake --build build --target llama-bench)"
    exit 1
fi
echo "== llama-bench: token generation (-p 0: the prompt-batch path crashed on AMX machines here)"
"$BENCH" -m "$OUT" -t "$THREADS" -p 0 -n 64
