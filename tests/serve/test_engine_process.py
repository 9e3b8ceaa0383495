"""The engine in its own process: the same tokens as in-process, aborts, engine death and a
clean shutdown (no orphan), through the real `openchat serve` where the CLI decides."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from openchat_cli.serve.engines import widening, wire
from openchat_cli.serve.engines.base import EngineError, SamplingParams, TokenEvent, TokenLogprob

from ..conftest import start_server, stop_server

USER = [{"role": "user", "content": "What is 12 plus 7?"}]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_wire_round_trips_params_and_events():
    from openchat_cli.serve.engines.guided import json_guide

    guide = json_guide({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}})
    params = SamplingParams(
        max_tokens=5,
        temperature=0.7,
        top_k=10**30,
        seed=2**70,
        stop_token_ids=(3, 4),
        logprobs=2,
        prompt_logprobs=1,
        min_p=0.1,
        repetition_penalty=1.2,
        logit_bias=((5, -100.0), (7, 2.5)),
        guide=guide,
    )
    unpacker = wire.unpacker()
    unpacker.feed(wire.pack(["gen", 1, [1, 2], wire.params_to_wire(params)]))
    (message,) = list(unpacker)
    back = wire.params_from_wire(message[3])
    assert back == params
    event = TokenEvent(
        [7, 8],
        "length",
        None,
        [TokenLogprob(7, -0.5, ((7, -0.5), (9, -1.0))), TokenLogprob(8, -math.inf)],
        [None, TokenLogprob(2, -3.0)],
    )
    unpacker.feed(wire.pack(["events", [[1, wire.event_to_wire(event)]], [0, 1, {}]]))
    (message,) = list(unpacker)
    assert wire.event_from_wire(message[1][0][1]) == event


def _collect(engine, prompt, params, request_id="r"):
    async def run():
        await engine.start()
        return [event async for event in engine.generate(prompt, params, request_id)]

    return asyncio.run(run())


@pytest.fixture(scope="module")
def engine_client(tiny_model_dir):
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.process_client import EngineProcessClient

    client = EngineProcessClient(
        "transformers",
        tiny_model_dir,
        tokenizer=load_tokenizer(tiny_model_dir),
        options={"device": "cpu", "max_batch_size": 8},
    )
    yield client
    asyncio.run(client.shutdown())
    assert _wait_gone(client.pid, 30)


def test_same_tokens_as_the_in_process_engine(engine_client, tiny_engine, tiny_tokenizer):
    prompt = tiny_tokenizer.encode("What is 12 plus 7?")
    for params in (
        SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=2),
        SamplingParams(max_tokens=12, temperature=0.9, top_p=0.9, seed=11, ignore_eos=True),
    ):
        remote = _collect(engine_client, prompt, params)
        local = _collect(tiny_engine, prompt, params)
        asyncio.run(tiny_engine.shutdown())
        assert [t for e in remote for t in e.token_ids] == [t for e in local for t in e.token_ids]
        assert remote[-1].finish_reason == local[-1].finish_reason == "length"
        if params.logprobs:
            got = [lp for e in remote for lp in e.logprobs]
            want = [lp for e in local for lp in e.logprobs]
            assert [g.token_id for g in got] == [w.token_id for w in want]
            assert all(abs(g.logprob - w.logprob) < 1e-4 for g, w in zip(got, want))
    assert engine_client.describe()["engine_process"] == engine_client.pid
    assert engine_client.context_length == tiny_engine.context_length


def test_the_engine_process_leaves_a_core_and_may_widen_forwards_onto_it(engine_client):
    """One torch thread fewer than the CPUs it may use, and each forward may run on all of them."""
    cores = len(os.sched_getaffinity(0))
    facts = engine_client.describe()
    if cores < 2:
        pytest.skip("one CPU: nothing to leave to the API process")
    assert facts["threads"] == cores - 1
    assert facts["wide_threads"] == (cores if widening.enabled_by_env() else None)


def test_closing_a_stream_aborts_it_in_the_engine_process(engine_client, tiny_tokenizer):
    prompt = tiny_tokenizer.encode("Count to ten")

    async def run():
        await engine_client.start()
        gen = engine_client.generate(prompt, SamplingParams(max_tokens=1500, ignore_eos=True), "x")
        got = 0
        async for event in gen:
            got += len(event.token_ids)
            if got >= 3:
                break
        await gen.aclose()
        deadline = time.monotonic() + 20
        while engine_client.stats().running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return got, engine_client.stats()

    got, stats = asyncio.run(run())
    assert got >= 3
    assert (stats.running, stats.waiting) == (0, 0)


def test_a_model_that_cannot_load_is_a_clean_error(tmp_path, tiny_model_dir):
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.process_client import EngineProcessClient

    broken = tmp_path / "broken"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.is_file() and not item.name.endswith(".safetensors"):
            (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(EngineError, match="cannot load the model"):
        EngineProcessClient("transformers", broken, tokenizer=load_tokenizer(tiny_model_dir), options={"device": "cpu"})


@pytest.mark.slow
def test_engine_death_fails_open_requests_and_stops_the_server(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path)
    try:
        health = httpx.get(server.url + "/health").json()
        engine_pid = health["engine_process"]
        assert engine_pid != server.process.pid and _alive(engine_pid)
        body = {"model": server.model, "messages": USER, "max_tokens": 1500, "stream": True, "ignore_eos": True}
        with httpx.Client(timeout=30) as http:
            with http.stream("POST", server.base_url + "/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                lines = resp.iter_lines()
                assert any(next(lines) for _ in range(4))
                os.kill(engine_pid, signal.SIGKILL)
                rest = "\n".join(lines)
        assert "the engine process stopped (exit code -9)" in rest
        assert "data: [DONE]" not in rest or "engine_error" in rest
        try:
            late = httpx.post(
                server.base_url + "/chat/completions",
                timeout=10,
                json={"model": server.model, "messages": USER, "max_tokens": 3},
            )
            assert late.status_code == 500 and "engine process stopped" in late.json()["error"]["message"]
        except httpx.TransportError:
            pass  # already shut down: also what we promise
        code = server.process.wait(timeout=90)
        assert code != 0
        assert "engine process stopped" in server.log()
    finally:
        if server.process.poll() is None:
            stop_server(server)


@pytest.mark.slow
def test_shutdown_leaves_no_engine_process(tiny_model_dir, tmp_path):
    # SIGTERM: a clean stop that takes the engine process with it.
    (tmp_path / "term").mkdir()
    (tmp_path / "kill").mkdir()
    server = start_server(tiny_model_dir, tmp_path / "term")
    engine_pid = httpx.get(server.url + "/health").json()["engine_process"]
    server.process.send_signal(signal.SIGTERM)
    # uvicorn re-raises SIGTERM after its graceful shutdown, hence -15 rather than 0.
    assert server.process.wait(timeout=90) in (0, -signal.SIGTERM)
    assert _wait_gone(engine_pid, 30), "engine process outlived the server"
    # SIGKILL of the API process: nobody can clean up, the engine process notices and exits.
    server = start_server(tiny_model_dir, tmp_path / "kill")
    engine_pid = httpx.get(server.url + "/health").json()["engine_process"]
    server.process.kill()
    server.process.wait(timeout=30)
    assert _wait_gone(engine_pid, 30), "engine process orphaned after SIGKILL of the server"


@pytest.mark.slow
def test_in_process_flag_keeps_the_engine_in_the_api_process(tiny_model_dir, tmp_path):
    server = start_server(tiny_model_dir, tmp_path, "--in-process")
    try:
        health = httpx.get(server.url + "/health").json()
        assert health["engine"] == "transformers" and "engine_process" not in health
        reply = httpx.post(
            server.base_url + "/chat/completions",
            timeout=30,
            json={"model": server.model, "messages": USER, "max_tokens": 4},
        )
        assert reply.status_code == 200
    finally:
        stop_server(server)
