"""response_format through the real server and the real `openai` client: constrained decoding
(llguidance) makes even a random tiny model's replies valid JSON, checked against the schema by an
independent validator (jsonschema-rs); the new sampling fields reach the engine."""

from __future__ import annotations

import json

import openai
import pytest

USER = [{"role": "user", "content": "Describe a pet as JSON."}]
PET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "kind": {"enum": ["cat", "dog", "fish"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "kind", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0, timeout=120)


def test_json_schema_replies_parse_and_match(client, tiny_server):
    import jsonschema_rs

    validator = jsonschema_rs.validator_for(PET)
    fmt = {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET, "strict": True}}
    r = client.chat.completions.create(
        model=tiny_server.model, messages=USER, n=6, max_tokens=120, temperature=1.0, seed=3, response_format=fmt
    )
    assert len(r.choices) == 6
    for choice in r.choices:
        assert choice.finish_reason == "stop", choice.message.content
        value = json.loads(choice.message.content)
        validator.validate(value)  # raises with the path of the first mismatch
    # Streamed, and greedy: the same constraint holds.
    stream = client.chat.completions.create(
        model=tiny_server.model, messages=USER, max_tokens=120, temperature=0.0, response_format=fmt, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    validator.validate(json.loads(text))


def test_json_object_replies_are_objects(client, tiny_server):
    r = client.chat.completions.create(
        model=tiny_server.model, messages=USER, n=4, max_tokens=200, seed=11, response_format={"type": "json_object"}
    )
    finished = [c for c in r.choices if c.finish_reason == "stop"]
    assert finished, [c.message.content for c in r.choices]
    for choice in finished:
        assert isinstance(json.loads(choice.message.content), dict)


def test_invalid_schema_is_a_400_naming_the_field(client, tiny_server):
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": 5}}}},
    }
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=tiny_server.model, messages=USER, max_tokens=4, response_format=bad)
    error = info.value.body
    assert error["param"] == "response_format.json_schema.schema", error
    assert "schema" in error["message"]


def test_logit_bias_min_p_and_repetition_penalty_reach_the_engine(client, tiny_server, tiny_tokenizer):
    token = tiny_tokenizer.convert_tokens_to_ids("Paris") if "Paris" in tiny_tokenizer.get_vocab() else 300
    r = client.chat.completions.create(
        model=tiny_server.model,
        messages=USER,
        max_tokens=5,
        temperature=1.0,
        logit_bias={str(token): 100},
        extra_body={"ignore_eos": True},
    )
    assert r.choices[0].message.content == tiny_tokenizer.decode([token] * 5)
    plain = client.chat.completions.create(
        model=tiny_server.model, messages=USER, max_tokens=12, temperature=0.0, extra_body={"ignore_eos": True}
    )
    penalized = client.chat.completions.create(
        model=tiny_server.model,
        messages=USER,
        max_tokens=12,
        temperature=0.0,
        extra_body={"ignore_eos": True, "repetition_penalty": 5.0, "min_p": 0.5},
    )
    assert penalized.choices[0].message.content != plain.choices[0].message.content
