"""OpenAI's Responses API (POST /v1/responses) over the chat template: its request body (`ResponsesRequest`, a
`Sampling` with the Responses API's names: input, instructions, max_output_tokens, text.format) and its Response
object and stream events (`ResponsesFormat`). One message in, one message out: this server keeps no responses
(`store` false, no previous_response_id or conversation) and has no tools or reasoning, refused by name."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from arlm.serving.errors import ApiError
from arlm.serving.responses import text_logprob
from arlm.serving.schemas import MAX_TOP_LOGPROBS, ChatMessage, JsonSchemaFormat, ResponseFormat, Sampling

NO_STORE = "this server keeps no responses"
LOGPROBS = "message.output_text.logprobs"  # the include that asks for the output's log-probabilities
REFUSED = {  # Responses API arguments (and chat's, which it has not) refused whenever given other than harmless
    "previous_response_id": f"previous_response_id is not supported ({NO_STORE}); send the conversation as input",
    "conversation": f"conversation is not supported ({NO_STORE}); send the conversation as input",
    "reasoning": 'reasoning other than {} or effort "none" is not supported (the model does not reason in hidden '
    "tokens)",
    "prompt": "prompt (a stored prompt template) is not supported; send instructions and input",
    "include": f"include takes {LOGPROBS!r} only (nothing else is returned: no tool outputs, no reasoning)",
    "max_tool_calls": "max_tool_calls is not supported (this server has no tools)",
    "tools": "tools are not supported by this server (arlm has no tools); describe the tool in the input",
    "tool_choice": 'tool_choice other than "none" or "auto" is not supported (this server has no tools)',
    "background": f"background: true is not supported ({NO_STORE}); send the request and wait, or stream it",
    "store": f"store: true is not supported ({NO_STORE}); send store: false or leave it out",
    "max_tokens": "max_tokens is not an argument of the Responses API; send max_output_tokens",
    "n": "n is not an argument of the Responses API (one output per response); send n requests",
    "response_format": "response_format is not an argument of the Responses API; send text.format",
}


def _no_reasoning(value: object) -> bool:
    """Whether a reasoning argument asks for none: {} or effort "none", its other fields null."""
    return isinstance(value, dict) and all(v is None or (k, v) == ("effort", "none") for k, v in value.items())


HARMLESS = {  # of those, the values that ask for nothing, taken (what clients send by default): a value, a tuple of
    # them, or a test
    "reasoning": _no_reasoning,
    "tools": [],
    "tool_choice": ("none", "auto"),
    "background": False,
    "store": False,
    "include": ([], [LOGPROBS]),
}


class InputPart(BaseModel):
    """A text part of an input message; an output_text part sent back as a response returned it is taken as it is."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list | None = None  # (citations: nothing to the model)
    logprobs: list | None = None


class InputMessage(BaseModel):
    """A message item of the input ("type": "message" may be left out); an output message sent back as a response
    returned it (its id, status and phase) continues the conversation."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None  # (a label of OpenAI's models: the template has none)

    @model_validator(mode="before")
    @classmethod
    def _messages_of_text_only(cls, data: object) -> object:
        """An item other than a message, or a content part other than text, refused as such."""
        if not isinstance(data, dict):
            return data
        if data.get("type", "message") != "message":
            raise ValueError(f"input items of type {data['type']!r} are not supported (this server reads messages)")
        parts = data.get("content")
        for part in parts if isinstance(parts, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in (None, "input_text", "output_text"):
                raise ValueError(f"content parts of type {kind!r} are not supported (this server reads text parts)")
        return data

    def text(self) -> str:
        """The content as one string."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class TextFormat(BaseModel):
    """text.format: "text", "json_object" (any JSON object) or "json_schema" (name, schema, strict, description),
    the JSON ones decoded under the grammar as chat's response_format."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> TextFormat:
        """type json_schema needs its name and schema; the other types take neither."""
        given = [k for k in ("name", "description", "schema_", "strict") if getattr(self, k) is not None]
        if self.type == "json_schema" and (self.name is None or self.schema_ is None):
            raise ValueError("type json_schema needs its name and schema")
        if self.type != "json_schema" and given:
            raise ValueError(f"{given[0].rstrip('_')} goes with type json_schema only")
        return self

    def response_format(self) -> ResponseFormat | None:
        """As chat's response_format (None for text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ResponseFormat(type="json_object")
        schema = JsonSchemaFormat(name=self.name, description=self.description, schema=self.schema_, strict=self.strict)
        return ResponseFormat(type="json_schema", json_schema=schema)

    def echo(self) -> dict:
        """As the Response object shows it."""
        if self.type != "json_schema":
            return {"type": self.type}
        named = {"name": self.name, "schema": self.schema_, "strict": self.strict, "description": self.description}
        return {"type": "json_schema", **named}


class TextConfig(BaseModel):
    """The request's text: its format; verbosity only at OpenAI's default, "medium" (the model has no other)."""

    model_config = ConfigDict(extra="forbid")
    format: TextFormat = TextFormat(type="text")
    verbosity: Literal["medium"] | None = None


