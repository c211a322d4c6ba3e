import pytest

from arlm.commands.options import check_batches, model_of, refuse_unused
from arlm.errors import ArlmError


def test_check_batches_refuses_negatives_and_keeps_zero_for_the_whole_split():
    check_batches(0)
    check_batches(3)
    with pytest.raises(ArlmError, match="--batches -1"):
        check_batches(-1)


def test_refuse_unused_names_every_flag_set():
    refuse_unused({"--a": False}, "with --file")
    with pytest.raises(ArlmError, match="^--a, --c go with --file$"):
        refuse_unused({"--a": True, "--b": False, "--c": True}, "with --file")


MODEL_VERBS = {  # verb -> its default model (None: it needs one); `export` takes MODEL OUT by position, `bench
    # decode` --model only (its --dtype takes several values, which would swallow a model after it)
    "generate": None,
    "chat": "smollm2",
    "serve": "smollm2",
    "eval perplexity": None,
    "eval icl": None,
}


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_every_verb_that_loads_a_model_takes_it_as_an_argument_or_as_model(verb):
    """`arlm VERB MODEL` and `arlm VERB --model MODEL` name the same model; the verb's default where neither is."""
    from arlm.cli import make_parser

    words, default = verb.split(), MODEL_VERBS[verb]

    def parsed(*argv: str) -> str:
        return model_of(make_parser(words).parse_args([*words, *argv]))

    assert parsed("m") == parsed("--model", "m") == parsed("m", "--model", "m") == "m"
    assert parsed("--dtype", "float32", "m") == parsed("m", "--dtype", "float32") == "m"
    if default is None:
        with pytest.raises(ArlmError, match="^no model given: name one as an argument or with --model$"):
            parsed()
    else:
        assert parsed() == default
    with pytest.raises(ArlmError, match="^two models given: 'a' and --model 'b'; give one$"):
        parsed("a", "--model", "b")


def test_a_verb_refuses_a_missing_or_doubled_model_in_one_line_before_loading_anything(capsys):
    from arlm.cli import main

    assert main(["generate", "--prompt", "hi"]) == 2
    assert capsys.readouterr().err.strip() == "error: no model given: name one as an argument or with --model"
    assert main(["eval", "perplexity", "a", "--model", "b"]) == 2
    assert capsys.readouterr().err.strip() == "error: two models given: 'a' and --model 'b'; give one"


def test_json_names_a_folder_or_a_missing_schema_file(tmp_path):
    from arlm.commands.options import json_schema_of

    with pytest.raises(ArlmError, match="is a folder; give a JSON schema file or its text"):
        json_schema_of(str(tmp_path))
    with pytest.raises(ArlmError, match="no such file; give a JSON schema file or its text"):
        json_schema_of(str(tmp_path / "person.json"))
    (tmp_path / "person.json").write_text('{"type": "object"}')
    assert json_schema_of(str(tmp_path / "person.json")) == {"type": "object"}
    assert json_schema_of('{"type": "array"}') == {"type": "array"}


def test_text_that_is_not_utf8_reads_as_replacement_characters_and_a_dash_reads_stdin(monkeypatch):
    import io

    from arlm.commands.options import prompt_text, typed_text

    argv_text = b"caf\xe9 au lait".decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    assert typed_text(argv_text) == "caf\ufffd au lait" and typed_text("ça va") == "ça va"
    monkeypatch.setattr("sys.stdin", io.StringIO("the sky is\n"))
    assert prompt_text("-") == "the sky is" and prompt_text("-x") == "-x"


@pytest.mark.parametrize("piped", ["", "\n"])
def test_an_empty_stdin_prompt_is_refused(monkeypatch, capsys, piped):
    """`git diff | arlm generate smollm2 --prompt -` on a clean tree: nothing to continue; it generated from nothing
    and exited 0. --prompt '' still asks for that."""
    import io

    from arlm.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(piped))
    assert main(["generate", "runs/none", "--prompt", "-"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --prompt -: standard input was empty; pipe some text, or --prompt '' to start from none"
