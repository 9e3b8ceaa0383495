"""`openchat eval loglik`: multiple choice by log-likelihood, as lm-evaluation-harness scores it.

Each (context, continuation) pair is one `/v1/completions` request for the text context +
continuation with `echo`, `logprobs: 1` and `max_tokens: 0`: the server returns every prompt
token's logprob and where it starts in the text (`text_offset`). The continuation's tokens are
those starting at or after the end of the context (trailing whitespace of the context moves to
the continuation first, as lm-evaluation-harness does before tokenizing), and its
log-likelihood is the sum of their logprobs. By default the request asks the server not to
add a BOS token (`add_special_tokens: false`, as vLLM spells it), which is what
lm-evaluation-harness's `local-completions` and `hf` models send by default; `--bos` lets the
server add it.

Per question, as lm-evaluation-harness 0.4 `multiple_choice` tasks:
- acc: the choice with the highest log-likelihood is a correct one;
- acc_norm: the same after dividing each log-likelihood by the choice's length in characters
  (`len(choice)` of the doc_to_choice string, without the leading space);
- acc_bytes: divided by the choice's length in UTF-8 bytes;
ties go to the first choice (numpy's argmax). Each metric is reported with lm-evaluation-harness's
standard error (sample std / √n) and a 95% bootstrap interval over questions.

A run is an eval of kind `loglik`: its `questions` rows hold each context and its choices, its
`answers` rows one scored question each (written as it completes), so re-running the same
command continues a killed run.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import openai

from openchat_cli.endpoints import normalize_base_url, server_message
from openchat_cli.errors import OpenchatError
from openchat_cli.eval.client import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_WAIT_S,
    ChatClient,
    EndpointError,
    _describe_failure,
)
from openchat_cli.eval.mc_tasks import McItem, McTask, load_task
from openchat_cli.eval.runs import (
    eval_row,
    find_or_start_run,
    finish,
    guarded_pass,
    lineage_checkpoint,
    served_model,
    start_event,
    worker_pool,
)
from openchat_cli.eval.summaries import LoglikSummary
from store.catalog import Catalog, looks_like_id

KIND = "loglik"
METRICS = ("acc", "acc_norm", "acc_bytes")


@dataclass
class LoglikOptions:
    endpoint: str
    model: str | None = None
    api_key: str | None = None
    task_format: str = "auto"
    concurrency: int = 32  # requests in flight
    bos: bool = False  # let the server add its BOS token to each prompt
    name: str | None = None
    run: str | None = None
    new: bool = False
    checkpoint: str | None = None
    retries: int = DEFAULT_RETRIES
    retry_wait_s: float = DEFAULT_RETRY_WAIT_S
    limit: int | None = None


@dataclass
class ContinuationScore:
    loglikelihood: float
    is_greedy: bool  # every continuation token was the most likely one
    tokens: int  # continuation tokens
    prompt_tokens: int


@dataclass
class LoglikResult:
    run_id: str
    resumed: bool
    total: int
    already: int
    scored_now: int
    errors: list[str]
    status: str
    metrics: dict[str, Any]


# -- scoring one pair -----------------------------------------------------------------------------
def continuation_score(context: str, continuation: str, logprobs: Any) -> ContinuationScore:
    """Sum the logprobs of the tokens that start inside the continuation."""
    offsets = list(getattr(logprobs, "text_offset", None) or [])
    values = list(getattr(logprobs, "token_logprobs", None) or [])
    tops = list(getattr(logprobs, "top_logprobs", None) or [])
    if not offsets or len(offsets) != len(values):
        raise EndpointError(
            "the endpoint's logprobs have no text_offset for the prompt tokens "
            "(it must support echo with logprobs, as vLLM and openchat serve do)",
            fatal=True,
        )
    split = len(context.rstrip())  # trailing whitespace belongs to the continuation
    inside = [i for i, offset in enumerate(offsets) if offset >= split]
    if not inside:
        raise EndpointError(f"no token of the continuation {continuation!r} came back", fatal=False)
    if inside[0] == 0:
        raise EndpointError("the context produced no token: nothing conditions the continuation", fatal=False)
    total = 0.0
    greedy = True
    for i in inside:
        value = values[i]
        if value is None:
            raise EndpointError(f"token {i} of the prompt came back without a logprob", fatal=False)
        total += float(value)
        top = tops[i] if i < len(tops) else None
        if top and value < max(top.values()):
            greedy = False
    return ContinuationScore(total, greedy, len(inside), len(offsets))


class ScoringClient(ChatClient):
    """The eval client, asking `/v1/completions` for prompt logprobs instead of chatting."""

    def __init__(self, *args: Any, bos: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.bos = bos

    async def score(self, context: str, continuation: str) -> ContinuationScore:
        assert self._client is not None and self._semaphore is not None, "use `async with`"
        kwargs: dict[str, Any] = {
            "model": self.model,
            "prompt": context + continuation,
            "max_tokens": 0,
            "echo": True,
            "logprobs": 1,
            "temperature": 0,
        }
        if not self.bos:
            kwargs["extra_body"] = {"add_special_tokens": False}
        last: Exception | None = None
        async with self._semaphore:
            for attempt in range(self.retries + 1):
                try:
                    response = await self._client.completions.create(**kwargs)
                except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                    last = exc
                except openai.APIStatusError as exc:
                    if exc.status_code >= 500 or exc.status_code in (408, 409, 425):
                        last = exc
                    else:
                        raise EndpointError(
                            f"{self.base_url} refused the request ({exc.status_code}): {server_message(exc)}",
                            fatal=exc.status_code in (401, 403, 404),
                            status=exc.status_code,
                        ) from None
                else:
                    if not response.choices or response.choices[0].logprobs is None:
                        raise EndpointError(f"{self.base_url} returned no logprobs for an echo request", fatal=True)
                    return continuation_score(context, continuation, response.choices[0].logprobs)
                if attempt < self.retries:
                    self.retried += 1
                    await asyncio.sleep(self._backoff(attempt, last))
        raise EndpointError(_describe_failure(self.base_url, last, self.retries + 1))


# -- one question ---------------------------------------------------------------------------------
def _argmax(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def judge_item(item: McItem, scores: list[ContinuationScore]) -> dict[str, Any]:
    """Predictions and per-metric correctness of one question from its choices' scores."""
    lls = [s.loglikelihood for s in scores]
    pred = _argmax(lls)
    pred_norm = _argmax([ll / len(c) for ll, c in zip(lls, item.choices)])
    pred_bytes = _argmax([ll / len(c.encode("utf-8")) for ll, c in zip(lls, item.choices)])
    return {
        "loglikelihoods": lls,
        "greedy": [s.is_greedy for s in scores],
        "continuation_tokens": [s.tokens for s in scores],
        "gold": item.gold,
        "pred": pred,
        "pred_norm": pred_norm,
        "pred_bytes": pred_bytes,
        "acc": float(pred in item.gold),
        "acc_norm": float(pred_norm in item.gold),
        "acc_bytes": float(pred_bytes in item.gold),
    }


