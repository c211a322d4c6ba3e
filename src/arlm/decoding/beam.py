"""Beam search with Hugging Face's semantics: finished hypotheses kept apart from running beams, EOS taken only
within the top num_beams candidates, length penalty over the generated tokens only, early_stopping True /
False / "never", and the KV cache reordered by beam index. Each step notes its candidates' tokens: the model's own
log-probability of each (before the repetition penalty and the other processors, as the API's logprobs) and, traced,
its MAX_TOP likeliest alternatives, read off the log-softmax the search takes anyway (no forward pass more); the
returned hypotheses' notes are followed back through the candidates they came from once the search ends (a record
copied with the beams every step made a long search's cost grow with the square of its length)."""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from arlm.config import GenerationConfig
from arlm.decoding.engine import Engine, cache_dtype
from arlm.decoding.processors import History, process, top_indices
from arlm.decoding.types import MAX_TOP, GenerationOutput, StopCheck, TokenCallback, TraceCallback, stop_tail

NEG = -1.0e9  # the large negative HF adds to rule a candidate out


class Finished(NamedTuple):
    """The K best finished hypotheses per prompt: ids (B, K, max_len), length-penalised scores (B, K), lengths in
    generated tokens (B, K), whether the slot holds one (B, K), and which of its last step's candidates each was
    (B, K), where its tokens' notes are followed back from (_follow)."""

    ids: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor
    filled: torch.Tensor
    candidate: torch.Tensor


class Trail(NamedTuple):
    """Per step: its candidates' notes (B, keep, 1 + 2m) and, for each candidate, the previous step's candidate it
    extends (B, keep)."""

    notes: list[torch.Tensor]
    links: list[torch.Tensor]


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tensor (B, N, ...) indexed along dim 1 by index (B, K) -> (B, K, ...)."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.gather(tensor, 1, index.expand(*index.shape[:2], *tensor.shape[2:]))


def _still_improvable(
    improvable: torch.Tensor,
    running_scores: torch.Tensor,
    done: Finished,
    generated: int,
    max_generated: int,
    config: GenerationConfig,
) -> torch.Tensor:
    """(B, 1) whether a running beam could still beat the worst finished one (HF's heuristic)."""
    lp = config.length_penalty
    length = max_generated if (config.early_stopping == "never" and lp > 0.0) else generated
    best_running = running_scores[:, :1] / (length**lp)
    worst_finished = torch.where(done.filled, done.scores.min(dim=1, keepdim=True).values, NEG)
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
    top_logprobs: int | None = None,
) -> GenerationOutput:
    """The best num_return_sequences of num_beams beams per prompt, with their length-penalised scores; trace gets
    the beams after each step (_beam_event). A candidate that should_stop(prompt row, its generated ids) stops
    ends as a hypothesis, as one ending in EOS does; on_token gets the returned rows' tokens once the search ends,
    and the output's token_logprobs the model's own log-probability of each, token_top its top_logprobs likeliest
    alternatives (None: MAX_TOP where traced, else none)."""
    B, T = prompt_ids.shape
    K = config.num_beams
    device, max_len, eos_id = prompt_ids.device, T + config.max_new_tokens, history.eos_id
    starts = None if history.starts is None else history.starts.repeat_interleave(K)  # (B*K,)
    beam_history = History(starts, T, eos_id)  # the K beams of a row share its padding
    keep = max(2, 1 + (eos_id is not None)) * K  # candidates kept a step, so K survive even if all top-K end
    top_k_mask = torch.arange(keep, device=device) < K  # only these may become finished hypotheses
    start = time.perf_counter()
    logits, mask = _prefill(engine, prompt_ids, attention_mask, K, max_len, cache_dtype(config.kv_dtype))
    running, running_scores, done = _initial_beams(prompt_ids, K, max_len, pad_id)
    m = (MAX_TOP if trace is not None else 0) if top_logprobs is None else top_logprobs
    m, trail, chosen = min(m, logits.shape[-1]), Trail([], []), None
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    offsets = (torch.arange(B, device=device) * K)[:, None]  # (B, 1)
    for cur in range(T, max_len):
        length = cur + 1 - T  # tokens generated once this step is taken
        top_scores, source_beam, token, candidates, notes = _candidates(
            logits, running, running_scores, cur, config, beam_history, keep, m
        )
        trail.notes.append(notes)  # (B, keep, 1 + 2m)
        trail.links.append(source_beam if chosen is None else _gather(chosen, source_beam))  # (B, keep)
        ends = (token == eos_id) if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        ends = ends | (cur + 1 >= max_len) | _stop_hits(should_stop, candidates[:, :, T : cur + 1])  # (B, keep)
        alive_scores = top_scores + ends.float() * NEG  # running beams: the best K candidates that did not end
        chosen = top_indices(alive_scores, K)[1]  # (B, K)
        running, running_scores = _gather(candidates, chosen), _gather(alive_scores, chosen)
        parent = _gather(source_beam, chosen)  # (B, K)
        # finished hypotheses: candidates that ended within the top K, length-penalised, merged with the old ones
        new_scores = _hypothesis_scores(top_scores, done.filled, improvable, length, config)
        done = _merge_finished(done, candidates, new_scores, ends & top_k_mask, length)
        improvable = _still_improvable(improvable, running_scores, done, length, max_len - T, config)
        if trace is not None:
            trace(_beam_event(running[:, :, T : cur + 1], running_scores, done, T))
        open_beams = not (bool(done.filled.all()) and config.early_stopping is True)
        if not (bool(improvable.any()) and open_beams and not bool(ends.all())):
            break
        engine.reorder((parent + offsets).flatten())
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = engine.step(running[:, :, cur].reshape(B * K, 1), mask)  # (B*K, V)
    out = _beam_output(done, config.num_return_sequences, T, start, trail)
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
    rows = stop_tail(should_stop, generated).tolist()
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


