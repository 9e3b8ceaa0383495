"""`openchat eval judge`: LLM-as-judge in single (1-10 rating) or pairwise mode.

- Prompts: the built-in set (judge_prompts.jsonl next to this file, written by this project) or a
  FastChat-format prompt file (`name`, `type`, `system_prompt`, `prompt_template`, `category`,
  `output_format` with `[[rating]]` / `[[A]]` `[[B]]` `[[C]]`). Each prompt fills one of eight
  slots: single|pairwise × first turn|later turn × plain|reference-guided.
- Pairwise: every pair is judged in both orders (AB and BA); the verdicts are stored mapped back
  to the models (A = the judged run won, whatever the display order).
- The judge's raw text is always stored; an unparseable verdict is stored as 'error', never as a
  score. A judge run resumes like an answer run: only (question, turn, order) units without a
  stored judgment are asked.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from openchat_cli.errors import OpenchatError, where
from openchat_cli.endpoints import normalize_base_url
from openchat_cli.eval.client import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_WAIT_S,
    ChatClient,
    EndpointError,
)
from openchat_cli.eval.questions import Question
from openchat_cli.eval.runs import Interrupted, eval_row, finish, run_guarded, worker_pool
from store.catalog import Catalog

BUILTIN_PROMPTS = Path(__file__).with_name("judge_prompts.jsonl")
# Categories judged against the reference answer when the question has one (as MT-bench does).
REFERENCE_CATEGORIES = {"math", "reasoning", "coding", "arena-hard-200"}
DEFAULT_JUDGE_MAX_TOKENS = 2048
SLOTS = [(mode, multi, ref) for mode in ("single", "pairwise") for multi in (False, True) for ref in (False, True)]


def slot_name(slot: tuple[str, bool, bool]) -> str:
    mode, multi, ref = slot
    return f"{mode}{'-ref' if ref else ''}{'-multi-turn' if multi else ''}"


# -- prompts ------------------------------------------------------------------------------------

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
    def slot(self) -> tuple[str, bool, bool]:
        return (self.type, self.multi_turn, self.reference)

    @property
    def uses_conversation(self) -> bool:
        return "{conversation" in self.prompt_template

    def digest(self) -> str:
        return hashlib.sha256((self.system_prompt + "\0" + self.prompt_template).encode()).hexdigest()[:12]

    def render(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages for the judge; `{name}` placeholders not in `variables` stay as typed."""
        def sub(text: str) -> str:
            return re.sub(r"\{(\w+)\}",
                          lambda m: str(variables[m.group(1)]) if m.group(1) in variables else m.group(0), text)
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
    ref = (str(record.get("category", "")).lower() == "math" or "{ref_answer" in template
           or "{reference}" in template)
    return JudgePrompt(name=name, type=kind, system_prompt=record.get("system_prompt") or "",
                       prompt_template=template, multi_turn=multi, reference=ref, source=source,
                       extra={k: v for k, v in record.items()
                              if k not in ("name", "type", "system_prompt", "prompt_template")})


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


def load_prompts(path: Path | str | None = None) -> dict[tuple[str, bool, bool], JudgePrompt]:
    """The prompt for each slot: from `path` where it has one, else built-in."""
    builtin = {p.slot: p for p in read_prompt_file(BUILTIN_PROMPTS)}
    if path is None:
        return builtin
    chosen: dict[tuple[str, bool, bool], JudgePrompt] = {}
    for prompt in read_prompt_file(path):
        chosen.setdefault(prompt.slot, prompt)
    return {slot: chosen.get(slot, builtin[slot]) for slot in SLOTS}


def prompts_config(prompts: dict[tuple[str, bool, bool], JudgePrompt], mode: str) -> dict[str, Any]:
    return {slot_name(slot): {"name": p.name, "source": p.source, "hash": p.digest()}
            for slot, p in prompts.items() if slot[0] == mode}


# -- verdicts -----------------------------------------------------------------------------------

PAIR_RE = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
RATING_RE = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10\s*)?\]\]")
RATING_LINE_RE = re.compile(r"rating\s*[:=]\s*\**\s*\[?\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\]?", re.IGNORECASE)
RATING_BACKUP_RE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*\]")


def parse_pairwise(text: str | None) -> str:
    """'A', 'B', 'tie' (for [[C]] or [[tie]]) or 'error' when no verdict, or conflicting ones."""
    found = {m.upper() for m in PAIR_RE.findall(text or "")}
    found = {"tie" if m in ("C", "TIE") else m for m in found}
    return found.pop() if len(found) == 1 else "error"


