"""What real clients send is accepted (issue 13's request surface), through the real openai
client against the real server: nulls for optional fields, OpenAI fields without generation
meaning, extra keys in messages, tools with tool_choice "none"; and vLLM's sampling extras
and logit_bias reach the engine."""

from __future__ import annotations

import httpx
import openai
import pytest

USER = [{"role": "user", "content": "Say hi."}]
TOOL = {
    "type": "function",
    "function": {"name": "lookup", "description": "Look a word up", "parameters": {"type": "object", "properties": {}}},
}

ACCEPTED_CHAT = {
    "n null": {"n": None},
    "stream null": {"stream": None},
    "temperature null": {"temperature": None, "top_p": None, "seed": None, "stop": None},
    "logprobs null": {"logprobs": None, "top_logprobs": None},
    "ignore_eos null": {"ignore_eos": None},
    "safety_identifier": {"safety_identifier": "user-1234"},
    "prompt_cache_key": {"prompt_cache_key": "conversation-7", "prompt_cache_retention": "24h"},
    "audio null": {"audio": None, "modalities": ["text"]},
    "prediction": {"prediction": {"type": "content", "content": "hi"}},
    "prediction null": {"prediction": None},
    "web_search_options null": {"web_search_options": None},
    "verbosity": {"verbosity": "low"},
    "bookkeeping": {
        "user": "u1",
        "store": False,
        "metadata": {"k": "v"},
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "reasoning_effort": "low",
    },
    "tools with tool_choice none": {"tools": [TOOL], "tool_choice": "none"},
    "functions with function_call none": {"functions": [TOOL["function"]], "function_call": "none"},
    "tool_choice auto without tools": {"tool_choice": "auto", "tools": []},
    "message keys": {
        "messages": [
            {"role": "system", "content": "Be brief.", "id": "m0", "opts": {"x": 1}},
            {"role": "user", "content": "Say hi.", "name": "ann", "id": "m1", "timestamp": 1733000000},
        ]
    },
    "neutral extras": {"min_p": 0.0, "repetition_penalty": 1.0, "logit_bias": {}},
}


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("fields", list(ACCEPTED_CHAT.values()), ids=list(ACCEPTED_CHAT))
def test_chat_accepts_what_clients_send(client, tiny_server, fields):
    fields = dict(fields)
    messages = fields.pop("messages", USER)
    r = client.chat.completions.create(model=tiny_server.model, messages=messages, max_tokens=2, extra_body=fields)
    assert len(r.choices) == 1 and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1


def test_stream_options_include_obfuscation(client, tiny_server):
    stream = client.chat.completions.create(
        model=tiny_server.model,
        messages=USER,
        max_tokens=2,
        stream=True,
        stream_options={"include_usage": True, "include_obfuscation": False},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


@pytest.mark.parametrize(
    "fields", [{"n": None}, {"echo": None}, {"logprobs": None, "best_of": None, "suffix": None, "user": None}]
)
def test_completions_accept_nulls(client, tiny_server, fields):
    r = client.completions.create(model=tiny_server.model, prompt="Hello", max_tokens=2, extra_body=fields)
    assert len(r.choices) == 1 and r.choices[0].logprobs is None


def test_unsupported_fields_say_so(tiny_server):
    for fields, param in [
        ({"tools": [TOOL]}, "tool_choice"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ]:
        resp = httpx.post(
            tiny_server.base_url + "/chat/completions",
            timeout=60,
            json={"model": tiny_server.model, "messages": USER, **fields},
        )
        error = resp.json()["error"]
        assert resp.status_code == 400 and error["param"] == param
        assert "not supported" in error["message"] and "nrecognized" not in error["message"]


@pytest.mark.parametrize("field,value", [("min_p", 0.2), ("repetition_penalty", 1.3)])
def test_sampling_extras_reach_the_engine(tiny_server, field, value):
    resp = httpx.post(
        tiny_server.base_url + "/chat/completions",
        timeout=60,
        json={"model": tiny_server.model, "messages": USER, "max_tokens": 2, field: value},
    )
    assert resp.status_code == 200, resp.text


def test_logit_bias_steers_greedy_decoding(tiny_server, tiny_tokenizer):
    """+100 on one token makes greedy decoding pick it every time."""
    token = tiny_tokenizer.encode(" hello", add_special_tokens=False)[0]
    body = {"model": tiny_server.model, "prompt": "Once", "max_tokens": 4, "temperature": 0, "ignore_eos": True}
    resp = httpx.post(tiny_server.base_url + "/completions", timeout=60, json={**body, "logit_bias": {str(token): 100}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"] == tiny_tokenizer.decode([token] * 4)
