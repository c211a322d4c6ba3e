"""`arlm distill`: a draft for speculative decoding, trained to match a target's next-token distributions.

The draft shares the target's vocabulary and width; it starts from the target's embeddings, final norm and
a few of its blocks (evenly spaced), then learns by KL divergence to the target's logits over a corpus, in
the one training loop (train.distill_from)."""

from __future__ import annotations

import dataclasses

import torch

from arlm.config import RunConfig
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


def distill_command(
    config: RunConfig, teacher_ref: str, layers: int, *, resume=None, overwrite: bool = False, log=print
):
    """Train a draft of `layers` blocks against teacher_ref with the given data/train settings."""
    from arlm.loading import load_model
    from arlm.training.run import train_command

    teacher = load_model(teacher_ref)
    config.train.distill_from = teacher_ref
    config.data.tokenizer = teacher_ref
    draft = draft_from_teacher(teacher.model, layers)
    block = min(config.model.block_size, teacher.model.config.block_size)
    config.model = dataclasses.replace(draft.config, block_size=block, dropout=config.model.dropout)
    draft = _with_block_size(draft, config)
    log(
        f"draft: {layers} of the teacher's {teacher.model.config.n_layer} layers, "
        f"{draft.num_params() / 1e6:.1f}M parameters"
    )
    return train_command(config, resume=resume, overwrite=overwrite, log=log, initial_model=draft)


def _with_block_size(draft: Transformer, config: RunConfig) -> Transformer:
    resized = Transformer(config.model)
    state = draft.state_dict()
    if "pos_emb.weight" in state:
        state["pos_emb.weight"] = state["pos_emb.weight"][: config.model.block_size]
    resized.load_state_dict(state)
    return resized