def parse_rating(text: str | None) -> float | None:
    """The 1-10 rating: the last `[[x]]`, else the last `Rating: x`, else the last `[x]`.
    None when there is none or it is out of range."""
    text = text or ""
    for pattern in (RATING_RE, RATING_LINE_RE, RATING_BACKUP_RE):
        found = pattern.findall(text)
        if found:
            value = float(found[-1])
            return value if 1.0 <= value <= 10.0 else None
    return None


def map_back(shown: str, order: str) -> str:
    """A verdict about the display positions → a verdict about the models (A = judged run)."""
    if order == "BA" and shown in ("A", "B"):
        return "B" if shown == "A" else "A"
    return shown


# -- units of work ------------------------------------------------------------------------------

def conversation_text(turns: list[str], replies: list[str], upto: int) -> str:
    parts = []
    for i in range(upto):
        parts.append(f"### User (turn {i + 1}):\n{turns[i]}")
        parts.append(f"### Assistant (turn {i + 1}):\n{replies[i] if i < len(replies) else ''}")
    return "\n\n".join(parts)


def needs_reference(question: Question, turn: int) -> bool:
    ref = question.reference or []
    return ((question.category or "").lower() in REFERENCE_CATEGORIES and len(ref) >= turn
            and bool(str(ref[turn - 1]).strip()))


def choose_prompt(prompts: dict, mode: str, question: Question, turn: int) -> JudgePrompt:
    ref = needs_reference(question, turn)
    prompt = prompts[(mode, turn > 1, ref)]
    if turn > 2 and not prompt.uses_conversation:
        # FastChat templates name question_1/question_2 only: later turns use the built-in one.
        prompt = load_prompts(None)[(mode, True, ref)]
    return prompt


def variables(question: Question, turn: int, replies_a: list[str], replies_b: list[str] | None = None) -> dict[str, Any]:
    turns = question.turns
    ref = question.reference or []
    out: dict[str, Any] = {"turn": turn, "question": turns[turn - 1],
                           "reference": ref[turn - 1] if len(ref) >= turn else ""}
    for i, text in enumerate(turns, start=1):
        out[f"question_{i}"] = text
    for i, text in enumerate(ref, start=1):
        out[f"ref_answer_{i}"] = text
    if replies_b is None:
        out["answer"] = replies_a[turn - 1]
        for i, text in enumerate(replies_a, start=1):
            out[f"answer_{i}"] = text
        out["conversation"] = conversation_text(turns, replies_a, turn)
    else:
        out["answer_a"] = replies_a[turn - 1]
        out["answer_b"] = replies_b[turn - 1]
        for i, text in enumerate(replies_a, start=1):
            out[f"answer_a_{i}"] = text
        for i, text in enumerate(replies_b, start=1):
            out[f"answer_b_{i}"] = text
        out["conversation_a"] = conversation_text(turns, replies_a, turn)
        out["conversation_b"] = conversation_text(turns, replies_b, turn)
    return out


@dataclass
class Unit:
    question: Question
    turn: int
    order: str | None  # AB | BA for pairwise


def _answers(cat: Catalog, run_id: str) -> dict[str, list[str]]:
    return {r["question_id"]: list(r["turns"] or []) for r in cat.rows("answers", "eval_id = ?", [run_id])}


def _questions(cat: Catalog, run_id: str) -> dict[str, Question]:
    return {r["question_id"]: Question.from_row(r) for r in cat.rows("questions", "eval_id = ?", [run_id], order_by="rowid")}


def plan_units(cat: Catalog, mode: str, run_a: str, run_b: str | None) -> tuple[list[Unit], dict, dict | None, list[str]]:
    """Every unit to judge (done or not), the answers of A (and B), and notes to show."""
    notes: list[str] = []
    questions = _questions(cat, run_a)
    answers_a = _answers(cat, run_a)
    answers_b = _answers(cat, run_b) if run_b else None
    questions_b = _questions(cat, run_b) if run_b else {}
    units: list[Unit] = []
    mismatched = 0
    for qid, question in questions.items():
        replies_a = answers_a.get(qid)
        if not replies_a:
            continue
        if answers_b is None:
            for turn in range(1, min(len(question.turns), len(replies_a)) + 1):
                units.append(Unit(question, turn, None))
            continue
        replies_b = answers_b.get(qid)
        if not replies_b:
            continue
        other_q = questions_b.get(qid)
        if other_q is not None and other_q.turns != question.turns:
            mismatched += 1
            continue
        for turn in range(1, min(len(question.turns), len(replies_a), len(replies_b)) + 1):
            units.append(Unit(question, turn, "AB"))
            units.append(Unit(question, turn, "BA"))
    missing = sum(1 for qid in questions if qid not in answers_a)
    if missing:
        notes.append(f"{missing} of {len(questions)} questions have no answer in {run_a} yet; "
                     f"judge again after answering them")
    if answers_b is not None:
        only_a = sum(1 for qid in answers_a if qid in questions and qid not in answers_b)
        if only_a:
            notes.append(f"{only_a} answered questions have no baseline answer in {run_b}; skipped")
    if mismatched:
        notes.append(f"{mismatched} questions differ in text between the two runs; skipped")
    return units, answers_a, answers_b, notes


