"""`openchat train --method dpo|rm` end to end on CPU: real DeepSpeed ranks, real catalog, real
checkpoints (a sequence-classification one for rm), resume and LoRA as for SFT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from store.catalog import open_catalog
from tests.train.pairs_helpers import color_pairs, write_pairs

FAST = ("--tokens-per-step", "512", "--log-every", "1", "--state-minutes", "0")


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pairs")
    return {
        "train": write_pairs(root / "train.parquet", tiny_tokenizer, color_pairs(96, seed=1, rejected="unsure")),
        "eval": write_pairs(root / "eval.parquet", tiny_tokenizer, color_pairs(32, seed=2, rejected="unsure")),
    }


def _steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def test_refuses_mismatched_method_data_and_settings(cli, tiny_model_dir, color_data, pair_files, tmp_path):
    def fails(*args) -> str:
        return cli("train", "--model", tiny_model_dir, "--out", tmp_path / "o", *args, expect=2).stderr

    assert "holds conversations, but --method dpo trains on pairs" in fails(
        "--data", color_data["small"], "--method", "dpo"
    )
    assert "holds preference pairs, but --method sft" in fails("--data", pair_files["train"])
    assert "holds conversations" in fails(
        "--data", pair_files["train"], "--eval-data", color_data["small"], "--method", "rm"
    )
    assert "apply to --method dpo only" in fails("--data", pair_files["train"], "--method", "rm", "--beta", "0.2")
    assert "--loss-type must be one of" in fails("--data", pair_files["train"], "--method", "dpo", "--loss-type", "x")
    assert "--method must be one of" in fails("--data", pair_files["train"], "--method", "ppo")
    assert "--rpo-alpha applies to --method dpo only" in fails(
        "--data", pair_files["train"], "--method", "rm", "--rpo-alpha", "1"
    )
    assert "--rpo-alpha must be" in fails("--data", pair_files["train"], "--method", "dpo", "--rpo-alpha", "-1")
    assert "pair (chosen + rejected) of" in fails(
        "--data", pair_files["train"], "--method", "dpo", "--tokens-per-step", "40"
    )
    assert open_catalog().list("runs") == []


def test_bad_pairs_file_names_the_pair_and_field(cli, tiny_model_dir, tiny_tokenizer, tmp_path):
    import pyarrow.parquet as pq

    path = write_pairs(tmp_path / "p.parquet", tiny_tokenizer, color_pairs(3, seed=5))
    table = pq.read_table(path)
    weights = table.column("rejected_weights").to_pylist()
    weights[2] = [0.0] * len(weights[2])
    table = table.set_column(
        table.schema.get_field_index("rejected_weights"),
        "rejected_weights",
        __import__("pyarrow").array(weights, type=table.schema.field("rejected_weights").type),
    )
    pq.write_table(table, path)
    err = cli(
        "train", "--model", tiny_model_dir, "--out", tmp_path / "o", "--data", path, "--method", "dpo", expect=2
    ).stderr
    assert "pair 2: the rejected reply has no token with a non-zero weight" in " ".join(err.split())


@pytest.mark.slow
def test_dpo_trains_resumes_and_raises_held_out_accuracy(cli, tiny_model_dir, pair_files, tmp_path):
    """DPO on ZeRO-2: stopped after 3 steps and resumed, it ends exactly where an uninterrupted run
    does (the reference log-probs are read back, not recomputed), and held-out pairs come out
    ranked right."""
    args = (
        "--model",
        tiny_model_dir,
        "--data",
        pair_files["train"],
        "--eval-data",
        pair_files["eval"],
        "--method",
        "dpo",
        "--beta",
        "0.5",
        "--lr",
        "5e-4",
        "--epochs",
        "2",
        *FAST,
    )
    whole = tmp_path / "whole"
    cli("train", *args, "--out", whole)
    part = tmp_path / "part"
    cli("train", *args, "--out", part, "--stop-after", "10")
    refs = part / "reference" / "train.npy"
    stamp = refs.stat().st_mtime_ns
    assert np.load(refs).shape == (96, 2) and np.load(part / "reference" / "eval.npy").shape == (32, 2)
    cli("train", "--out", part, "--resume")
    assert refs.stat().st_mtime_ns == stamp
    assert np.allclose(np.load(refs), np.load(whole / "reference" / "train.npy"))

    a, b = _steps(whole), _steps(part)
    assert [s["step"] for s in b] == [s["step"] for s in a]
    for key in ("loss", "rewards/chosen", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert np.allclose([s[key] for s in a], [s[key] for s in b], atol=1e-5), key
    assert abs(a[0]["loss"] - np.log(2)) < 1e-4 and a[0]["rewards/margins"] == pytest.approx(0, abs=1e-6)

    catalog = open_catalog()
    run = catalog.get(json.loads((whole / "run.json").read_text())["run_id"])
    metrics = run["metrics"]
    assert run["config"]["method"] == "dpo" and run["status"] == "completed"
    assert metrics["eval_accuracy_initial"] == 0.0  # policy == reference: no pair has a positive margin
    assert metrics["eval_accuracy"] >= 0.9 and metrics["eval_margin"] > 0
    assert metrics["eval_loss_final"] < metrics["eval_loss_initial"] - 0.05
    final = [c for c in catalog.list("checkpoints") if c["run_id"] == run["id"] and c["name"] == "final"][0]
    assert final["kind"] == "trained" and final["metrics"]["method"] == "dpo"


@pytest.mark.slow
def test_reward_model_zero3_is_a_sequence_classification_checkpoint(
    cli, tiny_model_dir, tiny_tokenizer, pair_files, tmp_path
):
    import torch
    from transformers import AutoModelForSequenceClassification

    from openchat_cli.train.pairs import load_pairs

    out = tmp_path / "rm"
    cli(
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        pair_files["train"],
        "--eval-data",
        pair_files["eval"],
        "--method",
        "rm",
        "--lr",
        "1e-3",
        "--epochs",
        "2",
        "--zero",
        "3",
        *FAST,
        "--out",
        out,
    )
    catalog = open_catalog()
    run = catalog.get(json.loads((out / "run.json").read_text())["run_id"])
    assert run["metrics"]["eval_accuracy"] >= 0.95
    assert run["metrics"]["eval_loss_final"] < run["metrics"]["eval_loss_initial"] / 10
    final = [c for c in catalog.list("checkpoints") if c["run_id"] == run["id"] and c["name"] == "final"][0]
    assert final["kind"] == "reward-model" and final["metrics"]["eval_accuracy"] == run["metrics"]["eval_accuracy"]

    model = AutoModelForSequenceClassification.from_pretrained(str(out / "final")).eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id == tiny_tokenizer.pad_token_id
    data = load_pairs(pair_files["eval"])
    right = 0
    with torch.no_grad():
        for i in range(len(data) // 2):
            seqs = [torch.from_numpy(data.row(2 * i + k)[0]).view(1, -1) for k in (0, 1)]
            chosen, rejected = (float(model(input_ids=s).logits[0, 0]) for s in seqs)
            right += chosen > rejected
    assert right / (len(data) // 2) == pytest.approx(run["metrics"]["eval_accuracy"])

    # `eval score`: the reward model as a judge with no API, shown by `eval report`
    right_run = _color_answer_run(catalog, "right", correct=True)
    wrong_run = _color_answer_run(catalog, "wrong", correct=False)
    scored = {
        name: cli("eval", "score", run_id, "--rm", final["id"], "--json").json()
        for name, run_id in (("right", right_run), ("wrong", wrong_run))
    }
    assert scored["right"]["scored"] == scored["wrong"]["scored"] == 16
    assert scored["right"]["mean_ci"][0] > scored["wrong"]["mean_ci"][1]  # correct answers score higher
    batched = {r["question_id"]: r["score"] for r in catalog.judgments(scored["right"]["run_id"])}
    cli("eval", "score", right_run, "--rm", final["id"], "--batch-size", "1", "--json")  # replaces the scores
    alone = {r["question_id"]: r["score"] for r in catalog.judgments(scored["right"]["run_id"])}
    assert batched.keys() == alone.keys() and all(abs(batched[q] - alone[q]) < 1e-5 for q in alone)
    report = cli("eval", "report", right_run, wrong_run, "--json").json()
    assert {r["run_id"] for r in report["reward"]} == {scored["right"]["run_id"], scored["wrong"]["run_id"]}
    assert "Reward-model scores" in cli("eval", "report", right_run).stdout


def _color_answer_run(catalog, name: str, correct: bool) -> str:
    """An answer run on held-out color questions, right or wrong throughout."""
    from tests.train.helpers import ANIMALS
    from tests.train.pairs_helpers import unsure

    run = catalog.add_eval(kind="answer", name=name, model=name, endpoint="http://x/v1", questions_hash="h")
    for i in range(16):
        animal = sorted(ANIMALS)[i % len(ANIMALS)]
        catalog.insert(
            "questions",
            {
                "eval_id": run,
                "question_id": f"q{i}",
                "category": "color",
                "turns": [f"Item {500 + i}: what color is the {animal}?"],
                "meta": {},
            },
        )
        catalog.insert(
            "answers",
            {
                "eval_id": run,
                "question_id": f"q{i}",
                "model": name,
                "turns": [f"The {animal} is {ANIMALS[animal]}." if correct else unsure(animal)],
            },
        )
    catalog.update("evals", run, status="completed")
    return run


def test_eval_score_refuses_a_model_that_is_not_a_reward_model(cli, tiny_model_dir):
    catalog = open_catalog()
    run = _color_answer_run(catalog, "right", correct=True)
    err = cli("eval", "score", run, "--rm", tiny_model_dir, expect=2).stderr
    assert "is not a reward model" in " ".join(err.split())


@pytest.mark.slow
def test_lora_dpo_and_rm(cli, tiny_model_dir, pair_files, tmp_path):
    """With --lora the reference is the base (adapters off); the RM adapter saves its head too."""
    for method in ("dpo", "rm"):
        out = tmp_path / method
        cli(
            "train",
            "--model",
            tiny_model_dir,
            "--data",
            pair_files["train"],
            "--eval-data",
            pair_files["eval"],
            "--method",
            method,
            "--lora",
            "--lora-r",
            "8",
            "--lr",
            "2e-3",
            "--epochs",
            "2",
            *FAST,
            "--out",
            out,
        )
        metrics = open_catalog().get(json.loads((out / "run.json").read_text())["run_id"])["metrics"]
        assert metrics["eval_accuracy"] > metrics["eval_accuracy_initial"]
        assert metrics["eval_loss_final"] < metrics["eval_loss_initial"]
        adapter = json.loads((out / "final" / "adapter_config.json").read_text())
        assert adapter["task_type"] == ("SEQ_CLS" if method == "rm" else "CAUSAL_LM")
    assert np.load(tmp_path / "dpo" / "reference" / "train.npy").shape == (96, 2)


@pytest.mark.slow
def test_dpo_two_ranks_zero3_share_the_reference_pass(cli, tiny_model_dir, pair_files, tmp_path):
    """Two CPU ranks under ZeRO-3 split the reference pass and all-reduce it: every pair gets its
    reference (so the policy, still equal to it, scores exactly log 2 on held-out pairs)."""
    out = tmp_path / "z3"
    cli(
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        pair_files["train"],
        "--eval-data",
        pair_files["eval"],
        "--method",
        "dpo",
        "--beta",
        "0.5",
        "--lr",
        "5e-4",
        "--zero",
        "3",
        "--num-gpus",
        "2",
        *FAST,
        "--out",
        out,
    )
    metrics = open_catalog().get(json.loads((out / "run.json").read_text())["run_id"])["metrics"]
    assert metrics["eval_loss_initial"] == pytest.approx(np.log(2), abs=1e-6)
    assert metrics["eval_loss_final"] < metrics["eval_loss_initial"]
    for name, pairs in (("train", 96), ("eval", 32)):
        refs = np.load(out / "reference" / f"{name}.npy")
        assert refs.shape == (pairs, 2) and (refs < 0).all()  # every pair scored, none left at 0
