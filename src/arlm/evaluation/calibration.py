"""Calibration of next-token predictions: reliability bins, ECE and MCE, NLL and Brier score, the
reliability diagram, `arlm eval calibration`, and the label-smoothing study (`arlm study calibration`).

A prediction is the model's top-1 token; its confidence is that token's softmax probability and it is
correct when it equals the target. Confidences fall into equal-width bins [k/n, (k+1)/n) over [0, 1]
(the last bin also holds 1.0); ECE = sum_b n_b/N * |accuracy_b - confidence_b| and MCE = max_b of the same
gap over non-empty bins (Guo et al., 2017)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from arlm.config import build_config
from arlm.data.batches import IGNORE_INDEX, Batch
from arlm.data.prepare import PreparedData, load_prepared
from arlm.errors import ArlmError
from arlm.loading import LoadedModel, load_model, pick_device

N_BINS = 15
STUDY_SMOOTHING = (0.0, 0.1)
# Both runs of a study get these on top of the preset: the final report on 20 batches per split instead of
# whole splits (the study measures the val split itself), and no sample text.
STUDY_OVERRIDES = ("--train.final_eval_batches", "20", "--train.sample_tokens", "0")


@dataclass
class CalibrationResult:
    """Reliability bins and summary figures of a model's top-1 next-token predictions."""

    n_bins: int
    bin_counts: list[int]  # predictions per bin
    bin_confidence: list[float | None]  # mean top-1 probability per bin (None: empty bin)
    bin_accuracy: list[float | None]  # fraction correct per bin (None: empty bin)
    tokens: int
    ece: float  # expected calibration error
    mce: float  # maximum calibration error (over non-empty bins)
    confidence: float  # mean top-1 probability
    accuracy: float  # top-1 accuracy
    nll: float  # mean negative log-likelihood of the target (nats/token)
    brier: float  # mean multi-class Brier score: sum_v (p_v - [v = target])^2

    @property
    def overconfidence(self) -> float:
        """Mean confidence minus accuracy (> 0: over-confident, < 0: under-confident)."""
        return self.confidence - self.accuracy

    def as_dict(self) -> dict:
        """JSON-ready dict."""
        return {**asdict(self), "overconfidence": self.overconfidence}


class CalibrationAccumulator:
    """Running per-bin sums of confidence and correctness over batches of logits and targets."""

    def __init__(self, n_bins: int = N_BINS) -> None:
        if n_bins < 1:
            raise ArlmError(f"the number of calibration bins must be at least 1, got {n_bins}")
        self.n_bins = n_bins
        self.counts = torch.zeros(n_bins, dtype=torch.float64)
        self.confidence_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.correct_sum = torch.zeros(n_bins, dtype=torch.float64)
        self.nll_sum = self.brier_sum = 0.0

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add logits (..., V) against targets (...); IGNORE_INDEX targets are skipped."""
        flat = logits.reshape(-1, logits.shape[-1]).float()  # (N, V)
        flat_targets = targets.reshape(-1).to(flat.device)  # (N,)
        keep = flat_targets != IGNORE_INDEX
        logp = F.log_softmax(flat[keep], dim=-1).double()  # (n, V)
        target = flat_targets[keep][:, None]  # (n, 1)
        top_logp, predicted = logp.max(dim=-1)  # (n,) each
        confidence = top_logp.exp()  # (n,)
        correct = (predicted == target[:, 0]).double()  # (n,)
        target_logp = logp.gather(1, target)[:, 0]  # (n,)
        probs = logp.exp()  # (n, V)
        brier = probs.square().sum(dim=-1) - 2 * target_logp.exp() + 1  # (n,)
        bins = (confidence * self.n_bins).long().clamp(max=self.n_bins - 1).cpu()  # (n,)
        self.counts += torch.bincount(bins, minlength=self.n_bins).double()
        self.confidence_sum += torch.bincount(bins, weights=confidence.cpu(), minlength=self.n_bins)
        self.correct_sum += torch.bincount(bins, weights=correct.cpu(), minlength=self.n_bins)
        self.nll_sum -= float(target_logp.sum())
        self.brier_sum += float(brier.sum())

    def result(self) -> CalibrationResult:
        """The figures over everything added so far."""
        total = float(self.counts.sum())
        if total == 0:
            raise ArlmError("no predictions to measure calibration on (every target was ignored)")
        filled = self.counts > 0
        safe = self.counts.clamp(min=1)
        conf, acc = self.confidence_sum / safe, self.correct_sum / safe  # (n_bins,) each
        gaps = (acc - conf).abs()  # (n_bins,)
        return CalibrationResult(
            n_bins=self.n_bins,
            bin_counts=[int(c) for c in self.counts],
            bin_confidence=[float(c) if f else None for c, f in zip(conf, filled)],
            bin_accuracy=[float(a) if f else None for a, f in zip(acc, filled)],
            tokens=int(total),
            ece=float((self.counts * gaps).sum() / total),
            mce=float(gaps[filled].max()),
            confidence=float(self.confidence_sum.sum() / total),
            accuracy=float(self.correct_sum.sum() / total),
            nll=self.nll_sum / total,
            brier=self.brier_sum / total,
        )


def calibration_from_logits(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS) -> CalibrationResult:
    """Calibration of logits (..., V) against targets (...)."""
    acc = CalibrationAccumulator(n_bins)
    acc.add(logits, targets)
    return acc.result()


@torch.no_grad()
def calibration(model: torch.nn.Module, batches: Iterable[Batch], n_bins: int = N_BINS) -> CalibrationResult:
    """Calibration of a model's next-token predictions over batches of a split (teacher forcing)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    acc = CalibrationAccumulator(n_bins)
    for batch in batches:
        batch = batch.to(device)
        logits = model(batch.x, attention_mask=batch.attention_mask)  # (B, T, V)
        acc.add(logits, batch.y)
    model.train(was_training)
    return acc.result()


