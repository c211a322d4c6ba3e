"""Corpus sources: the built-in corpus, a named corpus (`tinyshakespeare`, see sources.py), a text file, a folder
or glob of files, JSONL with a text field; read as a stream of documents in pieces."""

from __future__ import annotations

import ast
import codecs
import fnmatch
import glob
import json
import os
import re
import sysconfig
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from pydoc_data.topics import topics

from arlm.data.pieces import Chunk, cut_by_size, join_documents, repiece, separate, separator_pattern
from arlm.data.sources import CORPORA, find_corpus, is_named_corpus
from arlm.errors import ArlmError
from arlm.temporaries import temporary_for

READ_BYTES = 1 << 22  # files are read 4 MiB at a time
PIECE_CHARS = 1 << 22  # documents longer than this many characters stream in pieces

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


def load_documents(
    source: str, *, text_field: str = "text", encoding_errors: str = "strict", separator: str = "", max_chars: int = 0
) -> list[Document]:
    """Read a corpus source into documents held in memory (see iter_chunks for the rules)."""
    chunks = iter_chunks(
        source, text_field=text_field, encoding_errors=encoding_errors, separator=separator, max_chars=max_chars
    )
    return [Document(name, text) for name, text in join_documents(chunks)]


def iter_chunks(
    source: str,
    *,
    text_field: str = "text",
    encoding_errors: str = "strict",
    separator: str = "",
    max_chars: int = 0,
) -> Iterator[Chunk]:
    """Stream a corpus source as documents in pieces, reading files in blocks: each file (or JSONL record)
    is a document, cut further at the separator's matches and into documents of at most max_chars (0: no
    limit); a document of at most PIECE_CHARS characters comes as one piece. Missing, empty, binary or
    non-UTF-8 input is refused clearly."""
    chunks = _source_chunks(source, text_field, encoding_errors)
    pattern = separator_pattern(separator)
    if pattern is not None:
        chunks = separate(chunks, pattern)
    if max_chars > 0:
        chunks = cut_by_size(chunks, max_chars)
    empty = True
    for chunk in repiece(chunks, PIECE_CHARS):
        empty = False
        yield chunk
    if empty:
        raise ArlmError(f"corpus {source!r} holds no text; give a file, folder or JSONL with some")


def _source_chunks(source: str, text_field: str, encoding_errors: str) -> Iterator[Chunk]:
    if source in BUILTIN_SOURCES:
        yield from (Chunk(d.name, d.text, True) for d in builtin_documents(source))
        return
    for path in source_paths(source):
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            yield from _jsonl_chunks(path, text_field, encoding_errors)
        else:
            yield from (Chunk(str(path), text, last) for text, last in read_blocks(path, encoding_errors))


def builtin_documents(which: str = "builtin") -> list[Document]:
    """Python's own documentation: pydoc topics (79 docs) and the docstrings of stdlib modules."""
    docs: list[Document] = []
    if which in ("builtin", "builtin:topics"):
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


def is_glob(source: str) -> bool:
    """Whether data.source is a glob pattern (its files are those that match it)."""
    return any(ch in source for ch in "*?[")


def source_paths(source: str) -> list[Path]:
    """The files of a named corpus, path, folder (recursively, hidden ones left out) or glob, sorted."""
    if is_named_corpus(source):  # found locally or downloaded once, before any path of that name
        return [find_corpus(source)]
    if is_glob(source) and not Path(source).exists():  # (a file named "shake [v2].txt" is that file)
        paths = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not paths:
            raise ArlmError(f"no files match {source!r}")
        return _distinct(paths)
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
        return _distinct(paths)
    return [path]


def check_source_apart(source: str, folder: str | Path, flag: str) -> None:
    """Refuse a source folder that holds `folder` (an output: prepared data, a run), or a glob that reaches into
    it or into the temporary it is written under: the files arlm writes there would be read as the corpus."""
    src = Path(source)
    if is_named_corpus(source) or source in BUILTIN_SOURCES:
        return
    out = Path(folder).resolve()
    if is_glob(source) and not src.exists():
        pattern = Path(os.path.abspath(source)).parts
        if any(_reaches(pattern, place.parts) for place in (out, temporary_for(out))):
            raise ArlmError(
                f"data.source {source!r} matches files inside {flag} {folder} (or the folder it is written in "
                f"first): the files arlm writes there would be read as the corpus; choose a {flag} the pattern "
                "does not reach"
            )
        return
    if src.is_dir() and out.is_relative_to(src.resolve()):
        raise ArlmError(
            f"data.source {source} holds {flag} {folder}: the files arlm writes there would be read as the corpus; "
            f"choose a {flag} outside the source folder"
        )


def _distinct(paths: list[Path]) -> list[Path]:
    """paths without a second name of a file already listed (a link to it), in order."""
    seen: dict[Path, Path] = {}  # resolved -> the first name listed
    for path in paths:
        seen.setdefault(path.resolve(), path)
    return list(seen.values())


