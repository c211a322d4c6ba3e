"""Continuous batching: many sequences decoded together, each in its own slot of a SlotCache, joining and leaving
at step boundaries, each with its own processors, seed and stop conditions.

A step (1) runs one batched forward over the last token of every decoding sequence, (2) prefills newly admitted
prompts (a prompt longer than `prefill_chunk` in several chunks; on arlm's kernels the step's prompts in one forward,
Transformer.prefill_many, each attending alone, so each gets generate()'s bits; elsewhere each alone), and (3)
chooses each sequence's next token from its own logits with generate()'s own choose_next. A sequence's logits do
not depend on the other rows of the step (the batch-invariant decode layout of model/inference.py, and per-row
attention in model/kv_cache.py), so its tokens are exactly those generate() gives it alone: greedy the same text,
seeded sampling the same draws. One exception is documented in docs/serving.md: a prompt split into chunks is
rounded differently from a one-shot prefill, so it is exact only up to the last bit of the attention.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from arlm.config import GenerationConfig
from arlm.decoding.engine import check_finite, shared_beginning
from arlm.decoding.generate import check_length, choose_next
from arlm.decoding.grammar import Matcher
from arlm.decoding.processors import History, add_logit_bias, make_generator, presence_frequency_penalty
from arlm.errors import ArlmError
from arlm.model.inference import rows_invariant
from arlm.model.kv_cache import KVCache

BATCH_STRATEGIES = ("greedy", "sample")
PREFILL_CHUNK = 512


@dataclass
class Scored:
    """A token's log-probability under the model's own distribution and the k most likely tokens there."""

    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def score(logits: torch.Tensor, tokens: list[int], k: int) -> list[Scored]:
    """Each row's token's log-probability under that row of logits (T, V), and the row's k most likely (id,
    log-probability)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (T, V)
    chosen = logprobs.gather(1, torch.tensor(tokens, device=logprobs.device)[:, None])[:, 0]  # (T,)
    scored = [Scored(value) for value in chosen.tolist()]
    if k > 0:
        values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]), dim=-1)  # (T, k) each
        for s, row_ids, row_values in zip(scored, ids.tolist(), values.tolist()):
            s.top = list(zip(row_ids, row_values))
    return scored


@dataclass
class BatchSequence:
    """One sequence to decode: its prompt, settings and, as it runs, its tokens and where it is."""

    prompt: list[int]
    config: GenerationConfig  # strategy greedy or sample, with its processors, seed and max_new_tokens
    eos_id: int | None = None
    top_logprobs: int = -1  # -1: no log-probabilities; 0: the chosen token's; k > 0: also the k most likely
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per occurrence among the generated tokens
    logit_bias: dict[int, float] = field(default_factory=dict)  # OpenAI's: token id -> added to its logit
    prompt_logprobs: bool = False  # also score the prompt's tokens as it is prefilled (OpenAI's echo with logprobs)
    prompt_scores: list[Scored] = field(default_factory=list)  # prompt tokens 1.. given those before, once prefilled
    matcher: Matcher | None = None  # the JSON grammar the text keeps to (decoding/grammar.py), following its tokens
    generated: list[int] = field(default_factory=list)
    slot: int | None = None
    filled: int = 0  # prompt tokens already in the cache
    finish_reason: str | None = None  # "stop" (EOS or a stop string), "length", "cancelled", ...
    generator: torch.Generator | None = None
    ids: torch.Tensor | None = None  # (1, S) prompt + generated, for the processors
    pending: torch.Tensor | None = None  # (1,) the chosen token, not yet in the cache
    logits: torch.Tensor | None = None  # (1, V) next-token logits, not yet used

    @property
    def finished(self) -> bool:
        """Whether the sequence has ended (for any reason)."""
        return self.finish_reason is not None


@dataclass
class Emitted:
    """A token chosen in a step: its sequence, its id, its log-probability and the most likely alternatives
    (under the model's own distribution, before any processor), and whether it ended the sequence."""

    sequence: BatchSequence
    token: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


