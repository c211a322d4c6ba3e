"""Chat batches: the loss sees exactly the answers, and a packed conversation trains as if it were alone."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arlm.config import ModelConfig
from arlm.data.batches import IGNORE_INDEX
from arlm.data.chat import render_example
from arlm.data.chat_batches import ChatSampler
from arlm.data.tokenizers import VocabTokenizer
from arlm.model.transformer import Transformer
from arlm.training.loss import next_token_loss
from tests.helpers import CHAT_ALPHABET

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    [
        {"role": "system", "content": "be brief."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three"},
        {"role": "assistant", "content": "four"},
    ],
    [{"role": "user", "content": "what is 2+2?"}, {"role": "assistant", "content": "it is 4."}],
]


def _sampler(mode: str, block_size: int = 192, train_on: str = "assistant") -> tuple[ChatSampler, VocabTokenizer]:
    tok = VocabTokenizer.train("char", [CHAT_ALPHABET], 100)
    rendered = [render_example(m, tok) for m in CONVERSATIONS]
    tokens = np.concatenate([np.asarray(ids) for ids, _ in rendered])
    targets = np.concatenate([np.asarray(t) for _, t in rendered])
    starts = np.cumsum([0] + [len(ids) for ids, _ in rendered])
    lines = np.arange(1, len(rendered) + 1)
    sampler = ChatSampler(
        tokens, starts, targets, lines, source="c.jsonl", block_size=block_size, seed=3, mode=mode,
        train_on=train_on, pad_id=tok.pad_id,
    )  # fmt: skip
    return sampler, tok


def _model(vocab: int, flavour: str) -> Transformer:
    torch.manual_seed(1)
    return Transformer(ModelConfig(flavour=flavour, vocab_size=vocab, block_size=192, n_layer=2, n_head=2, d_model=32))


def test_the_loss_is_the_mean_nll_of_exactly_the_answer_tokens_and_nothing_else_has_a_gradient():
    sampler, tok = _sampler("padded")
    batch = sampler.make_batch([[0], [1]])  # row 0 is shorter: padded
    model = _model(tok.vocab_size, "llama")
    logits = model(batch.x, attention_mask=batch.attention_mask).detach().requires_grad_(True)  # (B, T, V)
    out = next_token_loss(logits, batch.y)
    loss = out.loss_sum / out.count
    loss.backward()
    # the expected targets, by hand: the answers " yo", " two", " four" and each answer's end-of-turn id
    answers = [tok.encode(" yo") + [tok.eos_id], tok.encode(" two") + [tok.eos_id] + tok.encode(" four") + [tok.eos_id]]
    logp = F.log_softmax(logits.detach().float(), dim=-1)
    nll, positions = [], set()
    for row, ids in enumerate(CONVERSATIONS[:2]):
        full, flags = render_example(ids, tok)
        picked = [full[p] for p in range(1, len(full)) if flags[p]]
        assert picked == answers[row]
        for p in range(1, len(full)):
            if flags[p]:
                nll.append(-logp[row, p - 1, full[p]])
                positions.add((row, p - 1))
    assert torch.allclose(loss, torch.stack(nll).mean(), atol=1e-6, rtol=0)
    grad_rows = logits.grad.abs().sum(-1)  # (B, T)
    for row in range(2):
        for t in range(batch.x.shape[1]):
            assert (grad_rows[row, t] > 0) == ((row, t) in positions), (row, t)
    assert batch.attention_mask[0].sum() < batch.x.shape[1]  # row 0 has padding, and it has no gradient


def test_train_on_all_predicts_every_token_of_each_conversation():
    sampler, _ = _sampler("padded", train_on="all")
    batch = sampler.make_batch([[0], [1]])
    assert torch.equal(batch.y != IGNORE_INDEX, batch.attention_mask.bool())


@pytest.mark.parametrize("flavour", ["llama", "gpt2"])
def test_packed_conversations_have_the_loss_they_have_alone(flavour):
    sampler, tok = _sampler("packed")
    assert len(sampler.rows) == 1 and sorted(sampler.rows[0]) == [0, 1, 2]  # all three share one row
    model = _model(tok.vocab_size, flavour).eval()
    batch = sampler.make_batch(sampler.rows)
    logits = model(batch.x, attention_mask=batch.attention_mask)  # (1, T, V)
    at = 0
    for i in sampler.rows[0]:
        x, y = (torch.from_numpy(a)[None] for a in sampler.examples[i])
        alone = next_token_loss(model(x), y).loss_sum
        packed = next_token_loss(logits[:, at : at + x.shape[1]], batch.y[:, at : at + x.shape[1]]).loss_sum
        assert torch.allclose(packed, alone, atol=1e-5, rtol=1e-6), (i, float(packed), float(alone))
        at += x.shape[1]


def test_batches_are_a_function_of_the_step_and_split_into_parts_exactly():
    sampler, _ = _sampler("padded", block_size=64)
    whole = sampler.batch(5, 4)
    again, _ = _sampler("padded", block_size=64)
    halves = [again.batch(5, 4, part, 2) for part in range(2)]
    assert torch.equal(whole.x[:2, : halves[0].x.shape[1]], halves[0].x[:, : whole.x.shape[1]])
    assert [int(m.sum()) for m in whole.attention_mask] == [int(m.sum()) for h in halves for m in h.attention_mask]
