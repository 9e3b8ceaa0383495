"""What a server exposes and to whom: slow clients, wrong keys, foreign Host headers, the
network warning, the docs page and the schema's security scheme. Real sockets on 127.0.0.1."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import API_KEYS, serve_in_thread


@pytest.fixture(scope="module")
def scripted_app_factory(tiny_tokenizer):
    """Apps over a scripted engine (no model work): what is tested here is the HTTP layer."""
    from openchat_cli.serve.app import ServerConfig, create_app
    from openchat_cli.serve.engines.base import TokenEvent
    from openchat_cli.templates import get_template
    from tests.serve.test_app_fake_engine import ScriptedEngine

    template = get_template("openchat_3.5")
    eot = tiny_tokenizer.convert_tokens_to_ids(template.eot_token)
    ids = tiny_tokenizer.encode(" Hello", add_special_tokens=False)

    def make(**options):
        engine = ScriptedEngine(tiny_tokenizer, [TokenEvent(ids), TokenEvent([eot], "stop")])
        config = ServerConfig(model_name="m", template=template, stop_token_ids=(eot,), **options)
        return create_app(engine, config)

    return make


def _slow_headers(port: int, count: int, stop: threading.Event, closed_at: list[float | None], started: float) -> None:
    """`count` connections sending a request's headers one byte every 0.1 s, never finishing;
    `closed_at[i]` is when the server closed connection i (seconds after `started`)."""
    import select

    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 10_000
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    for s in socks:
        s.setblocking(False)
    position = 0
    while not stop.is_set() and any(t is None for t in closed_at):
        open_ = [s for i, s in enumerate(socks) if closed_at[i] is None]
        readable, _, _ = select.select(open_, [], [], 0)
        for s in readable:  # the server's close (or a reply, which it must not send)
            i = socks.index(s)
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                closed_at[i] = time.monotonic() - started
        for i, s in enumerate(socks):
            if closed_at[i] is None:
                try:
                    s.send(request[position : position + 1])
                except BlockingIOError:
                    pass
                except OSError:
                    closed_at[i] = time.monotonic() - started
        position += 1
        time.sleep(0.1)
    for s in socks:
        s.close()


def test_slow_headers_are_cut_off_while_normal_clients_are_served(scripted_app_factory):
    """Before: uvicorn had no header deadline; 300 slowloris connections stayed open for good."""
    app = scripted_app_factory()
    with serve_in_thread(app, header_timeout_s=1.5) as (url, server, _):
        port = int(url.rsplit(":", 1)[1])
        count = 300
        closed_at: list[float | None] = [None] * count
        stop = threading.Event()
        started = time.monotonic()
        attacker = threading.Thread(target=_slow_headers, args=(port, count, stop, closed_at, started), daemon=True)
        attacker.start()
        try:
            time.sleep(0.5)
            # Normal clients are served meanwhile, fast (a loaded machine gets seconds of slack;
            # a server stuck behind the slow connections would not answer at all).
            for _ in range(5):
                t = time.perf_counter()
                assert httpx.get(url + "/health", timeout=30).status_code == 200
                assert time.perf_counter() - t < 5.0
            r = httpx.post(
                url + "/v1/chat/completions",
                timeout=30,
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            )
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
            attacker.join(timeout=30)
        finally:
            stop.set()
        still_open = sum(1 for t in closed_at if t is None)
        assert still_open == 0, f"{still_open} of {count} slow connections still open after 30 s"
        # The 1.5 s deadline, not the 10 s default (slack for a loaded machine to notice the close).
        assert max(closed_at) < 1.5 + 6.0, max(closed_at)
        assert min(closed_at) >= 1.0, min(closed_at)  # the deadline, not an early reset


def test_a_slow_body_gets_408(scripted_app_factory):
    app = scripted_app_factory(body_timeout_s=1.0)
    with serve_in_thread(app, header_timeout_s=30) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            s.settimeout(60)
            started = time.monotonic()
            reply = b""
            while b"\r\n\r\n" not in reply:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408"), reply
            assert 0.8 < time.monotonic() - started < 15  # the 1 s body deadline, far from the 30 s others


class ManualClock:
    """A monotonic clock that moves only when the test says: a lockout window cannot run out
    while a loaded machine is slow to send the next request."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_wrong_keys_are_locked_out_per_client(scripted_app_factory, monkeypatch):
    """Before: any number of wrong keys got a 401 each, as fast as they came."""
    import functools

    from openchat_cli.serve import middleware
    from openchat_cli.serve.guard import AuthFailures

    clock = ManualClock()
    monkeypatch.setattr(middleware, "AuthFailures", functools.partial(AuthFailures, clock=clock))
    app = scripted_app_factory(api_keys=API_KEYS, auth_failure_limit=3, auth_failure_window_s=2.0)
    with serve_in_thread(app) as (url, _, _):
        good = {"Authorization": f"Bearer {API_KEYS[0]}"}
        assert httpx.get(url + "/v1/models", headers=good).status_code == 200
        for i in range(3):
            resp = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer guess{i}"})
            assert resp.status_code == 401
        locked = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer guess4"})
        assert locked.status_code == 429, locked.text
        assert locked.json()["error"]["code"] == "too_many_auth_failures"
        wait = int(locked.headers["retry-after"])
        assert 1 <= wait <= 2
        # Even the right key waits: otherwise guessing would go on at full speed.
        assert httpx.get(url + "/v1/models", headers=good).status_code == 429
        assert httpx.get(url + "/health").status_code == 200  # never locked
        assert httpx.get(url + "/v1/models").status_code == 401  # no key: no guess, plain 401
        clock.now += wait - 0.2
        assert httpx.get(url + "/v1/models", headers=good).status_code == 429  # not yet
        clock.now += 0.4
        assert httpx.get(url + "/v1/models", headers=good).status_code == 200
        # Only the API's own counter shows the refusals, and only with a key.
        assert httpx.get(url + "/metrics").status_code == 401
        metrics = httpx.get(url + "/metrics", headers=good).text
        assert 'status="429"' in metrics and 'status="401"' in metrics


