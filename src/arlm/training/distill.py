"""A draft for speculative decoding, trained to match a target's next-token distributions (`arlm distill`).

The draft shares the target's vocabulary and width; it starts from the target's embeddings, final norm and
a few of its blocks (evenly spaced), then learns by KL divergence to the target's logits over a corpus, in
the one training loop (train.distill_from)."""

from __future__ import annotations

import dataclasses

import torch

from arlm.config import ModelConfig
from arlm.errors import ArlmError
from arlm.model.transformer import Transformer


def draft_from_teacher(teacher: Transformer, layers: int) -> Transformer:
    """A `layers`-block model with the teacher's embeddings, final norm and evenly spaced blocks."""
    if not 1 <= layers <= teacher.config.n_layer:
        raise ArlmError(f"the draft needs between 1 and {teacher.config.n_layer} layers, got {layers}")
    config = dataclasses.replace(teacher.config, n_layer=layers)
    draft = Transformer(config)
    picks = torch.linspace(0, teacher.config.n_layer - 1, layers).round().long().tolist()
    with torch.no_grad():
        draft.tok_emb.weight.copy_(teacher.tok_emb.weight)
        if draft.pos_emb is not None:
            draft.pos_emb.weight.copy_(teacher.pos_emb.weight)
        draft.norm.load_state_dict(teacher.norm.state_dict())
        if not config.tie_embeddings:
            draft.lm_head.weight.copy_(teacher.lm_head.weight)
        for mine, theirs in zip(draft.blocks, picks):
            mine.load_state_dict(teacher.blocks[theirs].state_dict())
    return draft


def with_model_config(draft: Transformer, config: ModelConfig) -> Transformer:
    """The draft's weights in a model of `config` (its shape with another context: the position table cut)."""
    resized = Transformer(config)
    state = draft.state_dict()
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][: config.block_size]
    resized.load_state_dict(state)
    return resized
