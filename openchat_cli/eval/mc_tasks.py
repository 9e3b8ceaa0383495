"""Local multiple-choice files → (context, continuations, gold) as lm-evaluation-harness builds them.

Log-likelihood scoring compares continuations, so the numbers are only comparable with
lm-evaluation-harness's when the strings are the same to the character. Each format follows
that task's YAML in lm-evaluation-harness 0.4 (zero-shot): context = description +
`doc_to_text`, continuation = `target_delimiter` (" ") + each `doc_to_choice` entry.

- ``arc`` (ARC-Easy / ARC-Challenge rows): ``question``, ``choices: {text, label}``,
  ``answerKey``. Context ``"Question: {question}\\nAnswer:"``, choices the option texts.
- ``mmlu`` (cais/mmlu rows): ``question``, ``choices`` (list), ``answer`` (index or letter),
  optional ``subject`` (gives the description "The following are multiple choice questions
  (with answers) about {subject}.\\n\\n"). Context ``"{question.strip()}\\nA. …\\nB. …\\nAnswer:"``,
  choices the letters.
- ``hellaswag`` (Rowan/hellaswag rows): ``activity_label``, ``ctx_a`` + ``ctx_b`` (or ``ctx``),
  ``endings``, ``label``; the task's `preprocess` (" [title]" → ". ", "[…]" removed, double
  spaces collapsed) on the query and on each ending.
- ``choice`` (OpenChat's multiple-choice JSONL): ``question``, ``options`` (list or A/B/…
  mapping), ``label`` (letter, index, or a list of them); scored like ARC, on the option texts.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError, where
from openchat_cli.eval.questions import BadField, read_options

TASK_FORMATS = ("auto", "arc", "mmlu", "hellaswag", "choice")
LETTERS = string.ascii_uppercase
TARGET_DELIMITER = " "


@dataclass
class McItem:
    """One multiple-choice question, ready to score."""

    item_id: str
    context: str
    choices: list[str]  # doc_to_choice: without the target delimiter
    gold: list[int]  # indices of the correct choices (usually one)
    category: str | None = None
    source: dict[str, Any] = field(default_factory=dict)  # where it came from: line, format

    @property
    def continuations(self) -> list[str]:
        return [TARGET_DELIMITER + c for c in self.choices]


@dataclass
class McTask:
    path: Path
    format: str
    items: list[McItem]
    hash: str


# -- field readers ------------------------------------------------------------------------------
def _str(record: dict, key: str) -> str:
    value = record.get(key)
    if value is None:
        raise BadField(f"missing field '{key}'", key)
    if not isinstance(value, str):
        raise BadField(f"field '{key}' must be a string, got {type(value).__name__}", key)
    return value


def _str_list(value: Any, key: str) -> list[str]:
    if value is None:
        raise BadField(f"missing field '{key}'", key)
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, str) for v in value):
        raise BadField(f"field '{key}' must be a list of at least two strings", key)
    if len(value) > len(LETTERS):
        raise BadField(f"field '{key}' has {len(value)} entries; at most {len(LETTERS)}", key)
    return list(value)


def _index(value: Any, n: int, key: str, labels: list[str] | None = None) -> int:
    """A gold index from an int, a digit string, a letter, or one of `labels`."""
    if isinstance(value, bool):
        raise BadField(f"field '{key}' must be an index or a letter, got a boolean", key)
    if labels is not None:
        if str(value) not in labels:
            raise BadField(f"field '{key}' is '{value}', not one of the labels {labels}", key)
        return labels.index(str(value))
    if isinstance(value, str):
        text = value.strip().strip("().")
        if text.isdigit():
            value = int(text)
        elif len(text) == 1 and text.upper() in LETTERS[:n]:
            return LETTERS.index(text.upper())
        else:
            raise BadField(
                f"field '{key}' is '{value}': expected an index 0-{n - 1} or a letter A-{LETTERS[n - 1]}", key
            )
    if not isinstance(value, int):
        raise BadField(f"field '{key}' must be an index or a letter", key)
    if not 0 <= value < n:
        raise BadField(f"field '{key}' is {value}, out of range for {n} choices", key)
    return value


def _item_id(record: dict, number: int) -> str:
    for key in ("id", "question_id", "ind"):
        value = record.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return str(number)


# -- the formats --------------------------------------------------------------------------------
def hellaswag_preprocess(text: str) -> str:
    """HellaSwag's cleanup of WikiHow artifacts, as its lm-evaluation-harness task does it."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _arc(record: dict) -> tuple[str, list[str], list[int], str | None]:
    question = _str(record, "question")
    choices = record.get("choices")
    if not isinstance(choices, dict):
        raise BadField("field 'choices' must be an object with 'text' and 'label' lists", "choices")
    texts = _str_list(choices.get("text"), "choices.text")
    labels = choices.get("label")
    if not isinstance(labels, list) or len(labels) != len(texts):
        raise BadField("field 'choices.label' must be a list as long as 'choices.text'", "choices.label")
    if "answerKey" not in record:
        raise BadField("missing field 'answerKey'", "answerKey")
    gold = _index(record["answerKey"], len(texts), "answerKey", [str(lab) for lab in labels])
    return f"Question: {question}\nAnswer:", texts, [gold], None


