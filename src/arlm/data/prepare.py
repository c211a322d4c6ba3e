"""`arlm prepare`: corpus -> normalize -> split -> tokenizer -> token shards + corpus report, streaming.

The corpus is read in blocks, normalized and kept in a scratch text store (a few numbers a document in
memory), split by document lengths and digests, and tokenized in batches of pieces written to the shards
as they come, so memory does not grow with the corpus's text.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from arlm.config import DataConfig
from arlm.data.batches import BatchSampler
from arlm.data.chat_batches import ChatSampler, open_chat_split, prepare_chat
from arlm.data.corpus import BUILTIN_SOURCES, check_source_apart, is_glob, iter_chunks, source_paths
from arlm.data.normalize import Normalizer, NormalizeReport
from arlm.data.pieces import Chunk
from arlm.data.report import corpus_report, format_report
from arlm.data.shards import ShardWriter, read_shard
from arlm.data.sources import is_named_corpus
from arlm.data.split import SPLITS, SplitPart, plan_splits
from arlm.data.textstore import TextStore
from arlm.data.tokenizers import Tokenizer, load_tokenizer, train_tokenizer
from arlm.errors import ArlmError
from arlm.temporaries import holding, in_use, remove_stale, temporary_for

META_VERSION = 1
PREPARE_KEYS = (
    "source",
    "text_field",
    "encoding_errors",
    "unicode",
    "lowercase",
    "strip_control",
    "collapse_whitespace",
    "split",
    "val_fraction",
    "test_fraction",
    "seed",
    "tokenizer",
    "vocab_size",
)
OPTIONAL_KEYS = ("doc_separator", "doc_max_chars", "format")  # recorded only when set: older data still matches
PIECE_CHARS = 1 << 12  # documents up to this many characters reach the tokenizer whole, longer ones in pieces
# (tokenizers encodes 4k-character texts about 1.5x faster than 64k ones, and BPE training does not care)
BATCH_CHARS = 1 << 20  # characters per encode_batch call


def prepare_settings(config: DataConfig) -> dict:
    """The settings that change the prepared shards (not how batches are drawn from them)."""
    settings = {k: getattr(config, k) for k in PREPARE_KEYS}
    defaults = DataConfig()
    settings.update({k: getattr(config, k) for k in OPTIONAL_KEYS if getattr(config, k) != getattr(defaults, k)})
    return settings


def data_fingerprint(config: DataConfig) -> str:
    """Hash of the settings that change the prepared shards (not how batches are drawn from them)."""
    settings = prepare_settings(config)
    if config.source not in ("builtin", "builtin:topics", "builtin:docstrings") and not is_named_corpus(config.source):
        glob = is_glob(config.source)  # a pattern as written (as fingerprints always held it)
        settings["source"] = config.source if glob else str(Path(config.source).resolve())  # (also once it is gone)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def source_stamps(config: DataConfig) -> dict[str, list[int]] | None:
    """[size, modification time in ns] of each file of data.source, to notice a source changed since it was
    prepared; None for built-in and named corpora (fixed texts) and for a source not on disk."""
    if config.source in BUILTIN_SOURCES or is_named_corpus(config.source):
        return None
    try:
        stats = {str(path.resolve()): path.stat() for path in source_paths(config.source)}
    except (ArlmError, OSError):
        return None
    return {name: [st.st_size, st.st_mtime_ns] for name, st in stats.items()}


def changed_source(old: dict | None, new: dict | None) -> str:
    """The first source file added, removed or changed between two source_stamps; "" when none (or unknown)."""
    if old is None or new is None:
        return ""
    return next((name for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)), "")


def _reuse(
    directory: Path, meta: dict, fingerprint: str, changed: str, keep: bool, log: Callable[[str], None]
) -> PreparedData | None:
    """The prepared data in directory when it matches the settings and nothing they were prepared from `changed`
    since (or keep), else None."""
    if meta.get("fingerprint") != fingerprint:
        return None
    if changed and not keep:
        return None
    if changed:
        log(f"note: {changed} changed since {directory} was prepared; resuming on the data prepared then")
    if meta.get("format") == "chat" and "duplicates_dropped" not in meta:  # (a repeat may be in two splits)
        log(f"note: {directory} was prepared before repeated conversations were dropped; prepare --overwrite redoes it")
    log(f"using prepared data in {directory}")
    return load_prepared(directory)


def _changed_since(
    config: DataConfig, meta: dict, fingerprint: str, stamps: dict | None, resolve: Callable[[str], Tokenizer]
) -> str:
    """What data prepared with these settings were made from and is no longer the same: a source file, or the
    tokenizer given by path (its ids compared, not its name); "" when nothing (or unknown, or other settings)."""
    if meta.get("fingerprint") != fingerprint:
        return ""
    changed = changed_source(meta.get("sources"), stamps)
    if changed or config.tokenizer in ("char", "word", "bpe") or not Path(config.tokenizer).exists():
        return changed
    try:
        same = resolve(config.tokenizer).fingerprint() == meta.get("tokenizer_fingerprint")
    except ArlmError:
        return ""  # (preparing anew says why it cannot be read)
    return "" if same else f"the tokenizer {config.tokenizer}"


def _why_not_reused(directory: Path, meta: dict, fingerprint: str, changed: str, flag: str) -> str:
    """The one-line refusal to replace prepared data: other settings, or a source changed since."""
    if meta.get("fingerprint") == fingerprint:
        return (
            f"{directory} holds data prepared from an earlier version of the source ({changed} changed since); "
            f"pass --overwrite to prepare it again or choose another {flag}"
        )
    return (
        f"{directory} holds data prepared with other settings; pass --overwrite to replace it or choose another {flag}"
    )


@dataclass
class PreparedData:
    """A prepared corpus on disk: the tokenizer, per-split shards and document offsets, and the report."""

    directory: Path
    tokenizer: Tokenizer
    meta: dict

    def tokens(self, split: str) -> np.ndarray:
        """Token ids of a split (memory-mapped)."""
        return read_shard(self.directory / f"{split}.bin")

    def doc_starts(self, split: str) -> np.ndarray:
        """Start offset of each document in the split's shard, then the shard length."""
        return np.load(self.directory / f"{split}.docs.npy", allow_pickle=False)

    def has_split(self, split: str) -> bool:
        """Whether the split holds any tokens."""
        return self.meta["splits"][split]["tokens"] > 0

    def sampler(self, split: str, config: DataConfig, block_size: int, seed: int) -> BatchSampler | ChatSampler:
        """Deterministic batches for a split, refusing one too small for a single batch."""
        if self.meta.get("format") == "chat":
            return open_chat_split(self.directory, split, config, block_size, seed, self.tokenizer.pad_id)
        tokens = self.tokens(split)
        check_split_size(split, len(tokens), block_size, config.mode)
        tok = self.tokenizer
        return BatchSampler(
            tokens,
            self.doc_starts(split),
            block_size=block_size,
            seed=seed,
            mode=config.mode,
            sampling=config.sampling,
            pad_to=config.pad_to,
            document_mask=config.document_mask,
            eos_id=tok.eos_id,
            bos_id=tok.bos_id,
            pad_id=tok.pad_id,
        )