# ---------------------------------------------------------------- runs, data and the figure


def run_label(reference: str, taken: Iterable[str] = ()) -> str:
    """A short name for a model reference (the run folder's name), unique among `taken`."""
    path = Path(reference)
    parts = path.parts
    label = parts[parts.index("checkpoints") - 1] if "checkpoints" in parts[1:] else (path.name or reference)
    taken = set(taken)
    unique, i = label, 2
    while unique in taken:
        unique, i = f"{label}-{i}", i + 1
    return unique


def run_data(loaded: LoadedModel, split: str, data_dir: str | Path | None = None) -> PreparedData:
    """The prepared corpus a run was trained on (or `data_dir`), checked to share its tokenizer and hold `split`."""
    config = loaded.config
    if data_dir:
        directory = Path(data_dir)
    elif config.data.prepared_dir:
        directory = Path(config.data.prepared_dir)
    else:
        directory = Path(config.train.out_dir) / "data"
    data = load_prepared(directory)
    if data.tokenizer.fingerprint() != loaded.tokenizer.fingerprint():
        raise ArlmError(f"{loaded.source} was trained with another tokenizer than the data in {directory}")
    if split not in data.meta["splits"] or not data.has_split(split):
        raise ArlmError(f"the data in {directory} has no {split} split")
    return data


def plot_reliability(results: dict[str, CalibrationResult], path: str | Path, *, title: str = "") -> Path:
    """Reliability diagram, one colour per run: accuracy vs mean confidence per bin over the diagonal, and
    below it the share of predictions in each bin."""
    from arlm.plots import _save, plt

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


def format_table(results: dict[str, CalibrationResult]) -> str:
    """A plain-text table: one row per run."""
    width = max([len(k) for k in results] + [3])
    lines = [f"{'run':<{width}}  {'ECE':>7}{'MCE':>8}{'conf':>8}{'acc':>8}{'NLL':>8}{'Brier':>8}{'tokens':>10}"]
    for label, r in results.items():
        lines.append(
            f"{label:<{width}}  {r.ece:>7.4f}{r.mce:>8.4f}{r.confidence:>8.4f}{r.accuracy:>8.4f}"
            f"{r.nll:>8.4f}{r.brier:>8.4f}{r.tokens:>10,}"
        )
    return "\n".join(lines)


