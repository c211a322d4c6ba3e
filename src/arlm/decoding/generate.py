"""The one generate entry point: prompts in, GenerationOutput out; greedy and sampling share the loop here,
beam search and speculative decoding live in their own files."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from arlm.config import GenerationConfig
from arlm.decoding.beam import beam_search
from arlm.decoding.engine import Engine, cache_dtype, engine_for
from arlm.decoding.grammar import JsonGrammar, Matcher, mask_rows
from arlm.decoding.processors import (
    History,
    best,
    logits_to_probs,
    make_generator,
    process,
    prompt_starts,
    sample,
)
from arlm.decoding.speculative import speculative_generate
from arlm.decoding.types import (
    Callbacks,
    GenerationOutput,
    StopCheck,
    TokenCallback,
    TraceCallback,
    decoding_rate,
    stop_tail,
)
from arlm.errors import ArlmError

SYNC_EVERY = 16  # GPU decoding looks at the stop flags (a device sync) once per this many tokens


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists to (B, T) ids and a (B, T) mask with 1 for real tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p) :] = torch.as_tensor(p.tolist() if isinstance(p, torch.Tensor) else list(p))
            mask[i, width - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def generate(
    model: torch.nn.Module | Engine,
    prompt_ids: torch.Tensor | Sequence[Sequence[int]],
    config: GenerationConfig,
    *,
    attention_mask: torch.Tensor | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    draft: torch.nn.Module | None = None,
    on_token: TokenCallback | None = None,
    should_stop: StopCheck | None = None,
    trace: TraceCallback | None = None,
    grammar: JsonGrammar | None = None,
    top_logprobs: int | None = None,
) -> GenerationOutput:
    """Decode continuations of prompts (B, T) (or lists of ids, left-padded here) by config.strategy.

    model is a model, or an Engine over one (to keep a compiled step and its cache across calls); every strategy
    runs it through the engine's prefill / step / verify (decoding/engine.py). on_token gets the (B,) tokens of each
    step (beam search: the returned hypotheses' tokens, position by position, once the search ends, since the best
    beam can change until then); should_stop ends a row (beam search: a hypothesis, as EOS does). trace, if given,
    receives the strategy's own events as plain dicts: beam search's running beams and finished hypotheses after
    each step, speculative decoding's drafted tokens and how many were accepted after each target forward (greedy
    and sampling have none beyond on_token). An exception it raises ends the generation. grammar: each row's text
    constrained to a JSON schema (greedy and sampling; decoding/grammar.py). top_logprobs: how many likeliest
    alternatives beam search notes with each returned token (the output's token_top; None: MAX_TOP where traced, else
    none; each token's own log-probability is always in token_logprobs)."""
    config.validate()
    check_grammar(grammar, config, eos_id)
    if top_logprobs is not None and config.strategy != "beam":
        raise ArlmError(f"top_logprobs is noted by beam search, not by {config.strategy}", param="top_logprobs")
    if top_logprobs is not None and top_logprobs < 0:
        raise ArlmError(f"top_logprobs must be at least 0; got {top_logprobs}", param="top_logprobs")
    engine, owned = engine_for(model)
    try:
        callbacks = Callbacks(on_token=on_token, should_stop=should_stop, trace=trace)
        return _generate(
            engine, prompt_ids, config, attention_mask, eos_id, pad_id, draft, callbacks, grammar, top_logprobs
        )
    finally:
        if owned:
            engine.close()


def _generate(
    engine: Engine,
    prompt_ids: torch.Tensor | Sequence[Sequence[int]],
    config: GenerationConfig,
    attention_mask: torch.Tensor | None,
    eos_id: int | None,
    pad_id: int | None,
    draft: torch.nn.Module | None,
    callbacks: Callbacks,
    grammar: JsonGrammar | None = None,
    top_logprobs: int | None = None,
) -> GenerationOutput:
    """generate() on its engine: the prompts checked, then the strategy's loop; callbacks: generate's on_token,
    should_stop and trace."""
    model = engine.model
    pad = pad_id if pad_id is not None else (eos_id if eos_id is not None else 0)
    prompt_ids, attention_mask = _prompt_batch(model, prompt_ids, attention_mask, config, pad)
    check_compile(config, attention_mask, prompt_ids.shape[1] + config.max_new_tokens, model.config.block_size)
    if config.max_new_tokens == 0:
        return _prompts_only(prompt_ids, config)
    eos = eos_id if config.stop_at_eos else None
    history = History(prompt_starts(attention_mask), prompt_ids.shape[1], eos)
    common = {"attention_mask": attention_mask, "history": history, **callbacks}
    if config.strategy == "beam":
        return beam_search(engine, prompt_ids, config, **common, pad_id=pad, top_logprobs=top_logprobs)
    if config.strategy in ("speculative", "prompt-lookup"):
        return speculative_generate(engine, prompt_ids, config, draft=draft, **common)
    matchers = None if grammar is None else [grammar.matcher() for _ in range(prompt_ids.shape[0])]
    del common["trace"]  # (greedy and sampling have no events beyond on_token)
    return decode_loop(engine, prompt_ids, config, **common, pad_id=pad, matchers=matchers)


def _prompt_batch(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor | Sequence[Sequence[int]],
    attention_mask: torch.Tensor | None,
    config: GenerationConfig,
    pad: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompts as (B, T) ids and mask on the model's device (lists left-padded), checked against the context,
    each repeated num_return_sequences times for independent samples."""
    if not isinstance(prompt_ids, torch.Tensor):
        if any(len(p) == 0 for p in prompt_ids):
            raise ArlmError("every prompt needs at least one token (use the BOS id for an empty prompt)")
        prompt_ids, attention_mask = left_pad(prompt_ids, pad)
    _check_prompts(prompt_ids, attention_mask, model.config.vocab_size)
    device = next(model.parameters()).device
    prompt_ids = prompt_ids.to(device)
    attention_mask = None if attention_mask is None else attention_mask.to(device)
    sliding = config.strategy in ("greedy", "sample")
    check_length(prompt_ids.shape[1], config.max_new_tokens, model.config.block_size, sliding=sliding)
    if config.strategy == "sample" and config.num_return_sequences > 1:  # N independent samples per prompt
        prompt_ids = prompt_ids.repeat_interleave(config.num_return_sequences, dim=0)  # (B*N, T)
        if attention_mask is not None:
            attention_mask = attention_mask.repeat_interleave(config.num_return_sequences, dim=0)
    return prompt_ids, attention_mask


def _check_prompts(prompt_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int) -> None:
    """Refuse ids outside the vocabulary and a mask that pads anywhere but on the left (B, T)."""
    real = prompt_ids if attention_mask is None else prompt_ids[attention_mask.bool()]
    if real.numel() and not 0 <= int(real.min()) <= int(real.max()) < vocab_size:
        bad = int(real.min()) if int(real.min()) < 0 else int(real.max())
        raise ArlmError(f"prompt id {bad} is outside the model's vocabulary of {vocab_size} ids")
    if attention_mask is not None and bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
        raise ArlmError("attention_mask pads a prompt on the right or inside; pad on the left (generate.left_pad)")


def _prompts_only(prompt_ids: torch.Tensor, config: GenerationConfig) -> GenerationOutput:
    """max_new_tokens 0: the prompts (B, T) come back unchanged (num_return_sequences times each for beam)."""
    n = config.num_return_sequences if config.strategy == "beam" else 1
    sequences = prompt_ids.repeat_interleave(n, dim=0)  # (B*n, T)
    rows = sequences.shape[0]
    scores = torch.zeros(rows, device=prompt_ids.device) if config.strategy == "beam" else None
    stats = {"new_tokens": 0, "seconds": 0.0, "tokens_per_s": 0.0, "lengths": [0] * rows}
    return GenerationOutput(sequences, scores, stats, prompt_ids.shape[1])


def check_length(
    prompt_length: int,
    max_new_tokens: int,
    context: int,
    *,
    sliding: bool = False,
    name: str = "max_new_tokens",
    prompt: str = "prompt",
) -> None:
    """Refuse a prompt that fills the context; without a sliding window, also one that leaves no room for
    max_new_tokens (called `name` in the message: the CLI's flag or the API's argument; `prompt`: the argument
    that holds the prompt, "messages" for a chat request)."""
    if prompt_length >= context:
        raise ArlmError(
            f"the prompt has {prompt_length} tokens; the context holds {context}: shorten it to at most "
            f"{context - 1} tokens (prompts are refused, never truncated)",
            param=prompt,
            code="context_length_exceeded",
        )
    if not sliding and prompt_length + max_new_tokens > context:
        raise ArlmError(
            f"the prompt has {prompt_length} tokens and {name} is {max_new_tokens}: more than the {context} "
            f"positions of the context; shorten the prompt or lower {name}",
            param=name,
            code="context_length_exceeded",
        )


def choose_next(
    logits: torch.Tensor,
    sequences: torch.Tensor,
    config: GenerationConfig,
    generator: torch.Generator | None,
    history: History | None = None,
) -> torch.Tensor:
    """Greedy argmax of the processed scores, or a sample from the processed distribution: (B, V) -> (B,)."""
    if config.strategy == "greedy" or config.temperature == 0:
        return best(process(logits.float(), sequences, config, history))
    return sample(logits_to_probs(logits, sequences, config, history), generator)


def check_grammar(grammar: JsonGrammar | None, config: GenerationConfig, eos_id: int | None) -> None:
    """Refuse a grammar where it cannot hold: strategies other than greedy and sampling, no EOS to end the text,
    min_new_tokens (which would mask the EOS a complete text needs) or no_repeat_ngram_size (which bans what the
    schema forces)."""
    if grammar is None:
        return
    if config.strategy not in ("greedy", "sample"):
        raise ArlmError(f"JSON output is decoded by greedy decoding or sampling, not {config.strategy}")
    if eos_id is None or not config.stop_at_eos:
        raise ArlmError("JSON output ends at the EOS token: it needs an EOS id and stop_at_eos")
    if config.min_new_tokens:
        raise ArlmError("min_new_tokens masks the EOS that ends a complete JSON text; leave it at 0 for JSON output")
    if config.no_repeat_ngram_size:
        raise ArlmError(
            "no_repeat_ngram_size bans tokens a JSON text must repeat (its quotes, colons, commas), leaving none the "
            "schema allows; leave it at 0 for JSON output"
        )


def check_compile(config: GenerationConfig, attention_mask: torch.Tensor | None, needed: int, block: int) -> None:
    """Refuse config.compile where the compiled one-token step cannot run (it is never silently dropped)."""
    if not config.compile:
        return
    if config.strategy not in ("greedy", "sample"):
        raise ArlmError(
            f"compile applies to greedy and sample decoding only; {config.strategy} reorders or rolls back the "
            "cache, which the compiled static step cannot follow (drop --compile)"
        )
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ArlmError("compile needs prompts of equal length (no padding); decode them apart or drop --compile")
    if needed > block:
        raise ArlmError(
            f"compile needs prompt + max_new_tokens ({needed}) within the model's context ({block}): the compiled "
            "step does not slide; lower max_new_tokens or drop --compile"
        )


def decode_loop(
    engine: Engine,
    prompt_ids: torch.Tensor,
    config: GenerationConfig,
    *,
    attention_mask: torch.Tensor | None,
    history: History,
    pad_id: int,
    on_token: TokenCallback | None = None,
    should_stop: StopCheck | None = None,
    matchers: list[Matcher] | None = None,
) -> GenerationOutput:
    """Prefill the prompt (all but its last token in one forward), then one token a step on the KV cache (greedy or
    sampling); matchers: each row's grammar, which masks its logits and follows its tokens.

    When the context fills up, the newest half of it is re-encoded into an emptied cache and decoding
    goes on (a sliding window), so a model with a short context can write long texts. On a GPU the loop
    never waits for the device except every SYNC_EVERY steps (to see whether every row has stopped)."""
    B, T = prompt_ids.shape
    device = prompt_ids.device
    generator = make_generator(config.seed, device)
    unpadded = attention_mask is None or (engine.reuse_prefix and bool(attention_mask.all()))
    prompt = prompt_ids if unpadded else None  # whose beginning Engine.open may keep (reuse_prefix)
    kv_dtype = cache_dtype(config.kv_dtype)
    engine.open(B, T + config.max_new_tokens, compiled=config.compile, dtype=kv_dtype, prompt=prompt)
    mask = attention_mask
    start = time.perf_counter()
    logits, prompt_s = _prefill_then_step(engine, prompt_ids, mask)  # (B, V)
    prefill_s = time.perf_counter() - start
    sequences = prompt_ids
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stopped: dict[int, int] = {}  # row -> generated length, for rows ended by should_stop
    sync_every = sync_interval(device, should_stop)
    for step in range(config.max_new_tokens):
        scores = logits if matchers is None else mask_rows(matchers, logits, done)  # (B, V)
        token = choose_next(scores, sequences, config, generator, history)  # (B,)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        if matchers is not None:
            _advance(matchers, token, done)
        sequences = torch.cat([sequences, token[:, None]], dim=1)  # (B, S+1)
        if on_token is not None:
            on_token(token)
        if history.eos_id is not None:
            done = done | (token == history.eos_id)
        if should_stop is not None:
            done = _check_stops(done, stop_tail(should_stop, sequences[:, T:]), should_stop, stopped, step)
        last = step == config.max_new_tokens - 1
        if last or ((step + 1) % sync_every == 0 and bool(done.all())):
            break
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, S+1)
        if engine.length == engine.cache.max_len:  # context full: slide
            logits, mask = _slide(engine, sequences, mask)
            continue
        logits = engine.step(token[:, None], mask)  # (B, V)
    lengths = _lengths(sequences[:, T:], history.eos_id, stopped)
    return _loop_output(sequences, T, lengths, start, prefill_s, prompt_s)


def _advance(matchers: list[Matcher], token: torch.Tensor, done: torch.Tensor) -> None:
    """Each running row's matcher follows its new token (B,)."""
    for i, (t, finished) in enumerate(zip(token.tolist(), done.tolist())):
        if not finished:
            matchers[i].advance(t)


def _prefill_then_step(
    engine: Engine, prompt_ids: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, float]:
    """The prompt (B, T) but its last token in one forward, then that token as a step: the same computations
    speculative decoding makes (it verifies the last prompt token with its first drafts), so that greedy and
    speculative decoding share every bit of the cache. Positions the engine kept (`Engine.open`'s prompt) are not
    encoded again. The next-token logits (B, V) and the seconds the forward over the prompt but its last token
    took."""
    if prompt_ids.shape[1] == 1:
        return engine.prefill(prompt_ids, mask), 0.0
    start = time.perf_counter()
    if engine.length < prompt_ids.shape[1] - 1:  # (past a kept beginning; the prompt is then unpadded)
        engine.prefill(prompt_ids[:, engine.length : -1], None if mask is None else mask[:, :-1])
    prompt_s = time.perf_counter() - start
    return engine.step(prompt_ids[:, -1:], mask), prompt_s


def _slide(
    engine: Engine, sequences: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The context is full: re-encode the newest half of sequences (B, S) into the emptied cache; the next
    logits (B, V) and the mask cut to match."""
    keep = engine.model.config.block_size // 2
    mask = None if mask is None else mask[:, -keep:]
    engine.rollback(0)
    return engine.prefill(sequences[:, -keep:], mask), mask


def _loop_output(
    sequences: torch.Tensor, prompt_length: int, lengths: list[int], start: float, prefill_s: float, prompt_s: float
) -> GenerationOutput:
    """The output of decode_loop with its timing (waiting first for the work a GPU loop only queued)."""
    if sequences.device.type == "cuda":
        torch.cuda.synchronize(sequences.device)
    total_s = time.perf_counter() - start
    new_tokens = sum(lengths)
    stats = {
        "new_tokens": new_tokens,
        "seconds": total_s,
        "prefill_seconds": prefill_s,
        "tokens_per_s": new_tokens / max(total_s, 1e-9),
        **decoding_rate(new_tokens, total_s, prompt_s),
        "lengths": lengths,
    }
    return GenerationOutput(sequences, None, stats, prompt_length)


def sync_interval(device: torch.device, should_stop: StopCheck | None) -> int:
    """Steps between looks at the stop flags: every step on CPU (free) or with a host-side stop check."""
    return 1 if device.type == "cpu" or should_stop is not None else SYNC_EVERY


def _check_stops(
    done: torch.Tensor, generated: torch.Tensor, should_stop: StopCheck, stopped: dict[int, int], step: int
) -> torch.Tensor:
    """Mark rows whose generated ids (B, n) match a stop check, recording their length in `stopped`."""
    rows = generated.tolist()
    finished = done.tolist()
    for b, row in enumerate(rows):
        if not finished[b] and should_stop(b, row):
            stopped[b] = step + 1
            finished[b] = True
    return torch.tensor(finished, device=done.device)


def _lengths(generated: torch.Tensor, eos_id: int | None, stopped: dict[int, int]) -> list[int]:
    """Generated length of each row (B, n): up to and including its first EOS, or where a stop check ended it."""
    B, n = generated.shape
    lengths = [n] * B
    if eos_id is not None:
        hit = generated == eos_id  # (B, n)
        first = torch.where(hit.any(dim=1), hit.int().argmax(dim=1) + 1, n)  # (B,)
        lengths = first.tolist()
    return [min(length, stopped.get(b, n)) for b, length in enumerate(lengths)]
