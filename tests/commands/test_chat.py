import pytest

from arlm.commands.chat import chat_command
from arlm.config import GenerationConfig


@pytest.mark.real_model
def test_smollm2_answers_a_question(capsys):
    config = GenerationConfig(strategy="greedy", max_new_tokens=24)
    answers = chat_command("smollm2", config, messages=["What is the capital of France?"], device="cpu")
    assert "Paris" in answers[0]
    assert "Paris" in capsys.readouterr().out  # streamed