class StreamOptions(BaseModel):
    """The Responses API's stream_options."""

    model_config = ConfigDict(extra="forbid")
    include_obfuscation: bool | None = None  # OpenAI's padding of streamed events: accepted, nothing padded here


class ResponsesRequest(Sampling):
    """POST /v1/responses: input (a text: the user's message, or a list of messages) after instructions (a system
    message), through the chat template. arlm's extras (strategy, top_k, seed, stop, penalties, logit_bias, ...) as
    chat takes them; metadata, user, safety_identifier, prompt_cache_key and parallel_tool_calls echoed back."""

    PARAMS: ClassVar[dict[str, str]] = {
        "max_tokens": "max_output_tokens",
        "prompt": "input",
        "response_format": "text.format",
    }
    input: list[InputMessage] = Field(min_length=1)
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    text: TextConfig = TextConfig()
    stream_options: StreamOptions | None = None
    tools: list = Field(default_factory=list)
    tool_choice: str | dict = "auto"
    parallel_tool_calls: bool = True
    truncation: Literal["disabled", "auto"] = "disabled"
    background: bool = False
    include: list = Field(default_factory=list)
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    previous_response_id: Any = None
    conversation: Any = None
    reasoning: Any = None
    prompt: Any = None
    max_tool_calls: Any = None

    @field_validator("input", mode="before")
    @classmethod
    def _text_is_a_user_message(cls, given: object) -> object:
        """A text input is the user's message."""
        return [{"role": "user", "content": given}] if isinstance(given, str) else given

    @field_validator(*REFUSED, mode="before")
    @classmethod
    def _refused(cls, value: object, info: ValidationInfo) -> object:
        """What this server has not, refused by name (a value that asks for nothing passes)."""
        harmless = HARMLESS.get(info.field_name, ...)
        if callable(harmless):
            taken = harmless(value)
        else:
            taken = value == harmless or (isinstance(harmless, tuple) and value in harmless)
        if taken:
            return value
        raise ValueError(REFUSED[info.field_name])

    def chat(self) -> list[ChatMessage]:
        """The conversation for the chat template: instructions as a system message, then the input."""
        system = [ChatMessage(role="system", content=self.instructions)] if self.instructions is not None else []
        return system + [ChatMessage(role=m.role, content=m.text()) for m in self.input]

    def fit(self, encode: Callable[[list[ChatMessage]], list[int]], context: int) -> list[int]:
        """The prompt's ids (encode: through the chat template); with truncation "auto", the input's first items
        dropped, as OpenAI's API drops them, until it leaves max_output_tokens (else one) of the context's
        positions; the instructions and the last item are kept (what still does not fit is refused). The fewest
        items to drop are found by bisection (the prompt shrinks as items go): ~log2(items) encodings, not one an
        item."""
        chat, kept = self.chat(), 1 if self.instructions is not None else 0
        room = context - (self.max_output_tokens or 1)

        def without(dropped: int) -> list[int]:
            return encode(chat[:kept] + chat[kept + dropped :])

        prompt = without(0)
        if self.truncation != "auto" or len(prompt) <= room:
            return prompt
        short, enough = 0, len(chat) - kept - 1  # dropping `short` items does not fit; `enough` leaves the last item
        prompt = without(enough) if enough else prompt  # (one item: nothing to drop, the prompt as encoded)
        while enough - short > 1:
            middle = (short + enough) // 2
            ids = without(middle)
            if len(ids) <= room:
                enough, prompt = middle, ids
            else:
                short = middle
        return prompt

    def check(self) -> None:
        """Refusals across arguments: stream_options without stream (as OpenAI's API), alternatives asked for
        without the log-probabilities they go with."""
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")
        if self.top_logprobs and LOGPROBS not in self.include:
            raise ApiError(400, f"top_logprobs needs include: [{LOGPROBS!r}]", param="top_logprobs")

    def logprobs(self) -> int:
        """The job's top_logprobs: -1 without log-probabilities, else how many alternatives each token lists."""
        return (self.top_logprobs or 0) if LOGPROBS in self.include else -1

    @model_validator(mode="after")
    def _format_as_response_format(self) -> ResponsesRequest:
        """text.format becomes the response_format the job reads."""
        self.response_format = self.text.format.response_format()
        return self


