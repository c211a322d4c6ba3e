"""Self-speculation's draft: the target's own first `layers` blocks, then its own final norm and output head (an
early exit, as in LayerSkip / Draft & Verify), with no weight of its own. The draft is a view of the target sharing
every tensor, so it costs no memory beyond its KV cache of `layers` layers, and, since every drafted token is
verified by the full target, speculative decoding with it is exact by construction."""

from __future__ import annotations

import copy
import dataclasses

from torch import nn

from arlm.errors import ArlmError

SELF_PREFIX = "self:"


def self_draft(model: nn.Module, layers: int) -> nn.Module:
    """The target's first `layers` blocks with its final norm and head, as a model of the same class sharing the
    target's tensors (its forward and new_cache are the target's, over fewer blocks)."""
    total = model.config.n_layer
    if not 1 <= layers < total:
        raise ArlmError(f"a self-draft takes 1 to {total - 1} of the target's {total} layers, got {layers}")
    draft = copy.copy(model)  # shares every parameter, buffer and submodule with the target ...
    draft._modules = dict(model._modules)  # ... but has its own list of children,
    draft._modules["blocks"] = model.blocks[:layers]  # whose blocks are the first `layers` (a list of their class)
    draft.config = dataclasses.replace(model.config, n_layer=layers)  # so its caches hold `layers` layers
    return draft


def parse_self_draft(spec: str) -> int | None:
    """The layer count of a `self:L` draft reference, None for any other reference (a model to load)."""
    if not spec.startswith(SELF_PREFIX):
        return None
    value = spec[len(SELF_PREFIX) :]
    if not value.isdigit():
        raise ArlmError(f"a self-draft is written self:L with L a number of layers (e.g. self:12), got {spec!r}")
    return int(value)


def shares_weights(draft: nn.Module, target: nn.Module) -> bool:
    """Whether every tensor of the draft is one of the target's (a self-draft adds no weights)."""
    owned = {id(p) for p in target.parameters()}
    return all(id(p) in owned for p in draft.parameters())
