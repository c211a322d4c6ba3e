"""A k-token forward with a KV cache gives each row the bits that k one-token forwards give on the CPU (what makes
a speculative verification agree with greedy steps exactly): in 16 bits, in float32 with the batch-invariant
decoding layout, and with int8 / int4 weights whose kernels round their inputs to bfloat16 (where 1e-7 differences
would otherwise become other tokens). Attention of a verification runs query by query, in arlm's kernel where it is
built (model/attention.c) and in PyTorch's ops elsewhere (model/attention.py); the test fails when it runs all queries
at once. The kernel is also checked against PyTorch's ops here: the same cache bits, SDPA's output."""

import pytest
import torch

from arlm.config import ModelConfig
from arlm.decoding.drafters import MAX_ADAPTIVE_DRAFT
from arlm.errors import ArlmError
from arlm.model import native
from arlm.model.attention import STEPWISE_QUERIES
from arlm.model.inference import optimize_for_decoding
from arlm.model.quant import quantize_model
from arlm.model.transformer import Transformer


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, "int8", "int4"])
@pytest.mark.parametrize("attention", ["arlm", "pytorch"])
def test_k_token_forward_equals_one_token_steps(dtype, attention, monkeypatch):
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=64, init_std=0.3)
    model = Transformer(config).eval()
    quantized = isinstance(dtype, str)  # the 64-output head stays float (int4 packs outputs by 16)
    model = quantize_model(model, dtype, head=False) if quantized else model.to(dtype)
    model = optimize_for_decoding(model, batch_invariant=True)  # float Linear layers: batch-invariant
    if attention == "pytorch":  # the layers keep the kernels they were built with; attention takes PyTorch's ops
        monkeypatch.setenv("ARLM_NATIVE", "0")
    ids = torch.randint(0, 64, (1, 20), generator=torch.Generator().manual_seed(0))  # (1, 20)
    with torch.no_grad():
        cache = model.new_cache(1, 64)
        model(ids[:, :10], kv_cache=cache)
        steps = torch.cat([model(ids[:, i : i + 1], kv_cache=cache)[0] for i in range(10, 20)])  # (10, V)
        cache.rollback(10)
        many = model(ids[:, 10:], kv_cache=cache)[0]  # (10, V)
    assert torch.equal(steps, many)


def test_every_verification_width_attends_query_by_query():
    """The widest block speculative decoding verifies (adaptive drafts, plus the last accepted token) is within
    the widths that attend query by query, so that it gives the bits of one-token steps."""
    assert MAX_ADAPTIVE_DRAFT + 1 <= STEPWISE_QUERIES


needs_kernels = pytest.mark.skipif(native.library() is None, reason="this machine cannot build arlm's kernels")


def _one_layer(dtype: torch.dtype) -> Transformer:
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=1, n_head=4, n_kv_head=2, d_model=128)
    torch.manual_seed(0)
    return Transformer(config).eval().to(dtype)


def _cached_forwards(model: Transformer, ids: torch.Tensor, mask: torch.Tensor | None = None, kv=None):
    """Logits of a 10-token prefill, a 5-token verification and two steps, and the cache (of dtype kv, None: the
    model's) they leave."""
    cache = model.new_cache(len(ids), 64, dtype=kv)
    with torch.no_grad():
        logits = [model(ids[:, :10], kv_cache=cache, attention_mask=None if mask is None else mask[:, :10])]
        logits.append(model(ids[:, 10:15], kv_cache=cache, attention_mask=None if mask is None else mask[:, :15]))
        for i in (15, 16):
            logits.append(
                model(ids[:, i : i + 1], kv_cache=cache, attention_mask=None if mask is None else mask[:, : i + 1])
            )
    return torch.cat(logits, dim=1), cache


@needs_kernels
@pytest.mark.parametrize(
    ("dtype", "kv"), [(torch.float32, None), (torch.bfloat16, None), (torch.float32, torch.bfloat16)]
)
@pytest.mark.parametrize("padded", [False, True])
def test_arlms_attention_kernel_writes_pytorchs_cache_and_attends_as_sdpa(dtype, kv, padded, monkeypatch):
    """The kernel (model/attention.c) rotates and writes keys and values to the same bits as PyTorch's ops, and its
    attention equals SDPA's up to float32 rounding; with left padding too; in a cache of the model's dtype or a
    bfloat16 one under float32 rows (GenerationConfig.kv_dtype)."""
    model = _one_layer(dtype)
    ids = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))  # (2, 17)
    mask = torch.ones(2, 17, dtype=torch.long)
    mask[1, :3] = 0  # row 1 left-padded by three
    ours, ours_cache = _cached_forwards(model, ids, mask if padded else None, kv)
    monkeypatch.setenv("ARLM_NATIVE", "0")  # PyTorch's ops from here
    theirs, their_cache = _cached_forwards(model, ids, mask if padded else None, kv)
    assert ours_cache.k.dtype == (kv or dtype)
    assert torch.equal(ours_cache.k, their_cache.k) and torch.equal(ours_cache.v, their_cache.v)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bfloat16: a 1e-7 difference may move an output's last bit
    torch.testing.assert_close(ours.float(), theirs.float(), atol=tolerance, rtol=0)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads", "hd"), [(4, 2, 32), (6, 2, 64), (8, 2, 64)])
def test_arlms_attention_kernel_gives_a_query_the_same_bits_alone_in_a_batch_or_in_a_slot(dtype, heads, kv_heads, hd):
    """A query's output depends on its own query, keys and values only: 3 rows of 6 new tokens at once equal each row
    alone, token by token, and the same rows decoded in slots of a slot cache. At head size 64 with AVX-512 the batch
    takes each cache head's 3 or 4 query heads together (attention.c's attend_group), a token alone one at a time."""
    generator = torch.Generator().manual_seed(2)
    qkv = torch.randn(3, 6, (heads + 2 * kv_heads) * hd, generator=generator).to(dtype)  # (B, T, W)
    rope = tuple(torch.randn(1, 6, hd, generator=generator) for _ in range(2))  # (1, T, hd) each
    prefix = torch.randn(3, kv_heads, 20, hd, generator=generator).to(dtype)  # earlier positions' keys and values

    def attend(qkv, rope, keys, values, start, **kwargs):
        return native.attend(qkv, native.attention_call(qkv, rope, keys, values, heads, start, **kwargs)[0])

    def cache(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return prefix[:rows].clone(), prefix[:rows].clone()

    keys, values = cache(3)
    together = attend(qkv, rope, keys, values, 7)  # (3, 6, heads hd)
    for b in range(3):
        k, v = prefix[b : b + 1].clone(), prefix[b : b + 1].clone()
        alone = [attend(qkv[b : b + 1, t : t + 1], tuple(r[:, t : t + 1] for r in rope), k, v, 7 + t)
                 for t in range(6)]  # fmt: skip
        assert torch.equal(torch.cat(alone, dim=1), together[b : b + 1])
    keys, values = cache(3)
    slots, positions = torch.tensor([2, 0]), torch.tensor([7, 7])
    in_slots = attend(qkv[[2, 0], :1], tuple(r[:, :1] for r in rope), keys, values, positions, slots=slots)
    assert torch.equal(in_slots, together[[2, 0], :1])
    with pytest.raises(ArlmError):  # a float16 cache would be read as something else: refused
        attend(qkv, rope, keys.half(), values.half(), 7)
