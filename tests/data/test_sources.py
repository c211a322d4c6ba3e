"""Named corpora: looked up in $ARLM_DATA, then the cache folder, else downloaded once (from a local HTTP server
on 127.0.0.1 here; the suite never reaches the network), checked by SHA-256 and written atomically."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import threading

import pytest

from arlm.cli import main
from arlm.data import sources
from arlm.data.corpus import load_documents
from arlm.data.sources import CORPORA, DATA_ENV, NamedCorpus, cache_dir, download, find_corpus, local_corpus
from arlm.errors import ArlmError
from tests.helpers import shakespeare

TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50
SHA = hashlib.sha256(TEXT).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves TEXT at /input.txt and 404 elsewhere; counts the requests it answers."""

    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        if self.path != "/input.txt":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(TEXT)))
        self.end_headers()
        self.wfile.write(TEXT)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """(base URL, list of request paths) of an HTTP server on 127.0.0.1, stopped after the test."""
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty cache folder (XDG_CACHE_HOME) and an empty $ARLM_DATA folder, both under tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv(DATA_ENV, str(data))
    return tmp_path / "xdg" / "arlm", data


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _use_corpus(monkeypatch, url: str, sha256: str = SHA) -> None:
    """Point the `tinyshakespeare` entry at url (the test server) with the given hash."""
    corpus = NamedCorpus("tinyshakespeare", "tinyshakespeare.txt", url, sha256, len(TEXT))
    monkeypatch.setitem(CORPORA, "tinyshakespeare", corpus)


def test_download_checks_the_hash_and_writes_atomically(server, tmp_path, capsys):
    base, requests = server
    target = tmp_path / "cache" / "small.txt"
    assert download(f"{base}/input.txt", target, SHA, timeout=10) == target
    assert target.read_bytes() == TEXT
    assert [p.name for p in target.parent.iterdir()] == ["small.txt"]  # no temporary file left behind
    assert requests == ["/input.txt"]
    assert capsys.readouterr().err == ""  # no progress bar when stderr is not a terminal


def test_a_wrong_hash_is_refused_and_nothing_is_kept(server, tmp_path):
    base, _ = server
    target = tmp_path / "cache" / "small.txt"
    with pytest.raises(ArlmError, match=rf"SHA-256 {SHA}, expected 0+; it was not kept"):
        download(f"{base}/input.txt", target, "0" * 64, timeout=10)
    assert list(target.parent.iterdir()) == []


def test_http_errors_and_unreachable_servers_are_one_line(server, tmp_path):
    base, _ = server
    with pytest.raises(ArlmError, match="HTTP Error 404"):
        download(f"{base}/missing.txt", tmp_path / "a.txt", SHA, timeout=10)
    with pytest.raises(ArlmError, match="cannot download") as info:
        download(f"http://127.0.0.1:{_closed_port()}/input.txt", tmp_path / "b.txt", SHA, timeout=10)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_lookup_order_data_folder_then_cache_then_one_download(server, places, monkeypatch):
    base, requests = server
    cache, data = places
    _use_corpus(monkeypatch, f"{base}/input.txt")
    assert cache_dir() == cache
    assert local_corpus("tinyshakespeare") is None
    assert find_corpus("tinyshakespeare", timeout=10) == cache / "tinyshakespeare.txt"  # downloaded
    assert find_corpus("tinyshakespeare", timeout=10) == cache / "tinyshakespeare.txt"  # found, not fetched again
    assert requests == ["/input.txt"]
    shutil.copy(cache / "tinyshakespeare.txt", data / "tinyshakespeare.txt")
    assert find_corpus("tinyshakespeare") == data / "tinyshakespeare.txt"  # $ARLM_DATA comes first
    monkeypatch.delenv(DATA_ENV)
    assert find_corpus("tinyshakespeare") == cache / "tinyshakespeare.txt"
    assert requests == ["/input.txt"]


def test_a_local_file_that_is_not_the_named_corpus_is_refused(server, places, monkeypatch):
    """A tinyshakespeare.txt in $ARLM_DATA or the cache holding other text (or a cut copy) was read as the corpus,
    its figures reported under the corpus's name: refused in one line, nothing changed."""
    base, requests = server
    cache, data = places
    _use_corpus(monkeypatch, f"{base}/input.txt")
    for folder, text in ((data, b"mine\n"), (cache, TEXT[:-1])):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tinyshakespeare.txt").write_bytes(text)
        with pytest.raises(ArlmError, match="is not the tinyshakespeare corpus") as info:
            find_corpus("tinyshakespeare", timeout=10)
        assert "\n" not in str(info.value) and (folder / "tinyshakespeare.txt").read_bytes() == text
        (folder / "tinyshakespeare.txt").unlink()
    assert requests == []


def test_cache_folder_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "arlm"


def test_offline_names_where_to_put_the_file(places, monkeypatch):
    cache, _ = places
    _use_corpus(monkeypatch, f"http://127.0.0.1:{_closed_port()}/input.txt")
    with pytest.raises(ArlmError) as info:
        find_corpus("tinyshakespeare", timeout=10)
    message = str(info.value)
    assert f"as {cache / 'tinyshakespeare.txt'}" in message and f"set {DATA_ENV}" in message
    assert "\n" not in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_a_named_source_is_read_and_a_path_is_read_as_a_path(server, places, monkeypatch, tmp_path):
    base, _ = server
    _use_corpus(monkeypatch, f"{base}/input.txt")
    assert [d.text for d in load_documents("tinyshakespeare")] == [TEXT.decode()]
    own = tmp_path / "own.txt"
    own.write_text("my own text\n")
    assert [d.text for d in load_documents(str(own))] == ["my own text\n"]


def test_preset_offline_ends_with_one_line(places, monkeypatch, tmp_path, capsys):
    _use_corpus(monkeypatch, f"http://127.0.0.1:{_closed_port()}/input.txt")
    code = main(["prepare", "--preset", "shakespeare-char-cpu", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "tinyshakespeare" in err and DATA_ENV in err, err
    assert not (tmp_path / "d").exists()


def test_preset_reads_the_corpus_from_the_data_folder(places, tmp_path, monkeypatch):
    _, data = places
    text = b"ROMEO:\nBut soft, what light.\n" * 200
    (data / "tinyshakespeare.txt").write_bytes(text)
    _use_corpus(monkeypatch, f"http://127.0.0.1:{_closed_port()}/input.txt", hashlib.sha256(text).hexdigest())
    assert main(["prepare", "--preset", "shakespeare-char-cpu", "--out", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "train.bin").exists()


def test_the_registry_hash_is_the_real_file():
    path = shakespeare()
    corpus = sources.CORPORA["tinyshakespeare"]
    assert path.stat().st_size == corpus.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == corpus.sha256
    assert corpus.url.startswith("https://raw.githubusercontent.com/karpathy/char-rnn/")
