"""Our training step against transformers' GPT2LMHeadModel of the same shape, on the same batches.

The shape is DEFAULT_SHAPE with `--model.KEY VALUE` overrides (flavour gpt2 only); --batch rows per step."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable

from arlm.bench.defaults import DEFAULT_BATCH, DEFAULT_SHAPE
from arlm.config import ModelConfig, coerce, parse_overrides
from arlm.errors import ArlmError

CONFIG_OVERRIDES = True  # --model.KEY VALUE only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--batch, --repeats, --steps."""
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="rows per training step")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side (median reported)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per repeat")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the figures."""
    if min(args.batch, args.repeats, args.steps) < 1:
        got = f"{args.batch}, {args.repeats} and {args.steps}"
        raise ArlmError(f"--batch, --repeats and --steps must be >= 1, got {got}")
    bench_train_command(args.overrides, batch=args.batch, repeats=args.repeats, steps=args.steps)
    return 0


def bench_train_command(
    overrides: list[str],
    *,
    batch: int = DEFAULT_BATCH,
    repeats: int = 5,
    steps: int = 10,
    log: Callable[[str], None] = print,
) -> dict:
    """The shape from --model.* overrides, then the benchmark with its figures printed."""
    from arlm.bench.train import run_bench  # lazy: kept out of --help

    return run_bench(model_shape(overrides), batch, steps, repeats, log)


def model_shape(overrides: list[str]) -> ModelConfig:
    """DEFAULT_SHAPE with `--model.KEY VALUE` overrides, validated; any other section is refused."""
    shape = dict(DEFAULT_SHAPE)
    for section, values in parse_overrides(overrides).items():
        if section != "model":
            raise ArlmError("arlm bench train takes --model.KEY VALUE overrides only (and --batch N)")
        shape.update(values)
    config = ModelConfig()
    hints = typing.get_type_hints(ModelConfig)
    for key, value in shape.items():
        if key not in hints:
            raise ArlmError(f"unknown config key model.{key}")
        setattr(config, key, coerce(value, hints[key], f"model.{key}"))
    config.validate()
    if config.flavour != "gpt2":
        raise ArlmError("the reference is GPT2LMHeadModel: keep model.flavour gpt2")
    return config
