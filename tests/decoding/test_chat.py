import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.data.tokenizers import train_tokenizer
from arlm.decoding.chat import ChatSession, apply_chat_template
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer
from tests.helpers import tiny_text

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_template_rendering():
    messages = [{"role": "user", "content": "hi"}]
    assert apply_chat_template(TEMPLATE, messages, eos_token="</s>") == "<user>hi</s>\n<assistant>"
    assert apply_chat_template(TEMPLATE, messages, add_generation_prompt=False) == "<user>hi\n"
    with pytest.raises(ArlmError, match="chat template: nope"):
        apply_chat_template("{{ raise_exception('nope') }}", messages)


def _session(block=96, max_new=8):
    tok = train_tokenizer("bpe", tiny_text(10), 300)
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(flavour="llama", vocab_size=tok.vocab_size, block_size=block, n_layer=1, n_head=2, d_model=16)
    ).eval()
    return ChatSession(model, tok, GenerationConfig(strategy="greedy", max_new_tokens=max_new), system="be brief")


def test_session_keeps_the_conversation_and_drops_old_turns_to_fit():
    session = _session()
    for i in range(6):
        session.reply(f"question number {i} about the data model")
    assert session.turns[-2]["content"] == "question number 5 about the data model"
    assert session.turns[0]["role"] == "user" and len(session.turns) < 12  # the oldest turns were dropped
    assert len(session.prompt_ids()) <= 96 - 8


def test_models_without_a_template_are_refused():
    tok = train_tokenizer("char", ["abc"], 0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=1, d_model=8))
    with pytest.raises(ArlmError, match="no chat template"):
        ChatSession(model, tok, GenerationConfig())