def done_units(cat: Catalog, judge_id: str) -> set[tuple[str, int, str | None]]:
    return {(r["question_id"], r["turn"], r["order"]) for r in cat.query(
        'select question_id, turn, "order" from judgments where eval_id = ?', [judge_id])}


# -- runs ---------------------------------------------------------------------------------------

@dataclass
class JudgeOptions:
    judge_endpoint: str
    judge_model: str
    mode: str = "single"
    baseline: str | None = None
    prompts: str | None = None
    api_key: str | None = None
    concurrency: int = 32
    max_tokens: int = DEFAULT_JUDGE_MAX_TOKENS
    retries: int = DEFAULT_RETRIES
    retry_wait_s: float = DEFAULT_RETRY_WAIT_S
    run: str | None = None
    new: bool = False
    name: str | None = None


@dataclass
class JudgeResult:
    run_id: str
    answer_id: str
    baseline_id: str | None
    resumed: bool
    total: int
    already: int
    judged_now: int
    parse_failures_now: int
    status: str
    notes: list[str]


def find_matching_judge(cat: Catalog, answer_id: str, baseline_id: str | None, judge_model: str,
                        endpoint: str, mode: str, prompts_key: str) -> dict | None:
    rows = cat.query(
        "select * from evals where kind = 'judge' and parent_id = ? and coalesce(baseline_id, '') = ? "
        "and model = ? and endpoint = ? order by created_at desc, rowid desc",
        [answer_id, baseline_id or "", judge_model, endpoint])
    for row in rows:
        config = row.get("config") or {}
        if config.get("mode") == mode and config.get("prompts_key") == prompts_key:
            return row
    return None