def check_split_size(split: str, tokens: int, block_size: int, mode: str) -> None:
    """Refuse a split too small to train or evaluate on: shorter than one block (packed) or empty (padded)."""
    need = block_size + 1
    if mode == "packed" and tokens < need:
        raise ArlmError(
            f"the {split} split holds {tokens} tokens, shorter than one block ({need} with "
            f"model.block_size {block_size}); add text or lower model.block_size"
        )
    if tokens == 0:
        raise ArlmError(f"the {split} split holds no tokens; add text")


def prepare(
    config: DataConfig,
    directory: str | Path,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    block_size: int = 1,
    resolve_tokenizer: Callable[[str], Tokenizer] = load_tokenizer,
    keep: bool = False,
    flag: str = "--data.prepared_dir",
) -> PreparedData:
    """Prepare a corpus into `directory`, or reuse it when it was prepared with the same settings from the same
    source files (size and modification time; with keep, even from changed ones, as a resumed run needs); refuse
    a corpus whose train split (or a non-empty val/test split) is too small for one block of block_size. A
    data.tokenizer that is not trained here (char, word, bpe) is loaded by resolve_tokenizer. overwrite replaces
    prepared data only (never another folder); `flag` is the option that named the folder, for the messages."""
    directory, path = Path(directory), _target(directory, flag)
    check_source_apart(config.source, directory, flag)
    _refuse_inside_prepared(path, directory, flag)
    fingerprint, stamps = data_fingerprint(config), source_stamps(config)
    for stale in remove_stale(path):
        log(f"removed {stale}, left by a prepare that was stopped before it finished")
    meta = _prepared_meta(path)
    if meta is not None:
        changed = _changed_since(config, meta, fingerprint, stamps, resolve_tokenizer)
        reused = _reuse(directory, meta, fingerprint, changed, keep, log)
        if reused is not None:
            return reused
        if keep:  # (the run's own settings: the folder was prepared again since, by another run or prepare)
            raise ArlmError(
                f"{directory} no longer holds the data this run trained on: it was prepared again since, with other "
                f"settings (from {meta.get('data', {}).get('source', '?')}); resume with {flag} NEW_FOLDER to prepare "
                "the run's data there again from its source (other data, if the source changed since)"
            )
        if not overwrite:
            raise ArlmError(_why_not_reused(directory, meta, fingerprint, changed, flag))
        _refuse_replacing(path, directory, flag)
    elif path.exists() and any(path.iterdir()):
        raise ArlmError(
            f"{directory} holds files but no prepared data (--overwrite replaces only that); choose another {flag}"
        )
    tmp, made = _new_temporary(path)
    try:
        with holding(tmp):  # no other prepare takes it for one a killed process left
            report_text = _prepare_into(config, tmp, (fingerprint, stamps), log, block_size, resolve_tokenizer)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # a failed prepare leaves no empty folders behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    if meta is None and path.exists() and any(path.iterdir()):  # another prepare finished into it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArlmError(f"{directory} was prepared by another process meanwhile; its data is kept (this run's is not)")
    if path.exists():
        _refuse_replacing(path, directory, flag, tmp)  # (a run may have started on it meanwhile, or files come)
        shutil.rmtree(path)
    os.replace(tmp, path)
    log(report_text)
    return load_prepared(directory)


