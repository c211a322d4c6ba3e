"""`arlm prepare`: corpus -> normalize -> split -> tokenizer -> token shards + corpus report."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from arlm.config import DataConfig
from arlm.data.batches import BatchSampler
from arlm.data.corpus import Document, load_documents
from arlm.data.normalize import normalize_documents
from arlm.data.report import corpus_report, format_report
from arlm.data.shards import ShardWriter, read_shard
from arlm.data.sources import is_named_corpus
from arlm.data.split import SPLITS, split_documents
from arlm.data.tokenizers import Tokenizer, load_tokenizer, train_tokenizer
from arlm.errors import ArlmError

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


def data_fingerprint(config: DataConfig) -> str:
    """Hash of the settings that change the prepared shards (not how batches are drawn from them)."""
    settings = {k: getattr(config, k) for k in PREPARE_KEYS}
    if config.source not in ("builtin", "builtin:topics", "builtin:docstrings") and not is_named_corpus(config.source):
        settings["source"] = str(Path(config.source).resolve()) if Path(config.source).exists() else config.source
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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

    def sampler(self, split: str, config: DataConfig, block_size: int, seed: int) -> BatchSampler:
        """Deterministic batches for a split, refusing one too short for a single block."""
        tokens = self.tokens(split)
        need = block_size + 1
        if config.mode == "packed" and len(tokens) < need:
            raise ArlmError(
                f"the {split} split holds {len(tokens)} tokens, shorter than one block ({need} with "
                f"model.block_size {block_size}); add text or lower model.block_size"
            )
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

    def split_bytes(self, split: str) -> int:
        """UTF-8 bytes of the split's text (for bits per byte)."""
        return self.meta["splits"][split]["bytes"]


def prepare(
    config: DataConfig, directory: str | Path, *, overwrite: bool = False, log: Callable[[str], None] = print
) -> PreparedData:
    """Prepare a corpus into `directory`, or reuse it when it was prepared with the same settings."""
    directory = Path(directory)
    fingerprint = data_fingerprint(config)
    meta_path = directory / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("fingerprint") == fingerprint:
            log(f"using prepared data in {directory}")
            return load_prepared(directory)
        if not overwrite:
            raise ArlmError(
                f"{directory} holds data prepared with other settings; pass --overwrite to replace "
                "it or choose another --data.prepared_dir"
            )
    elif directory.exists() and any(directory.iterdir()) and not overwrite:
        raise ArlmError(f"{directory} exists and is not a prepared corpus; choose another --data.prepared_dir")
    tmp = directory.with_name(directory.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        report_text = _prepare_into(config, tmp, fingerprint, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    log(report_text)
    return load_prepared(directory)


def _prepare_into(config: DataConfig, out: Path, fingerprint: str, log: Callable[[str], None]) -> str:
    docs = load_documents(config.source, text_field=config.text_field, encoding_errors=config.encoding_errors)
    docs, norm = normalize_documents(docs, config)
    docs = [d for d in docs if d.text]
    if not docs:
        raise ArlmError(f"corpus {config.source!r} is empty after normalization")
    log(norm.describe())
    splits = split_documents(docs, config.val_fraction, config.test_fraction, config.seed, config.split)
    log(f"split: {splits.mode}; " + ", ".join(f"{n} {len(d)} docs" for n, d in splits.items()))
    tokenizer = train_tokenizer(config.tokenizer, [d.text for d in splits.train], config.vocab_size)
    tokenizer.save(out / "tokenizer")
    counts = {name: _write_split(out, name, split_docs, tokenizer) for name, split_docs in splits.items()}
    report = corpus_report(out, tokenizer, counts)
    report.update(normalize=asdict(norm), split_mode=splits.mode, duplicates_dropped=splits.duplicates_dropped)
    meta = {
        "version": META_VERSION,
        "fingerprint": fingerprint,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "data": {k: getattr(config, k) for k in PREPARE_KEYS},
        "splits": counts,
        "split_mode": splits.mode,
    }
    text = format_report(report)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "report.txt").write_text(text + "\n", encoding="utf-8")
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return text


def _write_split(out: Path, name: str, docs: list[Document], tokenizer: Tokenizer) -> dict:
    """Tokenize a split's documents (each followed by EOS) into a shard, plus document start offsets."""
    starts = [0]
    chars = nbytes = 0
    eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
    with ShardWriter(out / f"{name}.bin", tokenizer.vocab_size) as writer:
        for i in range(0, len(docs), 256):
            chunk = docs[i : i + 256]
            for doc, ids in zip(chunk, tokenizer.encode_batch([d.text for d in chunk])):
                writer.append(ids + eos)
                starts.append(writer.count)
                chars += len(doc.text)
                nbytes += len(doc.text.encode("utf-8"))
        count = writer.count
    np.save(out / f"{name}.docs.npy", np.asarray(starts, dtype=np.int64), allow_pickle=False)
    return {"documents": len(docs), "characters": chars, "bytes": nbytes, "tokens": count}


def load_prepared(directory: str | Path) -> PreparedData:
    """Open a prepared corpus; refuse a missing or partial one clearly."""
    directory = Path(directory)
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        raise ArlmError(f"{directory} is not a prepared corpus (no meta.json); run arlm prepare first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("version") != META_VERSION:
        raise ArlmError(f"{directory} was prepared by another arlm version; run arlm prepare again")
    tokenizer = load_tokenizer(directory / "tokenizer")
    if tokenizer.fingerprint() != meta["tokenizer_fingerprint"]:
        raise ArlmError(f"the tokenizer in {directory} does not match its shards; run arlm prepare again")
    return PreparedData(directory, tokenizer, meta)


__all__ = ["SPLITS", "PreparedData", "data_fingerprint", "load_prepared", "prepare"]
