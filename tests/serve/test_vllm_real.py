"""`openchat serve --engine vllm` for real: vLLM's CPU build in its own venv (scripts/setup-vllm.sh),
the real server called with the real `openai` client, the same checks as the transformers engine.

The venv is $OPENCHAT_VLLM_VENV or .venv-vllm in the repository (CI builds it there; see
scripts/setup-env.sh). Without it these tests are skipped, saying why.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from ..conftest import CORPUS, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("OPENCHAT_VLLM_VENV") or ROOT / ".venv-vllm")
USER = [{"role": "user", "content": "What is 12 plus 7?"}]
PROMPT = "Question: What is the capital of France?\nAnswer: Paris"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),  # the server may take up to 900 s to start (below): more than the suite's 600 s
    pytest.mark.skipif(
        not (VENV / ".ready").exists(),
        reason=f"no vLLM CPU venv at {VENV} (build it with scripts/setup-vllm.sh, or point OPENCHAT_VLLM_VENV at one)",
    ),
]


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' tiny Llama with head_dim 32: vLLM's CPU attention has no kernel for the
    usual tiny model's 16 ("Unsupported CPU attention configuration: head_dim=16")."""
    from openchat_cli.model.tiny import ModelSize, random_llama, train_tokenizer
    from openchat_cli.model_dir import attach_template, tokenizer_hash, write_meta

    out = tmp_path_factory.mktemp("tiny-vllm-model")
    size = ModelSize(
        vocab_size=512, hidden_size=64, layers=2, heads=2, kv_heads=1, intermediate_size=176, max_positions=2048
    )
    tokenizer = train_tokenizer(CORPUS * 20, size.vocab_size)
    attach_template(tokenizer, "openchat_3.5")
    model = random_llama(tokenizer, size, seed=0)
    eot = tokenizer.convert_tokens_to_ids("<|end_of_turn|>")
    model.generation_config.eos_token_id = [eot, tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_meta(out, template="openchat_3.5", size="tiny", tokenizer_hash=tokenizer_hash(tokenizer))
    return out


def start_vllm_server(model_dir: Path, workdir: Path, *extra_args: str):
    """`openchat serve --engine vllm` (fp32, 512-token context) with the vLLM venv's interpreter."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU default is 4
    return start_server(
        model_dir,
        workdir,
        *("--engine", "vllm", "--dtype", "float32", "--max-model-len", "512", *extra_args),
        timeout=900,
        python=str(VENV / "bin" / "python"),
    )


@pytest.fixture(scope="module")
def vllm_server(vllm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_vllm_server(vllm_model_dir, tmp_path_factory.mktemp("vllm-server"), "--default-max-tokens", "64")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def client(vllm_server):
    return openai.OpenAI(base_url=vllm_server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(vllm_model_dir: Path):
    """The same checkpoint in transformers (fp32): log_softmax after each prefix."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(vllm_model_dir), dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(vllm_model_dir))

    def run(ids: list[int]):
        with torch.inference_mode():
            return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)

    return tokenizer, run


def greedy(client, model, **kw):
    return client.chat.completions.create(
        model=model, messages=USER, max_tokens=24, temperature=0, extra_body={"ignore_eos": True}, **kw
    )


def test_health_names_vllm(vllm_server):
    health = httpx.get(vllm_server.url + "/health").json()
    assert health["engine"] == "vllm" and health["vllm"].startswith("0.")
    assert health["context_length"] == 512


