"""API keys, body limits, request logs (file and catalog) on a server started with them."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.serve.conftest import API_KEYS

USER = [{"role": "user", "content": "Hello there"}]


def test_api_keys(guarded_server):
    url = guarded_server.base_url
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {API_KEYS[0]}"},
        {"Authorization": f"Bearer {API_KEYS[0]}x"},
    ):
        resp = httpx.get(url + "/models", headers=headers)
        assert resp.status_code == 401, headers
        err = resp.json()["error"]
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
        assert resp.headers["www-authenticate"] == "Bearer"
    # Refused before the body is even read: no 400 for a bad body without a key.
    assert httpx.post(url + "/chat/completions", content=b"{not json").status_code == 401
    for key in API_KEYS:
        assert httpx.get(url + "/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    # Only /health stays open: the schema, the docs and the metrics (which count the 401s)
    # need a key too.
    assert httpx.get(guarded_server.url + "/health").status_code == 200
    for path in ("/metrics", "/openapi.json", "/docs", "/redoc", "/"):
        resp = httpx.get(guarded_server.url + path)
        assert resp.status_code == 401, path
        assert "openchat_requests" not in resp.text
        ok = httpx.get(guarded_server.url + path, headers={"Authorization": f"Bearer {API_KEYS[0]}"})
        assert ok.status_code == 200, path

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="nope", max_retries=0).models.list()
    client = openai.OpenAI(base_url=url, api_key=API_KEYS[1], max_retries=0)
    r = client.chat.completions.create(model=guarded_server.model, messages=USER, max_tokens=3)
    assert r.usage.completion_tokens <= 3
    # The catalog id is an alias of the served name.
    r = client.chat.completions.create(model=guarded_server.checkpoint_id, messages=USER, max_tokens=1)
    assert r.model == guarded_server.model


def test_cors_preflight_needs_no_key(guarded_server):
    url = guarded_server.base_url + "/chat/completions"
    pre = httpx.options(
        url,
        headers={
            "Origin": "http://ui.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "http://ui.example"
    resp = httpx.get(
        guarded_server.base_url + "/models",
        headers={"Origin": "http://ui.example", "Authorization": f"Bearer {API_KEYS[0]}"},
    )
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "http://ui.example"
    other = httpx.options(url, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in other.headers


def test_oversized_body_is_refused(guarded_server):
    headers = {"Authorization": f"Bearer {API_KEYS[0]}"}
    big = {"model": guarded_server.model, "messages": [{"role": "user", "content": "x" * 100_000}]}
    resp = httpx.post(guarded_server.base_url + "/chat/completions", json=big, headers=headers)
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"

    # Chunked upload (no Content-Length): counted as it arrives.
    def chunks():
        payload = json.dumps(big).encode()
        for i in range(0, len(payload), 8192):
            yield payload[i : i + 8192]

    resp = httpx.post(
        guarded_server.base_url + "/chat/completions",
        content=chunks(),
        headers={**headers, "content-type": "application/json"},
    )
    assert resp.status_code == 413
    # The limit is per server: n above --max-n is a 400 naming n.
    resp = httpx.post(
        guarded_server.base_url + "/chat/completions",
        headers=headers,
        json={"model": guarded_server.model, "messages": USER, "n": 5, "max_tokens": 1},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "n"


def test_requests_are_logged_to_file_and_catalog(guarded_server):
    client = openai.OpenAI(base_url=guarded_server.base_url, api_key=API_KEYS[0], max_retries=0)
    marker = "log me please"
    r = client.chat.completions.create(
        model=guarded_server.model, max_tokens=4, seed=1, messages=[{"role": "user", "content": marker}]
    )
    list(
        client.chat.completions.create(
            model=guarded_server.model,
            max_tokens=2,
            stream=True,
            messages=[{"role": "user", "content": marker + " (stream)"}],
        )
    )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=guarded_server.model, messages=USER, temperature=9)

    def entries():
        if not guarded_server.log_path.exists():
            return []
        text = guarded_server.log_path.read_text()
        # Only whole lines: the logger thread may be half way through writing the next one.
        return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]

    def refused(found):
        return any(e.get("status") == 400 and "temperature" in e.get("error", "") for e in found)

    # The log is written by a background thread, in the order the requests finished: the
    # streamed one is recorded when its stream closes, which may be after the 400 was answered.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (
        len([e for e in entries() if marker in json.dumps(e)]) < 2 or not refused(entries())
    ):
        time.sleep(0.05)
    mine = [e for e in entries() if marker in json.dumps(e)]
    assert len(mine) == 2
    entry = next(e for e in mine if not e["request"].get("stream"))
    assert entry["endpoint"] == "/v1/chat/completions" and entry["status"] == 200
    assert entry["output"] == [r.choices[0].message.content]
    assert entry["prompt_tokens"] == r.usage.prompt_tokens
    assert entry["completion_tokens"] == r.usage.completion_tokens
    assert entry["latency_s"] > 0 and entry["time"]
    assert entry["checkpoint_id"] == guarded_server.checkpoint_id
    assert refused(entries())

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = guarded_server.catalog.query("select * from requests where request like ?", [f"%{marker}%"])
        if len(rows) >= 2:
            break
        time.sleep(0.05)
    assert len(rows) == 2
    row = next(row for row in rows if not row["request"].get("stream"))
    assert row["checkpoint_id"] == guarded_server.checkpoint_id
    assert row["output"] == r.choices[0].message.content
    assert row["completion_tokens"] == r.usage.completion_tokens and row["status"] == 200
    assert row["model"] == guarded_server.model
