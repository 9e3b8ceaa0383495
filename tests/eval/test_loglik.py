"""`openchat eval loglik`: task files read as lm-evaluation-harness's task configs read them, and
scoring through the real server (tiny model) checked against a direct forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.mc_tasks import hellaswag_preprocess, load_task
from tests.eval.conftest import write_jsonl
from tests.fake_openai import HoldingProxy

ARC = [
    {
        "id": "Mercury_1",
        "question": "What is the capital of France?",
        "choices": {"text": ["Paris", "Rome", "the sea", "12"], "label": ["A", "B", "C", "D"]},
        "answerKey": "A",
    },
    {
        "id": "Mercury_2",
        "question": "Water boils at how many degrees Celsius?",
        "choices": {"text": ["7", "100", "19"], "label": ["1", "2", "3"]},
        "answerKey": "2",
    },
    {
        "id": "Mercury_3",
        "question": "Which animal jumps over the lazy dog?",
        "choices": {"text": ["The quick brown fox", "A prime number", "Hello world"], "label": ["A", "B", "C"]},
        "answerKey": "A",
    },
    {
        "id": "Mercury_4",
        "question": "What is 12 plus 7?",
        "choices": {"text": ["19", "1000", "3.14", "-5"], "label": ["A", "B", "C", "D"]},
        "answerKey": "A",
    },
]
MMLU = [
    {
        "question": " What is 12 plus 7? ",
        "subject": "high_school_mathematics",
        "choices": ["19", "21", "100", "5"],
        "answer": 0,
    },
    {
        "question": "Why is the sky blue?",
        "subject": "astronomy",
        "choices": ["Rayleigh scattering", "The sea", "Paris", "Prime numbers"],
        "answer": "A",
    },
]
HELLASWAG = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "label": "3",
    },
    {
        "ind": 92,
        "activity_label": "Home and Garden",
        "ctx_a": "[header] How to grow a plant [title] Water it.",
        "ctx_b": "THEN it",
        "endings": ["grows  tall [step] fast.", "dies.", "is a fox.", "boils at 100 degrees."],
        "label": 0,
    },
]
CHOICE = [
    {
        "id": "c1",
        "question": "What is the capital of France?",
        "options": ["Rome", "Paris"],
        "label": "B",
        "category": "geo",
    },
    {
        "id": "c2",
        "question": "What is 12 plus 7?",
        "options": {"A": "19", "B": "7", "C": "12"},
        "label": 0,
        "category": "math",
    },
]


# -- reading task files -----------------------------------------------------------------------------
def test_arc_rows(tmp_path):
    task = load_task(write_jsonl(tmp_path / "arc.jsonl", ARC))
    assert task.format == "arc" and len(task.items) == 4
    first, second = task.items[:2]
    assert first.item_id == "Mercury_1"
    assert first.context == "Question: What is the capital of France?\nAnswer:"
    assert first.continuations == [" Paris", " Rome", " the sea", " 12"] and first.gold == [0]
    assert second.gold == [1]  # answerKey "2" among labels "1", "2", "3"


def test_mmlu_rows(tmp_path):
    task = load_task(write_jsonl(tmp_path / "mmlu.jsonl", MMLU))
    first, second = task.items
    assert task.format == "mmlu"
    assert first.context == (
        "The following are multiple choice questions (with answers) about high "
        "school mathematics.\n\nWhat is 12 plus 7?\nA. 19\nB. 21\nC. 100\nD. 5\n"
        "Answer:"
    )
    assert first.choices == ["A", "B", "C", "D"] and first.gold == [0]
    assert first.category == "high_school_mathematics" and second.gold == [0]


def test_hellaswag_rows(tmp_path):
    task = load_task(write_jsonl(tmp_path / "hs.jsonl", HELLASWAG))
    first, second = task.items
    assert task.format == "hellaswag"
    # ctx_b is capitalized (str.capitalize lowers the rest), then the WikiHow cleanup
    assert first.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert first.gold == [3] and first.choices[0] == "is using wrap to wrap a pair of skis."
    assert second.context == "Home and Garden: How to grow a plant. Water it. Then it"
    assert second.choices[0] == "grows tall fast."
    assert hellaswag_preprocess(" a [title] b [x]c  d ") == "a. b c d"


def test_openchat_choice_rows(tmp_path):
    task = load_task(write_jsonl(tmp_path / "mc.jsonl", CHOICE))
    first, second = task.items
    assert task.format == "choice"
    assert first.context == "Question: What is the capital of France?\nAnswer:"
    assert first.choices == ["Rome", "Paris"] and first.gold == [1] and first.category == "geo"
    assert second.choices == ["19", "7", "12"] and second.gold == [0]


@pytest.mark.parametrize(
    "record,fmt,message",
    [
        (
            {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "C"},
            "auto",
            "field 'answerKey' is 'C'",
        ),
        ({"question": "q", "choices": {"text": ["a", "b"]}, "answerKey": "A"}, "auto", "'choices.label'"),
        ({"question": "q", "choices": ["a", "b"], "answer": 5}, "auto", "field 'answer' is 5"),
        ({"question": 3, "choices": ["a", "b"], "answer": 0}, "auto", "field 'question' must be a string"),
        ({"activity_label": "x", "ctx": "y", "endings": ["a"], "label": 0}, "auto", "field 'endings'"),
        ({"activity_label": "x", "ctx": "y", "endings": ["a", "b"]}, "auto", "missing field 'label'"),
        ({"prompt": "hi"}, "auto", "cannot tell the format"),
        ({"question": "q", "options": ["a", "b"], "label": "A"}, "mmlu", "missing field 'choices'"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, record, fmt, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(OpenchatError) as info:
        load_task(path, fmt)
    assert f"{path}:1" in info.value.message and message in info.value.message


def test_bad_line_number_and_json(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ARC[0]) + "\n\n" + json.dumps({**ARC[1], "answerKey": None}) + "\n")
    with pytest.raises(OpenchatError, match=r"bad.jsonl:3: field 'answerKey'"):
        load_task(path)
    path.write_text(json.dumps(ARC[0]) + "\n{oops\n")
    with pytest.raises(OpenchatError, match=r"bad.jsonl:2: invalid JSON"):
        load_task(path)
    with pytest.raises(OpenchatError, match="does not exist"):
        load_task(tmp_path / "missing.jsonl")


# -- against the real server --------------------------------------------------------------------
@pytest.fixture(scope="module")
def direct_loglik(tiny_model_dir, tiny_tokenizer):
    """log P(continuation | context) from one forward pass, split as lm-evaluation-harness splits
    (context tokens = encode(context), the rest of encode(context + continuation))."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()

    def run(context: str, continuation: str) -> float:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = tiny_tokenizer(context, add_special_tokens=False).input_ids
        whole = tiny_tokenizer(context + continuation, add_special_tokens=False).input_ids
        with torch.inference_mode():
            scores = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
        return sum(float(scores[j - 1, whole[j]]) for j in range(len(ctx), len(whole)))

    return run


