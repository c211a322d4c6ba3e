"""The decoder-only Transformer: GPT-2 flavour (learned positions, LayerNorm, GELU) or Llama flavour
(RoPE, RMSNorm, SwiGLU, grouped-query attention), tied or untied embeddings, one class for both."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from arlm.config import ModelConfig
from arlm.model import native
from arlm.model.attention import CausalSelfAttention, Part, Rotary, attends_in_float32
from arlm.model.kv_cache import CacheView, KVCache, Rope, SlotBatch, SlotCache
from arlm.model.quant import Int4Linear, Int8Linear

INT_LAYERS = (Int8Linear, Int4Linear)  # weights held as codes in buffers, counted by their shape


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in float32 (as HF Llama does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)"""
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused kernel
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed


class MLP(nn.Module):
    """GELU (tanh form, as GPT-2) or SwiGLU (as Llama, with fused gate/up projection)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.flavour == "llama"
        hidden = config.ffn_dim
        self.up = nn.Linear(config.d_model, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.down = nn.Linear(hidden, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)"""
        h = self.up(x)  # (B, T, F) or (B, T, 2F)
        if self.swiglu and self._native(h):
            h = native.swiglu(h.contiguous())  # (B, T, F): one call, each op's rounding as PyTorch's
        elif self.swiglu:
            gate, up = h.chunk(2, dim=-1)  # (B, T, F) each
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")
        return self.dropout(self.down(h))

    def _native(self, h: torch.Tensor) -> bool:
        """Whether SwiGLU runs on arlm's kernel (model/native.py): CPU inference on float32 or bfloat16 rows."""
        inference = not (self.training or h.requires_grad)
        return inference and h.is_cpu and h.dtype in native.ROW_DTYPES and native.available()


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: CacheView | None,
        start: int | torch.Tensor,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)"""
        x = x + self.attn(self.norm1(x), rope, mask, is_causal, kv_cache, start)
        return x + self.mlp(self.norm2(x))

    def forward_many(self, x: torch.Tensor, parts: list[Part]) -> torch.Tensor:
        """Several sequences' rows (1, N, C) -> (1, N, C), as `forward` computes each part alone (attn.forward_many)."""
        x = x + self.attn.forward_many(self.norm1(x), parts)
        return x + self.mlp(self.norm2(x))


