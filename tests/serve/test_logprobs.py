"""`/v1/completions` with `echo` and `logprobs` on the real server, checked against a direct
transformers forward pass of the same tiny model."""

from __future__ import annotations

import asyncio
import math

import httpx
import openai
import pytest

PROMPTS = [
    "Question: What is the capital of France?\nAnswer: Paris",
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at 100 degrees",
]
TOL = 1e-4


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tiny_tokenizer):
    """log_softmax over every position of one unpadded forward: `reference(ids)[j]` is the
    distribution of the token after ids[:j+1]."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

    def run(ids: list[int]):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids])).logits[0]
        return torch.log_softmax(logits.float(), dim=-1)

    return run


def expected_prompt_logprobs(reference, ids):
    scores = reference(ids)
    return [None] + [float(scores[j, ids[j + 1]]) for j in range(len(ids) - 1)], scores


def assert_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            assert g is not None and abs(g - w) <= TOL, (g, w)


def test_echo_scores_the_prompt_like_a_forward_pass(client, tiny_server, tiny_tokenizer, reference):
    prompt = PROMPTS[0]
    r = client.completions.create(model=tiny_server.model, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    (choice,) = r.choices
    assert choice.text == prompt and choice.finish_reason == "length"
    assert r.usage.completion_tokens == 0
    ids = tiny_tokenizer.encode(prompt)
    assert r.usage.prompt_tokens == len(ids)
    lp = choice.logprobs
    want, scores = expected_prompt_logprobs(reference, ids)
    assert_close(lp.token_logprobs, want)
    assert lp.tokens == [tiny_tokenizer.decode([t]) for t in ids]
    # text_offset: where each token starts in the echoed text
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    for token, offset in zip(lp.tokens, lp.text_offset):
        assert prompt[offset : offset + len(token)] == token
    assert lp.top_logprobs[0] is None
    for j, top in enumerate(lp.top_logprobs[1:]):
        values, indices = scores[j].topk(3)
        expected = {tiny_tokenizer.decode([int(i)]): float(v) for i, v in zip(indices, values)}
        assert set(expected) <= set(top) and len(top) <= 4
        assert lp.tokens[j + 1] in top
        for key, value in expected.items():
            assert abs(top[key] - value) <= TOL


def test_batched_prompts_score_as_if_alone(tiny_server, tiny_tokenizer, reference):
    """Many scoring requests at once (left-padded into shared forwards) and a list prompt."""
    aclient = openai.AsyncOpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0)

    async def main():
        async with aclient:
            one = [
                aclient.completions.create(model=tiny_server.model, prompt=p, max_tokens=0, echo=True, logprobs=0)
                for p in PROMPTS * 3
            ]
            many = aclient.completions.create(
                model=tiny_server.model, prompt=PROMPTS, max_tokens=0, echo=True, logprobs=0
            )
            return await asyncio.gather(*one, many)

    *singles, listed = asyncio.run(main())
    got = [r.choices[0] for r in singles] + sorted(listed.choices, key=lambda c: c.index)
    for choice, prompt in zip(got, PROMPTS * 3 + PROMPTS):
        want, _ = expected_prompt_logprobs(reference, tiny_tokenizer.encode(prompt))
        assert choice.text == prompt
        assert_close(choice.logprobs.token_logprobs, want)
        # logprobs=0: only the token itself in top_logprobs
        assert all(len(t) == 1 for t in choice.logprobs.top_logprobs[1:])


def test_lm_eval_style_request(tiny_server, tiny_tokenizer, reference):
    """What lm-evaluation-harness's local-completions sends: token ids, echo, logprobs=1,
    max_tokens=1, temperature 0; it reads token_logprobs[ctxlen:-1]."""
    ids = tiny_tokenizer.encode(PROMPTS[1])
    body = {
        "model": tiny_server.model,
        "prompt": [ids],
        "max_tokens": 1,
        "logprobs": 1,
        "echo": True,
        "temperature": 0,
        "seed": 1234,
    }
    r = httpx.post(tiny_server.base_url + "/completions", json=body, timeout=60).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1
    want, scores = expected_prompt_logprobs(reference, ids)
    assert_close(lp["token_logprobs"][:-1], want)
    # the generated token is the greedy one, with its logprob after the whole prompt
    best = int(scores[-1].argmax())
    assert lp["tokens"][-1] == tiny_tokenizer.decode([best])
    assert abs(lp["token_logprobs"][-1] - float(scores[-1, best])) <= TOL
    assert lp["text_offset"][-1] == len(tiny_tokenizer.decode(ids))  # right after the echo
    for top in lp["top_logprobs"][1:]:
        assert 1 <= len(top) <= 2


def test_generated_token_logprobs(client, tiny_server, tiny_tokenizer, reference):
    prompt = PROMPTS[2]
    r = client.completions.create(
        model=tiny_server.model, prompt=prompt, max_tokens=4, temperature=0, logprobs=2, extra_body={"ignore_eos": True}
    )
    (choice,) = r.choices
    lp = choice.logprobs
    assert len(lp.tokens) == 4 == r.usage.completion_tokens
    ids = tiny_tokenizer.encode(prompt)
    # Re-derive the greedy continuation from the reference and compare step by step.
    seq = list(ids)
    for j in range(4):
        scores = reference(seq)[-1]
        best = int(scores.argmax())
        assert lp.tokens[j] == tiny_tokenizer.decode([best])
        assert abs(lp.token_logprobs[j] - float(scores[best])) <= TOL
        assert len(lp.top_logprobs[j]) <= 3 and lp.tokens[j] in lp.top_logprobs[j]
        seq.append(best)
    # offsets count from the start of the returned text (no echo: the completion)
    assert lp.text_offset[0] == 0
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:j]) for j in range(4)]


def test_streamed_logprobs_equal_the_whole_response(client, tiny_server):
    request = dict(
        model=tiny_server.model,
        prompt=PROMPTS[0],
        max_tokens=3,
        temperature=0,
        echo=True,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    whole = client.completions.create(**request).choices[0]
    text, tokens, values, tops, offsets = "", [], [], [], []
    for chunk in client.completions.create(stream=True, **request):
        for c in chunk.choices:
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                values += c.logprobs.token_logprobs
                tops += c.logprobs.top_logprobs
                offsets += c.logprobs.text_offset
    assert text == whole.text and text.startswith(PROMPTS[0])
    assert tokens == whole.logprobs.tokens
    assert offsets == whole.logprobs.text_offset
    assert tops[0] is None and whole.logprobs.top_logprobs[0] is None
    assert_close(values, whole.logprobs.token_logprobs)


def test_no_bos_when_asked(client, tiny_server, tiny_tokenizer):
    """`add_special_tokens` (vLLM's extension) reaches the tokenizer for text prompts."""
    prompt = PROMPTS[1]
    r = client.completions.create(
        model=tiny_server.model,
        prompt=prompt,
        max_tokens=0,
        echo=True,
        logprobs=0,
        extra_body={"add_special_tokens": False},
    )
    assert r.usage.prompt_tokens == len(tiny_tokenizer.encode(prompt, add_special_tokens=False))
    assert all(v is None or math.isfinite(v) for v in r.choices[0].logprobs.token_logprobs)


def test_echo_without_logprobs_and_max_tokens_zero(client, tiny_server):
    r = client.completions.create(model=tiny_server.model, prompt=PROMPTS, max_tokens=0, echo=True)
    assert [c.text for c in sorted(r.choices, key=lambda c: c.index)] == PROMPTS
    assert all(c.logprobs is None and c.finish_reason == "length" for c in r.choices)
    assert r.usage.completion_tokens == 0
    streamed = "".join(
        c.text
        for chunk in client.completions.create(
            model=tiny_server.model, prompt=PROMPTS[0], max_tokens=0, echo=True, logprobs=1, stream=True
        )
        for c in chunk.choices
    )
    assert streamed == PROMPTS[0]
