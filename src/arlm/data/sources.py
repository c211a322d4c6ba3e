"""Named corpora: a public text known by name (`tinyshakespeare`), found in $ARLM_DATA or the cache folder
($XDG_CACHE_HOME/arlm, else ~/.cache/arlm), or else downloaded once into the cache, checked by SHA-256.

A path in data.source is always read as that path; only a bare name from CORPORA is looked up here."""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from arlm.errors import ArlmError

DATA_ENV = "ARLM_DATA"  # a folder holding named corpora by file name (tinyshakespeare.txt)
CHUNK = 1 << 16


@dataclass(frozen=True)
class NamedCorpus:
    """A corpus known by name: its file name, canonical public address and content hash."""

    name: str
    filename: str
    url: str
    sha256: str
    size: int  # bytes, for the progress bar when the server sends no Content-Length


CORPORA = {
    "tinyshakespeare": NamedCorpus(
        name="tinyshakespeare",
        filename="tinyshakespeare.txt",
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
    ),
}


def is_named_corpus(source: str) -> bool:
    """Whether a data.source string names a corpus in CORPORA."""
    return source in CORPORA


def cache_dir() -> Path:
    """Where downloaded corpora are kept: $XDG_CACHE_HOME/arlm, else ~/.cache/arlm."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "arlm"


def local_corpus(name: str) -> Path | None:
    """The named corpus's file in $ARLM_DATA or the cache folder, in that order, checked to be that corpus (its
    SHA-256); None where neither has it."""
    corpus = _named(name)
    folders = [Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []
    for folder in [*folders, cache_dir()]:
        path = folder.expanduser() / corpus.filename
        if path.is_file():
            return _checked(path, corpus)
    return None


def _checked(path: Path, corpus: NamedCorpus) -> Path:
    """path, refused where its content is not the named corpus (another text or version, a cut copy)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != corpus.sha256:
        raise ArlmError(
            f"{path} is not the {corpus.name} corpus (SHA-256 {digest.hexdigest()[:16]}..., expected "
            f"{corpus.sha256[:16]}...); remove it to use the published file, or give your text as a path "
            "(--data.source PATH)"
        )
    return path


def find_corpus(name: str, *, timeout: float = 60.0) -> Path:
    """The named corpus's file: $ARLM_DATA, then the cache folder, else downloaded once into the cache."""
    found = local_corpus(name)
    if found is not None:
        return found
    corpus = _named(name)
    target = cache_dir() / corpus.filename
    try:
        return download(corpus.url, target, corpus.sha256, size=corpus.size, timeout=timeout)
    except ArlmError as exc:
        raise ArlmError(
            f"{exc}; corpus {name!r} is not on this machine: save that file as {target}, "
            f"or set {DATA_ENV} to a folder holding {corpus.filename}, or give a path instead (prepare and train: "
            "--data.source PATH; eval perplexity: --file PATH)"
        ) from None


def download(url: str, target: Path, sha256: str, *, size: int = 0, timeout: float = 60.0) -> Path:
    """Fetch url into target through a temporary file renamed into place only when its SHA-256 matches."""
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as out:
            digest = _copy_url(url, out, size=size, timeout=timeout, label=target.name)
        if digest != sha256:
            raise ArlmError(f"{url} sent a file with SHA-256 {digest}, expected {sha256}; it was not kept")
        os.replace(tmp, target)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ArlmError(f"cannot download {url}: {_reason(exc)}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return target


def _copy_url(url: str, out: BinaryIO, *, size: int, timeout: float, label: str) -> str:
    """Stream url into the open file `out` with a progress bar (shown only on a terminal); its SHA-256."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or size) or None
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=f"downloading {label}", disable=not sys.stderr.isatty()
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _reason(exc: BaseException) -> str:
    """The first line of an error's cause (urllib nests the socket error in `reason`)."""
    is_url_error = isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError)
    reason = exc.reason if is_url_error else exc  # "HTTP Error 404: Not Found" is clear as it is
    return (str(reason).splitlines() or [type(exc).__name__])[0]


def _named(name: str) -> NamedCorpus:
    if name not in CORPORA:
        raise ArlmError(f"unknown corpus {name!r}; named corpora: {', '.join(CORPORA)}")
    return CORPORA[name]
