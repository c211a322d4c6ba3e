"""How many bits the int kernels must read each input row at: SmolLM2's logits with every linear layer's input
rounded to b-bit integers per group of 32 (d = largest |x| of the group / (2^(b-1) - 1), as arlm's kernels read rows
at 16 bits and llama.cpp's Q4_1 / Q8_0 dot products at 8), against the same float32 model reading them whole.

    .venv/bin/python benchmarks/row_bits.py [--bits 8 10 12 16]

Prints, per b and prompt, max |logit change| / max |logit| (issue 14's criterion 1 asks int4 from the GGUF within
1e-3 of the float32 model holding the same weights) and whether the greedy pick moved. The weights are the file's,
dequantized to float32, so only the rows' rounding differs; not a timing."""

from __future__ import annotations

import argparse

import torch

from arlm.interop.loading import load_model

PROMPTS = [  # tests/interop/test_gguf_quant.py's
    "The capital of France is Paris. The capital of Germany is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Water boils at 100 degrees Celsius at sea level. At the top of a mountain,",
    "Once upon a time, in a small village by the sea, there lived",
    "The three primary colors are",
]


def rounded(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x (..., K) with each group of 32 inputs at `bits`-bit integers times the group's step (K a multiple of 32)."""
    groups = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)  # (..., K / 32, 32)
    step = groups.abs().amax(-1, keepdim=True) / (2 ** (bits - 1) - 1)  # (..., K / 32, 1)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    return (torch.round(groups / safe) * step).reshape(x.shape)


def main() -> None:
    """Print the logits' change per row width and prompt."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 10, 12, 16])
    args = parser.parse_args()
    loaded = load_model("smollm2", dtype="float32")
    model, linear = loaded.model.eval(), torch.nn.functional.linear
    ids = [torch.tensor([loaded.tokenizer.encode(p)]) for p in PROMPTS]  # (1, T) each
    with torch.no_grad():
        whole = [model(x)[0] for x in ids]  # (T, V) each
        for bits in args.bits:
            torch.nn.functional.linear = lambda x, w, b=None, bits=bits: linear(rounded(x, bits), w, b)
            try:
                moved = [model(x)[0] for x in ids]
            finally:
                torch.nn.functional.linear = linear
            for prompt, ref, got in zip(PROMPTS, whole, moved):
                change = float((got - ref).abs().max() / ref.abs().max())
                same = bool(got[-1].argmax() == ref[-1].argmax())
                print(f"{bits:>2} bits  {change:.2e}  greedy pick {'kept' if same else 'MOVED'}  {prompt[:40]!r}")


if __name__ == "__main__":
    main()
