"""What a request becomes before it is queued: the served model's name checked, its prompts (text, token ids, a chat
through the model's template) as ids, and its settings as a scheduler Job, refused with a 4xx where they cannot run."""

from __future__ import annotations

import time
from collections.abc import Callable

from arlm.data.chat import encode_conversation
from arlm.decoding.generate import check_length
from arlm.decoding.grammar import JsonGrammar
from arlm.decoding.settings import unread, unread_message
from arlm.errors import ArlmError
from arlm.serving.errors import ApiError
from arlm.serving.jobs import Job
from arlm.serving.scheduler import Scheduler
from arlm.serving.schemas import ChatMessage, Sampling


class Server:
    """What the handlers need: the scheduler, the tokenizer, the served model's name, dtype and context, whether the
    API asks a key."""

    def __init__(
        self,
        scheduler: Scheduler,
        model_id: str,
        plain_chat: bool = False,
        auth: bool = False,
        dtype: str | None = None,
    ) -> None:
        self.scheduler, self.model_id, self.plain_chat, self.auth = scheduler, model_id, plain_chat, auth
        self.dtype = dtype
        self.tokenizer = scheduler.tokenizer
        self.context = scheduler.engine.max_len
        self.created = int(time.time())  # the model card's "created": when the server started

    def check_model(self, name: str) -> None:
        """404 unless the request names the served model."""
        if name != self.model_id:
            message = f"the model {name!r} does not exist; this server serves {self.model_id!r}"
            raise ApiError(404, message, param="model", code="model_not_found")

    def split_prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
        """A completion's prompt (a text or token ids) or list of prompts, as a list of prompts."""
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ApiError(
                400, 'prompt holds no token ids (an empty list); send a text ("" starts from BOS)', param="prompt"
            )
        prompts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt
        if len(prompts) > self.scheduler.max_queue:
            message = f"{len(prompts)} prompts in one request; this server queues at most {self.scheduler.max_queue}"
            raise ApiError(400, message, param="prompt")
        return prompts

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """One prompt (text or token ids) as ids; an empty one is BOS."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.check_ids(ids, "prompt token ids", "prompt")
        if not ids:
            bos = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
            ids = [bos if bos is not None else 0]  # an empty prompt starts from BOS, as arlm generate does
        return ids

    def check_ids(self, ids: list[int], what: str, param: str) -> None:
        """400 unless every id is one of the tokenizer's."""
        vocab = self.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(400, f"{what} must be in [0, {vocab})", param=param)

    def encode_chat(
        self, messages: list[ChatMessage], add_generation_prompt: bool = True, param: str = "messages"
    ) -> list[int]:
        """A conversation through the model's chat template (or as its chat-data training rendered it), ending in
        the assistant's cue (param: the argument that holds it)."""
        if not self.tokenizer.chat_template and not self.plain_chat:
            raise ApiError(400, "this model has no chat template; use /v1/completions", param=param)
        template = self.tokenizer.chat_template or ""
        turns = [{"role": _role(m.role, template), "content": m.text()} for m in messages]
        return encode_conversation(turns, self.tokenizer, add_generation_prompt)

    def job(
        self,
        req: Sampling,
        prompt: list[int],
        max_tokens: int | None,
        emit: Callable[[dict], None],
        top_logprobs: int = -1,
        scored: bool = False,
    ) -> Job:
        """The scheduler job of a request (default max_tokens: what the context leaves); scored: the prompt's
        tokens get log-probabilities too."""
        given = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        held = "messages" if getattr(req, "messages", None) else "prompt"  # the arguments the request named
        name, held = req.param(given), req.param(held)  # (as the endpoint calls them: the Responses API's differ)
        check_length(len(prompt), max_tokens or 0, self.context, name=name, prompt=held)  # (ArlmError: a 400)
        if max_tokens is None:
            max_tokens = self.context - len(prompt)
        config = req.generation_config(max_tokens)
        # a setting the strategy would ignore is refused; OpenAI's top_p at temperature 0 is not (clients send it
        # with every request, as OpenAI's API takes it), arlm's top_k and min_p are
        unused = unread(config, sorted(req.model_fields_set), at_zero=False)
        if unused:
            raise ApiError(400, unread_message(config, unused[0]), param=unused[0])
        try:
            logit_bias = req.logit_biases(self.tokenizer.vocab_size)
        except ValueError as e:
            raise ApiError(400, str(e), param="logit_bias") from None
        schema = None if req.response_format is None else req.response_format.constraint()
        try:
            vocab = self.scheduler.model.config.vocab_size  # (the logits' width)
            grammar = None if schema is None else JsonGrammar(self.tokenizer, schema, vocab)
        except ArlmError as e:
            raise ApiError(400, str(e), param=req.param("response_format")) from None
        return Job(
            prompt=prompt,
            config=config,
            emit=emit,
            n=req.n,
            eos_id=self.tokenizer.eos_id,
            top_logprobs=top_logprobs,
            prompt_logprobs=scored,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logit_bias=logit_bias,
            grammar=grammar,
            stops=req.stops(),
            named=req.param,
        )


def _role(role: str, template: str) -> str:
    """A message's role as the chat template gets it: OpenAI's "developer" (the system prompt of its newer models)
    as "system", unless the template names the role itself (as a quoted string: not a word of its default prompt)."""
    names = "'developer'" in template or '"developer"' in template
    return "system" if role == "developer" and not names else role
