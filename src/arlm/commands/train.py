"""Train a model (default: the quickstart preset on the built-in corpus), evaluate it and sample.

End to end: prepare the corpus, build or resume the model, train, report, plot, sample. train_command is the
whole job as a function (the demo, distill, sweep and the studies run it too)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from arlm.commands.plots import plot_loss
from arlm.config import (
    DEFAULT_PRESET,
    GenerationConfig,
    RunConfig,
    build_config,
    config_from_dict,
    config_to_dict,
    merge,
    parse_overrides,
)
from arlm.data.prepare import PreparedData, load_prepared, prepare
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.evaluation.perplexity import EvalResult
from arlm.interop.checkpoint import latest_checkpoint, list_checkpoints, open_checkpoint
from arlm.interop.loading import load_model, load_tokenizer, pick_device, prepared_dir
from arlm.model.transformer import Transformer
from arlm.training import distributed as D
from arlm.training.init import initial_model
from arlm.training.logging import read_metrics
from arlm.training.trainer import Trainer

CONFIG_OVERRIDES = True
RUN_MARKERS = ("metrics.jsonl", "checkpoints", "config.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --resume [CHECKPOINT], --overwrite."""
    parser.add_argument("--preset", default=None, help=f"named preset or YAML path (default {DEFAULT_PRESET})")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue exactly from the newest checkpoint in train.out_dir (or the one given)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in train.out_dir")


def run(args: argparse.Namespace) -> int:
    """Train the preset with the overrides, or resume a run with its own config plus the overrides."""
    config = build_config(args.preset or DEFAULT_PRESET, args.overrides)
    resume = None
    if args.resume is not None:
        config, resume = resume_config(config, args.resume, args.overrides, preset_given=args.preset is not None)
    train_command(config, resume=resume, overwrite=args.overwrite)
    return 0


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
        data = _prepared_data(config, info, overwrite, say)
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


def _prepared_data(config: RunConfig, info: D.DistInfo, overwrite: bool, log) -> PreparedData:
    directory = prepared_dir(config)
    if info.is_main:
        replace = overwrite or not config.data.prepared_dir
        data = prepare(config.data, directory, overwrite=replace, log=log, resolve_tokenizer=load_tokenizer)
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
    teacher = load_model(config.train.distill_from, device=device)
    if teacher.tokenizer.fingerprint() != data.tokenizer.fingerprint():
        raise ArlmError(
            f"the teacher {config.train.distill_from} uses another tokenizer than the data; prepare the "
            f"data with --data.tokenizer {config.train.distill_from}"
        )
    log(f"distilling from {teacher.source} ({teacher.model.num_params() / 1e6:.0f}M parameters)")
    return teacher.model


def final_report(trainer: Trainer, log) -> dict[str, EvalResult]:
    """Loss, perplexity and bits per byte on every split (train.final_eval_batches each)."""
    results = {
        s: trainer.evaluate(s, trainer.tc.final_eval_batches)
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
        gen = trainer.config.generate
        log(f"--- sample ({trainer.tc.sample_tokens} tokens, {gen.strategy}, temperature {gen.temperature}) ---")
        log(summary.sample)
        log("---")


def sample_text(trainer: Trainer, prompt: str, tokens: int) -> str:
    """A short sample from the trained model (seeded)."""
    tok = trainer.data.tokenizer
    model = D.unwrap(trainer.model)
    ids = tok.encode(prompt) if prompt else []
    if not ids:
        ids = [tok.bos_id if tok.bos_id is not None else 0]
    ids = ids[-(model.config.block_size - 1) :]
    gen = sample_config(trainer.config.generate, tokens, trainer.tc.seed)
    model.eval()
    out = generate(model, [ids], gen, eos_id=tok.eos_id, pad_id=tok.pad_id)
    model.train()
    return prompt + tok.decode(out.generated()[0])


def sample_config(generate: GenerationConfig, tokens: int, seed: int) -> GenerationConfig:
    """The run's generate: section for `tokens` new tokens (seeded by train.seed unless it names a seed); with
    no draft model here, speculative and prompt-lookup decode plainly, which has the same distribution."""
    plain = "sample" if generate.strategy in ("speculative", "prompt-lookup") else generate.strategy
    seed = generate.seed if generate.seed is not None else seed
    return dataclasses.replace(generate, strategy=plain, max_new_tokens=tokens, seed=seed, num_return_sequences=1)