def _refuse_replacing(path: Path, directory: str | Path, flag: str, tmp: Path | None = None) -> None:
    """Refuse to replace prepared data a run trains on, or that hold other files (_refuse_in_use, _refuse_foreign)."""
    _refuse_in_use(path, directory, flag, tmp)
    _refuse_foreign(path, directory, flag, tmp)


def _refuse_in_use(path: Path, directory: str | Path, flag: str, tmp: Path | None = None) -> None:
    """Refuse to replace prepared data that a training run is reading (it holds them: temporaries.holding); the
    new data's temporary, if any, is removed."""
    if in_use(path):
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise ArlmError(
            f"{directory} is the data an arlm train is training on now; wait for it to end, or prepare into another "
            f"{flag}"
        )


def _refuse_foreign(path: Path, directory: str | Path, flag: str, tmp: Path | None = None) -> None:
    """Refuse to replace prepared data that holds files prepare does not write (--overwrite deletes only its own);
    the new data's temporary, if any, is removed."""
    foreign = sorted(entry.name for entry in path.iterdir() if not _OWN.fullmatch(entry.name))
    if foreign:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ArlmError(
            f"{directory} holds prepared data and other files ({shown}); --overwrite replaces only prepared data: "
            f"move those files out, or choose another {flag}"
        )


def _refuse_inside_prepared(path: Path, directory: str | Path, flag: str) -> None:
    """Refuse prepared data put inside other prepared data (an --overwrite of that would delete it)."""
    for above in path.parents:
        if _prepared_meta(above) is not None:
            raise ArlmError(f"{directory} is inside prepared data ({above}); choose a {flag} outside it")


def _new_temporary(path: Path) -> tuple[Path, list[Path]]:
    """Make this process's temporary folder for `path`; returns it and the folders made above it, deepest first."""
    tmp = temporary_for(path)
    shutil.rmtree(tmp, ignore_errors=True)  # this pid's, left by an earlier process of the same id
    made = [folder for folder in tmp.parents if not folder.exists()]
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise ArlmError(f"cannot create {tmp} ({exc.strerror}); give another folder for the prepared data") from None
    return tmp, made


