"""`openchat train --method grpo` end to end on CPU: real DeepSpeed rank, the serving engine
sampling, a real reward model checkpoint, a scripted judge on loopback, the real catalog."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from store.catalog import open_catalog

QUESTIONS = [
    ("Which number is larger, 12 or 31?", "31"),
    ("Which number is smaller, 12 or 31?", "12"),
    ("What is the larger of 40 and 17?", "40"),
    ("What is the smaller of 40 and 17?", "17"),
]
SMALL = (
    "--group-size",
    "2",
    "--prompts-per-step",
    "2",
    "--max-completion-tokens",
    "4",
    "--lr",
    "1e-3",
    "--log-every",
    "1",
)


def write_prompts(path: Path, with_answers: bool = True) -> Path:
    with path.open("w") as fh:
        for i, (q, a) in enumerate(QUESTIONS):
            record = {"id": f"q{i}", "messages": [{"role": "user", "content": q}]}
            if with_answers or i != 2:
                record["answer"] = a
            fh.write(json.dumps(record) + "\n")
    return path


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    return write_prompts(tmp_path / "prompts.jsonl")


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A one-score sequence-classification checkpoint on the tiny model's tokenizer (what
    `train --method rm` saves)."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    from openchat_cli.model_dir import write_meta

    out = tmp_path_factory.mktemp("rm")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    config = AutoConfig.from_pretrained(str(tiny_model_dir), num_labels=1, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_meta(out, template="openchat_3.5")
    return out


@pytest.fixture
def judge():
    from tests.eval.scripted import ScriptedServer

    server = ScriptedServer().start()
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- bad input: refused before any rank starts ----------------------------------------------------
def test_refuses_bad_prompts_and_rewards(cli, tiny_model_dir, tmp_path, reward_model_dir):
    out = tmp_path / "o"
    good = write_prompts(tmp_path / "good.jsonl")

    def fails(*args: str) -> str:
        return cli("train", "--method", "grpo", "--model", tiny_model_dir, "--out", out, *args, expect=2).stderr

    no_answer = write_prompts(tmp_path / "no-answer.jsonl", with_answers=False)
    err = fails("--prompts", no_answer, "--reward", "grade")
    assert "no-answer.jsonl" in err and "needs an 'answer'" in err and "line 3 (id q2)" in err
    dead = f"http://127.0.0.1:{free_port()}/v1"
    err = fails("--prompts", good, "--reward", "grade", "--reward", f"judge:{dead}")
    assert "unreachable" in err and dead in err
    err = fails("--prompts", good, "--reward", f"rm:{tmp_path / 'no-rm'}")
    assert "--reward rm:" in err and "no-rm' is not a folder" in err
    assert "not a reward model" in fails("--prompts", good, "--reward", f"rm:{tiny_model_dir}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "hi", "answer": "1"}\n{"id": "b", "messages": [{"role": "user"}]}\n')
    err = fails("--prompts", bad, "--reward", "grade")
    assert "bad.jsonl:2" in err and "messages[0]" in err
    assert "unknown reward 'score'" in fails("--prompts", good, "--reward", "score")
    assert "--group-size must be at least 2" in fails("--prompts", good, "--reward", "grade", "--group-size", "1")
    assert "needs at least one --reward" in fails("--prompts", good)
    assert "missing --prompts" in fails("--reward", "grade")
    assert not (out / "run.json").exists()
    assert open_catalog().list("runs") == []


def test_reward_specs_and_weights():
    from openchat_cli.errors import OpenchatError
    from openchat_cli.train.rewards import parse_reward

    assert parse_reward("grade").weight == 1.0
    spec = parse_reward("judge:http://h:1/v1?a=b#gpt=0.25")
    assert (spec.kind, spec.target, spec.model, spec.weight) == ("judge", "http://h:1/v1?a=b", "gpt", 0.25)
    assert parse_reward("rm:ck-1a2b=2").target == "ck-1a2b"
    with pytest.raises(OpenchatError, match="takes no argument"):
        parse_reward("grade:x")


def test_lora_policy_weights_fold_the_adapter(tiny_model_dir):
    """The sampler gets W + BA: the engine's model then computes what the LoRA model computes."""
    from transformers import AutoModelForCausalLM

    from openchat_cli.train.lora import apply_lora
    from openchat_cli.train.rollout import policy_weights

    lm = apply_lora(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32),
        r=4,
        alpha=8,
        dropout=0.0,
        targets="all-linear",
    )
    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    weights = policy_weights(lm)
    assert set(weights) <= set(before) and any("q_proj" in k for k in weights)
    plain.load_state_dict(weights, strict=False)
    ids = torch.tensor([[1, 5, 9, 4, 7]])
    lm.eval()
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, lm(ids).logits, atol=1e-5)
        assert not torch.allclose(
            plain.state_dict()["model.layers.0.self_attn.q_proj.weight"],
            before["model.layers.0.self_attn.q_proj.weight"],
        )


