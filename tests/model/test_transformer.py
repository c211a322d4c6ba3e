import pytest
import torch

from arlm.config import ModelConfig
from arlm.data.batches import document_mask
from arlm.model.transformer import Transformer

FLAVOURS = {
    "gpt2": dict(flavour="gpt2", bias=True),
    "llama": dict(flavour="llama", n_kv_head=2),
    "gpt2-untied": dict(flavour="gpt2", tie_embeddings=False),
}


def _model(attention="sdpa", **kw) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=61, block_size=48, n_layer=2, n_head=4, d_model=32, attention=attention, **kw)
    return Transformer(config).eval()


def _pair(**kw):
    sdpa = _model("sdpa", **kw)
    naive = _model("naive", **kw)
    naive.load_state_dict(sdpa.state_dict())
    return sdpa, naive


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_backends_agree(flavour):
    sdpa, naive = _pair(**FLAVOURS[flavour])
    x = torch.randint(0, 61, (3, 40))
    torch.testing.assert_close(sdpa(x), naive(x), rtol=1e-5, atol=1e-5)
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[0, :7] = 0  # left padding
    torch.testing.assert_close(sdpa(x, attention_mask=mask), naive(x, attention_mask=mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_causality(flavour, attention):
    model = _model(attention, **FLAVOURS[flavour])
    x = torch.randint(0, 61, (1, 32))
    base = model(x)
    for t in (0, 5, 31):
        changed = x.clone()
        changed[0, t] = (changed[0, t] + 1) % 61
        out = model(changed)
        torch.testing.assert_close(out[:, :t], base[:, :t], rtol=0, atol=0)
        assert not torch.allclose(out[:, t], base[:, t])


@pytest.mark.parametrize("attention", ["sdpa", "naive"])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_kv_cache_matches_full_forward(flavour, attention):
    model = _model(attention, **FLAVOURS[flavour])
    x = torch.randint(0, 61, (2, 30))
    full = model(x)
    cache = model.new_cache(2, 30)
    pieces = [model(x[:, :12], kv_cache=cache)]  # prefill
    pieces += [model(x[:, t : t + 1], kv_cache=cache) for t in range(12, 20)]  # one token a step
    pieces.append(model(x[:, 20:], kv_cache=cache))  # a chunk (speculative verification)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    cache.rollback(25)
    torch.testing.assert_close(model(x[:, 25:], kv_cache=cache), full[:, 25:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_left_padding_gives_the_unpadded_logits(flavour):
    model = _model(**FLAVOURS[flavour])
    x = torch.randint(0, 61, (1, 20))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 20, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, 5:], model(x), rtol=1e-5, atol=1e-5)


def test_document_mask_isolates_documents():
    model = _model(flavour="llama")
    a, b = torch.randint(1, 61, (1, 10)), torch.randint(1, 61, (1, 12))
    joined = torch.cat([a, b], dim=1)
    doc = torch.zeros(22, dtype=torch.long)
    doc[10:] = 1
    mask = (doc[:, None] == doc[None, :])[None]  # (1, T, T)
    out = model(joined, attention_mask=mask)
    torch.testing.assert_close(out[:, :10], model(a), rtol=1e-5, atol=1e-5)
    # RoPE is relative: the second document alone gives the same logits at shifted positions
    torch.testing.assert_close(out[:, 10:], model(b), rtol=1e-4, atol=1e-4)


def test_packed_documents_under_the_document_mask_are_scored_as_if_alone():
    """[a, EOS, b] under data.batches.document_mask: the EOS's prediction (b's first token) is [EOS, b]'s alone, not
    one that saw a; a's are a's alone."""
    model, eos = _model(flavour="llama"), 0
    a, b = torch.randint(1, 61, (1, 9)), torch.randint(1, 61, (1, 12))
    b_alone = torch.cat([torch.tensor([[eos]]), b], dim=1)  # (1, 13)
    packed = torch.cat([a, b_alone], dim=1)  # (1, 22)
    out = model(packed, attention_mask=document_mask(packed, eos))
    torch.testing.assert_close(out[:, :9], model(a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 9:], model(b_alone), rtol=1e-4, atol=1e-4)


def test_tied_weights_and_the_last_logits():
    model = _model(flavour="gpt2")
    assert model.lm_head.weight is model.tok_emb.weight
    x = torch.randint(0, 61, (2, 16))
    torch.testing.assert_close(model(x, num_logits=1), model(x)[:, -1:])
    assert model(x, num_logits=1).shape == (2, 1, 61)


def test_grouped_query_attention_has_fewer_kv_parameters():
    mha = _model(flavour="llama")
    gqa = _model(flavour="llama", n_kv_head=1)
    assert gqa.blocks[0].attn.qkv.weight.shape[0] == 32 + 2 * 8
    assert gqa.num_params() < mha.num_params()


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="exceeds block_size"):
        _model(flavour="gpt2")(torch.zeros(1, 49, dtype=torch.long))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_attention_matches_naive_on_gpu(dtype):
    sdpa, naive = _pair(flavour="llama", n_kv_head=2)
    sdpa, naive = sdpa.cuda().to(dtype), naive.cuda().to(dtype)
    x = torch.randint(0, 61, (4, 48), device="cuda")
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(sdpa(x).float(), naive(x).float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("flavour", ["gpt2", "llama"])
@pytest.mark.parametrize("tied", [True, False])
def test_from_weights_equals_a_drawn_model_given_the_same_weights(flavour, tied):
    """Built without random draws (meta, then assigned): the same logits, tensors and tying as load_state_dict."""
    reference = _model(flavour=flavour, tie_embeddings=tied)
    config = reference.config
    state = {k: v.clone() for k, v in reference.state_dict().items() if not (tied and k == "lm_head.weight")}
    state = {k: v.to(torch.bfloat16) if k.endswith("norm.weight") else v for k, v in state.items()}  # cast as copied
    reference.load_state_dict(state, strict=False)
    built = Transformer.from_weights(config, state).eval()
    assert all(p.dtype == torch.float32 and not p.is_meta for p in (*built.parameters(), *built.buffers()))
    assert (built.lm_head.weight is built.tok_emb.weight) == tied and built.num_params() == reference.num_params()
    ids = torch.randint(0, config.vocab_size, (2, 12))
    assert torch.equal(built(ids), reference(ids))
    if flavour == "llama":
        assert torch.equal(built.rotary.cos, reference.rotary.cos)
        assert torch.equal(built.rotary.sin, reference.rotary.sin)


def test_from_weights_refuses_a_missing_or_misshapen_tensor():
    model = _model(flavour="llama")
    state = model.state_dict()
    with pytest.raises(RuntimeError, match="Missing key"):
        Transformer.from_weights(model.config, {k: v for k, v in state.items() if k != "norm.weight"})
    with pytest.raises(RuntimeError, match="size mismatch"):
        Transformer.from_weights(model.config, {**state, "norm.weight": torch.ones(3)})


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("tied", [True, False])
def test_an_int_model_counts_the_weights_it_quantized(kind, tied):
    """An int8 / int4 layer holds its weight as codes in buffers: the count is still the weight's (it read 0.04M of
    SmolLM2's 135M at int4), and so are the FLOPs MFU divides by."""
    from arlm.model.inference import optimize_for_decoding
    from arlm.model.quant import quantize_model

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=64, block_size=48, n_layer=2, n_head=4, d_model=64, flavour="llama", tie_embeddings=tied
    )
    model = Transformer(config).eval()
    count, flops = model.num_params(), model.flops_per_token(32)
    quantized = optimize_for_decoding(quantize_model(model, kind))
    assert [n for n, p in quantized.named_parameters() if p.dim() == 2] == ["tok_emb.weight"]  # a float lookup
    assert quantized.num_params() == count and quantized.flops_per_token(32) == flops
    assert quantized.num_params(embeddings=False) == count - (0 if tied else 64 * 64)
