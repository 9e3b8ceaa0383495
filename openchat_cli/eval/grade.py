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
from fractions import Fraction
from typing import Any

from openchat_cli.errors import OpenchatError
from openchat_cli.eval.questions import Question
from openchat_cli.eval.runs import eval_row, finish
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
                return text[i + 1:j].strip()
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


def extract_option(text: str, options: list[str]) -> str | None:
    valid = LETTERS[: len(options)]
    boxed = extract_boxed(text)
    if boxed:
        letter = boxed.strip().strip("().$").replace("\\text{", "").replace("}", "").strip().upper()
        if len(letter) == 1 and letter in valid:
            return letter
    patterns = [
        (r"answer\s*(?:is|would be)?\s*[:：]?\s*(?:option\s*)?\**\s*\(([A-Za-z])\)", re.IGNORECASE),
        (r"(?:[Aa]nswer|ANSWER)\s*(?:is|would be)?\s*[:：]?\s*(?:[Oo]ption\s*)?\**\s*([A-Z])(?![A-Za-z])", 0),
        (r"\(([A-Z])\)", 0),
    ]
    for pattern, flags in patterns:
        found = [m.upper() for m in re.findall(pattern, text, flags=flags)]
        found = [m for m in found if m in valid]
        if found:
            return found[-1]
    head = re.match(r"\s*\**\s*\(?([A-Z])(?:[.):]|\s*$|\s+-)", text)
    if head and head.group(1) in valid:
        return head.group(1)
    lowered = text.strip().lower().rstrip(".")
    for i, option in enumerate(options):
        if lowered == option.strip().lower().rstrip("."):
            return LETTERS[i]
    mentioned = [i for i, o in enumerate(options) if o.strip() and o.strip().lower() in text.lower()]
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


def grade_answer(question: Question, reply: str) -> dict[str, Any]:
    """{"verdict", "score", "raw" (extracted), "method", "expected"} for one reply."""
    meta = question.meta or {}
    label = meta.get("label")
    reply = reply or ""
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
    return {"verdict": verdict, "score": 1.0 if verdict == "correct" else 0.0, "raw": got or "",
            "method": method, "expected": expected}


def gradable(question: Question) -> bool:
    return (question.meta or {}).get("label") is not None


def run_grade(cat: Catalog, answer_ref: str) -> dict[str, Any]:
    """Grade every answer of a run; re-grading replaces the run's earlier grades. Returns metrics."""
    answer_run = eval_row(cat, answer_ref, "answer")
    run_a = answer_run["id"]
    questions = {r["question_id"]: Question.from_row(r) for r in cat.rows("questions", "eval_id = ?", [run_a])}
    gradable_ids = {qid for qid, q in questions.items() if gradable(q)}
    if not gradable_ids:
        raise OpenchatError(f"{run_a} has no questions with an expected answer ('label'); grading needs a "
                            f"multiple-choice or exact-answer set (use `eval judge` for open questions)")
    existing = cat.query("select * from evals where kind = 'grade' and parent_id = ? "
                         "order by created_at desc, rowid desc limit 1", [run_a])
    if existing:
        run_id = existing[0]["id"]
        cat._write(lambda: cat.db.execute("delete from judgments where eval_id = ?", [run_id]))
    else:
        run_id = cat.add_eval(kind="grade", name=f"{answer_run.get('name') or answer_run.get('model')} graded",
                              model=answer_run.get("model"), parent_id=run_a,
                              questions_path=answer_run.get("questions_path"),
                              questions_hash=answer_run.get("questions_hash"), config={"methods": ["option", "number", "boxed"]})
    rows = []
    for answer in cat.rows("answers", "eval_id = ?", [run_a]):
        qid = answer["question_id"]
        if qid not in gradable_ids:
            continue
        question = questions[qid]
        replies = answer["turns"] or [""]
        graded = grade_answer(question, replies[-1])
        rows.append({"eval_id": run_id, "question_id": qid, "turn": len(replies), "mode": "exact",
                     "answer_run_id": run_a, "judge_model": None, "prompt_name": graded["method"],
                     "raw": graded["raw"], "verdict": graded["verdict"], "score": graded["score"],
                     "parse_ok": int(graded["verdict"] != "error"),
                     "meta": {"expected": graded["expected"], "method": graded["method"],
                              "category": question.category}})
    cat.insert_many("judgments", rows)
    from openchat_cli.eval.report import grade_summary

    metrics = grade_summary(cat, run_id)
    unanswered = len(gradable_ids) - len(rows)
    metrics["unanswered"] = unanswered
    finish(cat, run_id, "completed", metrics)
    metrics["run_id"] = run_id
    return metrics
