"""Text normalization as explicit switches, with a report of what each switch changed."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from arlm.config import DataConfig
from arlm.data.corpus import Document, load_documents

_KEEP_CONTROL = {"\n", "\t", "\u200c", "\u200d"}  # and the joiners, format characters that are part of the text:
# ZWNJ in Persian or Hindi, ZWJ in emoji sequences (with the tags of subdivision flags, below)
_TAGS = range(0xE0020, 0xE0080)
_DROP_CATEGORIES = {"Cc", "Cf", "Co", "Cs"}  # control, format (zero-width...), private use, surrogates
_SPACES = re.compile(r"[^\S\n]+")  # whitespace other than newline
_CONTROL_BREAKS = re.compile(r"\r(?!\n)|[\x0b\x0c\x85]")  # line breaks that are control characters: CR alone (old
# Macs' files), vertical tab, form feed, NEL (EBCDIC's line end)
_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")  # what str.splitlines breaks at, but \x1c-\x1e
_TRAILING = re.compile(r" +\n")
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass
class NormalizeReport:
    """Characters before and after, and how many characters each step removed or changed."""

    chars_before: int = 0
    chars_after: int = 0
    removed: dict[str, int] = field(default_factory=dict)  # step -> characters removed (negative: added)
    edited: dict[str, int] = field(default_factory=dict)  # step -> characters changed in place

    def describe(self) -> str:
        """One line for the console."""
        if not self.removed:
            return f"normalize: off ({self.chars_before:,} characters unchanged)"
        steps = ", ".join(
            f"{step}: {self.removed[step]:,} removed, {self.edited[step]:,} changed" for step in self.removed
        )
        return f"normalize: {self.chars_before:,} -> {self.chars_after:,} characters ({steps})"


def steps_for(config: DataConfig) -> list[str]:
    """The enabled normalization steps, in the order they run."""
    steps = []
    if config.unicode != "none":
        steps.append(config.unicode)
    if config.strip_control:
        steps.append("strip_control")
    if config.lowercase:
        steps.append("lowercase")
    if config.collapse_whitespace:
        steps.append("collapse_whitespace")
    return steps


def apply_step(step: str, text: str) -> str:
    """Run one named normalization step on a text."""
    if step in ("NFC", "NFKC"):
        return unicodedata.normalize(step, text)
    if step == "strip_control":  # (a line break that is a control character is kept as one)
        text = _CONTROL_BREAKS.sub("\n", text)
        return "".join(
            ch
            for ch in text
            if ch in _KEEP_CONTROL or unicodedata.category(ch) not in _DROP_CATEGORIES or ord(ch) in _TAGS
        )
    if step == "lowercase":
        return text.lower()
    if step == "collapse_whitespace":  # (a line break of any convention is one "\n")
        text = _TRAILING.sub("\n", _SPACES.sub(" ", _LINE_BREAKS.sub("\n", text)))
        return _BLANK_LINES.sub("\n\n", text)
    raise ValueError(f"unknown normalization step {step}")


def normalize_text(text: str, config: DataConfig) -> str:
    """Apply every enabled step to one text."""
    for step in steps_for(config):
        text = apply_step(step, text)
    return text


class Normalizer:
    """Normalizes texts one at a time (documents, or pieces of one cut by pieces.safe_cut), accumulating
    the report; counts are summed over texts, so a stream needs no more memory than its largest piece."""

    def __init__(self, config: DataConfig) -> None:
        self.steps = steps_for(config)
        self.report = NormalizeReport()

    def __call__(self, text: str) -> str:
        """The normalized text; the report counts what each step removed and changed in place."""
        report = self.report
        report.chars_before += len(text)
        for step in self.steps:
            new = apply_step(step, text)
            report.removed[step] = report.removed.get(step, 0) + len(text) - len(new)
            edits = _changed_in_place(text, new) if len(new) == len(text) and new != text else 0
            report.edited[step] = report.edited.get(step, 0) + edits
            text = new
        report.chars_after += len(text)
        return text


def _changed_in_place(old: str, new: str) -> int:
    """Positions where two texts of equal length differ."""
    a = np.frombuffer(old.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    b = np.frombuffer(new.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return int(np.count_nonzero(a != b))


def normalize_documents(docs: list[Document], config: DataConfig) -> tuple[list[Document], NormalizeReport]:
    """Normalize all documents; the report counts per step the characters removed and changed in place."""
    normalizer = Normalizer(config)
    out = [Document(doc.name, normalizer(doc.text)) for doc in docs]
    return out, normalizer.report


def corpus_text(source: str, config: DataConfig, max_chars: int = 0) -> str:
    """The text of a corpus source (a file, folder, glob, JSONL or 'builtin') normalized as config says (a model's
    training data): one document as it is, several joined by a blank line (their own blank ends dropped); cut to
    max_chars when > 0."""
    docs = load_documents(source, text_field=config.text_field, encoding_errors=config.encoding_errors)
    joined = docs[0].text if len(docs) == 1 else "\n\n".join(d.text.strip("\n") for d in docs)
    text = normalize_text(joined, config)
    return text[:max_chars] if max_chars else text
