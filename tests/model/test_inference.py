import copy

import pytest
import torch
import torch.nn.functional as F

from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.generate import generate
from arlm.model import inference, native
from arlm.model.inference import (
    ChunkedLinear,
    FusedBlock,
    FusedBlocks,
    NativeLinear,
    NativeRMSNorm,
    PackedEmbedding,
    linear_is_batch_invariant,
    optimize_for_decoding,
    optimize_for_scoring,
)
from arlm.model.quant import Int8Linear, quantize_model
from arlm.model.transformer import Blocks, RMSNorm, Transformer


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_linear_equals_linear(bias):
    linear = torch.nn.Linear(24, 36, bias=bias)
    chunked = ChunkedLinear(linear, chunks=4)
    for shape in ((1, 24), (3, 5, 24), (7, 24)):
        x = torch.randn(shape)
        torch.testing.assert_close(chunked(x), linear(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
def test_optimized_model_decodes_the_same(flavour):
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(flavour=flavour, vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=32, init_std=0.3)
    ).eval()
    x = torch.randint(0, 64, (2, 20))
    before = model(x)
    config = GenerationConfig(strategy="greedy", max_new_tokens=20)
    plain = generate(model, [[1, 2, 3]], config).generated()
    optimize_for_decoding(model, chunks=2)
    assert any(isinstance(m, (ChunkedLinear, NativeLinear)) for m in model.modules())
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    assert generate(model, [[1, 2, 3]], config).generated() == plain


def test_scoring_lays_out_16_bit_models_only():
    """eval's windows: a bfloat16 model scored by the kernels generate samples with (the decoding layout; on CPUs
    without bfloat16 arithmetic PyTorch's 16-bit matmuls run ~6x slower), a float32 one left to MKL."""
    if not native.available():
        pytest.skip("needs arlm's kernels (a C compiler)")
    torch.manual_seed(0)
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=32, init_std=0.3)
    plain = Transformer(config).eval().to(torch.bfloat16)
    wide, scored, decoding = copy.deepcopy(plain).float(), copy.deepcopy(plain), copy.deepcopy(plain)
    x = torch.randint(0, 64, (2, 40))
    with torch.no_grad():
        assert optimize_for_scoring(scored) is scored and isinstance(scored.lm_head, NativeLinear)
        logits = scored(x)
        assert torch.equal(logits, optimize_for_decoding(decoding)(x))  # the very layout generate uses
        torch.testing.assert_close(logits.float(), plain(x).float(), rtol=0.05, atol=0.5)  # bfloat16's roundings
        expected = wide(x)
        assert optimize_for_scoring(wide) is wide and not any(isinstance(m, NativeLinear) for m in wide.modules())
        assert torch.equal(wide(x), expected)


def test_chunked_linear_is_batch_invariant():
    """A row gets the same bits alone as among others (continuous batching relies on it)."""
    torch.manual_seed(0)
    for chunks, (d_in, d_out) in [(1, (32, 50)), (2, (64, 96)), (3, (48, 99))]:
        chunked = ChunkedLinear(torch.nn.Linear(d_in, d_out), chunks=chunks, batch_invariant=True)
        x = torch.randn(9, d_in)
        together = chunked(x)
        for i in range(9):
            assert torch.equal(chunked(x[i : i + 1]), together[i : i + 1])
        assert torch.equal(chunked(x[2:5]), together[2:5])


