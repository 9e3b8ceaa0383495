"""Question sets: read every supported format into one `Question` shape, naming bad lines.

Formats (detected per record, so a file may not mix them):
- ``mtbench``: FastChat / MT-bench ``question.jsonl``: ``question_id``, ``category``, ``turns``
  (list of user turns), optional ``reference`` (list, one per turn).
- ``vicuna``: the single-turn Vicuna variant: ``question_id``, ``text``, ``category``.
- ``alpaca_eval``: AlpacaEval's JSON list (or JSONL) of ``instruction`` (+ optional ``input``),
  ``dataset``.
- ``choice``: OpenChat's multiple-choice JSONL: ``question``, ``options`` (list or letter→text
  mapping), ``label`` (letter, 0-based index or list of letters).
- ``exact``: OpenChat's exact-answer JSONL: ``question`` and ``label`` (or ``answer``), no options.
- ``plain``: ``id``, ``prompt``, optional ``category``.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError, where

FORMATS = ("mtbench", "vicuna", "alpaca_eval", "choice", "exact", "plain")
SUITE_FORMAT = "suite"  # questions of a benchmark suite folder (openchat_cli/eval/suites.py)
LETTERS = string.ascii_uppercase


@dataclass
class Question:
    question_id: str
    category: str | None
    turns: list[str]
    reference: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def format(self) -> str:
        return self.meta.get("format", "plain")

    def row(self, eval_id: str) -> dict[str, Any]:
        return {
            "eval_id": eval_id,
            "question_id": self.question_id,
            "category": self.category,
            "turns": self.turns,
            "reference": self.reference,
            "meta": self.meta,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Question:
        turns = row.get("turns") or []
        if isinstance(turns, str):
            turns = [turns]
        return cls(
            question_id=str(row["question_id"]),
            category=row.get("category"),
            turns=list(turns),
            reference=row.get("reference"),
            meta=row.get("meta") or {},
        )


@dataclass
class QuestionSet:
    path: Path
    questions: list[Question]
    format: str
    hash: str

    def __len__(self) -> int:
        return len(self.questions)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


class BadField(Exception):
    """A record's field that cannot be read; the loader adds the file and line."""

    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.message = message
        self.field_name = field_name


