"""`arlm train` end to end: prepare the corpus, build or resume the model, train, report, plot, sample."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arlm.config import GenerationConfig, RunConfig, config_from_dict, config_to_dict, merge, parse_overrides
from arlm.data.prepare import PreparedData, load_prepared, prepare
from arlm.errors import ArlmError
from arlm.evaluation.perplexity import EvalResult
from arlm.loading import pick_device
from arlm.model.transformer import Transformer
from arlm.training import distributed as D
from arlm.training.checkpoint import Checkpoint, latest_checkpoint, list_checkpoints, open_checkpoint
from arlm.training.logging import read_metrics
from arlm.training.trainer import Trainer

RUN_MARKERS = ("metrics.jsonl", "checkpoints", "config.json")


@dataclass
class TrainSummary:
    """What a finished run reports: final losses per split, the last checkpoint, the files written."""

    run_dir: Path
    checkpoint: Path | None
    final: dict[str, EvalResult] = field(default_factory=dict)
    sample: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def resume_config(config: RunConfig, resume: str, overrides: list[str], preset_given: bool) -> tuple[RunConfig, Path]:
    """The checkpoint to resume and the config to resume with: the checkpoint's own, plus overrides."""
    if resume == "latest":
        found = latest_checkpoint(config.train.out_dir)
        if found is None:
            raise ArlmError(f"nothing to resume: {config.train.out_dir} has no complete checkpoint")
        path = found
    else:
        path = open_checkpoint(resume).path
    if preset_given:
        return config, path
    saved = config_to_dict(open_checkpoint(path).config)
    return config_from_dict(merge(saved, parse_overrides(overrides))).validate(), path


