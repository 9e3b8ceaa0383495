"""`openchat eval answer`: ask an endpoint every question, store each answer as it arrives.

A run is identified by (question file hash, endpoint, model): running the same command again
continues the newest matching run and asks only the questions it has no answer for.

`--seed N` makes sampled answers repeatable: each request carries the OpenAI `seed` derived from
(N, question id, turn), so a question's draws do not depend on the order or concurrency the
questions were asked in, and two models answering with the same N share their random draws (a
paired comparison then measures the models, not the dice).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from openchat_cli.endpoints import normalize_base_url
from openchat_cli.errors import OpenchatError
from openchat_cli.eval.client import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_WAIT_S,
    ChatClient,
    ContextLengthExceeded,
    EndpointError,
)
from openchat_cli.eval.questions import Question, QuestionSet
from openchat_cli.eval.runs import (
    check_reachable,
    claimed_pool,
    eval_row,
    find_or_start_run,
    finish,
    guarded_pass,
    lineage_checkpoint,
    served_model,
    start_event,
)
from openchat_cli.eval.suites import SUITE_FORMAT, load_question_source
from store.catalog import Catalog, looks_like_id
from store.claims import UnitClaims

# MT-bench's sampling temperatures per category (FastChat `temperature_config`).
CATEGORY_TEMPERATURES: dict[str, float] = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}
DEFAULT_TEMPERATURE = 0.7
# Multiple-choice / exact-answer sets are graded, not judged: answer them greedily.
GRADED_FORMAT_TEMPERATURE = 0.0
DEFAULT_MAX_TOKENS = 1024


def temperature_for(question: Question, override: float | None) -> float:
    if override is not None:
        return override
    if question.format == SUITE_FORMAT:  # suites' reference harnesses answer greedily
        return GRADED_FORMAT_TEMPERATURE
    category = (question.category or "").lower()
    if category in CATEGORY_TEMPERATURES:
        return CATEGORY_TEMPERATURES[category]
    if question.format in ("choice", "exact"):
        return GRADED_FORMAT_TEMPERATURE
    return DEFAULT_TEMPERATURE


@dataclass
class AnswerOptions:
    endpoint: str
    model: str | None = None
    api_key: str | None = None
    concurrency: int = 32
    temperature: float | None = None
    max_tokens: int | None = None  # None: DEFAULT_MAX_TOKENS, or for suites none sent (as their harness)
    system: str | None = None
    name: str | None = None
    run: str | None = None  # continue this run
    new: bool = False  # start a fresh run even if one matches
    checkpoint: str | None = None
    retries: int = DEFAULT_RETRIES
    retry_wait_s: float = DEFAULT_RETRY_WAIT_S
    limit: int | None = None  # only the first N questions (smoke runs)
    seed: int | None = None  # per-request sampling seeds derived from it (repeatable answers)


@dataclass
class AnswerResult:
    run_id: str
    resumed: bool
    total: int
    already: int
    answered_now: int
    errors: list[str]
    status: str
    metrics: dict[str, Any]


def _config(opts: AnswerOptions) -> dict[str, Any]:
    return {
        "temperature": opts.temperature,
        "category_temperatures": CATEGORY_TEMPERATURES,
        "default_temperature": DEFAULT_TEMPERATURE,
        "max_tokens": opts.max_tokens,
        "system": opts.system,
        "limit": opts.limit,
        "seed": opts.seed,
    }


def request_seed(seed: int | None, question_id: str, turn: int) -> int | None:
    """The `seed` sent for one turn of one question: a hash of (run seed, question, turn), so it
    does not depend on the order the questions are asked in."""
    if seed is None:
        return None
    digest = hashlib.sha256(f"{seed}:{question_id}:{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**63)


def find_matching_run(cat: Catalog, questions_hash: str, endpoint: str, model: str) -> dict | None:
    return cat.latest_eval("answer", questions_hash=questions_hash, endpoint=endpoint, model=model)


def answered_ids(cat: Catalog, run_id: str) -> set[str]:
    return cat.answered_ids(run_id)


def answer_metrics(cat: Catalog, run_id: str, total: int, errors: int = 0, retries: int = 0) -> dict[str, Any]:
    (answered, prompt, completion, latency, truncated) = cat.answer_totals(run_id)
    return {
        "questions": total,
        "answered": answered,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "mean_latency_s": round(latency, 4) if latency is not None else None,
        "errors": errors,
        "retries": retries,
        "truncated": truncated,
    }


# Finish reason recorded for a turn whose prompt alone filled the model's context (not asked).
CONTEXT_FULL = "context_length"


async def answer_question(
    client: ChatClient,
    question: Question,
    temperature: float,
    max_tokens: int | None,
    system: str | None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Ask every turn of one question; each turn sees the earlier turns and the model's replies.

    A small context does not fail the question: the client clamps `max_tokens` to what the
    context leaves, and a turn whose prompt alone fills the context is stored as an empty reply
    with finish reason "context_length". Later turns are then not asked (their prompt holds that
    one and more, so it cannot fit either) and are stored the same way. Either makes the answer
    `truncated` in its meta, with the turns concerned.
    """
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    replies: list[str] = []
    prompt_tokens = completion_tokens = 0
    latency = 0.0
    finish_reasons: list[str | None] = []
    truncated_turns: list[int] = []
    budgets: list[int | None] = []
    floor = 0  # the next prompt holds at least this many tokens: the last prompt and reply
    for index, turn in enumerate(question.turns):
        messages.append({"role": "user", "content": turn})
        if finish_reasons and finish_reasons[-1] == CONTEXT_FULL:
            result = None
        else:
            try:
                result = await client.complete(
                    messages,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    prompt_floor=floor,
                    seed=request_seed(seed, question.question_id, index),
                )
            except ContextLengthExceeded:
                result = None
        if result is None:
            replies.append("")
            finish_reasons.append(CONTEXT_FULL)
            budgets.append(0)
            truncated_turns.append(index)
            messages.append({"role": "assistant", "content": ""})
            continue
        messages.append({"role": "assistant", "content": result.text})
        replies.append(result.text)
        prompt_tokens += result.prompt_tokens
        completion_tokens += result.completion_tokens
        latency += result.latency_s
        finish_reasons.append(result.finish_reason)
        budgets.append(result.max_tokens)
        if result.clamped and result.finish_reason == "length":
            truncated_turns.append(index)
        floor = result.prompt_tokens + result.completion_tokens
    meta: dict[str, Any] = {"temperature": temperature, "finish_reasons": finish_reasons}
    if truncated_turns or any(b != max_tokens for b in budgets):
        meta.update(
            truncated=bool(truncated_turns),
            truncated_turns=truncated_turns,
            max_tokens_used=budgets,
            context_length=client.context_length,
        )
    return {
        "turns": replies,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "latency_s": round(latency, 4),
        "meta": meta,
    }


