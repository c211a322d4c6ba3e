"""The command line: each verb parses its arguments and calls one plain typed function; nothing else."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from collections.abc import Callable

from arlm.config import GenerationConfig, build_config, coerce, preset_names
from arlm.errors import ArlmError

DEFAULT_PRESET = "quickstart"
STUDY_VERBS = (
    "eval-context",
    "eval-icl",
    "eval-calibration",
    "eval-exposure-bias",
    "study-calibration",
    "study-exposure-bias",
)


def _overrides_help() -> str:
    return "overrides: --section.key value (e.g. --train.lr 3e-4 --model.n_layer 6); unknown keys are errors"


# ---------------------------------------------------------------- verbs


def cmd_prepare(args: argparse.Namespace, overrides: list[str]) -> int:
    """Read, normalize, split and tokenize a corpus into token shards, and print the corpus report."""
    from pathlib import Path

    from arlm.data.prepare import prepare

    config = build_config(args.preset, overrides)
    directory = args.out or config.data.prepared_dir or str(Path(config.train.out_dir) / "data")
    prepare(config.data, directory, overwrite=args.overwrite, block_size=config.model.block_size)
    print(f"prepared data in {directory}")
    return 0


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    """Train a model (default: the quickstart preset on the built-in corpus), evaluate it and sample."""
    from arlm.training.run import resume_config, train_command

    config = build_config(args.preset or DEFAULT_PRESET, overrides)
    resume = None
    if args.resume is not None:
        config, resume = resume_config(config, args.resume, overrides, preset_given=args.preset is not None)
    train_command(config, resume=resume, resuming=args.resume is not None, overwrite=args.overwrite)
    return 0


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    """The main job: train the quickstart model and a draft, then compare greedy, sampling, beam and speculative."""
    _no_overrides(overrides)
    from arlm.demo import demo_command

    demo_command()
    return 0


def cmd_distill(args: argparse.Namespace, overrides: list[str]) -> int:
    """Train a draft model for speculative decoding by distilling a target's next-token distributions."""
    from arlm.training.distill import distill_command
    from arlm.training.run import resume_config

    config = build_config(args.preset, overrides)
    if args.resume is not None:
        config, path = resume_config(config, args.resume, overrides, preset_given=False)
        from arlm.training.run import train_command

        train_command(config, resume=path, resuming=True)
        return 0
    distill_command(config, args.teacher, args.layers, overwrite=args.overwrite)
    return 0


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    """Loss, perplexity and bits per byte of a model on a prepared split or a text file."""
    _no_overrides(overrides)
    from arlm.evaluation.run import eval_command

    eval_command(
        args.model,
        split=args.split,
        file=args.file,
        data_dir=args.data,
        context=args.context,
        stride=args.stride,
        batches=args.batches,
        device=args.device,
        max_chars=args.max_chars,
        compare_transformers=args.compare_transformers,
    )
    return 0


def cmd_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    """Generate text from a model with greedy, sampling, beam or speculative decoding."""
    _no_overrides(overrides)
    from arlm.decoding.cli import generate_command

    base = build_config(args.preset).generate if args.preset else None  # None: the model's own run config
    generate_command(
        args.model,
        args.prompt,
        base,
        options=_generation_options(args),
        draft=args.draft,
        device=args.device,
        stats=args.stats,
        show_drafts=args.show_drafts,
        dtype=args.dtype,
    )
    return 0


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    """Write a checkpoint as a Hugging Face folder (GPT2LMHeadModel or LlamaForCausalLM) that transformers loads,
    or a Llama as one GGUF file that llama.cpp runs."""
    _no_overrides(overrides)
    if args.format == "gguf":
        from arlm.interop.gguf_export import export_gguf

        print(f"wrote {export_gguf(args.model, args.out, outtype=args.outtype, overwrite=args.overwrite)}")
        return 0
    from arlm.interop.hf import export_hf

    folder = export_hf(args.model, args.out, overwrite=args.overwrite)
    print(f"wrote {folder}")
    return 0


