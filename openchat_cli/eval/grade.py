"""`openchat eval grade`: grade exact-answer sets without a judge.

Methods, chosen per question:
- ``option``: multiple-choice questions (they have options): the chosen option letter.
- ``boxed``: the reply has a ``\\boxed{…}`` answer, or the expected answer is not a number.
- ``number``: the last number in the reply (after the last ``####`` when there is one).

An answer from which nothing can be extracted is graded 'error' (and counts as wrong in the
accuracy); the extracted answer is kept in ``raw``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from typing import Any

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.questions import SUITE_FORMAT, Question
from openchat_cli.eval.runs import eval_row, finish
from openchat_cli.eval.suite_rules import CODE_TASK_TYPES, lenient_grade, reference_grade, run_code_tasks
from openchat_cli.eval.summaries import GradeSummary
from store.catalog import Catalog

LETTERS = string.ascii_uppercase
NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|-?\.\d+")


# -- extraction ---------------------------------------------------------------------------------


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{…} (or \\fbox{…}), nested braces included."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def to_number(text: Any) -> float | None:
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return float(text)
    if not isinstance(text, str):
        return None
    cleaned = text.strip().strip("$").replace(",", "").replace("\\!", "").rstrip(".")
    cleaned = re.sub(r"\\text\{[^}]*\}|\\%|%|\\\$", "", cleaned).strip()
    frac = re.fullmatch(r"\\[dt]?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}", cleaned)
    if frac:
        cleaned = f"{frac.group(1)}/{frac.group(2)}"
    try:
        if "/" in cleaned:
            num, den = cleaned.split("/", 1)
            return float(Fraction(num.strip()) / Fraction(den.strip()))
        return float(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(text: str) -> str | None:
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    found = NUMBER_RE.findall(text)
    if not found:
        return None
    return re.sub(r"\s+", "", found[-1]).replace(",", "")


# A capital letter that is a token of its own: not part of a word or a number.
_STANDALONE = r"(?<![A-Za-z0-9]){letter}(?![A-Za-z0-9])"
_ANSWER_CUE = r"answer\s*(?:is|would be)?\s*[:：]?\s*(?:option\s*)?\**\s*"
_OPTION_PATTERNS = [
    # "the answer is (B)", "Answer: (b)"
    (re.compile(_ANSWER_CUE + r"\(([A-Za-z])\)", re.IGNORECASE)),
    # "The answer is B", "ANSWER: **C**": a capital standing alone after the cue
    (
        re.compile(
            r"(?<![A-Za-z])(?:[Aa]nswer|ANSWER)\s*(?:is|would be)?\s*[:：]?\s*(?:[Oo]ption\s*)?\**\s*"
            + _STANDALONE.format(letter="([A-Z])")
        )
    ),
    # "(C)" anywhere
    (re.compile(r"\(([A-Z])\)")),
]
_HEAD_LETTER = re.compile(r"\s*\**\s*\(?([A-Z])(?:[.):]|\**\s*$|\s+-)")


def is_letter_option(option: str) -> bool:
    """An option written as just a letter ("B", "(B)", "b."): never matched as text, since a
    single letter is also a word ("a", "I") or part of one."""
    core = option.strip().strip("().").strip()
    return len(core) == 1 and core.isalpha()


def extract_option(text: str, options: list[str]) -> str | None:
    """The chosen option letter, or None.

    A letter counts only as a token of its own ("B", "(B)", "B.", "answer is B"), never as part
    of a word; an option's *text* counts only when it is more than one letter and appears as
    whole words (and only one option's text does).
    """
    valid = LETTERS[: len(options)]
    boxed = extract_boxed(text)
    if boxed:
        letter = boxed.strip().strip("().$").replace("\\text{", "").replace("}", "").strip().upper()
        if len(letter) == 1 and letter in valid:
            return letter
    for pattern in _OPTION_PATTERNS:
        found = [m.upper() for m in pattern.findall(text)]
        found = [m for m in found if m in valid]
        if found:
            return found[-1]
    head = _HEAD_LETTER.match(text)
    if head and head.group(1) in valid:
        return head.group(1)
    texts = {i: o.strip() for i, o in enumerate(options) if not is_letter_option(o)}
    lowered = text.strip().lower().rstrip(".")
    for i, option in texts.items():
        if lowered == option.lower().rstrip("."):
            return LETTERS[i]
    mentioned = [
        i
        for i, option in texts.items()
        if re.search(r"(?<!\w)" + re.escape(option.rstrip(".")) + r"(?!\w)", text, flags=re.IGNORECASE)
    ]
    if len(mentioned) == 1:
        return LETTERS[mentioned[0]]
    return None


def normalize_text(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", str(text))
    text = text.replace("$", "").replace("\\left", "").replace("\\right", "")
    return re.sub(r"\s+", "", text).strip(".").lower()


def expected_number(value: Any) -> float | None:
    """A label as a number: 42, "1,000", "\\frac{1}{2}", or GSM8K's "… #### 42"; else None."""
    if isinstance(value, str) and "####" in value:
        found = extract_number(value)
        return to_number(found) if found is not None else None
    return to_number(value)


def _expected_values(label: Any) -> list[Any]:
    return list(label) if isinstance(label, list) else [label]


def grade_answer(question: Question, reply: str, code_result: tuple | None = None) -> dict[str, Any]:
    """{"verdict", "score", "raw" (extracted), "method", "expected"} for one reply."""
    meta = question.meta or {}
    label = meta.get("label")
    reply = reply or ""
    if meta.get("format") == SUITE_FORMAT:
        return grade_suite_answer(meta, reply, code_result)
    if meta.get("options"):
        expected = [str(v).upper() for v in _expected_values(label)]
        got = extract_option(reply, meta["options"])
        method = "option"
        ok = got is not None and got in expected
    else:
        expected_values = _expected_values(label)
        numeric = [expected_number(v) for v in expected_values]
        boxed = extract_boxed(reply)
        if boxed is not None or any(n is None for n in numeric):
            method = "boxed"
            got = boxed
            if got is None:
                phrase = re.findall(r"answer is[:\s]*([^\n]+?)(?:\.\s|\.?$)", reply, flags=re.IGNORECASE | re.MULTILINE)
                got = phrase[-1].strip() if phrase else None
            ok = False
            if got is not None:
                got_num = to_number(got)
                for value, num in zip(expected_values, numeric):
                    if got_num is not None and num is not None:
                        ok = ok or abs(got_num - num) <= 1e-6 * max(1.0, abs(num))
                    else:
                        ok = ok or normalize_text(got) == normalize_text(value)
        else:
            method = "number"
            got = extract_number(reply)
            got_num = to_number(got) if got is not None else None
            ok = got_num is not None and any(abs(got_num - n) <= 1e-6 * max(1.0, abs(n)) for n in numeric)
        expected = label
    if got is None:
        verdict = "error"
    else:
        verdict = "correct" if ok else "incorrect"
    return {
        "verdict": verdict,
        "score": 1.0 if verdict == "correct" else 0.0,
        "raw": got or "",
        "method": method,
        "expected": expected,
    }


def grade_suite_answer(meta: dict[str, Any], reply: str, code_result: tuple | None = None) -> dict[str, Any]:
    """A suite question: the verdict by the suite's reference rules (a fallback answer such as
    GPQA's "C" is scored, as the reference does; `matched` says whether the rule found an answer),
    and our lenient extraction's verdict beside it."""
    reference = reference_grade(meta, reply, code_result)
    lenient = lenient_grade(meta, reply)
    verdict = "correct" if reference.correct else "incorrect"
    out = {
        "verdict": verdict,
        "score": 1.0 if reference.correct else 0.0,
        "raw": reference.answer if isinstance(reference.answer, str) else str(reference.answer),
        "method": meta["task_type"],
        "expected": meta.get("label"),
        "matched": reference.matched,
        "lenient": None,
        "lenient_raw": None,
    }
    if reference.detail:
        out["detail"] = reference.detail
    if lenient is not None:
        out["lenient"] = ("correct" if lenient.correct else "incorrect") if lenient.matched else "error"
        out["lenient_raw"] = lenient.answer
    return out


def gradable(question: Question) -> bool:
    return (question.meta or {}).get("label") is not None


def _grade_row(
    run_id: str, answer_run_id: str, question: Question, replies: list[str], code_result: tuple | None = None
) -> dict[str, Any]:
    graded = grade_answer(question, replies[-1], code_result)
    suite = "matched" in graded
    meta: dict[str, Any] = {"expected": graded["expected"], "method": graded["method"], "category": question.category}
    if suite:
        meta.update(
            task_type=question.meta["task_type"],
            task_name=question.meta["task_name"],
            matched=graded["matched"],
            lenient=graded["lenient"],
            lenient_raw=graded["lenient_raw"],
        )
        if graded.get("detail"):
            meta["detail"] = graded["detail"]
    return {
        "eval_id": run_id,
        "question_id": question.question_id,
        "turn": len(replies),
        "mode": "exact",
        "answer_run_id": answer_run_id,
        "judge_model": None,
        "prompt_name": graded["method"],
        "raw": graded["raw"],
        "verdict": graded["verdict"],
        "score": graded["score"],
        "parse_ok": int(graded["matched"] if suite else graded["verdict"] != "error"),
        "meta": meta,
    }


def _run_code_answers(
    questions: dict[str, Question], answers: list[dict[str, Any]], skipped: dict[str, str]
) -> dict[str, tuple]:
    """Code-task replies (HumanEval) run as one batch in parallel sandboxes: question id → result."""
    code = [a for a in answers if questions[a["question_id"]].meta.get("task_type") in CODE_TASK_TYPES]
    if not code:
        return {}
    try:
        results = run_code_tasks([(questions[a["question_id"]].meta, (a["turns"] or [""])[-1]) for a in code])
    except ImportError as exc:
        for task_type in {questions[a["question_id"]].meta["task_type"] for a in code}:
            skipped[task_type] = f"no grader for {task_type}: {exc}"
        return {}
    return {a["question_id"]: result for a, result in zip(code, results)}


def run_grade(
    cat: Catalog, answer_ref: str, on_event: Callable[[str, dict[str, Any]], None] | None = None
) -> GradeSummary:
    """Grade every answer of a run; re-grading replaces the run's earlier grades. Returns the
    summary it stores as the run's metrics (with `unanswered`, and `skipped` when any).

    Suite questions are graded by their task type's reference rules (openchat_cli/eval/suite_rules.py);
    a task type whose grader is not installed is skipped and counted in `skipped`.
    """
    emit = on_event or (lambda kind, data: None)
    answer_run = eval_row(cat, answer_ref, "answer")
    run_a = answer_run["id"]
    questions = {r["question_id"]: Question.from_row(r) for r in cat.questions(run_a)}
    gradable_ids = {qid for qid, q in questions.items() if gradable(q)}
    if not gradable_ids:
        raise OpenchatError(
            f"{run_a} has no questions with an expected answer ('label'); grading needs a "
            f"multiple-choice or exact-answer set (use `eval judge` for open questions)"
        )

    def newest_grade_run() -> dict[str, Any] | None:
        return cat.latest_eval("grade", parent_id=run_a)

    # Found or made in one transaction: two grades of one run started together share the grade run.
    grade_run, _ = cat.find_or_add_eval(
        newest_grade_run,
        kind="grade",
        name=f"{answer_run.get('name') or answer_run.get('model')} graded",
        model=answer_run.get("model"),
        parent_id=run_a,
        questions_path=answer_run.get("questions_path"),
        questions_hash=answer_run.get("questions_hash"),
        config={"methods": ["option", "number", "boxed"]},
    )
    run_id = grade_run["id"]
    answers = [a for a in cat.answers(run_a) if a["question_id"] in gradable_ids]
    emit("start", {"run_id": run_id, "total": len(answers)})
    rows = []
    skipped: dict[str, str] = {}
    code_results = _run_code_answers(questions, answers, skipped)
    for done, answer in enumerate(answers, start=1):
        question = questions[answer["question_id"]]
        task_type = question.meta.get("task_type")
        if task_type not in skipped:
            try:
                rows.append(
                    _grade_row(
                        run_id, run_a, question, answer["turns"] or [""], code_results.get(answer["question_id"])
                    )
                )
            except ImportError as exc:  # e.g. coding/humaneval without its sandbox module
                skipped[task_type] = f"no grader for {task_type}: {exc}"
        emit("graded", {"done": done})
    # Re-grading replaces the run's grades: the old rows go and the new ones come in one transaction,
    # so a concurrent grade of the same run never meets half of them (or a unique-key clash).
    with cat.immediate():
        cat.write("delete from judgments where eval_id = ?", [run_id])
        cat.insert_many("judgments", rows)
    from openchat_cli.eval.report import grade_summary

    summary = replace(grade_summary(cat, run_id), unanswered=len(gradable_ids) - len(answers), skipped=skipped or None)
    finish(cat, run_id, "completed", summary.to_dict())
    return summary
