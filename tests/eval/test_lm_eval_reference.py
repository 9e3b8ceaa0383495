"""The reference check: lm-evaluation-harness's `local-completions` model and `openchat eval
loglik` score the same local multiple-choice tasks through the same `openchat serve` (tiny
model); per-question log-likelihoods agree to 1e-4, predictions and accuracies exactly.

lm-evaluation-harness runs as it does by default: token-id prompts (its `tokenized_requests`)
encoded with the model's own tokenizer and no BOS, `echo` + `logprobs: 1` + `max_tokens: 1`,
batch size 1. `tokenizer_backend=huggingface` is what its `auto` resolves to for a server
without /tokenizer_info (ours), spelled out to skip the probe. Its tasks are local: an ARC-Easy
style YAML written here, and the installed MMLU and HellaSwag task YAMLs included with their
dataset swapped for a local JSONL (so their doc_to_text, choices and HellaSwag's preprocessing
are lm-evaluation-harness's own).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openchat_cli.eval.mc_tasks import load_task
from tests.eval.conftest import write_jsonl
from tests.eval.test_loglik import ARC, HELLASWAG

TOL = 1e-4
MMLU_ALGEBRA = [
    {
        "question": "Find the degree of the field extension Q(sqrt(2)) over Q.",
        "subject": "abstract_algebra",
        "choices": ["0", "2", "1", "3"],
        "answer": 1,
    },
    {
        "question": " What is 12 plus 7? ",
        "subject": "abstract_algebra",
        "choices": ["19", "21", "100", "5"],
        "answer": 0,
    },
    {
        "question": "Which number is prime?",
        "subject": "abstract_algebra",
        "choices": ["4", "6", "7", "9"],
        "answer": "C",
    },
]
ARC_YAML = """\
task: oc_arc_local
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
INCLUDED_YAML = """\
include: {include}
task: {task}
tag: null
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
training_split: null
validation_split: null
fewshot_split: null
test_split: test
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def lm_eval_tasks(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Task name → (its JSONL, our --task-format), with the YAMLs written into tmp_path/tasks."""
    import lm_eval

    installed = Path(lm_eval.__file__).parent / "tasks"
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    arc = write_jsonl(tmp_path / "arc.jsonl", ARC)
    mmlu = write_jsonl(tmp_path / "mmlu.jsonl", MMLU_ALGEBRA)
    hellaswag = write_jsonl(tmp_path / "hellaswag.jsonl", HELLASWAG)
    (tasks_dir / "oc_arc.yaml").write_text(ARC_YAML.format(data=arc))
    (tasks_dir / "oc_mmlu.yaml").write_text(
        INCLUDED_YAML.format(
            include=installed / "mmlu" / "default" / "mmlu_abstract_algebra.yaml", task="oc_mmlu_local", data=mmlu
        )
    )
    (tasks_dir / "oc_hellaswag.yaml").write_text(
        INCLUDED_YAML.format(
            include=installed / "hellaswag" / "hellaswag.yaml", task="oc_hellaswag_local", data=hellaswag
        )
    )
    return {
        "oc_arc_local": (arc, "arc"),
        "oc_mmlu_local": (mmlu, "mmlu"),
        "oc_hellaswag_local": (hellaswag, "hellaswag"),
    }


@pytest.mark.slow  # about 30 s: lm-evaluation-harness's import and three task loads
def test_loglik_agrees_with_lm_evaluation_harness(cli, tiny_server, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    from store.catalog import open_catalog

    tasks = lm_eval_tasks(tmp_path)
    reference = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": tiny_server.base_url + "/completions",
            "model": tiny_server.model,
            "tokenizer": str(tiny_model_dir),
            "tokenizer_backend": "huggingface",
        },
        tasks=list(tasks),
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        num_fewshot=0,
        log_samples=True,
    )

    cat = open_catalog()
    worst = 0.0
    for task_name, (path, fmt) in tasks.items():
        ours = cli("eval", "loglik", path, "--endpoint", tiny_server.base_url, "--task-format", fmt, "--json").json()
        items = load_task(path, fmt).items
        rows = {
            r["question_id"]: r["meta"] for r in cat.query("select * from answers where eval_id = ?", [ours["run_id"]])
        }
        samples = sorted(reference["samples"][task_name], key=lambda s: s["doc_id"])
        assert len(samples) == len(items) == len(rows)
        for sample in samples:
            item = items[sample["doc_id"]]
            mine = rows[item.item_id]
            # The same strings: our context and continuations are lm-eval's request arguments.
            assert [tuple(a) for a in sample["arguments"]] == [(item.context, c) for c in item.continuations]
            theirs = [float(r[0]) for r in sample["filtered_resps"]]
            assert mine["loglikelihoods"] == pytest.approx(theirs, abs=TOL)
            worst = max(worst, *(abs(a - b) for a, b in zip(mine["loglikelihoods"], theirs)))
            assert mine["greedy"] == [bool(r[1]) for r in sample["filtered_resps"]]
            assert mine["acc"] == sample["acc"] and mine["acc_norm"] == sample["acc_norm"]
        results = reference["results"][task_name]
        assert ours["metrics"]["acc"] == pytest.approx(results["acc,none"], abs=1e-12)
        assert ours["metrics"]["acc_norm"] == pytest.approx(results["acc_norm,none"], abs=1e-12)
        if isinstance(results.get("acc_stderr,none"), float):
            assert ours["metrics"]["acc_stderr"] == pytest.approx(results["acc_stderr,none"], abs=1e-9)
    print(f"\nlargest |log-likelihood difference| vs lm-evaluation-harness: {worst:.2e}")
    print(json.dumps({t: {k: v for k, v in reference["results"][t].items() if "acc" in k} for t in tasks}))
