"""Chat data for instruction fine-tuning: JSONL of `messages` (system / user / assistant, multi-turn) or
`prompt` / `completion` pairs, rendered with the model's chat template (arlm's plain one when it has none),
with a target flag per token: the assistant's answers and their end-of-turn token are targets, nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from arlm.config import DataConfig
from arlm.data.chat_template import PLAIN_TEMPLATE, Message, apply_chat_template
from arlm.data.corpus import jsonl_lines, no_lone_surrogates
from arlm.data.normalize import Normalizer, NormalizeReport
from arlm.data.tokenizers import Tokenizer
from arlm.errors import ArlmError

ROLES = ("system", "user", "assistant")


@dataclass
class ChatExample:
    """One conversation of a JSONL file, with the line it came from."""

    messages: list[Message]
    line: int


def read_chat_jsonl(path: str | Path, encoding_errors: str = "strict") -> Iterator[ChatExample]:
    """The conversations of a JSONL file; a bad line raises ArlmError naming the file and line, invalid UTF-8
    the file and byte offset (unless encoding_errors is "replace")."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise ArlmError(f"chat data {path} {what}; chat data is one .jsonl file")
    for number, line in jsonl_lines(path, encoding_errors):
        if line.strip():
            yield ChatExample(parse_record(line, f"{path}:{number}", encoding_errors), number)