class BatchEngine:
    """Slots for up to max_batch sequences of at most max_len positions (prompt + new tokens) on one model."""

    def __init__(
        self,
        model: torch.nn.Module,
        max_batch: int,
        max_len: int | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
        kv_dtype: torch.dtype | None = None,
        reuse_prefix: bool = False,
    ) -> None:
        """kv_dtype: the slots' cache's (None: the model's, new_slot_cache's default). reuse_prefix: a new prompt
        goes to the free slot whose kept tokens share its longest prefix and is prefilled from there (the keys and
        values of those positions were computed by another forward: its logits equal a fresh prefill's up to
        rounding, as a prompt prefilled in chunks does, not bit for bit)."""
        if max_batch < 1 or prefill_chunk < 1:
            raise ArlmError(f"max_batch and prefill_chunk must be >= 1, got {max_batch} and {prefill_chunk}")
        self.model = model
        self.max_len = min(max_len or model.config.block_size, model.config.block_size)
        self.cache = model.new_slot_cache(max_batch, self.max_len, dtype=kv_dtype)
        self.prefill_chunk = prefill_chunk
        self.shared_prefill = rows_invariant(model)  # a step's new prompts share one forward
        self.device = next(model.parameters()).device
        self.free = list(range(max_batch))  # least recently freed first (a slot freed goes to the end)
        self.reuse_prefix = reuse_prefix
        self.kept: list[list[int]] = [[] for _ in range(max_batch)]  # a free slot's tokens whose keys it holds
        self.active: list[BatchSequence] = []
        self.steps = 0

    @property
    def max_batch(self) -> int:
        """Number of slots."""
        return self.cache.slots

    def check(self, seq: BatchSequence) -> None:
        """Raise ArlmError if the sequence cannot run here (strategy, settings, length)."""
        seq.config.validate()
        if seq.config.strategy not in BATCH_STRATEGIES:
            raise ArlmError(f"strategy {seq.config.strategy} cannot share a batch; batched: greedy, sample")
        if not seq.prompt:
            raise ArlmError("the prompt is empty; it needs at least one token", param="prompt")
        if seq.config.max_new_tokens < 1:
            raise ArlmError(f"max_tokens must be >= 1, got {seq.config.max_new_tokens}", param="max_tokens")
        check_length(len(seq.prompt), seq.config.max_new_tokens, self.max_len, name="max_tokens")

    def admit(self, seq: BatchSequence) -> int:
        """Give the sequence a free slot; it is prefilled and starts decoding from the next step. Returns how many
        of its prompt's tokens the slot held already (reuse_prefix; else 0)."""
        self.check(seq)
        if not self.free:
            raise ArlmError("no free slot")
        seed = seq.config.seed if seq.config.seed is not None else random.SystemRandom().randrange(2**63)
        generator = make_generator(seed, self.device)  # (before a slot is taken: nothing to undo if it fails)
        reusable = self.reuse_prefix and not seq.prompt_logprobs  # a scored prompt needs every position's logits
        shared = {slot: shared_beginning(self.kept[slot], seq.prompt) if reusable else 0 for slot in self.free}
        # ties: the least recently freed slot (the one least likely to hold a conversation going on: with more
        # conversations than slots, the most recently freed one is the next turn's, llama-server's LRU choice)
        seq.slot = max(self.free, key=lambda slot: shared[slot])
        self.free.remove(seq.slot)
        seq.filled = shared[seq.slot]
        self.cache.reset(seq.slot, keep=seq.filled)
        seq.generator = generator
        seq.ids = torch.tensor([seq.prompt], dtype=torch.long, device=self.device)  # (1, T)
        self.active.append(seq)
        return seq.filled

    def release(self, seq: BatchSequence, reason: str | None = None) -> None:
        """Free the sequence's slot (ending it with `reason` unless it has ended already)."""
        if seq.finish_reason is None:
            seq.finish_reason = reason or "cancelled"
        if seq in self.active:
            self.active.remove(seq)
            self.free.append(seq.slot)
            self.kept[seq.slot] = seq.ids[0, : self.cache.lengths[seq.slot]].tolist()
        seq.pending = seq.logits = None

    @torch.inference_mode()
    def step(self) -> list[Emitted]:
        """One step: a forward over every decoding sequence, prefill of new ones, the next token of each.
        Sequences that end (EOS, max_new_tokens) leave and free their slots; the others keep their token pending."""
        decoding = [s for s in self.active if s.pending is not None]
        if decoding:
            tokens = torch.stack([s.pending for s in decoding])  # (A, 1)
            logits = self.model.decode_slots(tokens, self.cache.batch([s.slot for s in decoding]))  # (A, V)
            for i, s in enumerate(decoding):
                s.logits, s.pending = logits[i : i + 1], None
        self._prefill()
        emitted = [self._choose(s) for s in list(self.active) if s.logits is not None]
        for e in emitted:
            if e.sequence.finished:
                self.release(e.sequence)
        self.steps += 1
        return emitted

    def _prefill(self) -> None:
        """Prefill waiting prompts, at most prefill_chunk tokens this step; a prompt that fits one chunk is never
        split (it is prefilled whole, as generate() does), a longer one goes chunk by chunk. Where the model's rows
        are batch-invariant (rows_invariant) the step's prompts share one forward, each with its own attention and
        the bits it gets alone; elsewhere each goes alone."""
        chunks = self._waiting_chunks()
        groups = [chunks] if self.shared_prefill and len(chunks) > 1 else [[chunk] for chunk in chunks]
        for group in groups:
            rows = [(s, self.cache.row(s.slot), take) for s, take in group]
            inputs = [(s.ids[:, s.filled : s.filled + t], row, t if s.prompt_logprobs else 1) for s, row, t in rows]
            if len(inputs) > 1:
                outputs = self.model.prefill_many(inputs)  # (1, n_i, V) each
            else:
                ids, row, n = inputs[0]
                outputs = [self.model(ids, kv_cache=row, num_logits=n)]  # (1, n, V)
            for (s, row, take), logits in zip(rows, outputs):
                self._prefilled(s, row, take, logits)

    def _waiting_chunks(self) -> list[tuple[BatchSequence, int]]:
        """The prompts (and how many of their tokens) this step prefills, in order, within prefill_chunk tokens."""
        budget, chunks = self.prefill_chunk, []
        for s in self.active:
            remaining = len(s.prompt) - s.filled
            if remaining == 0 or s.pending is not None or s.logits is not None:
                continue
            take = min(remaining, self.prefill_chunk)
            if take > budget and budget < self.prefill_chunk:
                break  # this prompt waits for the next step rather than be split
            chunks.append((s, take))
            budget -= take
            if budget <= 0:
                break
        return chunks

    def _prefilled(self, s: BatchSequence, row: KVCache, take: int, logits: torch.Tensor) -> None:
        """A chunk of s's prompt is in its row's cache, with its logits (1, n, V): scored, synced to the slot; the
        last chunk leaves the next-token logits."""
        if s.prompt_logprobs:
            targets = s.prompt[s.filled + 1 : s.filled + 1 + take]  # what each position predicts
            s.prompt_scores += score(logits[0, : len(targets)], targets, s.top_logprobs)
        self.cache.sync(s.slot, row)
        s.filled += take
        if s.filled == len(s.prompt):
            s.logits = check_finite(logits[:, -1])  # (1, V)

    def _choose(self, s: BatchSequence) -> Emitted:
        """The sequence's next token from its logits, by its own settings; the sequence ends on EOS or length."""
        logits, s.logits = s.logits, None  # (1, V)
        scores = logits
        if s.presence_penalty or s.frequency_penalty:
            generated = s.ids[:, len(s.prompt) :]  # (1, n)
            scores = presence_frequency_penalty(logits, generated, s.presence_penalty, s.frequency_penalty)
        if s.logit_bias:
            scores = add_logit_bias(scores, s.logit_bias)
        if s.matcher is not None:
            scores = s.matcher.mask(scores)
        eos = s.eos_id if s.config.stop_at_eos else None
        history = History(None, len(s.prompt), eos)  # one unpadded row: min_new_tokens counts from the prompt
        token = choose_next(scores, s.ids, s.config, s.generator, history)  # (1,)
        s.ids = torch.cat([s.ids, token[:, None]], dim=1)  # (1, S+1)
        tid = int(token)
        s.generated.append(tid)
        if s.matcher is not None:
            s.matcher.advance(tid)
        out = Emitted(s, tid)
        if s.top_logprobs >= 0:
            (scored,) = score(logits, [tid], s.top_logprobs)
            out.logprob, out.top = scored.logprob, scored.top
        if s.config.stop_at_eos and s.eos_id is not None and tid == s.eos_id:
            s.finish_reason = "stop"
        elif len(s.generated) >= s.config.max_new_tokens:
            s.finish_reason = "length"
        else:
            s.pending = token
        return out
