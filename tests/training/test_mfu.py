import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from arlm.config import ModelConfig
from arlm.model.transformer import Transformer
from arlm.training.loss import next_token_loss
from arlm.training.mfu import mfu, peak_flops, tf32_allowed


def test_peak_table_override_and_mfu():
    assert peak_flops(torch.device("cpu"), "bfloat16") is None
    assert peak_flops(torch.device("cpu"), "float32", override_tflops=2.0) == 2e12
    assert mfu(1000.0, 6e9, 1e13) == 0.6
    assert mfu(1000.0, 6e9, None) is None


@pytest.mark.parametrize(
    ("name", "half", "tf32", "fp32"),
    [
        ("NVIDIA H100 80GB HBM3", 989, 494, 67),
        ("NVIDIA L40", 181, 90.5, 90.5),  # not the L4's (a fragment of its name)
        ("NVIDIA L40S", 362, 183, 91.6),
        ("NVIDIA H200 NVL", 835, 418, 60),  # not the H200 SXM's
        ("NVIDIA A100-SXM4-80GB", 312, 156, 19.5),  # not the A10's
    ],
)
def test_a_gpus_peak_is_its_own_and_float32s_is_tf32_only_where_allowed(monkeypatch, name, half, tf32, fp32):
    """The longest fragment of the table in the card's name gives its peaks; float32 training counts against the
    TF32 peak only where PyTorch may use TF32 (not its default: MFU of true fp32 against TF32 reads ~7x too low)."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    # set by hand and restored: monkeypatch cannot restore an attribute of this module
    matmul, allowed = torch.backends.cuda.matmul, torch.backends.cuda.matmul.allow_tf32
    cuda = torch.device("cuda")
    try:
        matmul.allow_tf32 = False
        assert peak_flops(cuda, "bfloat16") == peak_flops(cuda, "float16") == half * 1e12
        assert peak_flops(cuda, "float32") == fp32 * 1e12
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
        assert peak_flops(cuda, "float32") == tf32 * 1e12
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
        matmul.allow_tf32 = True
        assert peak_flops(cuda, "float32") == tf32 * 1e12
    finally:
        matmul.allow_tf32 = allowed
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some New GPU")
    assert peak_flops(cuda, "bfloat16") is None


def test_float32s_peak_reads_pytorchs_newer_tf32_switch(monkeypatch):
    """torch.backends.cuda.matmul.fp32_precision = 'tf32' (the switch PyTorch now recommends) counts as TF32 allowed;
    once it is set, reading the older switches raises, which crashed a float32 run's Trainer at start."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        assert peak_flops(torch.device("cuda"), "float32") == 494e12
        matmul.fp32_precision = "ieee"
        assert peak_flops(torch.device("cuda"), "float32") == 67e12
    finally:
        matmul.fp32_precision = before
    assert not tf32_allowed()  # (the older switches are readable again)


@pytest.mark.parametrize(("flavour", "tied"), [("gpt2", True), ("llama", False)])
def test_flops_per_token_equals_torch_flop_counter(flavour, tied):
    """FLOPs of a real forward and backward pass, counted by torch's FlopCounterMode (matrix products only),
    against the formula; the formula also counts 6 FLOPs per vector parameter (norm weights, biases), which only
    cost element-wise work, so those are added to the count. Naive attention: the counter sees its T x T products
    (it has no formula for the CPU SDPA kernel)."""
    torch.manual_seed(0)
    shape = dict(vocab_size=100, block_size=64, n_layer=2, n_head=4, d_model=32, tie_embeddings=tied)
    extra = {"n_kv_head": 2} if flavour == "llama" else {}
    model = Transformer(ModelConfig(flavour=flavour, attention="naive", **shape, **extra))
    x = torch.randint(0, 100, (2, 64))
    with FlopCounterMode(display=False) as counter:
        loss = next_token_loss(model(x), x).loss_sum / x.numel()  # (the trainer's loss)
        loss.backward()
    vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert model.flops_per_token(64) == counter.get_total_flops() / x.numel() + 6 * vectors
