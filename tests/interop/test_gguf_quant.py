"""GGUF Q4_0 / Q4_1 blocks kept as int4 layers and Q8_0 blocks as int8 layers in groups: the codes, scales and lows
read from the bytes reproduce gguf's own dequantization; SmolLM2 loaded at --dtype int4 multiplies by the file's
weights, its Q8_0 head's included (exactly with arlm's kernels; with PyTorch's, up to the rounding of scales and zeros,
and the head requantized per output channel) and its logits equal those of a float32 model holding the same
weights within 1e-3 (arlm's kernels); greedy decoding at each dtype agrees with float32 wherever
float32's top-2 margin exceeds the dtype's measured logit error; speculative decoding and prompt lookup on it
equal its greedy output."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from arlm.interop import gguf as arlm_gguf
from arlm.interop.gguf import byte_blocks, q4_blocks, q4_bytes, q8_blocks
from arlm.interop.loading import auto_dtype, load_model, to_dtype
from arlm.model import native
from arlm.model.inference import optimize_for_decoding
from arlm.model.quant import Int4Linear, Int8Linear, QuantEmbedding, kernel_dtype
from tests.helpers import optional_module
from tests.interop.gguf_files import TINY_MERGES, layer_types, tied_llama, write_tiny_llama

gguf = optional_module("gguf")

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Water boils at 100 degrees Celsius at sea level. At the top of a mountain,",
    "Once upon a time, in a small village by the sea, there lived",
    "The three primary colors are",
]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def tied():
    return tied_llama()


@pytest.mark.parametrize(
    ("head", "layers", "odd_one", "expected"),
    [
        ("Q8_0", "Q4_1", None, "int4"),  # SmolLM2's file
        ("Q4_0", "Q4_0", None, "int4"),
        ("Q8_0", "Q8_0", None, "int8"),
        ("Q8_0", "Q5_0", "Q8_0", "int8"),  # a byte code per weight throughout
        ("Q8_0", "Q4_1", "Q8_0", "mixed"),  # int4 would requantize the Q8_0 layer, int8 the Q4_1 ones
        ("F32", "Q4_1", None, "mixed"),  # int4 would requantize the head; mixed keeps it float
        ("BF16", "BF16", None, "bfloat16"),
        ("F16", "F16", None, "float32"),
        ("F32", "F32", None, "float32"),
    ],
)
@torch.no_grad()
def test_auto_is_the_dtype_that_keeps_the_files_layers_as_they_are(tmp_path, tied, head, layers, odd_one, expected):
    """--dtype auto: int4 where every layer is Q4_0 / Q4_1 and the head a byte type, int8 where all are byte types,
    mixed where the types differ otherwise (arlm's kernels on the CPU), bfloat16 for BF16, float32 otherwise and on
    a GPU; the model it loads is the one the named dtype loads, its layers the file's blocks."""
    model, tokens = tied
    types = layer_types(model, head, layers)
    if odd_one:
        types["blk.1.ffn_down.weight"] = gguf.GGMLQuantizationType[odd_one]
    path = str(write_tiny_llama(tmp_path / "m.gguf", model, tokens, TINY_MERGES, types=types))
    kernels = expected in ("float32", "bfloat16") or native.available()
    assert auto_dtype(path) == (expected if kernels else "float32")
    assert auto_dtype(path, "cuda") == ("bfloat16" if expected == "bfloat16" else "float32")  # read from the file
    loaded, named = load_model(path, dtype="auto"), load_model(path, dtype=auto_dtype(path))
    assert loaded.dtype == auto_dtype(path)
    ids = torch.randint(0, len(tokens), (2, 12))
    assert torch.equal(loaded.model(ids), named.model(ids))
    if kernels and expected == "int4":  # every layer the file's blocks: none requantized from decoded values
        assert sum(isinstance(m, Int4Linear) for m in loaded.model.modules()) == 4 * 2
        assert isinstance(loaded.model.lm_head, Int8Linear) and loaded.model.lm_head.group_size == 32
    if kernels and expected == "int8":
        assert all(m.group_size == 32 for m in loaded.model.modules() if isinstance(m, Int8Linear))
    if kernels and expected in ("int4", "int8", "mixed") and head != "F32":  # the table read from the head's codes
        table = load_model(path, dtype="float32").model.tok_emb.weight  # (V, C): gguf's values
        assert isinstance(loaded.model.tok_emb, QuantEmbedding)
        assert torch.equal(loaded.model.tok_emb(ids), table[ids])
    if kernels and expected == "mixed":  # the Q4_1 layers int4, a Q8_0 one int8 from its blocks, an F32 head float
        assert sum(isinstance(m, Int4Linear) for m in loaded.model.modules()) == 4 * 2 - (odd_one is not None)
        assert isinstance(loaded.model.lm_head, Int8Linear if head == "Q8_0" else torch.nn.Linear)


@pytest.mark.skipif(not native.available(), reason="needs arlm's CPU kernels")
def test_a_q4_1_file_at_int4_decodes_no_weight_at_all(tmp_path, tied, monkeypatch):
    """SmolLM2's layout (Q4_1 layers, a tied Q8_0 table): the layers, the head and the embedding all read the
    file's blocks, so only the float32 norms are decoded."""
    model, tokens = tied
    path = str(
        write_tiny_llama(tmp_path / "m.gguf", model, tokens, TINY_MERGES, types=layer_types(model, "Q8_0", "Q4_1"))
    )
    decoded, decode = [], arlm_gguf.dequantize
    monkeypatch.setattr(
        arlm_gguf, "dequantize", lambda raw, kind, shape: decoded.append(kind) or decode(raw, kind, shape)
    )
    loaded = load_model(path, dtype="int4").model
    assert set(decoded) == {"F32"} and isinstance(loaded.tok_emb, QuantEmbedding)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_q4_blocks_reproduce_gguf_dequantization(kind):
    values = np.random.default_rng(0).standard_normal((48, 96)).astype(np.float32)  # (rows, cols)
    raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType[kind])
    expected = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind]).reshape(48, 96))
    codes, scales, lows = q4_blocks(raw, kind, (48, 96))
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and scales.shape == lows.shape == (48, 3)
    ours = codes.float() * scales.repeat_interleave(32, 1) + lows.repeat_interleave(32, 1)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    layer = Int4Linear.from_codes(codes, scales, lows, 32)  # the kernel reads them in its dtype
    scale, low = (v.repeat_interleave(32, 1) for v in layer.levels())
    torch.testing.assert_close(layer.dequantized(), codes.float() * scale + low, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
@pytest.mark.parametrize("ours", [True, False])
def test_a_layer_from_the_files_code_bytes_equals_one_from_their_codes(kind, ours, monkeypatch):
    """from_q4_bytes reorders the file's bytes into the kernel's layout (arlm's kernels) or unpacks them (PyTorch's):
    either way the layer from_codes builds from the unpacked codes."""
    if ours and not native.available():
        pytest.skip("needs arlm's kernels")
    monkeypatch.setattr(native, "available", lambda: ours)
    values = np.random.default_rng(2).standard_normal((48, 96)).astype(np.float32)  # (rows, cols)
    raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType[kind])
    code_bytes, scales, lows = q4_bytes(raw, kind, (48, 96))
    assert code_bytes.shape == (48, 48) and code_bytes.dtype == torch.uint8
    built = Int4Linear.from_q4_bytes(code_bytes, scales, lows)
    reference = Int4Linear.from_codes(*q4_blocks(raw, kind, (48, 96)), 32)
    assert built.native == reference.native == ours
    for name, buffer in reference.named_buffers():
        assert torch.equal(getattr(built, name), buffer), name
    x = torch.randn(3, 96)
    assert torch.equal(built(x), reference(x))


