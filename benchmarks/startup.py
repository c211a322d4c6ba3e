"""Time to the first token from a cold command: `arlm generate smollm2` at each --dtype, transformers loading the
same GGUF file and generating, and llama.cpp's `llama-simple` on it (where benchmarks/llamacpp.sh's build has one:
`cmake --build <build> --target llama-simple`). Each run is a fresh process (the interpreter, imports, reading the
file, laying out the weights, one greedy token), the wall time from start to exit; the cases alternate, order
reversed every round, medians.

    .venv/bin/python benchmarks/startup.py [--rounds 5] [--dtypes float32,int4] [--before DIR]

--before DIR also times another arlm checkout's source tree (DIR/src on PYTHONPATH, this venv), e.g. a `git
worktree` of an older commit, so a change's effect on start-up is measured in the same command. Time it on quiet
cores: every case is a new process that reads ~100 MB."""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from arlm.bench.llamacpp import llamacpp_folder
from arlm.bench.machine import cpu_model
from arlm.interop.gguf import smollm2_path

PROMPT = "The capital of France is"
TRANSFORMERS = (
    "import sys, torch, transformers\n"
    "from pathlib import Path\n"
    "path = Path(sys.argv[1])\n"
    "tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)\n"
    "model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)\n"
    "ids = tok(sys.argv[2], return_tensors='pt').input_ids\n"
    "print(tok.decode(model.generate(ids, max_new_tokens=1, do_sample=False)[0]))\n"
)


def cases(dtypes: list[str], before: Path | None) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each case's command line and extra environment."""
    arlm = [sys.executable, "-m", "arlm.cli", "generate", "smollm2", "--prompt", PROMPT, "--max-new-tokens", "1"]
    found: dict[str, tuple[list[str], dict[str, str]]] = {}
    for dtype in dtypes:
        found[f"arlm --dtype {dtype}"] = ([*arlm, "--temperature", "0", "--dtype", dtype], {})
        if before is not None:
            found[f"arlm --dtype {dtype} ({before.name})"] = (
                [*arlm, "--temperature", "0", "--dtype", dtype],
                {"PYTHONPATH": str(before / "src")},
            )
    found["transformers (float32)"] = ([sys.executable, "-c", TRANSFORMERS, str(smollm2_path()), PROMPT], {})
    simple = sorted(llamacpp_folder().glob("**/bin/llama-simple"))
    if simple:
        found["llama.cpp llama-simple (Q4_1)"] = ([str(simple[0]), "-m", str(smollm2_path()), "-n", "1", PROMPT], {})
    return found


def wall(command: list[str], env: dict[str, str]) -> float:
    """Seconds from start to exit of one fresh process (which must succeed)."""
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def main() -> None:
    """Alternate the cases for --rounds rounds and print each one's median wall time."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dtypes", default="float32,int4")
    parser.add_argument("--before", type=Path, default=None, help="another arlm checkout to time beside this one")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = cases(args.dtypes.split(","), args.before)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for command, env in runs.values():  # warm the page cache and arlm's kernel build once
        wall(command, env)
    for r in range(args.rounds):
        for name in runs if r % 2 == 0 else reversed(list(runs)):
            times[name].append(wall(*runs[name]))
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, {datetime.date.today()}, {args.rounds} rounds alternating\n")
    print("| command | seconds to the first token and exit (median) | runs |\n|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {statistics.median(seconds):.2f} | {', '.join(f'{s:.2f}' for s in seconds)} |")


if __name__ == "__main__":
    main()
