"""`model extend-context`, `model add-tokens --init`, `eval perplexity` on tiny real models."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch


def _conversations(path, n=12, seed=0):
    rng = random.Random(seed)
    words = "the cat sat on a mat and then ran over to see the dog who was very happy today".split()
    with open(path, "w") as fh:
        for i in range(n):
            turns = []
            for _ in range(rng.randint(1, 3)):
                turns.append({"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(3, 30)))})
                turns.append({"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(3, 60)))})
            fh.write(json.dumps({"id": f"c{i}", "source": "test", "messages": turns}) + "\n")
    return path


@pytest.mark.parametrize("scaling", ["none", "linear", "dynamic", "yarn"])
def test_extend_context_rewrites_config_tokenizer_and_meta(cli, tmp_path, tiny_model_dir, scaling):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base = json.loads((tiny_model_dir / "config.json").read_text())
    old = base["max_position_embeddings"]
    out = tmp_path / f"long-{scaling}"
    entry = cli(
        "model", "extend-context", tiny_model_dir, out, "--max-len", str(4 * old), "--rope-scaling", scaling, "--json"
    ).json()
    assert entry["kind"] == "context-extended" and entry["metrics"]["rope_scaling"] == scaling
    config = AutoConfig.from_pretrained(out)
    rope = config.rope_parameters
    expected_type = "default" if scaling == "none" else scaling
    assert rope["rope_type"] == expected_type
    if scaling != "none":
        assert rope["factor"] == pytest.approx(4.0)
    # dynamic NTK reads the *original* length from max_position_embeddings (transformers and vLLM)
    assert config.max_position_embeddings == (old if scaling == "dynamic" else 4 * old)
    if scaling == "yarn":
        assert rope["original_max_position_embeddings"] == old
    assert AutoTokenizer.from_pretrained(out).model_max_length == 4 * old
    meta = json.loads((out / "openchat.json").read_text())
    assert meta["context_length"] == 4 * old and meta["original_context_length"] == old
    assert meta["checkpoint_id"] == entry["id"] and meta["template"] == "openchat_3.5"

    from openchat_cli.model.context import context_length

    assert context_length(out) == 4 * old  # what serve and data tokenize use

    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    extended = AutoModelForCausalLM.from_pretrained(out).eval()
    for (name, a), b in zip(original.state_dict().items(), extended.state_dict().values()):
        assert torch.equal(a, b), name  # weights are untouched
    short = torch.randint(5, 400, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(original(short).logits, extended(short).logits, atol=1e-5)
        # beyond the old context the extended model still computes finite logits
        long = torch.randint(5, 400, (1, old + 300), generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(extended(long, use_cache=False).logits).all()
    # extrapolation and dynamic NTK leave short texts exactly as they were; interpolation does not
    assert same == (scaling in ("none", "dynamic"))


def test_extend_context_refuses_bad_requests(cli, tmp_path, tiny_model_dir):
    old = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    res = cli("model", "extend-context", tiny_model_dir, tmp_path / "x", "--max-len", str(old), expect=None)
    assert res.exit_code != 0 and "not longer than the model's context" in res.output
    res = cli(
        "model",
        "extend-context",
        tiny_model_dir,
        tmp_path / "x",
        "--max-len",
        str(2 * old),
        "--rope-scaling",
        "ntk",
        expect=None,
    )
    assert res.exit_code != 0 and "unknown --rope-scaling 'ntk'" in res.output
    linear = tmp_path / "linear"
    cli("model", "extend-context", tiny_model_dir, linear, "--max-len", str(2 * old), "--rope-scaling", "linear")
    res = cli("model", "extend-context", linear, tmp_path / "y", "--max-len", str(4 * old), expect=None)
    assert res.exit_code != 0 and "already uses 'linear' RoPE scaling" in res.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def _untied_model(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openchat_cli.model_dir import write_meta

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.tie_word_embeddings = False
    untied = type(model)(model.config)
    untied.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        untied.lm_head.weight.copy_(torch.randn_like(untied.lm_head.weight))
    path = tmp_path / "untied"
    untied.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    write_meta(path, template="openchat_3.5")
    return path


@pytest.mark.parametrize("init", ["mean", "normal"])
def test_add_tokens_initialises_input_and_output_rows(cli, tmp_path, tiny_model_dir, init):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _untied_model(tmp_path, tiny_model_dir)
    new_tokens = [f"<|x{i}|>" for i in range(40)]
    args = [a for t in new_tokens for a in ("--token", t)]
    out = tmp_path / f"added-{init}"
    entry = cli("model", "add-tokens", src, out, *args, "--init", init, "--std", "0.05", "--json").json()
    assert entry["metrics"]["init"] == init
    old = AutoModelForCausalLM.from_pretrained(src)
    new = AutoModelForCausalLM.from_pretrained(out)
    n_old = old.get_input_embeddings().weight.shape[0]
    ids = AutoTokenizer.from_pretrained(out).convert_tokens_to_ids(new_tokens)
    assert ids == list(range(n_old, n_old + len(new_tokens)))
    for layer in ("get_input_embeddings", "get_output_embeddings"):
        before, after = getattr(old, layer)().weight, getattr(new, layer)().weight
        assert torch.equal(after[:n_old], before)
        rows = after[n_old:].detach()
        if init == "mean":
            assert torch.allclose(rows, before.mean(0).expand_as(rows), atol=1e-6)
        else:  # 40 x 64 draws from N(0, 0.05^2)
            assert abs(float(rows.mean())) < 0.01
            assert float(rows.std()) == pytest.approx(0.05, rel=0.1)
    assert (
        not torch.equal(new.get_input_embeddings().weight[n_old:], new.get_output_embeddings().weight[n_old:])
        or init == "mean"
    )


def test_add_tokens_rejects_unknown_init(cli, tmp_path, tiny_model_dir):
    res = cli(
        "model", "add-tokens", tiny_model_dir, tmp_path / "o", "--token", "<|z|>", "--init", "xavier", expect=None
    )
    assert res.exit_code != 0 and "unknown --init 'xavier'" in res.output


def _reference_losses(model_dir, parquet):
    """Each sequence alone through a plain HF forward: CE of every supervised token, by position."""
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    table = pq.read_table(parquet).to_pylist()
    out = []
    with torch.no_grad():
        for row in table:
            ids = torch.tensor([row["input_ids"]])
            w = np.asarray(row["weights"])
            logits = model(ids).logits[0, :-1]
            ce = torch.nn.functional.cross_entropy(logits.float(), ids[0, 1:], reduction="none").numpy()
            for pos in np.flatnonzero(w[1:] > 0):
                out.append((pos + 1, float(ce[pos])))
    return out


def test_perplexity_packed_equals_one_sequence_at_a_time(cli, tmp_path, tiny_model_dir):
    convs = _conversations(tmp_path / "held.jsonl")
    parquet = tmp_path / "held.parquet"
    cli("data", "tokenize", convs, "--model", tiny_model_dir, "-o", parquet)
    # a small batch budget forces several packs of several sequences each
    result = cli(
        "eval", "perplexity", tiny_model_dir, parquet, "--buckets", "32,64", "--tokens-per-batch", "300", "--json"
    ).json()
    ref = _reference_losses(tiny_model_dir, parquet)
    assert result["tokens"] == len(ref) and result["sequences"] == 12
    mean = sum(loss for _, loss in ref) / len(ref)
    assert result["mean_loss"] == pytest.approx(mean, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(mean), rel=1e-5)
    edges = [(0, 32), (32, 64), (64, None)]
    for bucket, (lo, hi) in zip(result["buckets"], edges):
        part = [loss for pos, loss in ref if pos >= lo and (hi is None or pos < hi)]
        assert bucket["tokens"] == len(part)
        if part:
            assert bucket["mean_loss"] == pytest.approx(sum(part) / len(part), rel=1e-5)
    # the same conversations given as JSONL are tokenized through the model's template: same numbers
    again = cli("eval", "perplexity", tiny_model_dir, convs, "--buckets", "32,64", "--json").json()
    assert again["mean_loss"] == pytest.approx(result["mean_loss"], rel=1e-6)
    listed = cli("catalog", "list", "evals", "--json").json()
    ours = [r for r in listed if r["id"] == result["eval_id"]]
    assert ours and ours[0]["status"] == "completed" and ours[0]["metrics"]["tokens"] == len(ref)


def test_perplexity_default_buckets_mark_the_old_context(cli, tmp_path, tiny_model_dir):
    old = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    long = tmp_path / "long"
    cli("model", "extend-context", tiny_model_dir, long, "--max-len", str(3 * old), "--rope-scaling", "yarn")
    convs = _conversations(tmp_path / "held.jsonl", n=4)
    result = cli("eval", "perplexity", long, convs, "--json").json()
    starts = [b["start"] for b in result["buckets"]]
    assert old in starts and result["context_length"] == 3 * old and result["rope_scaling"] == "yarn"


def test_perplexity_refuses_data_for_another_tokenizer(cli, tmp_path, tiny_model_dir):
    other = tmp_path / "other"
    cli("model", "init", other, "--vocab-size", "300")
    convs = _conversations(tmp_path / "held.jsonl", n=3)
    parquet = tmp_path / "other.parquet"
    cli("data", "tokenize", convs, "--model", other, "-o", parquet)
    res = cli("eval", "perplexity", tiny_model_dir, parquet, expect=None)
    assert res.exit_code != 0 and "another tokenizer" in res.output


def test_served_and_tokenized_context_follows_extension(cli, tmp_path, tiny_model_dir):
    """A dynamic-NTK model keeps the old max_position_embeddings (transformers reads the original
    length there), yet serve and data tokenize must take the extended context from openchat.json."""
    from transformers import AutoTokenizer

    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    old = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    out = tmp_path / "dyn"
    cli("model", "extend-context", tiny_model_dir, out, "--max-len", str(2 * old), "--rope-scaling", "dynamic")
    engine = TransformersEngine(out, tokenizer=AutoTokenizer.from_pretrained(out))
    assert engine.context_length == 2 * old
    made = cli(
        "data",
        "tokenize",
        _conversations(tmp_path / "c.jsonl", n=2),
        "--model",
        out,
        "-o",
        tmp_path / "c.parquet",
        "--json",
    ).json()
    from openchat_cli.tokenized import read_metadata

    assert read_metadata(made["path"])["max_len"] == 2 * old
