"""Scheduler events turned into what clients read: OpenAI's completion and chat objects (whole, or as stream
chunks), and the playground's trace events."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable

from arlm.data.tokenizers import Tokenizer

ENDED = -1.0e8  # below this a running beam's score means it has ended (beam search rules it out with -1e9)


def text_logprob(event: dict, piece_bytes: Callable[[int], bytes]) -> dict:
    """A token event's log-probability entry as chat's logprobs.content (and the Responses API's) list it: its text,
    its bytes (a token that is part of a character has some), its log-probability and its alternatives'."""
    raw = lambda token: list(piece_bytes(token))
    top = [{"token": p, "logprob": lp, "bytes": raw(t)} for t, p, lp in event["top"]]
    return {"token": event["piece"], "logprob": event["logprob"], "bytes": raw(event["token"]), "top_logprobs": top}


class OpenAIFormat:
    """Builds one response of /v1/completions (kind "completion") or /v1/chat/completions (kind "chat")."""

    def __init__(
        self,
        kind: str,
        model_id: str,
        n: int,
        prompt_tokens: int,
        include_usage: bool = False,
        echo: list[str] | None = None,
        scored: bool = False,
        piece_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        """n choices; echo: each choice's prompt text, put before its completion (scored: with the prompt tokens'
        log-probabilities, which come as a "prompt" event before its first token); piece_bytes: a token id's bytes
        (the tokenizer's), for chat's logprobs (OpenAI's "bytes": a token that is part of a character has some)."""
        self.kind, self.model_id, self.n = kind, model_id, n
        self.piece_bytes = piece_bytes or (lambda token: b"")
        self.echo, self.scored = echo, scored
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage
        self.texts = list(echo) if echo else [""] * n
        self.logprobs: list[list[dict]] = [[] for _ in range(n)]  # the entries of text sent, echoed prompt first
        self.pending: list[list[dict]] = [[] for _ in range(n)]  # every generated token's entry, listed or not
        self.listed = [0] * n  # of them, how many are in logprobs
        self.finish: list[str | None] = [None] * n
        self.completion_tokens = 0
        self.cached_tokens = 0  # prompt tokens the slots held already (--reuse-prefix), from the "done" event
        self._held: dict | None = None  # the last choice's final chunk, sent once the usage is known

    # ------------------------------------------------------------ streaming

    def start_chunks(self) -> list[dict]:
        """Chunks sent before any token: the assistant role of each chat choice, or the prompt of each echoed
        completion (when its log-probabilities are not awaited)."""
        if self.kind == "chat":
            return [self._chunk(i, {"role": "assistant", "content": ""}) for i in range(self.n)]
        if self.echo and not self.scored:
            return [self._chunk(i, text) for i, text in enumerate(self.echo) if text]
        return []

    def chunks(self, event: dict) -> list[dict]:
        """The stream chunks for one scheduler event (and records it for the whole response)."""
        kind, i = event["type"], event.get("index", 0)
        if kind == "prompt":
            for token, piece, logprob, top, start in event["tokens"]:
                entry = {"token": token, "piece": piece, "logprob": logprob, "top": top, "prompt_start": start}
                self.logprobs[i].append(self._logprob_entry(i, entry))
            return [self._chunk(i, self.echo[i], logprobs=self._logprobs_object(self.logprobs[i]))]
        if kind == "token":
            self.completion_tokens += 1
            self.texts[i] += event["text"]
            if "logprob" in event:
                self.pending[i].append(self._logprob_entry(i, event))
            fresh = self._release(i, event["listed"])
            if not event["text"] and fresh is None:
                return []
            return [self._chunk(i, event["text"], logprobs=fresh)]
        if kind == "finish":
            self.texts[i] += event["text"]
            self.finish[i] = "stop" if event["reason"] == "stop" else "length"
            fresh = self._release(i, event["listed"])
            chunk = self._chunk(i, event["text"] if event["text"] else None, logprobs=fresh, finish=self.finish[i])
            if all(f is not None for f in self.finish):
                self._held = chunk  # the last one: it carries the usage unless a usage chunk follows
                return []
            return [chunk]
        if kind == "done":
            self.cached_tokens = event["usage"]["prompt_tokens_details"]["cached_tokens"]
            usage = self.usage()
            out = []
            if self._held is not None:
                if not self.include_usage:  # llama.cpp's way; asked for, the usage comes once, in its own chunk
                    self._held["usage"] = usage
                out.append(self._held)
            if self.include_usage:
                out.append(self._envelope([], usage=usage))
            return out
        return []

    def _chunk(self, i: int, text: str | dict | None, logprobs: dict | None = None, finish: str | None = None) -> dict:
        if self.kind == "chat":
            delta = text if isinstance(text, dict) else ({"content": text} if text else {})
            choice = {"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        else:
            choice = {"index": i, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return self._envelope([choice])

    def _envelope(self, choices: list[dict], usage: dict | None = None) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        out = {"id": self.id, "object": obj, "created": self.created, "model": self.model_id, "choices": choices}
        if usage is not None or self.include_usage:  # asked for: null on every chunk but the last (OpenAI's)
            out["usage"] = usage
        return out

    # ------------------------------------------------------------ log-probabilities

    def _logprob_entry(self, i: int, event: dict) -> dict:
        piece = event["piece"]
        if self.kind == "chat":
            return text_logprob(event, self.piece_bytes)
        # where its text begins in the choice's: an echoed prompt's token in the prompt, a generated one after it
        offset = (
            event["prompt_start"]
            if "prompt_start" in event
            else len(self.echo[i] if self.echo else "") + event["start"]
        )
        piece = self._spelled(event["token"], piece)
        if event["top"] is None:  # an echoed prompt's first token: nothing before it to predict it
            return {"token": piece, "logprob": None, "top": None, "offset": offset}
        top: dict[str, float] = {}
        for t, p, lp in event["top"]:  # keyed by text, as OpenAI's: of tokens with the same text the likelier
            top.setdefault(self._spelled(t, p), lp)
        top[piece] = event["logprob"]  # the chosen token's own, always there (OpenAI's: up to logprobs + 1)
        return {"token": piece, "logprob": event["logprob"], "top": top, "offset": offset}

    def _spelled(self, token: int, piece: str) -> str:
        """A completion token as OpenAI's legacy completions spell it: its text, or, for a token holding part of a
        character (whose text is U+FFFD, the same for all of them), its bytes as `bytes:\\xNN...`."""
        raw = self.piece_bytes(token)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)
        return piece

    def _release(self, i: int, listed: int) -> dict | None:
        """The log-probabilities of choice i's tokens whose text has now been sent (listed: how many have), as a
        chunk's; None when there are none. A token whose text is never sent (the end-of-turn token, a stop
        string's) is never listed, so that, joined, the entries are the text."""
        fresh = self.pending[i][self.listed[i] : listed]
        self.listed[i] = max(self.listed[i], listed)
        self.logprobs[i].extend(fresh)
        return self._logprobs_object(fresh) if fresh else None

    def _logprobs_object(self, entries: list[dict]) -> dict:
        if self.kind == "chat":
            return {"content": entries}
        return {
            "tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [e["top"] for e in entries],
            "text_offset": [e["offset"] for e in entries],
        }

    # ------------------------------------------------------------ the whole response

    def usage(self) -> dict:
        """OpenAI's usage counts."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }

    def response(self, with_logprobs: bool) -> dict:
        """The non-streamed response, once every event has been through chunks()."""
        choices = []
        for i in range(self.n):
            choice = {"index": i, "logprobs": None, "finish_reason": self.finish[i]}
            if with_logprobs:
                choice["logprobs"] = self._logprobs_object(self.logprobs[i])
            if self.kind == "chat":
                choice["message"] = {"role": "assistant", "content": self.texts[i], "refusal": None}  # (OpenAI's)
            else:
                choice["text"] = self.texts[i]
            choices.append(choice)
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model_id,
            "choices": choices,
            "usage": self.usage(),
        }


class TraceFormat:
    """The playground's events: tokens with their probability and top alternatives, beam search's beams and
    speculative decoding's verifications, ids turned into text."""

    def __init__(self, tokenizer: Tokenizer, top: int = 5) -> None:
        """top: the alternatives listed per token of a verification (a batched strategy's come from the job)."""
        self.tokenizer, self.top = tokenizer, top

    def events(self, event: dict) -> list[dict]:
        """Trace events for one scheduler event."""
        kind = event["type"]
        if kind == "token":
            token, label = event["token"], self.tokenizer.piece_label
            out = {"type": "token", "index": event["index"], "id": token, "text": event["text"], "piece": label(token)}
            out["partial"] = "\ufffd" in self.tokenizer.token_text(token)  # part of a character: its text comes later
            if "logprob" in event:
                out["prob"] = math.exp(event["logprob"])
                top = event["top"][: self.top]  # (beam search keeps more than asked)
                out["top"] = [{"id": t, "piece": label(t), "prob": math.exp(lp)} for t, _, lp in top]
            return [out]
        if kind == "trace":
            return [self._strategy_event(event["index"], event["data"])]
        return [event]

    def _strategy_event(self, index: int, data: dict) -> dict:
        piece = self.tokenizer.piece_label
        if data["event"] == "verify":
            return {
                "type": "verify",
                "index": index,
                "source": data["source"],  # "model" or "lookup": what drafted these tokens
                "drafted": [{"id": t, "piece": piece(t)} for t in data["drafted"]],
                "accepted": data["accepted"],
                "token": {"id": data["token"], "piece": piece(data["token"])},
                "probs": [math.exp(lp) for lp in data["logprobs"]],
                "top": [
                    [{"id": t, "piece": piece(t), "prob": math.exp(lp)} for t, lp in row[: self.top]]
                    for row in data["top"]
                ],
            }
        decode = self.tokenizer.decode
        (running,), (finished,) = data["running"], data["finished"]
        return {
            "type": "beams",
            "index": index,
            "step": data["step"],
            "running": [  # beams that ended (scored -1e9 by beam search) are no longer running
                {"text": decode(b["tokens"]), "score": b["score"]} for b in running if b["score"] > ENDED
            ],
            "finished": [{"text": decode(h["tokens"]), "score": h["score"]} for h in finished],
        }