class Blocks(nn.ModuleList):
    """The model's blocks, run in order (model/inference.py's FusedBlocks runs them in one call where it can)."""

    def run(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        mask: torch.Tensor | None,
        is_causal: bool,
        kv_cache: CacheView | None,
        start: int | torch.Tensor,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C) through every block."""
        for block in self:
            x = block(x, rope, mask, is_causal, kv_cache, start)
        return x


def make_norm(config: ModelConfig) -> nn.Module:
    """LayerNorm (gpt2) or RMSNorm (llama)."""
    if config.flavour == "llama":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


def _embedding(rows: int, width: int, init: bool) -> nn.Embedding:
    """An embedding table (rows, width): drawn at random (init), else left as allocated."""
    return nn.Embedding(rows, width) if init else nn.Embedding.from_pretrained(torch.empty(rows, width), freeze=False)


class Transformer(nn.Module):
    """Decoder-only language model; knows nothing of data, training or decoding."""

    def __init__(self, config: ModelConfig, *, init: bool = True) -> None:
        """init=False: the weights are left as allocated, for from_weights to fill."""
        super().__init__()
        if config.vocab_size < 1:
            raise ValueError("model.vocab_size must be set (from the tokenizer) before building the model")
        config.validate()
        self.config = config
        self.tok_emb = _embedding(config.vocab_size, config.d_model, init)
        self.pos_emb = _embedding(config.block_size, config.d_model, init) if config.flavour == "gpt2" else None
        self.rotary = (
            Rotary(config.head_dim, config.block_size, config.rope_theta) if config.flavour == "llama" else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = Blocks(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if init:
            self.apply(self._init_weights)
            residual_std = config.init_std / math.sqrt(2 * config.n_layer)
            for block in self.blocks:
                nn.init.normal_(block.attn.proj.weight, std=residual_std)
                nn.init.normal_(block.mlp.down.weight, std=residual_std)

    @classmethod
    def from_weights(cls, config: ModelConfig, state: dict[str, torch.Tensor]) -> Transformer:
        """A model holding `state` (every tensor by load_state_dict's names; a tied head may be left out), built
        without drawing the random weights it replaces (a second or more for SmolLM2): on the meta device, then given
        the tensors, each made contiguous and of the parameter's dtype as load_state_dict's copy would; tied weights
        stay one tensor."""
        with torch.device("meta"):  # no random draws: normal_ on meta tensors alone would import torch._dynamo (~1 s)
            model = cls(config, init=False)
        expected = model.state_dict()
        if config.tie_embeddings and "lm_head.weight" not in state:  # a tied model's files hold the table once
            state = {**state, "lm_head.weight": state["tok_emb.weight"]}
        state = {k: v.to(expected[k].dtype).contiguous() if k in expected else v for k, v in state.items()}
        model.load_state_dict(state, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.tok_emb.weight
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            raise RuntimeError("Transformer.from_weights left a tensor on the meta device")
        return model

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, embeddings: bool = True) -> int:
        """Weight count (tied weights once, an int8 / int4 layer by its weight's shape, not its codes' buffers);
        without the position table and the input table (unless tied to the head) if asked."""
        total = sum(p.numel() for p in self.parameters())
        total += sum(m.out_features * m.in_features for m in self.modules() if isinstance(m, INT_LAYERS))
        if (
            self.config.tie_embeddings
            and isinstance(self.tok_emb, nn.Embedding)
            and isinstance(self.lm_head, INT_LAYERS)
        ):
            total -= self.tok_emb.weight.numel()  # the float table an int head was quantized from: the same weights
        if not embeddings:
            total -= self.config.vocab_size * self.config.d_model if not self.config.tie_embeddings else 0
            total -= self.pos_emb.weight.numel() if self.pos_emb is not None else 0
        return total

    def new_cache(
        self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None, zeroed: bool = True
    ) -> KVCache:
        """An empty KV cache for this model (max_len defaults to block_size; zeroed: see KVCache)."""
        c, weight = self.config, self.norm.weight  # the model's float dtype and device (the table may be int8)
        return KVCache(
            c.n_layer,
            batch_size,
            c.kv_heads,
            max_len or c.block_size,
            c.head_dim,
            dtype=dtype or weight.dtype,
            device=weight.device,
            zeroed=zeroed,
        )

    def flops_per_token(self, context: int) -> float:
        """Training FLOPs per token (forward + backward): 6 N + 12 L T C for attention (PaLM appendix B)."""
        c = self.config
        # Lookups cost no FLOPs: drop the position table, and the input table unless it is tied to the
        # output projection (then it is counted once, as the matmul it is).
        return 6.0 * self.num_params(embeddings=False) + 12.0 * c.n_layer * context * c.d_model

    def forward(
        self,
        idx: torch.Tensor,
        *,
        kv_cache: KVCache | None = None,
        input_pos: int | None = None,
        attention_mask: torch.Tensor | None = None,
        num_logits: int = 0,
    ) -> torch.Tensor:
        """Logits (B, T, V) for ids (B, T) (the loss is training.loss's: one loss path for training and benchmarks).

        kv_cache: keys/values of earlier positions are read from it and this call's are written at
        input_pos (default kv_cache.length). attention_mask: (B, S) with 1 for real tokens over every
        position so far (left padding), or (B, T, T) bool document mask. num_logits > 0 keeps the last ones.
        """
        B, T = idx.shape
        start = input_pos if input_pos is not None else (kv_cache.length if kv_cache is not None else 0)
        self._check_fits(start, T)
        positions = self._positions(B, T, start, attention_mask, idx.device)
        x = self.dropout(self._embed(idx, positions))  # (B, T, C)
        rope = self.rotary(positions) if self.rotary is not None else None
        mask, is_causal = build_mask(T, start, attention_mask, idx.device, cached=kv_cache is not None)
        x = self.blocks.run(x, rope, mask, is_causal, kv_cache, start)
        if kv_cache is not None:
            kv_cache.length = start + T
        if num_logits:
            x = x[:, -num_logits:]
        return self.lm_head(self.norm(x))  # (B, T, V)

    def prefill_many(self, chunks: list[tuple[torch.Tensor, KVCache, int]]) -> list[torch.Tensor]:
        """Several sequences' next chunks in one pass: for chunk i (ids (1, T_i), its own cache, n_i), the logits
        (1, n_i, V) of its last n_i tokens, written into its cache at the cache's length, each chunk's attention
        computed alone as forward(ids, kv_cache=cache, num_logits=n_i) computes it, every other layer over all the
        rows at once. A chunk gets the bits it gets alone where those layers give a row the same bits whatever rows
        share the call (arlm's kernels: model/inference.py's rows_invariant)."""
        device, parts, positions, at = chunks[0][0].device, [], [], 0
        for ids, cache, _ in chunks:
            T, start = ids.shape[1], cache.length
            self._check_fits(start, T)
            positions.append(self._positions(1, T, start, None, device))  # (T,)
            rope = self.rotary(positions[-1]) if self.rotary is not None else None
            mask, is_causal = build_mask(T, start, None, device, cached=True)
            parts.append((slice(at, at + T), rope, mask, is_causal, cache, start))
            at += T
        tokens = torch.cat([ids for ids, _, _ in chunks], dim=1)  # (1, N)
        x = self.dropout(self._embed(tokens, torch.cat(positions)))  # (1, N, C)
        for block in self.blocks:
            x = block.forward_many(x, parts)
        for rows, *_, cache, start in parts:
            cache.length = start + rows.stop - rows.start
        last = torch.cat([x[:, rows.stop - n : rows.stop] for (rows, *_), (_, _, n) in zip(parts, chunks)], dim=1)
        logits = self.lm_head(self.norm(last))  # (1, sum n_i, V)
        return list(logits.split([n for _, _, n in chunks], dim=1))

    def decode_step(self, token: torch.Tensor, pos: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        """Logits (B, V) for one token per row (B, 1) at position tensor pos (1,), attending over the whole
        preallocated cache with a mask: every shape is static, so torch.compile can capture it in a CUDA graph.
        The caller advances the position (kv_cache.length is not touched)."""
        x = self._embed(token, pos)  # (B, 1, C), pos (1,) broadcast over rows
        rope = self.rotary(pos) if self.rotary is not None else None  # (1, 1, 1, hd) each
        mask = (torch.arange(kv_cache.max_len, device=token.device) <= pos)[None, None, None, :]  # (1, 1, 1, S)
        x = self.blocks.run(x, rope, mask, False, kv_cache, pos)
        return self.lm_head(self.norm(x))[:, -1]  # (B, V)

    def new_slot_cache(self, slots: int, max_len: int | None = None, dtype: torch.dtype | None = None) -> SlotCache:
        """An empty slot cache for continuous batching: `slots` sequences of up to max_len positions each. A 16-bit
        model on CPU keeps it in float32, the dtype its attention computes in (widened once when written, not at
        every step for every slot; the values, and so the bits, are the same)."""
        c, weight = self.config, self.norm.weight
        max_len = max_len or c.block_size
        if dtype is None:
            dtype = torch.float32 if attends_in_float32(weight) else weight.dtype
        return SlotCache(c.n_layer, slots, c.kv_heads, max_len, c.head_dim, dtype=dtype, device=weight.device)

    def decode_slots(self, tokens: torch.Tensor, batch: SlotBatch) -> torch.Tensor:
        """Logits (A, V) for one new token per row (A, 1), row i continuing the sequence in slot batch.slots[i] at
        that slot's own length; the slots' lengths advance by one."""
        positions = batch.positions(tokens.device)  # (A, 1)
        x = self._embed(tokens, positions)  # (A, 1, C)
        rope = self.rotary(positions) if self.rotary is not None else None  # (A, 1, 1, hd) each
        x = self.blocks.run(x, rope, None, False, batch, 0)  # every block in one kernel call where they fuse
        batch.advance()
        return self.lm_head(self.norm(x))[:, -1]  # (A, V)

    def _check_fits(self, start: int, T: int) -> None:
        """Refuse T new positions after `start` beyond the model's context."""
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} positions exceeds block_size {self.config.block_size}")

    def _embed(self, idx: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ids (B, T) -> (B, T, C), plus the learned positions' (GPT-2) at `positions`."""
        x = self.tok_emb(idx)  # (B, T, C)
        return x + self.pos_emb(positions) if self.pos_emb is not None else x

    def _positions(
        self, B: int, T: int, start: int, attention_mask: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """(T,) absolute positions, (B, T) counted over real tokens only when rows are left-padded, or (B, T)
        restarting at 0 with each document under a (B, T, T) document mask (a packed document runs as if alone)."""
        if attention_mask is not None and attention_mask.dim() == 3:
            return attention_mask.bool().tril(-1).sum(-1)  # (B, T): earlier tokens of the same document
        if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
            counted = attention_mask.long().cumsum(-1) - 1  # (B, S)
            return counted.clamp(min=0)[:, start : start + T]  # (B, T)
        return torch.arange(start, start + T, device=device)  # (T,)


def build_mask(
    T: int, start: int, attention_mask: torch.Tensor | None, device: torch.device, cached: bool
) -> tuple[torch.Tensor | None, bool]:
    """The (B|1, 1, T, S) bool mask (True = may attend) for queries at [start, start+T), and whether
    plain causal masking (is_causal) is enough instead. A query may always attend to itself."""
    S = start + T
    if attention_mask is None or (attention_mask.dim() == 2 and bool(attention_mask.all())):
        if not cached or start == 0:
            return None, T > 1
        if T == 1:
            return None, False
        return torch.ones(T, S, dtype=torch.bool, device=device).tril(start)[None, None], False
    causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(start)  # (T, S)
    if attention_mask.dim() == 3:  # (B, T, T) document mask, no cache
        allowed = attention_mask.bool() & causal
    else:  # (B, S) padding mask
        allowed = attention_mask[:, None, :S].bool() & causal  # (B, T, S)
        diagonal = torch.zeros(T, S, dtype=torch.bool, device=device)
        diagonal[torch.arange(T), torch.arange(start, S)] = True
        allowed = allowed | diagonal
    return allowed[:, None], False  # (B, 1, T, S)
