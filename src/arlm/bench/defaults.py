"""The benchmarks' defaults that their commands' flags and signatures show, with no torch to import (so
`arlm bench ... --help` loads none): the training step's shape and batch, the context lengths of the memory
benchmark."""

from __future__ import annotations

DEFAULT_SHAPE = {  # the training step's model (`arlm bench train`; --model.KEY VALUE changes it)
    "flavour": "gpt2",
    "n_layer": 6,
    "n_head": 6,
    "d_model": 384,
    "block_size": 256,
    "vocab_size": 8192,
    "bias": True,
}
DEFAULT_BATCH = 8
LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)  # sequence lengths of `arlm bench memory`
