"""Judge prompt sets: the built-in one and FastChat-format prompt files.

A prompt file holds JSON lines with `name`, `type` (single | pairwise), `system_prompt`,
`prompt_template`, `category` and `output_format` (`[[rating]]` / `[[A]]` `[[B]]` `[[C]]`), as
FastChat's judge_prompts.jsonl does. Each prompt fills one of eight slots:
single|pairwise × first turn|later turn × plain|reference-guided; a file may fill some slots and
leave the rest to the built-in set (judge_prompts.jsonl next to this file, written by this
project).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError, where

BUILTIN_PROMPTS = Path(__file__).with_suffix(".jsonl")
SLOTS = [(mode, multi, ref) for mode in ("single", "pairwise") for multi in (False, True) for ref in (False, True)]
Slot = tuple[str, bool, bool]  # (mode, later turn, reference-guided)
PromptSet = dict[Slot, "JudgePrompt"]


def slot_name(slot: Slot) -> str:
    mode, multi, ref = slot
    return f"{mode}{'-ref' if ref else ''}{'-multi-turn' if multi else ''}"


@dataclass
class JudgePrompt:
    name: str
    type: str  # single | pairwise
    system_prompt: str
    prompt_template: str
    multi_turn: bool
    reference: bool
    source: str = "builtin"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def slot(self) -> Slot:
        return (self.type, self.multi_turn, self.reference)

    @property
    def uses_conversation(self) -> bool:
        return "{conversation" in self.prompt_template

    def digest(self) -> str:
        return hashlib.sha256((self.system_prompt + "\0" + self.prompt_template).encode()).hexdigest()[:12]

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages for the judge; `{name}` placeholders not in `variables` stay as typed."""

        def sub(text: str) -> str:
            return re.sub(
                r"\{(\w+)\}", lambda m: str(variables[m.group(1)]) if m.group(1) in variables else m.group(0), text
            )

        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": sub(self.system_prompt)})
        messages.append({"role": "user", "content": sub(self.prompt_template)})
        return messages


def _prompt_from_record(record: dict, source: str) -> JudgePrompt:
    for key in ("name", "prompt_template"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise ValueError(f"missing or empty field '{key}'")
    kind = str(record.get("type", "")).lower()
    if kind in ("pair", "pairwise"):
        kind = "pairwise"
    elif kind != "single":
        raise ValueError(f"field 'type' must be 'single' or 'pairwise', got {record.get('type')!r}")
    template = record["prompt_template"]
    name = record["name"]
    multi = "multi-turn" in name.lower() or "{question_2}" in template or "{conversation" in template
    ref = str(record.get("category", "")).lower() == "math" or "{ref_answer" in template or "{reference}" in template
    return JudgePrompt(
        name=name,
        type=kind,
        system_prompt=record.get("system_prompt") or "",
        prompt_template=template,
        multi_turn=multi,
        reference=ref,
        source=source,
        extra={k: v for k, v in record.items() if k not in ("name", "type", "system_prompt", "prompt_template")},
    )


def read_prompt_file(path: Path | str) -> list[JudgePrompt]:
    path = Path(path)
    if not path.exists():
        raise OpenchatError(f"judge prompt file {path} does not exist")
    prompts = []
    source = "builtin" if path.resolve() == BUILTIN_PROMPTS.resolve() else str(path.resolve())
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("expected a JSON object")
            prompts.append(_prompt_from_record(record, source))
        except json.JSONDecodeError as exc:
            raise OpenchatError(f"{where(path, lineno)}: invalid JSON: {exc.msg}") from None
        except ValueError as exc:
            raise OpenchatError(f"{where(path, lineno)}: {exc}") from None
    if not prompts:
        raise OpenchatError(f"{path} holds no judge prompts")
    return prompts


def load_prompts(path: Path | str | None = None) -> PromptSet:
    """The prompt for each slot: from `path` where it has one, else built-in."""
    builtin = {p.slot: p for p in read_prompt_file(BUILTIN_PROMPTS)}
    if path is None:
        return builtin
    chosen: PromptSet = {}
    for prompt in read_prompt_file(path):
        chosen.setdefault(prompt.slot, prompt)
    return {slot: chosen.get(slot, builtin[slot]) for slot in SLOTS}


def prompts_config(prompts: PromptSet, mode: str) -> dict[str, Any]:
    """What a judge run records about its prompts, per slot of its mode (name, source, hash)."""
    return {
        slot_name(slot): {"name": p.name, "source": p.source, "hash": p.digest()}
        for slot, p in prompts.items()
        if slot[0] == mode
    }


def prompts_key(prompts: PromptSet, mode: str) -> str:
    """A short hash of the prompts a run of `mode` uses: runs match only with the same prompts."""
    return hashlib.sha256(json.dumps(prompts_config(prompts, mode), sort_keys=True).encode()).hexdigest()[:12]
