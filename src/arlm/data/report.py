"""The corpus report: sizes per split, bytes per token, unknown rate, coverage, most frequent tokens."""

from __future__ import annotations

from typing import Any

import numpy as np

from arlm.data.tokenizers import Tokenizer

TOP_TOKENS = 20


def corpus_report(tokenizer: Tokenizer, counts: dict[str, dict], histograms: dict[str, np.ndarray]) -> dict[str, Any]:
    """Statistics of prepared shards, as a JSON-ready dict, from the counts and (vocab,) token histograms
    accumulated while the shards were written."""
    vocab = tokenizer.vocab_size
    splits = {}
    for name, c in counts.items():
        hist = histograms[name]
        tokens = c["tokens"]
        entry = dict(c)
        entry["bytes_per_token"] = c["bytes"] / tokens if tokens else 0.0
        entry["chars_per_token"] = c["characters"] / tokens if tokens else 0.0
        if tokenizer.unk_id is not None:
            entry["unknown_rate"] = float(hist[tokenizer.unk_id] / tokens) if tokens else 0.0
        if name != "train" and tokens:
            unseen = (histograms["train"] == 0) & (hist > 0)
            entry["tokens_unseen_in_train"] = float(hist[unseen].sum() / tokens)
        splits[name] = entry
    train = histograms["train"]
    used = sum(histograms.values()) > 0
    top = np.argsort(-train, kind="stable")[:TOP_TOKENS]
    total = max(int(train.sum()), 1)
    return {
        "tokenizer": {"kind": tokenizer.kind, "vocab_size": vocab, "fingerprint": tokenizer.fingerprint()},
        "splits": splits,
        "vocab_coverage_train": float((train > 0).sum() / vocab),
        "vocab_coverage_all": float(used.sum() / vocab),
        "top_tokens": [
            {"id": int(i), "text": tokenizer.token_text(int(i)), "count": int(train[i]), "share": train[i] / total}
            for i in top
            if train[i] > 0
        ],
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as an aligned text table."""
    tok = report["tokenizer"]
    lines = [f"corpus report  (tokenizer {tok['kind']}, vocabulary {tok['vocab_size']:,})"]
    lines.append(f"{'split':<6}{'docs':>8}{'chars':>13}{'tokens':>12}{'bytes/tok':>11}{'unk':>9}{'unseen':>9}")
    for name, s in report["splits"].items():
        unk = f"{s['unknown_rate']:.2%}" if "unknown_rate" in s else "-"
        unseen = f"{s['tokens_unseen_in_train']:.2%}" if "tokens_unseen_in_train" in s else "-"
        lines.append(
            f"{name:<6}{s['documents']:>8,}{s['characters']:>13,}{s['tokens']:>12,}"
            f"{s['bytes_per_token']:>11.2f}{unk:>9}{unseen:>9}"
        )
    lines.append(
        f"vocabulary used: {report['vocab_coverage_train']:.1%} of ids in train, "
        f"{report['vocab_coverage_all']:.1%} in any split"
    )
    if report.get("split_mode") == "contiguous":  # (cut by position: a text repeated may be in two splits)
        lines.append("split by contiguous fractions of the text (duplicate documents are not looked for)")
    elif "split_mode" in report:
        unit = "conversations" if report["split_mode"] == "conversations" else "documents"
        dropped = report.get("duplicates_dropped", 0)
        lines.append(f"split by {report['split_mode']}; exact duplicate {unit} dropped: {dropped}")
    for name, s in report["splits"].items():
        if "target_tokens" in s:  # chat data: what the loss sees, and conversations cut to the context
            cut = ""
            if "truncated" in s:  # target tokens counted within the context, past it apart
                cut = f", {s['truncated']:,} cut to the context (answers shortened by {s['cut_targets']:,} tokens)"
            lines.append(f"{name}: {s['documents']:,} conversations, {s['target_tokens']:,} target tokens{cut}")
    top = ", ".join(f"{t['text']!r} {t['share']:.1%}" for t in report["top_tokens"][:12])
    lines.append(f"most frequent (train): {top}")
    return "\n".join(lines)
