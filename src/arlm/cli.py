"""The `arlm` command line: the registry of verbs, the parser built from it, dotted config overrides, and user
errors turned into one line on stderr and exit code 2.

A verb is a module of arlm.commands: its docstring's first line is the help line, `add_arguments(parser)` adds
its flags and `run(args) -> int` does the work. A verb that takes config overrides (`--section.key value`) sets
`CONFIG_OVERRIDES = True` and finds them, checked, in `args.overrides`; every other verb refuses them. A verb of
two words (`eval icl`) is a form of a group (`eval`); to add a verb, add its module and one line to VERBS."""

from __future__ import annotations

import argparse
import ast
import errno
import importlib
import importlib.util
import os
import sys
import warnings
from types import ModuleType
from typing import NoReturn, TextIO

from arlm import __version__
from arlm.config import parse_overrides
from arlm.errors import ArlmError

VERBS: dict[str, str] = {  # the spelling on the command line -> the module that implements it
    "presets": "arlm.commands.presets",
    "prepare": "arlm.commands.prepare",
    "train": "arlm.commands.train",
    "demo": "arlm.commands.demo",
    "distill": "arlm.commands.distill",
    "sweep": "arlm.commands.sweep",
    "plot": "arlm.commands.plot",
    "eval perplexity": "arlm.commands.eval_perplexity",
    "eval icl": "arlm.commands.eval_icl",
    "eval context": "arlm.commands.eval_context",
    "eval calibration": "arlm.commands.eval_calibration",
    "eval exposure-bias": "arlm.commands.eval_exposure_bias",
    "study calibration": "arlm.commands.study_calibration",
    "study exposure-bias": "arlm.commands.study_exposure_bias",
    "study sft": "arlm.commands.study_sft",
    "generate": "arlm.commands.generate",
    "chat": "arlm.commands.chat",
    "serve": "arlm.commands.serve",
    "merge": "arlm.commands.merge",
    "export hf": "arlm.commands.export_hf",
    "export gguf": "arlm.commands.export_gguf",
    "bench train": "arlm.commands.bench_train",
    "bench decode": "arlm.commands.bench_decode",
    "bench memory": "arlm.commands.bench_memory",
    "bench gpu": "arlm.commands.bench_gpu",
}
OVERRIDES_HELP = "config overrides: --section.key value (e.g. --train.lr 3e-4 --model.n_layer 6); unknown keys fail"


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser whose refusals are one line (`error: ...`, exit code 2), as every arlm error is, pointing
    at --help instead of printing the usage."""

    def error(self, message: str) -> NoReturn:
        """Print the message on one line and exit with code 2."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def make_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser of every verb. Only the modules of the verbs argv's first word can reach are imported; where it
    names no verb (`arlm --help`) none is, their help lines read from their sources, so the list comes at once."""
    parser = OneLineParser(prog="arlm", description="Autoregressive transformer language models.")
    parser.add_argument("--version", action="version", version=f"arlm {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    groups: dict[str, argparse._SubParsersAction] = {}
    heads = {name.split()[0] for name in VERBS}
    for name, module_name in VERBS.items():
        head, _, form = name.partition(" ")
        where = verbs
        if form:
            if head not in groups:
                forms = ", ".join(n.split()[1] for n in VERBS if n.startswith(head + " "))
                group = verbs.add_parser(head, help=forms, description=f"arlm {head} FORM: one of {forms}.")
                groups[head] = group.add_subparsers(dest="form", metavar="FORM", required=True)
            where = groups[head]
        if not argv or argv[0] not in heads:
            where.add_parser(form or head, help=help_line(module_name))  # never parsed: argv names no verb
            continue
        if argv[0] != head:
            where.add_parser(form or head)  # never parsed: argv names another verb
            continue
        add_verb(where, form or head, importlib.import_module(module_name))
    return parser


def help_line(module_name: str) -> str:
    """The first line of a module's docstring, read from its source without importing it (or its torch)."""
    spec = importlib.util.find_spec(module_name)
    with open(spec.origin, encoding="utf-8") as source:  # type: ignore[union-attr]
        doc = ast.get_docstring(ast.parse(source.read())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def add_verb(where: argparse._SubParsersAction, word: str, module: ModuleType) -> argparse.ArgumentParser:
    """One verb's sub-parser: help from the module's docstring, flags from its add_arguments."""
    doc = (module.__doc__ or "").strip()
    takes = getattr(module, "CONFIG_OVERRIDES", False)
    sub = where.add_parser(
        word, help=doc.splitlines()[0], description=doc, epilog=OVERRIDES_HELP if takes else None, allow_abbrev=False
    )
    module.add_arguments(sub)
    sub.set_defaults(verb_module=module)
    return sub


def config_overrides(module: ModuleType, rest: list[str]) -> list[str]:
    """The one guard: what argparse did not know must be `--section.key value` overrides of a verb that takes
    them."""
    if rest and not getattr(module, "CONFIG_OVERRIDES", False):
        raise ArlmError(f"unexpected argument {rest[0]!r}")
    parse_overrides(rest)  # refuses anything that is not --section.key value
    return rest


_python_show_warning = warnings.showwarning  # how Python shows a warning: kept for everyone else's


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """arlm's own warnings ("arlm: ...") as one line on stderr, `warning: ...`; others as Python shows them."""
    text = str(message)
    if not text.startswith("arlm: "):
        return _python_show_warning(message, category, filename, lineno, file, line)
    print(f"warning: {text.removeprefix('arlm: ')}", file=file or sys.stderr)


# What a full disk says: OSError's own text, also carried by the Rust-backed writers' exceptions (safetensors,
# tokenizers) and by NumPy's tofile (gguf files), which raise without an errno
DISK_FULL = ("No space left on device", "Disk quota exceeded", "Not enough free space")


def storage_line(exc: BaseException) -> str | None:
    """The one line for an error that is the storage refusing us, whichever writer met it (through its causes): a
    full disk, a file size limit, a read-only file system, a permission denied; else None. Checkpoints, exports and
    prepared data are written under a temporary name and renamed once whole, so none of those is left half-written by
    now (reports and figures are written in place)."""
    seen: BaseException | None = exc
    while seen is not None:
        code, text = seen.errno if isinstance(seen, OSError) else None, str(seen)
        name = getattr(seen, "filename", None)
        if code in (errno.ENOSPC, errno.EDQUOT) or any(words in text for words in DISK_FULL):
            where = f" while writing {name}" if name else ""
            return f"the disk is full{where}; free some space or write elsewhere"
        if code == errno.EFBIG or "File too large" in text:
            where = f" ({name})" if name else ""
            return f"a file reached the largest size this process may write{where} (ulimit -f); raise the limit"
        if code == errno.EROFS or "Read-only file system" in text:
            return f"{name or 'the output'} is on a read-only file system; write elsewhere"
        if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
            return f"permission denied{f': {name}' if name else ''}; check its permissions or use another path"
        seen = seen.__cause__ or seen.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `arlm` command; user errors print one line and return 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.showwarning = _show_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(argv)
    try:
        args, rest = parser.parse_known_args(argv)  # (a flag's type may refuse its value: --prompt - of no text)
    except ArlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        args.overrides = config_overrides(args.verb_module, rest)
        return args.verb_module.run(args)
    except ArlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader went away (`| head`): the job stops, as a shell's SIGPIPE ends it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error flushing at exit)
        return 141  # 128 + SIGPIPE: what a shell reports for a program ended by a closed pipe (not success)
    except Exception as exc:
        line = storage_line(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
