import json
import re

import pytest

from arlm.cli import main
from arlm.commands.chat import chat_command
from arlm.config import GenerationConfig
from arlm.errors import ArlmError


@pytest.mark.slow
@pytest.mark.real_model
def test_smollm2_answers_a_question(capsys):
    config = GenerationConfig(strategy="greedy", max_new_tokens=24)
    answers = chat_command("smollm2", config, messages=["What is the capital of France?"], device="cpu")
    assert "Paris" in answers[0]
    assert "Paris" in capsys.readouterr().out  # streamed


@pytest.mark.slow
@pytest.mark.real_model
def test_the_command_takes_a_draft_and_stops_at_a_stop_string(capsys):
    args = ["chat", "--message", "Count from 1 to 10, separated by commas.", "--temperature", "0"]
    assert main([*args, "--strategy", "speculative", "--draft", "self:20", "--max-new-tokens", "40"]) == 0
    full = capsys.readouterr().out
    assert "4, 5, 6" in full
    assert main([*args, "--stop", "5", "--max-new-tokens", "40"]) == 0
    assert capsys.readouterr().out == full[: full.index("5")] + "\n"
    assert main(["chat", "--message", "hi", "--num-return-sequences", "2"]) == 2
    assert capsys.readouterr().err.strip().endswith("--num-return-sequences is for arlm generate")


def test_a_model_fine_tuned_on_chat_data_without_a_template_chats_as_it_trained(tmp_path, capsys):
    from arlm.commands.train import train_command
    from arlm.config import config_from_dict
    from tests.helpers import chat_raw, tiny_base, write_chat

    base = tiny_base(tmp_path / "base")
    raw = chat_raw(tmp_path, base, write_chat(tmp_path / "chat.jsonl"), train={"max_steps": 2})
    run = tmp_path / "lora"
    train_command(config_from_dict({**raw, "train": {**raw["train"], "out_dir": str(run)}}).validate(), log=print)
    config = GenerationConfig(strategy="greedy", max_new_tokens=6, stop_at_eos=False)
    answers = chat_command(str(run), config, messages=["red", "blue"], device="cpu")
    assert len(answers) == 2
    typed = iter(["red"])

    def read(prompt: str) -> str:  # a terminal: the prompt shown, one line typed, then Ctrl-D
        print(prompt, end="")
        line = next(typed, None)
        if line is None:
            raise EOFError
        return line

    capsys.readouterr()
    assert len(chat_command(str(run), config, device="cpu", read=read)) == 1
    out = capsys.readouterr().out
    assert out.startswith("you> assistant> ") and out.endswith("\nyou> \n")
    typed = iter(["", "  ", "red " * 500, "red"])  # blank lines: passed over; a message too long: said, and on
    assert chat_command(str(run), config, device="cpu", read=read) == answers[:1]
    err = capsys.readouterr().err
    assert re.search(r"^error: the message is \d+ tokens; the context leaves room for \d+$", err, re.M)
    typed = iter([b"caf\xe9".decode("utf-8", "surrogateescape")])  # a terminal's bytes that are not UTF-8
    assert len(chat_command(str(run), config, device="cpu", read=read)) == 1
    with pytest.raises(ArlmError, match="no chat template"):
        chat_command(str(base), config, messages=["red"], device="cpu")  # never trained on chat data
    capsys.readouterr()  # its context is 64: chat's default answer, 256 tokens, is cut to half of it unless given
    assert main(["chat", str(run), "--message", "red", "--temperature", "0", "--stop-at-eos", "false"]) == 0
    assert len(capsys.readouterr().out) > len("assistant> ")
    assert main(["chat", str(run), "--message", "red", "--max-new-tokens", "256"]) == 2
    assert "max_new_tokens 256 leaves no room" in capsys.readouterr().err


def test_chat_help_shows_the_defaults_chat_uses():
    """chat samples at 0.7, top-p 0.9, 256 tokens; its --help said generate's 1.0, 1.0 and 200."""
    import argparse

    from arlm.commands import chat

    parser = argparse.ArgumentParser()
    chat.add_arguments(parser)
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["gen_temperature"].endswith("(default 0.7)") and helps["gen_top_p"].endswith("(default 0.9)")
    assert helps["gen_max_new_tokens"].endswith("(default 256)") and helps["gen_strategy"].endswith("(default sample)")


def test_the_model_is_an_argument_as_for_generate_and_serve_or_a_flag(monkeypatch):
    """`arlm chat MODEL` as `arlm generate MODEL` / `arlm serve MODEL`; `--model MODEL` still works; two different
    models refused in one line; smollm2 by default."""
    import arlm.commands.chat as chat

    seen = []
    monkeypatch.setattr(chat, "chat_command", lambda model, *a, **k: seen.append(model))
    assert main(["chat", "runs/mine", "--message", "hi"]) == 0
    assert main(["chat", "--model", "runs/mine", "--message", "hi"]) == 0
    assert main(["chat", "runs/mine", "--model", "runs/mine", "--message", "hi"]) == 0
    assert main(["chat", "--message", "hi"]) == 0
    assert seen == ["runs/mine", "runs/mine", "runs/mine", "smollm2"]
    assert main(["chat", "a", "--model", "b", "--message", "hi"]) == 2