def run_answer(
    cat: Catalog,
    questions_path: str,
    opts: AnswerOptions,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> AnswerResult:
    """Create or continue an answer run and ask what is missing. Raises on fatal failures
    after marking the run failed/interrupted; every answer received is already stored."""
    emit = on_event or (lambda kind, data: None)
    base_url = normalize_base_url(opts.endpoint)

    # Which run: --run ID, or the newest one for the same questions + endpoint + model.
    existing: dict | None = None
    if opts.run:
        existing = eval_row(cat, opts.run, "answer")
        if questions_path in (None, "") or looks_like_id(str(questions_path)):
            questions_path = existing["questions_path"]
    elif looks_like_id(str(questions_path)):
        row = eval_row(cat, str(questions_path))
        questions_path = row["questions_path"]
    qset: QuestionSet = load_question_source(questions_path)
    questions = qset.questions[: opts.limit] if opts.limit else qset.questions

    model = opts.model or (existing or {}).get("model")
    if not model:
        model = served_model(base_url, opts.api_key, opts.retries, opts.retry_wait_s)
        emit("model", {"model": model})
    else:  # nothing asked the endpoint yet: a dead one fails now, before a run is registered
        check_reachable(base_url)

    if existing is not None:
        if existing["questions_hash"] != qset.hash:
            raise OpenchatError(
                f"run {existing['id']} was made from a different question file "
                f"(hash {existing['questions_hash']}, this one is {qset.hash}); start a new run instead"
            )
        if existing["model"] != model or existing["endpoint"] != base_url:
            emit(
                "note",
                {
                    "message": f"run {existing['id']} used model {existing['model']} at "
                    f"{existing['endpoint']}; continuing with {model} at {base_url}"
                },
            )
    elif not opts.new:
        existing = find_matching_run(cat, qset.hash, base_url, model)

    created: dict | None = None
    if existing is None:
        fields = dict(
            kind="answer",
            name=opts.name or model,
            questions_path=str(qset.path),
            questions_hash=qset.hash,
            endpoint=base_url,
            model=model,
            checkpoint_id=lineage_checkpoint(cat, opts.checkpoint, model, base_url),
            config=_config(opts),
        )
        row, made = find_or_start_run(
            cat, lambda: find_matching_run(cat, qset.hash, base_url, model), opts.new, **fields
        )
        created, existing = (row, None) if made else (None, row)

    resumed = existing is not None
    if existing is not None:
        run_id = existing["id"]
        config = existing.get("config") or {}
        differs = [
            k for k, v in _config(opts).items() if k in config and k != "limit" and config[k] != v and v is not None
        ]
        if differs:
            emit(
                "note",
                {
                    "message": f"continuing {run_id} with its recorded settings "
                    f"({', '.join(differs)} differ from this command; use --new "
                    f"for a fresh run)"
                },
            )
        if config.get("limit") != opts.limit:
            config["limit"] = opts.limit
            cat.update("evals", run_id, config=config)
    else:
        run_id = created["id"]
        config = created.get("config") or {}
    # Questions are (re)written so the catalog always holds the set the run answers.
    cat.insert_many("questions", (q.row(run_id) for q in questions), replace=True)

    done = answered_ids(cat, run_id)
    todo = [q for q in questions if q.question_id not in done]
    already = len(questions) - len(todo)
    emit("start", start_event(run_id, resumed, len(questions), len(todo), model=model, endpoint=base_url))
    if not todo:
        metrics = answer_metrics(cat, run_id, len(questions))
        finish(cat, run_id, "completed", metrics)
        return AnswerResult(run_id, resumed, len(questions), already, 0, [], "completed", metrics)

    finish(cat, run_id, "running")
    errors: list[str] = []
    counter = {"answered": 0, "elsewhere": 0, "retries": 0}
    temperature_override = config.get("temperature")
    max_tokens = config.get("max_tokens") or opts.max_tokens
    system = config.get("system")
    seed = config.get("seed")

    async def go() -> None:
        async with ChatClient(
            base_url,
            model,
            api_key=opts.api_key,
            concurrency=opts.concurrency,
            retries=opts.retries,
            retry_wait_s=opts.retry_wait_s,
        ) as client:

            async def handle(question: Question) -> None:
                temperature = temperature_for(question, temperature_override)
                tokens = max_tokens if max_tokens or question.format == SUITE_FORMAT else DEFAULT_MAX_TOKENS
                try:
                    result = await answer_question(client, question, temperature, tokens, system, seed)
                except EndpointError as exc:
                    if exc.fatal:
                        raise
                    errors.append(f"{question.question_id}: {exc.message}")
                    emit("error", {"question_id": question.question_id, "message": exc.message})
                    return
                stored = cat.insert_new(
                    "answers", {"eval_id": run_id, "question_id": question.question_id, "model": model, **result}
                )
                if not stored:  # another process answered it first: its answer stands
                    answered_elsewhere(question)
                    return
                counter["answered"] += 1
                emit(
                    "answered",
                    {"question_id": question.question_id, "done": already + counter["answered"] + counter["elsewhere"]},
                )

            def answered_elsewhere(question: Question) -> None:
                counter["elsewhere"] += 1
                emit(
                    "answered",
                    {"question_id": question.question_id, "done": already + counter["answered"] + counter["elsewhere"]},
                )

            def is_answered(question: Question) -> bool:
                return cat.has_answer(run_id, question.question_id)

            # Another identical command may be answering this run too: each question is claimed
            # before it is asked, so it is asked once (see store/claims.py).
            try:
                await claimed_pool(
                    todo,
                    opts.concurrency,
                    UnitClaims(cat, run_id),
                    lambda q: q.question_id,
                    is_answered,
                    handle,
                    answered_elsewhere,
                )
            finally:
                counter["retries"] = client.retried

    def metrics_now() -> dict[str, Any]:
        return answer_metrics(cat, run_id, len(questions), len(errors), counter["retries"])

    def kept() -> str:
        return f"Run {run_id} keeps the {len(answered_ids(cat, run_id))}/{len(questions)} answers received"

    status, metrics = guarded_pass(
        cat, run_id, go, metrics_now, kept, complete=lambda metrics: metrics["answered"] >= len(questions)
    )
    return AnswerResult(run_id, resumed, len(questions), already, counter["answered"], errors, status, metrics)
