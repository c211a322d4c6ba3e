"""Weight-only quantized layers, on arlm's own kernels and on PyTorch's: each equals a float matmul by the weight it
dequantizes to (with PyTorch's, its input and output rounded to bfloat16 on CPUs with native bfloat16), is
batch-invariant (a row's bits do not depend on the rows beside it, one row included), and a quantized model stays
close to the float one. The decoding strategies on quantized models are tested in
tests/decoding/test_quant_decoding.py."""

import pytest
import torch
from torch import nn

from arlm.config import ModelConfig
from arlm.errors import ArlmError
from arlm.model import int_layout, native
from arlm.model.quant import (
    Int4Linear,
    Int8Linear,
    QuantEmbedding,
    is_quantized,
    kernel_dtype,
    q8_0_fits,
    quantize_model,
)
from arlm.model.transformer import Transformer


def _linear(out_features=96, in_features=128, seed=0, bias=False):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def _layers(linear):
    layers = {"int8": Int8Linear.from_float(linear), "int4-32": Int4Linear.from_float(linear, 32),
              "int4-64": Int4Linear.from_float(linear, 64)}  # fmt: skip
    return layers | ({"q8_0": _q8_0(linear)} if native.available() else {})


def _q8_0(linear):
    """A layer from Q8_0 blocks of a Linear's weight (GGUF's: d = max |w| / 127 per 32 inputs in float16, q = w / d
    rounded), on arlm's kernels (the only ones that take them)."""
    w = linear.weight.detach().float()  # (out, in)
    groups = w.reshape(w.shape[0], -1, 32)  # (out, in/32, 32)
    d = (groups.abs().amax(-1) / 127).half().float().clamp(min=2.0**-24)  # (out, in/32)
    codes = torch.round(groups / d[..., None]).clamp(-128, 127).to(torch.int8).reshape(w.shape)
    return Int8Linear.from_blocks(codes, d, linear.bias)


@pytest.fixture(params=["native", "pytorch"])
def kernels(request, monkeypatch):
    """Layers built in the test run on arlm's own kernels or on PyTorch's."""
    if request.param == "native" and native.library() is None:
        pytest.skip("arlm's kernels cannot be built on this machine (model/native.py)")
    monkeypatch.setenv("ARLM_NATIVE", "1" if request.param == "native" else "0")
    return request.param


def _half_ulp():
    """The relative rounding of one value to the dtype the kernels of a layer built now read."""
    return torch.finfo(kernel_dtype()).eps / 2


def _row_group(layer):
    """The inputs per 16-bit scale of the rows arlm's kernels read for a layer (model/quantized.c): an int4 layer's
    levels' group, a Q8_0 layer's 32; for int8 (scales per output) 64 where it divides the inputs, else 32."""
    if isinstance(layer, Int4Linear) or layer.group_size:
        return layer.group_size
    return 64 if layer.in_features % 64 == 0 else 32


def _rows_read(x, layer):
    """Rows as the kernels of `layer` read them, in float64: arlm's at 16 bits per group of `_row_group` inputs,
    PyTorch's in `kernel_dtype`."""
    if native.available():
        x = native.int_rows(x.reshape(-1, x.shape[-1]).float().contiguous(), _row_group(layer)).reshape(x.shape)
    return x.to(kernel_dtype()).double()


def _bound(rows, weight, product):
    """How far a kernel's float32 output may be from the float64 product of what it reads: one rounding of the product
    (PyTorch's, to its dtype), or float32 sums over groups (arlm's: a few ulps of the sum of the terms' sizes)."""
    if native.available():
        return torch.nn.functional.linear(rows.abs(), weight.double().abs()) * 2.0**-21 + 1e-6
    return product.abs() * _half_ulp() + 1e-5


