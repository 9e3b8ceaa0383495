"""Our suite grader against the reference post-processing (OpenChat's ochat/evaluation/
match_answer.py, installed as the test reference) on the same replies: for every task type in
its eval_data (humaneval aside), a deterministic sample of records, many reply shapes each.
Per-suite accuracy must agree within 0.5 points; the figures are printed (pytest -s)."""

from __future__ import annotations

import pytest

from openchat_cli.eval.suite_rules import reference_grade, solution_answer
from tests.eval.suite_replies import replies_for, sample_records

match_answer = pytest.importorskip("ochat.evaluation.match_answer")

TASK_TYPES = [
    "zs/agieval",
    "zs/bbh_mc_orca",
    "zs/truthfulqa_orca",
    "zs/gpqa",
    "fs_cothub/bbh",
    "fs_cothub/gsm8k",
    "fs_cothub/mmlu",
    "fs_cothub/math",
]
RECORDS_PER_TYPE = {"fs_cothub/math": 40}  # the reference's sympy grader is the slow one
DEFAULT_RECORDS = 60
TOLERANCE_POINTS = 0.5


def reference_verdict(task_type: str, record: dict, reply: str) -> tuple[bool, bool]:
    """What run_eval.py records: (is_matched, is_correct) after stripping one leading space."""
    reply = reply[1:] if reply.startswith(" ") else reply
    matched, answer = match_answer.MATCH_ANSWER_FUNCTION[task_type]({**record, "task_type": task_type}, reply)
    try:
        correct = answer in record["label"]
    except TypeError:
        correct = False
    return bool(matched), bool(correct)


def agreement(task_type: str) -> dict:
    n = ref_correct = our_correct = ref_unmatched = our_unmatched = same = 0
    for task_name, _line, record in sample_records(task_type, RECORDS_PER_TYPE.get(task_type, DEFAULT_RECORDS)):
        meta = {
            "format": "suite",
            "task_type": task_type,
            "task_name": task_name,
            "label": record["label"],
            "options": record.get("options"),
            "_metadata": record.get("_metadata"),
        }
        gold = solution_answer(meta) if task_type == "fs_cothub/math" else None
        for reply in replies_for(task_type, record, gold):
            ref_matched, ref_ok = reference_verdict(task_type, record, reply)
            ours = reference_grade(meta, reply)
            n += 1
            ref_correct += ref_ok
            our_correct += ours.correct
            ref_unmatched += not ref_matched
            our_unmatched += not ours.matched
            same += (ref_matched, ref_ok) == (ours.matched, ours.correct)
    return {
        "replies": n,
        "reference_accuracy": 100 * ref_correct / n,
        "our_accuracy": 100 * our_correct / n,
        "reference_unmatched": 100 * ref_unmatched / n,
        "our_unmatched": 100 * our_unmatched / n,
        "record_agreement": 100 * same / n,
    }


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_grade_agrees_with_reference(task_type):
    figures = agreement(task_type)
    print(
        f"\n{task_type}: {figures['replies']} replies, accuracy reference {figures['reference_accuracy']:.2f} "
        f"vs ours {figures['our_accuracy']:.2f}, unmatched {figures['reference_unmatched']:.2f} vs "
        f"{figures['our_unmatched']:.2f}, same verdict on {figures['record_agreement']:.2f}% of replies"
    )
    assert figures["replies"] >= 300
    assert abs(figures["reference_accuracy"] - figures["our_accuracy"]) <= TOLERANCE_POINTS
    assert abs(figures["reference_unmatched"] - figures["our_unmatched"]) <= TOLERANCE_POINTS
    if task_type != "fs_cothub/math":  # string rules are reproduced exactly, reply by reply
        assert figures["record_agreement"] == 100.0
    # the sample holds both verdicts, so agreement is not trivially reached
    assert 5 < figures["reference_accuracy"] < 95


def test_eval_grade_tables_match_the_reference_viewer(cli):
    """Through the catalog and `eval grade --json`: per task type, accuracy and unmatched equal the
    means the reference viewer (view_results.py) takes over the reference's verdicts."""
    from collections import Counter

    from openchat_cli.eval.questions import Question
    from store.catalog import open_catalog

    cat = open_catalog()
    run = cat.add_eval(
        kind="answer", name="synthetic", model="synthetic", endpoint="http://synthetic/v1", questions_hash="synthetic"
    )
    questions, answers, expected = [], [], Counter()
    for task_type in TASK_TYPES:
        for task_name, line, record in sample_records(task_type, 8):
            meta = {
                "format": "suite",
                "task_type": task_type,
                "task_name": task_name,
                "label": record["label"],
                "options": record.get("options"),
                "_metadata": record.get("_metadata"),
            }
            gold = solution_answer(meta) if task_type == "fs_cothub/math" else None
            for k, reply in enumerate(replies_for(task_type, record, gold)):
                qid = f"{task_name}/{line}#{k}"
                questions.append(Question(qid, task_name, [record["question"]], None, meta).row(run))
                answers.append({"eval_id": run, "question_id": qid, "model": "synthetic", "turns": [reply]})
                matched, correct = reference_verdict(task_type, record, reply)
                expected[task_type, "n"] += 1
                expected[task_type, "correct"] += correct
                expected[task_type, "unmatched"] += not matched
    cat.insert_many("questions", questions)
    cat.insert_many("answers", answers)
    graded = cli("eval", "grade", run, "--json").json()[0]
    for task_type in TASK_TYPES:
        cell = graded["suite"]["task_types"][task_type]
        n = expected[task_type, "n"]
        assert cell["questions"] == n
        assert abs(100 * cell["accuracy"] - 100 * expected[task_type, "correct"] / n) <= TOLERANCE_POINTS
        assert abs(100 * cell["unmatched"] - 100 * expected[task_type, "unmatched"] / n) <= TOLERANCE_POINTS
        assert cell["lenient_accuracy"] is not None
    assert graded["graded"] == len(answers)
