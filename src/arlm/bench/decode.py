"""Our generate() (`arlm bench decode`) against transformers' generate() on the same weights, in one command,
every case and side alternating, median of repeats: greedy batch 1, greedy batch 8, beam search (4 beams),
sampling; and our speculative decoding against our own greedy when a draft is given."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch

from arlm.bench.alternate import alternate
from arlm.config import GenerationConfig
from arlm.decoding.engine import Engine
from arlm.decoding.generate import generate, left_pad
from arlm.errors import optional_package
from arlm.interop.hf import save_hf_folder
from arlm.interop.loading import resolve_dtype, to_dtype
from arlm.model.inference import optimize_for_decoding
from arlm.model.transformer import Transformer

if TYPE_CHECKING:
    from arlm.data.tokenizers import Tokenizer

SMOLLM2_SHAPE = dict(
    flavour="llama",
    vocab_size=49152,
    block_size=2048,
    n_layer=30,
    n_head=9,
    n_kv_head=3,
    d_model=576,
    d_ff=1536,
    rope_theta=100000.0,
    tie_embeddings=True,
)


def auto_model_class() -> type:
    """transformers' AutoModelForCausalLM, or ArlmError naming the extra (asked for before any model is built)."""
    return optional_package("transformers", "arlm bench decode", "hf").AutoModelForCausalLM


def _reference(model: Transformer, tokenizer: Tokenizer, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """transformers' model with our weights, through an exported folder."""
    AutoModelForCausalLM = auto_model_class()

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_hf_folder(model, tokenizer, f"{tmp}/hf")
        reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return reference.to(device=next(model.parameters()).device, dtype=dtype)


def _cases(new_tokens: int) -> dict[str, tuple[int, GenerationConfig, dict]]:
    """name -> (batch, our config, transformers generate() kwargs)."""
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=new_tokens, stop_at_eos=False)
    beam_tokens = max(new_tokens // 2, 1)
    beam = GenerationConfig(strategy="beam", num_beams=4, max_new_tokens=beam_tokens, stop_at_eos=False)
    sample = GenerationConfig(
        strategy="sample", temperature=1.0, top_k=50, max_new_tokens=new_tokens, seed=0, stop_at_eos=False
    )
    hf_greedy = {"do_sample": False, "max_new_tokens": new_tokens}
    return {
        "greedy, batch 1": (1, greedy, hf_greedy),
        "greedy, batch 8": (8, greedy, hf_greedy),
        "beam search, 4 beams": (1, beam, {"do_sample": False, "num_beams": 4, "max_new_tokens": beam_tokens}),
        "sampling top-k 50": (
            1,
            sample,
            {"do_sample": True, "top_k": 50, "temperature": 1.0, "max_new_tokens": new_tokens},
        ),
    }


def ragged_prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    """`batch` random prompts (seeded) of length - 0..8 tokens, so that left padding is exercised."""
    generator = torch.Generator().manual_seed(0)
    lengths = [length - (i * 3) % 9 for i in range(batch)]
    return [torch.randint(10, vocab, (n,), generator=generator).tolist() for n in lengths]


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    """(tokens fn generated, seconds it took)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    tokens = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return tokens, time.perf_counter() - start


def _sides(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    prompts: list[list[int]],
    config: GenerationConfig,
    hf_kwargs: dict,
    pad: int,
) -> dict:
    """One case's two timed functions (each returns the tokens it generated, counted from its output) and the list
    that collects ours' tokens/s after the forward over the prompts (`decoding`, where the strategy reports it)."""
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(prompts, pad))
    engine = Engine(model)  # one engine for every run: a compiled step and its static cache are made once
    decoding: list[float] = []

    def ours() -> int:
        stats = generate(engine, prompts, config, pad_id=pad).stats
        if "decode_tokens_per_s" in stats:
            decoding.append(stats["decode_tokens_per_s"])
        return stats["new_tokens"]

    def theirs() -> int:
        with torch.inference_mode():
            out = reference.generate(
                input_ids=ids,
                attention_mask=mask,
                pad_token_id=pad,
                eos_token_id=None,
                min_new_tokens=config.max_new_tokens,
                **hf_kwargs,
            )
        return out.shape[0] * (out.shape[1] - ids.shape[1])  # (rows, prompt + new) -> new tokens

    for _ in range(3 if config.compile else 1):  # warm-up (and compilation / CUDA graph capture)
        ours()
    theirs()
    decoding.clear()
    return {"arlm": ours, "transformers": theirs, "decoding": decoding}