def _initial_beams(
    prompt_ids: torch.Tensor, K: int, max_len: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, Finished]:
    """Running beams (B, K, max_len) holding the prompt and their scores (B, K); no finished hypotheses yet."""
    B, T = prompt_ids.shape
    device = prompt_ids.device
    running = torch.full((B, K, max_len), pad_id, dtype=torch.long, device=device)
    running[:, :, :T] = prompt_ids[:, None]
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = NEG  # at first only beam 0's continuations count (the K copies are identical)
    finished_scores = torch.full((B, K), NEG, device=device)
    finished_len = torch.zeros(B, K, dtype=torch.long, device=device)
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    candidate = torch.zeros(B, K, dtype=torch.long, device=device)
    return running, running_scores, Finished(running.clone(), finished_scores, finished_len, is_finished, candidate)


def _candidates(
    logits: torch.Tensor,
    running: torch.Tensor,
    running_scores: torch.Tensor,
    cur: int,
    config: GenerationConfig,
    history: History,
    keep: int,
    m: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `keep` best one-token extensions of the running beams (B, K, max_len) from logits (B*K, V): their
    summed log-probabilities, source beams and tokens (B, keep) each, their ids (B, keep, max_len) and their
    tokens' notes (B, keep, 1 + 2m: _token_record)."""
    B, K, _ = running.shape
    V = logits.shape[-1]
    sequences = running[:, :, :cur].reshape(B * K, cur)
    own = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V): the model's own
    log_probs = process(own, sequences, config, history)  # penalties, n-grams, min new tokens
    totals = (log_probs.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)
    top_scores, top_index = top_indices(totals, keep)  # (B, keep) each; ties: the lowest index, as greedy
    source_beam, token = top_index // V, top_index % V
    candidates = _gather(running, source_beam)  # (B, keep, max_len)
    candidates[:, :, cur] = token
    return top_scores, source_beam, token, candidates, _token_record(own.view(B, K, V), top_index, source_beam, m)


def _token_record(own: torch.Tensor, top_index: torch.Tensor, source_beam: torch.Tensor, m: int) -> torch.Tensor:
    """(B, keep, 1 + 2m): each candidate's token's own log-probability (own: (B, K, V), the model's), then its
    source beam's m likeliest tokens: their ids (in float32, exact below 2**24), then their log-probabilities."""
    B, K, V = own.shape
    chosen = torch.gather(own.reshape(B, K * V), 1, top_index)[:, :, None]  # (B, keep, 1)
    best, ids = own.topk(m, dim=-1)  # (B, K, m) each
    return torch.cat([chosen, _gather(ids, source_beam).float(), _gather(best, source_beam)], dim=-1)


def _hypothesis_scores(
    top_scores: torch.Tensor, is_finished: torch.Tensor, improvable: torch.Tensor, length: int, config: GenerationConfig
) -> torch.Tensor:
    """Candidates' scores (B, keep) as finished hypotheses: length-penalised, and ruled out for a prompt whose K
    hypotheses are all in with early_stopping True, or whose beams can no longer improve."""
    scores = top_scores / (length**config.length_penalty)
    full = is_finished.all(dim=-1, keepdim=True) & (config.early_stopping is True)
    return scores + full.float() * NEG + (~improvable).float() * NEG