class ResponsesFormat:
    """Builds one Response object of /v1/responses, whole or as its stream events (each with the next
    sequence_number), from the scheduler's events of its one choice."""

    def __init__(
        self, req: ResponsesRequest, model_id: str, input_tokens: int, piece_bytes: Callable[[int], bytes]
    ) -> None:
        """input_tokens: the prompt's length, the chat template's tokens included; piece_bytes: a token id's bytes
        (the tokenizer's), for the log-probabilities' "bytes"."""
        self.req, self.model_id, self.input_tokens, self.piece_bytes = req, model_id, input_tokens, piece_bytes
        self.logprobs: list[dict] = []  # the entries of the text sent (include: message.output_text.logprobs)
        self.pending: list[dict] = []  # every token's entry, its text sent or not
        self.id, self.item_id = "resp_" + uuid.uuid4().hex, "msg_" + uuid.uuid4().hex
        self.created_at = int(time.time())
        self.completed_at: int | None = None
        self.text, self.reason = "", None
        self.output_tokens = self.cached_tokens = 0
        self.sequence = 0

    # ------------------------------------------------------------ streaming

    def start_events(self) -> list[dict]:
        """The events before any text: the response created and in progress, its message and text part added."""
        created = self.response(status="in_progress")
        return [
            self._event("response.created", response=created),
            self._event("response.in_progress", response=created),
            self._event("response.output_item.added", output_index=0, item=self._message("in_progress", [])),
            self._event("response.content_part.added", **self._where(), part=self._part("")),
        ]

    def events(self, event: dict) -> list[dict]:
        """The stream events for one scheduler event (and records it for the whole response)."""
        kind = event["type"]
        if kind == "token":
            self.output_tokens += 1
            if "logprob" in event:
                self.pending.append(text_logprob(event, self.piece_bytes))
            return self._delta(event["text"], event["listed"])
        if kind == "finish":
            self.reason = event["reason"]
            out = self._delta(event["text"], event["listed"])
            done, part = {"text": self.text, "logprobs": self.logprobs}, self._part(self.text, self.logprobs)
            out.append(self._event("response.output_text.done", **self._where(), **done))
            out.append(self._event("response.content_part.done", **self._where(), part=part))
            return [*out, self._event("response.output_item.done", output_index=0, item=self._item())]
        if kind == "done":
            self.cached_tokens = event["usage"]["prompt_tokens_details"]["cached_tokens"]
            self.completed_at = int(time.time())
            whole = self.response()
            return [self._event(f"response.{whole['status']}", response=whole)]
        return []

    def error_event(self, exc: ApiError) -> dict:
        """The stream's last event when the request fails mid-stream: OpenAI's "error" event."""
        return self._event("error", code=exc.code, message=exc.message, param=exc.param)

    def _delta(self, text: str, listed: int) -> list[dict]:
        """The delta of text made final, with the entries of the tokens whose text it completes (listed: how many
        tokens have their text sent): a token whose text is never sent (the end of turn, a stop string's) has none,
        so that, joined, the entries spell the text, as chat's logprobs.content."""
        fresh = self.pending[len(self.logprobs) : listed]
        self.logprobs += fresh
        if not text and not fresh:
            return []
        self.text += text
        return [self._event("response.output_text.delta", **self._where(), delta=text, logprobs=fresh)]

    def _event(self, kind: str, **fields: Any) -> dict:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}

    def _where(self) -> dict:
        return {"item_id": self.item_id, "output_index": 0, "content_index": 0}

    # ------------------------------------------------------------ the Response object

    def _part(self, text: str, logprobs: list[dict] | None = None) -> dict:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}

    def _message(self, status: str, content: list[dict]) -> dict:
        return {"id": self.item_id, "type": "message", "role": "assistant", "status": status, "content": content}

    def _item(self) -> dict:
        """The output message as it ended."""
        status = "incomplete" if self.reason == "length" else "completed"
        return self._message(status, [self._part(self.text, self.logprobs)])

    def usage(self) -> dict:
        """OpenAI's usage of a response (cache_write_tokens 0: what a later request finds of this prompt with
        --reuse-prefix is counted as its cached_tokens, not here; no reasoning tokens)."""
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    def response(self, status: str | None = None) -> dict:
        """The Response object: as it ended (once every event has been through events()), or, given a status, as it
        starts (no output, no usage)."""
        req, started = self.req, status is not None
        status = status or ("incomplete" if self.reason == "length" else "completed")
        cut = {"reason": "max_output_tokens"} if status == "incomplete" else None
        out = {"id": self.id, "object": "response", "created_at": self.created_at, "status": status}
        done = status == "completed"  # (OpenAI's completed_at: "only present when the status is completed")
        out.update(background=False, completed_at=self.completed_at if done else None, error=None)
        out.update(incomplete_details=cut, instructions=req.instructions, max_output_tokens=req.max_output_tokens)
        out.update(max_tool_calls=None, model=self.model_id, output=[] if started else [self._item()])
        out.update(parallel_tool_calls=req.parallel_tool_calls, previous_response_id=None)
        out.update(prompt_cache_key=req.prompt_cache_key, reasoning={"effort": None, "summary": None})
        out.update(safety_identifier=req.safety_identifier, service_tier="default", store=False)
        out.update(temperature=req.temperature, text={"format": req.text.format.echo(), "verbosity": "medium"})
        out.update(tool_choice=req.tool_choice, tools=[], top_logprobs=req.top_logprobs or 0, top_p=req.top_p)
        out.update(truncation=req.truncation)
        out.update(usage=None if started else self.usage(), user=req.user, metadata=req.metadata or {})
        return out
