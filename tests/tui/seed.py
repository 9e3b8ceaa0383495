"""Seed a catalog with eval runs exactly as `openchat eval` stores them (.notes/EVALSCHEMA.md):
two answer runs, a pairwise judge run (with swapped orders), a single-answer judge run and a
grade run. Fixed ids and timestamps keep the verdict snapshots stable.
"""

from __future__ import annotations

from store.catalog import Catalog

ANSWER_A = "ev-a0000001"
ANSWER_B = "ev-b0000002"
PAIRWISE = "ev-c0000003"
SINGLE = "ev-d0000004"
GRADE = "ev-e0000005"

QUESTIONS = [
    # question_id, category, turns, reference
    ("81", "writing", ["Write a haiku about the sea.", "Now make it rhyme."], None),
    ("82", "writing", ["Describe autumn in one sentence."], None),
    ("101", "math", ["What is 12 + 7?"], ["19"]),
    ("102", "math", ["What is 3 * 14?"], ["42"]),
    ("121", "coding", ["Write a Python function that adds two numbers."], None),
]

ANSWERS_A = {
    "81": [
        "Waves fold into foam,\nsalt wind carries gulls away,\nthe tide keeps its time.",
        "The sea rolls in blue,\nthe gulls cry out as they flew,\nthe tide says adieu.",
    ],
    "82": ["Autumn is when the trees let go of their leaves in red and gold."],
    "101": ["12 + 7 = 19."],
    "102": ["3 * 14 = 42, so the answer is 42."],
    "121": ["```python\ndef add(a, b):\n    return a + b\n```"],
}
ANSWERS_B = {
    "81": ["The sea is big and blue.", "The sea is big, it's true."],
    "82": ["Leaves fall down."],
    "101": ["The answer is 20."],
    "102": ["42"],
    "121": ["def add(a, b): return a + b"],
}

# (question_id, turn, order, verdict) for the pairwise judge; verdict mapped back to the models.
PAIRWISE_VERDICTS = [
    ("81", 1, "AB", "A"),
    ("81", 1, "BA", "A"),  # A wins both ways
    ("81", 2, "AB", "A"),
    ("81", 2, "BA", "B"),  # flipped on swap
    ("82", 1, "AB", "A"),
    ("82", 1, "BA", "tie"),  # win
    ("101", 1, "AB", "A"),
    ("101", 1, "BA", "A"),  # win
    ("102", 1, "AB", "B"),
    ("102", 1, "BA", "A"),  # flipped on swap
    ("121", 1, "AB", "tie"),
    ("121", 1, "BA", "error"),  # tie, one unparseable
]

SINGLE_SCORES = {"81": [9.0, 7.0], "82": [6.0], "101": [10.0], "102": [8.0], "121": [None]}

GRADES = [("101", "19", "19", "correct", "number"), ("102", "41", "42", "incorrect", "number")]

STAMP = "2026-01-0{}T10:00:00+00:00"


def _raw_pairwise(order: str, verdict: str) -> str:
    if verdict == "error":
        return "Both answers have merits and I cannot decide between them."
    shown = {"A": "A" if order == "AB" else "B", "B": "B" if order == "AB" else "A"}.get(verdict)
    tag = "[[C]]" if verdict == "tie" else f"[[{shown}]]"
    return (
        f"Assistant {'A' if order == 'AB' else 'B'}'s answer follows the instructions closely "
        f"and is more helpful; the other is brief.\n\nFinal verdict: {tag}"
    )