def _bench_cases(
    model: torch.nn.Module, reference: torch.nn.Module, cases: dict[str, tuple], pad: int, repeats: int
) -> dict[str, dict]:
    """Per case (name -> prompts, our config, transformers kwargs): median tokens/s of ours and of transformers, the
    tokens each side generated in a run, and ours after the forward over the prompts (`arlm_decoding`). Every run of
    every case and side alternates with the others (round robin, order reversed every repeat), so that ratios across
    cases (batch 8 over batch 1) are as comparable as those within one: a machine's slow stretch falls on all."""
    sides = {name: _sides(model, reference, *case, pad) for name, case in cases.items()}
    runs = {(name, side): partial(_timed, sides[name][side]) for name in cases for side in ("arlm", "transformers")}
    timed = alternate(runs, repeats)  # (tokens, seconds) each
    tokens = {run: got[-1][0] for run, got in timed.items()}
    rates = {run: [n / seconds for n, seconds in got] for run, got in timed.items()}
    results = {}
    for name in cases:
        medians = {side: statistics.median(rates[name, side]) for side in ("arlm", "transformers")}
        decoding = sides[name]["decoding"]
        alone = {"arlm_decoding": statistics.median(decoding)} if decoding else {}
        results[name] = {**medians, "tokens": {side: tokens[name, side] for side in medians}, **alone}
    return results


def run_decode_bench(
    model: Transformer,
    tokenizer: Tokenizer,
    *,
    new_tokens: int = 64,
    prompt_len: int = 32,
    repeats: int = 3,
    draft: Transformer | Callable[[Transformer], Transformer] | None = None,
    log: Callable[[str], None] = print,
    cases: list[str] | None = None,
    dtype: str | torch.dtype = torch.float32,
    compile: bool = False,
    gguf: str | None = None,
) -> dict[str, dict]:
    """Tokens/s per case for both sides (median of `repeats`, alternating) and their ratio; the model's device
    is used, both sides in `dtype` (a float model given; for int8 / int4 transformers stays in float32, and
    `gguf` names the file whose Q4 blocks int4 uses); compile=True decodes batch-1 greedy/sampling with a
    compiled (CUDA graph) step (the ragged batch stays eager: the compiled step takes no padding). draft: a model, or
    what makes one from the target as laid out here (self:L), adds speculative decoding against our greedy."""
    device = next(model.parameters()).device
    reference = _reference(model, tokenizer, resolve_dtype(dtype, device).float_dtype)
    model = to_dtype(model, dtype, device, gguf=gguf)
    optimize_for_decoding(model)
    if draft is not None:  # a model, or what makes one from the target as laid out here (self:L)
        draft = optimize_for_decoding(draft) if isinstance(draft, torch.nn.Module) else draft(model)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    chosen = {}
    for name, (batch, config, hf_kwargs) in _cases(new_tokens).items():
        if cases is None or name in cases:
            config.compile = compile and config.strategy != "beam" and batch == 1  # the compiled step takes no padding
            chosen[name] = (ragged_prompts(batch, prompt_len, model.config.vocab_size), config, hf_kwargs)
    log(f"  ({len(chosen)} cases x 2 sides, round robin, {repeats} repeats)")
    results = _bench_cases(model, reference, chosen, pad, repeats)
    for name, row in results.items():
        row["ratio"] = row["arlm"] / row["transformers"]
        log(f"  {name:<24}{row['arlm']:>10.1f}{row['transformers']:>14.1f}{row['ratio']:>9.2f}x")
    if draft is not None:
        results["speculative"] = _speculative(model, draft, tokenizer, new_tokens, prompt_len, repeats, log)
    return results


def _speculative(
    model: torch.nn.Module,
    draft: torch.nn.Module,
    tokenizer: Tokenizer,
    new_tokens: int,
    prompt_len: int,
    repeats: int,
    log: Callable[[str], None],
) -> dict:
    """Our speculative decoding (greedy, gamma 4) against our plain greedy, alternating after a warm-up of each: median
    tokens/s, median acceptance and whether every output was greedy's."""
    text = "The Python standard library provides modules for reading and writing files, working with"
    ids = tokenizer.encode(text)[:prompt_len]
    greedy = GenerationConfig(strategy="greedy", max_new_tokens=new_tokens, stop_at_eos=False)
    spec = GenerationConfig(
        strategy="speculative", temperature=0, num_draft_tokens=4, max_new_tokens=new_tokens, stop_at_eos=False
    )
    outputs: dict[str, list] = {"greedy": [], "speculative": []}

    def run(name: str, config: GenerationConfig, **kwargs: torch.nn.Module) -> Callable[[], float]:
        def timed() -> float:
            outputs[name].append(generate(model, [ids], config, **kwargs))
            return outputs[name][-1].stats["tokens_per_s"]

        return timed

    runs = {"greedy": run("greedy", greedy), "speculative": run("speculative", spec, draft=draft)}
    for timed in runs.values():
        timed()  # warm-up, its output checked with the others
    rates = alternate(runs, repeats)
    reference = outputs["greedy"][0].generated()
    same = all(out.generated() == reference for outs in outputs.values() for out in outs)
    acceptance = statistics.median(out.stats["acceptance_rate"] for out in outputs["speculative"])
    row = {
        "greedy": statistics.median(rates["greedy"]),
        "speculative": statistics.median(rates["speculative"]),
        "identical": same,
        "acceptance": acceptance,
    }
    row["speedup"] = row["speculative"] / row["greedy"]
    log(
        f"  speculative (greedy, γ=4) {row['speculative']:.1f} tokens/s vs our greedy {row['greedy']:.1f}: "
        f"{row['speedup']:.2f}x, acceptance {acceptance:.0%}, identical output: {'yes' if same else 'NO'}"
    )
    return row
