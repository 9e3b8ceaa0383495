"""The HTTP layer over a scripted engine: engine failures, token-level edge cases."""

from __future__ import annotations

import asyncio
import json

import httpx

from openchat_cli.serve.app import ServerConfig, create_app
from openchat_cli.serve.engines.base import Engine, EngineStats, TokenEvent
from openchat_cli.templates import get_template


class ScriptedEngine(Engine):
    kind = "scripted"

    def __init__(self, tokenizer, script):
        self.tokenizer = tokenizer
        self.context_length = 256
        self.script = script  # list of TokenEvent to replay for every request
        self.seen = []

    async def generate(self, prompt_ids, params, request_id):
        self.seen.append((prompt_ids, params))
        for event in self.script:
            await asyncio.sleep(0)
            yield event

    def stats(self):
        return EngineStats()


def call(app, payload):
    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post("/v1/chat/completions", json=payload)

    return asyncio.run(main())


def make_app(tokenizer, script):
    template = get_template("openchat_3.5")
    eot = tokenizer.convert_tokens_to_ids(template.eot_token)
    engine = ScriptedEngine(tokenizer, script)
    config = ServerConfig(model_name="m", template=template, stop_token_ids=(eot,))
    return create_app(engine, config), engine, eot


def test_engine_failure_is_a_server_error_not_a_crash(tiny_tokenizer):
    ids = tiny_tokenizer.encode(" Hello", add_special_tokens=False)
    app, _, _ = make_app(tiny_tokenizer, [TokenEvent(ids), TokenEvent([], "error", "boom")])
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    resp = call(app, body)
    assert resp.status_code == 500
    assert resp.json()["error"]["type"] == "server_error" and "boom" in resp.json()["error"]["message"]
    stream = call(app, {**body, "stream": True})
    assert stream.status_code == 200
    events = [line[6:] for line in stream.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == "engine_error" and events[-1] == "[DONE]"
    assert "Hello" in stream.text


def test_split_characters_and_eot_over_http(tiny_tokenizer):
    ids = tiny_tokenizer.encode(" 你好 wörld", add_special_tokens=False)
    eot = tiny_tokenizer.convert_tokens_to_ids("<|end_of_turn|>")
    script = [TokenEvent([t]) for t in ids] + [TokenEvent([eot], "stop")]
    app, engine, _ = make_app(tiny_tokenizer, script)
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = call(app, body)
    chunks = [
        json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: ") and line != "data: [DONE]"
    ]
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(d for d in deltas if d) == "你好 wörld"  # separator stripped, nothing split
    assert not any("\ufffd" in d for d in deltas if d)
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == len(ids) + 1  # eot counted, not shown
    assert engine.seen[0][1].stop_token_ids == (eot,)