def test_loglik_run_scores_resumes_and_reports(cli, tiny_server, tmp_path, direct_loglik):
    from store.catalog import open_catalog

    path = write_jsonl(tmp_path / "arc.jsonl", ARC)
    first = cli("eval", "loglik", path, "--endpoint", tiny_server.base_url, "--limit", "2", "--json").json()
    assert first["status"] == "completed" and first["scored_now"] == 2
    run_id = first["run_id"]
    # The same command without --limit continues the run: only the other two are scored.
    full = cli("eval", "loglik", path, "--endpoint", tiny_server.base_url, "--concurrency", "3", "--json").json()
    assert full["run_id"] == run_id and full["resumed"] and full["already"] == 2
    assert full["scored_now"] == 2
    metrics = full["metrics"]
    assert metrics["scored"] == 4

    cat = open_catalog()
    rows = {r["question_id"]: r for r in cat.query("select * from answers where eval_id = ?", [run_id])}
    task = load_task(path)
    expected_acc, expected_norm = [], []
    for item in task.items:
        meta = rows[item.item_id]["meta"]
        want = [direct_loglik(item.context, c) for c in item.continuations]
        assert meta["loglikelihoods"] == pytest.approx(want, abs=1e-4)
        best = max(range(len(want)), key=lambda i: (want[i], -i))
        best_norm = max(range(len(want)), key=lambda i: (want[i] / len(item.choices[i]), -i))
        assert meta["pred"] == best and meta["pred_norm"] == best_norm
        expected_acc.append(float(best in item.gold))
        expected_norm.append(float(best_norm in item.gold))
    assert metrics["acc"] == pytest.approx(sum(expected_acc) / 4)
    assert metrics["acc_norm"] == pytest.approx(sum(expected_norm) / 4)
    assert metrics["acc_ci"] is not None and "acc_stderr" in metrics

    report = cli("eval", "report", run_id, "--json").json()
    (summary,) = report["loglik"]
    assert summary["run_id"] == run_id and summary["acc"] == metrics["acc"]
    table = cli("eval", "report", run_id)
    assert "log-likelihood" in table.stdout and run_id in table.stdout
    listed = cli("catalog", "list", "evals", "--json").json()
    assert any(r["id"] == run_id and r["kind"] == "loglik" for r in listed)


