"""Structured output: decoding constrained to JSON, by llguidance (the grammar engine of llama.cpp, vLLM and
OpenAI's own structured outputs). A `JsonGrammar` is a JSON schema compiled for one tokenizer; each sequence decoded
under it holds a `Matcher`, which gives the tokens allowed next (every token that can still lead to a text the
schema accepts, EOS once the JSON is complete) and follows the tokens chosen. Greedy decoding and sampling choose
among the allowed tokens only (the others' logits set to -inf before any processor), so the text is the schema's
whenever decoding ends on EOS, not on max_new_tokens."""

from __future__ import annotations

import json
import os
import weakref
from typing import TYPE_CHECKING

import llguidance
import llguidance.numpy
import numpy as np
import torch

from arlm.errors import ArlmError

if TYPE_CHECKING:
    from arlm.data.tokenizers import Tokenizer

ANY_OBJECT = {"type": "object"}  # OpenAI's json_object: any JSON object
# Between JSON tokens: one space, or a line break and at most 20 spaces or tabs of indentation (llama.cpp's JSON
# grammars' rule), so that a model cannot pad a text with whitespace without end; unless the schema's own
# "x-guidance" options say otherwise ({"whitespace_flexible": false}: none at all)
WHITESPACE = r"(\x20|\x0A[\x20\x09]{0,20})"


_LL_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {vocab size: LLTokenizer}


def _ll_tokenizer(tokenizer: Tokenizer, vocab_size: int) -> llguidance.LLTokenizer:
    """llguidance's view of a tokenizer (from its tokenizers JSON), made once per tokenizer and vocabulary width:
    ~0.2 s for SmolLM2's, and reading the JSON alone takes 15 ms."""
    made = _LL_TOKENIZERS.setdefault(tokenizer, {})
    if vocab_size not in made:
        spec = tokenizer.backend.to_str()
        made[vocab_size] = llguidance.LLTokenizer(spec, n_vocab=vocab_size, eos_token=tokenizer.eos_id)
    return made[vocab_size]


_EXECUTORS: dict[int, llguidance.LLExecutor] = {}  # process id -> its pool (a forked child has none of the parent's)


def _executor() -> llguidance.LLExecutor:
    """llguidance's threads, computing several rows' masks at once (between forwards: the model's threads idle)."""
    pid = os.getpid()
    if pid not in _EXECUTORS:
        _EXECUTORS[pid] = llguidance.LLExecutor(num_threads=max(1, torch.get_num_threads()))
    return _EXECUTORS[pid]


def _unpack(words: np.ndarray, vocab_size: int) -> torch.Tensor:
    """Bitmasks (R, ceil(V/32)) int32 -> allowed (R, V) bool: bit j of word i is token 32 i + j (NumPy's unpackbits
    over the words' little-endian bytes: 8 rows of SmolLM2's 49,152 tokens in ~0.1 ms, against ~0.4 by shifts)."""
    bits = np.unpackbits(words.astype("<i4", copy=False).view(np.uint8), axis=-1, bitorder="little")
    return torch.from_numpy(bits[..., :vocab_size]).bool()  # (R, V)


class JsonGrammar:
    """A JSON schema (a dict, or its JSON text) compiled for a tokenizer of the tokenizers library with an EOS."""

    def __init__(self, tokenizer: Tokenizer, schema: dict | str = ANY_OBJECT, vocab_size: int | None = None) -> None:
        """vocab_size: the model's (its logits' width), where it exceeds the tokenizer's."""
        backend = getattr(tokenizer, "backend", None)
        if not hasattr(backend, "to_str") or tokenizer.eos_id is None:
            raise ArlmError("JSON output needs a tokenizer of the tokenizers library with an EOS token (bpe, GGUF, HF)")
        try:
            schema = json.loads(schema) if isinstance(schema, str) else schema
        except ValueError as e:
            raise ArlmError(f"the JSON schema is not valid JSON: {e}") from None
        if not isinstance(schema, dict):
            raise ArlmError(f"a JSON schema is an object, got {type(schema).__name__}")
        options = schema.get("x-guidance")
        own = isinstance(options, dict) and ("whitespace_flexible" in options or "whitespace_pattern" in options)
        try:
            defaults = {} if own else {"whitespace_pattern": WHITESPACE}
            self.grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults)
        except ValueError as e:  # (x-guidance options llguidance does not take)
            raise ArlmError(f"the JSON schema cannot be used: {e}") from None
        self.vocab_size, self.eos_id = vocab_size or tokenizer.vocab_size, tokenizer.eos_id
        self.tokenizer = _ll_tokenizer(tokenizer, self.vocab_size)
        error = llguidance.LLMatcher.validate_grammar(self.grammar, self.tokenizer)
        if error:
            raise ArlmError(f"the JSON schema cannot be used: {error}")

    def matcher(self) -> Matcher:
        """A fresh matcher for one sequence, at the start of the output."""
        return Matcher(self)


class Matcher:
    """One sequence's place in its grammar: the tokens allowed next, and the tokens chosen so far."""

    def __init__(self, grammar: JsonGrammar) -> None:
        self.vocab_size, self.eos_id = grammar.vocab_size, grammar.eos_id
        self._matcher = llguidance.LLMatcher(grammar.tokenizer, grammar.grammar, log_level=0)

    def allowed(self) -> torch.Tensor:
        """Which tokens may come next: (V,) bool."""
        words = np.frombuffer(self._matcher.compute_bitmask(), dtype="<i4")  # (ceil(V/32),)
        return _unpack(words[None], self.vocab_size)[0]

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits (..., V) with every token not allowed next at -inf (a new tensor)."""
        allowed = self.allowed().to(logits.device)
        return logits.masked_fill(~allowed, float("-inf"))

    def advance(self, token: int) -> None:
        """Follow the token chosen (one the mask allowed); EOS ends the text, and the sequence with it."""
        if token != self.eos_id and not self._matcher.consume_token(token):
            raise RuntimeError(f"token {token} was not allowed by the grammar: {self._matcher.get_error()}")


def mask_rows(matchers: list[Matcher | None], logits: torch.Tensor, done: torch.Tensor | None = None) -> torch.Tensor:
    """logits (B, V) with each running row's disallowed tokens at -inf (rows without a matcher, or done: as they
    are)."""
    rows = [i for i, m in enumerate(matchers) if m is not None and (done is None or not bool(done[i]))]
    if not rows:
        return logits
    vocab = logits.shape[-1]
    words = llguidance.numpy.allocate_token_bitmask(len(rows), vocab)  # (R, ceil(V/32))
    running = [(matchers[i]._matcher, k) for k, i in enumerate(rows)]
    llguidance.numpy.fill_next_token_bitmask_par(_executor(), running, words)
    allowed = _unpack(words, vocab)  # (R, V)
    if len(rows) < logits.shape[0]:  # (rows without a matcher, or done: every token allowed)
        every = torch.ones(logits.shape, dtype=torch.bool)  # (B, V)
        every[rows] = allowed
        allowed = every
    return torch.where(allowed.to(logits.device), logits, float("-inf"))