def test_chunked_linear_computes_rows_alone_where_no_padding_makes_them_agree():
    """Where the probe finds no padding (pad None), each row is computed alone: invariant, and the same product."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 99)
    chunked = ChunkedLinear(linear, chunks=3, batch_invariant=True)
    chunked.pad = None
    x = torch.randn(5, 48)
    together = chunked(x)
    assert all(torch.equal(chunked(x[i : i + 1]), together[i : i + 1]) for i in range(5))
    torch.testing.assert_close(together, linear(x), rtol=1e-5, atol=1e-5)
    assert chunked(x[:0]).shape == (0, 99)


def test_batch_invariance_is_the_default_for_16_bit_weights_only():
    """16-bit speculative verification needs it (tests/model/test_attention.py); float32 batch 1 goes faster
    without it in the chunked layout; the server asks for it in every dtype. A 16-bit Linear whose own kernel is
    invariant stays; a bfloat16 one takes arlm's kernel where the CPU has it, a float32 one where it is built (both
    invariant by construction)."""
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=1, n_head=4, d_model=32)
    for dtype, asked, expected in [(torch.float32, None, False), (torch.bfloat16, None, True),
                                   (torch.float16, None, True), (torch.float32, True, True)]:  # fmt: skip
        model = optimize_for_decoding(Transformer(config).eval().to(dtype), chunks=2, batch_invariant=asked)
        chunked = [m for m in model.modules() if isinstance(m, ChunkedLinear)]
        kept = [m for m in model.modules() if type(m) is torch.nn.Linear]
        ours = [m for m in model.modules() if isinstance(m, NativeLinear)]
        assert chunked or kept or ours
        ours_expected = native.available() if dtype == torch.bfloat16 else dtype == torch.float32
        assert bool(ours) == (ours_expected and native.available()), dtype
        assert all(m.batch_invariant == expected for m in chunked), (dtype, asked)
        assert all(linear_is_batch_invariant(m.weight.detach()) for m in kept), (dtype, asked)
        assert dtype != torch.float32 or not kept


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine (model/native.py)")
def test_float32_weights_are_packed_and_a_tied_table_once():
    """A float32 model's Linears take the packed layout; a head tied to the embedding too, the embedding then reading
    rows of the packed table (the same values, no second copy); the logits stay those of the model as built."""
    config = ModelConfig(flavour="llama", vocab_size=70, block_size=64, n_layer=2, n_head=4, d_model=32)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    ids = torch.randint(0, 70, (2, 9))
    table = model.tok_emb.weight.detach().clone()  # (V, C)
    held = sum(t.numel() for t in [*model.parameters(), *model.buffers()])  # the tied table counted once
    with torch.no_grad():
        before = model(ids)
    optimize_for_decoding(model)
    kinds = {name: m.kind for name, m in model.named_modules() if isinstance(m, NativeLinear)}
    assert kinds and set(kinds.values()) == {4} and "lm_head" in kinds
    assert isinstance(model.tok_emb, PackedEmbedding)
    assert torch.equal(model.tok_emb(torch.arange(70)), table)  # every row, the last tile's 6 included
    assert torch.equal(model.tok_emb(ids), table[ids])  # (B, T, C)
    after = sum(t.numel() for t in {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}.values())
    assert after == held + (80 - 70) * 32  # the table once, its 70 rows padded to 5 tiles of 16
    with torch.no_grad():
        assert torch.allclose(model(ids), before, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine (model/native.py)")
def test_a_weight_shared_but_not_with_an_embedding_is_read_in_place():
    """Two Linears sharing one weight: packing either would hold a second copy, so both read it where it is."""
    shared, own, other = (torch.nn.Linear(32, 48, bias=False) for _ in range(3))
    other.weight = shared.weight
    model = torch.nn.ModuleList([shared, own, other])
    optimize_for_decoding(model)
    assert [m.kind for m in model] == [3, 4, 3]


def test_the_probe_finds_a_kernel_that_rounds_by_the_number_of_rows(monkeypatch):
    """A kernel whose bits change with the number of rows (from 5 on, as blocked kernels do) fails the probe; a
    padded layout, invariant by construction, passes."""
    weight = torch.randn(48, 16).to(torch.bfloat16)
    monkeypatch.setattr(inference, "_PROBED", {})
    real = F.linear
    monkeypatch.setattr(inference.F, "linear", lambda x, w: real(x, w) * (1 + 2**-7 * (x.shape[0] >= 5)))
    assert not linear_is_batch_invariant(weight, rows=8)
    monkeypatch.setattr(inference, "_PROBED", {})
    layer = ChunkedLinear(torch.nn.Linear(16, 48), chunks=2, batch_invariant=True).to(torch.bfloat16)
    monkeypatch.setattr(inference.F, "linear", lambda x, w: layer(x))
    assert linear_is_batch_invariant(weight, rows=8)


LAYOUTS = [(torch.float32, True, 64), (torch.float32, True, 50), (torch.float32, True, 200)]
LAYOUTS += [(torch.float32, False, 50), (torch.bfloat16, True, 64), (torch.bfloat16, True, 352)]


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine (model/native.py)")
@pytest.mark.parametrize(("dtype", "pack", "outputs"), LAYOUTS)
@pytest.mark.parametrize("bias", [False, True])
def test_native_linear_is_a_matmul_and_batch_invariant(dtype, pack, outputs, bias):
    """Each output is the exact product of the row and weight (bfloat16: rounded once to bfloat16), up to float32
    summation; a row's bits do not depend on the rows beside it, at any number of rows (one block up to 16 rows, 6
    on AVX2, then blocks as even as possible: 17 as 9 + 8, 37 as blocks of 7 and 8; 2 to 4 rows over 3 tiles side by
    side in chunks of k (200 outputs: whole groups and a rest), more than one block in passes of 256 inputs and a
    rest (AVX-512, from 2 rows: blocks of up to 8 over 3 tiles, several in passes of 128 and a rest, the last tiles
    one by one), or 3 or 4 and a rest in place), float32 packed (outputs past a multiple of 16 too) or
    read in place; bfloat16's one row 8 tiles side by side and the rest of a thread's share (352 outputs: 22 tiles)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(320, outputs, bias=bias).to(dtype)
    layer = NativeLinear(linear, pack=pack)
    assert layer.kind == (0 if dtype == torch.bfloat16 else 4 if pack else 3)
    held = {0: lambda: native.bf16_weight(layer.tiles), 3: lambda: layer.weight}
    held[4] = lambda: native.unpack_f32(layer.packed, outputs)
    assert torch.equal(held[layer.kind](), linear.weight)
    x = torch.randn(37, 320).to(dtype)  # (M, in)
    y = layer(x)  # (M, out)
    exact = x.double() @ linear.weight.double().t()  # (M, out)
    product = y.double() - (linear.bias.double() if bias else 0)
    assert y.dtype == dtype and y.shape == (37, outputs)
    relative, absolute = (2**-7, 2e-2) if dtype == torch.bfloat16 else (1e-6, 1e-5)
    assert ((product - exact).abs() <= exact.abs() * relative + absolute).all()
    for rows in (1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 15, 16, 17, 32):
        assert torch.equal(layer(x[:rows]), y[:rows]), rows
    assert torch.equal(layer(x[20:21]), y[20:21]) and torch.equal(layer(x.flip(0)).flip(0), y)
    assert torch.equal(layer(x.reshape(1, 37, 320)), y.reshape(1, 37, outputs))
    assert not NativeLinear.fits(torch.nn.Linear(96, 50).to(torch.bfloat16))
    assert NativeLinear.fits(torch.nn.Linear(96, 50)) and not NativeLinear.fits(torch.nn.Linear(96, 64).half())


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine (model/native.py)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_rms_norm_equals_the_module_and_is_batch_invariant(dtype):
    """Within float32 summation order of the module's own result (bfloat16: at most one bfloat16 step where a value
    sits on a rounding boundary); a row's bits do not depend on the other rows; gradients go to the module."""
    torch.manual_seed(0)
    norm = RMSNorm(72, 1e-5)  # 72: not a multiple of the kernel's 16 lanes
    with torch.no_grad():
        norm.weight.copy_(torch.randn(72))
    norm = norm.to(dtype)
    ours = NativeRMSNorm(norm)
    x = (torch.randn(2, 9, 72) * 3).to(dtype)  # (B, T, C)
    with torch.no_grad():
        y, expected = ours(x), norm(x)
        assert y.dtype == dtype and y.shape == x.shape
        tolerance = 1e-6 if dtype == torch.float32 else 2**-7
        assert ((y.float() - expected.float()).abs() <= expected.float().abs() * tolerance + 1e-6).all()
        if dtype == torch.bfloat16:
            assert (y == expected).float().mean() > 0.99
        rows = x.reshape(18, 72)
        assert all(torch.equal(ours(rows[i : i + 1]), ours(rows)[i : i + 1]) for i in range(18))
    leaf = x.float().requires_grad_() if dtype == torch.float32 else None
    if leaf is not None:
        ours(leaf).sum().backward()
        assert leaf.grad is not None


