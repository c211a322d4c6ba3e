"""Every figure the commands draw (matplotlib, PNG), from metrics.jsonl records and measured results; no state of
their own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np

from arlm.bench.memory import scores_bytes
from arlm.errors import ArlmError, check_creatable
from arlm.evaluation.calibration import CalibrationResult
from arlm.evaluation.exposure_bias import ExposureBiasResult

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.backends.backend_agg import FigureCanvasAgg

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure_path(out: str | Path, *, numbers: bool = False) -> Path:
    """The path of a figure to write, checked before any work: a suffix matplotlib writes, a creatable folder;
    numbers: the command also writes the same name .json, which must not be a folder either."""
    path = Path(out)
    if numbers and path.with_suffix(".json").is_dir():
        raise ArlmError(f"{path.with_suffix('.json')} is a folder; the numbers go there: give another --out")
    formats = FigureCanvasAgg.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ArlmError(f"{path}: name the figure with a suffix matplotlib writes ({', '.join(sorted(formats))})")
    if path.is_dir():
        raise ArlmError(f"{path} is a folder; give a file name for the figure")
    check_creatable(path)
    return path


def _save(fig: Figure, path: str | Path) -> Path:
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
    xticks: Sequence[float] | None = None,
) -> Path:
    """Lines with error bars: {label: [(x, y, low, high), ...]}, labels beside the plot; x nudged apart; ticks at
    xticks where given (counts: no fractions between them)."""
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
    if xticks is not None:
        ax.set_xticks(list(xticks))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def plot_icl(results: dict, path: str | Path, *, title: str = "") -> Path:
    """Accuracy against the number of shots, one line per task, with 95% Wilson intervals as error bars (accuracy:
    exact match, or the top choice by summed log-likelihood)."""
    series, n = {}, {by["n"] for entry in results["tasks"].values() for by in entry["by_shots"].values()}
    for name, entry in results["tasks"].items():
        by = entry["by_shots"]
        series[name] = [(k, by[k]["accuracy"], by[k]["ci"][0], by[k]["ci"][1]) for k in sorted(by)]
    return plot_errorbars(
        series,
        path,
        xlabel="demonstrations in the prompt (k)",
        ylabel=f"accuracy, 95% Wilson interval (n = {', '.join(map(str, sorted(n)))} a task)",
        title=title or f"in-context learning ({results['scoring']})",
        ylim=(-0.02, 1.02),
        xticks=sorted({k for entry in results["tasks"].values() for k in entry["by_shots"]}),
    )


def plot_reliability(results: dict[str, CalibrationResult], path: str | Path, *, title: str = "") -> Path:
    """Reliability diagram, one colour per run: accuracy vs mean confidence per bin over the diagonal, and
    below it the share of predictions in each bin."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.5, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    top.plot([0, 1], [0, 1], color="0.5", ls=":", lw=1, label="perfect calibration")
    n_runs = max(len(results), 1)
    for i, (label, res) in enumerate(results.items()):
        colour, width = f"C{i}", 1.0 / res.n_bins
        points = [(c, a) for c, a in zip(res.bin_confidence, res.bin_accuracy) if c is not None]
        top.plot(*zip(*points), "o-", color=colour, ms=4, lw=1.4, label=f"{label} (ECE {res.ece:.3f})")
        shares = [c / res.tokens for c in res.bin_counts]
        lefts = [k * width + i * width / n_runs for k in range(res.n_bins)]
        bottom.bar(lefts, shares, width=width / n_runs, align="edge", color=colour, alpha=0.75, label=label)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_title(title or "reliability diagram (top-1 next-token predictions)")
    top.grid(alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    bottom.set_xlabel("confidence (top-1 probability)")
    bottom.set_ylabel("share of tokens")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def plot_exposure_bias(results: dict[str, ExposureBiasResult], path: str | Path, *, title: str = "") -> Path:
    """Loss and accuracy against position, teacher forced (solid) and free running (dashed), and the loss gap
    between them; one colour per run, bands of one standard error."""
    fig, (ax_loss, ax_acc, ax_gap) = plt.subplots(1, 3, figsize=(15, 4.3))
    for i, (label, r) in enumerate(results.items()):
        colour, x = f"C{i}", np.arange(r.length)
        for ax, stem in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            for regime, style in (("teacher_forced", "-"), ("free_running", "--")):
                mean = np.asarray(getattr(r, f"{regime}_{stem}"))
                se = np.asarray(getattr(r, f"{regime}_{stem}_se"))
                name = regime.replace("_", " ").replace("forced", "forcing")
                ax.plot(x, mean, style, color=colour, lw=1.3, label=f"{label}, {name}")
                ax.fill_between(x, mean - se, mean + se, color=colour, alpha=0.15, lw=0)
        gap, gap_se = np.asarray(r.gap), np.asarray(r.gap_se)
        ax_gap.plot(x, gap, color=colour, lw=1.3, label=f"{label} (slope {r.gap_slope:+.4f}/position)")
        ax_gap.fill_between(x, gap - gap_se, gap + gap_se, color=colour, alpha=0.15, lw=0)
    ax_gap.axhline(0.0, color="0.5", ls=":", lw=1)
    ax_loss.set_ylabel("NLL of the gold token (nats)")
    ax_acc.set_ylabel("top-1 accuracy on the gold token")
    ax_gap.set_ylabel("free running - teacher forcing NLL (nats)")
    for ax in (ax_loss, ax_acc, ax_gap):
        ax.set_xlabel("position after the prompt")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7)
    ax_gap.legend(fontsize=7)
    fig.suptitle(title or "exposure bias: teacher forcing (solid) vs free running (dashed); bands ±1 standard error")
    return _save(fig, path)


def plot_memory(result: dict, out: str | Path) -> None:
    """Log-log activation memory against T per backend (and their difference, the scores), and tokens/s."""
    rows, exponents, device = result["rows"], result["exponents"], result["device"]
    ok = {b: [r for r in m if not r.get("oom")] for b, m in rows.items()}
    series = {
        f"{b} (T^{exponents[b]:.2f})": [(r["length"], r["saved_bytes"] / 2**20) for r in m] for b, m in ok.items()
    }
    series[f"naive - sdpa: the T x T scores (T^{exponents['naive - sdpa']:.2f})"] = [
        (t, extra / 2**20) for t, extra in scores_bytes(rows["naive"], rows["sdpa"])
    ]
    plot_lines(
        series,
        out,
        xlabel="sequence length T",
        ylabel="activation memory of a step (MiB)",
        logx=True,
        logy=True,
        title=f"training-step memory vs context ({device})",
    )
    speed = {b: [(r["length"], r["tokens_per_s"]) for r in m] for b, m in ok.items()}
    plot_lines(
        speed,
        Path(out).with_name(Path(out).stem + "-speed.png"),
        xlabel="sequence length T",
        ylabel="tokens/s",
        logx=True,
        title=f"training-step speed vs context ({device})",
    )
