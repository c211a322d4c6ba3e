"""K-quant files: Q4_K tensors kept as int4 layers (the levels d sc and -dmin m rounded once to float16, as the int4
kernels read them; gguf's own dequantization is the reference), and --dtype mixed, what auto picks for a file of
several types (every Q4_K_M): each layer held by its own type, the file's model within the kernels' rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from arlm.errors import ArlmError
from arlm.interop import gguf as arlm_gguf
from arlm.interop.gguf import q4_bytes, q4_k_levels_fit
from arlm.interop.loading import auto_dtype, load_model, resolve_dtype, to_dtype
from arlm.model import native
from arlm.model.inference import optimize_for_decoding
from arlm.model.quant import Int4Linear, Int8Linear, QuantEmbedding
from tests.helpers import optional_module
from tests.interop.gguf_files import LINEARS, TINY_MERGES, random_blocks, tied_llama, write_tiny_llama

gguf = optional_module("gguf")
Q = gguf.GGMLQuantizationType
needs_kernels = pytest.mark.skipif(not native.available(), reason="needs arlm's CPU kernels")


def _q4_k(rows: int, cols: int, rng: np.random.Generator, powers_of_two: bool) -> np.ndarray:
    """Random Q4_K blocks of a (rows, cols) tensor: (rows, bytes a row); d and dmin powers of two, or any float16."""
    blocks = random_blocks("Q4_K", rows * cols // 256, rng, scales=(1e-4, 1e-2))  # (super-blocks, 144)
    if powers_of_two:  # d sc and dmin m then need 6 bits more than d: float16 holds them exactly
        halves = 2.0 ** -rng.integers(6, 14, (len(blocks), 2))
        blocks[:, :4] = halves.astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def _reference(raw: np.ndarray, rows: int, cols: int) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(raw, Q.Q4_K).reshape(rows, cols).astype(np.float32))


def test_q4_k_codes_scales_and_lows_are_gguf_s_values():
    """Codes (in Q4_0's byte order), d sc and -dmin m, combined as w = scale q + low in float32: gguf's very bits."""
    raw = _q4_k(16, 512, np.random.default_rng(0), powers_of_two=False)
    code_bytes, scales, lows = q4_bytes(raw, "Q4_K", (16, 512))
    assert code_bytes.shape == (16, 256) and scales.shape == lows.shape == (16, 16)
    codes = torch.cat([code_bytes.reshape(16, 16, 16) & 15, code_bytes.reshape(16, 16, 16) >> 4], -1)  # (16, 16, 32)
    ours = (codes.float() * scales[..., None] + lows[..., None]).reshape(16, 512)
    assert torch.equal(ours, _reference(raw, 16, 512))


@needs_kernels
def test_an_int4_layer_from_q4_k_blocks_multiplies_by_the_files_weights():
    """Exactly where the levels are float16 numbers (d, dmin powers of two); else each level moves by at most half a
    float16 step of itself."""
    rng = np.random.default_rng(1)
    for powers_of_two in (True, False):
        raw = _q4_k(32, 768, rng, powers_of_two)
        layer = Int4Linear.from_q4_bytes(*q4_bytes(raw, "Q4_K", (32, 768)))
        expected = _reference(raw, 32, 768)
        if powers_of_two:
            assert torch.equal(
                layer.dequantized(), expected
            )  # what the kernels multiply by (tests/model/test_quant.py)
            continue
        _, scales, lows = q4_bytes(raw, "Q4_K", (32, 768))
        moved = (15 * scales.abs() + lows.abs()).repeat_interleave(32, 1) * 2.0**-11 + 2.0**-24
        error = (layer.dequantized() - expected).abs()
        assert (error <= moved).all() and error.max() > 0  # rounded, and by no more than that


def test_q4_k_levels_that_overflow_float16_are_not_kept_as_int4():
    raw = _q4_k(16, 256, np.random.default_rng(2), powers_of_two=True)
    assert q4_k_levels_fit(raw)
    raw[3, :2] = np.array([65504 / 32], dtype=np.float16).view(np.uint8)  # d sc up to 63 d: past float16's largest
    assert not q4_k_levels_fit(raw)


def _file(tmp_path, layers: str, head: str = "Q8_0", odd: dict | None = None, tie: bool = True) -> str:
    """The wide Llama as a GGUF file: every Linear random `layers` blocks (a K-quant) or quantized to that type, the
    tied head `head` (untied: output.weight `head`, the table in `odd` or float32), and `odd` (tensor -> type) in
    place of some."""
    model, tokens = tied_llama(3, 256, 256, tie)
    names = [f"blk.{i}.{name}.weight" for i in range(2) for name in LINEARS]
    names += [] if tie else ["output.weight"]
    kinds = {name: layers for name in names} | {"token_embd.weight" if tie else "output.weight": head} | (odd or {})
    k_quants = {name: kind for name, kind in kinds.items() if kind.endswith("_K")}
    types = {name: Q[kind] for name, kind in kinds.items() if name not in k_quants and kind != "F32"}
    path = write_tiny_llama(tmp_path / "k.gguf", model, tokens, TINY_MERGES, types=types, raw=k_quants)
    return str(path)


def _close_to_float32(path: str, dtype: str, bound: float) -> torch.nn.Module:
    """The file at `dtype`, after checking its logits against the file's float32 values (largest difference over
    the largest logit <= bound)."""
    ids = torch.randint(0, 272, (2, 24), generator=torch.Generator().manual_seed(0))
    model = load_model(path, dtype=dtype).model
    with torch.no_grad():
        got, reference = model(ids), load_model(path, dtype="float32").model(ids)
    assert ((got - reference).abs().max() / reference.abs().max()).item() <= bound
    return model


@needs_kernels
@torch.no_grad()
def test_a_q4_k_file_runs_at_int4_from_its_blocks(tmp_path):
    path = _file(tmp_path, "Q4_K")
    assert auto_dtype(path) == "int4"
    model = _close_to_float32(path, "auto", 1e-3)
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 4 * 2
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.group_size == 32


@needs_kernels
@torch.no_grad()
def test_a_file_of_several_types_runs_each_layer_at_its_own(tmp_path):
    """A Q4_K_M-like file (Q5_0 layers, a Q4_K down projection, a Q8_0 value projection, a Q8_0 head): auto is
    mixed, Q4_K layers int4, Q5_0 / Q8_0 ones int8 from their blocks, so its logits are the file's float32 ones
    within 1e-3."""
    odd = {"blk.0.ffn_down.weight": "Q4_K", "blk.1.attn_v.weight": "Q8_0"}
    path = _file(tmp_path, "Q5_0", odd=odd)
    assert auto_dtype(path) == "mixed" and auto_dtype(path, "cuda") == "float32"
    model = _close_to_float32(path, "auto", 1e-3)
    assert isinstance(model.blocks[0].mlp.down, Int4Linear)
    eights = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(eights) == 4 * 2 - 1 + 1 and all(m.group_size == 32 for m in eights)  # the head's included
    kv = model.blocks[1].attn.qkv  # q, k Q5_0 and v Q8_0: one layer of byte codes, each part's own
    assert int(kv.codes()[:384].abs().max()) <= 16 and int(kv.codes()[384:].abs().max()) > 16


@needs_kernels
@torch.no_grad()
def test_mixed_holds_a_q6_k_layer_in_groups_of_32_from_its_values(tmp_path):
    """Q6_K (6-bit codes, a scale per 16 weights) has no int kernel of its own: int8 in groups of 32 from its
    values, each weight within half a step, nearer the file than --dtype int8's per-channel rows."""
    path = _file(tmp_path, "Q5_0", odd={"blk.1.ffn_down.weight": "Q6_K"})
    values = load_model(path, dtype="float32").model.blocks[1].mlp.down.weight  # (256, 256)
    model = load_model(path, dtype="auto").model
    down = model.blocks[1].mlp.down
    assert isinstance(down, Int8Linear) and down.group_size == 32
    amax = values.reshape(256, 8, 32).abs().amax(-1, keepdim=True)  # (out, in/32, 1)
    assert ((down.dequantized() - values).reshape(256, 8, 32).abs() <= amax / 254 * (1 + 2.0**-9)).all()
    ids = torch.randint(0, 272, (2, 24), generator=torch.Generator().manual_seed(0))
    reference = load_model(path, dtype="float32").model(ids)
    errors = [(load_model(path, dtype=d).model(ids) - reference).abs().max() for d in ("auto", "int8")]
    assert errors[0] < errors[1]