async def score_item(client: ScoringClient, item: McItem) -> dict[str, Any]:
    start = time.perf_counter()
    scores = await asyncio.gather(*(client.score(item.context, cont) for cont in item.continuations))
    result = judge_item(item, list(scores))
    return {
        "turns": [item.choices[result["pred"]]],
        "prompt_tokens": sum(s.prompt_tokens for s in scores),
        "completion_tokens": 0,
        "latency_s": round(time.perf_counter() - start, 4),
        "meta": result,
    }


# -- metrics --------------------------------------------------------------------------------------
def stderr(values: list[float]) -> float | None:
    """lm-evaluation-harness's standard error of a mean: sample std (n-1) / √n."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def loglik_metrics(cat: Catalog, run_id: str, total: int, errors: int = 0, retries: int = 0) -> dict[str, Any]:
    from openchat_cli.eval.report import cluster_bootstrap

    rows = cat.answers_with_category(run_id)
    out: dict[str, Any] = {"questions": total, "scored": len(rows), "errors": errors, "retries": retries}
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    metas = []
    for row in rows:
        meta = row["meta"] if isinstance(row["meta"], dict) else {}
        metas.append(meta)
        by_cat[row["category"] or "(none)"].append(meta)
    for name in METRICS:
        values = [float(m.get(name, 0.0)) for m in metas]
        out[name] = sum(values) / len(values) if values else None
        out[f"{name}_stderr"] = stderr(values)
        out[f"{name}_ci"] = cluster_bootstrap(values, [1.0] * len(values)) if values else None
    if len(by_cat) > 1:
        out["categories"] = {
            c: {"n": len(ms), **{name: sum(float(m.get(name, 0.0)) for m in ms) / len(ms) for name in METRICS}}
            for c, ms in sorted(by_cat.items())
        }
    return out


def loglik_summary(cat: Catalog, run_id: str) -> LoglikSummary:
    """What `eval report` shows for a loglik run (from its stored metrics; their keys are the
    summary's, and a run that has stored none yet shows None)."""
    run = cat.get(run_id)
    metrics = run.get("metrics") or {}
    return LoglikSummary.from_dict(
        {
            **{k: metrics.get(k) for k in ("questions", "scored", "errors")},
            **{k: metrics.get(k) for m in METRICS for k in (m, f"{m}_stderr", f"{m}_ci")},
            "run_id": run_id,
            "model": run.get("name") or run.get("model"),
            "status": run.get("status"),
            "task": run.get("questions_path"),
            "task_format": (run.get("config") or {}).get("task_format"),
            "categories": metrics.get("categories") or {},
        }
    )


# -- the run --------------------------------------------------------------------------------------
def _config(opts: LoglikOptions, task: McTask) -> dict[str, Any]:
    return {
        "task_format": task.format,
        "bos": opts.bos,
        "limit": opts.limit,
        "request": {"echo": True, "logprobs": 1, "max_tokens": 0, "add_special_tokens": True if opts.bos else False},
        "target_delimiter": " ",
    }


def _find_run(cat: Catalog, task: McTask, endpoint: str, model: str, bos: bool) -> dict | None:
    for row in cat.evals(KIND, questions_hash=task.hash, endpoint=endpoint, model=model):
        config = row.get("config") or {}
        if config.get("task_format") == task.format and bool(config.get("bos")) == bos:
            return row
    return None


def _question_row(run_id: str, item: McItem) -> dict[str, Any]:
    return {
        "eval_id": run_id,
        "question_id": item.item_id,
        "category": item.category,
        "turns": [item.context],
        "reference": None,
        "meta": {
            "format": f"loglik-{item.source.get('format')}",
            "choices": item.choices,
            "gold": item.gold,
            "line": item.source.get("number"),
        },
    }


def run_loglik(
    cat: Catalog, task_path: str, opts: LoglikOptions, on_event: Callable[[str, dict[str, Any]], None] | None = None
) -> LoglikResult:
    """Create or continue a loglik run and score the questions it lacks. Every scored question
    is stored as it completes; a kill loses only the questions in flight."""
    emit = on_event or (lambda kind, data: None)
    base_url = normalize_base_url(opts.endpoint)
    existing: dict | None = None
    if opts.run:
        existing = eval_row(cat, opts.run, KIND)
        if not task_path:
            task_path = existing["questions_path"]
    elif looks_like_id(str(task_path)):
        existing = eval_row(cat, str(task_path), KIND)
        task_path = existing["questions_path"]
    task_format = opts.task_format
    if existing is not None and task_format == "auto":
        task_format = (existing.get("config") or {}).get("task_format") or "auto"
    task = load_task(task_path, task_format)
    items = task.items[: opts.limit] if opts.limit else task.items

    model = opts.model or (existing or {}).get("model")
    if not model:
        model = served_model(base_url, opts.api_key, opts.retries, opts.retry_wait_s)
        emit("model", {"model": model})
    if existing is not None:
        if existing["questions_hash"] != task.hash:
            raise OpenchatError(
                f"run {existing['id']} was made from a different task file "
                f"(hash {existing['questions_hash']}, this one is {task.hash}); "
                f"start a new run instead"
            )
        bos = bool((existing.get("config") or {}).get("bos"))
        if bos != opts.bos:
            emit("note", {"message": f"continuing {existing['id']} with its recorded --{'bos' if bos else 'no-bos'}"})
        opts.bos = bos
    elif not opts.new:
        existing = _find_run(cat, task, base_url, model, opts.bos)

    resumed = existing is not None
    if existing is not None:
        run_id = existing["id"]
    else:
        fields = dict(
            kind=KIND,
            name=opts.name or model,
            questions_path=str(task.path),
            questions_hash=task.hash,
            endpoint=base_url,
            model=model,
            checkpoint_id=lineage_checkpoint(cat, opts.checkpoint, model, base_url),
            config=_config(opts, task),
        )
        # Two identical commands started together share the run (rows are keyed by question).
        row, made = find_or_start_run(cat, lambda: _find_run(cat, task, base_url, model, opts.bos), opts.new, **fields)
        run_id, resumed = row["id"], not made
    cat.insert_many("questions", (_question_row(run_id, item) for item in items), replace=True)
    done = cat.answered_ids(run_id)
    todo = [item for item in items if item.item_id not in done]
    already = len(items) - len(todo)
    emit("start", start_event(run_id, resumed, len(items), len(todo), model=model, endpoint=base_url))
    if not todo:
        metrics = loglik_metrics(cat, run_id, len(items))
        finish(cat, run_id, "completed", metrics)
        return LoglikResult(run_id, resumed, len(items), already, 0, [], "completed", metrics)

    finish(cat, run_id, "running")
    errors: list[str] = []
    counter = {"scored": 0, "retries": 0}

    async def go() -> None:
        async with ScoringClient(
            base_url,
            model,
            api_key=opts.api_key,
            concurrency=opts.concurrency,
            retries=opts.retries,
            retry_wait_s=opts.retry_wait_s,
            bos=opts.bos,
        ) as client:

            async def handle(item: McItem) -> None:
                try:
                    result = await score_item(client, item)
                except EndpointError as exc:
                    if exc.fatal:
                        raise
                    errors.append(f"{item.item_id}: {exc.message}")
                    emit("error", {"question_id": item.item_id, "message": exc.message})
                    return
                cat.insert(
                    "answers", {"eval_id": run_id, "question_id": item.item_id, "model": model, **result}, replace=True
                )
                counter["scored"] += 1
                emit("answered", {"question_id": item.item_id, "done": already + counter["scored"]})

            # Each question sends one request per choice: enough questions to fill the window.
            try:
                await worker_pool(todo, max(1, opts.concurrency), handle)
            finally:
                counter["retries"] = client.retried

    def metrics_now() -> dict[str, Any]:
        return loglik_metrics(cat, run_id, len(items), len(errors), counter["retries"])

    def kept() -> str:
        return f"Run {run_id} keeps the {cat.count('answers', eval_id=run_id)}/{len(items)} questions scored"

    status, metrics = guarded_pass(
        cat, run_id, go, metrics_now, kept, complete=lambda metrics: metrics["scored"] >= len(items)
    )
    return LoglikResult(run_id, resumed, len(items), already, counter["scored"], errors, status, metrics)
