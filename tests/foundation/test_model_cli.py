"""`openchat model init / add-tokens / info`: local models, registered in the catalog."""

from __future__ import annotations

import json

import torch


def test_model_init_creates_a_loadable_model_and_registers_it(cli, tmp_path, corpus_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m"
    entry = cli("model", "init", out, "--tokenizer-corpus", corpus_file, "--json").json()
    assert entry["kind"] == "base" and entry["template"] == "openchat_3.5"
    meta = json.loads((out / "openchat.json").read_text())
    assert meta["checkpoint_id"] == entry["id"] and meta["template"] == "openchat_3.5"
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    eot = tok.convert_tokens_to_ids("<|end_of_turn|>")
    assert eot in model.generation_config.eos_token_id
    assert tok.chat_template and "GPT4 Correct" in tok.chat_template
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 1_000_000
    listed = cli("catalog", "list", "checkpoints", "--json").json()
    assert [r["id"] for r in listed] == [entry["id"]]
    info = cli("model", "info", entry["id"], "--json").json()
    assert info["template"] == "openchat_3.5" and info["has_chat_template"]


def test_model_init_refuses_to_overwrite(cli, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = cli("model", "init", out, expect=2)
    assert "already exists" in res.stderr
    assert (out / "keep.txt").read_text() == "precious"


def test_model_init_bad_options(cli, tmp_path):
    assert "unknown --size" in cli("model", "init", tmp_path / "a", "--size", "huge", expect=2).stderr
    assert "unknown template" in cli("model", "init", tmp_path / "b", "--template", "x", expect=2).stderr
    assert (
        "does not exist"
        in cli("model", "init", tmp_path / "c", "--tokenizer-corpus", tmp_path / "missing.txt", expect=2).stderr
    )


def test_add_tokens_uses_mean_embedding_and_links_lineage(cli, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "with-tokens"
    entry = cli(
        "model", "add-tokens", tiny_model_dir, out, "--token", "<|tool|>", "--token", "<|end_of_turn|>", "--json"
    ).json()
    assert entry["metrics"]["added_tokens"] == ["<|tool|>"]
    old = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    new = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    tid = tok.convert_tokens_to_ids("<|tool|>")
    assert tid == len(tok) - 1
    old_emb = old.get_input_embeddings().weight
    new_emb = new.get_input_embeddings().weight
    assert new_emb.shape[0] == old_emb.shape[0] + 1
    assert torch.allclose(new_emb[tid], old_emb.mean(0), atol=1e-6)
    assert torch.equal(new_emb[: old_emb.shape[0]], old_emb)
    # the text "<|tool|>" now encodes to the single new token
    assert tok("<|tool|>", add_special_tokens=False).input_ids == [tid]


def test_add_tokens_needs_tokens_and_weights(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no model weights" in cli("model", "add-tokens", empty, tmp_path / "o", "--token", "<x>", expect=2).stderr
    assert "not a folder" in cli("model", "add-tokens", tmp_path / "nope", tmp_path / "o", expect=2).stderr


def test_outputs_are_not_private(cli, tmp_path):
    """Temp names keep outputs whole; they must not leave them readable by the owner only."""
    import os
    import stat

    out = tmp_path / "shared-model"
    cli("model", "init", out)
    old = os.umask(0o022)
    os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~old
    assert stat.S_IMODE((out / "openchat.json").stat().st_mode) == 0o666 & ~old
