import math

import numpy as np
import pytest
import torch

from arlm.config import ModelConfig
from arlm.data.batches import BatchSampler
from arlm.evaluation.perplexity import evaluate_batches, result, sliding_window, sliding_windows
from arlm.model.transformer import Transformer
from tests.helpers import hf_pair, hf_rounding_cache


def _model(block=32):
    torch.manual_seed(0)
    return Transformer(
        ModelConfig(flavour="llama", vocab_size=40, block_size=block, n_layer=1, n_head=2, d_model=16)
    ).eval()


@torch.no_grad()
def _nll_by_hand(model, ids, context):
    """Token t scored with the context the sliding window gives it, one forward per token."""
    total = 0.0
    for t in range(1, len(ids)):
        x = ids[max(0, t - context) : t][None]
        total -= float(torch.log_softmax(model(x)[0, -1], -1)[ids[t]])
    return total / (len(ids) - 1)


def test_one_window_equals_the_mean_nll_of_every_token():
    model = _model()
    ids = torch.randint(0, 40, (30,))
    res = sliding_window(model, ids, context=32, stride=16)
    assert res.tokens == 29
    assert math.isclose(res.loss, _nll_by_hand(model, ids, 32), rel_tol=1e-5)


@torch.no_grad()
def _strided_by_hand(model, ids, context, stride):
    """The strided recipe written out token by token: windows start at 0, stride, 2 stride, ...; target j is scored
    by the first window that reaches it, its history every id from that window's start up to j."""
    n, total = len(ids), 0.0
    for j in range(1, n):
        begin = next(b for b in range(0, n, stride) if min(b + context, n - 1) >= j)
        total -= float(torch.log_softmax(model(ids[begin:j][None])[0, -1], -1)[ids[j]])
    return total / (n - 1)


@pytest.mark.parametrize(("context", "stride"), [(8, 4), (8, 3), (8, 8), (8, 1), (5, 2)])
def test_sliding_windows_score_each_token_once_with_the_history_its_window_gives(context, stride):
    """The bound this test had (between the losses at 4 and at 8 tokens of history, +-0.05) held for a model whose
    loss hardly moves with its history, so one token of history passed too: a model that reads its history, and
    each token's score by hand."""
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=40, block_size=8, n_layer=1, n_head=2, d_model=16, init_std=0.5)
    model = Transformer(config).eval()
    ids = torch.randint(0, 40, (50,))
    res = sliding_window(model, ids, context=context, stride=stride)
    assert res.tokens == 49
    assert math.isclose(res.loss, _strided_by_hand(model, ids, context, stride), rel_tol=1e-5)
    assert abs(res.loss - _nll_by_hand(model, ids, 1)) > 1e-3  # (the history moves it 100x the tolerance)


def test_bits_per_byte_and_perplexity():
    model = _model()
    ids = torch.randint(0, 40, (30,))
    res = sliding_window(model, ids, context=32, stride=32, token_bytes=np.full(40, 2))
    assert res.bytes == 2 * 29
    assert math.isclose(res.bits_per_byte, res.loss / math.log(2) / 2, rel_tol=1e-9)
    assert math.isclose(res.perplexity, math.exp(res.loss))


def test_batches_over_a_split_match_sliding_windows_with_stride_equal_to_context():
    model = _model(block=8)
    tokens = np.random.default_rng(0).integers(0, 40, 8 * 6 + 1)
    sampler = BatchSampler(tokens, np.array([0, len(tokens)]), block_size=8, seed=0)
    nll, count, _ = evaluate_batches(model, sampler.eval_batches(batch_size=4))
    windows = sliding_window(model, torch.from_numpy(tokens).long(), context=8, stride=8)
    assert count == windows.tokens == 48
    assert math.isclose(result(nll, count).loss, windows.loss, rel_tol=1e-5)


@pytest.mark.hf
def test_windows_over_a_bfloat16_cache_score_as_transformers_over_a_rounding_one(tmp_path):
    """sliding_window(kv_dtype=bfloat16) (`arlm eval perplexity --kv-dtype`): each window's keys and values as a
    bfloat16 cache holds them, transformers' loss on the same windows with its cache rounding to bfloat16; a float32
    cache scores as no cache."""
    ours, theirs = hf_pair(tmp_path, block_size=32)
    ids = torch.randint(0, ours.config.vocab_size, (70,), generator=torch.Generator().manual_seed(0))
    nll, count = 0.0, 0
    with torch.no_grad():
        for begin, end, skip in sliding_windows(70, 32, 16):
            logits = theirs(ids[None, begin:end], cache=hf_rounding_cache(), use_cache=True).logits
            targets = ids[begin + 1 + skip : end + 1]
            nll -= float(torch.log_softmax(logits[0, skip:], -1).gather(1, targets[:, None]).sum())
            count += len(targets)
    rounded = sliding_window(ours, ids, context=32, stride=16, kv_dtype=torch.bfloat16)
    assert rounded.tokens == count and math.isclose(rounded.loss, nll / count, rel_tol=1e-6), (
        rounded.loss,
        nll / count,
    )
    plain = sliding_window(ours, ids, context=32, stride=16)
    wide = sliding_window(ours, ids, context=32, stride=16, kv_dtype=torch.float32)
    assert math.isclose(wide.loss, plain.loss, rel_tol=1e-6)  # another SDPA call: float32's last bits differ
    assert not math.isclose(rounded.loss, plain.loss, rel_tol=2e-6)  # the rounding tells (1e-5 here)