def run_judge(cat: Catalog, answer_ref: str, opts: JudgeOptions,
              on_event: Callable[[str, dict[str, Any]], None] | None = None) -> JudgeResult:
    emit = on_event or (lambda kind, data: None)
    if opts.mode not in ("single", "pairwise"):
        raise OpenchatError(f"--mode must be 'single' or 'pairwise', not '{opts.mode}'")
    answer_run = eval_row(cat, answer_ref, "answer")
    baseline_run = None
    if opts.mode == "pairwise":
        if not opts.baseline:
            raise OpenchatError("pairwise judging needs --baseline ANSWER_RUN (the other model's answers)")
        baseline_run = eval_row(cat, opts.baseline, "answer")
        if baseline_run["id"] == answer_run["id"]:
            raise OpenchatError(f"{answer_run['id']} cannot be judged against itself")
    elif opts.baseline:
        emit("note", {"message": "--baseline is only used in pairwise mode; ignored"})
    base_url = normalize_base_url(opts.judge_endpoint)
    prompts = load_prompts(opts.prompts)
    pconfig = prompts_config(prompts, opts.mode)
    prompts_key = hashlib.sha256(json.dumps(pconfig, sort_keys=True).encode()).hexdigest()[:12]
    baseline_id = baseline_run["id"] if baseline_run else None

    units, answers_a, answers_b, notes = plan_units(cat, opts.mode, answer_run["id"], baseline_id)
    for note in notes:
        emit("note", {"message": note})
    if not units:
        raise OpenchatError(f"nothing to judge: {answer_run['id']} has no answers"
                            + (f" in common with {baseline_id}" if baseline_id else ""))

    existing = None
    if opts.run:
        existing = eval_row(cat, opts.run, "judge")
        if existing["parent_id"] != answer_run["id"] or (existing.get("baseline_id") or None) != baseline_id:
            raise OpenchatError(f"judge run {existing['id']} judged {existing['parent_id']}"
                                f"{' vs ' + existing['baseline_id'] if existing.get('baseline_id') else ''}, "
                                f"not this answer run")
    elif not opts.new:
        existing = find_matching_judge(cat, answer_run["id"], baseline_id, opts.judge_model, base_url,
                                       opts.mode, prompts_key)
    if existing is not None:
        run_id = existing["id"]
        judge_model = existing["model"] or opts.judge_model
    else:
        judge_model = opts.judge_model
        label = answer_run.get("name") or answer_run.get("model")
        if baseline_run:
            label += f" vs {baseline_run.get('name') or baseline_run.get('model')}"
        run_id = cat.add_eval(
            kind="judge", name=opts.name or f"{label} ({judge_model})", endpoint=base_url,
            model=judge_model, parent_id=answer_run["id"], baseline_id=baseline_id,
            questions_path=answer_run.get("questions_path"), questions_hash=answer_run.get("questions_hash"),
            config={"mode": opts.mode, "prompts": pconfig, "prompts_key": prompts_key,
                    "prompts_file": str(Path(opts.prompts).resolve()) if opts.prompts else None,
                    "max_tokens": opts.max_tokens, "temperature": 0.0,
                    "reference_categories": sorted(REFERENCE_CATEGORIES)})

    done = done_units(cat, run_id)
    todo = [u for u in units if (u.question.question_id, u.turn, u.order) not in done]
    already = len(units) - len(todo)
    emit("start", {"run_id": run_id, "resumed": existing is not None, "total": len(units),
                   "already": already, "todo": len(todo), "mode": opts.mode,
                   "answer_id": answer_run["id"], "baseline_id": baseline_id})
    def metrics() -> dict[str, Any]:
        from openchat_cli.eval.report import judge_summary

        return judge_summary(cat, run_id, lc_ci=False)

    if not todo:
        finish(cat, run_id, "completed", metrics())
        return JudgeResult(run_id, answer_run["id"], baseline_id, existing is not None, len(units),
                           already, 0, 0, "completed", notes)

    finish(cat, run_id, "running")
    counter = {"judged": 0, "errors": 0}

    async def go() -> None:
        async with ChatClient(base_url, judge_model, api_key=opts.api_key, concurrency=opts.concurrency,
                              retries=opts.retries, retry_wait_s=opts.retry_wait_s) as client:
            async def handle(unit: Unit) -> None:
                q = unit.question
                prompt = choose_prompt(prompts, opts.mode, q, unit.turn)
                replies_a = answers_a[q.question_id]
                if opts.mode == "single":
                    messages = prompt.render(variables(q, unit.turn, replies_a))
                else:
                    replies_b = answers_b[q.question_id]
                    first, second = (replies_a, replies_b) if unit.order == "AB" else (replies_b, replies_a)
                    messages = prompt.render(variables(q, unit.turn, first, second))
                try:
                    result = await client.complete(messages, temperature=0.0, max_tokens=opts.max_tokens)
                except EndpointError as exc:
                    if exc.fatal:
                        raise
                    # A request the judge refuses (e.g. too long) is a judgment that failed: keep why.
                    result = None
                    raw = f"[request refused: {exc.message}]"
                else:
                    raw = result.text
                meta: dict[str, Any] = {"category": q.category, "reference": needs_reference(q, unit.turn),
                                        "refused": result is None,
                                        "latency_s": round(result.latency_s, 4) if result else None,
                                        "len_a": len(replies_a[unit.turn - 1])}
                row: dict[str, Any] = {
                    "eval_id": run_id, "question_id": q.question_id, "turn": unit.turn, "mode": opts.mode,
                    "answer_id": answer_run["id"], "judge_model": judge_model, "prompt_name": prompt.name,
                    "raw": raw}
                if opts.mode == "single":
                    score = parse_rating(raw) if result else None
                    row.update(verdict="error" if score is None else f"{score:g}", score=score,
                               parse_ok=int(score is not None))
                else:
                    shown = parse_pairwise(raw) if result else "error"
                    meta.update(shown=shown, len_b=len(answers_b[q.question_id][unit.turn - 1]))
                    row.update(other_id=baseline_id, order=unit.order, verdict=map_back(shown, unit.order),
                               score=None, parse_ok=int(shown != "error"))
                row["meta"] = meta
                cat.insert("judgments", row)
                counter["judged"] += 1
                counter["errors"] += 1 - row["parse_ok"]
                emit("judged", {"done": already + counter["judged"], "parse_ok": row["parse_ok"]})

            await worker_pool(todo, opts.concurrency, handle)

    try:
        run_guarded(go)
    except Interrupted:
        finish(cat, run_id, "interrupted", metrics())
        raise
    except EndpointError as exc:
        finish(cat, run_id, "failed", metrics())
        got = len(done_units(cat, run_id))
        raise EndpointError(f"{exc.message}. Judge run {run_id} keeps the {got}/{len(units)} judgments "
                            f"received; re-run the same command to continue.") from None
    except BaseException:
        finish(cat, run_id, "failed", metrics())
        raise
    finish(cat, run_id, "completed", metrics())
    return JudgeResult(run_id, answer_run["id"], baseline_id, existing is not None, len(units), already,
                       counter["judged"], counter["errors"], "completed", notes)


def judge_many(cat: Catalog, answer_refs: Iterable[str], opts: JudgeOptions,
               on_event: Callable[[str, dict[str, Any]], None] | None = None) -> list[JudgeResult]:
    return [run_judge(cat, ref, opts, on_event) for ref in answer_refs]
