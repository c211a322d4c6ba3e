"""How `arlm prepare` scales: peak memory and throughput on generated 10 MB, 100 MB and 1 GB corpora.

    .venv/bin/python benchmarks/prepare_scale.py [--sizes 10 100 1000] [--tmp /tmp] [--library-mb 100]
        [--extra-max-mb 100]

Each corpus is one UTF-8 file written into a temporary folder (deleted afterwards, never committed):
tinyshakespeare's speeches in a seeded order, each with a seeded share of its words swapped for other
words of the play and some numbers, so no two megabytes are alike. `arlm prepare` runs in a subprocess
with default settings (one file is one document, byte-level BPE of 2,048 ids trained on the train split);
up to --extra-max-mb also given the tokenizer it trained (`--data.tokenizer DIR`: no training, only
encoding) and with `--data.doc_separator blank` (a document per speech: the per-document cost). Peak RSS
comes from wait4's rusage of each subprocess. For comparison the `tokenizers` library's own
`encode_batch` (its default threads) encodes the first `--library-mb` MB of the same file with the same
tokenizer, in batches of 1 MB of whole lines, timing only the calls. Since other jobs may share the
cores, a second table alternates the two on one corpus (--compare-mb) and reports medians. Prints
markdown tables.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arlm.data.sources import find_corpus

MB = 1_000_000


def write_corpus(path: Path, size: int, seed: int = 0) -> None:
    """A file of `size` bytes (to within a thousand speeches) of varied Shakespeare-like text."""
    speeches = [s for s in find_corpus("tinyshakespeare").read_text(encoding="utf-8").split("\n\n") if s.strip()]
    words = sorted(set(re.findall(r"[A-Za-z']+", " ".join(speeches))))
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            text = "".join(_varied(rng.choice(speeches), words, rng) for _ in range(1000))
            f.write(text)
            written += len(text.encode("utf-8"))


def _varied(speech: str, words: list[str], rng: random.Random) -> str:
    """A speech with a random share (up to 30%) of its words swapped, sometimes ending in a number."""
    share = rng.random() * 0.3
    swapped = re.sub(r"[A-Za-z']+", lambda m: rng.choice(words) if rng.random() < share else m.group(), speech)
    return swapped + (f" {rng.randrange(10**6)}\n\n" if rng.random() < 0.2 else "\n\n")


def run_prepare(corpus: Path, out: Path, *extra: str) -> dict:
    """Wall seconds, peak RSS (bytes), tokens and encode-stage seconds of `arlm prepare` in a subprocess."""
    cmd = [sys.executable, "-m", "arlm", "prepare", "--out", str(out), "--data.source", str(corpus), *extra]
    start = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        log.seek(0)
        text = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"arlm prepare failed on {corpus}:\n{text}")
    print(text, file=sys.stderr)
    encoded = re.search(r"encoded ([\d,]+) tokens in ([\d.]+) s", text)
    tokens = int(encoded.group(1).replace(",", ""))
    return {"seconds": seconds, "rss": usage.ru_maxrss * 1024, "tokens": tokens, "encode_s": float(encoded.group(2))}


def library_encode(corpus: Path, tokenizer_json: Path, limit: int) -> float:
    """Tokens/s of tokenizers' own encode_batch over the first `limit` bytes of the file, 1 MB of lines a call."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(tokenizer_json))
    seconds, tokens, read = 0.0, 0, 0
    with open(corpus, encoding="utf-8") as f:
        while read < limit:
            lines = f.readlines(MB)
            if not lines:
                break
            read += sum(len(line.encode("utf-8")) for line in lines)
            start = time.perf_counter()
            encodings = backend.encode_batch(lines, add_special_tokens=False)
            seconds += time.perf_counter() - start
            tokens += sum(len(e.ids) for e in encodings)
    return tokens / seconds


