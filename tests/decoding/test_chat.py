import dataclasses

import pytest
import torch

from arlm.config import GenerationConfig, ModelConfig
from arlm.data.chat import encode_conversation
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


def _session(block=96, max_new=8, reuse_prefix=True):
    tok = train_tokenizer("bpe", tiny_text(10), 300)
    tok.chat_template = TEMPLATE
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(flavour="llama", vocab_size=tok.vocab_size, block_size=block, n_layer=1, n_head=2, d_model=16)
    ).eval()
    config = GenerationConfig(strategy="greedy", max_new_tokens=max_new)
    return ChatSession(model, tok, config, system="be brief", reuse_prefix=reuse_prefix)


def test_session_keeps_the_conversation_and_drops_old_turns_to_fit():
    session, dropped = _session(), 0
    for i in range(6):
        session.reply(f"question number {i} about the data model")
        dropped += session.stats["dropped_exchanges"]
    assert session.turns[-2]["content"] == "question number 5 about the data model"
    assert session.turns[0]["role"] == "user" and len(session.turns) < 12  # the oldest turns were dropped
    assert dropped == 6 - len(session.turns) // 2  # each drop counted in the turn that made it
    assert len(session.prompt_ids()) <= 96 - 8


def test_models_without_a_template_are_refused():
    tok = train_tokenizer("char", ["abc"], 0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=1, d_model=8))
    with pytest.raises(ArlmError, match="no chat template"):
        ChatSession(model, tok, GenerationConfig())


def test_an_answer_ends_before_its_stop_string_and_is_remembered_so():
    session = _session(max_new=24)
    free = session.reply("question about the data")
    assert len(free) > 4
    stop = free[2:4]
    session = _session(max_new=24)
    session.config.stop = [stop]
    answer = session.reply("question about the data")
    assert answer == free[: free.find(stop)].strip()
    assert session.turns[-1]["content"] == answer


def test_speculative_chat_with_a_draft_answers_as_greedy():
    greedy = _session(max_new=16)
    expected = [greedy.reply(m) for m in ("first question", "and the second one")]
    session = _session(max_new=16)
    torch.manual_seed(1)
    draft = Transformer(dataclasses.replace(session.model.config, n_layer=1, d_model=8)).eval()
    session.config = GenerationConfig(strategy="speculative", temperature=0.0, max_new_tokens=16, num_draft_tokens=3)
    session.draft = draft
    assert [session.reply(m) for m in ("first question", "and the second one")] == expected


def test_a_chat_refuses_several_answers_a_turn():
    session = _session()
    with pytest.raises(ArlmError, match="--num-return-sequences"):
        ChatSession(session.model, session.tokenizer, GenerationConfig(num_return_sequences=2, max_new_tokens=8))


def test_an_answer_longer_than_the_context_is_refused_at_once():
    session = _session(block=96)
    with pytest.raises(ArlmError, match="max_new_tokens 96 leaves no room .* context of 96 tokens"):
        ChatSession(session.model, session.tokenizer, GenerationConfig(max_new_tokens=96))


def test_a_turn_encodes_only_what_the_last_turns_cache_does_not_hold():
    questions = ("first question", "and the second one", "a third")
    afresh = _session(block=160, max_new=12, reuse_prefix=False)
    expected = [afresh.reply(q) for q in questions]
    assert afresh.reused == 0
    session = _session(block=160, max_new=12)
    answers, reused, prompts = [], [], []
    for q in questions:
        answers.append(session.reply(q))
        reused.append(session.reused)
        prompts.append(len(encode_conversation(session.system + session.turns[:-1], session.tokenizer)))
    assert answers == expected
    assert reused[0] == 0
    assert prompts[0] <= reused[1] < prompts[1] and prompts[1] <= reused[2] < prompts[2]  # the last prompt at least


def test_a_message_too_long_for_the_context_leaves_the_conversation_as_it_was():
    """It was refused after the search for room had dropped every earlier exchange: the conversation was gone."""
    session = _session()
    for i in range(2):
        session.reply(f"question {i}")
    before = [dict(turn) for turn in session.turns]
    with pytest.raises(ArlmError, match="the context leaves room for"):
        session.reply("word " * 200)
    assert session.turns == before and session.dropped == 0
