"""Beam search with Hugging Face's semantics: finished hypotheses kept apart from running beams, EOS taken only
within the top num_beams candidates, length penalty over the generated tokens only, early_stopping True /
False / "never", and the KV cache reordered by beam index."""

from __future__ import annotations

import time

import torch

from arlm.config import GenerationConfig
from arlm.decoding.engine import Engine, cache_dtype
from arlm.decoding.processors import History, process, top_indices
from arlm.decoding.types import GenerationOutput, StopCheck, TokenCallback, TraceCallback

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
) -> torch.Tensor:
    """(B, 1) whether a running beam could still beat the worst finished one (HF's heuristic)."""
    lp = config.length_penalty
    length = max_generated if (config.early_stopping == "never" and lp > 0.0) else generated
    best_running = running_scores[:, :1] / (length**lp)
    worst_finished = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, NEG)
    return improvable & (best_running > worst_finished).any(dim=-1, keepdim=True)


@torch.inference_mode()
def beam_search(
    engine: Engine,
    prompt_ids: torch.Tensor,
    config: GenerationConfig,
    *,
    attention_mask: torch.Tensor | None,
    history: History,
    pad_id: int,
    on_token: TokenCallback | None = None,
    should_stop: StopCheck | None = None,
    trace: TraceCallback | None = None,
) -> GenerationOutput:
    """The best num_return_sequences of num_beams beams per prompt, with their length-penalised scores; trace gets
    the beams after each step (_beam_event). A candidate that should_stop(prompt row, its generated ids) stops
    ends as a hypothesis, as one ending in EOS does; on_token gets the returned rows' tokens once the search ends."""
    B, T = prompt_ids.shape
    K = config.num_beams
    device, max_len, eos_id = prompt_ids.device, T + config.max_new_tokens, history.eos_id
    starts = None if history.starts is None else history.starts.repeat_interleave(K)  # (B*K,)
    beam_history = History(starts, T, eos_id)  # the K beams of a row share its padding
    keep = max(2, 1 + (eos_id is not None)) * K  # candidates kept a step, so K survive even if all top-K end
    top_k_mask = torch.arange(keep, device=device) < K  # only these may become finished hypotheses
    start = time.perf_counter()
    logits, mask = _prefill(engine, prompt_ids, attention_mask, K, max_len, cache_dtype(config.kv_dtype))
    running, running_scores, finished, finished_scores, finished_len, is_finished = _initial_beams(
        prompt_ids, K, max_len, pad_id
    )
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    offsets = (torch.arange(B, device=device) * K)[:, None]  # (B, 1)
    for cur in range(T, max_len):
        length = cur + 1 - T  # tokens generated once this step is taken
        top_scores, source_beam, token, candidates = _candidates(
            logits, running, running_scores, cur, config, beam_history, keep
        )
        ends = (token == eos_id) if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        ends = ends | (cur + 1 >= max_len) | _stop_hits(should_stop, candidates[:, :, T : cur + 1])  # (B, keep)
        alive_scores = top_scores + ends.float() * NEG  # running beams: the best K candidates that did not end
        chosen = top_indices(alive_scores, K)[1]  # (B, K)
        running, running_scores = _gather(candidates, chosen), _gather(alive_scores, chosen)
        parent = _gather(source_beam, chosen)  # (B, K)
        # finished hypotheses: candidates that ended within the top K, length-penalised, merged with the old ones
        new_scores = _hypothesis_scores(top_scores, is_finished, improvable, length, config)
        finished, finished_scores, finished_len, is_finished = _merge_finished(
            (finished, finished_scores, finished_len, is_finished), candidates, new_scores, ends & top_k_mask, length
        )
        improvable = _still_improvable(
            improvable, running_scores, finished_scores, is_finished, length, max_len - T, config
        )
        if trace is not None:
            trace(_beam_event(running[:, :, T : cur + 1], running_scores, finished, finished_scores, finished_len, T))
        open_beams = not (bool(is_finished.all()) and config.early_stopping is True)
        if not (bool(improvable.any()) and open_beams and not bool(ends.all())):
            break
        engine.reorder((parent + offsets).flatten())
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = engine.step(running[:, :, cur].reshape(B * K, 1), mask)  # (B*K, V)
    out = _beam_output(finished, finished_scores, finished_len, config.num_return_sequences, T, start)
    return _stream(out, on_token)


def _stream(out: GenerationOutput, on_token: TokenCallback | None) -> GenerationOutput:
    """Give on_token the returned rows' tokens (B*n,) position by position, once the search has ended."""
    if on_token is not None:
        for column in out.sequences[:, out.prompt_length :].t():
            on_token(column)
    return out


def _stop_hits(should_stop: StopCheck | None, generated: torch.Tensor) -> torch.Tensor | bool:
    """(B, keep) whether should_stop(row, generated ids) fires for each candidate's generated ids (B, keep, n)."""
    if should_stop is None:
        return False
    rows = generated.tolist()
    hits = [[should_stop(b, ids) for ids in row] for b, row in enumerate(rows)]
    return torch.tensor(hits, dtype=torch.bool, device=generated.device)