def calibration_command(
    run_refs: list[str],
    *,
    split: str = "val",
    batches: int = 0,
    out: str | Path = "calibration.png",
    n_bins: int = N_BINS,
    data_dir: str | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> dict[str, CalibrationResult]:
    """Measure the calibration of runs on a split; print a table, write the diagram (out) and out.json."""
    if not run_refs:
        raise ArlmError("name at least one run or checkpoint to measure")
    results: dict[str, CalibrationResult] = {}
    for ref in run_refs:
        loaded = load_model(ref, device=pick_device(device))
        config = loaded.config
        data = run_data(loaded, split, data_dir)
        sampler = data.sampler(split, config.data, config.model.block_size, config.train.seed)
        results[run_label(ref, results)] = calibration(
            loaded.model, sampler.eval_batches(config.train.batch_size, batches), n_bins
        )
    log(f"calibration on the {split} split ({n_bins} bins):")
    log(format_table(results))
    out = Path(out)
    plot_reliability(results, out)
    record = {"split": split, "batches": batches, "runs": dict(zip(results, run_refs))}
    record["results"] = {k: r.as_dict() for k, r in results.items()}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    log(f"wrote {out}, {out.with_suffix('.json')}")
    return results


# ---------------------------------------------------------------- the study


def train_variants(
    preset: str,
    variants: dict[str, list[str]],
    runs_dir: str | Path,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> dict[str, tuple[Path, float]]:
    """Train one run per variant (the preset + overrides + the variant's own overrides), all on one prepared
    corpus in runs_dir/data; returns {name: (run folder, seconds)}."""
    from arlm.training.run import train_command

    runs_dir = Path(runs_dir)
    shared = ["--data.prepared_dir", str(runs_dir / "data")]
    trained = {}
    for name, extra in variants.items():
        run_dir = runs_dir / name
        config = build_config(preset, [*overrides, *extra, *shared, "--train.out_dir", str(run_dir)])
        log(f"=== training {name}: {' '.join(extra) or '(preset as is)'}")
        start = time.perf_counter()
        train_command(config, overwrite=True, log=log)
        trained[name] = (run_dir, time.perf_counter() - start)
    return trained


def calibration_study(
    out_dir: str | Path,
    *,
    preset: str = "quickstart",
    overrides: Sequence[str] = (),
    runs_dir: str | Path | None = None,
    smoothing: Sequence[float] = STUDY_SMOOTHING,
    split: str = "val",
    n_bins: int = N_BINS,
    log: Callable[[str], None] = print,
) -> dict[str, CalibrationResult]:
    """Train the preset once per label-smoothing value (otherwise identical), measure calibration on the
    split, and write calibration.png, calibration.json and report.md to out_dir."""
    out_dir = Path(out_dir)
    runs_dir = Path(runs_dir) if runs_dir else out_dir / "runs"
    all_overrides = [*STUDY_OVERRIDES, *overrides]
    variants = {f"label-smoothing-{s:g}": ["--train.label_smoothing", str(s)] for s in smoothing}
    start = time.perf_counter()
    trained = train_variants(preset, variants, runs_dir, all_overrides, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = calibration_command(
        [str(path) for path, _ in trained.values()],
        split=split,
        out=out_dir / "calibration.png",
        n_bins=n_bins,
        log=log,
    )
    total = time.perf_counter() - start
    config = build_config(preset, all_overrides)
    record = json.loads((out_dir / "calibration.json").read_text(encoding="utf-8"))
    record.update(
        preset=preset,
        overrides=all_overrides,
        label_smoothing=list(smoothing),
        train_seconds={k: round(s, 1) for k, (_, s) in trained.items()},
        total_seconds=round(total, 1),
        max_steps=config.train.max_steps,
    )
    record["runs"] = {k: str(p) for k, (p, _) in trained.items()}
    (out_dir / "calibration.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    report = _study_report(results, record, smoothing)
    (out_dir / "report.md").write_text(report, encoding="utf-8")
    log(f"wrote {out_dir / 'report.md'}")
    return results


def _study_report(results: dict[str, CalibrationResult], record: dict, smoothing: Sequence[float]) -> str:
    """The markdown summary of a calibration study."""
    rows = [
        "| label smoothing | ECE | MCE | mean confidence | accuracy | conf - acc | NLL | Brier | tokens | train s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s, (label, r) in zip(smoothing, results.items()):
        rows.append(
            f"| {s:g} | {r.ece:.4f} | {r.mce:.4f} | {r.confidence:.4f} | {r.accuracy:.4f} | "
            f"{r.overconfidence:+.4f} | {r.nll:.4f} | {r.brier:.4f} | {r.tokens:,} | {record['train_seconds'][label]} |"
        )
    ordered = sorted(results.items(), key=lambda kv: kv[1].ece)
    reading = (
        f"Lowest ECE: {ordered[0][0]} ({ordered[0][1].ece:.4f}); highest: {ordered[-1][0]} "
        f"({ordered[-1][1].ece:.4f}). A positive conf - acc means over-confident, negative under-confident."
    )
    return "\n".join(
        [
            "# Calibration study: label smoothing",
            "",
            f"Preset `{record['preset']}` trained {record['max_steps']} steps once per label-smoothing value, "
            f"otherwise identical (overrides: `{' '.join(record['overrides'])}`); calibration of the top-1 "
            f"next-token predictions on the {record['split']} split, {results[ordered[0][0]].n_bins} "
            "equal-width bins.",
            "",
            *rows,
            "",
            reading,
            "",
            f"Total time {record['total_seconds']} s. Figure: `calibration.png`; numbers: `calibration.json`.",
            "",
        ]
    )