@needs_kernels
@torch.no_grad()
def test_mixed_keeps_a_float_head_float(tmp_path):
    path = _file(tmp_path, "Q4_K", head="F32")
    assert auto_dtype(path) == "mixed"
    model = _close_to_float32(path, "auto", 1e-3)
    assert type(model.lm_head) is torch.nn.Linear
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 4 * 2


def test_mixed_is_refused_where_it_cannot_run(monkeypatch):
    """Without the kernels it said "use --device cpu" to a run on the CPU: the cause is named instead."""
    model, _ = tied_llama(3, 256, 256)
    if native.available():
        with pytest.raises(ArlmError, match="GGUF file's layers") as caught:
            to_dtype(model, "mixed")
        assert "\n" not in str(caught.value)
    with pytest.raises(ArlmError, match="CPU kernels only"):
        resolve_dtype("mixed", "cuda")
    monkeypatch.setenv("ARLM_NATIVE", "0")
    with pytest.raises(
        ArlmError, match=r"needs arlm's CPU kernels, which are turned off by ARLM_NATIVE=0; use --dtype"
    ):
        resolve_dtype("mixed", "cpu")
    monkeypatch.delenv("ARLM_NATIVE")
    monkeypatch.setattr(native, "library", lambda: None)
    with pytest.raises(ArlmError, match=r"needs arlm's CPU kernels, which could not be built here; use --dtype"):
        resolve_dtype("mixed", "cpu")


