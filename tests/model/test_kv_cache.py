import pytest
import torch

from arlm.config import ModelConfig
from arlm.model import native
from arlm.model.inference import FusedBlocks, optimize_for_decoding
from arlm.model.quant import quantize_model
from arlm.model.transformer import Transformer


def _model(
    flavour: str, dtype: torch.dtype = torch.float32, d_model: int = 32, quant: str | None = None
) -> Transformer:
    torch.manual_seed(0)
    config = ModelConfig(
        flavour=flavour, vocab_size=64, block_size=64, n_layer=2, n_head=4, d_model=d_model, n_kv_head=2, init_std=0.3
    )
    if flavour == "gpt2":
        config.n_kv_head = None
    model = Transformer(config).eval().to(dtype)
    if quant:
        model = quantize_model(model, quant)
    return optimize_for_decoding(model, chunks=2, batch_invariant=True)  # as the server


def _alone(model, prompt: list[int], steps: list[int]) -> list[torch.Tensor]:
    """Logits of a batch-1 prefill and one-token steps on a plain KVCache, as generate() computes them."""
    cache = model.new_cache(1, 40)
    out = [model(torch.tensor([prompt]), kv_cache=cache, num_logits=1)[0, -1]]
    for token in steps:
        out.append(model(torch.tensor([[token]]), kv_cache=cache)[0, -1])
    return out


FUSED = [(torch.float32, None), (torch.bfloat16, None), (torch.float32, "int8"), (torch.float32, "int4")]
SLOT_MODELS = [
    ("llama", torch.float32, 32, None),
    ("gpt2", torch.float32, 32, None),
    ("llama", torch.bfloat16, 32, None),
    *[("llama", dtype, 64, quant) for dtype, quant in FUSED],
]


@pytest.mark.parametrize(("flavour", "dtype", "d_model", "quant"), SLOT_MODELS)
@torch.inference_mode()
def test_each_row_of_a_slot_step_is_bitwise_the_batch1_step(flavour, dtype, d_model, quant):
    """Rows at different positions, in any slot, beside any other rows: the very same logits as alone (16-bit
    weights too, whose attention runs in float32: widened once for all rows, per row alone). Heads of 16 (d_model
    64) fit arlm's kernels, where a step runs every block in one call (FusedBlocks)."""
    model = _model(flavour, dtype, d_model, quant)
    if d_model == 64 and native.available():
        assert isinstance(model.blocks, FusedBlocks)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [12, 13, 14, 15, 16]]
    steps = [[20, 21, 22, 23], [30, 31, 32, 33], [40, 41, 42, 43], [50, 51, 52, 53]]
    cache = model.new_slot_cache(6, 40)
    slots = [5, 0, 3, 1]  # any slot
    got = [[] for _ in prompts]
    for i, (prompt, slot) in enumerate(zip(prompts, slots)):
        row = cache.row(slot)
        got[i].append(model(torch.tensor([prompt]), kv_cache=row, num_logits=1)[0, -1])
        cache.sync(slot, row)
    for step in range(4):
        rows = [i for i in range(4) if i <= step]  # the batch grows: 1, 2, 3, then 4 rows
        batch = cache.batch([slots[i] for i in rows])
        tokens = torch.tensor([[steps[i][step - i]] for i in rows])
        logits = model.decode_slots(tokens, batch)
        for j, i in enumerate(rows):
            got[i].append(logits[j])
    assert cache.lengths == [len(prompts[1]) + 3, len(prompts[3]) + 1, 0, len(prompts[2]) + 2, 0, len(prompts[0]) + 4]
    for i, prompt in enumerate(prompts):
        expected = _alone(model, prompt, steps[i][: 4 - i])
        for a, b in zip(got[i], expected):
            assert torch.equal(a, b)


