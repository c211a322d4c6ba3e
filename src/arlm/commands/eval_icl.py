"""Zero/one/few-shot accuracy on in-context learning tasks (table, JSON and PNG); --lm-eval runs lm-eval."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from arlm.commands.options import (
    add_device_argument,
    add_dtype_argument,
    add_model_argument,
    model_of,
    provenance,
    refuse_unused,
)
from arlm.errors import ArlmError, check_creatable
from arlm.evaluation.defaults import DEFAULT_SHOTS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, --tasks, --shots, --scoring, --num-beams, --limit, --out, --lm-eval, --device, --dtype."""
    add_model_argument(parser)
    parser.add_argument("--tasks", help="comma-separated built-in tasks or paths to task JSONL (default: all built-in)")
    parser.add_argument(
        "--shots",
        type=lambda v: [int(k) for k in v.split(",")],
        default=list(DEFAULT_SHOTS),
        help="numbers of demonstrations (default 0,1,2,4,8)",
    )
    parser.add_argument("--scoring", choices=("generate", "loglikelihood"), help="default: generate")
    parser.add_argument("--num-beams", type=int, default=1, help="generate scoring: beam search when > 1")
    parser.add_argument("--limit", type=int, default=None, help="at most this many items per task")
    parser.add_argument("--out", help="folder for icl.json and icl.png (default: icl)")
    parser.add_argument("--lm-eval", action="store_true", help="run lm-evaluation-harness on the same tasks instead")
    add_device_argument(parser)
    add_dtype_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Our own ICL evaluation, or lm-evaluation-harness on the same items (one table per number of shots)."""
    tasks = args.tasks.split(",") if args.tasks else None
    if args.lm_eval:
        ours = {
            "--scoring": args.scoring is not None,
            "--num-beams": args.num_beams != 1,
            "--out": args.out is not None,
        }
        refuse_unused(
            ours, "with arlm's own evaluation; lm-eval prints its tables and writes no files (drop --lm-eval)"
        )
        from arlm.interop.loading import pick_device  # lazy: kept out of --help

        device = str(pick_device(args.device, args.dtype))
        lm_eval_command(model_of(args), tasks, args.shots, args.limit, device=device, dtype=args.dtype)
        return 0
    icl_command(
        model_of(args),
        tasks=tasks,
        shots=args.shots,
        scoring=args.scoring or "generate",
        limit=args.limit,
        out_dir=args.out or "icl",
        num_beams=args.num_beams,
        device=args.device,
        dtype=args.dtype,
    )
    return 0


def lm_eval_command(
    model_ref: str,
    tasks: Sequence[str] | None,
    shots: Sequence[int],
    limit: int | None,
    *,
    device: str,
    dtype: str = "auto",
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run lm-eval on the built-in tasks (or task files) once per number of shots, the model at `dtype` (auto: as
    arlm's own evaluation loads it), printing lm-eval's table."""
    from arlm.evaluation.lm_eval_adapter import make_table, run_lm_eval  # lazy: optional dependency (lm_eval)

    results = []
    for k in shots:
        names = ",".join(tasks) if tasks else "all"
        results.append(run_lm_eval(model_ref, names, k, limit, device=device, dtype=dtype))
        log(make_table(results[-1]))
    return results


def icl_command(
    model_ref: str,
    *,
    tasks: Sequence[str] | None = None,
    shots: Sequence[int] = DEFAULT_SHOTS,
    scoring: str = "generate",
    limit: int | None = None,
    out_dir: str | Path = "icl",
    num_beams: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    log: Callable[[str], None] = print,
) -> dict:
    """Few-shot accuracy of a model on ICL tasks: prints a table, writes icl.json and icl.png into out_dir."""
    from arlm.commands.plots import plot_icl  # lazy: kept out of --help
    from arlm.evaluation.icl import format_table, run_icl  # lazy: kept out of --help
    from arlm.interop.loading import load_model, pick_device  # lazy: kept out of --help
    from arlm.model.inference import optimize_for_decoding  # lazy: kept out of --help

    if num_beams != 1 and scoring != "generate":
        raise ArlmError(
            f"--num-beams goes with --scoring generate; {scoring} scoring compares the choices' likelihoods"
        )
    check_creatable(out_dir, folder=True)
    loaded = load_model(model_ref, device=pick_device(device, dtype), dtype=dtype)
    optimize_for_decoding(loaded.model)
    results = run_icl(loaded.model, loaded.tokenizer, tasks, shots, scoring, limit, num_beams=num_beams, log=log)
    results["model"] = str(model_ref)
    results["measured"] = provenance(loaded)
    log(f"accuracy [95% Wilson interval], {scoring} scoring, {results['seconds']:.0f}s")
    log(format_table(results))
    if scoring == "loglikelihood":
        log("acc_norm (log-likelihood per UTF-8 byte of the choice):")
        log(format_table(results, "acc_norm"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "icl.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    plot_icl(results, out / "icl.png", title=f"{Path(str(model_ref)).name}: accuracy vs shots ({scoring})")
    log(f"wrote {out / 'icl.json'} and {out / 'icl.png'}")
    return results
