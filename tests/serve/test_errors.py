"""Bad input never yields a 5xx: OpenAI's error shape, 400/404, and the field named."""

from __future__ import annotations

import httpx
import openai
import pytest

USER = [{"role": "user", "content": "Hello"}]


def post(server, path, payload=None, *, content=None, headers=None):
    return httpx.post(server.base_url + path, json=payload, content=content, headers=headers, timeout=30)


def assert_error(resp, status, param=None, code=None, contains=None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    if contains is not None:
        assert contains in err["message"], err["message"]
    return err


def chat(server, **fields):
    return {"model": server.model, "messages": USER, "max_tokens": 2, **fields}


BAD_CHAT = [
    # (fields to set/override, expected param, expected code)
    ({"temperature": "0.5"}, "temperature", "invalid_type"),
    ({"temperature": 3.0}, "temperature", "invalid_value"),
    ({"top_p": 1.5}, "top_p", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"max_tokens": -5}, "max_tokens", "invalid_value"),
    ({"max_tokens": 2.5}, "max_tokens", "invalid_type"),
    ({"max_tokens": 100_000}, "max_tokens", "context_length_exceeded"),
    ({"max_completion_tokens": 100_000}, "max_completion_tokens", "context_length_exceeded"),
    ({"n": 0}, "n", "invalid_value"),
    ({"n": 1000}, "n", "invalid_value"),
    ({"n": "2"}, "n", "invalid_type"),
    ({"stop": 5}, "stop", None),
    ({"stop": ["a", ""]}, "stop", None),
    ({"stop": [str(i) for i in range(17)]}, "stop", None),
    ({"seed": "x"}, "seed", "invalid_type"),
    ({"seed": 2**70}, "seed", None),
    ({"presence_penalty": 5}, "presence_penalty", "invalid_value"),
    ({"frequency_penalty": -3}, "frequency_penalty", "invalid_value"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", None),
    ({"stream": True, "stream_options": {"bogus": 1}}, "stream_options.bogus", "unrecognized_argument"),
    ({"logprobs": "yes"}, "logprobs", "invalid_type"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),  # without logprobs: true
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice", "unsupported_value"),
    (
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
        "tool_choice",
        "unsupported_value",
    ),
    ({"tool_choice": "required"}, "tool_choice", "unsupported_value"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_value"),
    ({"web_search_options": {}}, "web_search_options", "unsupported_value"),
    ({"verbosity": "loud"}, "verbosity", None),
    ({"response_format": {"type": "xml"}}, "response_format", "unsupported_value"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "invalid_value"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
        "response_format.json_schema.schema",
        "invalid_value",
    ),
    ({"logit_bias": {"5": 101}}, "logit_bias.5", "invalid_value"),
    ({"logit_bias": {"five": 1}}, "logit_bias", None),
    ({"logit_bias": {"99999999": 1}}, "logit_bias", "invalid_value"),  # past the vocabulary
    ({"min_p": 1.5}, "min_p", "invalid_value"),
    ({"repetition_penalty": 0}, "repetition_penalty", "invalid_value"),
    ({"condition": 7}, "condition", "invalid_type"),
    ({"unknown_field": 1}, "unknown_field", "unrecognized_argument"),
    ({"model": 12}, "model", "invalid_type"),
    ({"messages": []}, "messages", None),
    ({"messages": "hello"}, "messages", "invalid_type"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", None),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "unsupported_value"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", None),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages[0].content",
        "unsupported_value",
    ),
]


@pytest.mark.parametrize("fields,param,code", BAD_CHAT, ids=[p for _, p, _ in BAD_CHAT])
def test_bad_chat_fields(tiny_server, fields, param, code):
    assert_error(post(tiny_server, "/chat/completions", chat(tiny_server, **fields)), 400, param, code)


def test_missing_fields_and_bad_bodies(tiny_server):
    assert_error(
        post(tiny_server, "/chat/completions", {"model": tiny_server.model}),
        400,
        "messages",
        "missing_required_parameter",
    )
    assert_error(post(tiny_server, "/chat/completions", {"messages": USER}), 400, "model", "missing_required_parameter")
    assert_error(
        post(tiny_server, "/chat/completions", content=b'{"model": "x", "messages": ['), 400, None, "invalid_json"
    )
    assert_error(post(tiny_server, "/chat/completions", content=b"\xff\xfe not json"), 400, None)
    assert_error(post(tiny_server, "/chat/completions", content=b"[1, 2]"), 400, None)
    assert_error(post(tiny_server, "/chat/completions", content=b""), 400, None)
    # A body without a JSON content type (curl -d) is still read as JSON.
    ok = post(
        tiny_server,
        "/chat/completions",
        content=httpx.Request("POST", "http://x", json=chat(tiny_server)).content,
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert ok.status_code == 200, ok.text


def test_prompt_longer_than_context(tiny_server):
    long = [{"role": "user", "content": "hello " * 3000}]
    err = assert_error(
        post(tiny_server, "/chat/completions", chat(tiny_server, messages=long)),
        400,
        "messages",
        "context_length_exceeded",
    )
    assert "2048" in err["message"]
    err = assert_error(
        post(tiny_server, "/completions", {"model": tiny_server.model, "prompt": "hello " * 3000}),
        400,
        "prompt",
        "context_length_exceeded",
    )


def test_unknown_model_and_routes(tiny_server):
    err = assert_error(
        post(tiny_server, "/chat/completions", chat(tiny_server, model="gpt-17")), 404, "model", "model_not_found"
    )
    assert "gpt-17" in err["message"]
    assert_error(httpx.get(tiny_server.base_url + "/models/gpt-17"), 404, "model", "model_not_found")
    assert_error(httpx.get(tiny_server.base_url + "/nothing-here"), 404, None, "not_found")
    assert_error(httpx.get(tiny_server.base_url + "/chat/completions"), 405, None, "method_not_allowed")
    client = openai.OpenAI(base_url=tiny_server.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=USER)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=tiny_server.model, messages=USER, n=0)
    assert info.value.param == "n"


BAD_COMPLETIONS = [
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"suffix": "x"}, "suffix"),
    ({"best_of": 3}, "best_of"),
    ({"logprobs": 21}, "logprobs"),  # more alternatives than the cap (20, like vLLM)
    ({"logprobs": -1}, "logprobs"),
    ({"logprobs": "1"}, "logprobs"),
    ({"logprobs": True}, "logprobs"),
    ({"max_tokens": 0}, "max_tokens"),  # 0 (prompt scoring) only with echo
    ({"max_tokens": -1, "echo": True}, "max_tokens"),
    ({"add_special_tokens": "no"}, "add_special_tokens"),
    ({"echo": "yes"}, "echo"),
]


@pytest.mark.parametrize("fields,param", BAD_COMPLETIONS, ids=[str(p) for _, p in BAD_COMPLETIONS])
def test_bad_completion_fields(tiny_server, fields, param):
    resp = post(tiny_server, "/completions", {"model": tiny_server.model, "prompt": "Hi", "max_tokens": 2, **fields})
    assert_error(resp, 400, param)


def test_empty_prompt_starts_from_bos(tiny_server, tiny_tokenizer):
    """An empty prompt is allowed when the tokenizer has a BOS to start from (the tiny one has)."""
    assert tiny_tokenizer.bos_token_id is not None
    resp = post(tiny_server, "/completions", {"model": tiny_server.model, "prompt": "", "max_tokens": 2})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] == 1


def test_still_healthy_after_all_that(tiny_server):
    assert httpx.get(tiny_server.url + "/health").json()["status"] == "ok"
    metrics = httpx.get(tiny_server.url + "/metrics").text
    assert 'status="500"' not in metrics
