"""The built-in prompt sets of the speculative-decoding benchmark, shipped as data in bench/prompts/:

- `grounded`: requests whose answer quotes or transforms their input (edit this code, fix the typos in, extract
  the fields of, continue this list, answer with a quote from the passage, rewrite, convert, sort), each with its
  input text: the work where prompt lookup pays, since the answer copies spans of the prompt;
- `chat`: general questions with no input to copy from.

Each is a JSONL file of {"id", "kind", "instruction", "input"}; `chat_ids` renders an item as one user turn of an
instruct model's chat template."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from arlm.data.tokenizers import Tokenizer
from arlm.decoding.chat import apply_chat_template
from arlm.errors import ArlmError

PROMPT_SETS = ("grounded", "chat")


@dataclass(frozen=True)
class PromptItem:
    """One request: an instruction, and the input text it is about (empty for a general question)."""

    id: str
    kind: str
    instruction: str
    input: str

    def message(self) -> str:
        """The user's message: the instruction, then the input after a blank line."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def load_prompt_set(name: str) -> list[PromptItem]:
    """The items of a built-in prompt set ('grounded' or 'chat'), in file order."""
    if name not in PROMPT_SETS:
        raise ArlmError(f"unknown prompt set {name!r}; built in: {', '.join(PROMPT_SETS)}")
    text = resources.files("arlm.bench").joinpath("prompts", f"{name}.jsonl").read_text(encoding="utf-8")
    return [PromptItem(**json.loads(line)) for line in text.splitlines() if line.strip()]


def chat_ids(tokenizer: Tokenizer, item: PromptItem) -> list[int]:
    """The item as one user turn of the tokenizer's chat template, ending in the assistant's cue, encoded."""
    if not tokenizer.chat_template:
        raise ArlmError("the prompt sets are chat requests; the model needs a chat template (an instruct model)")
    bos = tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    eos = tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
    messages = [{"role": "user", "content": item.message()}]
    return tokenizer.encode(apply_chat_template(tokenizer.chat_template, messages, bos_token=bos, eos_token=eos))
