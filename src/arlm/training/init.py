"""Start training from existing weights (`train.init`): an arlm checkpoint, HF folder, GGUF or 'smollm2'."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from arlm.config import RunConfig
from arlm.data.prepare import PreparedData
from arlm.errors import ArlmError
from arlm.interop.loading import load_model
from arlm.model.transformer import Transformer

FROM_CONFIG = ("block_size", "dropout", "attention")  # what train.init's model takes from model:, not from init


def initial_model(config: RunConfig, data: PreparedData, log: Callable[[str], None]) -> Transformer:
    """Load train.init's weights; its shape replaces config.model (context capped at model.block_size)."""
    loaded = load_model(config.train.init)
    if loaded.tokenizer.fingerprint() != data.tokenizer.fingerprint():
        raise ArlmError(
            f"the data was prepared with another tokenizer than {config.train.init}'s; prepare it with "
            f"--data.tokenizer {config.train.init}"
        )
    source = loaded.config.model
    block = min(config.model.block_size, source.block_size)
    kept = {name: getattr(config.model, name) for name in FROM_CONFIG}
    config.model = dataclasses.replace(source, **{**kept, "block_size": block})
    model = Transformer(config.model)
    state = loaded.model.state_dict()
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][:block]
    model.load_state_dict(state)
    log(f"initialised from {loaded.source} (context {block})")
    return model