def cmd_chat(args: argparse.Namespace, overrides: list[str]) -> int:
    """Chat with an instruct model (default: SmolLM2-135M-Instruct) through its chat template, streaming."""
    _no_overrides(overrides)
    from arlm.decoding.chat import chat_command

    config = GenerationConfig(strategy="sample", temperature=0.7, top_p=0.9, max_new_tokens=256)
    config = _generation_config(args, config)
    chat_command(args.model, config, system=args.system, messages=args.message, device=args.device)
    return 0


def cmd_eval_context(args: argparse.Namespace, overrides: list[str]) -> int:
    """Validation loss by position in the context, for one or more runs (one figure)."""
    _no_overrides(overrides)
    from arlm.evaluation.context import context_command

    context_command(args.runs, split=args.split, batches=args.batches, out=args.out)
    return 0


def cmd_eval_icl(args: argparse.Namespace, overrides: list[str]) -> int:
    """Zero/one/few-shot accuracy on in-context learning tasks (table, JSON and PNG); --lm-eval runs lm-eval."""
    _no_overrides(overrides)
    tasks = args.tasks.split(",") if args.tasks else None
    if args.lm_eval:
        from arlm.evaluation.lm_eval_adapter import lm_eval_command
        from arlm.loading import pick_device

        for k in args.shots:
            device = str(pick_device(args.device))
            lm_eval_command(args.model, ",".join(tasks) if tasks else "all", k, args.limit, device=device)
        return 0
    from arlm.evaluation.icl import icl_command

    icl_command(
        args.model,
        tasks=tasks,
        shots=args.shots,
        scoring=args.scoring,
        limit=args.limit,
        out_dir=args.out,
        num_beams=args.num_beams,
        device=args.device,
    )
    return 0


def cmd_eval_calibration(args: argparse.Namespace, overrides: list[str]) -> int:
    """Expected calibration error and a reliability diagram of next-token predictions, for one or more runs."""
    _no_overrides(overrides)
    from arlm.evaluation.calibration import calibration_command

    calibration_command(
        args.runs, split=args.split, batches=args.batches, out=args.out, n_bins=args.bins, data_dir=args.data,
        device=args.device,
    )  # fmt: skip
    return 0


def cmd_eval_exposure_bias(args: argparse.Namespace, overrides: list[str]) -> int:
    """Per-position loss and accuracy under teacher forcing vs free running (the model's own prefix)."""
    _no_overrides(overrides)
    from arlm.evaluation.exposure_bias import exposure_bias_command

    exposure_bias_command(
        args.runs, prompt_len=args.prompt_len, length=args.length, n_sequences=args.sequences, split=args.split,
        out=args.out, data_dir=args.data, device=args.device,
    )  # fmt: skip
    return 0


def cmd_study_calibration(args: argparse.Namespace, overrides: list[str]) -> int:
    """Train a preset with label smoothing 0 and 0.1 (otherwise identical) and compare their calibration."""
    from arlm.evaluation.calibration import calibration_study

    calibration_study(args.out, preset=args.preset, overrides=overrides, runs_dir=args.runs_dir)
    return 0


def cmd_study_exposure_bias(args: argparse.Namespace, overrides: list[str]) -> int:
    """Train a preset plainly and with scheduled sampling, and compare their exposure-bias curves."""
    from arlm.evaluation.exposure_bias import exposure_bias_study

    exposure_bias_study(
        args.out, preset=args.preset, overrides=overrides, runs_dir=args.runs_dir,
        scheduled_sampling=args.scheduled_sampling, n_sequences=args.sequences,
    )  # fmt: skip
    return 0


def cmd_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    """Train a preset over a grid (--vary section.key=v1,v2,...) and draw all loss curves in one figure."""
    from arlm.training.sweep import sweep_command

    sweep_command(args.preset, args.vary, overrides, same_tokens=args.same_tokens, out_dir=args.out)
    return 0


