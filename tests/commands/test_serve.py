"""commands/serve.py: the port is bound before the model loads, so that a busy or impossible port is one line and
exit code 2 at once, and --port 0 serves on a free port it names (the served process itself: tests/serving)."""

import socket

import pytest

from arlm.cli import main
from arlm.commands.serve import bound_sockets
from arlm.errors import ArlmError


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """The models `arlm serve` began to load (none, where it stops first)."""
    seen = []

    def load_model(ref, **kwargs):
        seen.append(ref)
        raise ArlmError("not loaded in this test")

    monkeypatch.setattr("arlm.interop.loading.load_model", load_model)
    return seen


def test_a_busy_port_is_one_line_before_the_model_loads(tmp_path, loads, capsys):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        assert main(["serve", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (another server there? choose another "
        "--port, or 0 for a free one)"
    ]
    assert loads == []


def test_an_empty_api_key_is_one_line_and_the_environments_is_the_default(tmp_path, loads, capsys, monkeypatch):
    assert main(["serve", str(tmp_path), "--api-key", " "]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --api-key is empty; give the key clients will send (or leave the flag out: no key)"
    ]
    assert loads == []
    from arlm.cli import make_parser

    monkeypatch.setenv("ARLM_API_KEY", "from-env")
    assert make_parser(["serve"]).parse_args(["serve"]).api_key == "from-env"
    monkeypatch.setenv("ARLM_API_KEY", "")
    assert make_parser(["serve"]).parse_args(["serve"]).api_key is None


@pytest.mark.parametrize("port", ["-1", "65536"])
def test_a_port_out_of_range_is_one_line(tmp_path, loads, capsys, port):
    assert main(["serve", str(tmp_path), "--port", port]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --port must be 0-65535, got {port}"]
    assert loads == []


def test_port_zero_is_one_free_port_for_every_address_of_the_host():
    for host in ("127.0.0.1", "localhost"):
        sockets = bound_sockets(host, 0)
        try:
            ports = {sock.getsockname()[1] for sock in sockets}
            assert len(ports) == 1 and ports.pop() > 0
            first = sockets[0]  # bound: no one else gets its address before the server listens
            with socket.socket(first.family) as other, pytest.raises(OSError, match="in use"):
                other.bind(first.getsockname())
        finally:
            for sock in sockets:
                sock.close()


def test_the_sockets_are_closed_when_serve_stops_early(tmp_path, loads, capsys, monkeypatch):
    import arlm.commands.serve as serve

    made = []

    def bind(host: str, port: int) -> list[socket.socket]:
        made.extend(bound_sockets(host, port))
        return made

    monkeypatch.setattr(serve, "bound_sockets", bind)
    assert main(["serve", str(tmp_path), "--port", "0"]) == 2  # bound, then the load fails
    assert loads == [str(tmp_path)]
    assert capsys.readouterr().err.strip() == "error: not loaded in this test"
    assert made and all(sock.fileno() == -1 for sock in made)  # closed: the port is free again


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-queue", "0"], "--max-batch, --max-queue and --prefill-chunk must be >= 1"),
        (["--prefill-chunk", "0"], "--max-batch, --max-queue and --prefill-chunk must be >= 1"),
        (["--draft-dtype", "int8"], "--draft-dtype does nothing without --draft MODEL"),
        (["--max-body-mb", "0"], "--max-body-mb must be a number > 0, got 0"),
        (["--max-body-mb", "nan"], "--max-body-mb must be a number > 0, got nan"),
        (["--max-body-mb", "inf"], "--max-body-mb must be a number > 0, got inf"),
        (["--context", "1"], "--context must be >= 2 (a prompt token and a new one) or 0 (the default), got 1"),
    ],
)
def test_settings_that_could_serve_nothing_are_one_line_before_the_model_loads(tmp_path, loads, capsys, args, message):
    assert main(["serve", str(tmp_path), *args]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
    assert loads == []


def test_prompt_reuse_is_on_unless_turned_off():
    """A chat's earlier turns are reused by default, as llama-server and `arlm chat` do; --no-reuse-prefix: not."""
    from arlm.cli import make_parser

    parser = make_parser(["serve"])
    assert parser.parse_args(["serve"]).reuse_prefix is True
    assert parser.parse_args(["serve", "--no-reuse-prefix"]).reuse_prefix is False