@pytest.mark.parametrize("bias", [False, True])
def test_each_layer_is_a_float_matmul_by_its_dequantized_weight(bias, kernels):
    linear = _linear(bias=bias)
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(1))  # (B, T, in)
    for name, layer in _layers(linear).items():
        rows = _rows_read(x, layer)  # (B, T, in): what the kernels read
        weight = layer.dequantized()  # (out, in)
        product = torch.nn.functional.linear(rows, weight.double())  # (B, T, out), before the output's rounding
        expected = product if not bias else product + linear.bias.double()
        y = layer(x)
        assert y.shape == (2, 5, 96) and y.dtype == torch.float32
        assert ((y.double() - expected).abs() <= _bound(rows, weight, product)).all(), name


@pytest.mark.parametrize("in_features", [100, 136, 264, 192])
def test_int8_takes_any_input_width(in_features, kernels):
    """PyTorch's int8 kernel reads past rows of a width that is not a multiple of 16 (it crashed the process on these
    widths); the layer pads them with zero columns, which add nothing. arlm's reads rows in groups of 64 where the
    width allows (192), else of 32."""
    layer = Int8Linear.from_float(_linear(94, in_features))
    x = torch.randn(8, in_features, generator=torch.Generator().manual_seed(1))  # (M, in)
    rows, weight = _rows_read(x, layer), layer.dequantized()
    expected = torch.nn.functional.linear(rows, weight.double())  # (M, 94)
    for _ in range(20):  # the crash came one call in a few
        y = layer(x)
        assert ((y.double() - expected).abs() <= _bound(rows, weight, expected)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_dense_layout_is_the_matmul_by_its_codes_then_the_scales(dtype):
    """The GPU's layout (built here on the CPU): codes as they are, y = linear(x, codes) * scales in the model's
    dtype; the same codes as the CPU layers' for a float32 weight, scales rounded to the weight's dtype."""
    linear = _linear(out_features=94, in_features=100, bias=True).to(dtype)
    weight = linear.weight.detach().float()
    scales = (weight.abs().amax(dim=1) / 127).to(dtype)  # (out,)
    codes = torch.round(weight / scales.float()[:, None]).clamp(-127, 127)  # (out, in)
    layer = Int8Linear(codes, scales, linear.bias, dense=True)
    assert layer.dense and layer.weight.dtype == torch.int8 and layer.scales.dtype == dtype
    assert torch.equal(layer.dequantized(), codes * scales.float()[:, None])
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(1)).to(dtype)  # (M, in)
    product = torch.nn.functional.linear(x.double(), codes.double()) * scales.double()  # (M, out)
    expected = product + linear.bias.double()
    y = layer(x)
    assert y.dtype == dtype
    rounding = 3 * torch.finfo(dtype).eps  # the product's, the scaling's and the bias's roundings to the dtype
    assert ((y.double() - expected).abs() <= expected.abs() * rounding + product.abs() * rounding + 1e-5).all()
    if dtype == torch.float32 and native.available():  # arlm's CPU layers quantize a float32 weight to these codes
        assert torch.equal(Int8Linear.from_float(linear).codes().float(), codes)


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine")
@pytest.mark.parametrize("group", [32, 64])
def test_arlm_kernels_read_rows_at_16_bits_per_group(group):
    """Each value within 1/65,278 of its group's largest (round to nearest of 2 x 32,639 steps), the last group short;
    zeros stay zeros; a NaN or an infinity makes its group's values NaN, as a float product would be."""
    x = torch.randn(6, 200, generator=torch.Generator().manual_seed(4)) * torch.logspace(-3, 3, 6)[:, None]
    x[1, group + 8 : 2 * group] = 0  # a group of zeros but for its first values
    x[2, :group] = 0
    rows = native.int_rows(x, group)
    groups = torch.nn.functional.pad(x, (0, -200 % group)).reshape(6, -1, group).abs().amax(-1)  # (6, groups)
    largest = groups.repeat_interleave(group, 1)[:, :200]
    assert ((rows - x).abs() <= largest / 65278 * (1 + 1e-6)).all()
    assert torch.equal(rows[2, :group], torch.zeros(group))
    assert torch.equal(rows[1, group + 8 : 2 * group], torch.zeros(group - 8))
    x[3, group + 6], x[4, 3] = float("nan"), float("inf")
    odd = native.int_rows(x, group)
    assert odd[3, group : 2 * group].isnan().all() and odd[4, :group].isnan().all()
    assert not odd[3, :group].isnan().any() and not odd[3, 2 * group :].isnan().any()
    assert torch.equal(odd[5], rows[5])
    with pytest.raises(ArlmError, match="groups of 32 or 64"):
        native.int_rows(x, 16)