def cmd_plot(args: argparse.Namespace, overrides: list[str]) -> int:
    """Draw training loss against tokens for one or more runs in one figure (and gradient norms if logged)."""
    _no_overrides(overrides)
    from arlm.evaluation.curves import plot_command

    plot_command(args.runs, args.out, grad_norms=args.grad_norms)
    return 0


def cmd_bench(args: argparse.Namespace, overrides: list[str]) -> int:
    """Benchmarks: `train` (ours vs GPT2LMHeadModel), `decode` (ours vs generate()), `memory` (context cost)."""
    if args.what == "train":
        from arlm.bench.train import bench_train_command

        bench_train_command(overrides, repeats=args.repeats, steps=args.steps)
    elif args.what == "decode":
        _no_overrides(overrides)
        from arlm.bench.decode import bench_decode_command

        bench_decode_command(args.model, draft_ref=args.draft, new_tokens=args.new_tokens, repeats=args.repeats)
    elif args.what == "memory":
        _no_overrides(overrides)
        from arlm.bench.memory import LENGTHS, bench_memory_command

        lengths = tuple(int(t) for t in args.lengths.split(",")) if args.lengths else LENGTHS
        bench_memory_command(lengths=lengths, budget_gb=args.budget_gb, out=args.out or "memory.png")
    return 0


def cmd_presets(args: argparse.Namespace, overrides: list[str]) -> int:
    """List the named presets."""
    _no_overrides(overrides)
    for name in preset_names():
        print(name)
    return 0


def _no_overrides(overrides: list[str]) -> None:
    if overrides:
        raise ArlmError(f"unexpected argument {overrides[0]!r}")


# ---------------------------------------------------------------- generation flags from the dataclass


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(GenerationConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f"gen_{f.name}",
            default=None,
            action="append" if f.name == "stop" else None,
            metavar=f.name.upper(),
            help=f"(default {f.default if f.default is not dataclasses.MISSING else '[]'})",
        )


def _generation_options(args: argparse.Namespace) -> dict[str, typing.Any]:
    """The generation settings given as flags, read to their types."""
    hints = typing.get_type_hints(GenerationConfig)
    options = {}
    for f in dataclasses.fields(GenerationConfig):
        value = getattr(args, f"gen_{f.name}")
        if value is not None:
            options[f.name] = coerce(value, hints[f.name], "--" + f.name.replace("_", "-"))
    return options


