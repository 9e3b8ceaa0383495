"""Benchmark suites laid out like OpenChat's `eval_data` folder: read every task file into
`Question`s that carry their suite task type, so `eval grade` can apply that task's reference rules.

Layout (the suite root holds task-type folders; each task file is JSONL):

    eval_data/zs/agieval/aqua-rat.zero-shot.jsonl      task type zs/agieval, task zs/agieval/aqua-rat.zero-shot
    eval_data/fs_cothub/mmlu/anatomy.jsonl             task type fs_cothub/mmlu
    eval_data/coding/humaneval/humaneval.jsonl         task type coding/humaneval

Records: ``{"question", "label", "options", "_metadata"}``. The task type is the folder of a task
file relative to the suite root (as OpenChat's run_eval.py names it). The question is sent
verbatim; question ids are ``<task name>/<line number>``; the category is the task name.

A suite root, a task-type folder (``eval_data/fs_cothub/mmlu``), a group (``eval_data/zs``) or
a single task file all load: the root is found by walking up to the nearest folder from which
the path's task type is a known one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError, where
from openchat_cli.eval.questions import SUITE_FORMAT, Question, QuestionSet, load_questions

# Suite task types and what their records must hold.
MULTIPLE_CHOICE_TYPES = ("zs/agieval", "zs/bbh_mc_orca", "zs/truthfulqa_orca", "zs/gpqa", "fs_cothub/mmlu")
TASK_TYPES = (*MULTIPLE_CHOICE_TYPES, "fs_cothub/bbh", "fs_cothub/gsm8k", "fs_cothub/math", "coding/humaneval")
HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "test")
MAX_DEPTH = 4  # how far up from the given path a suite root may be


def _rel(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return "" if rel == "." else rel


def find_suite_root(path: Path) -> Path | None:
    """The suite root `path` belongs to, or None when it is not part of a suite layout."""
    path = path.resolve()
    candidates = ([path] if path.is_dir() else []) + list(path.parents)[:MAX_DEPTH]
    for root in candidates:
        rel = _rel(path, root)
        if path.is_file():
            if path.suffix == ".jsonl" and rel.rpartition("/")[0] in TASK_TYPES:
                return root
            continue
        for task_type in TASK_TYPES:
            if (rel == "" or task_type == rel or task_type.startswith(rel + "/")) and (root / task_type).is_dir():
                return root
    return None


def is_suite_path(path: Path | str) -> bool:
    path = Path(path)
    return path.exists() and find_suite_root(path) is not None


def task_files(path: Path, root: Path) -> list[Path]:
    """Every task file under `path` (or `path` itself), sorted, each of a known task type."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.jsonl") if p.is_file())
    for file in files:
        task_type = _rel(file, root).rpartition("/")[0]
        if task_type not in TASK_TYPES:
            raise OpenchatError(
                f"{file}: task type '{task_type or '(suite root)'}' is not one this tool "
                f"has reference rules for ({', '.join(TASK_TYPES)})"
            )
    if not files:
        raise OpenchatError(f"{path} holds no task files (*.jsonl)")
    return files


class _Bad(Exception):
    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.message = message
        self.field_name = field_name


def _check_record(record: Any, task_type: str) -> dict[str, Any]:
    """The fields grading needs, validated for the task type."""
    if not isinstance(record, dict):
        raise _Bad(f"expected a JSON object, got {type(record).__name__}")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _Bad("field 'question' must be a non-empty string", "question")
    if "label" not in record:
        raise _Bad("missing field 'label'", "label")
    label = record["label"]
    options = record.get("options")
    if options is not None and (not isinstance(options, list) or not all(isinstance(o, str) for o in options)):
        raise _Bad("field 'options' must be a list of strings or null", "options")
    if task_type in MULTIPLE_CHOICE_TYPES:
        if not options:
            raise _Bad(f"field 'options' must list the option letters for {task_type}", "options")
        if not isinstance(label, (str, list)) or not label:
            raise _Bad("field 'label' must be the correct option letter(s)", "label")
    elif task_type in ("fs_cothub/bbh", "fs_cothub/gsm8k"):
        if not isinstance(label, (str, list)) or not label:
            raise _Bad("field 'label' must be the expected answer (a list of strings)", "label")
    meta = record.get("_metadata")
    if task_type == "fs_cothub/math":
        from openchat_cli.eval.grade import extract_boxed

        solution = meta.get("solution") if isinstance(meta, dict) else None
        if not isinstance(solution, str) or not extract_boxed(solution):
            raise _Bad(
                "field '_metadata.solution' must hold the reference solution with a \\boxed{} answer",
                "_metadata.solution",
            )
    if task_type == "coding/humaneval":
        missing = [k for k in HUMANEVAL_FIELDS if not isinstance((meta or {}).get(k), str)]
        if missing:
            raise _Bad(
                f"field '_metadata' must hold {', '.join(HUMANEVAL_FIELDS)} (missing {missing[0]})",
                f"_metadata.{missing[0]}",
            )
    return {"question": question, "label": label, "options": options, "_metadata": meta}


def load_suite(path: Path | str) -> QuestionSet:
    """Every task file of a suite (or of the part of it `path` names), in file then line order.

    Raises OpenchatError naming the file, line and field of the first bad record.
    """
    path = Path(path)
    if not path.exists():
        raise OpenchatError(f"suite path {path} does not exist")
    root = find_suite_root(path)
    if root is None:
        raise OpenchatError(
            f"{path} is not laid out like a suite (<root>/<task type>/<task>.jsonl with a "
            f"task type among {', '.join(TASK_TYPES)})"
        )
    digest = hashlib.sha256()
    questions: list[Question] = []
    for file in task_files(path.resolve(), root):
        task_name = _rel(file, root)[: -len(".jsonl")]
        task_type = task_name.rpartition("/")[0]
        data = file.read_bytes()
        digest.update(task_name.encode() + b"\0" + hashlib.sha256(data).digest())
        for lineno, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                fields = _check_record(json.loads(line), task_type)
            except json.JSONDecodeError as exc:
                raise OpenchatError(f"{where(file, lineno)}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            except _Bad as exc:
                raise OpenchatError(f"{where(file, lineno, exc.field_name)}: {exc.message}") from None
            meta = {
                "format": SUITE_FORMAT,
                "task_type": task_type,
                "task_name": task_name,
                "label": fields["label"],
                "options": fields["options"],
            }
            if fields["_metadata"] is not None:
                meta["_metadata"] = fields["_metadata"]
            questions.append(Question(f"{task_name}/{lineno}", task_name, [fields["question"]], None, meta))
    if not questions:
        raise OpenchatError(f"{path} holds no questions (its task files are empty)")
    return QuestionSet(path=path.resolve(), questions=questions, format=SUITE_FORMAT, hash=digest.hexdigest()[:16])


def load_question_source(path: Path | str) -> QuestionSet:
    """A suite (folder or task file in a suite layout) or an ordinary question file."""
    if is_suite_path(path) or Path(path).is_dir():  # a folder can only be a suite: say why it is not
        return load_suite(path)
    return load_questions(path)