def test_two_models_are_refused_in_one_line(capsys):
    assert main(["chat", "a", "--model", "b", "--message", "hi"]) == 2
    assert capsys.readouterr().err.strip() == "error: two models given: 'a' and --model 'b'; give one"


@pytest.mark.real_model
def test_a_chat_keeping_its_cache_answers_as_one_encoding_each_turn_afresh(capsys, monkeypatch):
    from arlm.decoding.chat import ChatSession

    reused = []
    reply = ChatSession.reply
    monkeypatch.setattr(
        ChatSession, "reply", lambda self, *a, **kw: (reply(self, *a, **kw), reused.append(self.reused))[0]
    )
    questions = ["Name a fruit.", "What colour is it?", "Name another one."]
    args = ["chat", *[f"--message={q}" for q in questions], "--temperature", "0", "--max-new-tokens", "24"]
    assert main([*args, "--no-reuse-prefix"]) == 0
    afresh = capsys.readouterr().out
    assert main([*args, "--stats"]) == 0
    out = capsys.readouterr()
    assert out.out == afresh
    assert reused[:3] == [0, 0, 0] and reused[3] == 0 and 0 < reused[4] < reused[5]
    kept = [int(n) for n in re.findall(r"tokens/s\); .* (\d+) of \d+ prompt tokens kept from the last turn", out.err)]
    assert kept == reused[3:]  # --stats says it, a line a turn


@pytest.mark.real_model
def test_json_keeps_each_answer_to_the_schema(capsys):
    schema = '{"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}'
    args = ["chat", "--message", "Name a colour.", "--message", "Another one.", "--json", schema, "--temperature", "0"]
    assert main(args) == 0
    answers = [a.strip() for a in capsys.readouterr().out.split("assistant> ")[1:]]
    assert len(answers) == 2 and all(isinstance(json.loads(a)["colour"], str) for a in answers)


@pytest.mark.real_model
def test_json_with_a_strategy_it_cannot_hold_is_refused_once_before_any_line_is_read(capsys, monkeypatch):
    """Piped lines were each refused in turn ("assistant> " on stdout, the error on stderr) and the chat ended with
    exit code 0; a refused message wrote the cue before its error."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("hi\nhello\n"))
    assert main(["chat", "--json", "--strategy", "beam", "--max-new-tokens", "4"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == "error: JSON output is decoded by greedy decoding or sampling, not beam\n"
    assert main(["chat", "--message", "word " * 9000, "--max-new-tokens", "4"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: the message is ")


@pytest.mark.slow
@pytest.mark.real_model
def test_ctrl_c_stops_the_answer_and_the_chat_goes_on_from_what_was_said(capsys, monkeypatch):
    import signal

    from arlm.commands import chat

    config = GenerationConfig(strategy="greedy", max_new_tokens=24)
    question = "Name three colours."
    full = chat_command("smollm2", config, messages=[question], device="cpu")[0]
    sigints = {"after": 3, "times": 1}

    class Interrupting(chat.Streamer):  # Ctrl-C typed while the answer is written
        def __call__(self, tokens):
            super().__call__(tokens)
            if len(self.ids) == sigints["after"]:
                for _ in range(sigints["times"]):
                    signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(chat, "Streamer", Interrupting)
    typed = iter([question, "And one more?"])

    def read(prompt: str) -> str:
        line = next(typed, None)
        if line is None:
            raise EOFError
        return line

    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # (as a shell starts it; `&` ignores it)
    try:
        answers = chat_command("smollm2", config, device="cpu", read=read)
        assert len(answers) == 2 and answers[0] and full.startswith(answers[0]) and len(answers[0]) < len(full)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        sigints.update(times=2)  # a second Ctrl-C before the first is seen: the chat ends, as at the prompt
        typed = iter([question])
        with pytest.raises(KeyboardInterrupt):
            chat_command("smollm2", config, device="cpu", read=read)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # started with SIGINT ignored: it stays ignored
        with chat._interruptible(True) as interrupted:
            assert interrupted is None and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.slow
@pytest.mark.real_model
def test_piped_input_gets_no_prompt_on_stdout(capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("What is the capital of France?\n"))
    assert main(["chat", "--temperature", "0", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("assistant> ") and "Paris" in out and "you>" not in out


def test_a_piped_windows_line_end_is_not_part_of_the_message(monkeypatch):
    """`printf 'hi\r\n' | arlm chat` sent "hi\r" to the model (input() drops only the LF)."""
    import io

    from arlm.commands.chat import _read_piped

    monkeypatch.setattr("sys.stdin", io.StringIO("hi there\r\nnext\n"))
    assert [_read_piped(""), _read_piped("")] == ["hi there", "next"]


def test_a_chat_says_when_it_drops_its_oldest_exchanges(capsys):
    """The conversation outgrowing the context lost its first turns without a word: the model could no longer answer
    "what was my first question?", and nothing said why."""
    from arlm.commands.chat import _turn
    from tests.decoding.test_chat import _session

    session = _session()
    notes = []
    for i in range(6):
        _turn(session, f"question number {i} about the data model", typed=False, stats=False)
        notes += [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes and all("oldest exchange(s) were dropped" in note for note in notes)
    assert "context (96 tokens, 8 of them kept for the answer)" in notes[0]
