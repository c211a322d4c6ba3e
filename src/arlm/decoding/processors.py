"""Logits processors, each a small pure function over (B, V) scores, composed in Hugging Face's order:
repetition penalty, no-repeat n-gram, min new tokens, then temperature, top-k, top-p, min-p. Those that look at
earlier tokens see only a row's real tokens: `starts` (B,) gives the index of each left-padded row's first one."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from arlm.config import GenerationConfig

NEG_INF = float("-inf")


@dataclass(frozen=True)
class History:
    """What the processors need to know about the sequences beyond their ids."""

    starts: torch.Tensor | None = None  # (B,) index of each row's first real token; None: no left padding
    prompt_length: int = 0  # width of the (left-padded) prompts: later columns are generated tokens
    eos_id: int | None = None  # the token min_new_tokens holds back


def prompt_starts(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B,) index of each left-padded row's first real token, from a (B, T) mask (None: no padding)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return (attention_mask != 0).int().argmax(dim=1)


def repetition_penalty(
    scores: torch.Tensor, sequences: torch.Tensor, penalty: float, starts: torch.Tensor | None = None
) -> torch.Tensor:
    """CTRL-style: scores of tokens already in the sequence are divided (if > 0) or multiplied by penalty;
    positions before a row's start (left padding) are not counted."""
    if penalty == 1.0:
        return scores
    V = scores.shape[-1]
    if starts is not None:
        positions = torch.arange(sequences.shape[1], device=sequences.device)
        sequences = sequences.masked_fill(positions[None] < starts[:, None], V)  # padding -> a spare column
    padded = torch.nn.functional.pad(scores, (0, 1))  # (B, V+1)
    seen = torch.gather(padded, 1, sequences)  # (B, S)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return padded.scatter(1, sequences, seen)[:, :V]


def no_repeat_ngram(
    scores: torch.Tensor, sequences: torch.Tensor, n: int, starts: torch.Tensor | None = None
) -> torch.Tensor:
    """Forbid any token that would complete an n-gram already present in the row's real tokens."""
    if n <= 0 or sequences.shape[1] < n:
        return scores
    scores = scores.clone()
    rows = sequences.tolist()
    first = [0] * len(rows) if starts is None else starts.tolist()
    for b, row in enumerate(rows):
        row = row[first[b] :]
        prefix = tuple(row[len(row) - n + 1 :]) if n > 1 else ()
        banned = {row[i + n - 1] for i in range(len(row) - n + 1) if tuple(row[i : i + n - 1]) == prefix}
        if banned:
            scores[b, list(banned)] = NEG_INF
    return scores


def min_new_tokens(scores: torch.Tensor, new_tokens: int, minimum: int, eos_id: int | None) -> torch.Tensor:
    """Mask EOS while fewer than `minimum` tokens have been generated (transformers' min_new_tokens)."""
    if eos_id is None or new_tokens >= minimum:
        return scores
    return scores.index_fill(1, torch.tensor([eos_id], device=scores.device), NEG_INF)


def temperature(scores: torch.Tensor, value: float) -> torch.Tensor:
    """Divide scores by the temperature (> 0)."""
    return scores if value == 1.0 else scores / value


def top_indices(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest scores along the last dim and their indices, (..., k) each, best first, ties broken by the
    lowest index, as greedy's argmax breaks them: bfloat16 logits tie often (a step of 0.125 near 20), and
    torch.topk's order among ties is unspecified, which made beam width 1 pick another token than greedy."""
    values, indices = torch.topk(scores, k, dim=-1)
    boundary = (scores >= values[..., -1:]).sum(-1) > k  # more scores than k reach the k-th
    within = (values[..., 1:] == values[..., :-1]).any(-1)  # two of the k tie
    if not bool((boundary | within).any()):
        return values, indices
    ordered, order = torch.sort(scores, dim=-1, descending=True, stable=True)  # (equal scores: lower index first)
    return ordered[..., :k], order[..., :k]


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores and every score tied with the k-th (as transformers' TopKLogitsWarper: dropping
    tied tokens by id would bias sampling towards low ids), -inf elsewhere; so where scores tie at the top (bfloat16
    logits), top-k 1 samples among the tied tokens."""
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]  # (B, 1)
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the most probable tokens whose mass reaches p (always at least one)."""
    if p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, descending=False)  # ascending, as HF
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    remove_sorted = cumulative <= (1.0 - p)
    remove_sorted[:, -1] = False  # the most probable token stays
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, NEG_INF)