_OWN = re.compile(r"meta\.json|report\.(json|txt)|tokenizer|(train|val|test)(\.bin|\.(docs|targets|lines)\.npy)")


def _target(directory: str | Path, flag: str) -> Path:
    """The folder for prepared data, made absolute; never the current folder ('.'), which a replace would pull
    from under the shell."""
    path = Path(directory).resolve()
    if path.exists() and not path.is_dir():
        raise ArlmError(f"{directory} is a file, not a folder; choose another {flag}")
    if path == Path.cwd() or path in Path.cwd().parents:  # replacing it would leave the shell in a deleted folder
        raise ArlmError(f"{directory} is or holds the current folder; choose another {flag} (e.g. data)")
    return path


def check_outside_prepared(folder: str | Path, flag: str) -> None:
    """Refuse an output folder that is, or is inside, a folder of prepared data (a run's data/): its files would be
    mixed into that data."""
    for above in (path := Path(folder).resolve(), *path.parents):
        if _prepared_meta(above) is not None:
            raise ArlmError(f"{flag} {folder} is inside prepared data ({above}); choose a {flag} outside it")


def _prepared_meta(directory: Path) -> dict | None:
    """The meta.json of a folder holding arlm's prepared data, else None (no such file, or not arlm's)."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and "fingerprint" in meta and "splits" in meta else None


def _prepare_into(
    config: DataConfig,
    out: Path,
    stamp: tuple[str, dict | None],
    log: Callable[[str], None],
    block_size: int,
    resolve: Callable[[str], Tokenizer],
) -> str:
    if config.format == "chat":
        tokenizer, counts, histograms, norm, dropped = prepare_chat(config, out, resolve, block_size)
        log(norm.describe())
        report, split_mode = corpus_report(tokenizer, counts, histograms), "conversations"
        report.update(normalize=asdict(norm), split_mode=split_mode, duplicates_dropped=dropped)
    else:
        tokenizer, counts, report = _prepare_text(config, out, log, block_size, resolve)
        split_mode = report["split_mode"]
    meta = {
        "version": META_VERSION,
        "fingerprint": stamp[0],
        **({"sources": stamp[1]} if stamp[1] is not None else {}),
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "data": prepare_settings(config),
        "splits": counts,
        "split_mode": split_mode,
        **({"format": "chat", "duplicates_dropped": report["duplicates_dropped"]} if config.format == "chat" else {}),
    }
    text = format_report(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.txt").write_text(text + "\n", encoding="utf-8")
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return text


def _prepare_text(
    config: DataConfig, out: Path, log: Callable[[str], None], block_size: int, resolve: Callable[[str], Tokenizer]
) -> tuple[Tokenizer, dict[str, dict], dict]:
    """Plain text: read and normalize, split, train or load the tokenizer, write the shards."""
    store = TextStore(out / "text.tmp")
    try:
        clock = time.perf_counter()
        norm = _store_documents(config, store)
        log(f"read {len(store):,} documents in {time.perf_counter() - clock:.1f} s; {norm.describe()}")
        plan = plan_splits(
            store.chars, store.digests, config.val_fraction, config.test_fraction, config.seed, config.split
        )
        log(f"split: {plan.mode}; " + ", ".join(f"{n} {len(p.docs)} docs" for n, p in plan.items()))
        clock = time.perf_counter()
        train_texts = (chunk.text for chunk in _split_pieces(store, plan.parts["train"], PIECE_CHARS))
        tokenizer = train_tokenizer(config.tokenizer, train_texts, config.vocab_size, resolve)
        tokenizer.save(out / "tokenizer")
        log(f"tokenizer: {tokenizer.kind}, {tokenizer.vocab_size:,} ids, in {time.perf_counter() - clock:.1f} s")
        clock = time.perf_counter()
        written = {name: _write_split(out, name, store, part, tokenizer) for name, part in plan.items()}
        tokens, seconds = sum(c["tokens"] for c, _ in written.values()), time.perf_counter() - clock
        log(f"encoded {tokens:,} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    finally:
        store.close()
    counts = {name: c for name, (c, _) in written.items()}
    for name, c in counts.items():
        if name == "train" or c["tokens"]:
            check_split_size(name, c["tokens"], block_size, config.mode)
    report = corpus_report(tokenizer, counts, {name: hist for name, (_, hist) in written.items()})
    report.update(normalize=asdict(norm), split_mode=plan.mode, duplicates_dropped=plan.duplicates_dropped)
    return tokenizer, counts, report


def _store_documents(config: DataConfig, store: TextStore) -> NormalizeReport:
    """Read the corpus in pieces, normalize each and keep it in the store; refuse one left empty."""
    normalizer = Normalizer(config)
    chunks = iter_chunks(
        config.source,
        text_field=config.text_field,
        encoding_errors=config.encoding_errors,
        separator=config.doc_separator,
        max_chars=config.doc_max_chars,
    )
    for chunk in chunks:
        store.write(normalizer(chunk.text))
        if chunk.ends:
            store.end_document()
    if not len(store):
        raise ArlmError(f"corpus {config.source!r} is empty after normalization")
    return normalizer.report


def _split_pieces(store: TextStore, part: SplitPart, piece_chars: int) -> Iterator[Chunk]:
    """A split's text in pieces of at most piece_chars (cut where tokenizers see a boundary anyway)."""
    for doc, start, end in part.segments(store.chars):
        yield from store.pieces(doc, start, end, piece_chars)


