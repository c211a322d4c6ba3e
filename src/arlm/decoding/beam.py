"""Beam search with Hugging Face's semantics: finished hypotheses kept apart from running beams, EOS taken only
within the top num_beams candidates, length penalty over the generated tokens only, early_stopping True /
False / "never", and the KV cache reordered by beam index."""

from __future__ import annotations

import time

import torch

from arlm.config import GenerationConfig
from arlm.decoding.generate import GenerationOutput, TraceCallback
from arlm.decoding.processors import History, process

NEG = -1.0e9  # the large negative HF adds to rule a candidate out


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (B, N, ...) indexed along dim 1 by index (B, K) -> (B, K, ...)."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.gather(tensor, 1, index.expand(*index.shape[:2], *tensor.shape[2:]))


def _still_improvable(
    improvable: torch.Tensor,
    running_scores: torch.Tensor,
    finished_scores: torch.Tensor,
    is_finished: torch.Tensor,
    generated: int,
    max_generated: int,
    config: GenerationConfig,
):
    """(B, 1) whether a running beam could still beat the worst finished one (HF's heuristic)."""
    lp = config.length_penalty
    length = max_generated if (config.early_stopping == "never" and lp > 0.0) else generated
    best_running = running_scores[:, :1] / (length**lp)
    worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, NEG)
    return improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)


@torch.inference_mode()
def beam_search(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    config: GenerationConfig,
    *,
    attention_mask: torch.Tensor | None,
    history: History,
    pad_id: int,
    trace: TraceCallback | None = None,
) -> GenerationOutput:
    """The best num_return_sequences of num_beams beams per prompt, with their length-penalised scores; trace gets
    the beams after each step (_beam_event)."""
    B, T = prompt_ids.shape
    K, V = config.num_beams, model.config.vocab_size
    device = prompt_ids.device
    max_len = T + config.max_new_tokens
    eos_id = history.eos_id
    starts = None if history.starts is None else history.starts.repeat_interleave(K)  # (B*K,)
    beam_history = History(starts, T, eos_id)  # the K beams of a row share its padding
    keep = max(2, 1 + (eos_id is not None)) * K  # candidates kept a step, so K survive even if all top-K end
    top_k_mask = torch.arange(keep, device=device) < K  # only these may become finished hypotheses
    start = time.perf_counter()

    cache = model.new_cache(B, max_len)
    logits = model(prompt_ids, kv_cache=cache, attention_mask=attention_mask, num_logits=1)[:, -1]  # (B, V)
    cache.reorder(torch.arange(B, device=device).repeat_interleave(K))  # the K beams of a prompt share its prefill
    logits = logits.repeat_interleave(K, dim=0)  # (B*K, V)
    mask = None if attention_mask is None else attention_mask.repeat_interleave(K, dim=0)  # (B*K, T)

    running = torch.full((B, K, max_len), pad_id, dtype=torch.long, device=device)
    running[:, :, :T] = prompt_ids[:, None]
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = NEG  # at first only beam 0's continuations count (the K copies are identical)
    finished = running.clone()
    finished_scores = torch.full((B, K), NEG, device=device)
    finished_len = torch.zeros(B, K, dtype=torch.long, device=device)
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    offsets = (torch.arange(B, device=device) * K)[:, None]  # (B, 1)

    for cur in range(T, max_len):
        sequences = running[:, :, :cur].reshape(B * K, cur)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        log_probs = process(log_probs, sequences, config, beam_history)  # penalties, n-grams, min new tokens
        totals = (log_probs.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)
        top_scores, top_index = torch.topk(totals, keep)  # (B, keep) each
        source_beam, token = top_index // V, top_index % V
        candidates = _gather(running, source_beam)  # (B, keep, max_len)
        candidates[:, :, cur] = token
        ends = (token == eos_id) if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        ends = ends | (cur + 1 >= max_len)  # (B, keep)

        # running beams: the best K candidates that did not end
        alive_scores = top_scores + ends.float() * NEG
        chosen = torch.topk(alive_scores, K).indices  # (B, K)
        running, running_scores = _gather(candidates, chosen), _gather(alive_scores, chosen)
        parent = _gather(source_beam, chosen)  # (B, K)

        # finished hypotheses: candidates that ended within the top K, length-penalised, merged with the old ones
        new_scores = top_scores / ((cur + 1 - T) ** config.length_penalty)
        full = is_finished.all(dim=-1, keepdim=True) & (config.early_stopping is True)
        new_scores = new_scores + full.float() * NEG + (~improvable).float() * NEG
        new_scores = new_scores + (~(ends & top_k_mask)).float() * NEG
        merged_scores = torch.cat([finished_scores, new_scores], dim=1)
        best = torch.topk(merged_scores, K).indices
        finished = _gather(torch.cat([finished, candidates], dim=1), best)
        finished_scores = _gather(merged_scores, best)
        new_len = torch.full_like(token, cur + 1 - T)
        finished_len = _gather(torch.cat([finished_len, new_len], dim=1), best)
        is_finished = _gather(torch.cat([is_finished, ends & top_k_mask], dim=1), best)

        improvable = _still_improvable(
            improvable, running_scores, finished_scores, is_finished, cur + 1 - T, max_len - T, config
        )
        if trace is not None:
            trace(_beam_event(running[:, :, T : cur + 1], running_scores, finished, finished_scores, finished_len, T))
        open_beams = not (bool(is_finished.all()) and config.early_stopping is True)
        if not (bool(improvable.any()) and open_beams and not bool(ends.all())):
            break
        cache.reorder((parent + offsets).flatten())
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = model(running[:, :, cur].reshape(B * K, 1), kv_cache=cache, attention_mask=mask)[:, -1]

    n = config.num_return_sequences
    lengths = finished_len[:, :n].flatten()  # (B*n,)
    width = T + int(lengths.max())
    sequences = finished[:, :n, :width].reshape(B * n, width)
    seconds = time.perf_counter() - start
    new_tokens = int(lengths.sum())
    stats = {
        "new_tokens": new_tokens,
        "seconds": seconds,
        "tokens_per_s": new_tokens / max(seconds, 1e-9),
        "lengths": lengths.tolist(),
    }
    return GenerationOutput(sequences, finished_scores[:, :n].flatten(), stats, T)


def _beam_event(
    running: torch.Tensor,
    running_scores: torch.Tensor,
    finished: torch.Tensor,
    finished_scores: torch.Tensor,
    finished_len: torch.Tensor,
    T: int,
) -> dict:
    """The beams after a step, per prompt: running beams (generated ids (B, K, n), summed log-probabilities) and
    finished hypotheses (ids, length-penalised scores), best first."""
    running_rows = [
        [{"tokens": ids, "score": score} for ids, score in zip(beams, scores)]
        for beams, scores in zip(running.tolist(), running_scores.tolist())
    ]
    finished_rows = []
    for b, (scores, lengths) in enumerate(zip(finished_scores.tolist(), finished_len.tolist())):
        hypotheses = [
            {"tokens": finished[b, k, T : T + n].tolist(), "score": score}
            for k, (score, n) in enumerate(zip(scores, lengths))
            if score > NEG / 2  # the slot holds a hypothesis
        ]
        finished_rows.append(hypotheses)
    return {"event": "beams", "step": running.shape[2], "running": running_rows, "finished": finished_rows}