def test_q8_blocks_reproduce_gguf_dequantization():
    values = np.random.default_rng(1).standard_normal((48, 96)).astype(np.float32)  # (rows, cols)
    raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q8_0).reshape(48, 96))
    codes, scales = q8_blocks(raw, (48, 96))
    assert codes.dtype == torch.int8 and scales.shape == (48, 3)
    assert torch.equal(codes.float() * scales.repeat_interleave(32, 1), expected)
    if native.available():
        assert torch.equal(Int8Linear.from_blocks(codes, scales).dequantized(), expected)


@pytest.mark.parametrize("kind", ["Q8_0", "Q5_0", "Q4_0"])
def test_byte_blocks_reproduce_gguf_dequantization(kind):
    """Q5_0's 5-bit codes (and Q4_0's 4-bit ones) as byte codes c = q - 16 (q - 8) with the block's scale: w = d c,
    the very values gguf decodes, and those an int8 layer in groups of 32 multiplies by."""
    values = np.random.default_rng(2).standard_normal((48, 96)).astype(np.float32)  # (rows, cols)
    raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType[kind])
    expected = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind]).reshape(48, 96))
    codes, scales = byte_blocks(raw, kind, (48, 96))
    low, high = {"Q8_0": (-128, 127), "Q5_0": (-16, 15), "Q4_0": (-8, 7)}[kind]
    assert codes.dtype == torch.int8 and low <= int(codes.min()) and int(codes.max()) <= high
    assert int(codes.min()) == low or int(codes.max()) == high  # the codes' whole range is used
    assert torch.equal(codes.float() * scales.repeat_interleave(32, 1), expected)
    if native.available():
        assert torch.equal(Int8Linear.from_blocks(codes, scales).dequantized(), expected)


