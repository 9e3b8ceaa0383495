"""`logprobs` / `top_logprobs` on /v1/chat/completions, streamed and whole, through the real
openai client against the real server, checked against a direct transformers forward pass of
the same tiny model on the same prompt."""

from __future__ import annotations

import openai
import pytest

from openchat_cli.serve.protocol import ChatCompletionRequest
from openchat_cli.serve.serving_chat import chat_prompt_ids
from openchat_cli.templates import get_template

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 plus 7?"}]
TOL = 1e-4
STEPS = 6


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def greedy_reference(tiny_model_dir, tiny_tokenizer):
    """The prompt the server builds, then STEPS greedy steps of one unpadded forward each:
    [(token id, its logprob, the 3 most likely (id, logprob))]."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    ids = chat_prompt_ids(
        get_template("openchat_3.5"), tiny_tokenizer, ChatCompletionRequest(model="m", messages=MESSAGES)
    )
    steps = []
    with torch.inference_mode():
        for _ in range(STEPS):
            scores = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)
            top = torch.topk(scores, 3)
            token = int(top.indices[0])
            steps.append((token, float(scores[token]), [(int(i), float(v)) for i, v in zip(top.indices, top.values)]))
            ids = ids + [token]
    return steps


def expected(steps, tokenizer, stop_ids):
    """What the API reports: every generated token but end-of-turn ones, with its text."""
    out = []
    for token, logprob, top in steps:
        if token in stop_ids:
            continue
        out.append((tokenizer.decode([token]), logprob, [(tokenizer.decode([t]), lp) for t, lp in top]))
    return out


def check(content, want, k):
    assert len(content) == len(want)
    for got, (text, logprob, top) in zip(content, want):
        assert got.token == text
        assert abs(got.logprob - logprob) <= TOL, (got.logprob, logprob)
        assert isinstance(got.bytes, list) and all(0 <= b < 256 for b in got.bytes)
        assert len(got.top_logprobs) == k
        for alt, (alt_text, alt_lp) in zip(got.top_logprobs, top[:k]):
            assert alt.token == alt_text and abs(alt.logprob - alt_lp) <= TOL
    # The bytes of all tokens are the text's bytes, whole characters or not.
    return bytes(b for got in content for b in got.bytes).decode("utf-8", "replace")


def stop_ids(tiny_tokenizer):
    eot = tiny_tokenizer.convert_tokens_to_ids("<|end_of_turn|>")
    return {eot, tiny_tokenizer.eos_token_id}


@pytest.mark.parametrize("k", [0, 3])
def test_chat_logprobs_match_a_forward_pass(client, tiny_server, tiny_tokenizer, greedy_reference, k):
    r = client.chat.completions.create(
        model=tiny_server.model,
        messages=MESSAGES,
        max_tokens=STEPS,
        temperature=0,
        logprobs=True,
        top_logprobs=k,
        extra_body={"ignore_eos": True},
    )
    choice = r.choices[0]
    want = expected(greedy_reference, tiny_tokenizer, stop_ids(tiny_tokenizer))
    text = check(choice.logprobs.content, want, k)
    assert text.strip() == choice.message.content.strip() or not want


def test_streamed_chat_logprobs_equal_the_whole_response(client, tiny_server, tiny_tokenizer, greedy_reference):
    stream = client.chat.completions.create(
        model=tiny_server.model,
        messages=MESSAGES,
        max_tokens=STEPS,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    content, text, finish = [], "", None
    for chunk in stream:
        for c in chunk.choices:
            if c.logprobs is not None and c.logprobs.content:
                content += c.logprobs.content
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "length"
    check(content, expected(greedy_reference, tiny_tokenizer, stop_ids(tiny_tokenizer)), 2)


def test_no_logprobs_unless_asked(client, tiny_server):
    r = client.chat.completions.create(model=tiny_server.model, messages=MESSAGES, max_tokens=2)
    assert r.choices[0].logprobs is None
    r = client.chat.completions.create(
        model=tiny_server.model, messages=MESSAGES, max_tokens=2, logprobs=False, top_logprobs=None
    )
    assert r.choices[0].logprobs is None
