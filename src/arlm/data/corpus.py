"""Corpus sources: the built-in corpus, a named corpus (`tinyshakespeare`, see sources.py), a text file, a folder
or glob of files, JSONL with a text field."""

from __future__ import annotations

import ast
import glob
import json
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path

from arlm.data.sources import CORPORA, find_corpus, is_named_corpus
from arlm.errors import ArlmError

BUILTIN_SOURCES = ("builtin", "builtin:topics", "builtin:docstrings")
_SKIP_STDLIB = {
    "site-packages",
    "dist-packages",
    "test",
    "idlelib",
    "lib2to3",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "__phello__",
}


@dataclass(frozen=True)
class Document:
    """One unit of text; splitting never cuts a document in document mode."""

    name: str
    text: str


def load_documents(source: str, *, text_field: str = "text", encoding_errors: str = "strict") -> list[Document]:
    """Read a corpus source into documents; refuse missing, empty, binary or non-UTF-8 input clearly."""
    if source in BUILTIN_SOURCES:
        docs = builtin_documents(source)
    elif is_named_corpus(source):  # found locally or downloaded once, before any path of that name
        docs = _read_file(find_corpus(source), text_field, encoding_errors)
    else:
        docs = _documents_from_path(source, text_field, encoding_errors)
    docs = [d for d in docs if d.text]
    if not docs:
        raise ArlmError(f"corpus {source!r} holds no text; give a file, folder or JSONL with some")
    return docs


def builtin_documents(which: str = "builtin") -> list[Document]:
    """Python's own documentation: pydoc topics (79 docs) and the docstrings of stdlib modules."""
    docs: list[Document] = []
    if which in ("builtin", "builtin:topics"):
        from pydoc_data.topics import topics

        docs += [Document(f"topics/{name}", text.strip() + "\n") for name, text in sorted(topics.items())]
    if which in ("builtin", "builtin:docstrings"):
        docs += _stdlib_docstrings()
    return docs


def _stdlib_docstrings() -> list[Document]:
    """Module, class and function docstrings of the standard library (tests and GUI demos left out),
    one document a module."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(stdlib.rglob("*.py")):
        parts = path.relative_to(stdlib).parts
        if parts[0] in _SKIP_STDLIB or any(p in ("test", "tests") for p in parts):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        strings = [ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds)]
        body = "\n\n".join(s.strip() for s in strings if s and s.strip())
        if body:
            name = ".".join(path.relative_to(stdlib).with_suffix("").parts)
            docs.append(Document(f"docstrings/{name}", body + "\n"))
    return docs


def _documents_from_path(source: str, text_field: str, encoding_errors: str) -> list[Document]:
    if any(ch in source for ch in "*?["):
        paths = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not paths:
            raise ArlmError(f"no files match {source!r}")
        return [d for p in paths for d in _read_file(p, text_field, encoding_errors)]
    path = Path(source)
    if not path.exists():
        raise ArlmError(
            f"corpus path {source} does not exist; give a file, folder, glob, JSONL, 'builtin' or a named corpus "
            f"({', '.join(CORPORA)})"
        )
    if path.is_dir():
        paths = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        if not paths:
            raise ArlmError(f"folder {source} holds no files")
        return [d for p in paths for d in _read_file(p, text_field, encoding_errors)]
    return _read_file(path, text_field, encoding_errors)


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _read_file(path: Path, text_field: str, encoding_errors: str) -> list[Document]:
    text = read_text(path, encoding_errors)
    if path.suffix in (".jsonl", ".ndjson"):
        return _jsonl_documents(path, text, text_field)
    return [Document(str(path), text)]


def read_text(path: Path, encoding_errors: str = "strict") -> str:
    """Decode a file as UTF-8; binary files and invalid bytes are refused with the offset (strict)."""
    data = path.read_bytes()
    nul = data.find(b"\x00", 0, 1 << 20)
    if nul >= 0:
        raise ArlmError(f"{path} looks binary (NUL byte at offset {nul}); give text files only")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        raise ArlmError(
            f"{path} is not valid UTF-8 at byte offset {exc.start}; convert it to UTF-8 "
            "or pass --data.encoding_errors replace (bad bytes become U+FFFD)"
        ) from None


def _jsonl_documents(path: Path, text: str, text_field: str) -> list[Document]:
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ArlmError(f"{path}:{lineno} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or text_field not in record:
            raise ArlmError(f"{path}:{lineno} has no field {text_field!r}; set --data.text_field")
        value = record[text_field]
        if not isinstance(value, str):
            raise ArlmError(f"{path}:{lineno} field {text_field!r} is not a string")
        docs.append(Document(f"{path}:{lineno}", value))
    return docs