@pytest.mark.skipif(not native.amx_ready(), reason="needs arlm's kernels on a CPU with AMX")
def test_arlm_int_kernels_on_amx_and_vnni_give_the_same_bits():
    """The int8 / int4 products move from VNNI to AMX at `arlm_amx_from` rows; both give every row the same bits
    (exact integer sums, the same float32 steps), so a row's output does not depend on how many rows came with it.
    AMX takes output tiles of 16 three at a time: 6 tiles (96), 7 (112: three, three, one) and 5 (80: three, two);
    from 16 rows (two blocks of 8) int4 codes are unpacked once a triple (16, 17, 27 rows)."""
    import ctypes

    start = ctypes.c_int.in_dll(native.library(), "arlm_amx_from")
    default = start.value
    x = torch.randn(27, 264, generator=torch.Generator().manual_seed(5))  # (M, in)
    layers = _layers(_linear(out_features=96, in_features=256))
    layers["int8-ragged"] = Int8Linear.from_float(_linear(out_features=94, in_features=264))
    layers |= {f"{name}, 7 tiles": layer for name, layer in _layers(_linear(out_features=112, in_features=256)).items()}
    layers |= {f"{name}, 5 tiles": layer for name, layer in _layers(_linear(out_features=80, in_features=128)).items()}
    try:
        for name, layer in layers.items():
            rows = x[:, : layer.in_features].contiguous()
            start.value = 1_000  # VNNI alone
            vnni = layer(rows)
            start.value = 1  # AMX from one row, every row count (3-7: copies of their own, quantized.c amx_block)
            assert torch.equal(layer(rows), vnni) and torch.equal(layer(rows[4:5]), vnni[4:5]), name
            for m in (*range(2, 11), 16, 17, 27):
                assert torch.equal(layer(rows[:m]), vnni[:m]), (name, m)
    finally:
        start.value = default


def test_quantization_error_is_that_of_the_format(kernels):
    """Half a step, plus what rounding the scales and zeros to the kernels' dtype moves the levels by."""
    HALF_ULP = _half_ulp()
    linear = _linear()
    w = linear.weight.detach()
    per_channel = w.abs().amax(dim=1, keepdim=True)
    int8 = Int8Linear.from_float(linear).dequantized()
    assert ((int8 - w).abs() <= per_channel / 254 + per_channel * 2 * HALF_ULP + 1e-7).all()
    groups = w.reshape(96, 4, 32)
    low, high = groups.amin(-1), groups.amax(-1)  # (out, in/32)
    step = (high - low) / 15
    slack = (low.abs() + high.abs()) * 2 * HALF_ULP  # the grid's ends move by the rounding of scale and zero
    int4 = Int4Linear.from_float(linear, 32).dequantized().reshape(96, 4, 32)
    assert ((int4 - groups).abs() <= (step / 2 + slack)[..., None] + 1e-6).all()


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine")
def test_int8_in_groups_of_32_from_values_errs_by_half_its_step():
    """from_float(group_size=32), what --dtype mixed holds a Q6_K layer as: a float16 scale max|w| / 127 per 32
    inputs, every weight within half a step of it (the scale's own rounding aside), each group's largest on +-127."""
    linear = _linear()
    w = linear.weight.detach()  # (96, 128)
    layer = Int8Linear.from_float(linear, group_size=32)
    assert layer.group_size == 32
    amax = w.reshape(96, 4, 32).abs().amax(-1)  # (out, in/32)
    scales = int_layout.untile_scales(layer.group_scales)
    torch.testing.assert_close(scales, (amax / 127).half().float(), rtol=0, atol=0)
    error = (layer.dequantized() - w).reshape(96, 4, 32).abs()
    assert (error <= (scales / 2 + amax * 2.0**-10)[..., None]).all()
    assert (layer.codes().reshape(96, 4, 32).abs().amax(-1) == 127).all()


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine")
def test_int8_from_blocks_follows_the_q8_0_convention(monkeypatch):
    """w = d * q (GGUF Q8_0), d per group of 32 inputs held exactly (float16), the codes' full -128..127 included;
    without arlm's kernels (or with outputs not by 16) such a layer is refused in one line."""
    g = torch.Generator().manual_seed(6)
    codes = torch.randint(-128, 128, (48, 96), generator=g).to(torch.int8)  # (out, in)
    d = (torch.rand(48, 3, generator=g) * 0.01 + 1e-4).half().float()  # (out, in/32)
    layer = Int8Linear.from_blocks(codes, d)
    assert torch.equal(layer.codes(), codes)
    assert torch.equal(layer.dequantized(), codes.float() * d.repeat_interleave(32, 1))
    with pytest.raises(ArlmError, match="Q8_0 weight needs"):
        Int8Linear.from_blocks(codes[:40], d[:40])
    monkeypatch.setenv("ARLM_NATIVE", "0")
    with pytest.raises(ArlmError, match="Q8_0 weight needs"):
        Int8Linear.from_blocks(codes, d)