def _mmlu(record: dict) -> tuple[str, list[str], list[int], str | None]:
    question = _str(record, "question")
    choices = _str_list(record.get("choices"), "choices")
    if "answer" not in record:
        raise BadField("missing field 'answer'", "answer")
    gold = _index(record["answer"], len(choices), "answer")
    subject = record.get("subject")
    description = ""
    if isinstance(subject, str) and subject.strip():
        description = (
            f"The following are multiple choice questions (with answers) about {' '.join(subject.split('_'))}.\n\n"
        )
    lines = [question.strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    context = description + "\n".join(lines) + "\nAnswer:"
    return context, list(LETTERS[: len(choices)]), [gold], subject if isinstance(subject, str) else None


def _hellaswag(record: dict) -> tuple[str, list[str], list[int], str | None]:
    label = _str(record, "activity_label")
    if "ctx_a" in record or "ctx_b" in record:
        ctx = _str(record, "ctx_a") + " " + _str(record, "ctx_b").capitalize()
    else:
        ctx = _str(record, "ctx")
    endings = _str_list(record.get("endings"), "endings")
    if "label" not in record:
        raise BadField("missing field 'label'", "label")
    gold = _index(record["label"], len(endings), "label")
    return (hellaswag_preprocess(label + ": " + ctx), [hellaswag_preprocess(e) for e in endings], [gold], label)


def _choice(record: dict) -> tuple[str, list[str], list[int], str | None]:
    question = _str(record, "question")
    options = read_options(record, at_least=2)
    if "label" not in record:
        raise BadField("missing field 'label'", "label")
    labels = record["label"] if isinstance(record["label"], list) else [record["label"]]
    if not labels:
        raise BadField("field 'label' is empty", "label")
    gold = sorted({_index(v, len(options), "label") for v in labels})
    category = record.get("category") or record.get("dataset")
    return (f"Question: {question}\nAnswer:", options, gold, category if isinstance(category, str) else None)


READERS = {"arc": _arc, "mmlu": _mmlu, "hellaswag": _hellaswag, "choice": _choice}


def detect(record: Any) -> str:
    if not isinstance(record, dict):
        raise BadField(f"expected a JSON object, got {type(record).__name__}")
    if "answerKey" in record:
        return "arc"
    if "endings" in record:
        return "hellaswag"
    if "options" in record:
        return "choice"
    if "choices" in record and "answer" in record:
        return "mmlu"
    raise BadField(
        "cannot tell the format: expected ARC ('question', 'choices', 'answerKey'), MMLU "
        "('question', 'choices', 'answer'), HellaSwag ('ctx', 'endings', 'label') or "
        "OpenChat ('question', 'options', 'label') fields; or pass --task-format"
    )


def parse_record(record: Any, number: int, fmt: str) -> McItem:
    if not isinstance(record, dict):
        raise BadField(f"expected a JSON object, got {type(record).__name__}")
    context, choices, gold, category = READERS[fmt](record)
    if not context.strip():
        raise BadField("the question text is empty")
    if any(not c for c in choices):
        raise BadField("a choice is empty: nothing to score", "choices")
    return McItem(_item_id(record, number), context, choices, gold, category, {"format": fmt, "number": number})


def load_task(path: Path | str, task_format: str = "auto") -> McTask:
    """Read a JSONL (or JSON list) multiple-choice file; the first bad record stops it with an
    error naming the file, the line and the field."""
    from openchat_cli.eval.questions import file_hash

    if task_format not in TASK_FORMATS:
        raise OpenchatError(f"unknown task format '{task_format}' (choose {', '.join(TASK_FORMATS)})")
    path = Path(path)
    if not path.is_file():
        raise OpenchatError(
            f"task file {path} does not exist"
            if not path.exists()
            else f"{path} is not a file (expected a .jsonl task file)"
        )
    text = path.read_text(encoding="utf-8")
    records: list[tuple[str, Any]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OpenchatError(f"{where(path, exc.lineno)}: invalid JSON: {exc.msg}") from None
        records = [(f"{path} item {i + 1}", r) for i, r in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((where(path, lineno), json.loads(line)))
            except json.JSONDecodeError as exc:
                raise OpenchatError(f"{where(path, lineno)}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not records:
        raise OpenchatError(f"{path} holds no questions")
    fmt = None if task_format == "auto" else task_format
    items: list[McItem] = []
    seen: dict[str, str] = {}
    for number, (loc, record) in enumerate(records, start=1):
        try:
            if fmt is None:
                fmt = detect(record)
            item = parse_record(record, number, fmt)
        except BadField as exc:
            hint = "" if task_format != "auto" else f" (read as '{fmt}')" if fmt else ""
            raise OpenchatError(f"{loc}: {exc.message}{hint}") from None
        if item.item_id in seen:
            raise OpenchatError(f"{loc}: duplicate question id '{item.item_id}' (first at {seen[item.item_id]})")
        seen[item.item_id] = loc
        items.append(item)
    return McTask(path=path.resolve(), format=fmt or task_format, items=items, hash=file_hash(path))
