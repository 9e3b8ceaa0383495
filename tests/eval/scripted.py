"""A scripted OpenAI-compatible server on loopback: answers and judge verdicts chosen by the
prompt's content, with injectable failures (429 / 500 / slow), standing in for paid judge APIs.

Answering models reply "[<model>] …" so a judge can tell whose answer is where; `long-*` models
pad their replies. Judge models:
- fair-judge: prefers the answer of a `long-` model wherever it is shown; rates long 8, others 4.
- biased-judge: always "[[A]]" (position bias); rates everything 5.
- messy-judge: like fair-judge, but a question containing MALFORMED gets text with no verdict,
  and one containing CONFLICT gets both [[A]] and [[B]].

With `context_length` set, requests are held to that context as vLLM does (a token is a word,
plus `MESSAGE_OVERHEAD` per message): /v1/models reports `max_model_len`, a request whose
prompt + max_tokens exceeds it gets vLLM's 400 (`context_style` "vllm", with the counts) or a
400 without numbers ("bare") or with a lower bound of the prompt ("at-least"), and a request without max_tokens gets what the context leaves.
`verbose-*` models write `VERBOSE_WORDS` words, or their whole budget when it is smaller.

`hold(after=N)` makes chat requests after the next N wait until `release()` or `reset()` (see
`RequestHold`): a test stops a command that certainly has work left, whatever the load.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import deque
from typing import Any

from aiohttp import web

from tests.fake_openai import LoopbackServer, RequestHold, chat_completion, model_list, openai_error


class ScriptedServer(LoopbackServer):
    def __init__(self) -> None:
        super().__init__()
        self.latency_s = 0.0
        self.health_latency_s = 0.0  # /health is slow (a server still warming up)
        self.failures: deque[int] = deque()  # status codes to answer the next requests with
        self.requests: list[dict[str, Any]] = []
        self.keys: list[str | None] = []  # the Bearer key of each chat request
        self.health: dict[str, Any] = {"status": "ok"}
        self.replies: dict[str, str] = {}  # last user message -> the reply to give (answering models)
        self.context_length: int | None = None
        self.context_style = "vllm"
        self.models_report_context = True
        self.lock = threading.Lock()
        self.gate = RequestHold()  # chat requests only

    # -- control ----------------------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.latency_s = 0.0
            self.health_latency_s = 0.0
            self.failures.clear()
            self.requests.clear()
            self.keys.clear()
            self.health = {"status": "ok"}
            self.replies.clear()
            self.context_length = None
            self.context_style = "vllm"
            self.models_report_context = True
        self.gate.release()

    def hold(self, after: int = 0, until_waiting: int | None = None) -> None:
        """Chat requests after the next `after` wait until `release()` (or until
        `until_waiting` of them wait at once)."""
        self.gate.hold(after, until_waiting)

    def release(self) -> None:
        self.gate.release()

    @property
    def held(self) -> int:
        """Chat requests waiting at the hold now."""
        return self.gate.waiting

    def fail_next(self, *statuses: int) -> None:
        with self.lock:
            self.failures.extend(statuses)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)

    # -- handlers ---------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        if self.health_latency_s:
            await asyncio.sleep(self.health_latency_s)
        return web.json_response(self.health)

    async def _models(self, request: web.Request) -> web.Response:
        card: dict[str, Any] = {"id": "scripted-model"}
        if self.context_length and self.models_report_context:
            card["max_model_len"] = self.context_length
        return model_list(card)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        auth = request.headers.get("Authorization", "")
        with self.lock:
            self.requests.append(body)
            self.keys.append(auth.removeprefix("Bearer ") if auth else None)
            status = self.failures.popleft() if self.failures else None
            latency = self.latency_s
        await self.gate.passage()
        if latency:
            await asyncio.sleep(latency)
        if status is not None:
            headers = {"Retry-After": "0"} if status == 429 else {}
            return openai_error(status, f"scripted {status}", status, kind="scripted", headers=headers)
        model = body.get("model", "")
        messages = body.get("messages", [])
        if self.context_length:
            return self._within_context(model, messages, body.get("max_tokens"))
        if "judge" in model:
            text = judge_text(model, messages)
        elif messages and messages[-1].get("content") in self.replies:
            text = self.replies[messages[-1]["content"]]
        else:
            text = answer_text(model, messages)
        usage = {
            "prompt_tokens": sum(len(m.get("content", "").split()) for m in messages),
            "completion_tokens": len(text.split()),
        }
        return chat_completion(model, text, usage)

    def _within_context(self, model: str, messages: list[dict[str, Any]], max_tokens: int | None) -> web.Response:
        ctx = self.context_length
        assert ctx is not None
        prompt = prompt_tokens(messages)
        if prompt >= ctx or (max_tokens is not None and prompt + max_tokens > ctx):
            if self.context_style == "bare":
                message = "Input is too long for this model's context window."
            elif self.context_style == "at-least" and max_tokens is not None:
                # newer vLLM counts the prompt only partly before refusing: a lower bound
                message = (
                    f"This model's maximum context length is {ctx} tokens. However, you requested "
                    f"{max_tokens} output tokens and your prompt contains at least "
                    f"{max(1, prompt - 40)} input tokens, for a total of at least "
                    f"{max(1, prompt - 40) + max_tokens} tokens."
                )
            elif max_tokens is None:
                message = (
                    f"This model's maximum context length is {ctx} tokens. However, your messages "
                    f"resulted in {prompt} tokens. Please reduce the length of the messages."
                )
            else:
                message = (
                    f"This model's maximum context length is {ctx} tokens. However, you requested "
                    f"{prompt + max_tokens} tokens ({prompt} in the messages, {max_tokens} in the "
                    f"completion). Please reduce the length of the messages or completion."
                )
            return web.json_response(
                {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400},
                status=400,
            )
        budget = max_tokens if max_tokens is not None else ctx - prompt
        words = answer_text(model, messages).split()
        if model.startswith("verbose"):
            words = (words * (VERBOSE_WORDS // max(1, len(words)) + 1))[:VERBOSE_WORDS]
        finish = "length" if len(words) >= budget else "stop"
        text = " ".join(words[:budget])
        return chat_completion(
            model, text, {"prompt_tokens": prompt, "completion_tokens": len(text.split())}, finish_reason=finish
        )


VERBOSE_WORDS = 700  # what a verbose-* model writes when its budget allows
MESSAGE_OVERHEAD = 4  # role and separator tokens a chat template adds per message


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(m.get("content", "").split()) + MESSAGE_OVERHEAD for m in messages)


def answer_text(model: str, messages: list[dict[str, Any]]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    seen = sum(1 for m in messages if m["role"] == "assistant")
    text = f"[{model}] reply {len(users)} (saw {seen} earlier replies) to: {users[-1][:40]}"
    if model.startswith("long"):
        text += " " + " ".join(["More detail follows."] * 12)
    return text


def _positions(prompt: str) -> list[str]:
    """Model tags in the order they first appear in the judge prompt (A first, then B)."""
    order: list[str] = []
    for tag in re.findall(r"\[([\w.-]+-model)\]", prompt):
        if tag not in order:
            order.append(tag)
    return order


def judge_text(judge: str, messages: list[dict[str, Any]]) -> str:
    prompt = "\n".join(m["content"] for m in messages)
    pairwise = "[[A]]" in prompt or "assistant a" in prompt.lower()
    if judge.startswith("messy"):
        if "MALFORMED" in prompt:
            return "Both replies have merits; I cannot decide. Rating: excellent."
        if "CONFLICT" in prompt and pairwise:
            return "At first [[A]] looked better, but on reflection [[B]]."
    if judge.startswith("biased"):
        return "Assistant A is clearly better. [[A]]" if pairwise else "An average reply.\nRating: [[5]]"
    tags = _positions(prompt)
    if pairwise:
        if len(tags) < 2:
            return "Equally good. [[C]]"
        long_a, long_b = tags[0].startswith("long"), tags[1].startswith("long")
        if long_a == long_b:
            return "They are equally good. [[C]]"
        return "The more detailed reply wins. " + ("[[A]]" if long_a else "[[B]]")
    if tags and tags[-1].startswith("long"):
        return "Detailed and helpful.\nRating: [[8]]"
    return "Too short.\nRating: [[4]]"


if __name__ == "__main__":  # a standalone server for manual runs and the kill test
    import sys

    server = ScriptedServer()
    server.latency_s = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
    server.start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
