"""Checks of command-line values that several verbs share: one wording for one mistake; and what a result file
records of the model it measured."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from arlm.errors import ArlmError
from arlm.interop.dtypes import DTYPE_HELP, LOAD_DTYPES

if TYPE_CHECKING:
    from arlm.interop.checkpoint import LoadedModel

MODEL_HELP = "checkpoint, run folder, HF folder, GGUF file or 'smollm2'"


def add_model_argument(parser: argparse.ArgumentParser, help: str = MODEL_HELP, default: str | None = None) -> None:
    """MODEL as an argument or as --model (the same): generate, chat, serve, eval perplexity and eval icl take both
    spellings; the other verbs name their inputs in their own arguments."""
    parser.add_argument("model", nargs="?", help=help + (f" (default {default})" if default else ""))
    parser.add_argument("--model", dest="model_flag", metavar="MODEL", help="the same, as a flag")
    parser.set_defaults(model_default=default)


def provenance(loaded: LoadedModel) -> dict[str, str]:
    """What a result file records of a model it measured: the file or folder read, the dtype and device it ran at."""
    return {"source": str(loaded.source), "dtype": loaded.dtype, "device": str(loaded.model.norm.weight.device)}


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device, the same on every verb that loads a model."""
    parser.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda or cuda:N (default auto: a CUDA GPU where there is one and the dtype runs there, else the CPU)",
    )


def add_resume_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """--resume [CHECKPOINT]: "latest" when given alone, the verbs that train."""
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT", help=help)


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """--dtype, the same on every verb that loads a model (default auto: a GGUF file at its own precision)."""
    parser.add_argument("--dtype", default="auto", choices=LOAD_DTYPES, help=DTYPE_HELP)


DRAFT_HELP = (
    "draft model for --strategy speculative, self:L (the model's own first L layers) or self:DTYPE (its own weights "
    "at DTYPE, e.g. self:int4)"
)
DRAFT_DTYPE_HELP = "a --draft model's weights (default: the target's dtype; auto: the precision its GGUF file stores)"


def add_draft_arguments(parser: argparse.ArgumentParser) -> None:
    """--draft and --draft-dtype, the same on every verb that decodes speculatively with a draft."""
    parser.add_argument("--draft", help=DRAFT_HELP)
    parser.add_argument("--draft-dtype", choices=LOAD_DTYPES, help=DRAFT_DTYPE_HELP)


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    """--json [SCHEMA]: the output kept to JSON (greedy or sampling), as OpenAI's response_format."""
    parser.add_argument(
        "--json",
        nargs="?",
        const="object",
        metavar="SCHEMA",
        help="keep the output to JSON: alone, any JSON object; with a JSON schema (a file, or its text), that schema",
    )


def typed_text(text: str) -> str:
    """Text from the command line or a terminal, its bytes that are not UTF-8 (Python's surrogate escapes) read as
    U+FFFD, as the corpus reader reads them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def prompt_text(text: str) -> str:
    """--prompt's text: "-" reads standard input (a pipe's text, its last line break dropped), refused when empty (a
    `git diff` of a clean tree: a continuation of nothing is not what was asked)."""
    if text == "-":
        read = sys.stdin.read().removesuffix("\n")
        if not read:
            raise ArlmError("--prompt -: standard input was empty; pipe some text, or --prompt '' to start from none")
        return typed_text(read)
    return typed_text(text)


def json_schema_of(spec: str | None) -> dict | None:
    """--json's schema: None without the flag, any object for "object", else the schema a file or the text holds."""
    if spec is None:
        return None
    if spec == "object":
        return {"type": "object"}
    text, path = spec, Path(spec)
    if not spec.lstrip().startswith("{"):  # a file, where one is there (else the text, for json.loads to judge)
        if path.is_dir():
            raise ArlmError(f"--json {spec!r} is a folder; give a JSON schema file or its text")
        if path.is_file():
            text = path.read_text(encoding="utf-8")
        elif spec.endswith(".json"):
            raise ArlmError(f"--json {spec!r}: no such file; give a JSON schema file or its text")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise ArlmError(f"--json {spec!r}: not a JSON schema file or text ({e})") from None
    if not isinstance(schema, dict):
        raise ArlmError(f"--json {spec!r}: a JSON schema is an object, got {type(schema).__name__}")
    return schema


def model_of(args: argparse.Namespace) -> str:
    """The model given as an argument or as --model (the verb's default where neither is); refused when the two
    name different models, or when neither names one and the verb has no default."""
    positional, flag = args.model, args.model_flag
    if positional and flag and positional != flag:
        raise ArlmError(f"two models given: {positional!r} and --model {flag!r}; give one")
    model = positional or flag or args.model_default
    if not model:
        raise ArlmError("no model given: name one as an argument or with --model")
    return model


def check_batches(batches: int) -> None:
    """Refuse a negative --batches (0 keeps its documented meaning: the whole split)."""
    if batches < 0:
        raise ArlmError(f"--batches {batches}: give a number of batches of at least 1, or 0 for the whole split")


def refuse_unused(given: dict[str, bool], goes: str) -> None:
    """Refuse the options of `given` ({flag: was it set}) that are set: they only go `goes` ("with --file")."""
    unused = [flag for flag, is_set in given.items() if is_set]
    if unused:
        raise ArlmError(f"{', '.join(unused)} {'goes' if len(unused) == 1 else 'go'} {goes}")
