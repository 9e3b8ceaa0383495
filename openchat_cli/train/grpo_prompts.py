"""The prompt set GRPO samples from: JSONL, one prompt a line, or a catalog dataset holding one.

    {"id": "q1", "messages": [{"role": "user", "content": "..."}], "answer": "42"}
    {"id": "q2", "prompt": "Which number is larger, 12 or 31?", "answer": 31}

`messages` (OpenAI-style, may start with a system message; it must end with a user turn) or
`prompt` (one user turn). `answer` (also read from `label`, the eval exact-answer files' name,
whose `question` is read as the prompt) is what the `grade` reward compares with; rewards that
need no answer (a reward model, a judge) accept prompts without one. A file of
`openchat eval answer`'s exact format therefore works as a prompt set too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError, where

PROMPTS_FORMAT = "prompts"  # the catalog's dataset format for a prompt set


@dataclass(frozen=True)
class Prompt:
    id: str
    messages: tuple[dict[str, str], ...]  # system?, user, (assistant, user)*: the conversation so far
    answer: Any = None  # the reference answer (a value or a list of accepted values)
    line: int = 0  # where it came from, for error messages

    @property
    def question(self) -> str:
        """The last user turn (what a grader or judge is shown as the question)."""
        return self.messages[-1]["content"]


def _messages(record: dict, path: Path, line: int) -> tuple[dict[str, str], ...]:
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list) or not raw:
            raise OpenchatError(f"{where(path, line, 'messages')}: expected a non-empty list of messages")
        out = []
        for i, m in enumerate(raw):
            if (
                not isinstance(m, dict)
                or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)
            ):
                raise OpenchatError(
                    f"{where(path, line, f'messages[{i}]')}: expected "
                    '{"role": "system"|"user"|"assistant", "content": "..."}'
                )
            out.append({"role": m["role"], "content": m["content"]})
        if out[-1]["role"] != "user":
            raise OpenchatError(
                f"{where(path, line, 'messages')}: the last message must be the user's (the completion answers it)"
            )
        return tuple(out)
    for key in ("prompt", "question"):
        if key in record:
            if not isinstance(record[key], str) or not record[key].strip():
                raise OpenchatError(f"{where(path, line, key)}: expected non-empty text")
            return ({"role": "user", "content": record[key]},)
    raise OpenchatError(f"{where(path, line)}: a prompt needs 'messages' or 'prompt'")


def read_prompt_file(path: Path) -> list[Prompt]:
    """Every prompt of a JSONL file; a bad line is an error naming the line and field."""
    if not path.is_file():
        raise OpenchatError(f"prompt file {path} does not exist")
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for line_no, text in enumerate(fh, 1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except ValueError as exc:
                raise OpenchatError(f"{where(path, line_no)}: not valid JSON ({exc})") from None
            if not isinstance(record, dict):
                raise OpenchatError(f"{where(path, line_no)}: expected a JSON object")
            pid = str(record.get("id", record.get("question_id", f"line-{line_no}")))
            if pid in seen:
                raise OpenchatError(f"{where(path, line_no, 'id')}: id '{pid}' already used on line {seen[pid]}")
            seen[pid] = line_no
            answer = record.get("answer", record.get("label"))
            prompts.append(Prompt(pid, _messages(record, path, line_no), answer, line_no))
    if not prompts:
        raise OpenchatError(f"prompt file {path} holds no prompts")
    return prompts


def resolve_prompts(ref: str) -> tuple[Path, str | None]:
    """A prompt file from a path or a ds-… id; returns (path, dataset id or None)."""
    from store.catalog import looks_like_id, open_catalog

    catalog = open_catalog()
    try:
        if looks_like_id(ref) and not Path(ref).exists():
            row = catalog.get(ref)
            if catalog.table_of(row["id"]) != "datasets":
                raise OpenchatError(f"'{ref}' is a {catalog.table_of(row['id'])[:-1]}, not a dataset")
            return Path(row["path"]), row["id"]
        path = Path(ref).expanduser()
        found = catalog.find_by_path("datasets", path) if path.exists() else None
        return path, found["id"] if found else None
    finally:
        catalog.close()


def require_answers(prompts: list[Prompt], path: Path) -> None:
    """The `grade` reward compares with each prompt's answer: all of them need one."""
    missing = [p for p in prompts if p.answer is None or (isinstance(p.answer, str) and not p.answer.strip())]
    if missing:
        shown = ", ".join(f"line {p.line} (id {p.id})" for p in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise OpenchatError(f"{path}: the grade reward needs an 'answer' for every prompt; missing on {shown}{more}")