@pytest.fixture(scope="module")
def int4(smollm2):
    """SmolLM2 at --dtype int4: its Q4_1 layers straight from the file's blocks."""
    return optimize_for_decoding(load_model("smollm2", dtype="int4").model)


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float()  # (T, V)


HALF_ULP = torch.finfo(kernel_dtype()).eps / 2  # the relative rounding of one value to the kernels' dtype


@pytest.mark.real_model
@pytest.mark.slow
def test_int4_from_the_file_holds_the_files_weights(smollm2, int4):
    """Every Q4_1 layer multiplies by gguf's own dequantization of the file's tensor, up to the rounding of its
    scales and zeros to the kernels' dtype (none with arlm's); the Q8_0 head is the file's exactly (arlm's kernels),
    or int8 per output channel within half a step (PyTorch's). The logits
    equal a float32 model's holding the very weights the layers multiply by (the head's included) within 1e-3 of
    the largest with arlm's kernels (same weights, other kernels), 5e-2 with PyTorch's (which round each layer's
    input and output to bfloat16 on CPUs with native bfloat16); the file's float32 model within 5%."""
    floats = dict(smollm2.model.named_modules())
    layers = {name: m for name, m in int4.named_modules() if isinstance(m, Int4Linear)}
    assert len(layers) == 4 * smollm2.model.config.n_layer
    for name, layer in layers.items():
        weight = floats[_unfused(name)].weight.detach()  # (out, in): the file's values, dequantized by gguf
        scale, low = layer.levels()  # (out, in / 32) each
        moved = (8 * scale + (low + 8 * scale).abs()).repeat_interleave(32, 1) * 2 * HALF_ULP + 1e-7
        assert ((layer.dequantized() - weight).abs() <= moved).all(), name
    assert isinstance(int4.lm_head, Int8Linear)  # SmolLM2's tied Q8_0 head
    head = smollm2.model.lm_head.weight.detach()
    if native.available():  # its blocks as they are
        assert int4.lm_head.group_size == 32 and torch.equal(int4.lm_head.dequantized(), head)
    else:  # requantized per output channel
        step = int4.lm_head.scales.float()[:, None]  # (V, 1)
        assert ((int4.lm_head.dequantized() - head).abs() <= step / 2 + head.abs() * 2 * HALF_ULP + 1e-7).all()
    same = copy.deepcopy(smollm2.model)  # float32, holding the int4 model's weights
    for name, layer in int4.named_modules():
        if isinstance(layer, (Int4Linear, Int8Linear)):
            same.get_submodule(_unfused(name)).weight = torch.nn.Parameter(layer.dequantized(), requires_grad=False)
    bound = 1e-3 if kernel_dtype() == torch.float32 else 5e-2
    for prompt in PROMPTS:
        ids = smollm2.tokenizer.encode(prompt)
        reference, ours = _logits(smollm2.model, ids), _logits(int4, ids)
        assert float((ours - reference).abs().max() / reference.abs().max()) < 0.05, prompt
        reference = _logits(same, ids)
        assert float((ours - reference).abs().max() / reference.abs().max()) < bound, prompt