def _reaches(pattern: tuple[str, ...], folder: tuple[str, ...]) -> bool:
    """Whether a glob's path components can match a file below the folder's components ("**": any number)."""
    if not folder:
        return bool(pattern)
    if not pattern:
        return False
    if pattern[0] == "**":
        return _reaches(pattern[1:], folder) or _reaches(pattern, folder[1:])
    return fnmatch.fnmatchcase(folder[0], pattern[0]) and _reaches(pattern[1:], folder[1:])


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def read_text(path: Path, encoding_errors: str = "strict") -> str:
    """Decode a whole file as UTF-8 (see read_blocks)."""
    return "".join(text for text, _ in read_blocks(path, encoding_errors))


def read_blocks(path: Path, encoding_errors: str = "strict") -> Iterator[tuple[str, bool]]:
    """Decode a file as UTF-8 block by block, (text, is_last); binary files and invalid bytes are refused
    with the file's byte offset (strict)."""
    try:
        yield from _decoded_blocks(path, encoding_errors)
    except OSError as exc:  # (removed or made unreadable while being read)
        raise ArlmError(f"cannot read {path} ({exc.strerror or exc}); prepare again once it is readable") from None


def _decoded_blocks(path: Path, encoding_errors: str) -> Iterator[tuple[str, bool]]:
    decoder = codecs.getincrementaldecoder("utf-8")(encoding_errors)
    fed = read = 0  # bytes given to the decoder, bytes read from the file
    with open(path, "rb") as f:
        while True:
            data = f.read(READ_BYTES)
            nul = data.find(b"\x00")
            if nul >= 0:
                raise ArlmError(f"{path} looks binary (NUL byte at offset {read + nul}); give text files only")
            if not read and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
                read = fed = 3  # (offsets are the file's)
            read += len(data)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise ArlmError(
                    f"{path} is not valid UTF-8 at byte offset {fed - pending + exc.start}; convert it to UTF-8 "
                    "(prepare and train take --data.encoding_errors replace, eval perplexity --file --encoding-errors "
                    "replace: bad bytes become U+FFFD)"
                ) from None
            fed += len(data)
            yield text, not data
            if not data:
                return


def _jsonl_chunks(path: Path, text_field: str, encoding_errors: str) -> Iterator[Chunk]:
    """One document a JSONL record."""
    for lineno, line in jsonl_lines(path, encoding_errors):
        value = _jsonl_record(path, lineno, line, text_field, encoding_errors)
        if value is not None:
            yield Chunk(f"{path}:{lineno}", value, True)


def jsonl_lines(path: Path, encoding_errors: str = "strict") -> Iterator[tuple[int, str]]:
    """(line number, line) of a JSONL file read as UTF-8 in blocks (see read_blocks): lines end at "\n" only
    (a trailing "\r" is dropped), so U+2028, U+2029 and U+0085 inside a record's strings stay in it."""
    buf, lineno = "", 0
    for text, last in read_blocks(path, encoding_errors):
        lines = (buf + text).split("\n")
        buf = "" if last else lines.pop()  # the last line may continue in the next block
        for line in lines:
            lineno += 1
            yield lineno, line.removesuffix("\r")


def _jsonl_record(path: Path, lineno: int, line: str, text_field: str, encoding_errors: str) -> str | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ArlmError(f"{path}:{lineno} is not valid JSON ({exc.msg})") from None
    record = no_lone_surrogates(record, line, f"{path}:{lineno}", encoding_errors)
    if not isinstance(record, dict) or text_field not in record:
        chat = isinstance(record, dict) and ("messages" in record or "prompt" in record)
        hint = "it looks like chat data (data.format chat)" if chat else "data.text_field names another"
        raise ArlmError(f"{path}:{lineno} has no field {text_field!r}; {hint}")
    value = record[text_field]
    if not isinstance(value, str):
        raise ArlmError(f"{path}:{lineno} field {text_field!r} is not a string")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def no_lone_surrogates(record: object, line: str, where: str, encoding_errors: str = "strict") -> object:
    """A JSON record (parsed from line) whose strings hold no lone surrogate (`"\\ud800"`, an escape JSON allows and
    UTF-8 cannot hold): refused naming where, or each made U+FFFD with encoding_errors "replace"."""
    if "\\u" not in line:  # (only an escape makes one: the line itself is decoded UTF-8)
        return record

    def clean(value: object) -> object:
        if isinstance(value, str) and _SURROGATE.search(value):
            if encoding_errors != "replace":
                raise ArlmError(
                    f"{where} holds a lone surrogate escape (\\u{ord(_SURROGATE.search(value)[0]):04x}), which is not "
                    "text; fix the record (prepare and train also take --data.encoding_errors replace: U+FFFD)"
                )
            return _SURROGATE.sub("\ufffd", value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return [clean(v) for v in value] if isinstance(value, list) else value

    return clean(record)