@needs_kernels
@torch.no_grad()
def test_a_mixed_model_decodes_in_one_kernel_call_a_step_as_its_forward_does(tmp_path):
    """int4 and int8 layers side by side in a block still fuse (every block one call): greedy decoding and prompt
    lookup give the tokens the model's own full forwards pick."""
    path = _file(tmp_path, "Q5_0", odd={"blk.0.ffn_down.weight": "Q4_K", "blk.1.ffn_down.weight": "Q6_K"})
    plain = load_model(path, dtype="mixed").model
    fused = optimize_for_decoding(load_model(path, dtype="mixed").model)
    assert type(fused.blocks).__name__ == "FusedBlocks"
    ids = [5, 9, 44, 17, 3]
    for _ in range(12):  # greedy by whole forwards, no cache
        ids.append(int(plain(torch.tensor([ids]))[0, -1].argmax()))
    config = GenerationConfig(strategy="greedy", max_new_tokens=12, stop_at_eos=False)
    assert generate(fused, [ids[:5]], config).generated()[0] == ids[5:]
    lookup = GenerationConfig(strategy="prompt-lookup", temperature=0, max_new_tokens=12, stop_at_eos=False)
    assert (
        generate(fused, [ids[:5] + ids[5:9] + ids[:5]], lookup).generated()[0]
        == generate(fused, [ids[:5] + ids[5:9] + ids[:5]], config).generated()[0]
    )


@needs_kernels
@pytest.mark.parametrize("table", ["Q4_K", "Q4_1", "Q8_0", "F32"])
@torch.no_grad()
def test_an_untied_file_reads_its_table_from_its_own_blocks(tmp_path, monkeypatch, table):
    """An untied Llama as llama.cpp's Q4_K_M writes one (Q4_K layers and table, a Q6_K head), or with a Q4_1 / Q8_0 /
    F32 table: mixed, the layers int4, the head int8 in groups of 32 from its values; a Q4 / byte-type table read from
    its own blocks, never decoded (its rows the file's values; Q4_K's within its levels' float16 rounding), an F32
    one kept; the logits nearer the file's than --dtype int8's."""
    path = _file(tmp_path, "Q4_K", head="Q6_K", odd={"token_embd.weight": table}, tie=False)
    assert auto_dtype(path) == "mixed"
    decoded, decode = [], arlm_gguf.dequantize
    monkeypatch.setattr(
        arlm_gguf, "dequantize", lambda raw, kind, shape: decoded.append(kind) or decode(raw, kind, shape)
    )
    model = load_model(path, dtype="auto").model
    assert set(decoded) == {"F32", "Q6_K"}  # the norms (and an F32 table), the head
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == 4 * 2 + (table != "F32" and table != "Q8_0")
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.group_size == 32
    reference = load_model(path, dtype="float32").model
    ids = torch.randint(0, 272, (2, 24), generator=torch.Generator().manual_seed(0))
    if table == "F32":
        assert type(model.tok_emb) is torch.nn.Embedding
    else:
        assert isinstance(model.tok_emb, QuantEmbedding) and model.tok_emb.table is not model.lm_head
        got, want = model.tok_emb(ids), reference.tok_emb(ids)  # (2, 24, 256)
        assert torch.equal(got, want) if table != "Q4_K" else (got - want).abs().max() <= want.abs().max() * 2.0**-9
    int8 = load_model(path, dtype="int8").model  # per output channel from the values: further from the file
    assert (model(ids) - reference(ids)).abs().max() < (int8(ids) - reference(ids)).abs().max()


@needs_kernels
@torch.no_grad()
def test_a_tied_q6_k_table_is_read_from_the_head_as_it_holds_it(tmp_path):
    """A tied Q6_K table (llama.cpp's Q4_K_M of a tied model): the head int8 in groups of 32 from its values, and the
    embedding reads the head's codes rather than keep a float32 copy: each row within half a step of the file's."""
    path = _file(tmp_path, "Q4_K", head="Q6_K")
    model = load_model(path, dtype="auto").model
    head = model.lm_head
    assert isinstance(head, Int8Linear) and head.group_size == 32 and isinstance(model.tok_emb, QuantEmbedding)
    ids = torch.arange(272)
    assert torch.equal(model.tok_emb(ids), head.dequantized())
    table = load_model(path, dtype="float32").model.tok_emb.weight  # (V, C): the file's values
    amax = table.reshape(272, 8, 32).abs().amax(-1, keepdim=True)
    assert ((model.tok_emb(ids) - table).reshape(272, 8, 32).abs() <= amax / 254 * (1 + 2.0**-9)).all()
