"""Self-speculation's drafts. `self:L`: the target's own first L blocks, then its own final norm and output head (an
early exit, as in LayerSkip / Draft & Verify), with no weight of its own: a view of the target sharing every tensor,
so it costs no memory beyond its KV cache of L layers. `self:DTYPE`: the target's own weights at a cheaper precision
(e.g. int4 drafting for float32: the same model, a few times faster a token, agreeing with the target on most
tokens; loaded by the command, which knows the dtypes). Every drafted token is verified by the full target, so
speculative decoding with either is exact by construction.

Both draft over the target's own KV cache (`shares_cache`): the keys and values the target wrote for the text so far
are what the draft would have computed (self:L: exactly; self:DTYPE: the same up to the precision), so the draft makes
no forward over the prompt and no catch-up after a verification; its few own positions (the drafted tokens) lie past
the target's and are overwritten by the target's verification of them, before it reads them."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Collection
from typing import TYPE_CHECKING

import torch
from torch import nn

from arlm.errors import ArlmError

if TYPE_CHECKING:
    from arlm.data.tokenizers import Tokenizer

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


def parse_self_draft(spec: str, dtypes: Collection[str] = (), target_dtype: str | None = None) -> int | str | None:
    """The layer count of a `self:L` draft reference (the target's first L layers), the dtype of a `self:DTYPE` one
    (the target's own weights at another precision, e.g. self:int4, one of `dtypes`; refused where it is
    `target_dtype`, the target's own), None for any other reference (a model to load)."""
    if not spec.startswith(SELF_PREFIX):
        return None
    value = spec[len(SELF_PREFIX) :]
    if value.isascii() and value.isdigit():  # (not "²", which isdigit takes and int refuses)
        return int(value)
    if value in dtypes and value == target_dtype:
        other = "int4" if value != "int4" else "int8"
        raise ArlmError(
            f"--draft self:{value} would draft with the target itself: it is loaded at {value} already; "
            f"draft at another precision (e.g. --draft self:{other}) or give the target another --dtype"
        )
    if value in dtypes:
        return value
    choices = f" or self:DTYPE with DTYPE one of {', '.join(dtypes)}" if dtypes else ""
    raise ArlmError(f"a self-draft is written self:L with L a number of layers (e.g. self:12){choices}, got {spec!r}")


def check_draft_vocabulary(draft: Tokenizer, target: Tokenizer, ref: str, target_ref: str) -> None:
    """Refuse a draft model whose tokenizer is not the target's (its token ids would mean other text)."""
    if draft.fingerprint() != target.fingerprint():
        raise ArlmError(f"the draft {ref} uses another vocabulary than {target_ref}; they must share a tokenizer")


def shares_cache(draft: nn.Module, target: nn.Module, cache_dtype: torch.dtype) -> bool:
    """Whether the draft can draft over the target's KV cache (of `cache_dtype`): it is the target's own first blocks
    (self:L) or a model of the target's very architecture (the target at another precision, self:DTYPE), and its
    cache would hold the same dtype. A separate model of that very architecture (a fine-tune of the target) is taken
    for the latter too: its drafts then read the target's keys and values (the output is the target's either way;
    what is accepted changes; README)."""
    if draft.config.n_layer > target.config.n_layer or draft.new_cache(1, 1).k.dtype != cache_dtype:
        return False
    if dataclasses.replace(draft.config, n_layer=target.config.n_layer) != target.config:
        return False
    return draft.config.n_layer == target.config.n_layer or all(
        a is b for a, b in zip(draft.blocks, target.blocks, strict=False)
    )


def shares_weights(draft: nn.Module, target: nn.Module) -> bool:
    """Whether every tensor of the draft is one of the target's (a self-draft adds no weights)."""
    owned = {id(p) for p in target.parameters()}
    return all(id(p) in owned for p in draft.parameters())