def train_command(
    config: RunConfig,
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    initial_model: Transformer | None = None,
) -> TrainSummary:
    """Run a whole training job as `arlm train` does."""
    tc = config.train
    device = pick_device(tc.device)
    info = D.init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    say = log if info.is_main else (lambda _msg: None)
    run_dir = Path(tc.out_dir)
    try:
        if info.is_main:
            _claim_run_dir(run_dir, resume is not None, overwrite)
        D.barrier(info)
        data = _prepared_data(config, run_dir, info, overwrite, say)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        model = build_model(config, data, device, say, initial_model)
        teacher = _teacher(config, data, device, say)
        trainer = Trainer(config, data, model, run_dir=run_dir, device=device, info=info, log=say, teacher=teacher)
        if resume is not None:
            trainer.resume(open_checkpoint(resume))
        if info.is_main:
            (run_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
        checkpoint = trainer.run()
        summary = TrainSummary(run_dir, checkpoint)
        summary.final = final_report(trainer, say)
        if info.is_main:
            _finish(summary, trainer, say)
        D.barrier(info)  # no rank tears the process group down while another still works
        return summary
    finally:
        D.shutdown(info)


def _claim_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run unless asked; --overwrite deletes only an arlm run directory."""
    has_run = run_dir.exists() and any((run_dir / m).exists() for m in RUN_MARKERS)
    if has_run and not (resuming or overwrite):
        steps = [p.name for p in list_checkpoints(run_dir)]
        last = f" (last checkpoint {steps[-1]})" if steps else ""
        raise ArlmError(
            f"{run_dir} already holds a run{last}; pass --resume to continue it, --overwrite to "
            "replace it, or --train.out_dir NEW"
        )
    if overwrite and not resuming and has_run:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def _prepared_data(config: RunConfig, run_dir: Path, info: D.DistInfo, overwrite: bool, log) -> PreparedData:
    directory = Path(config.data.prepared_dir) if config.data.prepared_dir else run_dir / "data"
    if info.is_main:
        data = prepare(config.data, directory, overwrite=overwrite or not config.data.prepared_dir, log=log)
    D.barrier(info)
    return data if info.is_main else load_prepared(directory)


def build_model(
    config: RunConfig, data: PreparedData, device: torch.device, log, initial: Transformer | None = None
) -> Transformer:
    """A freshly initialised model (seeded), one started from train.init's weights, or the one given."""
    mc = config.model
    vocab = data.tokenizer.vocab_size
    if mc.vocab_size == 0:
        mc.vocab_size = vocab
    elif mc.vocab_size < vocab:
        raise ArlmError(f"model.vocab_size {mc.vocab_size} is smaller than the tokenizer's {vocab}")
    torch.manual_seed(config.train.seed)
    if initial is not None:
        model = initial
    elif config.train.init:
        from arlm.training.init import initial_model

        model = initial_model(config, data, log)
    else:
        model = Transformer(mc)
    mc = model.config  # train.init or a given model may have replaced the preset's shape
    log(
        f"model: {mc.flavour}, {model.num_params() / 1e6:.2f}M parameters, {mc.n_layer} layers, "
        f"d_model {mc.d_model}, context {mc.block_size}, vocabulary {mc.vocab_size}"
    )
    return model.to(device)


def _teacher(config: RunConfig, data: PreparedData, device: torch.device, log) -> torch.nn.Module | None:
    """The model to distill from (train.distill_from), checked to share the data's tokenizer."""
    if not config.train.distill_from:
        return None
    from arlm.loading import load_model

    teacher = load_model(config.train.distill_from, device=device)
    if teacher.tokenizer.fingerprint() != data.tokenizer.fingerprint():
        raise ArlmError(
            f"the teacher {config.train.distill_from} uses another tokenizer than the data; prepare the "
            f"data with --data.tokenizer {config.train.distill_from}"
        )
    log(f"distilling from {teacher.source} ({teacher.model.num_params() / 1e6:.0f}M parameters)")
    return teacher.model


def final_report(trainer: Trainer, log) -> dict[str, EvalResult]:
    """Loss, perplexity and bits per byte on every split (train.final_eval_batches each, with a progress bar)."""
    results = {
        s: trainer.evaluate(s, trainer.tc.final_eval_batches, progress=True)
        for s in ("train", "val", "test")
        if s in trainer.eval_samplers
    }
    log(f"{'split':<6}{'loss':>9}{'ppl':>10}{'bits/byte':>11}{'tokens':>12}")
    for split, r in results.items():
        bpb = f"{r.bits_per_byte:.4f}" if r.bits_per_byte else "-"
        log(f"{split:<6}{r.loss:>9.4f}{r.perplexity:>10.2f}{bpb:>11}{r.tokens:>12,}")
    return results


def _finish(summary: TrainSummary, trainer: Trainer, log) -> None:
    """Write the final record, the loss plot, and print a sample."""
    from arlm.plots import plot_loss

    run_dir = summary.run_dir
    record = {"event": "final", "step": trainer.step, "tokens": trainer.tokens_seen}
    for split, r in summary.final.items():
        record.update(r.as_dict(f"final_{split}_"))
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    summary.files["metrics"] = run_dir / "metrics.jsonl"
    summary.files["plot"] = plot_loss(
        {run_dir.name: read_metrics(run_dir / "metrics.jsonl")},
        run_dir / "loss.png",
        title=f"{run_dir.name}: loss vs tokens",
    )
    log(f"wrote {summary.checkpoint}, {summary.files['metrics']}, {summary.files['plot']}")
    if trainer.tc.sample_tokens:
        summary.sample = sample_text(trainer, trainer.tc.sample_prompt, trainer.tc.sample_tokens)
        log(f"--- sample ({trainer.tc.sample_tokens} tokens, temperature 0.8, top-k 50) ---")
        log(summary.sample)
        log("---")


def sample_text(trainer: Trainer, prompt: str, tokens: int) -> str:
    """A short sample from the trained model (seeded)."""
    from arlm.decoding.generate import generate

    tok = trainer.data.tokenizer
    model = D.unwrap(trainer.model)
    ids = tok.encode(prompt) if prompt else []
    if not ids:
        ids = [tok.bos_id if tok.bos_id is not None else 0]
    ids = ids[-(model.config.block_size - 1) :]
    gen = GenerationConfig(
        strategy="sample", max_new_tokens=tokens, temperature=0.8, top_k=50, seed=trainer.tc.seed, stop_at_eos=False
    )
    model.eval()
    out = generate(model, [ids], gen, eos_id=tok.eos_id, pad_id=tok.pad_id)
    model.train()
    return prompt + tok.decode(out.generated()[0])


__all__ = ["Checkpoint", "TrainSummary", "build_model", "resume_config", "train_command"]