def _batches(chunks: Iterable[Chunk], batch_chars: int) -> Iterator[list[Chunk]]:
    batch, size = [], 0
    for chunk in chunks:
        batch.append(chunk)
        size += len(chunk.text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _write_split(
    out: Path, name: str, store: TextStore, part: SplitPart, tokenizer: Tokenizer
) -> tuple[dict, np.ndarray]:
    """Tokenize a split's documents (each followed by EOS) into a shard, in batches, plus document start
    offsets; returns the counts and the (vocab,) token histogram."""
    vocab = tokenizer.vocab_size
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    starts = array("q", [0])
    chars = nbytes = 0
    hist = np.zeros(vocab, dtype=np.int64)
    piece_chars = PIECE_CHARS if tokenizer.encodes_pieces_exactly() else sys.maxsize  # else documents whole
    with ShardWriter(out / f"{name}.bin", vocab) as writer:
        for batch in _batches(_split_pieces(store, part, piece_chars), BATCH_CHARS):
            parts, size = [], 0
            for chunk, ids in zip(batch, tokenizer.encode_batch([c.text for c in batch])):
                parts.append(ids)
                size += len(ids)
                if chunk.ends:
                    parts.append(eos)
                    size += len(eos)
                    starts.append(writer.count + size)
                chars += len(chunk.text)
                nbytes += len(chunk.text.encode("utf-8"))
            ids_array = np.fromiter(itertools.chain.from_iterable(parts), dtype=writer.dtype, count=size)
            hist += np.bincount(ids_array, minlength=vocab)[:vocab]
            writer.append(ids_array)
        count = writer.count
    np.save(out / f"{name}.docs.npy", np.frombuffer(starts, dtype=np.int64), allow_pickle=False)
    return {"documents": len(starts) - 1, "characters": chars, "bytes": nbytes, "tokens": count}, hist


def load_prepared(directory: str | Path) -> PreparedData:
    """Open a prepared corpus; refuse a missing or partial one clearly."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not directory.exists():
        raise ArlmError(f"{directory} does not exist (a prepared corpus is a folder: run arlm prepare first)")
    if not meta_path.exists():
        raise ArlmError(f"{directory} is not a prepared corpus (no meta.json); run arlm prepare first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("version") != META_VERSION:
        raise ArlmError(f"{directory} was prepared by another arlm version; run arlm prepare again")
    tokenizer = load_tokenizer(directory / "tokenizer")
    if tokenizer.fingerprint() != meta["tokenizer_fingerprint"]:
        raise ArlmError(f"the tokenizer in {directory} does not match its shards; run arlm prepare again")
    return PreparedData(directory, tokenizer, meta)


__all__ = ["SPLITS", "PreparedData", "check_split_size", "data_fingerprint", "load_prepared", "prepare"]
