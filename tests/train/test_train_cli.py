"""`openchat train` end to end on CPU: real DeepSpeed ranks, real catalog, real checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest

from openchat_cli.model_dir import read_meta
from store.catalog import open_catalog
from tests.train.helpers import color_task, run_args, write_tokenized

FAST = ("--tokens-per-step", "512", "--lr", "3e-3", "--log-every", "10")


# -- bad input: refused before any rank starts ----------------------------------------------------
def test_refuses_missing_or_mismatched_data(cli, tiny_model_dir, tiny_tokenizer, color_data, tmp_path):
    def fails(*args: str) -> str:
        return cli("train", "--model", tiny_model_dir, "--out", tmp_path / "o", *args, expect=2).stderr

    assert "not found" in fails("--data", tmp_path / "nope.parquet")
    other = write_tokenized(tmp_path / "chatml.parquet", tiny_tokenizer, color_task(5, 0), template="chatml")
    assert "template 'chatml' but the model speaks 'openchat_3.5'" in fails("--data", other)
    foreign = write_tokenized(tmp_path / "h.parquet", tiny_tokenizer, color_task(5, 0), hash_override="0" * 16)
    assert "another tokenizer" in fails("--data", foreign)
    (tmp_path / "text.parquet").write_text("not parquet")
    assert "not a readable Parquet file" in fails("--data", tmp_path / "text.parquet")
    assert "more than a micro-batch holds (16)" in fails("--data", color_data["train"], "--tokens-per-step", "16")
    assert "ck-00000000" in fails("--data", "ck-00000000")  # an id that is not in the catalog
    assert not (tmp_path / "o" / "run.json").exists()
    assert open_catalog().list("runs") == []


def test_refuses_bad_model_and_out(cli, tiny_model_dir, color_data, tmp_path):
    no_weights = tmp_path / "no-weights"
    shutil.copytree(tiny_model_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    err = cli("train", "--model", no_weights, "--data", color_data["train"], "--out", tmp_path / "o", expect=2).stderr
    assert "holds no model weights" in err
    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, no_template)
    (no_template / "openchat.json").unlink()
    err = cli("train", "--model", no_template, "--data", color_data["train"], "--out", tmp_path / "o", expect=2).stderr
    assert "naming its template" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    err = cli("train", "--model", tiny_model_dir, "--data", color_data["train"], "--out", busy, expect=2).stderr
    assert "--force" in err
    (tmp_path / "a-file").write_text("x")
    err = cli(
        "train", "--model", tiny_model_dir, "--data", color_data["train"], "--out", tmp_path / "a-file", expect=2
    ).stderr
    assert "cannot use" in err and "a-file" in err
    assert "nothing to resume" in cli("train", "--out", tmp_path / "empty", "--resume", expect=2).stderr
    assert (
        "only --out, --stop-after, --state-minutes and --report-to"
        in cli("train", "--out", busy, "--resume", "--lr", "1", expect=2).stderr
    )
    assert "missing --model" in cli("train", "--data", color_data["train"], "--out", tmp_path / "o", expect=2).stderr


def test_non_finite_loss_fails_the_run(cli, tiny_model_dir, color_data, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = load_file(str(broken / "model.safetensors"))
    key = next(k for k in weights if "norm" in k)
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    result = cli("train", "--model", broken, "--data", color_data["small"], "--out", tmp_path / "o", *FAST, expect=None)
    assert result.exit_code != 0
    assert "rank 0 failed" in result.stderr
    (run,) = open_catalog().list("runs")
    assert run["status"] == "failed"
    assert not (tmp_path / "o" / "final").exists()


# -- training ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_learns_held_out_task_and_records_everything(cli, tiny_model_dir, tiny_tokenizer, color_data, tmp_path, capfd):
    """The done criterion: a few hundred steps on CPU clearly lower the held-out loss, and the
    trained model answers held-out questions correctly."""
    catalog = open_catalog()
    ds = catalog.add_dataset(name="color-train", path=color_data["train"], format="tokenized")
    config = tmp_path / "run.yaml"
    config.write_text(
        f"model: {tiny_model_dir}\ndata: {ds}\neval-data: {color_data['eval']}\n"
        "epochs: 2\ntokens_per_step: 512\nlr: 3e-3\nsave-every: 100\nlog-every: 20\n"
    )
    out = tmp_path / "run"
    result = cli("train", "--config", config, "--out", out, "--seed", "3")
    shown = " ".join((result.stderr + "".join(capfd.readouterr())).split())  # what the command showed, unwrapped
    assert "per-document sdpa attention" in shown  # the packed kernel on CPU (rank 0's note)
    assert "eval loss (initial):" in shown and "eval loss (final):" in shown
    assert "step 20/" in shown and "packing" in shown and "ETA" in shown  # plain lines: not a terminal

    run_id = json.loads((out / "run.json").read_text())["run_id"]
    run = catalog.get(run_id)
    metrics = run["metrics"]
    assert run["status"] == "completed" and run["dataset_id"] == ds and run["config"]["seed"] == 3
    assert metrics["eval_loss_initial"] > 5.0
    assert metrics["eval_loss_final"] < 0.3 and metrics["eval_loss_final"] < metrics["eval_loss_initial"] / 20
    curve = run["loss_curve"]
    assert len(curve) >= 10 and curve[-1]["loss"] < curve[0]["loss"] / 10
    assert all(0.85 < p["packing_efficiency"] <= 1 and p["tokens_per_s"] > 0 for p in curve)
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 200
    print(
        f"held-out loss {metrics['eval_loss_initial']:.4f} -> {metrics['eval_loss_final']:.4f} "
        f"in {len(steps)} steps, packing {metrics['packing_efficiency']:.1%}"
    )

    checkpoints = {r["name"]: r for r in catalog.list("checkpoints")}
    assert set(checkpoints) == {"step-000100", "step-000200", "final"}
    final = checkpoints["final"]
    assert (final["kind"], final["run_id"], final["dataset_id"], final["step"]) == ("trained", run_id, ds, len(steps))
    assert metrics["final_checkpoint_id"] == final["id"]
    assert {a["id"] for a in catalog.lineage(final["id"])["ancestors"]} >= {run_id, ds}
    meta = read_meta(out / "final")
    assert (meta["template"], meta["run_id"], meta["dataset_id"], meta["checkpoint_id"]) == (
        "openchat_3.5",
        run_id,
        ds,
        final["id"],
    )
    assert not (out / "state").exists()  # nothing left to resume

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from openchat_cli.templates import Conversation, Message, get_template

    tokenizer = AutoTokenizer.from_pretrained(str(out / "final"))
    assert tokenizer.chat_template == tiny_tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(out / "final"))
    template = get_template("openchat_3.5")
    right = 0
    for animal, color in (("fox", "red"), ("sea", "blue"), ("dog", "brown"), ("chat", "pink")):
        prompt = template.encode_prompt(
            tokenizer, Conversation([Message("user", f"Item 4321: what color is the {animal}?")])
        )
        import torch

        generated = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
        reply = tokenizer.decode(generated[0, len(prompt) :], skip_special_tokens=True)
        right += reply.strip().startswith(f"The {animal} is {color}.")
    assert right >= 3


def test_zero3_with_offload_trains_and_saves_full_weights(cli, tiny_model_dir, color_data, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "z3"
    cli(
        "train",
        *run_args(tiny_model_dir, color_data["train"], out),
        *FAST,
        "--zero",
        "3",
        "--offload",
        "--micro-tokens",
        "256",
        "--stop-after",
        "12",
    )
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 12 and steps[-1]["loss"] < steps[0]["loss"] - 1.0
    trained = AutoModelForCausalLM.from_pretrained(str(out / "step-000012"))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    moved = [float((a - b).abs().max()) for a, b in zip(trained.state_dict().values(), base.state_dict().values())]
    assert all(m > 0 for m in moved)  # every tensor was gathered from its partitions and trained
    (run,) = open_catalog().list("runs")
    assert run["status"] == "interrupted" and run["config"]["zero"] == 3
    assert (out / "state" / "latest").read_text().strip() == "step-12"
