"""`openchat train --lora` writes adapters; `openchat model merge-lora` folds one back in."""

from __future__ import annotations

import json

import torch

from openchat_cli.model_dir import read_meta
from store.catalog import open_catalog
from tests.train.helpers import run_args


def test_lora_adapter_trains_and_merges(cli, tiny_model_dir, color_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    cli(
        "train",
        *run_args(tiny_model_dir, color_data["train"], out),
        "--lora",
        "--lora-r",
        "8",
        "--lora-targets",
        "q_proj,v_proj,down_proj",
        "--lr",
        "1e-2",
        "--tokens-per-step",
        "512",
        "--stop-after",
        "15",
    )
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.3
    # Resume the adapter run for a few steps (its resumable state holds only the adapter).
    state = torch.load(out / "state" / "step-15" / "mp_rank_00_model_states.pt", weights_only=False)
    assert all("lora_" in k or k.endswith("lm_head.weight") for k in state["module"])  # (tied embedding)
    cli("train", "--out", out, "--resume", "--stop-after", "3")
    resumed = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in resumed] == list(range(1, 19)) and resumed[:15] == steps
    assert resumed[-1]["loss"] < steps[-1]["loss"]
    adapter = out / "step-000015"
    assert (adapter / "adapter_model.safetensors").exists() and not (adapter / "model.safetensors").exists()
    assert read_meta(adapter)["lora"]["r"] == 8
    catalog = open_catalog()
    ck = next(r for r in catalog.list("checkpoints") if r["name"] == "step-000015")
    assert ck["kind"] == "trained" and ck["metrics"]["lora"] is True

    merged_dir = tmp_path / "merged"
    result = cli("model", "merge-lora", ck["id"], merged_dir, "--json").json()
    assert result["kind"] == "merged" and result["path"] == str(merged_dir.resolve())
    assert not (merged_dir / "adapter_config.json").exists()
    meta = read_meta(merged_dir)
    assert meta["template"] == "openchat_3.5" and meta["merged_from"] == ck["id"] and "lora" not in meta
    assert meta["checkpoint_id"] == result["id"]
    assert {a["id"] for a in catalog.lineage(result["id"])["ancestors"]} >= {ck["id"], ck["run_id"]}

    ids = torch.randint(5, 400, (1, 24))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))(ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        original = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(adapter))(ids).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert not torch.allclose(merged, original, atol=1e-3)


def test_merge_lora_refuses_a_full_model(cli, tiny_model_dir, tmp_path):
    err = cli("model", "merge-lora", tiny_model_dir, tmp_path / "m", expect=2).stderr
    assert "not a LoRA adapter" in err
