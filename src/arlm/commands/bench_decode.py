"""Our generate() against transformers' generate() on the same weights (greedy, beam, sampling; speculative),
the forward time by number of new tokens, and (--llamacpp) greedy batch 1 beside llama.cpp's llama-bench on the
GGUF file of the same precision, per --dtype."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from arlm.bench.machine import cpu_model
from arlm.config import ModelConfig
from arlm.errors import ArlmError
from arlm.interop.dtypes import DTYPES, LOAD_DTYPES

if TYPE_CHECKING:
    from arlm.data.tokenizers import Tokenizer
    from arlm.model.transformer import Transformer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --draft, --dtype (one or more), --new-tokens, --repeats, --llamacpp."""
    parser.add_argument(
        "--model",
        default="random-smollm2",
        help="model reference (smollm2, a checkpoint, ...) or random-smollm2 (random weights; the default)",
    )
    parser.add_argument(
        "--draft",
        help="a draft model, self:L (the target's first L layers) or self:DTYPE (its own weights at DTYPE, e.g. "
        "self:int4); adds speculative decoding against our greedy",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        default=["float32"],
        choices=LOAD_DTYPES,
        help="one table row per dtype (default float32; int8 / int4 / mixed: CPU; auto: the one a GGUF file's "
        "layers hold, named)",
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side, median reported (default 5)")
    parser.add_argument(
        "--llamacpp",
        action="store_true",
        help="also greedy batch 1 beside llama.cpp's llama-bench on the same GGUF precision (--model smollm2: "
        "its file at each dtype's precision; --model FILE.gguf: that file for every dtype; build it with: bash "
        "benchmarks/llamacpp.sh; folder: $LLAMACPP_CACHE or ~/.cache/arlm/llamacpp)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the cases and print the table, per dtype."""
    import torch  # lazy: kept out of --help

    from arlm.bench.decode import auto_model_class  # lazy: kept out of --help
    from arlm.interop.loading import auto_dtype, resolve_dtype  # lazy: kept out of --help

    auto_model_class()  # transformers missing: refused before a model is built or a line printed
    if args.new_tokens < 1 or args.repeats < 1:
        raise ArlmError(f"--new-tokens and --repeats must be >= 1, got {args.new_tokens} and {args.repeats}")
    args.dtype = list(dict.fromkeys(auto_dtype(args.model) if name == "auto" else name for name in args.dtype))
    for name in args.dtype:
        resolve_dtype(name, "cpu")  # refuse an impossible dtype before any timing
    llama = llamacpp_files(args.model, args.dtype) if args.llamacpp else None
    results = {}
    for name in args.dtype:
        results[name] = bench_decode_command(
            args.model,
            draft_ref=args.draft,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
            dtype=name,
            llama=None if llama is None else (llama[0], llama[1][name]),
        )
    print("\n".join(["", f"{args.model}; {cpu_model()}, {torch.get_num_threads()} threads", *summary_table(results)]))
    return 0


def summary_table(results: dict[str, dict]) -> list[str]:
    """One markdown table over the dtypes: greedy batch 1 against transformers (and llama.cpp where it ran, its file),
    batch 8 over batch 1 (arlm; the whole run, and decoding alone after the forward over the prompts), and a 5-token
    forward over a 1-token one."""
    llama = any("llama.cpp" in r for r in results.values())
    beside = " arlm, beside llama.cpp | llama.cpp | ratio (rounds) |"  # its own alternating runs (bench/llamacpp.py)
    head = "| dtype | arlm tok/s | transformers | ratio |" + (beside if llama else "")
    lines = [head + " batch 8 / batch 1 | decoding alone | forward 5 / 1 |", "|---" * (head.count("|") + 2) + "|"]
    for dtype, r in results.items():
        one, eight, ms = r["greedy, batch 1"], r["greedy, batch 8"], r["forward_ms"]
        cells = [dtype, f"{one['arlm']:.1f}", f"{one['transformers']:.1f}", f"{one['ratio']:.2f}x"]
        if llama:
            row = r.get("llama.cpp")
            if row:
                file = f" ({row['file']})" if "file" in row else ""
                cells += [f"{row['arlm']:.1f}", f"{row['llama.cpp']:.1f}{file}", _ratio_of_rounds(row)]
            else:
                cells += ["-"] * 3
        alone = [r.get("arlm_decoding") for r in (eight, one)]
        cells += [f"{eight['arlm'] / one['arlm']:.2f}x", f"{alone[0] / alone[1]:.2f}x" if all(alone) else "-"]
        cells.append(f"{ms[5] / ms[1]:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def llamacpp_files(model_ref: str, dtypes: list[str]) -> tuple:
    """llama-bench and the GGUF file per dtype, or one line saying what is missing (before any timing)."""
    from arlm.bench.llamacpp import find_llama_bench, gguf_for, llamacpp_folder  # lazy: kept out of --help
    from arlm.interop.loading import is_gguf_reference  # lazy: kept out of --help

    own = model_ref != "smollm2" and is_gguf_reference(model_ref)
    if model_ref != "smollm2" and not own:
        raise ArlmError("--llamacpp runs llama.cpp on the same GGUF file: use --model smollm2 or a .gguf file")
    if own and not Path(model_ref).is_file():
        raise ArlmError(f"no GGUF file at {model_ref}")
    folder = llamacpp_folder()
    binary = find_llama_bench(folder)
    if binary is None:
        build = f"LLAMACPP_CACHE={folder} bash benchmarks/llamacpp.sh"
        raise ArlmError(f"no llama-bench under {folder}; build it with: {build}")
    return binary, {name: Path(model_ref) if own else gguf_for(folder, name) for name in dtypes}


def beside_llamacpp(
    model: Transformer, bos: int, llama: tuple, new_tokens: int, repeats: int, log: Callable[[str], None] = print
) -> dict:
    """arlm greedy batch 1 and llama-bench (binary, gguf) alternating (bench/llamacpp.py); prints the medians."""
    from arlm.bench.llamacpp import compare_with_llamacpp  # lazy: kept out of --help

    binary, gguf = llama
    row = compare_with_llamacpp(model, bos, binary, gguf, new_tokens=new_tokens, repeats=repeats)
    row["file"] = gguf.name  # the table names it: a --model FILE.gguf is llama.cpp's side at every dtype
    log(
        f"  greedy batch 1 beside llama.cpp ({gguf.name}, {row['threads']} threads): arlm {row['arlm']:.1f} "
        f"tok/s, llama-bench {row['llama.cpp']:.1f} tok/s: {_ratio_of_rounds(row)}"
    )
    return row


def _ratio_of_rounds(row: dict) -> str:
    """arlm / llama.cpp of the medians, and the range of the rounds' own ratios where known: "1.10x (0.95-1.21)"."""
    spread = row.get("ratio_range")
    return f"{row['ratio']:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread else "")


def bench_draft(
    ref: str, model_ref: str, model: Transformer, tokenizer: Tokenizer, dtype: str
) -> Transformer | Callable[[Transformer], Transformer]:
    """The benchmark's draft: a model loaded at `dtype`; for self:L, what makes it from the target once laid out at
    `dtype` (a callable); for self:DTYPE, the target at that dtype (random-smollm2: converted from the same
    weights)."""
    from arlm.decoding.drafts import check_draft_vocabulary, parse_self_draft, self_draft  # lazy: kept out of --help
    from arlm.interop.loading import load_model, to_dtype  # lazy: kept out of --help

    spec = parse_self_draft(ref, DTYPES, dtype)
    if isinstance(spec, int):
        return lambda target: self_draft(target, spec)
    if spec is None:
        loaded = load_model(ref, dtype=dtype)
        check_draft_vocabulary(loaded.tokenizer, tokenizer, ref, model_ref)
        return loaded.model
    if model_ref == "random-smollm2":
        return to_dtype(copy.deepcopy(model), spec, "cpu")
    return load_model(model_ref, dtype=spec).model


def bench_decode_command(
    model_ref: str,
    *,
    draft_ref: str | None = None,
    new_tokens: int = 64,
    repeats: int = 3,
    dtype: str = "float32",
    llama: tuple | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """Load (or build, for 'random-smollm2') the model and run the benchmark at `dtype`, printing a table,
    the forward time for 1..8 new tokens and, given `llama` (llama-bench, GGUF file), the side-by-side."""
    import torch  # lazy: kept out of --help

    from arlm.bench.decode import SMOLLM2_SHAPE, run_decode_bench  # lazy: kept out of --help
    from arlm.bench.forward import format_forward_times, forward_times  # lazy: kept out of --help
    from arlm.data.tokenizers import VocabTokenizer  # lazy: kept out of --help
    from arlm.interop.loading import is_gguf_reference, load_model  # lazy: kept out of --help
    from arlm.model.transformer import Transformer  # lazy: kept out of --help

    if model_ref == "random-smollm2":
        torch.manual_seed(0)
        model = Transformer(ModelConfig(**SMOLLM2_SHAPE)).eval()
        tokenizer = VocabTokenizer.train("char", ["abc"], 0)
    else:
        loaded = load_model(model_ref)
        model, tokenizer = loaded.model, loaded.tokenizer
    draft = bench_draft(draft_ref, model_ref, model, tokenizer, dtype) if draft_ref else None
    params = model.num_params() / 1e6
    log(
        f"model: {model_ref} ({params:.3g}M parameters, {dtype}); {cpu_model()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of {repeats}, alternating"
    )
    log(f"  {'case':<24}{'arlm tok/s':>10}{'transformers':>14}{'ratio':>10}")
    gguf = model_ref if is_gguf_reference(model_ref) else None
    results = run_decode_bench(
        model, tokenizer, new_tokens=new_tokens, repeats=repeats, draft=draft, log=log, dtype=dtype, gguf=gguf
    )
    results["forward_ms"] = forward_times(model, repeats=repeats)
    log(format_forward_times(dtype, results["forward_ms"]))
    if llama is not None:
        bos = tokenizer.bos_id if tokenizer.bos_id is not None else 0
        results["llama.cpp"] = beside_llamacpp(model, bos, llama, new_tokens, repeats, log)
    return results