def _fused_model(dtype) -> Transformer:
    """A two-block Llama model at a dtype whose blocks all run on arlm's kernels, laid out for decoding."""
    config = ModelConfig(flavour="llama", vocab_size=128, block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=128)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    if dtype == "q8_0":
        _q8_0_blocks(model)
    else:
        model = quantize_model(model, dtype, head=False) if isinstance(dtype, str) else model.to(dtype)
    return optimize_for_decoding(model)


def _q8_0_blocks(model: Transformer) -> None:
    """Every Linear of the blocks as GGUF's Q8_0 blocks would hold it (d = max |w| / 127 per 32 inputs, in float16)."""
    for parent in list(model.blocks.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                groups = child.weight.detach().reshape(child.out_features, -1, 32)  # (out, in/32, 32)
                d = (groups.abs().amax(-1) / 127).half().float().clamp(min=2.0**-24)  # (out, in/32)
                codes = torch.round(groups / d[..., None]).clamp(-128, 127).to(torch.int8).flatten(1)  # (out, in)
                setattr(parent, name, Int8Linear.from_blocks(codes, d))


def _decode(model: Transformer, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a prefill, a 5-token verification and three steps over left-padded rows, and the cache's keys."""
    cache = model.new_cache(len(ids), 64)
    with torch.no_grad():
        logits = [model(ids[:, :8], kv_cache=cache, attention_mask=mask[:, :8])]
        logits.append(model(ids[:, 8:13], kv_cache=cache, attention_mask=mask[:, :13]))
        logits += [model(ids[:, i : i + 1], kv_cache=cache, attention_mask=mask[:, : i + 1]) for i in range(13, 16)]
    return torch.cat(logits, dim=1), cache.k


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine (model/native.py)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "int8", "int4", "q8_0"])
def test_a_fused_block_gives_the_bits_its_modules_give(dtype):
    """block.c runs a block's norms, Linears, attention, SwiGLU and residuals in one call with the roundings the
    modules make, and every block of the model in one call (FusedBlocks): logits and cache equal to the same model run
    module by module and block by block, padded rows included."""
    if dtype == torch.bfloat16 and not native.available():
        pytest.skip("arlm's bfloat16 kernel needs AMX (model/native.py)")
    model = _fused_model(dtype)
    assert isinstance(model.blocks, FusedBlocks) and all(isinstance(block, FusedBlock) for block in model.blocks)
    modules, one_by_one = copy.deepcopy(model), copy.deepcopy(model)
    modules.blocks = Blocks(block.block for block in modules.blocks)
    one_by_one.blocks = Blocks(list(one_by_one.blocks))
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))  # (B, 16)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :3] = 0  # row 1 left-padded
    (fused, fused_keys), (theirs, their_keys) = _decode(model, ids, mask), _decode(modules, ids, mask)
    assert torch.equal(fused, theirs) and torch.equal(fused_keys, their_keys)
    assert torch.equal(_decode(one_by_one, ids, mask)[0], theirs)
    model.to("cpu")  # Module._apply: the packed pointers are dropped and packed again on the next call
    assert model.blocks._packed is None and all(block._packed is None for block in model.blocks)
    assert torch.equal(_decode(model, ids, mask)[0], theirs)
    model.blocks[1]._apply(lambda t: t.clone())  # one block alone moves to new tensors: the model's array of blocks
    assert torch.equal(_decode(model, ids, mask)[0], theirs)  # is gathered again from its new pointers, not left stale
    assert model.blocks._packed[1][1] is model.blocks[1]._packed[0]


