import pytest

from arlm.cli import main
from arlm.commands.chat import chat_command
from arlm.config import GenerationConfig


@pytest.mark.real_model
def test_smollm2_answers_a_question(capsys):
    config = GenerationConfig(strategy="greedy", max_new_tokens=24)
    answers = chat_command("smollm2", config, messages=["What is the capital of France?"], device="cpu")
    assert "Paris" in answers[0]
    assert "Paris" in capsys.readouterr().out  # streamed


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
