"""Decoding parity with transformers on the same weights: greedy and beam search (sequences, order, scores)."""

import pytest
import torch

from arlm.config import GenerationConfig
from arlm.decoding.generate import generate, left_pad
from tests.helpers import hf_generate, hf_pair

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, tmp_path_factory):
    """(our model, transformers' model) with the same random weights."""
    return hf_pair(tmp_path_factory.mktemp(request.param), request.param)


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def test_greedy_identical(pair):
    ours, theirs = pair
    ids, mask = left_pad(PROMPTS, 0)
    out = generate(ours, PROMPTS, GenerationConfig(strategy="greedy", max_new_tokens=25), pad_id=0)
    hf = hf_generate(theirs, ids, mask, max_new_tokens=25, eos_token_id=None)
    assert out.sequences.tolist() == hf.sequences.tolist()


def _eos_for(ours, prompt):
    """A token the greedy continuation reaches early, so beams can end on it."""
    free = generate(ours, [prompt], GenerationConfig(strategy="greedy", max_new_tokens=6)).generated()[0]
    return free[2]


@pytest.mark.parametrize("length_penalty", [1.0, 0.0, -0.7, 2.0])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_beam_search_same_sequences_order_and_scores(pair, length_penalty, early_stopping):
    ours, theirs = pair
    prompt = PROMPTS[0]
    eos = _eos_for(ours, prompt)
    config = GenerationConfig(
        strategy="beam",
        num_beams=4,
        num_return_sequences=2,
        max_new_tokens=12,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
    )
    out = generate(ours, [prompt], config, eos_id=eos, pad_id=eos)
    ids = torch.tensor([prompt])
    hf = hf_generate(
        theirs,
        ids,
        torch.ones_like(ids),
        num_beams=4,
        num_return_sequences=2,
        max_new_tokens=12,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    assert out.sequences.tolist() == hf.sequences.tolist()
    torch.testing.assert_close(out.scores, hf.sequences_scores, rtol=1e-4, atol=1e-4)


def test_beam_search_batched_with_left_padding(pair):
    ours, theirs = pair
    eos = _eos_for(ours, PROMPTS[1])
    config = GenerationConfig(strategy="beam", num_beams=4, num_return_sequences=2, max_new_tokens=10)
    out = generate(ours, PROMPTS, config, eos_id=eos, pad_id=0)
    ids, mask = left_pad(PROMPTS, 0)
    hf = hf_generate(
        theirs, ids, mask, num_beams=4, num_return_sequences=2, max_new_tokens=10, eos_token_id=eos, pad_token_id=0
    )
    assert out.sequences.tolist() == hf.sequences.tolist()
    torch.testing.assert_close(out.scores, hf.sequences_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize("pad", [0, 7])
def test_repetition_penalty_on_a_left_padded_batch(pair, strategy, pad):
    """transformers' generate() does not count the left padding as seen tokens; neither do we."""
    ours, theirs = pair
    beams = 3 if strategy == "beam" else 1
    config = GenerationConfig(strategy=strategy, num_beams=beams, max_new_tokens=12, repetition_penalty=2.5)
    out = generate(ours, PROMPTS, config, pad_id=pad)
    ids, mask = left_pad(PROMPTS, pad)
    hf = hf_generate(
        theirs,
        ids,
        mask,
        num_beams=beams,
        max_new_tokens=12,
        repetition_penalty=2.5,
        eos_token_id=None,
        pad_token_id=pad,
    )
    assert out.sequences.tolist() == hf.sequences.tolist()


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_min_new_tokens(pair, strategy):
    ours, theirs = pair
    prompt = PROMPTS[0]
    eos = _eos_for(ours, prompt)
    beams = 3 if strategy == "beam" else 1
    config = GenerationConfig(
        strategy=strategy, num_beams=beams, max_new_tokens=12, min_new_tokens=7, early_stopping=True
    )
    out = generate(ours, [prompt], config, eos_id=eos, pad_id=eos)
    ids = torch.tensor([prompt])
    hf = hf_generate(
        theirs,
        ids,
        torch.ones_like(ids),
        num_beams=beams,
        max_new_tokens=12,
        min_new_tokens=7,
        early_stopping=True,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    assert out.sequences.tolist() == hf.sequences.tolist()
    assert eos not in out.generated()[0][:7]