def min_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Keep tokens whose probability is at least p times the top token's probability."""
    if p <= 0.0:
        return scores
    probs = scores.softmax(dim=-1)  # (B, V)
    threshold = p * probs.max(dim=-1, keepdim=True).values  # (B, 1)
    return scores.masked_fill(probs < threshold, NEG_INF)


def process(
    scores: torch.Tensor,
    sequences: torch.Tensor,
    config: GenerationConfig,
    history: History | None = None,
) -> torch.Tensor:
    """Apply the configured chain to next-token scores (B, V) given the sequences so far (B, S)."""
    h = history or History()
    scores = repetition_penalty(scores, sequences, config.repetition_penalty, h.starts)
    scores = no_repeat_ngram(scores, sequences, config.no_repeat_ngram_size, h.starts)
    scores = min_new_tokens(scores, sequences.shape[1] - h.prompt_length, config.min_new_tokens, h.eos_id)
    if config.strategy in ("greedy", "beam") or config.temperature == 0:
        return scores
    scores = temperature(scores, config.temperature)
    scores = top_k(scores, config.top_k)
    scores = top_p(scores, config.top_p)
    return min_p(scores, config.min_p)


def logits_to_probs(
    scores: torch.Tensor, sequences: torch.Tensor, config: GenerationConfig, history: History | None = None
) -> torch.Tensor:
    """The sampling distribution (B, V) after every processor."""
    return process(scores.float(), sequences, config, history).softmax(dim=-1)


def best(scores: torch.Tensor) -> torch.Tensor:
    """Greedy's token per row: the first index of the largest score, (..., V) -> (...); argmax's answer (ties and NaN
    alike). A float32 row on the CPU goes through NumPy's argmax, which reads a 49,152-wide row ~8x faster than
    torch's max(dim) and ~20x faster than its argmax (docs/perf.md); elsewhere max(dim) answers."""
    if scores.device.type == "cpu" and scores.dtype == torch.float32:
        return torch.as_tensor(scores.detach().numpy().argmax(-1), dtype=torch.long)  # (...)
    return scores.max(dim=-1).indices


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row (B,) drawn from probs (B, V)."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def add_logit_bias(scores: torch.Tensor, bias: dict[int, float]) -> torch.Tensor:
    """OpenAI's logit_bias: each given token's score (B, V) raised by its bias (-100 all but bans it, 100 all but
    forces it)."""
    ids = torch.tensor(list(bias), device=scores.device)  # (n,)
    values = torch.tensor(list(bias.values()), dtype=scores.dtype, device=scores.device)  # (n,)
    return scores.index_add(-1, ids, values.expand(scores.shape[0], -1))


def presence_frequency_penalty(
    scores: torch.Tensor, generated: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties over the generated ids (B, n): each token's score (B, V) lowered by frequency times its
    count, and by presence once if it occurs at all."""
    if generated.shape[1] == 0 or (presence == 0.0 and frequency == 0.0):
        return scores
    counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
    return scores - frequency * counts - presence * (counts > 0).to(scores.dtype)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A seeded generator for reproducible sampling (None: the global RNG); any integer seeds it, taken modulo 2^64
    (torch's seeds: a negative one as its two's complement), of which torch's CPU generator keeps the low 32 bits
    (seeds 2^32 apart draw alike, as with torch.manual_seed and transformers)."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed % 2**64)
    return generator
