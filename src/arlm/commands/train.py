"""Train a model (default: the quickstart preset on the built-in corpus), evaluate it and sample.

End to end: prepare the corpus, build or resume the model, train, report, plot, sample. train_command is the
whole job as a function (the demo, distill, sweep and the studies run it too)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from arlm.commands.options import add_resume_argument
from arlm.config import (
    DEFAULT_PRESET,
    GenerationConfig,
    RunConfig,
    build_config,
    config_from_dict,
    config_to_dict,
    load_preset,
    merge,
    parse_overrides,
)
from arlm.errors import ArlmError, check_replaceable
from arlm.training.logging import read_metrics, truncate_log
from arlm.training.run_dir import (
    discard,
    foreign_entries,
    holds_run,
    leftovers,
    put_back,
    run_lock,
    set_aside,
    write_errors_as_one_line,
)

if TYPE_CHECKING:
    import torch

    from arlm.data.prepare import PreparedData
    from arlm.evaluation.perplexity import EvalResult
    from arlm.interop.checkpoint import Checkpoint
    from arlm.model.transformer import Transformer
    from arlm.training import distributed as D
    from arlm.training.trainer import Trainer

CONFIG_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--preset, --resume [CHECKPOINT], --overwrite."""
    parser.add_argument("--preset", default=None, help=f"named preset or YAML path (default {DEFAULT_PRESET})")
    add_resume_argument(parser, "continue exactly from the newest checkpoint in train.out_dir (or the one given)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in train.out_dir")


def run(args: argparse.Namespace) -> int:
    """Train the preset with the overrides, or resume a run with its own config plus the overrides."""
    preset_given = args.preset is not None
    if args.resume is None or preset_given:
        config = build_config(args.preset or DEFAULT_PRESET, args.overrides)
    else:  # only train.out_dir is read here: the run's own config is checked once the overrides join it
        config = config_from_dict(merge(load_preset(DEFAULT_PRESET), parse_overrides(args.overrides)))
    resume = None
    if args.resume is not None:
        config, resume = resume_config(config, args.resume, args.overrides, preset_given=preset_given)
    refuse_unread_overrides(config, parse_overrides(args.overrides))
    train_command(config, resume=resume, resuming=args.resume is not None, overwrite=args.overwrite)
    return 0


def refuse_unread_overrides(config: RunConfig, given: dict) -> None:
    """Refuse an override the run would not read: a model shape beside train.init (its shape comes from there),
    a LoRA setting at train.lora.rank 0 (no adapters), a distillation setting without a teacher, or a batch setting
    that chat data or the data's mode does not read."""
    from arlm.training.init import FROM_CONFIG  # lazy: kept out of --help

    shape = sorted(set(given.get("model", {})) - set(FROM_CONFIG))
    if config.train.init and shape:
        raise ArlmError(
            f"--model.{shape[0]} does nothing with train.init: the model's shape comes from {config.train.init} "
            f"(model.{', model.'.join(FROM_CONFIG)} apply)"
        )
    lora = sorted(set(given.get("train", {}).get("lora", {})) - {"rank"})
    if lora and not config.train.lora.rank:
        raise ArlmError(f"--train.lora.{lora[0]} does nothing at train.lora.rank 0 (no adapters are trained)")
    distill = sorted(set(given.get("train", {})) & {"distill_alpha", "distill_temperature"})
    if distill and not config.train.distill_from:
        raise ArlmError(f"--train.{distill[0]} does nothing without train.distill_from (no teacher to distill)")
    chat = sorted(set(given.get("data", {})) & {"sampling", "document_mask"})
    if chat and config.data.format == "chat":
        raise ArlmError(
            f"--data.{chat[0]} does nothing with chat data (whole conversations in shuffled epochs; a packed row's "
            "conversations always attend only to themselves)"
        )
    unread = {"padded": ("document_mask", "a row holds one document"), "packed": ("pad_to", "a row is a whole block")}
    name, why = unread[config.data.mode]
    if name in given.get("data", {}) and config.data.format == "text":
        raise ArlmError(f"--data.{name} does nothing with data.mode {config.data.mode} ({why})")


