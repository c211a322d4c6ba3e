"""Matplotlib figures (PNG), drawn from metrics.jsonl records and study results; no state of their own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss(runs: dict[str, list[dict[str, Any]]], path: str | Path, *, title: str = "") -> Path:
    """Training loss (and validation loss where logged) against tokens seen, one colour per run."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, records) in enumerate(runs.items()):
        colour = f"C{i}"
        train = [(r["tokens"], r["train_nll"]) for r in records if "train_nll" in r and r["train_nll"] is not None]
        val = [(r["tokens"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train), color=colour, alpha=0.8, lw=1.2, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), "o--", color=colour, ms=4, lw=1, label=f"{label} val")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title or "loss vs tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_grad_norms(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Gradient norm per layer and projection over training (one panel per projection kind)."""
    keys = sorted({k for r in records for k in r if k.startswith("gradnorm/L")})
    kinds = sorted({k.rsplit("/", 1)[1] for k in keys})
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(3.2 * max(len(kinds), 1), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for key in (k for k in keys if k.endswith(f"/{kind}")):
            points = [(r["step"], r[key]) for r in records if key in r]
            ax.plot(*zip(*points), lw=1, label=key.split("/")[1])
        ax.set_title(kind)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("gradient norm")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, path)


def plot_lines(
    series: dict[str, Sequence[tuple[float, float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
) -> Path:
    """Generic line plot: {label: [(x, y), ...]}."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, points in series.items():
        if points:
            ax.plot(*zip(*points), "o-", ms=3, lw=1.2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_errorbars(
    series: dict[str, Sequence[tuple[float, float, float, float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Lines with error bars: {label: [(x, y, low, high), ...]}, labels beside the plot; x nudged apart."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, (label, points) in enumerate(series.items()):
        xs = [p[0] + (i - len(series) / 2) * 0.06 for p in points]  # keep overlapping error bars apart
        ys = [p[1] for p in points]
        yerr = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        ax.errorbar(xs, ys, yerr=yerr, fmt="o-", ms=3, lw=1.2, capsize=2, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)