@pytest.mark.skipif(not native.available(), reason="arlm's kernels cannot be built on this machine")
def test_a_quant_embedding_gathers_the_rows_its_layer_multiplies_by(monkeypatch):
    """Row v of the weight an int layer multiplies by (int8 in groups of 32 or per channel, int4 in groups of 32 or
    64, 50 rows: the last tile's 2 included), for ids of any shape; a layer on PyTorch's kernels is refused."""
    g = torch.Generator().manual_seed(4)
    codes = torch.randint(-128, 128, (50, 128), generator=g).to(torch.int8)  # (V, C)
    d = (torch.rand(50, 4, generator=g) * 0.01 + 1e-4).half().float()  # (V, C/32)
    layers = [Int8Linear.from_blocks(codes[:48], d[:48]), Int8Linear.from_float(_linear(50, 128))]
    layers += [Int4Linear.from_float(_linear(48, 128, seed=1), group) for group in (32, 64)]
    ids = torch.randint(0, 48, (3, 5), generator=g)
    for layer in layers:
        table = QuantEmbedding(layer)
        rows = torch.arange(layer.out_features)
        assert torch.equal(table(rows), layer.dequantized())
        assert torch.equal(table(ids), layer.dequantized()[ids])  # (3, 5, 128)
        assert not list(table.parameters()) and not list(table.buffers())  # the layer's codes, not a copy
    assert list(QuantEmbedding(layers[0], owned=True).buffers())  # a table's own layer is its child
    monkeypatch.setattr(native, "available", lambda: False)
    with pytest.raises(ArlmError, match="arlm's CPU kernels"):
        QuantEmbedding(Int4Linear.from_float(_linear(48, 128), 32))