def _text(record: dict, key: str, *, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise BadField(f"missing field '{key}'", key)
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise BadField(f"field '{key}' must be a string, got {type(value).__name__}", key)
    if required and not value.strip():
        raise BadField(f"field '{key}' is empty", key)
    return value


def _ident(record: dict, key: str) -> str:
    value = record.get(key)
    if value is None:
        raise BadField(f"missing field '{key}'", key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadField(f"field '{key}' must be a string or an integer", key)
    text = str(value).strip()
    if not text:
        raise BadField(f"field '{key}' is empty", key)
    return text


def _string_list(record: dict, key: str, *, required: bool = True) -> list[str] | None:
    value = record.get(key)
    if value is None:
        if required:
            raise BadField(f"missing field '{key}'", key)
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadField(f"field '{key}' must be a list of strings", key)
    if required and (not value or not all(v.strip() for v in value)):
        raise BadField(f"field '{key}' must hold at least one non-empty string", key)
    return list(value)


def detect(record: dict) -> str:
    if "turns" in record:
        return "mtbench"
    if "instruction" in record:
        return "alpaca_eval"
    if "question" in record:
        return "choice" if record.get("options") is not None else "exact"
    if "text" in record and "question_id" in record:
        return "vicuna"
    if "prompt" in record:
        return "plain"
    raise BadField(
        "cannot tell the format: expected 'turns' (MT-bench), 'text' (Vicuna), "
        "'instruction' (AlpacaEval), 'question' (multiple-choice / exact-answer) "
        "or 'prompt' (plain)"
    )


def read_options(record: dict, at_least: int = 1) -> list[str]:
    """OpenChat's `options`: a list, or a mapping keyed A, B, C, … in order; numbers become text.
    Shared by `eval answer` (choice questions) and `eval loglik` (the `choice` task format)."""
    options = record.get("options")
    if options is None:
        raise BadField("missing field 'options'", "options")
    if isinstance(options, dict):
        keys = [str(k).strip().strip("().").upper() for k in options]
        if keys != list(LETTERS[: len(keys)]):
            raise BadField("field 'options' as a mapping must use the keys A, B, C, … in order", "options")
        options = list(options.values())
    if (
        not isinstance(options, list)
        or len(options) < at_least
        or not all(isinstance(o, (str, int, float)) and not isinstance(o, bool) for o in options)
    ):
        raise BadField(f"field 'options' must be a list of at least {at_least} string(s)", "options")
    if len(options) > len(LETTERS):
        raise BadField(f"field 'options' has {len(options)} entries; at most {len(LETTERS)}", "options")
    return [str(o) for o in options]


def _choice_label(value: Any, n_options: int) -> list[str]:
    """Correct option letters from a letter, '(B)', an index or a list of those."""
    values = value if isinstance(value, list) else [value]
    out: list[str] = []
    for v in values:
        if isinstance(v, bool):
            raise BadField("field 'label' must be an option letter or index", "label")
        if isinstance(v, int):
            if not 0 <= v < n_options:
                raise BadField(f"label index {v} is out of range for {n_options} options", "label")
            out.append(LETTERS[v])
            continue
        if not isinstance(v, str):
            raise BadField("field 'label' must be an option letter or index", "label")
        letter = v.strip().strip("().").upper()
        if len(letter) != 1 or letter not in LETTERS[:n_options]:
            raise BadField(f"label '{v}' is not one of the options A-{LETTERS[n_options - 1]}", "label")
        out.append(letter)
    if not out:
        raise BadField("field 'label' is empty", "label")
    return out


def holds_its_choices(question: str, options: list[str]) -> bool:
    """The question already lists its options: they are bare letters ("A", "(B)"), or every
    option's "(X)" marker is written in the question (as "Answer Choices: (A) … (B) …")."""
    if all(o.strip().strip("().").strip().upper() == LETTERS[i] for i, o in enumerate(options)):
        return True
    return all(f"({LETTERS[i]})" in question for i in range(len(options)))


def choice_prompt(question: str, options: list[str]) -> str:
    """The question as asked: verbatim when it holds its choices, else with the options and a
    cue to answer with a letter appended."""
    if holds_its_choices(question, options):
        return question
    lines = [question.rstrip(), ""]
    lines += [f"({LETTERS[i]}) {opt}" for i, opt in enumerate(options)]
    lines += ["", 'Answer with the letter of the correct option, e.g. "The answer is (A)".']
    return "\n".join(lines)


def parse_record(record: Any, index: int, fmt: str | None = None) -> Question:
    """One record → Question. `index` (1-based) names the question when it has no id."""
    if not isinstance(record, dict):
        raise BadField(f"expected a JSON object, got {type(record).__name__}")
    fmt = fmt or detect(record)
    if fmt == "mtbench":
        qid = _ident(record, "question_id")
        turns = _string_list(record, "turns")
        reference = _string_list(record, "reference", required=False)
        category = _text(record, "category", required=False)
        return Question(qid, category, turns, reference, {"format": fmt})
    if fmt == "vicuna":
        qid = _ident(record, "question_id")
        text = _text(record, "text")
        return Question(qid, _text(record, "category", required=False), [text], None, {"format": fmt})
    if fmt == "alpaca_eval":
        instruction = _text(record, "instruction")
        extra = _text(record, "input", required=False)
        prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        qid = str(record["id"]) if record.get("id") is not None else str(index)
        dataset = _text(record, "dataset", required=False)
        meta = {"format": fmt, "dataset": dataset, "instruction": instruction}
        return Question(qid, dataset, [prompt], None, meta)
    if fmt in ("choice", "exact"):
        question = _text(record, "question")
        qid = (
            _ident(record, "id")
            if record.get("id") is not None
            else (_ident(record, "question_id") if record.get("question_id") is not None else str(index))
        )
        category = _text(record, "category", required=False) or _text(record, "dataset", required=False)
        meta: dict[str, Any] = {"format": fmt}
        if record.get("dataset") is not None:
            meta["dataset"] = record.get("dataset")
        if fmt == "choice":
            options = read_options(record)
            if "label" not in record:
                raise BadField("missing field 'label'", "label")
            meta.update(options=options, label=_choice_label(record["label"], len(options)))
            return Question(qid, category, [choice_prompt(question, options)], None, meta)
        key = "label" if "label" in record else "answer"
        label = record.get(key)
        if label is None or isinstance(label, bool) or not isinstance(label, (str, int, float, list)):
            raise BadField("missing field 'label' (the expected answer)", "label")
        meta["label"] = label
        return Question(qid, category, [question], None, meta)
    if fmt == "plain":
        qid = _ident(record, "id") if record.get("id") is not None else str(index)
        return Question(
            qid, _text(record, "category", required=False), [_text(record, "prompt")], None, {"format": fmt}
        )
    raise BadField(f"unknown format '{fmt}'")


def load_questions(path: Path | str) -> QuestionSet:
    """Read a question file (JSONL, or a JSON list), validating every record.

    Raises OpenchatError naming the file and line (or list item) of the first problem.
    """
    path = Path(path)
    if not path.exists():
        raise OpenchatError(f"question file {path} does not exist")
    if path.is_dir():
        raise OpenchatError(f"{path} is a folder, expected a question file (.jsonl or .json)")
    text = path.read_text(encoding="utf-8")
    records: list[tuple[int, str, Any]] = []  # (line or item number, "line"|"item", record)
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise OpenchatError(f"{where(path, exc.lineno)}: invalid JSON: {exc.msg}") from None
        records = [(i + 1, "item", r) for i, r in enumerate(data)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((lineno, "line", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise OpenchatError(f"{where(path, lineno)}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not records:
        raise OpenchatError(f"{path} holds no questions")

    questions: list[Question] = []
    seen: dict[str, int] = {}
    first_format: str | None = None
    for n, (number, unit, record) in enumerate(records, start=1):
        loc = where(path, number) if unit == "line" else f"{path} item {number}"
        try:
            fmt = detect(record) if isinstance(record, dict) else None
            if first_format is None:
                first_format = fmt
            elif fmt is not None and fmt != first_format and {fmt, first_format} != {"choice", "exact"}:
                raise BadField(f"record looks like '{fmt}' but the file started as '{first_format}'")
            question = parse_record(record, n, fmt)
        except BadField as exc:
            raise OpenchatError(f"{loc}: {exc.message}") from None
        if question.question_id in seen:
            raise OpenchatError(
                f"{loc}: duplicate question id '{question.question_id}' "
                f"(first seen at {unit} {seen[question.question_id]})"
            )
        seen[question.question_id] = number
        questions.append(question)
    return QuestionSet(path=path.resolve(), questions=questions, format=first_format or "plain", hash=file_hash(path))