# -- a real run ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_grpo_run_logs_rewards_and_resumes(cli, tiny_model_dir, prompts_file, reward_model_dir, judge, tmp_path):
    out = tmp_path / "run"
    rewards = (
        "--reward",
        "grade",
        "--reward",
        f"rm:{reward_model_dir}=0.5",
        "--reward",
        f"judge:{judge.base_url}#fair-judge=0.25",
    )
    # LoRA: the KL reference is the same module with its adapter off; two updates per sampled batch.
    first = cli(
        "train",
        "--method",
        "grpo",
        "--model",
        tiny_model_dir,
        "--prompts",
        prompts_file,
        *rewards,
        *SMALL,
        "--epochs",
        "2",
        "--out",
        out,
        "--stop-after",
        "2",
        "--state-minutes",
        "0",
        "--lora",
        "--lora-r",
        "4",
        "--grpo-iterations",
        "2",
    )
    assert "stopped after step 2 of 4" in first.stdout
    judged = len(judge.requests)
    assert judged == 2 * 2 * 2  # every completion of both steps, once
    cli("train", "--out", out, "--resume")
    assert len(judge.requests) == 2 * judged
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    for s in steps:
        assert s["rewards/judge:" + judge.base_url] == pytest.approx(3 / 9)  # fair-judge rates a plain reply 4
        assert 0.0 <= s["rewards/grade"] <= 1.0 and 0.0 <= s["frac_reward_zero_std"] <= 1.0
        assert 1 <= s["completion_length"] <= 4 and s["kl"] >= 0 and s["reward_std"] >= 0
    assert steps[-1]["kl"] > 0  # the adapter moved the policy away from the reference
    catalog = open_catalog()
    run = catalog.list("runs")[0]
    assert run["status"] == "completed" and run["config"]["method"] == "grpo"
    assert [p["step"] for p in run["loss_curve"]] == [1, 2, 3, 4]
    assert {"reward", "reward_std", "kl", "completion_length", "frac_reward_zero_std"} <= set(run["loss_curve"][-1])
    assert run["metrics"]["final_checkpoint_id"]
    prompts_ds = catalog.get(run["dataset_id"])
    assert prompts_ds["format"] == "prompts" and prompts_ds["num_records"] == 4
    final = catalog.get(run["metrics"]["final_checkpoint_id"])
    assert Path(final["path"]) == out / "final" and (out / "final" / "openchat.json").exists()
    assert (out / "final" / "adapter_config.json").exists()


def test_engine_load_weights_replaces_what_it_samples_from(tiny_model_dir, tiny_tokenizer):
    """The public hook GRPO syncs its policy through: new weights in place, unknown names refused."""
    import asyncio

    from openchat_cli.serve.engines.base import EngineError, SamplingParams
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_model_dir, tokenizer=tiny_tokenizer, max_batch_size=4)

    async def greedy() -> list[int]:
        await engine.start()
        tokens: list[int] = []
        async for event in engine.generate([1, 5, 9], SamplingParams(max_tokens=3, temperature=0.0), "w"):
            tokens += event.token_ids
        await engine.shutdown()
        return tokens

    head = engine.model.get_output_embeddings().weight
    target = 7
    state = engine.model.state_dict()
    weights = {name: value.clone() for name, value in state.items()}
    new_head = torch.zeros_like(head)
    new_head[target] = 1.0  # the last layer's output now decides alone: only `target` scores
    for name, value in state.items():  # the head and whatever shares its storage (tied embeddings)
        if value.data_ptr() == head.data_ptr():
            weights[name] = new_head
    before = asyncio.run(greedy())
    engine.load_weights(weights)
    assert torch.equal(engine.model.get_output_embeddings().weight, new_head)
    after = asyncio.run(greedy())
    assert after != before
    with pytest.raises(EngineError, match="does not have"):
        engine.load_weights({"no.such.weight": torch.zeros(1)})
