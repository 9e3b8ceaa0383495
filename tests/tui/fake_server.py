"""A scripted OpenAI-compatible server for the TUI tests (and the tmux smoke script).

Runs an aiohttp app on 127.0.0.1 in a background thread. What it does depends on the last
user message:

- contains SLOW: streams 400 words, 50 ms apart (to stop mid-stream);
- contains LONG: streams 40 numbered lines quickly (to test following / scrolling);
- contains TOO_LONG: HTTP 400, OpenAI's error shape, "maximum context length" message;
- a judge prompt (FastChat's, asking for [[A]]/[[B]] or a [[rating]]): a parseable verdict;
- otherwise: streams REPLY (markdown with a code block) in small chunks.

A Bearer key "bad-key" gets 401; an unknown model gets 404. Every request body is kept in
`requests`; streams the client closed early are counted in `disconnects`.

    python tests/tui/fake_server.py --port 18999
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from typing import Any

from aiohttp import web

from tests.fake_openai import LoopbackServer, openai_error

MODELS = ["fake-model", "other-model"]
REPLY = "Hello! I am a **scripted** model.\n\n```python\nprint('hello world')\n```\n\n- one\n- two\n"


def chunks_of(text: str, size: int = 6) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class FakeServer(LoopbackServer):
    def __init__(self, port: int = 0, chunk_delay: float = 0.03, reply: str | None = None):
        """`reply`: what a plain message gets instead of REPLY (the render benchmark sends
        long Markdown with `chunk_delay=0`)."""
        super().__init__(port)
        self.chunk_delay = chunk_delay
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self.completed = 0

    # -- app ---------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/health", self.health)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def _auth_failed(self, request: web.Request) -> bool:
        return request.headers.get("Authorization", "") == "Bearer bad-key"

    async def models(self, request: web.Request) -> web.Response:
        if self._auth_failed(request):
            return openai_error(401, "Invalid API key", "invalid_api_key")
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "openchat"} for m in MODELS],
            }
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if self._auth_failed(request):
            return openai_error(401, "Invalid API key", "invalid_api_key")
        body = await request.json()
        self.requests.append(body)
        model = body.get("model")
        if model not in MODELS:
            return openai_error(404, f"The model '{model}' does not exist", "model_not_found", "model")
        last = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        if "TOO_LONG" in last:
            return openai_error(
                400,
                "This model's maximum context length is 2048 tokens, but the messages resulted in 9000 tokens.",
                "context_length_exceeded",
                "messages",
            )
        delay = self.chunk_delay
        prompt = " ".join(str(m.get("content")) for m in body.get("messages", []))
        if "[[A]]" in prompt and "[[B]]" in prompt:  # a pairwise judge prompt
            winner = "A" if len(prompt) % 3 else "B"
            pieces = chunks_of(f"Assistant {winner} follows the user's instructions better.\n\n[[{winner}]]")
        elif "[[rating]]" in prompt or "Rating: [[" in prompt:  # a single-answer judge prompt
            pieces = chunks_of(f"A helpful answer. Rating: [[{len(prompt) % 10 + 1}]]")
        elif "SLOW" in last:
            pieces, delay = [f"word{i} " for i in range(400)], 0.05
        elif "LONG" in last:
            pieces, delay = [f"line {i}\n\n" for i in range(40)], 0.01
        else:
            pieces = chunks_of(self.reply or REPLY)
        if not body.get("stream"):
            self.completed += 1
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": "".join(pieces)},
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        def event(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage:
                chunk["usage"] = usage
            return f"data: {json.dumps(chunk)}\n\n".encode()

        try:
            await response.write(event({"role": "assistant", "content": ""}))
            for piece in pieces:
                if delay:
                    await asyncio.sleep(delay)
                await response.write(event({"content": piece}))
            await response.write(event({}, "stop"))
            await response.write(
                event({}, usage={"prompt_tokens": 5, "completion_tokens": len(pieces), "total_tokens": 5 + len(pieces)})
            )
            await response.write(b"data: [DONE]\n\n")
            self.completed += 1
        except asyncio.CancelledError:
            self.disconnects += 1
            raise
        except (ConnectionError, OSError):
            self.disconnects += 1
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = FakeServer(args.port).start()
    print(server.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