def seed_eval_runs(cat: Catalog) -> dict[str, str]:
    """Insert the runs; returns their ids by role."""

    def run(id_, kind, name, model, day, **extra):
        row = {
            "id": id_,
            "kind": kind,
            "name": name,
            "model": model,
            "status": "completed",
            "questions_path": "/data/questions.jsonl",
            "questions_hash": "q1",
            "endpoint": "http://127.0.0.1:18888/v1",
            "config": extra.pop("config", {}),
            "metrics": {},
            "command": "openchat eval …",
            "created_at": STAMP.format(day),
            "finished_at": STAMP.format(day),
        }
        row.update(extra)
        cat.insert("evals", row)

    run(ANSWER_A, "answer", "tiny-sft", "tiny-sft", 1, config={"temperature": 0.0, "max_tokens": 256})
    run(ANSWER_B, "answer", "baseline", "baseline-model", 1, config={"temperature": 0.0})
    for eval_id, answers in ((ANSWER_A, ANSWERS_A), (ANSWER_B, ANSWERS_B)):
        for qid, category, turns, reference in QUESTIONS:
            cat.insert(
                "questions",
                {
                    "eval_id": eval_id,
                    "question_id": qid,
                    "category": category,
                    "turns": turns,
                    "reference": reference,
                    "meta": {"format": "mt-bench"},
                },
            )
            cat.insert(
                "answers",
                {
                    "eval_id": eval_id,
                    "question_id": qid,
                    "model": "tiny-sft" if eval_id == ANSWER_A else "baseline-model",
                    "turns": answers[qid],
                    "prompt_tokens": 20,
                    "completion_tokens": 30,
                    "latency_s": 0.5,
                    "meta": {},
                    "created_at": STAMP.format(1),
                },
            )

    run(
        PAIRWISE,
        "judge",
        "pair",
        "judge-model",
        3,
        parent_id=ANSWER_A,
        baseline_id=ANSWER_B,
        config={"mode": "pairwise", "prompts": "pair-v2"},
    )
    cat.insert_many(
        "judgments",
        [
            {
                "eval_id": PAIRWISE,
                "question_id": qid,
                "turn": turn,
                "mode": "pairwise",
                "answer_run_id": ANSWER_A,
                "baseline_run_id": ANSWER_B,
                "order": order,
                "judge_model": "judge-model",
                "prompt_name": "pair-v2" if turn == 1 else "pair-v2-multi-turn",
                "raw": _raw_pairwise(order, verdict),
                "verdict": verdict,
                "score": None,
                "parse_ok": 0 if verdict == "error" else 1,
                "meta": {},
                "created_at": STAMP.format(3),
            }
            for qid, turn, order, verdict in PAIRWISE_VERDICTS
        ],
    )

    run(
        SINGLE,
        "judge",
        "single",
        "judge-model",
        4,
        parent_id=ANSWER_A,
        config={"mode": "single", "prompts": "single-v1"},
    )
    rows = []
    for qid, scores in SINGLE_SCORES.items():
        for turn, score in enumerate(scores, 1):
            rows.append(
                {
                    "eval_id": SINGLE,
                    "question_id": qid,
                    "turn": turn,
                    "mode": "single",
                    "answer_run_id": ANSWER_A,
                    "baseline_run_id": None,
                    "order": None,
                    "judge_model": "judge-model",
                    "prompt_name": "single-v1",
                    "raw": (
                        f"The answer is clear and correct. Rating: [[{score:g}]]"
                        if score is not None
                        else "I refuse to rate this."
                    ),
                    "verdict": f"{score:g}" if score is not None else "error",
                    "score": score,
                    "parse_ok": 1 if score is not None else 0,
                    "meta": {},
                    "created_at": STAMP.format(4),
                }
            )
    cat.insert_many("judgments", rows)

    run(GRADE, "grade", "grade", None, 5, parent_id=ANSWER_A, config={"method": "auto"})
    cat.insert_many(
        "judgments",
        [
            {
                "eval_id": GRADE,
                "question_id": qid,
                "turn": 1,
                "mode": "exact",
                "answer_run_id": ANSWER_A,
                "baseline_run_id": None,
                "order": None,
                "judge_model": None,
                "prompt_name": None,
                "raw": got,
                "verdict": verdict,
                "score": 1.0 if verdict == "correct" else 0.0,
                "parse_ok": 1,
                "meta": {"expected": expected, "method": method},
                "created_at": STAMP.format(5),
            }
            for qid, got, expected, verdict, method in GRADES
        ],
    )
    for child, parent, rel in (
        (PAIRWISE, ANSWER_A, "judges"),
        (PAIRWISE, ANSWER_B, "baseline"),
        (SINGLE, ANSWER_A, "judges"),
        (GRADE, ANSWER_A, "judges"),
    ):
        cat.link(child, parent, rel)
    return {"answer_a": ANSWER_A, "answer_b": ANSWER_B, "pairwise": PAIRWISE, "single": SINGLE, "grade": GRADE}