def test_blocks_not_all_on_arlms_kernels_stay_modules():
    """float16 weights take PyTorch's kernels, GPT-2 blocks are not Llama blocks: neither is fused."""
    for flavour, dtype in (("llama", torch.float16), ("gpt2", torch.float32)):
        config = ModelConfig(flavour=flavour, vocab_size=64, block_size=32, n_layer=1, n_head=4, d_model=64)
        model = optimize_for_decoding(Transformer(config).eval().to(dtype))
        assert not any(isinstance(block, FusedBlock) for block in model.blocks)


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine (model/native.py)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "int8", "int4", "q8_0"])
def test_prefill_many_gives_each_chunk_the_bits_it_gets_alone(dtype):
    """Several sequences' chunks in one forward (the server's prefill): each chunk's logits and cache are those of
    forward() over it alone, whether it starts its cache or continues it, is short enough for the fused kernel alone
    (<= 32 tokens) or goes through SDPA, and keeps one logit or all of them."""
    model = _fused_model(dtype)
    assert inference.rows_invariant(model)
    g = torch.Generator().manual_seed(2)
    cases = [(0, 1, 1), (0, 5, 5), (0, 40, 1), (10, 20, 1), (12, 45, 3)]  # (cached before, new tokens, logits kept)
    prefixes = [torch.randint(0, 128, (1, before), generator=g) for before, _, _ in cases]  # (1, before) each
    chunks = [torch.randint(0, 128, (1, new), generator=g) for _, new, _ in cases]  # (1, new) each

    def caches() -> list:
        made = [model.new_cache(1, 64) for _ in cases]
        with torch.no_grad():
            for cache, prefix in zip(made, prefixes):
                if prefix.shape[1]:
                    model(prefix, kv_cache=cache)
        return made

    alone, shared = caches(), caches()
    with torch.no_grad():
        theirs = [model(ids, kv_cache=c, num_logits=n) for ids, c, (_, _, n) in zip(chunks, alone, cases)]
        ours = model.prefill_many([(ids, c, n) for ids, c, (_, _, n) in zip(chunks, shared, cases)])
    for mine, their, a, b in zip(ours, theirs, shared, alone):
        assert mine.shape == their.shape and torch.equal(mine, their)
        assert a.length == b.length and torch.equal(a.k[:, :, :, : a.length], b.k[:, :, :, : b.length])
        assert torch.equal(a.v[:, :, :, : a.length], b.v[:, :, :, : b.length])


