#!/usr/bin/env bash
# Export an arlm model as GGUF (`arlm export gguf`) and run it in llama.cpp: llama-server's token ids and
# greedy continuation against arlm's on the same file, then llama-bench's tokens/s.
#   bash benchmarks/export_gguf_llamacpp.sh [MODEL] [OUT.gguf]
#     MODEL  an arlm run or checkpoint with a bpe tokenizer, an HF folder, or smollm2 (default runs/quickstart,
#            which `make demo` trains)
#     OUT    default runs/gguf/<model name>-<OUTTYPE>.gguf
#   LLAMACPP_DIR  a llama.cpp build folder holding llama-server and llama-bench (searched in it, bin/ and
#                 build/bin/); without it only the export and arlm's side run, and the script says how to build.
#   OUTTYPE (f32 | f16 | bf16 | q8_0, default f32), THREADS (default 2), PROMPT, TOKENS (default 32), PORT
# Checked on a 2-core Xeon with AMX (llama.cpp 0c1e570): F32 exports of SmolLM2 and of a random GQA model give
# identical token ids and greedy continuations; with Q8_0 llama-server died of "Illegal instruction" in its
# prompt-batch path there (as the inference issue notes), while llama-bench -p 0 ran.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1
MODEL=${1:-runs/quickstart}
OUTTYPE=${OUTTYPE:-f32}
OUT=${2:-runs/gguf/$(basename "$MODEL")-$OUTTYPE.gguf}
THREADS=${THREADS:-2}
PROMPT=${PROMPT:-The capital of France is Paris. The capital of Germany is}
TOKENS=${TOKENS:-32}
PORT=${PORT:-18090}

"$PYTHON" -m arlm export gguf "$MODEL" "$OUT" --outtype "$OUTTYPE" --overwrite

if [[ -z "${LLAMACPP_DIR:-}" ]]; then
    echo "== arlm's greedy continuation of the exported file"
    "$PYTHON" -m arlm generate "$OUT" --prompt "$PROMPT" --temperature 0 --max-new-tokens "$TOKENS"
    cat <<'EOF'

LLAMACPP_DIR is not set, so llama.cpp was not run. To build it (about 10 minutes on 2 cores):
    git clone https://github.com/ggml-org/llama.cpp && cd llama.cpp
    cmake -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF
    cmake --build build -j 2 --target llama-server llama-bench
(or unpack the llama-cpp-python source distribution from PyPI and build its vendor/llama.cpp the same way),
then run again with LLAMACPP_DIR=/path/to/llama.cpp/build.
EOF
    exit 0
fi

find_tool() {  # the path of a llama.cpp program in $LLAMACPP_DIR, bin/ or build/bin/, or nothing
    local dir
    for dir in "$LLAMACPP_DIR" "$LLAMACPP_DIR/bin" "$LLAMACPP_DIR/build/bin"; do
        if [[ -x "$dir/$1" ]]; then echo "$dir/$1"; return; fi
    done
}

SERVER=$(find_tool llama-server)
if [[ -n "$SERVER" ]]; then
    echo "== llama-server vs arlm on $OUT: token ids and greedy continuation"
    "$SERVER" -m "$OUT" --host 127.0.0.1 --port "$PORT" -t "$THREADS" -c 1024 --no-warmup >"$OUT.server.log" 2>&1 &
    server_pid=$!
    trap 'kill "$server_pid" 2>/dev/null || true' EXIT
    health="import json, sys, urllib.request as u; sys.exit(json.load(u.urlopen(sys.argv[1], timeout=5))['status'] != 'ok')"
    for _ in $(seq 120); do  # the server loads the model (bounded wait)
        kill -0 "$server_pid" 2>/dev/null || { echo "llama-server exited; see $OUT.server.log"; exit 1; }
        "$PYTHON" -c "$health" "http://127.0.0.1:$PORT/health" 2>/dev/null && break
        sleep 1
    done
    "$PYTHON" - "$OUT" "http://127.0.0.1:$PORT" "$PROMPT" "$TOKENS" <<'EOF'
import json, sys, urllib.request

import torch

from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from arlm.interop.loading import load_model

path, url, prompt, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def post(route, body):
    request = urllib.request.Request(url + route, json.dumps(body).encode(), {"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(request, timeout=600).read())


loaded = load_model(path)
texts = [prompt, "def f(x):\n    return x ** 2  # 3.14159, 1,000,000\n", "Café naïve — 你好 😀 it's   spaces\n\n"]
same_ids = all(post("/tokenize", {"content": t})["tokens"] == loaded.tokenizer.encode(t) for t in texts)
print("token ids:", "identical" if same_ids else "DIFFER")
theirs = post("/completion", {"prompt": prompt, "n_predict": tokens, "temperature": 0, "cache_prompt": False})
ids = torch.tensor([loaded.tokenizer.encode(prompt)])
out = generate(loaded.model, ids, GenerationConfig(max_new_tokens=tokens, temperature=0.0))
ours = loaded.tokenizer.decode(out.sequences[0, ids.shape[1] :].tolist())
print(f"llama.cpp: {theirs['content']!r}\narlm:      {ours!r}")
print("greedy continuation:", "identical" if theirs["content"] == ours else "differs (llama.cpp sums in another order, and q8_0 also rounds activations)")
sys.exit(0 if same_ids else 1)
EOF
    kill "$server_pid" 2>/dev/null || true
fi

BENCH=$(find_tool llama-bench)
if [[ -z "$BENCH" ]]; then
    echo "no llama-bench in $LLAMACPP_DIR (build it: cmake --build build --target llama-bench)"
    exit 1
fi
echo "== llama-bench: token generation (-p 0: the prompt-batch path crashed on AMX machines here)"
"$BENCH" -m "$OUT" -t "$THREADS" -p 0 -n 64