def _generation_config(args: argparse.Namespace, base: GenerationConfig | None = None) -> GenerationConfig:
    config = dataclasses.replace(base or GenerationConfig(), **_generation_options(args))
    config.validate()
    return config


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree for every verb."""
    parser = argparse.ArgumentParser(
        prog="arlm",
        description="Autoregressive transformer language models.",
        allow_abbrev=False,
        epilog=_overrides_help(),
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    def verb(name: str, func: Callable) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name, help=func.__doc__, description=func.__doc__, epilog=_overrides_help(), allow_abbrev=False
        )
        sub.set_defaults(func=func)
        return sub

    p = verb("prepare", cmd_prepare)
    p.add_argument("--preset", default=DEFAULT_PRESET, help="named preset or YAML path")
    p.add_argument("--out", help="output folder (default: data.prepared_dir, else <train.out_dir>/data)")
    p.add_argument("--overwrite", action="store_true", help="replace data prepared with other settings")

    p = verb("train", cmd_train)
    p.add_argument("--preset", default=None, help=f"named preset or YAML path (default {DEFAULT_PRESET})")
    p.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue exactly from the newest checkpoint in train.out_dir (or the one given)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in train.out_dir")

    verb("demo", cmd_demo)

    p = verb("distill", cmd_distill)
    p.add_argument("--teacher", default="smollm2", help="the target model to distill (default smollm2)")
    p.add_argument("--layers", type=int, default=2, help="blocks of the draft (copied from the teacher, spaced)")
    p.add_argument("--preset", default="smollm2-draft", help="data and training settings")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in train.out_dir")

    p = verb("eval", cmd_eval)
    p.add_argument("model", help="checkpoint, run folder, HF folder, GGUF file or 'smollm2'")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--data", help="prepared data folder (default: the one the run was trained on)")
    p.add_argument("--file", help="evaluate on this corpus (file, folder, glob, JSONL or builtin) by sliding window")
    p.add_argument("--max-chars", type=int, default=0, help="with --file: only the first N characters")
    p.add_argument(
        "--compare-transformers",
        action="store_true",
        help="with --file: also score the same windows with transformers' own loading of the model",
    )
    p.add_argument(
        "--context",
        type=int,
        default=0,
        help="window / block length (default: the model's context, at most 1024 on a split)",
    )
    p.add_argument("--stride", type=int, default=0, help="window stride (default: half the window)")
    p.add_argument("--batches", type=int, default=0, help="limit to this many batches (0: whole split)")
    p.add_argument("--device", default="auto")

    p = verb("generate", cmd_generate)
    p.add_argument("model", help="checkpoint, run folder, HF folder, GGUF file or 'smollm2'")
    p.add_argument(
        "--preset", help="take the defaults from this preset's generate: section (default: the run's own config)"
    )
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeat for a batch)")
    p.add_argument("--draft", help="draft model for --strategy speculative")
    p.add_argument("--stats", action="store_true", help="print tokens/s (and acceptance for speculative)")
    p.add_argument("--show-drafts", action="store_true", help="mark tokens accepted from the draft")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    _add_generation_flags(p)

    p = verb("export", cmd_export)
    p.add_argument("format", choices=("hf", "gguf"), help="hf: a transformers folder | gguf: a llama.cpp file")
    p.add_argument("model", help="checkpoint or run folder (gguf: also an HF folder, a .gguf or 'smollm2')")
    p.add_argument("out", help="folder to write (gguf: a .gguf file)")
    p.add_argument("--outtype", default="f32", choices=("f32", "f16", "bf16", "q8_0"), help="gguf: matrix type")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty folder or an existing file")

    p = verb("chat", cmd_chat)
    p.add_argument("--model", default="smollm2", help="an instruct model with a chat template (default smollm2)")
    p.add_argument("--system", help="a system message")
    p.add_argument("--message", action="append", help="answer these messages in turn instead of reading input")
    p.add_argument("--device", default="auto")
    _add_generation_flags(p)

    p = verb("eval-context", cmd_eval_context)  # spelled `arlm eval context`
    p.add_argument("runs", nargs="+", help="run folders or checkpoints")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--batches", type=int, default=0, help="limit to this many batches (0: whole split)")
    p.add_argument("--out", default="context.png", help="PNG to write")

    p = verb("eval-icl", cmd_eval_icl)  # spelled `arlm eval icl`
    p.add_argument("model", help="checkpoint, run folder, HF folder, GGUF file or 'smollm2'")
    p.add_argument("--tasks", help="comma-separated built-in tasks or paths to task JSONL (default: all built-in)")
    p.add_argument(
        "--shots",
        type=lambda v: [int(k) for k in v.split(",")],
        default=[0, 1, 2, 4, 8],
        help="numbers of demonstrations (default 0,1,2,4,8)",
    )
    p.add_argument("--scoring", default="generate", choices=("generate", "loglikelihood"))
    p.add_argument("--num-beams", type=int, default=1, help="generate scoring: beam search when > 1")
    p.add_argument("--limit", type=int, default=None, help="at most this many items per task")
    p.add_argument("--out", default="icl", help="folder for icl.json and icl.png")
    p.add_argument("--lm-eval", action="store_true", help="run lm-evaluation-harness on the same tasks instead")
    p.add_argument("--device", default="auto")

    for name, func, default_out in (
        ("eval-calibration", cmd_eval_calibration, "calibration.png"),  # spelled `arlm eval calibration`
        ("eval-exposure-bias", cmd_eval_exposure_bias, "exposure_bias.png"),
    ):
        p = verb(name, func)
        p.add_argument("runs", nargs="+", help="run folders or checkpoints")
        p.add_argument("--split", default="val", choices=("train", "val", "test"))
        p.add_argument("--data", help="prepared data folder (default: the one each run was trained on)")
        p.add_argument("--out", default=default_out, help="PNG to write (numbers go to the same name .json)")
        p.add_argument("--device", default="auto")
    p.add_argument("--prompt-len", type=int, default=0, help="gold prompt tokens (default: a quarter of the context)")
    p.add_argument("--length", type=int, default=0, help="positions measured after it (default: the rest)")
    p.add_argument("--sequences", type=int, default=256, help="held-out sequences")
    p = verbs.choices["eval-calibration"]
    p.add_argument("--batches", type=int, default=0, help="limit to this many batches (0: whole split)")
    p.add_argument("--bins", type=int, default=15, help="equal-width confidence bins")
    for name, func, default_out in (
        ("study-calibration", cmd_study_calibration, "docs/studies/calibration"),  # `arlm study calibration`
        ("study-exposure-bias", cmd_study_exposure_bias, "docs/studies/exposure-bias"),
    ):
        p = verb(name, func)
        p.add_argument("--preset", default=DEFAULT_PRESET, help="named preset or YAML path (+ overrides)")
        p.add_argument("--out", default=default_out, help="folder for the report, figure and numbers")
        p.add_argument("--runs-dir", help="where the runs are trained (default: <out>/runs)")
    p.add_argument("--scheduled-sampling", type=float, default=0.25, help="final probability of own tokens")
    p.add_argument("--sequences", type=int, default=256, help="held-out sequences measured")

    p = verb("sweep", cmd_sweep)
    p.add_argument("--preset", default=DEFAULT_PRESET, help="named preset or YAML path")
    p.add_argument(
        "--vary",
        action="append",
        required=True,
        metavar="SECTION.KEY=V1,V2",
        help="values to sweep (repeat for a grid), e.g. model.d_model=64,128,192",
    )
    p.add_argument(
        "--same-tokens",
        action="store_true",
        help="when model.block_size varies, scale the batch so every run sees the same tokens",
    )
    p.add_argument("--out", default="runs/sweep", help="folder for the runs and the figure")

    p = verb("plot", cmd_plot)
    p.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files)")
    p.add_argument("--out", default="loss.png", help="PNG to write")
    p.add_argument("--grad-norms", action="store_true", help="also draw gradient norms (train.grad_norms)")

    p = verb("bench", cmd_bench)
    p.add_argument("what", choices=("train", "decode", "memory"))
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per side (median reported)")
    p.add_argument("--steps", type=int, default=10, help="train: training steps per repeat")
    p.add_argument(
        "--model",
        default="random-smollm2",
        help="decode: model reference (smollm2, a checkpoint, ...) or random-smollm2 (random weights)",
    )
    p.add_argument("--draft", help="decode: a draft model; adds speculative decoding against our greedy")
    p.add_argument("--new-tokens", type=int, default=64, help="decode: tokens generated per sequence")
    p.add_argument("--lengths", help="memory: comma-separated sequence lengths (default 128..8192)")
    p.add_argument("--budget-gb", type=float, default=4.0, help="memory: budget for the largest-batch column")
    p.add_argument("--out", help="memory: PNG to write (default memory.png)")

    verb("presets", cmd_presets)

    from arlm.commands import serve  # a verb of the arlm.commands form: add_arguments(parser), run(args)

    p = verbs.add_parser("serve", help=serve.__doc__, description=serve.__doc__, allow_abbrev=False)
    serve.add_arguments(p)
    p.set_defaults(func=lambda args, overrides: _no_overrides(overrides) or serve.run(args))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `arlm` command; user errors print one line and return 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] in ("eval", "study") and f"{argv[0]}-{argv[1]}" in STUDY_VERBS:
        argv = [f"{argv[0]}-{argv[1]}", *argv[2:]]  # `arlm eval context` -> the eval-context verb
    args, rest = parser.parse_known_args(argv)
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return args.func(args, rest)
    except ArlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