def test_foreign_host_headers_are_refused(tiny_server):
    """Before: any Host was served, so a web page on another site could drive a local server
    through DNS rebinding."""
    port = tiny_server.url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost", f"LOCALHOST:{port}"):
        assert httpx.get(tiny_server.url + "/health", headers={"Host": host}).status_code == 200, host
    for host in (f"evil.example:{port}", "attacker.test", f"127.0.0.1.evil.example:{port}", ""):
        resp = httpx.post(
            tiny_server.base_url + "/completions",
            headers={"Host": host},
            json={"model": tiny_server.model, "prompt": "hi", "max_tokens": 1},
        )
        assert resp.status_code == 400, host
        assert resp.json()["error"]["code"] == "invalid_host"


def test_offline_docs_and_a_schema_that_says_what_is_refused(tiny_server, guarded_server):
    """Before: /docs loaded Swagger UI from a CDN; the schema declared no security scheme and
    allowed tool_calls, prompt [[]] and any best_of, which the server refuses."""
    for path in ("/docs", "/redoc"):
        page = httpx.get(tiny_server.url + path)
        assert page.status_code == 200 and "/openapi.json" in page.text
        assert not re.search(r"<script|<link|https?://", page.text), page.text
    schema = httpx.get(tiny_server.url + "/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    parts = schema["components"]["schemas"]
    assert parts["ChatMessage"]["properties"]["tool_calls"]["maxItems"] == 0
    prompt = parts["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    nested = next(o for o in prompt if o.get("items", {}).get("type") == "array")
    assert nested["items"]["minItems"] == 1 and nested["minItems"] == 1
    assert parts["CompletionRequest"]["properties"]["best_of"]["anyOf"][0] == {"const": 1, "type": "integer"}
    assert tiny_server.model in parts["ChatCompletionRequest"]["properties"]["model"]["enum"]
    for fields in ({"prompt": [[]]}, {"prompt": "hi", "best_of": 2}):
        resp = httpx.post(
            tiny_server.base_url + "/completions", json={"model": tiny_server.model, "max_tokens": 1, **fields}
        )
        assert resp.status_code == 400, fields
    resp = httpx.post(
        tiny_server.base_url + "/chat/completions",
        json={
            "model": tiny_server.model,
            "messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}],
        },
    )
    assert resp.status_code == 400

    key = {"Authorization": f"Bearer {API_KEYS[0]}"}
    secured = httpx.get(guarded_server.url + "/openapi.json", headers=key).json()
    assert secured["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "One of the keys given to `openchat serve --api-keys`.",
    }
    chat = secured["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearerAuth": []}] and "401" in chat["responses"]
    assert "security" not in secured["paths"]["/health"]["get"]


@pytest.mark.slow
def test_exposed_without_keys_warns_and_allowed_hosts_apply(tiny_model_dir: Path, tmp_path):
    """Before: `--host 0.0.0.0` without keys started silently (and took no --allowed-hosts or
    --header-timeout)."""
    import os

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root), OPENCHAT_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openchat_cli.app",
                "serve",
                str(tiny_model_dir),
                "--host",
                "0.0.0.0",
                "--port",
                "0",
                "--allowed-hosts",
                "box.lan,gpu.lan",
                "--header-timeout",
                "1",
                "--log-level",
                "warning",
            ],
            cwd=str(root),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        port = None
        while time.monotonic() < deadline and port is None:
            assert process.poll() is None, log_path.read_text()
            found = re.search(r"http://0\.0\.0\.0:(\d+)/v1", log_path.read_text())
            port = found and found.group(1)
            time.sleep(0.2)
        assert port, log_path.read_text()
        text = log_path.read_text()
        assert "warning" in text and "without API keys" in text and "--api-keys" in text
        url = f"http://127.0.0.1:{port}/health"
        deadline = time.monotonic() + 60
        while True:
            try:
                resp = httpx.get(url, headers={"Host": f"box.lan:{port}"})
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert resp.status_code == 200
        assert httpx.get(url, headers={"Host": "gpu.lan"}).status_code == 200
        assert httpx.get(url, headers={"Host": "evil.example"}).status_code == 400
        # --header-timeout reaches the server: unfinished headers are cut off after 1 s.
        with socket.create_connection(("127.0.0.1", int(port))) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: box.lan\r\n")
            s.settimeout(30)
            started = time.monotonic()
            assert s.recv(100) == b""
            assert 0.8 < time.monotonic() - started < 7  # 1 s, not the 10 s default
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
