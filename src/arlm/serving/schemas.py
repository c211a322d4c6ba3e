"""Request bodies of the OpenAI-compatible endpoints (pydantic), arlm's extras, and their translation into a
GenerationConfig. An argument the server does not know is refused (400), never ignored."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from arlm.config import GenerationConfig, Strategy
from arlm.decoding.grammar import ANY_OBJECT
from arlm.decoding.types import MAX_TOP

MAX_N = 16
MAX_TOP_LOGPROBS = MAX_TOP
MAX_STOPS, MAX_STOP_CHARS = 16, 256  # stop strings are matched against each new token's text, in the batch thread
INT64 = 2**63  # OpenAI's seed is a 64-bit integer


class StreamOptions(BaseModel):
    """OpenAI's stream_options."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    include_obfuscation: bool | None = None  # OpenAI's padding of streamed chunks: accepted, nothing padded here


class JsonSchemaFormat(BaseModel):
    """response_format.json_schema: OpenAI's name, description, schema and strict (arlm's output always keeps to the
    schema; without one, any JSON value)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: "text" (a reply as it comes), "json_object" (any JSON object) or "json_schema" (JSON
    matching json_schema.schema): the JSON modes constrain decoding (decoding/grammar.py)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        """json_schema goes with type json_schema, and only with it."""
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type json_schema, and only with it")
        return self

    def constraint(self) -> dict | None:
        """The JSON schema decoding keeps to, or None for text."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return ANY_OBJECT
        return self.json_schema.schema_ if self.json_schema.schema_ is not None else {}


class NotText(ValueError):
    """A string of the body that is not text: it holds a lone UTF-16 surrogate, half of a character's JSON escape
    (what a script's string cut inside an emoji becomes), which no tokenizer can encode."""

    def __init__(self, param: str) -> None:
        super().__init__(
            f"{param} holds a lone surrogate (an escape such as \\ud83d without its other half), which is not text; "
            "send whole characters"
        )
        self.param = param


def check_text(data: object, path: str = "") -> object:
    """data (a parsed JSON body) as it is, or NotText naming the first string (or key) holding a lone surrogate."""
    if isinstance(data, str):
        try:
            data.encode("utf-8")  # (in C: a 16 MB prompt in milliseconds, on the event loop)
        except UnicodeEncodeError:  # only a surrogate fails: every other code point has its UTF-8
            raise NotText(path or "the body") from None
    elif isinstance(data, dict):
        for key, value in data.items():
            where = f"{path}.{key}" if path else str(key)
            check_text(key, where)
            check_text(value, where)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            check_text(value, f"{path}.{i}")
    return data


class TextOnly(BaseModel):
    """A request body whose strings are all text (check_text), refused naming the first that is not."""

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: object) -> object:
        return check_text(data)


ASKS_NOTHING = {  # OpenAI's arguments at the values that ask for nothing this server lacks: taken as left out
    "service_tier": ("auto", "default"),  # (one tier: the default)
    "prompt_cache_retention": ("in_memory",),  # (prompts are kept in memory only: --reuse-prefix)
    "reasoning_effort": ("none",),  # (no reasoning in hidden tokens)
}


def asks_nothing(name: str, value: Any) -> bool:
    """Whether an argument's value asks for nothing this server lacks (ASKS_NOTHING)."""
    return isinstance(value, str) and value in ASKS_NOTHING.get(name, ())


