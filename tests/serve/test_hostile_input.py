"""Hostile requests on the real server: lone surrogates, a request far bigger than the context,
and a request log that keeps every completion request, refused or crashed."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.serve.conftest import API_KEYS

# JSON may carry a lone UTF-16 surrogate as an escape; Python decodes it into a str that UTF-8
# (and the tokenizer) cannot take.
SURROGATE_BODIES = [
    (
        "/chat/completions",
        '{"model": "%(m)s", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        "messages[0].content",
    ),
    (
        "/chat/completions",
        '{"model": "%(m)s", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
        "messages[0].content[0].text",
    ),
    (
        "/chat/completions",
        '{"model": "%(m)s", "messages": [{"role": "user", "content": "hi"}], "stop": ["ok", "\\udc80"]}',
        "stop[1]",
    ),
    ("/chat/completions", '{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "model"),
    (
        "/chat/completions",
        '{"model": "%(m)s", "messages": [{"role": "user", "content": "hi"}], "user": "\\udbff"}',
        "user",
    ),
    ("/completions", '{"model": "%(m)s", "prompt": "\\udc00"}', "prompt"),
    ("/completions", '{"model": "%(m)s", "prompt": ["fine", "x\\ud800"]}', "prompt[1]"),
    ("/completions", '{"model": "\\udc00", "prompt": "hi"}', "model"),
    (
        "/completions",
        '{"model": "%(m)s", "prompt": "hi", "echo": true, "logprobs": 1, "max_tokens": 0, "stop": "\\ud83d"}',
        "stop",
    ),
]


@pytest.mark.parametrize("path,body,param", SURROGATE_BODIES, ids=[p for _, _, p in SURROGATE_BODIES])
def test_lone_surrogates_are_a_400_naming_the_field(tiny_server, path, body, param):
    resp = httpx.post(
        tiny_server.base_url + path,
        content=(body % {"m": tiny_server.model}).encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and err["code"] == "invalid_encoding", err
    assert "surrogate" in err["message"]
    # Our words, not the tokenizer's.
    for internal in ("TextEncodeInput", "TextInputSequence", "Union[", "TypeError"):
        assert internal not in err["message"]


def test_a_surrogate_in_a_field_name_still_gets_a_json_reply(tiny_server):
    body = '{"model": "%s", "prompt": "hi", "\\ud800": 1}' % tiny_server.model
    resp = httpx.post(tiny_server.base_url + "/completions", content=body.encode(), timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == "\\ud800"
    assert 'status="500"' not in httpx.get(tiny_server.url + "/metrics").text


def _health_while(url: str, send) -> tuple[object, float]:
    """Run `send()` in a thread and poll /health until it returns: (its result, worst latency)."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", send()))
    thread.start()
    worst = 0.0
    while thread.is_alive():
        started = time.perf_counter()
        assert httpx.get(url + "/health", timeout=60).status_code == 200
        worst = max(worst, time.perf_counter() - started)
        time.sleep(0.01)
    thread.join()
    return result["r"], worst


@pytest.mark.parametrize("shape", ["100k messages", "one huge message", "huge prompt", "many ids"])
def test_a_request_far_over_the_context_is_refused_without_stalling_others(tiny_server, shape):
    """Before: 100,000 short messages (3.6 MB) were tokenized on the event loop: /health took
    15 s. Now the bounds refuse them before tokenizing, off the loop."""
    chat = shape in ("100k messages", "one huge message")
    if shape == "100k messages":
        payload = {
            "messages": [{"role": "user" if i % 2 == 0 else "assistant", "content": "hi"} for i in range(100_000)]
        }
    elif shape == "one huge message":
        payload = {"messages": [{"role": "user", "content": "hello " * 600_000}]}
    elif shape == "huge prompt":
        payload = {"prompt": "hello " * 600_000}
    else:
        payload = {"prompt": [5] * 500_000}
    body = json.dumps({"model": tiny_server.model, **payload}).encode()
    assert len(body) < 4 * 1024 * 1024  # legal: under the default body limit
    url = tiny_server.base_url + ("/chat/completions" if chat else "/completions")

    def send():
        started = time.perf_counter()
        resp = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=120)
        return resp, time.perf_counter() - started

    (resp, took), worst = _health_while(tiny_server.url, send)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    assert resp.json()["error"]["param"] == ("messages" if chat else "prompt")
    assert took < 10, took
    assert worst < 3.0, f"/health took {worst:.2f}s while the big request was handled"