@dataclass
class TrainSummary:
    """What a finished run reports: final losses per split, the last checkpoint, the files written."""

    run_dir: Path
    checkpoint: Path | None
    final: dict[str, EvalResult] = field(default_factory=dict)
    sample: str = ""
    files: dict[str, Path] = field(default_factory=dict)


def resume_config(
    config: RunConfig, resume: str, overrides: list[str], preset_given: bool, log: Callable[[str], None] = print
) -> tuple[RunConfig, Checkpoint | None]:
    """The checkpoint to resume (verified, once) and the config to resume with: the checkpoint's own, plus
    overrides. None when the run in train.out_dir stopped before its first checkpoint: it starts again."""
    from arlm.interop.checkpoint import latest_checkpoint, open_checkpoint  # lazy: kept out of --help

    if resume != "latest":
        checkpoint = open_checkpoint(resume)
    else:
        found = latest_checkpoint(config.train.out_dir)
        if found is None:
            return _restart_config(config, overrides, preset_given, log), None
        checkpoint = open_checkpoint(found, hashes=False)  # hashed just now
    if preset_given:
        return config, checkpoint
    saved = config_to_dict(checkpoint.config)
    return config_from_dict(merge(saved, parse_overrides(overrides))).validate(), checkpoint


def _restart_config(
    config: RunConfig, overrides: list[str], preset_given: bool, log: Callable[[str], None]
) -> RunConfig:
    """The config of a run killed before its first checkpoint (its config.json plus overrides)."""
    from arlm.interop.checkpoint import list_checkpoints  # lazy: kept out of --help

    run_dir = Path(config.train.out_dir)
    if list_checkpoints(run_dir):
        raise ArlmError(
            f"nothing to resume: {run_dir} has no intact checkpoint; pass --overwrite (instead of --resume) "
            "to train it again from the start"
        )
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise ArlmError(f"nothing to resume: {run_dir} holds no run; start one without --resume")
    log(f"{run_dir} has no checkpoint yet (the run stopped before its first); training it again from step 0")
    if preset_given:
        return config
    try:
        raw = json.loads(saved.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raw = None
    if not isinstance(raw, dict):
        raise ArlmError(f"{saved} is damaged; pass --overwrite (instead of --resume) to train the run again")
    return config_from_dict(merge(raw, parse_overrides(overrides))).validate()


def train_command(
    config: RunConfig,
    *,
    resume: Checkpoint | str | Path | None = None,
    resuming: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    initial_model: Transformer | None = None,
) -> TrainSummary:
    """Run a whole training job as `arlm train` does; `resuming` without a checkpoint trains the run in
    train.out_dir again from step 0 (it stopped before its first checkpoint)."""
    import torch  # lazy: kept out of --help

    from arlm.data.prepare import check_outside_prepared  # lazy: kept out of --help
    from arlm.interop.checkpoint import Checkpoint, open_checkpoint  # lazy: kept out of --help
    from arlm.interop.loading import pick_device  # lazy: kept out of --help
    from arlm.training import distributed as D  # lazy: kept out of --help
    from arlm.training.logging import summary_writer  # lazy: kept out of --help

    tc = config.train
    # refusals before the process group, which only the try ends, and before anything is written
    check_outside_prepared(tc.out_dir, "--train.out_dir")
    if tc.tensorboard:
        summary_writer()  # (the package missing: refused here, not after the run's folder was made)
    varying = config.data.format == "chat" or config.data.mode == "padded"  # (rows as long as the batch's longest)
    if tc.compile and varying and config.data.pad_to == "longest":
        raise ArlmError(
            "--train.compile needs batches of one length here: add --data.pad_to block (batches padded to their "
            "longest row crashed the compiled step when their length changed)"
        )
    checkpoint = resume if resume is None or isinstance(resume, Checkpoint) else open_checkpoint(resume)
    device = pick_device(tc.device)
    info = D.init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    say = log if info.is_main else (lambda _msg: None)
    run_dir = Path(tc.out_dir)
    job = _Job(config, checkpoint, resuming or checkpoint is not None, overwrite, device, info, say, initial_model)
    try:
        with run_lock(run_dir) if info.is_main else contextlib.nullcontext(), write_errors_as_one_line(run_dir):
            return job.run()
    finally:
        D.shutdown(info)


@dataclass
class _Job:
    """One `arlm train` in its (locked) run folder."""

    config: RunConfig
    checkpoint: Checkpoint | None
    resuming: bool
    overwrite: bool
    device: torch.device
    info: D.DistInfo
    log: Callable[[str], None]
    initial_model: Transformer | None

    def run(self) -> TrainSummary:
        """Claim the folder, train, report; an earlier run set aside by --overwrite comes back on failure."""
        from arlm.training import distributed as D  # lazy: kept out of --help

        config, info, run_dir = self.config, self.info, Path(self.config.train.out_dir)
        step = self.checkpoint.meta.get("step", 0) if self.checkpoint else 0
        if self.checkpoint is not None and step >= config.train.max_steps:
            self.log(
                f"{run_dir} is already finished ({self.checkpoint.path.name}, train.max_steps "
                f"{config.train.max_steps}); raise --train.max_steps to train it further (the cosine is then drawn "
                "over the new count; --train.lr_decay_steps keeps the old one)"
            )
            return TrainSummary(run_dir, self.checkpoint.path)
        aside = _claim_run_dir(run_dir, self.resuming, self.overwrite, self.log) if info.is_main else None
        if info.is_main and self.resuming and self.checkpoint is None:
            truncate_log(run_dir / "metrics.jsonl", 0)  # training again from step 0
        D.barrier(info)
        try:
            return self._train(run_dir, aside)
        except BaseException:
            if aside is not None and aside.exists():
                put_back(run_dir, aside)
                self.log(f"the earlier run in {run_dir} is back as it was")
            raise

    def _train(self, run_dir: Path, aside: Path | None) -> TrainSummary:
        """Train on the run's prepared data, held against a prepare that would replace it meanwhile."""
        from arlm.temporaries import holding  # lazy: kept out of --help
        from arlm.training.trainer import refuse_other_data  # lazy: kept out of --help

        if self.checkpoint is not None:
            refuse_other_data(self.config, self.checkpoint)
        data = _prepared_data(self.config, self.info, self.overwrite, self.log, keep=self.checkpoint is not None)
        if self.checkpoint is not None:
            _note_other_source(self.checkpoint, data, self.log)
        with holding(data.directory):  # no prepare replaces the data while this run reads it (temporaries.in_use)
            return self._train_on(data, run_dir, aside)

    def _train_on(self, data: PreparedData, run_dir: Path, aside: Path | None) -> TrainSummary:
        import torch  # lazy: kept out of --help

        from arlm.training import distributed as D  # lazy: kept out of --help
        from arlm.training.trainer import Trainer  # lazy: kept out of --help

        config, info, say, tc = self.config, self.info, self.log, self.config.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        model = build_model(config, data, self.device, say, self.initial_model)
        teacher = _teacher(config, data, self.device, say)
        trainer = Trainer(config, data, model, run_dir=run_dir, device=self.device, info=info, log=say, teacher=teacher)
        if aside is not None:
            trainer.on_checkpoint = lambda _path: discard(aside)  # the new run has a checkpoint now
        if self.checkpoint is not None:
            trainer.resume(self.checkpoint)
        if info.is_main:
            (run_dir / "config.json").write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
        checkpoint = trainer.run()
        summary = TrainSummary(run_dir, checkpoint)
        summary.final = final_report(trainer, say)
        if info.is_main:
            _finish(summary, trainer, say)
        D.barrier(info)  # no rank tears the process group down while another still works
        return summary


def _claim_run_dir(run_dir: Path, resuming: bool, overwrite: bool, log: Callable[[str], None]) -> Path | None:
    """Refuse to clobber an earlier run unless asked; --overwrite sets it aside (returned) until the new run
    has its first checkpoint, so an error before that loses nothing."""
    from arlm.interop.checkpoint import list_checkpoints  # lazy: kept out of --help

    for old in leftovers(run_dir):
        log(f"note: {old} holds an earlier run set aside by an --overwrite that stopped before its first checkpoint")
    has_run = holds_run(run_dir)
    if has_run and not (resuming or overwrite):
        steps = [p.name for p in list_checkpoints(run_dir)]
        last = f" (last checkpoint {steps[-1]})" if steps else ""
        raise ArlmError(
            f"{run_dir} already holds a run{last}; pass --resume to continue it, --overwrite to "
            "replace it, or --train.out_dir NEW"
        )
    if overwrite and not resuming and has_run:
        check_replaceable(run_dir, foreign_entries(run_dir), "a run's")  # --overwrite replaces the whole folder
        return set_aside(run_dir)
    return None


def _note_other_source(checkpoint: Checkpoint, data: PreparedData, log: Callable[[str], None]) -> None:
    """Say where a resumed run's data were prepared (again) from a source file that changed since it trained on it."""
    from arlm.data.prepare import changed_source  # lazy: kept out of --help

    changed = changed_source(checkpoint.meta.get("data_sources"), data.meta.get("sources"))
    if changed:
        log(
            f"note: {data.directory} was prepared from {changed} as it is now, changed (size or time) since this run "
            "trained on it: the run goes on with that data"
        )


def _prepared_data(
    config: RunConfig, info: D.DistInfo, overwrite: bool, log: Callable[[str], None], keep: bool = False
) -> PreparedData:
    """The run's prepared data: reused, or prepared (again); keep: a resumed run keeps the data it trained on."""
    from arlm.data.corpus import check_source_apart  # lazy: kept out of --help
    from arlm.data.prepare import load_prepared, prepare  # lazy: kept out of --help
    from arlm.interop.loading import load_tokenizer, prepared_dir  # lazy: kept out of --help
    from arlm.training import distributed as D  # lazy: kept out of --help

    directory = prepared_dir(config)
    if info.is_main:
        check_source_apart(config.data.source, config.train.out_dir, "--train.out_dir")  # (its train.lock, its data)
        replace = (overwrite or not config.data.prepared_dir) and not keep  # a resumed run's data is never replaced
        data = prepare(
            config.data,
            directory,
            overwrite=replace,
            log=log,
            block_size=config.model.block_size,  # the report counts chat conversations cut to the context
            resolve_tokenizer=load_tokenizer,
            keep=keep,
        )
    D.barrier(info)
    return data if info.is_main else load_prepared(directory)


def build_model(
    config: RunConfig,
    data: PreparedData,
    device: torch.device,
    log: Callable[[str], None],
    initial: Transformer | None = None,
) -> Transformer:
    """A freshly initialised model (seeded), one started from train.init's weights, or the one given."""
    import torch  # lazy: kept out of --help

    from arlm.model.transformer import Transformer  # lazy: kept out of --help
    from arlm.training.init import initial_model  # lazy: kept out of --help

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


def _teacher(
    config: RunConfig, data: PreparedData, device: torch.device, log: Callable[[str], None]
) -> torch.nn.Module | None:
    """The model to distill from (train.distill_from), checked to share the data's tokenizer."""
    from arlm.interop.loading import load_model  # lazy: kept out of --help

    if not config.train.distill_from:
        return None
    teacher = load_model(config.train.distill_from, device=device)
    if teacher.tokenizer.fingerprint() != data.tokenizer.fingerprint():
        raise ArlmError(
            f"the teacher {config.train.distill_from} uses another tokenizer than the data; prepare the "
            f"data with --data.tokenizer {config.train.distill_from}"
        )
    log(f"distilling from {teacher.source} ({teacher.model.num_params() / 1e6:.3g}M parameters)")
    return teacher.model


def final_report(trainer: Trainer, log: Callable[[str], None]) -> dict[str, EvalResult]:
    """Loss, perplexity and bits per byte on every split (train.final_eval_batches each, with a progress bar)."""
    results = {
        s: trainer.evaluate(s, trainer.tc.final_eval_batches, progress=True)
        for s in ("train", "val", "test")
        if s in trainer.eval_samplers
    }
    log(f"{'split':<6} {'loss':>8} {'ppl':>9} {'bits/byte':>10} {'tokens':>11}")
    for split, r in results.items():
        bpb = f"{r.bits_per_byte:.4f}" if r.bits_per_byte else "-"
        ppl = f"{r.perplexity:.2f}" if r.perplexity < 1e6 else f"{r.perplexity:.3g}"  # (an early run's: 2.43e+10)
        log(f"{split:<6} {r.loss:>8.4f} {ppl:>9} {bpb:>10} {r.tokens:>11,}")
    return results


def _finish(summary: TrainSummary, trainer: Trainer, log: Callable[[str], None]) -> None:
    """Write the final record, the loss plot, and print a sample."""
    from arlm.commands.plots import plot_loss  # lazy: kept out of --help
    from arlm.training.logging import MetricsLog  # lazy: kept out of --help

    run_dir = summary.run_dir
    record = {"event": "final", "step": trainer.step, "tokens": trainer.tokens_seen}
    for split, r in summary.final.items():
        record.update(r.as_dict(f"final_{split}_"))
    metrics = MetricsLog(run_dir / "metrics.jsonl")  # (non-finite values written as null, as every record)
    metrics.write(record)
    metrics.close()
    summary.files["metrics"] = run_dir / "metrics.jsonl"
    summary.files["plot"] = plot_loss(
        {run_dir.name: read_metrics(run_dir / "metrics.jsonl")},
        run_dir / "loss.png",
        title=f"{run_dir.name}: loss vs tokens",
    )
    log(f"wrote {summary.checkpoint}, {summary.files['metrics']}, {summary.files['plot']}")
    model = _sampling_model(trainer, summary.checkpoint) if trainer.tc.sample_tokens else None
    if model is not None:
        summary.sample = sample_text(trainer, trainer.tc.sample_prompt, trainer.tc.sample_tokens, model)
        gen = trainer.config.generate
        log(f"--- sample ({trainer.tc.sample_tokens} tokens, {gen.strategy}, temperature {gen.temperature}) ---")
        log(summary.sample)
        log("---")


def _sampling_model(trainer: Trainer, checkpoint: Path | None) -> Transformer | None:
    """The trained model, for the main rank's sample; under FSDP, whose forward gathers weights from every rank
    while the others have finished, the checkpoint just written, loaded whole (None without one)."""
    from arlm.interop.loading import load_model  # lazy: kept out of --help
    from arlm.training import distributed as D  # lazy: kept out of --help

    if not (trainer.info.enabled and trainer.tc.parallel == "fsdp"):
        return D.unwrap(trainer.model)
    return load_model(checkpoint, device=trainer.device).model if checkpoint is not None else None


def sample_text(trainer: Trainer, prompt: str, tokens: int, model: Transformer | None = None) -> str:
    """A short sample (seeded) from `model`, by default the trained one."""
    from arlm.decoding.generate import generate  # lazy: kept out of --help
    from arlm.training import distributed as D  # lazy: kept out of --help

    tok = trainer.data.tokenizer
    model = D.unwrap(trainer.model) if model is None else model
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