def _merge_finished(
    old: Finished,
    candidates: torch.Tensor,
    scores: torch.Tensor,
    ends: torch.Tensor,
    length: int,
) -> Finished:
    """The K best of the finished hypotheses and the candidates (B, keep, max_len) that end here (ends), each
    `length` tokens long and scored `scores` (B, keep)."""
    K = old.scores.shape[1]
    merged_scores = torch.cat([old.scores, scores + (~ends).float() * NEG], dim=1)
    best = top_indices(merged_scores, K)[1]
    new_len = torch.full_like(ends, length, dtype=torch.long)
    return Finished(
        _gather(torch.cat([old.ids, candidates], dim=1), best),
        _gather(merged_scores, best),
        _gather(torch.cat([old.lengths, new_len], dim=1), best),
        _gather(torch.cat([old.filled, ends], dim=1), best),
        _gather(torch.cat([old.candidate, torch.arange(ends.shape[1], device=ends.device).expand_as(ends)], 1), best),
    )


def _follow(trail: Trail, lengths: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """(B, n, longest, 1 + 2m): the notes of hypotheses `lengths` (B, n) tokens long, each its last step's
    `candidate` (B, n), followed back through the candidates each step's came from (zeros past a hypothesis's end)."""
    B, n = lengths.shape
    longest = int(lengths.max())
    out = trail.notes[0].new_zeros(B, n, longest, trail.notes[0].shape[-1])
    at = candidate.clone()  # (B, n): each hypothesis's candidate at step t once t reaches its last one
    for t in range(longest - 1, -1, -1):
        live = lengths > t  # position t is in the hypothesis
        out[:, :, t] = torch.where(live[..., None], _gather(trail.notes[t], at), 0.0)
        at = torch.where(live, _gather(trail.links[t], at), at)
    return out


def _beam_output(done: Finished, n: int, T: int, start: float, trail: Trail) -> GenerationOutput:
    """The n best finished hypotheses per prompt as (B*n, T + longest) rows, with their scores and timing; the
    tokens counted (new_tokens, tokens/s) are those of each prompt's best hypothesis, the search's answer, whatever n
    is: the search does the same work for any n (counting all n returned made its rate grow with n), and the rows'
    own lengths are in stats["lengths"]; each token's record: token_logprobs (B*n, longest) and, traced, token_top."""
    B = done.ids.shape[0]
    lengths = done.lengths[:, :n].flatten()  # (B*n,)
    width = T + int(lengths.max())
    sequences = done.ids[:, :n, :width].reshape(B * n, width)
    record = _follow(trail, done.lengths[:, :n], done.candidate[:, :n]).reshape(B * n, width - T, -1)
    m = (record.shape[-1] - 1) // 2
    top = (record[..., 1 : 1 + m].long(), record[..., 1 + m :].float()) if m else None
    seconds = time.perf_counter() - start
    new_tokens = int(done.lengths[:, 0].sum())  # (B,): the best hypothesis of each prompt
    stats = {
        "new_tokens": new_tokens,
        "seconds": seconds,
        "tokens_per_s": new_tokens / max(seconds, 1e-9),
        "lengths": lengths.tolist(),
    }
    out = GenerationOutput(sequences, done.scores[:, :n].flatten(), stats, T)
    out.token_logprobs, out.token_top = record[..., 0].float(), top
    return out


def _beam_event(running: torch.Tensor, running_scores: torch.Tensor, done: Finished, T: int) -> dict:
    """The beams after a step, per prompt: running beams (generated ids (B, K, n), summed log-probabilities) and
    finished hypotheses (ids, length-penalised scores), best first."""
    running_rows = [
        [{"tokens": ids, "score": score} for ids, score in zip(beams, scores)]
        for beams, scores in zip(running.tolist(), running_scores.tolist())
    ]
    finished_rows = []
    for b, (scores, lengths) in enumerate(zip(done.scores.tolist(), done.lengths.tolist())):
        hypotheses = [
            {"tokens": done.ids[b, k, T : T + n].tolist(), "score": score}
            for k, (score, n) in enumerate(zip(scores, lengths))
            if score > NEG / 2  # the slot holds a hypothesis
        ]
        finished_rows.append(hypotheses)
    return {"event": "beams", "step": running.shape[2], "running": running_rows, "finished": finished_rows}