def _unfused(name: str) -> str:
    """A layer's name in the loaded model from its name in the decoding layout (a FusedBlock holds its Block)."""
    return name.replace(".block.", ".")


def _greedy(model, ids):
    config = GenerationConfig(strategy="greedy", max_new_tokens=NEW_TOKENS, stop_at_eos=False)
    return generate(model, [ids], config).generated()[0]


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "int8", "int4"])
def test_greedy_agrees_with_float32_where_the_margin_exceeds_the_error(smollm2, int4, dtype):
    """Up to the first step where float32's top-2 gap is within twice the dtype's largest logit error on the
    float32 continuation, the tokens must be float32's; after a narrow margin they may part ways (bfloat16
    rounds every weight, int8 requantizes the 4-bit ones, int4 rounds its inputs and scales to bfloat16;
    docs/perf.md gives each one's perplexity). At least one prompt must run to the end identically."""
    model = int4 if dtype == "int4" else optimize_for_decoding(to_dtype(copy.deepcopy(smollm2.model), dtype))
    float32 = optimize_for_decoding(copy.deepcopy(smollm2.model))
    whole = 0
    for prompt in PROMPTS:
        ids = smollm2.tokenizer.encode(prompt)
        expected, ours = _greedy(float32, ids), _greedy(model, ids)
        reference, logits = _logits(float32, ids + expected), _logits(model, ids + expected)
        error = float((logits - reference).abs().max())
        top2 = reference[len(ids) - 1 :].topk(2, dim=-1).values  # (NEW_TOKENS + 1, 2)
        narrow = ((top2[:, 0] - top2[:, 1]) <= 2 * error).nonzero()
        exact = int(narrow[0]) if len(narrow) else NEW_TOKENS
        assert ours[:exact] == expected[:exact], (prompt, error)
        whole += ours == expected
    assert whole >= 1


@pytest.mark.real_model
@pytest.mark.slow
def test_speculative_and_prompt_lookup_on_int4_smollm2_equal_its_greedy(smollm2, int4):
    draft = optimize_for_decoding(copy.deepcopy(smollm2.model))  # float32: a draft that agrees most of the time
    text = "Fix the typos: The quick brwon fox jumsp over the lazy dgo. Fixed: The quick"
    ids = smollm2.tokenizer.encode(text)
    expected = _greedy(int4, ids)
    for gamma in (2, 5):
        spec = GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=NEW_TOKENS,
                                num_draft_tokens=gamma, stop_at_eos=False)  # fmt: skip
        assert generate(int4, [ids], spec, draft=draft).generated()[0] == expected, gamma
        lookup = GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=NEW_TOKENS,
                                  num_draft_tokens=gamma, stop_at_eos=False)  # fmt: skip
        assert generate(int4, [ids], lookup).generated()[0] == expected, gamma


@pytest.mark.real_model
@pytest.mark.slow
def test_int4_smollm2_drafts_for_its_float32_self_and_agrees_on_nearly_every_token(smollm2, int4):
    """`--draft self:int4` on SmolLM2: the same Q4_1 weights on the int kernels draft for the float32 model; the text
    is float32's greedy text and nearly every drafted token is accepted (why it pays on chat: docs/perf.md)."""
    target = optimize_for_decoding(copy.deepcopy(smollm2.model))
    ids = smollm2.tokenizer.encode("Question: why is the sky blue? Answer:")
    expected = _greedy(target, ids)
    spec = GenerationConfig(strategy="speculative", temperature=0, max_new_tokens=NEW_TOKENS, num_draft_tokens=4,
                            stop_at_eos=False)  # fmt: skip
    out = generate(target, [ids], spec, draft=int4)
    assert out.generated()[0] == expected and out.stats["acceptance_rate"] > 0.9, out.stats