def _log_entries(path) -> list[dict]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def _wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_the_request_log_keeps_every_completion_request(guarded_server):
    """Before: a request whose fields held a lone surrogate was dropped from the log (the write
    raised), and refusals before validation (401, 413, 404) were never logged."""
    url, model = guarded_server.base_url, guarded_server.model
    key = {"Authorization": f"Bearer {API_KEYS[0]}", "content-type": "application/json"}
    marker = f"audit-{time.time_ns()}"
    sent = [
        # (body, headers, expected status)
        ('{"model": "%s", "messages": [{"role": "user", "content": "%s \\ud800"}]}' % (model, marker), key, 400),
        ('{"model": "nope-%s", "messages": [{"role": "user", "content": "hi"}]}' % marker, key, 404),
        (
            '{"model": "%s", "messages": [{"role": "user", "content": "%s"}], "max_tokens": 2}' % (model, marker),
            {"Authorization": "Bearer wrong", "content-type": "application/json"},
            401,
        ),
        ('{"model": "%s", "prompt": "%s %s"}' % (model, marker, "x" * 70_000), key, 413),
        ('{"model": "%s", "prompt": "%s", "max_tokens": 2}' % (model, marker), key, 200),
    ]
    before = len(_log_entries(guarded_server.log_path))
    rows_before = guarded_server.catalog.query("select coalesce(max(id), 0) as n from requests")[0]["n"]
    for body, headers, status in sent:
        resp = httpx.post(
            url + ("/chat/completions" if "messages" in body else "/completions"),
            content=body.encode(),
            headers=headers,
            timeout=30,
        )
        assert resp.status_code == status, resp.text

    entries = _wait_for(
        lambda: (lambda e: e if len(e) >= len(sent) else None)(_log_entries(guarded_server.log_path)[before:])
    )
    assert entries, _log_entries(guarded_server.log_path)[before:]
    statuses = [e["status"] for e in entries]
    for _, _, status in sent:
        assert status in statuses, statuses
    for e in entries:
        assert e["endpoint"] in ("/v1/chat/completions", "/v1/completions") and e["client"]
        assert e.get("error") or e["status"] == 200, e
    surrogate = next(e for e in entries if e["status"] == 400)
    # Kept exactly: the line is JSON again with the lone surrogate in it.
    assert surrogate["request"]["messages"][0]["content"] == f"{marker} \ud800"
    assert "surrogate" in surrogate["error"]
    assert all(e.get("error") for e in entries if e["status"] >= 400)

    def rows():
        found = guarded_server.catalog.query(
            "select status, request, output from requests where id > ? order by id", [rows_before]
        )
        return found if len(found) >= len(sent) else None

    new_rows = _wait_for(rows)
    assert new_rows, guarded_server.catalog.query("select status from requests where id > ?", [rows_before])
    assert {s for _, _, s in sent} <= {r["status"] for r in new_rows}
    assert any("\\ud800" in json.dumps(r["request"]) for r in new_rows if r["status"] == 400)


def test_server_errors_are_logged_too(tiny_tokenizer, tmp_path):
    """Before: a crash (500) left no line in the request log."""
    from openchat_cli.serve.app import ServerConfig, create_app
    from openchat_cli.serve.engines.base import TokenEvent
    from openchat_cli.templates import get_template
    from tests.serve.conftest import serve_in_thread
    from tests.serve.test_app_fake_engine import ScriptedEngine

    class BrokenEngine(ScriptedEngine):
        async def generate(self, prompt_ids, params, request_id):
            if params.seed == 13:
                raise RuntimeError("the engine broke")
            async for event in super().generate(prompt_ids, params, request_id):
                yield event

    template = get_template("openchat_3.5")
    eot = tiny_tokenizer.convert_tokens_to_ids(template.eot_token)
    engine = BrokenEngine(tiny_tokenizer, [TokenEvent([], "error", "out of memory")])
    log_path = tmp_path / "requests.jsonl"
    app = create_app(
        engine, ServerConfig(model_name="m", template=template, stop_token_ids=(eot,), log_requests=log_path)
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    with serve_in_thread(app) as (url, _, _):
        crashed = httpx.post(url + "/v1/chat/completions", json={**body, "seed": 13}, timeout=30)
        failed = httpx.post(url + "/v1/chat/completions", json=body, timeout=30)
        streamed = httpx.post(url + "/v1/chat/completions", json={**body, "stream": True}, timeout=30)
    assert crashed.status_code == 500 and crashed.json()["error"]["code"] == "internal_error"
    assert failed.status_code == 500 and "out of memory" in failed.json()["error"]["message"]
    assert streamed.status_code == 200 and "engine_error" in streamed.text
    entries = _wait_for(lambda: (lambda e: e if len(e) >= 3 else None)(_log_entries(log_path)))
    assert entries and [e["status"] for e in entries] == [500, 500, 500], entries
    assert "RuntimeError" in entries[0]["error"] and entries[0]["request"]["seed"] == 13
    assert "out of memory" in entries[1]["error"] and "out of memory" in entries[2]["error"]


@pytest.mark.parametrize("depth", [40, 5_000, 200_000])
def test_deeply_nested_json_is_a_400(tiny_server, depth):
    """Before: nesting past Python's recursion limit was a 500 RecursionError."""
    body = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "metadata": {"a": %s%s}}' % (
        tiny_server.model,
        "[" * depth,
        "]" * depth,
    )
    resp = httpx.post(
        tiny_server.base_url + "/chat/completions",
        content=body.encode(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] in ("invalid_json", "invalid_type")
