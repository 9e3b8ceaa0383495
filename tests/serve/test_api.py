"""The real `openchat serve` process (tiny model) called with the real `openai` client."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from openchat_cli.templates import Conversation, get_template

USER = [{"role": "user", "content": "What is 12 plus 7?"}]


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0, timeout=60)


def expected_prompt_tokens(tokenizer, messages, condition=None):
    conv = Conversation.from_dict({"messages": messages, "condition": condition})
    return len(get_template("openchat_3.5").encode_prompt(tokenizer, conv))


def test_prints_its_url_and_binds_localhost(tiny_server):
    assert tiny_server.base_url.startswith("http://127.0.0.1:")
    log = tiny_server.log()
    assert f"{tiny_server.base_url}" in log
    health = httpx.get(tiny_server.url + "/health").json()
    assert health["status"] == "ok" and health["engine"] == "transformers"


def test_chat_completion(client, tiny_server, tiny_tokenizer):
    messages = [{"role": "system", "content": "You are terse."}, *USER]
    r = client.chat.completions.create(model=tiny_server.model, messages=messages, max_tokens=12)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == tiny_server.model
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == expected_prompt_tokens(tiny_tokenizer, messages)
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if choice.finish_reason == "length":
        assert r.usage.completion_tokens == 12
    # The system prompt and the condition reach the template.
    plain = client.chat.completions.create(model=tiny_server.model, messages=USER, max_tokens=1)
    assert plain.usage.prompt_tokens == expected_prompt_tokens(tiny_tokenizer, USER)
    assert plain.usage.prompt_tokens < r.usage.prompt_tokens
    math = client.chat.completions.create(
        model=tiny_server.model, messages=USER, max_tokens=1, extra_body={"condition": "Math Correct Extra"}
    )
    assert math.usage.prompt_tokens == expected_prompt_tokens(tiny_tokenizer, USER, "Math Correct Extra")
    # Content-part lists of text are the same as the plain string.
    parts = client.chat.completions.create(
        model=tiny_server.model,
        max_tokens=1,
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is 12 "}, {"type": "text", "text": "plus 7?"}]}
        ],
    )
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens


def test_streaming_with_usage(client, tiny_server):
    stream = client.chat.completions.create(
        model=tiny_server.model,
        messages=USER,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.0,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    # Streaming and not streaming give the same greedy text and counts.
    whole = client.chat.completions.create(model=tiny_server.model, messages=USER, max_tokens=10, temperature=0.0)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert "\ufffd" not in "".join(c.choices[0].delta.content or "" for c in chunks[:1] if c.choices)
    # The raw stream ends with [DONE].
    with httpx.stream(
        "POST",
        tiny_server.base_url + "/chat/completions",
        json={"model": tiny_server.model, "messages": USER, "max_tokens": 3, "stream": True},
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def greedy(client, model, max_tokens=40, **kw):
    return client.chat.completions.create(
        model=model, messages=USER, max_tokens=max_tokens, temperature=0.0, extra_body={"ignore_eos": True}, **kw
    )


def test_stop_strings(client, tiny_server):
    full = greedy(client, tiny_server.model).choices[0].message.content
    assert len(full) > 10
    stop = full[len(full) // 2 : len(full) // 2 + 3]  # likely spans a token boundary
    cut = full[: full.index(stop)]
    r = greedy(client, tiny_server.model, stop=[stop, "zzzz-never"])
    assert r.choices[0].message.content == cut
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 40
    stream = greedy(client, tiny_server.model, stop=stop, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_choices(client, tiny_server):
    r = client.chat.completions.create(
        model=tiny_server.model, messages=USER, max_tokens=6, n=3, seed=5, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 18
    assert len({c.message.content for c in r.choices}) > 1  # distinct samples
    stream = client.chat.completions.create(
        model=tiny_server.model, messages=USER, max_tokens=4, n=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    assert sum(1 for c in chunks if c.choices and c.choices[0].finish_reason) == 2
    assert chunks[-1].usage.completion_tokens <= 8


def test_seed_reproducibility(client, tiny_server):
    def sample(seed):
        return (
            client.chat.completions.create(
                model=tiny_server.model,
                messages=USER,
                max_tokens=16,
                seed=seed,
                temperature=1.0,
                top_p=0.95,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .message.content
        )

    first = sample(42)
    assert sample(42) == first
    assert sample(43) != first

    # Same seed while other requests share the batch.
    async def crowded():
        aclient = openai.AsyncOpenAI(base_url=tiny_server.base_url, api_key="x", max_retries=0)
        others = [
            aclient.chat.completions.create(
                model=tiny_server.model,
                messages=[{"role": "user", "content": "noise " * (i + 1)}],
                max_tokens=20,
                temperature=1.3,
                extra_body={"ignore_eos": True},
            )
            for i in range(6)
        ]
        mine = aclient.chat.completions.create(
            model=tiny_server.model,
            messages=USER,
            max_tokens=16,
            seed=42,
            temperature=1.0,
            top_p=0.95,
            extra_body={"ignore_eos": True},
        )
        results = await asyncio.gather(*others, mine)
        await aclient.close()
        return results[-1].choices[0].message.content

    assert asyncio.run(crowded()) == first


def test_text_completions(client, tiny_server):
    r = client.completions.create(
        model=tiny_server.model, prompt="The quick brown fox", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert r.object == "text_completion" and r.usage.completion_tokens == 5
    assert r.choices[0].finish_reason == "length"
    echo = client.completions.create(
        model=tiny_server.model, prompt=["Hello", "Water boils"], max_tokens=2, echo=True, n=2
    )
    assert [c.index for c in echo.choices] == [0, 1, 2, 3]
    assert echo.choices[0].text.startswith("Hello") and echo.choices[2].text.startswith("Water boils")
    ids = client.completions.create(model=tiny_server.model, prompt=[5, 6, 7], max_tokens=2)
    assert ids.usage.prompt_tokens == 3
    chunks = list(client.completions.create(model=tiny_server.model, prompt="Hi", max_tokens=3, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_models_metrics_openapi(client, tiny_server):
    models = client.models.list()
    assert [m.id for m in models.data] == [tiny_server.model]
    assert client.models.retrieve(tiny_server.model).id == tiny_server.model
    # A completion of its own: the histograms show only once they have a sample, and this test
    # must not depend on others having run before it on the shared server.
    client.chat.completions.create(model=tiny_server.model, messages=USER, max_tokens=2)
    metrics = httpx.get(tiny_server.url + "/metrics").text
    for name in (
        "openchat_requests_total",
        "openchat_generation_tokens_total",
        "openchat_request_latency_seconds_bucket",
        "openchat_time_to_first_token_seconds",
        "openchat_queue_depth",
        "openchat_running_sequences",
    ):
        assert name in metrics
    spec = httpx.get(tiny_server.url + "/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health"} <= set(spec["paths"])
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert "ChatCompletionRequest" in json.dumps(body)


def test_32_concurrent_streams_all_complete(tiny_server):
    async def one(aclient, i):
        stream = await aclient.chat.completions.create(
            model=tiny_server.model,
            messages=[{"role": "user", "content": f"Count to {i}"}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        text, usage, finish = "", None, None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                usage = chunk.usage
        return text, usage, finish

    async def main():
        aclient = openai.AsyncOpenAI(base_url=tiny_server.base_url, api_key="x", max_retries=0, timeout=120)
        started = time.perf_counter()
        results = await asyncio.gather(*(one(aclient, i) for i in range(32)))
        await aclient.close()
        return results, time.perf_counter() - started

    results, elapsed = asyncio.run(main())
    assert len(results) == 32
    assert all(finish == "length" and usage.completion_tokens == 12 for _, usage, finish in results)
    peak = [
        line
        for line in httpx.get(tiny_server.url + "/metrics").text.splitlines()
        if line.startswith("openchat_requests_total")
    ]
    assert peak


def test_client_disconnect_frees_its_slot(tiny_server):
    body = {"model": tiny_server.model, "messages": USER, "max_tokens": 1500, "stream": True, "ignore_eos": True}

    def idle(timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            health = httpx.get(tiny_server.url + "/health").json()
            if (health["running"], health["waiting"]) == (0, 0) or time.monotonic() > deadline:
                return health
            time.sleep(0.05)

    with httpx.Client(timeout=30) as http:
        with http.stream("POST", tiny_server.base_url + "/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()  # keep the iterator: dropping it closes the response
            events = [line for line in (next(lines) for _ in range(8)) if line]
            assert len(events) >= 3
            assert httpx.get(tiny_server.url + "/health").json()["running"] == 1
        # Leaving the block closes the connection mid-stream: the sequence leaves the batch.
        health = idle()
    assert (health["running"], health["waiting"]) == (0, 0), health
    # Same for a non-streaming request whose client gives up.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            tiny_server.base_url + "/chat/completions", timeout=0.5, json={**body, "stream": False, "max_tokens": 2000}
        )
    health = idle()
    assert (health["running"], health["waiting"]) == (0, 0), health
    assert 'status="499"' in httpx.get(tiny_server.url + "/metrics").text


def test_every_field_through_the_sdk(client, tiny_server):
    request = dict(
        model=tiny_server.model,
        max_completion_tokens=5,
        n=2,
        temperature=0.8,
        top_p=0.9,
        seed=11,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        stop=["\n\n", "###"],
        user="tester",
        messages=[
            {"role": "developer", "content": "Be kind."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 12 plus 7?", "name": "bob"},
        ],
        extra_body={"condition": "Math Correct", "top_k": 20},
    )
    r = client.chat.completions.create(**request)
    assert len(r.choices) == 2 and r.usage.completion_tokens <= 10
    again = client.chat.completions.create(**request)
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]


def test_fuzzed_requests_never_get_a_5xx(tiny_server):
    import random

    rng = random.Random(0)
    values = [
        None,
        True,
        -1,
        0,
        1,
        2.5,
        1e30,
        "",
        "x",
        "0.5",
        [],
        [1],
        ["a"],
        {},
        {"a": 1},
        [{"role": "user"}],
        [{"role": "user", "content": None}],
        "\ud7ff\u0000",
        2**64,
    ]
    fields = [
        "model",
        "messages",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "max_tokens",
        "presence_penalty",
        "stream",
        "stream_options",
        "condition",
        "user",
        "top_k",
        "max_completion_tokens",
        "response_format",
        "logprobs",
        "frequency_penalty",
    ]
    with httpx.Client(timeout=60) as http:
        for _ in range(80):
            body = {"model": tiny_server.model, "messages": USER, "max_tokens": 3}
            for name in rng.sample(fields, rng.randint(1, 3)):
                body[name] = rng.choice(values)
            if "max_tokens" not in body or not isinstance(body.get("max_tokens"), int):
                body["max_completion_tokens"] = 3
            resp = http.post(tiny_server.base_url + "/chat/completions", json=body)
            assert resp.status_code < 500, (body, resp.text)
            if resp.status_code >= 400:
                assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