def measure(work: Path, size_mb: int, library_mb: int, extra_max_mb: int) -> dict:
    """Generate one corpus; prepare it (training the tokenizer; up to extra_max_mb also given that
    tokenizer, and cut into documents at blank lines); encode it with the library."""
    corpus = work / f"corpus-{size_mb}mb.txt"
    write_corpus(corpus, size_mb * MB)
    tokenizer = work / "trained" / "tokenizer"
    runs = {"BPE trained": run_prepare(corpus, work / "trained")}
    if size_mb <= extra_max_mb:
        runs["tokenizer given"] = run_prepare(corpus, work / "given", "--data.tokenizer", str(tokenizer))
        runs["documents at blank lines"] = run_prepare(corpus, work / "blank", "--data.doc_separator", "blank")
    library = library_encode(corpus, tokenizer / "tokenizer.json", library_mb * MB)
    row = {"bytes": corpus.stat().st_size, "runs": runs, "library": library, "library_mb": min(library_mb, size_mb)}
    corpus.unlink()
    for folder in ("trained", "given", "blank"):
        shutil.rmtree(work / folder, ignore_errors=True)
    return row


TABLE_HEAD = (
    "| corpus | run | wall | MB/s | peak RSS | tokens | tokens/s (whole run) | encode stage tokens/s |\n"
    "|---|---|---|---|---|---|---|---|"
)


def table_rows(row: dict) -> str:
    """The markdown table rows of one corpus, for docs/perf.md."""
    size = f"{row['bytes'] / MB:,.0f} MB"
    lines = []
    for label, r in row["runs"].items():
        lines.append(
            f"| {size} | {label} | {r['seconds']:,.1f} s | {row['bytes'] / MB / r['seconds']:.2f} | "
            f"{r['rss'] / 2**20:,.0f} MiB | {r['tokens']:,} | {r['tokens'] / r['seconds']:,.0f} | "
            f"{r['tokens'] / r['encode_s']:,.0f} |"
        )
    library = f"tokenizers `encode_batch`, first {row['library_mb']} MB"
    lines.append(f"| {size} | {library} | | | | | | {row['library']:,.0f} |")
    return "\n".join(lines)


def compare(work: Path, size_mb: int, repeats: int) -> str:
    """prepare given a tokenizer vs the library's encode_batch on one corpus, alternating, medians."""
    corpus = work / f"corpus-{size_mb}mb.txt"
    write_corpus(corpus, size_mb * MB)
    run_prepare(corpus, work / "trained")
    tokenizer = work / "trained" / "tokenizer"
    whole, stage, library = [], [], []
    for _ in range(repeats):
        given = run_prepare(corpus, work / "given", "--data.tokenizer", str(tokenizer))
        shutil.rmtree(work / "given")
        whole.append(given["tokens"] / given["seconds"])
        stage.append(given["tokens"] / given["encode_s"])
        library.append(library_encode(corpus, tokenizer / "tokenizer.json", size_mb * MB))
    corpus.unlink()
    shutil.rmtree(work / "trained")
    lib, stage_m, whole_m = statistics.median(library), statistics.median(stage), statistics.median(whole)
    return "\n".join(
        [
            f"| {size_mb} MB, tokenizer given, {repeats} alternating repeats (medians) | tokens/s | ratio to library |",
            "|---|---|---|",
            f"| tokenizers `encode_batch` (1 MB of lines a call) | {lib:,.0f} | 1.00 |",
            f"| `arlm prepare`, encode stage | {stage_m:,.0f} | {stage_m / lib:.2f} |",
            f"| `arlm prepare`, whole run | {whole_m:,.0f} | {whole_m / lib:.2f} |",
        ]
    )


def main() -> None:
    """Measure each size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000], help="corpus sizes in MB")
    parser.add_argument("--tmp", default=None, help="folder for the corpora and outputs (default: system temp)")
    parser.add_argument("--library-mb", type=int, default=100, help="MB of each corpus the library encodes")
    parser.add_argument("--extra-max-mb", type=int, default=100, help="largest corpus for the extra runs")
    parser.add_argument("--compare-mb", type=int, default=10, help="corpus for the alternating comparison (0: none)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the alternating comparison")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="arlm-prepare-scale-", dir=args.tmp))
    try:
        if args.sizes:
            print(TABLE_HEAD, flush=True)
        for size in args.sizes:  # each row as soon as it is measured
            print(table_rows(measure(work, size, args.library_mb, args.extra_max_mb)), flush=True)
        if args.compare_mb:
            print("\n" + compare(work, args.compare_mb, args.repeats), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