class Sampling(TextOnly):
    """What both endpoints share: OpenAI's sampling parameters and arlm's extras (top_k, min_p,
    repetition_penalty, strategy, num_beams, num_draft_tokens, adaptive_draft, lookup_first; response_format, which
    OpenAI's API has for chat only), all optional."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)  # "8" is no integer, NaN no number
    PARAMS: ClassVar[dict[str, str]] = {}  # an argument's name here -> the endpoint's, where it differs
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # OpenAI's range (the CLI allows any)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-INT64, lt=INT64)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None  # token id (as text) -> -100..100, added to its logit before choosing
    user: str | None = None  # OpenAI's end-user id: accepted, unused
    safety_identifier: str | None = None  # OpenAI's successors of user: accepted, unused
    prompt_cache_key: str | None = None  # (prompts are reused by their ids here: --reuse-prefix)
    metadata: dict[str, str] | None = None  # OpenAI's tags for stored completions: accepted, unused (nothing stored)
    store: bool | None = None  # OpenAI's: accepted; arlm stores nothing
    # arlm's extras
    top_k: int = Field(default=0, ge=0)  # 0 (or -1, vLLM's way of saying it): off
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0)
    strategy: Strategy | None = None  # default: greedy at temperature 0, else sample
    num_beams: int = Field(default=4, ge=1, le=MAX_N)
    num_draft_tokens: int = Field(default=4, ge=1, le=16)
    adaptive_draft: bool = False  # speculative / prompt-lookup: gamma chosen each round (num_draft_tokens ignored)
    lookup_first: bool = False  # speculative: prompt lookup's tokens where the context recurs, the draft's elsewhere
    response_format: ResponseFormat | None = None  # OpenAI's (chat); completions and the trace take it too, as vLLM's

    @model_validator(mode="before")
    @classmethod
    def _nulls_as_defaults(cls, data: Any) -> Any:
        """An argument given as null takes its default, as OpenAI's nullable arguments do (clients that serialize
        every field send null for those unset); so does top_k -1 (vLLM's "off"), and an argument of OpenAI's at a
        value that asks for nothing this server lacks (service_tier "auto", asks_nothing)."""
        if not isinstance(data, dict):
            return data
        return {
            k: v for k, v in data.items() if v is not None and not (k == "top_k" and v == -1) and not asks_nothing(k, v)
        }

    @field_validator("stop")
    @classmethod
    def _few_short_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        """At most MAX_STOPS stop strings of at most MAX_STOP_CHARS characters each."""
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string has at most {MAX_STOP_CHARS} characters")
        return stop

    def param(self, name: str) -> str:
        """An argument as this endpoint names it (the Responses API's max_output_tokens for max_tokens, ...)."""
        return self.PARAMS.get(name, name)

    def stops(self) -> list[str]:
        """The stop strings as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def logit_biases(self, vocab_size: int) -> dict[int, float]:
        """logit_bias with its keys as token ids, each checked (ValueError naming the first that is not one)."""
        biases = {}
        for key, value in (self.logit_bias or {}).items():
            if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:
                raise ValueError(f"logit_bias: {key!r} is not a token id (0 .. {vocab_size - 1})")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"logit_bias: the bias of {key} must be in [-100, 100], got {value}")
            biases[int(key)] = value
        return biases

    def resolved_strategy(self) -> str:
        """The strategy asked for, by default greedy at temperature 0 and sampling otherwise."""
        return self.strategy or ("greedy" if self.temperature == 0 else "sample")

    def generation_config(self, max_new_tokens: int) -> GenerationConfig:
        """The decoding settings (stop strings are handled on the text, by the scheduler)."""
        return GenerationConfig(
            strategy=self.resolved_strategy(),
            max_new_tokens=max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            num_beams=self.num_beams,
            seed=self.seed,
            num_draft_tokens=self.num_draft_tokens,
            adaptive_draft=self.adaptive_draft,
            lookup_first=self.lookup_first,
        )


class CompletionRequest(Sampling):
    """POST /v1/completions: a prompt (text or token ids) or a list of them, each continued n times."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


class TextPart(BaseModel):
    """A text part of a message's content."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message of a conversation; an assistant message as OpenAI's API answered it (its `model_dump()`, with
    refusal, annotations and null tool_calls, function_call, audio) is taken as it is."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    refusal: str | None = None  # an assistant's refusal: its text when it has no content
    annotations: list | None = None  # (citations of a web search: nothing to the model)
    tool_calls: list | None = None
    function_call: dict | None = None
    audio: dict | None = None

    @model_validator(mode="before")
    @classmethod
    def _text_parts_only(cls, data: object) -> object:
        """A content part other than text (an image, audio, a file) refused as such, not as a malformed text part."""
        parts = data.get("content") if isinstance(data, dict) else None
        for part in parts if isinstance(parts, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in (None, "text"):
                raise ValueError(f"content parts of type {kind!r} are not supported (this server reads text parts)")
        return data

    @model_validator(mode="after")
    def _no_tools_or_audio(self) -> ChatMessage:
        """Tool calls and audio replies are not supported: refused when a message holds one; content is required
        but of an assistant's message (OpenAI's: one with a refusal or a tool call may have none)."""
        for name in ("tool_calls", "function_call", "audio"):
            if getattr(self, name):
                raise ValueError(f"{name} are not supported (this server has no tools and no audio)")
        if self.name:  # (taken and dropped, a multi-user conversation lost who said what)
            raise ValueError(
                "a message's name is not supported (the chat template has no place for it); put it in the content"
            )
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs its content (a string or a list of text parts)")
        return self

    def text(self) -> str:
        """The content as one string (an assistant's refusal where it has none)."""
        if self.content is None:
            return self.refusal or ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


class TraceRequest(Sampling):
    """POST /v1/arlm/trace: a prompt or a conversation, decoded with every strategy event streamed."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    top_logprobs: int = Field(default=5, ge=0, le=MAX_TOP_LOGPROBS)


class TokenizeRequest(TextOnly):
    """POST /tokenize (vLLM's, which lm-evaluation-harness reads): a text, or a conversation through the chat
    template. arlm's tokenizers add no special tokens, so add_special_tokens changes nothing."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    """POST /detokenize: token ids back to text."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]