@pytest.mark.skipif(not native.available(), reason="needs arlm's kernels")
@torch.inference_mode()
def test_a_slot_step_runs_every_block_in_one_kernel_call(monkeypatch):
    """As a batch-1 step does (FusedBlocks): one call a block cost the server's steps ~1.2 ms of Python at int4."""
    model, calls = _model("llama", torch.float32, 64), []
    cache, real = model.new_slot_cache(2, 40), native.blocks
    for slot, prompt in enumerate([[1, 2, 3], [4, 5]]):
        row = cache.row(slot)
        model(torch.tensor([prompt]), kv_cache=row, num_logits=1)
        cache.sync(slot, row)
    monkeypatch.setattr(native, "blocks", lambda *args: calls.append(1) or real(*args))
    model.decode_slots(torch.tensor([[7], [8]]), cache.batch([0, 1]))  # (2, V)
    assert calls == [1]


def test_slot_rows_share_storage_and_reset():
    model = _model("llama")
    cache = model.new_slot_cache(2, 16)
    row = cache.row(1)
    model(torch.tensor([[1, 2, 3]]), kv_cache=row)
    cache.sync(1, row)
    assert cache.lengths == [0, 3]
    assert cache.buffers.k[:, 1, :, :3].abs().sum() > 0 and cache.buffers.k[:, 0].abs().sum() == 0
    cache.reset(1)
    assert cache.row(1).length == 0
    with pytest.raises(ValueError, match="full"):
        cache.lengths[0] = 16
        cache.batch([0])


def test_the_compiled_step_writes_the_cache_in_place_with_no_copy_of_the_whole_buffers():
    """decode_step compiled (inductor, CPU): the new key and value go into the static cache where they belong; writing
    them into a view of one layer made inductor copy both whole buffers back every step (a `copy_` kernel over every
    layer), which halved the CPU compiled step's speed and cost the H200 70-300 us a token."""
    from torch._inductor.utils import run_and_get_code

    from arlm.model import native

    model = _model("llama")
    cache = model.new_cache(1, 16)
    torch._dynamo.mark_static_address(cache.k)
    torch._dynamo.mark_static_address(cache.v)
    native.prepare_compile()
    step = torch.compile(model.decode_step, fullgraph=True)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]), kv_cache=cache)
        expected = cache.k.clone(), cache.v.clone()
        torch._dynamo.reset()
        logits, code = run_and_get_code(step, torch.tensor([[4]]), torch.tensor([3]), cache)
    assert logits.shape == (1, 64)
    assert not [line for line in "\n".join(code).splitlines() if "fused_copy_" in line]  # no copy-back kernel
    assert torch.equal(cache.k[:, :, :, :3], expected[0][:, :, :, :3])  # earlier positions untouched
    assert cache.k[:, :, :, 3].abs().sum() > 0 and cache.v[:, :, :, 3].abs().sum() > 0  # position 3 written


@pytest.mark.parametrize("index", [[2, 0, 0], [0, 0, 1, 1, 2, 2], [1]], ids=["beams", "expanded", "narrowed"])
def test_a_reorder_moves_the_rows_filled_positions_and_copies_no_more(index, monkeypatch):
    """Row i becomes old row index[i] over the filled positions (all a forward reads); what it copies is those
    positions, not the whole buffer (beam search reorders every step: copying max_len positions made a step's cost
    grow with max_new_tokens, 60 s for 64 tokens at 8,000 on SmolLM2)."""
    from arlm.model.kv_cache import KVCache

    torch.manual_seed(0)
    cache = KVCache(2, 3, 2, 100, 4)
    cache.k.normal_(), cache.v.normal_()
    cache.length = 7
    before_k, before_v = cache.k[:, :, :, :7].clone(), cache.v[:, :, :, :7].clone()
    selected = []
    original = torch.Tensor.index_select
    monkeypatch.setattr(torch.Tensor, "index_select", lambda t, *a: selected.append(t.shape) or original(t, *a))
    cache.reorder(torch.tensor(index))
    rows = torch.tensor(index)
    assert cache.batch_size == len(index) and cache.max_len == 100
    assert torch.equal(cache.k[:, :, :, :7], before_k[:, rows]) and torch.equal(cache.v[:, :, :, :7], before_v[:, rows])
    assert selected == [(2, 3, 2, 7, 4)] * 2