def test_int4_from_codes_follows_the_q4_1_convention(kernels):
    """w = d * q + m (GGUF Q4_1): scale d and low m, held exactly by arlm's kernels; PyTorch's read (q - 8) * scale
    + zero with the scale d and the zero m + 8d each rounded to their dtype."""
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 16, (64, 96), generator=g)  # (out, in)
    d = (torch.rand(64, 3, generator=g) * 0.01 + 1e-3).half().float()  # (out, in/32), float16 as in a file
    m = (-torch.rand(64, 3, generator=g) * 0.1).half().float()
    layer = Int4Linear.from_codes(codes, d, m, 32)
    scale, low = (v.repeat_interleave(32, 1) for v in layer.levels())
    torch.testing.assert_close(layer.dequantized(), codes * scale + low, rtol=1e-6, atol=1e-7)
    exact = d.repeat_interleave(32, 1) * codes + m.repeat_interleave(32, 1)  # the file's own values
    if kernels == "native":
        assert torch.equal(layer.dequantized(), exact)
    moved = (8 * d + (m + 8 * d).abs()).repeat_interleave(32, 1) * _half_ulp()  # |q - 8| <= 8 steps of the scale
    assert ((layer.dequantized() - exact).abs() <= moved * 1.01 + 1e-7).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layers_are_batch_invariant(dtype, kernels):
    """Row i of a product over M rows has the same bits for every M (1 included) and at every place; for arlm's
    kernels also where the inputs are not a multiple of their 16 lanes nor the outputs of their tile (int8; PyTorch's
    `_weight_int8pack_mm` crashes on that shape)."""
    layers = _layers(_linear(out_features=192, in_features=256))
    if kernels == "native":
        layers["int8-ragged"] = Int8Linear.from_float(_linear(out_features=94, in_features=264))
    inputs = torch.randn(24, 264, generator=torch.Generator().manual_seed(3)).to(dtype)  # (M, 264)
    for name, layer in layers.items():
        x = inputs[:, : layer.in_features].contiguous()  # (M, in)
        full = layer(x)  # (24, out)
        for rows in (1, 2, 3, 5, 8, 17):
            assert torch.equal(layer(x[:rows]), full[:rows]), (name, rows)
        assert torch.equal(layer(x[7:8]), full[7:8]), name
        assert torch.equal(layer(x.flip(0)).flip(0), full), name


def _tiny(seed=0, tie=True):
    torch.manual_seed(seed)
    config = ModelConfig(flavour="llama", vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=64,
                         tie_embeddings=tie)  # fmt: skip
    return Transformer(config).eval()


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantize_model_swaps_every_linear_and_stays_close(kind):
    model = _tiny()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        reference = model(ids)
        quantize_model(model, kind)
        logits = model(ids)
    assert not any(isinstance(m, nn.Linear) for m in model.modules()) and is_quantized(model)
    assert isinstance(model.lm_head, Int8Linear)  # the head is int8 for both kinds (int4 costs it too much)
    assert isinstance(model.blocks[0].mlp.down, Int8Linear if kind == "int8" else Int4Linear)
    error = (logits - reference).abs().max() / reference.abs().max()
    assert error < (0.02 if kind == "int8" else 0.15)


def test_head_can_stay_float_and_bad_requests_are_refused():
    model = quantize_model(_tiny(), "int4", group_size=64, head=False)
    assert isinstance(model.lm_head, nn.Linear) and isinstance(model.blocks[0].mlp.down, Int4Linear)
    with pytest.raises(ArlmError, match="unknown quantization"):
        quantize_model(_tiny(), "int3")
    with pytest.raises(ArlmError, match="group size 16"):
        quantize_model(_tiny(), "int4", group_size=16)
    with pytest.raises(ArlmError, match="multiple of the group size"):
        Int4Linear.from_float(_linear(out_features=16, in_features=48), 32)
    with pytest.raises(ArlmError, match="outputs of 16"):
        Int4Linear.from_float(_linear(out_features=6, in_features=64), 32)


def test_q8_0_blocks_are_held_as_they_are_only_where_the_kernels_can():
    """GGUF's Q8_0 blocks stay blocks on arlm's kernels with the inputs by 32 and the outputs by 16; elsewhere the
    layer is refused in one line (and the loader decodes those tensors instead: interop/gguf_quant.py)."""
    assert q8_0_fits(48, 96) == native.available()
    assert not q8_0_fits(40, 96) and not q8_0_fits(48, 80)
    codes = torch.randint(-128, 128, (40, 96), generator=torch.Generator().manual_seed(0)).to(torch.int8)
    with pytest.raises(ArlmError, match="Q8_0 weight needs arlm's CPU kernels"):
        Int8Linear.from_blocks(codes, torch.full((40, 3), 0.01))
