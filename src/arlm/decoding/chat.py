"""A chat with an instruct model through its own chat template: the conversation, rendered (as transformers
does) and encoded each turn, the oldest turns dropped to fit the context. By default the session keeps its engine's
KV cache from turn to turn and encodes only what the last turn's cache does not hold (the new message, and the
answer where its text encodes to other ids than those generated): equal to encoding it all afresh up to rounding
(decoding/engine.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from arlm.config import GenerationConfig
from arlm.data.chat import encode_conversation
from arlm.data.chat_template import Message, apply_chat_template
from arlm.decoding.engine import Engine
from arlm.decoding.generate import generate
from arlm.decoding.grammar import JsonGrammar
from arlm.decoding.stops import check_stops, cut_at_stop, stop_checker, stop_when
from arlm.errors import ArlmError

if TYPE_CHECKING:
    import torch

    from arlm.data.tokenizers import Tokenizer

__all__ = ["ChatSession", "Message", "apply_chat_template"]


class ChatSession:
    """A conversation: messages so far, rendered and encoded each turn, the oldest turns dropped to fit. One answer
    a turn, ended at EOS or config.stop's first string (not kept); `draft` serves --strategy speculative; `plain`:
    a model without a chat template, fine-tuned on chat data, gets the conversation as its training rendered it;
    reuse_prefix: keep the cache across turns (`reused`: the positions the last turn started from); grammar: a
    JsonGrammar every answer keeps to (decoding/grammar.py)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        config: GenerationConfig,
        system: str | None = None,
        draft: torch.nn.Module | None = None,
        plain: bool = False,
        reuse_prefix: bool = True,
        grammar: JsonGrammar | None = None,
    ) -> None:
        if not tokenizer.chat_template and not plain:
            raise ArlmError("this model has no chat template; use arlm generate, or an instruct model (smollm2)")
        block = model.config.block_size
        if config.max_new_tokens >= block:
            raise ArlmError(
                f"max_new_tokens {config.max_new_tokens} leaves no room for the conversation in the model's context of "
                f"{block} tokens; lower it (--max-new-tokens)"
            )
        if config.num_return_sequences != 1:
            raise ArlmError("a chat answers once a turn: --num-return-sequences is for arlm generate")
        check_stops(tokenizer, config.stop)
        self.model, self.tokenizer, self.config, self.draft = model, tokenizer, config, draft
        self.engine = Engine(model, reuse_prefix=True) if reuse_prefix else None
        self.reused = 0
        self.grammar = grammar
        self.stats: dict = {}  # the last turn's: generate()'s stats, its prompt's length and the positions reused
        self.system = [{"role": "system", "content": system}] if system else []
        self.turns: list[Message] = []
        self.dropped = 0

    def prompt_ids(self) -> list[int]:
        """The encoded conversation ending in the assistant's cue, shortened from the oldest turn to fit."""
        budget = self.model.config.block_size - self.config.max_new_tokens
        turns, dropped = self.turns, 0
        while True:
            ids = encode_conversation(self.system + turns, self.tokenizer)
            if len(ids) <= budget or len(turns) <= 1:
                break
            turns, dropped = turns[2:], dropped + 1  # drop the oldest user/assistant pair
        if len(ids) > budget:  # (the conversation kept whole: a message too long drops nothing)
            raise ArlmError(f"the message is {len(ids)} tokens; the context leaves room for {budget}")
        self.turns, self.dropped = turns, dropped  # exchanges dropped this turn (stats: "dropped_exchanges")
        return ids

    def reply(self, message: str, on_token: Callable | None = None, cancel: Callable[[], bool] | None = None) -> str:
        """Add a user message, generate the assistant's answer (streamed to on_token), remember it; cancel() true
        ends the answer after the token in hand (Ctrl-C in a terminal), and what was said so far is kept."""
        self.turns.append({"role": "user", "content": message})
        try:
            tok, prompt = self.tokenizer, self.prompt_ids()
        except ArlmError:  # a message too long for the context: the conversation stays as it was
            self.turns.pop()
            raise
        stops = stop_checker(tok, self.config.stop)
        out = generate(
            self.engine or self.model,
            [prompt],
            self.config,
            eos_id=tok.eos_id,
            pad_id=tok.pad_id,
            draft=self.draft,
            on_token=on_token,
            should_stop=stop_when(cancel, stops) if cancel is not None else stops,
            grammar=self.grammar,
        )
        self.reused = self.engine.reused if self.engine else 0
        self.stats = {**out.stats, "prompt_tokens": len(prompt), "reused_tokens": self.reused}
        self.stats["dropped_exchanges"] = self.dropped
        answer = cut_at_stop(tok.decode(out.generated()[0]), self.config.stop).strip()
        self.turns.append({"role": "assistant", "content": answer})
        return answer