def test_rows_invariant_only_where_every_row_layer_is_on_arlms_kernels():
    """A model as built (PyTorch's Linears), or whose head is not on arlm's kernels, does not share a prefill."""
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=32, n_layer=1, n_head=4, d_model=64)
    model = Transformer(config).eval()
    assert not inference.rows_invariant(model)
    if native.available():
        model = optimize_for_decoding(model)
        assert inference.rows_invariant(model)
        model.lm_head = torch.nn.Linear(64, 64, bias=False)
        assert not inference.rows_invariant(model)


def test_prefill_many_with_position_embeddings_matches_forward_alone():
    """A GPT-2 model (learned positions, PyTorch's kernels: not rows_invariant) through prefill_many: each chunk's
    logits are forward()'s alone up to float32 rounding, at its own cache's positions."""
    torch.manual_seed(0)
    config = ModelConfig(flavour="gpt2", vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=32, init_std=0.3)
    model = Transformer(config).eval()
    assert not inference.rows_invariant(model)
    g = torch.Generator().manual_seed(4)
    chunks = [torch.randint(0, 64, (1, n), generator=g) for n in (3, 9, 1)]
    alone, shared = [model.new_cache(1, 64) for _ in chunks], [model.new_cache(1, 64) for _ in chunks]
    with torch.no_grad():
        for cache_a, cache_b in zip(alone, shared):  # the last two continue a cache already 5 positions long
            if cache_a is not alone[0]:
                prefix = torch.randint(0, 64, (1, 5), generator=g)
                model(prefix, kv_cache=cache_a), model(prefix, kv_cache=cache_b)
        theirs = [model(ids, kv_cache=c, num_logits=2 if ids.shape[1] > 1 else 1) for ids, c in zip(chunks, alone)]
        ours = model.prefill_many([(ids, c, t.shape[1]) for ids, c, t in zip(chunks, shared, theirs)])
    for mine, their, a, b in zip(ours, theirs, shared, alone):
        torch.testing.assert_close(mine, their, rtol=1e-5, atol=1e-5)
        assert a.length == b.length