def parse_record(raw: str, where: str, encoding_errors: str = "strict") -> list[Message]:
    """One JSONL line as a list of messages, checked: known roles, text content, a non-empty answer (a lone
    surrogate escape refused, or U+FFFD with encoding_errors "replace")."""
    try:
        record = no_lone_surrogates(json.loads(raw), raw, where, encoding_errors)
    except json.JSONDecodeError as exc:
        raise ArlmError(f"{where}: not valid JSON ({exc.msg})") from None
    if isinstance(record, dict) and "messages" in record and ({"prompt", "completion"} & set(record)):
        raise ArlmError(f"{where}: a record holds 'messages' or 'prompt' and 'completion', not both")
    if isinstance(record, dict) and "messages" in record:
        messages = record["messages"]
    elif isinstance(record, dict) and "prompt" in record and "completion" in record:
        prompt, completion = record["prompt"], record["completion"]
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    else:
        raise ArlmError(f"{where}: a record needs 'messages' or 'prompt' and 'completion'")
    if not isinstance(messages, list) or not messages:
        raise ArlmError(f"{where}: 'messages' must be a non-empty list")
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict) or "role" not in message:
            raise ArlmError(f"{where}: message {i} has no role")
        if message["role"] not in ROLES:
            raise ArlmError(f"{where}: message {i} has unknown role {message['role']!r} (known: {', '.join(ROLES)})")
        message["content"] = _text_content(message.get("content"), f"{where}: message {i}")
        if message["role"] == "assistant" and not message["content"].strip():
            raise ArlmError(f"{where}: message {i} is an empty assistant turn")
    if not any(m["role"] == "assistant" for m in messages):
        raise ArlmError(f"{where}: the conversation has no assistant turn to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _text_content(content: object, where: str) -> str:
    """A message's content as one string: a string, or OpenAI's list of text parts joined (as the server reads it)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ArlmError(f"{where} needs a text 'content' (a string or a list of text parts)")
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            found = f"a part of type {kind!r}" if kind else "a part that is not a text part"
            raise ArlmError(f"{where} holds {found}; chat data takes text parts only")
    return "".join(part["text"] for part in content)


def refuse_text_only_settings(config: DataConfig) -> None:
    """Refuse, for chat data, a document setting changed from its default: chat reads one conversation a line."""
    reasons = {
        "text_field": "it reads 'messages' or 'prompt' and 'completion'",
        "doc_separator": "each line is one conversation",
        "doc_max_chars": "a conversation longer than the context is cut and counted",
    }
    defaults = DataConfig()
    for name, reason in reasons.items():
        if getattr(config, name) != getattr(defaults, name):
            raise ArlmError(f"data.{name} does not apply to chat data ({reason})")
    if config.split == "contiguous":
        raise ArlmError("data.split contiguous does not apply to chat data (conversations are split whole)")


def normalize_examples(examples: list[ChatExample], config: DataConfig) -> NormalizeReport:
    """Apply data's normalization switches to every message's content, in place; an answer left empty is refused."""
    normalizer = Normalizer(config)
    for example in examples:
        for i, message in enumerate(example.messages, start=1):
            message["content"] = normalizer(message["content"])
            if message["role"] == "assistant" and not message["content"].strip():
                where = f"{config.source}:{example.line}"
                raise ArlmError(f"{where}: message {i} is an empty assistant turn after normalization")
    return normalizer.report


def render_example(messages: list[Message], tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """(ids, targets) of a conversation: targets[i] is 1 where ids[i] is an assistant token or its end-of-turn.

    Each answer is found as what the template adds between the conversation before it (with the generation
    prompt) and the conversation through it; the pieces are encoded one after another."""
    template = tokenizer.chat_template
    plain = not template
    eos = tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id is not None and not plain else ""

    def rendered(some: list[Message], prompt: bool = False) -> str:
        return apply_chat_template(template or PLAIN_TEMPLATE, some, prompt, eos_token=eos)

    def render(upto: int, prompt: bool) -> str:
        return rendered(messages[:upto], prompt)

    # contents holding a special token's text, read as text (as chat and the server read them: no turn forged)
    whole, spans = literal_spans(rendered, messages, tokenizer)
    ids: list[int] = []
    targets: list[int] = []
    at = [0]  # where the next piece begins in the whole rendering

    def add(text: str, target: bool, extra: list[int] = ()) -> None:
        if whole[at[0] : at[0] + len(text)] != text:
            raise ArlmError("the chat template renders a conversation's beginning unlike the whole conversation")
        piece = (encode_spans(tokenizer, text, spans, at[0]) if text else []) + list(extra)
        at[0] += len(text)
        ids.extend(piece)
        targets.extend([int(target)] * len(piece))

    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(i, True), render(i + 1, False)
        if not (before.startswith(done) and through.startswith(before)):
            raise ArlmError(
                f"the chat template does not render the conversation before message {i + 1} as the beginning of "
                "the conversation through it (a template's default system prompt, added once there is a message, "
                "does so to one that begins with an assistant turn); begin it with a system or user message"
            )
        answer = through[len(before) :]
        if plain:  # " content\n": the content, the end-of-turn id, then the newline
            cut, end_ids = len(answer) - answer.endswith("\n"), eos_ids(tokenizer)
        else:  # "content<|im_end|>\n": through the end-of-turn token
            cut, end_ids = (answer.rfind(eos) + len(eos) if eos and eos in answer else len(answer)), []
        add(before[len(done) :], False)
        add(answer[:cut], True, end_ids)
        add(answer[cut:], False)
        done = through
    add(render(len(messages), False)[len(done) :], False)
    return ids, targets


def eos_ids(tokenizer: Tokenizer) -> list[int]:
    """[eos_id], or nothing for a tokenizer without one."""
    return [] if tokenizer.eos_id is None else [tokenizer.eos_id]


def encode_conversation(messages: list[Message], tokenizer: Tokenizer, add_generation_prompt: bool = True) -> list[int]:
    """A conversation's ids through the tokenizer's chat template, ending in the assistant's cue if asked; without a
    template, as chat-data training rendered it (arlm's plain one, each answer ended by the end-of-turn id)."""
    if tokenizer.chat_template:
        special = lambda i: tokenizer.token_text(i) if i is not None else ""
        bos, eos = special(tokenizer.bos_id), special(tokenizer.eos_id)
        render = lambda m: apply_chat_template(
            tokenizer.chat_template, m, add_generation_prompt, bos_token=bos, eos_token=eos
        )
        return encode_literal_contents(render, messages, tokenizer)
    if not add_generation_prompt:
        return render_example(messages, tokenizer)[0]
    ids, targets = render_example([*messages, {"role": "assistant", "content": "x"}], tokenizer)
    start = max(i for i, t in enumerate(targets) if t and (i == 0 or not targets[i - 1]))  # the placeholder answer's
    return ids[:start]


MARK = 0xE000  # the first private-use character: where the template put a message's content, in a second rendering


def encode_literal_contents(
    render: Callable[[list[Message]], str], messages: list[Message], tokenizer: Tokenizer
) -> list[int]:
    """The ids of messages as `render` renders them: the template's own text as encode() reads it, and a content
    holding a special token's text (`<|im_end|>` typed or pasted by a user) with that text read as text, so that no
    message can end its turn or open another (as OpenAI's API reads content; transformers and llama.cpp read the
    token)."""
    text, spans = literal_spans(render, messages, tokenizer)
    return encode_spans(tokenizer, text, spans)


def literal_spans(
    render: Callable[[list[Message]], str], messages: list[Message], tokenizer: Tokenizer
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text of messages and where in it the contents holding a special token's text lie ([start, end)
    character spans, in order; none where no content holds one). Such contents are found by rendering the messages
    again with marks in their place."""
    text, specials = render(messages), tokenizer.special_texts()
    literal = [i for i, m in enumerate(messages) if any(s in (m.get("content") or "") for s in specials)]
    if not literal:
        return text, []
    mark = next(chr(c) for c in range(MARK, 0xF900) if chr(c) not in text)  # (a user's text may hold some)
    marked = render([{**m, "content": f"{mark}{i}{mark}"} if i in literal else m for i, m in enumerate(messages)])
    parts = marked.split(mark)  # the template's text, a message's index, the template's text, ...
    marks = parts[1::2]
    order = [int(i) for i in marks] if all(i.isdigit() for i in marks) else []  # (a template may cut a mark)
    for strip in (False, True):  # a template may trim what a message holds
        contents = [messages[i]["content"].strip() if strip else messages[i]["content"] for i in order]
        pieces = list(zip(parts[::2], [*contents, ""]))
        if sorted(order) == literal and "".join(t + c for t, c in pieces) == text:
            spans, at = [], 0
            for template_text, content in pieces:
                at += len(template_text)
                spans += [(at, at + len(content))] if content else []
                at += len(content)
            return text, spans
    held = ", ".join(s for s in specials if any(s in messages[i]["content"] for i in literal))
    raise ArlmError(f"a message holds a special token's text ({held}) that this model's chat template rewrites")


def encode_spans(tokenizer: Tokenizer, text: str, spans: list[tuple[int, int]], start: int = 0) -> list[int]:
    """The ids of text, which begins at `start` of the text the spans index: inside a span with special tokens'
    texts read as text (encode_literally), elsewhere as encode() reads them; text between spans encoded whole."""
    ids, at, end = [], start, start + len(text)
    for a, b in spans:
        a, b = max(a, at), min(b, end)
        if a >= b:
            continue
        ids += tokenizer.encode(text[at - start : a - start]) if a > at else []
        ids += tokenizer.encode_literally(text[a - start : b - start])
        at = b
    return ids + (tokenizer.encode(text[at - start :]) if at < end else [])
