"""Speculative decoding against greedy decoding, timed: plain greedy, prompt lookup (fixed gamma and adaptive) and
self-speculation (the target's first layers, or its own weights at a cheaper dtype, as the draft) on prompt sets,
each run checked identical to greedy.

For every prompt each scheme runs `repeats` times, the order of the schemes alternating (forward, then backward),
and its median tokens/s is kept; a set's figure for a scheme is the median over its prompts of those medians, and
its ratio the median of the per-prompt ratios to greedy (the worst prompt's ratio is reported too)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

from arlm.bench.alternate import alternate
from arlm.config import GenerationConfig
from arlm.decoding.drafts import self_draft
from arlm.decoding.generate import generate


@dataclass
class Scheme:
    """A way to decode: its label, its settings, its draft model (None: no draft model)."""

    label: str
    config: GenerationConfig
    draft: torch.nn.Module | None = None


def schemes(
    target: torch.nn.Module,
    new_tokens: int,
    self_layers: int | None,
    gamma: int = 4,
    stop_at_eos: bool = False,
    cheaper: tuple[str, torch.nn.Module] | None = None,
) -> list[Scheme]:
    """Greedy, prompt lookup (gamma fixed, and adaptive), with self_layers self-speculation by the first layers and
    with `cheaper` (a dtype and the target loaded at it) by the target's own weights at that dtype, alone and after
    prompt lookup (lookup_first; gamma fixed, and adaptive), all at temperature 0, by default with no stop at EOS
    (every run writes new_tokens tokens)."""

    def config(strategy: str, adaptive: bool = False, lookup_first: bool = False) -> GenerationConfig:
        return GenerationConfig(
            strategy=strategy,
            temperature=0,
            max_new_tokens=new_tokens,
            num_draft_tokens=gamma,
            adaptive_draft=adaptive,
            lookup_first=lookup_first,
            stop_at_eos=stop_at_eos,
        )

    out = [
        Scheme("greedy", config("greedy")),
        Scheme(f"prompt lookup γ={gamma}", config("prompt-lookup")),
        Scheme("prompt lookup, adaptive γ", config("prompt-lookup", True)),
    ]
    if self_layers:
        draft = self_draft(target, self_layers)
        out.append(Scheme(f"self-speculation ({self_layers} layers) γ={gamma}", config("speculative"), draft))
        out.append(Scheme(f"self-speculation ({self_layers} layers), adaptive γ", config("speculative", True), draft))
    if cheaper:
        dtype, draft = cheaper
        out.append(Scheme(f"self-speculation ({dtype} weights) γ={gamma}", config("speculative"), draft))
        out.append(Scheme(f"self-speculation ({dtype} weights), adaptive γ", config("speculative", True), draft))
        label = f"prompt lookup, else {dtype} weights"
        out.append(Scheme(f"{label} γ={gamma}", config("speculative", lookup_first=True), draft))
        out.append(Scheme(f"{label}, adaptive γ", config("speculative", True, True), draft))
    return out


def compare_on_prompt(
    target: torch.nn.Module, ids: list[int], plan: list[Scheme], repeats: int, eos_id: int | None = None
) -> dict:
    """Each scheme on one prompt `repeats` times, alternating the order: label -> median tokens/s, acceptance,
    whether its output equals greedy's (the first scheme's), and its ids (eos_id: where a scheme that stops at EOS
    stops)."""
    runs = alternate(
        {s.label: lambda s=s: generate(target, [ids], s.config, eos_id=eos_id, draft=s.draft) for s in plan}, repeats
    )
    reference = runs[plan[0].label][0].generated()[0]
    rows = {}
    for label, outs in runs.items():
        rows[label] = {
            "tokens_per_s": statistics.median(o.stats["tokens_per_s"] for o in outs),
            "decode_tokens_per_s": statistics.median(o.stats["decode_tokens_per_s"] for o in outs),
            "acceptance": acceptance(outs),
            "identical": all(o.generated()[0] == reference for o in outs),
            "ids": outs[0].generated()[0],
        }
    return rows


def acceptance(outs: list) -> float | None:
    """The median share of drafted tokens accepted over the runs that drafted any (None where none did: adaptive γ
    drafting nothing is not a draft always wrong); with adaptive γ it follows the measured costs, so runs differ."""
    rates = [o.stats["acceptance_rate"] for o in outs if o.stats.get("proposed")]
    return statistics.median(rates) if rates else None


def summarize(per_prompt: list[dict], labels: list[str]) -> dict[str, dict]:
    """Per scheme over a set's prompts: median tokens/s, median and worst ratio to greedy (from the request's start,
    and decoding alone: after the forward over the prompt, which every scheme makes alike), median acceptance, and
    how many prompts gave greedy's output."""
    base = labels[0]
    out = {}
    for label in labels:
        ratios = [row[label]["tokens_per_s"] / row[base]["tokens_per_s"] for row in per_prompt]
        decoding = [row[label]["decode_tokens_per_s"] / row[base]["decode_tokens_per_s"] for row in per_prompt]
        accepted = [row[label]["acceptance"] for row in per_prompt if row[label]["acceptance"] is not None]
        out[label] = {
            "tokens_per_s": statistics.median(row[label]["tokens_per_s"] for row in per_prompt),
            "ratio": statistics.median(ratios),
            "worst_ratio": min(ratios),
            "decode_ratio": statistics.median(decoding),
            "decode_worst_ratio": min(decoding),
            "acceptance": statistics.median(accepted) if accepted else None,
            "identical": sum(row[label]["identical"] for row in per_prompt),
            "prompts": len(per_prompt),
        }
    return out


def format_table(name: str, summary: dict[str, dict]) -> list[str]:
    """A markdown table of one set's summary."""
    lines = [
        f"{name}:",
        "| scheme | tokens/s | vs greedy (median) | worst prompt | decoding alone: vs greedy, worst | acceptance | "
        "identical to greedy |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in summary.items():
        accepted = f"{row['acceptance']:.0%}" if row["acceptance"] is not None else "-"
        lines.append(
            f"| {label} | {row['tokens_per_s']:.1f} | {row['ratio']:.2f}× | {row['worst_ratio']:.2f}× | "
            f"{row['decode_ratio']:.2f}×, {row['decode_worst_ratio']:.2f}× | {accepted} | "
            f"{row['identical']}/{row['prompts']} |"
        )
    return lines


def run_speculative_bench(
    target: torch.nn.Module,
    sets: dict[str, list[list[int]]],
    plan: list[Scheme],
    repeats: int,
    log: Callable[[str], None] = print,
    eos_id: int | None = None,
) -> dict[str, dict]:
    """Every scheme on every prompt of every set (name -> encoded prompts); the summary of each set, logged as a
    table (eos_id: where schemes that stop at EOS stop)."""
    labels = [s.label for s in plan]
    results = {}
    for name, prompts in sets.items():
        per_prompt = []
        for i, ids in enumerate(prompts):
            per_prompt.append(compare_on_prompt(target, ids, plan, repeats, eos_id))
            log(
                f"  {name} {i + 1}/{len(prompts)}: "
                + ", ".join(f"{per_prompt[-1][la]['tokens_per_s']:.1f}" for la in labels)
            )
        results[name] = summarize(per_prompt, labels)
        for line in format_table(name, results[name]):
            log(line)
    return results
