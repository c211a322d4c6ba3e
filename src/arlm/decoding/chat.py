"""A chat with an instruct model through its own chat template: the conversation, rendered (as transformers
does) and encoded each turn, the oldest turns dropped to fit the context."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from arlm.config import GenerationConfig
from arlm.decoding.generate import generate
from arlm.errors import ArlmError

Message = dict[str, str]


def apply_chat_template(
    template: str,
    messages: list[Message],
    add_generation_prompt: bool = True,
    *,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render a chat template as transformers does (sandboxed Jinja, trim_blocks, lstrip_blocks)."""

    def raise_exception(message: str) -> None:
        raise ArlmError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos_token, eos_token=eos_token
        )
    except TemplateError as exc:
        raise ArlmError(f"chat template failed to render: {exc}") from None


class ChatSession:
    """A conversation: messages so far, rendered and encoded each turn, the oldest turns dropped to fit."""

    def __init__(self, model, tokenizer, config: GenerationConfig, system: str | None = None) -> None:
        if not tokenizer.chat_template:
            raise ArlmError("this model has no chat template; use arlm generate, or an instruct model (smollm2)")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.system = [{"role": "system", "content": system}] if system else []
        self.turns: list[Message] = []

    def prompt_ids(self) -> list[int]:
        """The encoded conversation ending in the assistant's cue, shortened from the oldest turn to fit."""
        tok = self.tokenizer
        budget = self.model.config.block_size - self.config.max_new_tokens
        while True:
            text = apply_chat_template(
                tok.chat_template,
                self.system + self.turns,
                bos_token=_token(tok, tok.bos_id),
                eos_token=_token(tok, tok.eos_id),
            )
            ids = tok.encode(text)
            if len(ids) <= budget or len(self.turns) <= 1:
                break
            self.turns = self.turns[2:]  # drop the oldest user/assistant pair
        if len(ids) > budget:
            raise ArlmError(f"the message is {len(ids)} tokens; the context leaves room for {budget}")
        return ids

    def reply(self, message: str, on_token: Callable | None = None) -> str:
        """Add a user message, generate the assistant's answer (streamed to on_token), remember it."""
        self.turns.append({"role": "user", "content": message})
        tok = self.tokenizer
        out = generate(
            self.model, [self.prompt_ids()], self.config, eos_id=tok.eos_id, pad_id=tok.pad_id, on_token=on_token
        )
        answer = tok.decode(out.generated()[0]).strip()
        self.turns.append({"role": "assistant", "content": answer})
        return answer


def _token(tokenizer, token_id: int | None) -> str:
    return tokenizer.token_text(token_id) if token_id is not None else ""