def test_loglik_bad_input_is_a_clear_error(cli, tiny_server, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [ARC[0], {"question": "q", "choices": ["a", "b"]}])
    result = cli("eval", "loglik", path, "--endpoint", tiny_server.base_url, expect=2)
    assert "bad.jsonl:2" in result.stderr and "'choices'" in result.stderr and "arc" in result.stderr
    result = cli("eval", "loglik", path, "--endpoint", tiny_server.base_url, "--task-format", "gsm8k", expect=2)
    assert "--task-format" in result.stderr


def test_prompt_too_long_fails_only_that_question(cli, tiny_server, tmp_path):
    long = {**ARC[0], "id": "long", "question": "word " * 3000}
    path = write_jsonl(tmp_path / "arc.jsonl", [ARC[1], long])
    result = cli("eval", "loglik", path, "--endpoint", tiny_server.base_url, "--json", expect=1)
    assert "long" in result.stderr and "context length" in result.stderr
    body = json.loads(result.stdout)
    assert body["metrics"]["scored"] == 1 and len(body["errors"]) == 1


def test_terminated_run_resumes_without_rescoring(cli, tiny_server, tmp_path, openchat_home, request):
    """SIGTERM mid-run: the run is marked interrupted with every finished question kept; the
    same command then scores only the rest, each question exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from store.catalog import open_catalog

    rows = [
        {
            "id": f"q{i}",
            "question": f"What is {i} plus 7?",
            "choices": {"text": [str(i + 7), str(i)], "label": ["A", "B"]},
            "answerKey": "A",
        }
        for i in range(150)
    ]
    path = write_jsonl(tmp_path / "many.jsonl", rows)
    # The run goes through a pass-through that holds it after 5 questions (2 choices each), so
    # SIGTERM lands mid-run however fast the server and however slow this process are.
    proxy = HoldingProxy(tiny_server.url).start()
    request.addfinalizer(proxy.stop)
    endpoint = proxy.base_url
    proxy.gate.hold(after=10)
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "OPENCHAT_HOME": str(openchat_home),
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "openchat_cli.app", "eval", "loglik", str(path), "-e", endpoint, "-c", "1"],
        env=env,
        cwd=str(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cat = open_catalog()
    deadline = time.monotonic() + 120
    while cat.count("answers") < 5 or not proxy.gate.waiting:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no 5 questions scored in 120 s ({cat.count('answers')})"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    (run,) = cat.query("select * from evals where kind = 'loglik'")
    kept = cat.count("answers", eval_id=run["id"])
    assert proc.returncode == 130 and run["status"] == "interrupted"
    assert 5 <= kept < len(rows)

    proxy.gate.release()
    out = cli("eval", "loglik", path, "-e", endpoint, "--json").json()
    assert out["run_id"] == run["id"] and out["already"] == kept
    assert out["scored_now"] == len(rows) - kept and out["status"] == "completed"
    counts = cat.query(
        "select question_id, count(*) as n from answers where eval_id = ? group by question_id", [run["id"]]
    )
    assert len(counts) == len(rows) and all(c["n"] == 1 for c in counts)