def _prefill(
    engine: Engine,
    prompt_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    K: int,
    max_len: int,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Encode each prompt (B, T) once into a cache of `dtype` and copy its cache to its K beams: the first logits
    (B*K, V) and the mask (B*K, T)."""
    B = prompt_ids.shape[0]
    engine.open(B, max_len, dtype=dtype)
    logits = engine.prefill(prompt_ids, attention_mask)  # (B, V)
    engine.reorder(torch.arange(B, device=prompt_ids.device).repeat_interleave(K))
    mask = None if attention_mask is None else attention_mask.repeat_interleave(K, dim=0)
    return logits.repeat_interleave(K, dim=0), mask


def _initial_beams(prompt_ids: torch.Tensor, K: int, max_len: int, pad_id: int) -> tuple[torch.Tensor, ...]:
    """Running beams (B, K, max_len) holding the prompt and their scores (B, K); no finished hypotheses yet
    (their ids, scores, lengths and filled flags)."""
    B, T = prompt_ids.shape
    device = prompt_ids.device
    running = torch.full((B, K, max_len), pad_id, dtype=torch.long, device=device)
    running[:, :, :T] = prompt_ids[:, None]
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = NEG  # at first only beam 0's continuations count (the K copies are identical)
    finished_scores = torch.full((B, K), NEG, device=device)
    finished_len = torch.zeros(B, K, dtype=torch.long, device=device)
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    return running, running_scores, running.clone(), finished_scores, finished_len, is_finished


def _candidates(
    logits: torch.Tensor,
    running: torch.Tensor,
    running_scores: torch.Tensor,
    cur: int,
    config: GenerationConfig,
    history: History,
    keep: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `keep` best one-token extensions of the running beams (B, K, max_len) from logits (B*K, V): their
    summed log-probabilities, source beams and tokens (B, keep) each, and their ids (B, keep, max_len)."""
    B, K, _ = running.shape
    V = logits.shape[-1]
    sequences = running[:, :, :cur].reshape(B * K, cur)
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
    log_probs = process(log_probs, sequences, config, history)  # penalties, n-grams, min new tokens
    totals = (log_probs.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)
    top_scores, top_index = top_indices(totals, keep)  # (B, keep) each; ties: the lowest index, as greedy
    source_beam, token = top_index // V, top_index % V
    candidates = _gather(running, source_beam)  # (B, keep, max_len)
    candidates[:, :, cur] = token
    return top_scores, source_beam, token, candidates


def _hypothesis_scores(
    top_scores: torch.Tensor, is_finished: torch.Tensor, improvable: torch.Tensor, length: int, config: GenerationConfig
) -> torch.Tensor:
    """Candidates' scores (B, keep) as finished hypotheses: length-penalised, and ruled out for a prompt whose K
    hypotheses are all in with early_stopping True, or whose beams can no longer improve."""
    scores = top_scores / (length**config.length_penalty)
    full = is_finished.all(dim=-1, keepdim=True) & (config.early_stopping is True)
    return scores + full.float() * NEG + (~improvable).float() * NEG


def _merge_finished(
    old: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    candidates: torch.Tensor,
    scores: torch.Tensor,
    ends: torch.Tensor,
    length: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The K best of the finished hypotheses (ids, scores, lengths, filled; (B, K, ...)) and the candidates
    (B, keep, max_len) that end here (ends), each `length` tokens long and scored `scores` (B, keep)."""
    finished, finished_scores, finished_len, is_finished = old
    K = finished_scores.shape[1]
    merged_scores = torch.cat([finished_scores, scores + (~ends).float() * NEG], dim=1)
    best = top_indices(merged_scores, K)[1]
    new_len = torch.full_like(ends, length, dtype=torch.long)
    return (
        _gather(torch.cat([finished, candidates], dim=1), best),
        _gather(merged_scores, best),
        _gather(torch.cat([finished_len, new_len], dim=1), best),
        _gather(torch.cat([is_finished, ends], dim=1), best),
    )


def _beam_output(
    finished: torch.Tensor, finished_scores: torch.Tensor, finished_len: torch.Tensor, n: int, T: int, start: float
) -> GenerationOutput:
    """The n best finished hypotheses per prompt as (B*n, T + longest) rows, with their scores and timing; the
    tokens counted (new_tokens, tokens/s) are those of each prompt's best hypothesis, the search's answer, whatever n
    is: the search does the same work for any n (counting all n returned made its rate grow with n), and the rows'
    own lengths are in stats["lengths"]."""
    B = finished.shape[0]
    lengths = finished_len[:, :n].flatten()  # (B*n,)
    width = T + int(lengths.max())
    sequences = finished[:, :n, :width].reshape(B * n, width)
    seconds = time.perf_counter() - start
    new_tokens = int(finished_len[:, 0].sum())  # (B,): the best hypothesis of each prompt
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