def test_chat_and_streaming_agree(client, vllm_server):
    full = greedy(client, vllm_server.model)
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 24
    text = full.choices[0].message.content
    chunks = list(greedy(client, vllm_server.model, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == 24


def test_stop_strings(client, vllm_server):
    full = greedy(client, vllm_server.model).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = full[: full.index(stop)]
    r = greedy(client, vllm_server.model, stop=[stop])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    chunks = list(greedy(client, vllm_server.model, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut


def test_seeds_reproduce_and_n_choices(client, vllm_server):
    def sample(seed):
        return client.chat.completions.create(
            model=vllm_server.model,
            messages=USER,
            max_tokens=12,
            seed=seed,
            temperature=1.0,
            extra_body={"ignore_eos": True},
        ).choices[0]

    assert sample(5).message.content == sample(5).message.content
    assert len({sample(s).message.content for s in (1, 2, 3)}) > 1
    r = client.chat.completions.create(
        model=vllm_server.model, messages=USER, max_tokens=6, n=3, seed=5, extra_body={"ignore_eos": True}
    )
    assert [c.index for c in r.choices] == [0, 1, 2] and r.usage.completion_tokens == 18


def test_echo_logprobs_match_transformers(client, vllm_server, reference):
    tokenizer, run = reference
    r = client.completions.create(model=vllm_server.model, prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    (choice,) = r.choices
    assert choice.text == PROMPT and r.usage.completion_tokens == 0
    ids = tokenizer.encode(PROMPT)
    scores = run(ids)
    want = [None] + [float(scores[j, ids[j + 1]]) for j in range(len(ids) - 1)]
    got = choice.logprobs.token_logprobs
    assert got[0] is None and len(got) == len(want)
    assert max(abs(g - w) for g, w in zip(got[1:], want[1:])) < 1e-3
    # generated-token logprobs: greedy picks the top token and reports its own probability
    r = client.completions.create(
        model=vllm_server.model, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2, extra_body={"ignore_eos": True}
    )
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == 3
    for value, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert abs(value - max(top.values())) < 1e-4


def test_errors_are_clear(client, vllm_server):
    with pytest.raises(openai.BadRequestError, match="maximum context length is 512"):
        client.chat.completions.create(model=vllm_server.model, messages=USER, max_tokens=100_000)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=USER, max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=vllm_server.model, messages=USER, max_tokens=3, temperature=-1)


def test_disconnect_aborts_in_vllm(vllm_server):
    body = {"model": vllm_server.model, "messages": USER, "max_tokens": 400, "stream": True, "ignore_eos": True}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", vllm_server.base_url + "/chat/completions", json=body) as resp:
            lines = resp.iter_lines()
            assert sum(1 for _ in zip(range(6), lines)) == 6
            assert httpx.get(vllm_server.url + "/health").json()["running"] == 1
    deadline = time.monotonic() + 60
    while httpx.get(vllm_server.url + "/health").json()["running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(vllm_server.url + "/health").json()["running"] == 0
    # vLLM still serves after the abort
    r = httpx.post(
        vllm_server.base_url + "/chat/completions",
        timeout=60,
        json={"model": vllm_server.model, "messages": USER, "max_tokens": 3},
    )
    assert r.status_code == 200


def test_lora_adapter_served_unmerged_equals_the_merged_model(vllm_model_dir, tmp_path):
    """`serve --engine vllm --lora NAME=DIR`: vLLM's own LoRA support (LoRARequest per request);
    the adapter's greedy replies equal transformers running the merged model, the base's do not."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(vllm_model_dir)),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"]),
    )
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.3)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(str(vllm_model_dir))
    (tmp_path / "srv").mkdir()
    server = start_vllm_server(
        vllm_model_dir, tmp_path / "srv", "--served-model-name", "base", "--lora", f"tuned={tmp_path / 'adapter'}"
    )
    try:
        lora_client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        assert {m.id for m in lora_client.models.list().data} == {"base", "tuned"}
        prompt_ids = tokenizer(PROMPT)["input_ids"]
        with torch.inference_mode():
            want = merged.generate(torch.tensor([prompt_ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False)[
                0, len(prompt_ids) :
            ].tolist()
        got = lora_client.completions.create(
            model="tuned", prompt=prompt_ids, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}, logprobs=0
        )
        base = lora_client.completions.create(
            model="base", prompt=prompt_ids, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
        )
        assert got.model == "tuned" and got.choices[0].text == tokenizer.decode(want)
        assert base.choices[0].text != got.choices[0].text
    finally:
        stop_server(server)


def test_response_format_and_logit_bias_through_vllm(client, vllm_server):
    """The adapter hands vLLM the schema (its own structured-output backend) and the logit bias."""
    import json

    # bounded values: a random model would otherwise write digits until max_tokens
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "tag": {"enum": ["a", "bb"]}},
        "required": ["ok", "tag"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=vllm_server.model,
        messages=[{"role": "user", "content": "a number"}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )
    data = json.loads(r.choices[0].message.content)
    assert set(data) == {"ok", "tag"} and isinstance(data["ok"], bool) and data["tag"] in ("a", "bb")
    first = greedy(client, vllm_server.model).choices[0].message.content
    forced = client.completions.create(
        model=vllm_server.model, prompt="x", max_tokens=3, temperature=0, logit_bias={"65": 100}, logprobs=1
    )
    assert forced.choices[0].logprobs.tokens and first is not None
    tokens = forced.choices[0].logprobs.tokens
    assert len(set(tokens)) == 1, tokens  # +100 on one id: every step picks it


def test_health_reports_the_requests_vllms_scheduler_holds_waiting(vllm_model_dir, tmp_path):
    """With room for one sequence (max_num_seqs=1), two of three concurrent requests wait in vLLM's
    scheduler: /health says so, from the scheduler's own stats."""
    server = start_vllm_server(vllm_model_dir, tmp_path, "--engine-arg", "max_num_seqs=1")
    body = {"model": server.model, "messages": USER, "max_tokens": 400, "stream": True, "ignore_eos": True}
    done = threading.Event()

    def stream() -> None:
        with (
            httpx.Client(timeout=120) as http,
            http.stream("POST", server.base_url + "/chat/completions", json=body) as r,
        ):
            for _ in r.iter_lines():
                if done.is_set():
                    return

    threads = [threading.Thread(target=stream) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        seen = set()
        deadline = time.monotonic() + 60
        while (1, 2, "scheduler") not in seen and time.monotonic() < deadline:
            health = httpx.get(server.url + "/health").json()
            seen.add((health["running"], health["waiting"], health["waiting_from"]))
            time.sleep(0.02)
        assert (1, 2, "scheduler") in seen, seen
    finally:
        done.set()
        for t in threads:
            t.join(60)
        stop_server(server)
