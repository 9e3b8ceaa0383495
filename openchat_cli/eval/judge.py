"""`openchat eval judge`: LLM-as-judge in single (1-10 rating) or pairwise mode.

The parts, as FastChat keeps them apart: prompt sets (judge_prompts.py), the matches of a run and
which are done (matches.py), the judge turning one match into one verdict (judging.py), and here
the run: finding or starting it, storing verdicts, and playing every match not judged yet.

- A judge run is identified by (answer run, baseline run, judge model, endpoint, mode, prompts):
  running the same command again continues it and asks only the units without a verdict. Two
  identical commands started together end up on the same run (found or created in one write
  transaction) and share its units: each unit is claimed before it is asked (store/claims.py),
  so neither asks what the other is asking, and each waits for the other's units at the end.
- The catalog keeps one verdict per (run, question, turn, order, judge model); a verdict that
  arrives for a unit already judged is dropped, never stored twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openchat_cli.endpoints import normalize_base_url
from openchat_cli.errors import OpenchatError
from openchat_cli.eval.client import DEFAULT_RETRIES, DEFAULT_RETRY_WAIT_S, ChatClient
from openchat_cli.eval.judge_prompts import PromptSet, load_prompts, prompts_config, prompts_key
from openchat_cli.eval.judging import DEFAULT_JUDGE_MAX_TOKENS, REFERENCE_CATEGORIES, Judge, Verdict, judge_match
from openchat_cli.eval.matches import Match, is_judged, judged_units, plan_matches, unit_name
from openchat_cli.eval.runs import claimed_pool, eval_row, finish, guarded_pass, start_event
from store.catalog import Catalog
from store.claims import UnitClaims


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
    answer_run_id: str
    baseline_run_id: str | None
    resumed: bool
    total: int
    already: int  # judged before this command started
    judged_now: int  # judged by this command
    judged_elsewhere: int  # judged meanwhile by another command on the same run
    parse_failures_now: int
    status: str
    notes: list[str]


@dataclass
class JudgeRun:
    """The judge run verdicts are stored in."""

    id: str
    answer_run_id: str
    baseline_run_id: str | None
    judge_model: str
    mode: str  # single | pairwise
    resumed: bool


# -- which run ------------------------------------------------------------------------------------


def find_matching_judge(
    cat: Catalog,
    answer_run_id: str,
    baseline_run_id: str | None,
    judge_model: str,
    endpoint: str,
    mode: str,
    prompts_hash: str,
) -> dict | None:
    rows = cat.evals(
        "judge", parent_id=answer_run_id, baseline_id=baseline_run_id or None, model=judge_model, endpoint=endpoint
    )
    for row in rows:
        config = row.get("config") or {}
        if config.get("mode") == mode and config.get("prompts_key") == prompts_hash:
            return row
    return None


def runs_to_judge(
    cat: Catalog, answer_ref: str, opts: JudgeOptions, emit: Callable[[str, dict[str, Any]], None]
) -> tuple[dict, dict | None]:
    """The answer run to judge and, pairwise, the baseline run; refuses what cannot be judged."""
    if opts.mode not in ("single", "pairwise"):
        raise OpenchatError(f"--mode must be 'single' or 'pairwise', not '{opts.mode}'")
    answer_run = eval_row(cat, answer_ref, "answer")
    if opts.mode != "pairwise":
        if opts.baseline:
            emit("note", {"message": "--baseline is only used in pairwise mode; ignored"})
        return answer_run, None
    if not opts.baseline:
        raise OpenchatError("pairwise judging needs --baseline ANSWER_RUN (the other model's answers)")
    baseline_run = eval_row(cat, opts.baseline, "answer")
    if baseline_run["id"] == answer_run["id"]:
        raise OpenchatError(f"{answer_run['id']} cannot be judged against itself")
    return answer_run, baseline_run


def open_judge_run(
    cat: Catalog, answer_run: dict, baseline_run: dict | None, opts: JudgeOptions, prompts: PromptSet
) -> JudgeRun:
    """The run named by --run, else the matching one (unless --new), else a new one."""
    base_url = normalize_base_url(opts.judge_endpoint)
    baseline_run_id = baseline_run["id"] if baseline_run else None
    if opts.run:
        row = eval_row(cat, opts.run, "judge")
        if row["parent_id"] != answer_run["id"] or (row.get("baseline_id") or None) != baseline_run_id:
            raise OpenchatError(
                f"judge run {row['id']} judged {row['parent_id']}"
                f"{' vs ' + row['baseline_id'] if row.get('baseline_id') else ''}, "
                f"not this answer run"
            )
        return JudgeRun(row["id"], answer_run["id"], baseline_run_id, row["model"] or opts.judge_model, opts.mode, True)

    key = prompts_key(prompts, opts.mode)
    label = answer_run.get("name") or answer_run.get("model")
    if baseline_run:
        label += f" vs {baseline_run.get('name') or baseline_run.get('model')}"
    fields = dict(
        kind="judge",
        name=opts.name or f"{label} ({opts.judge_model})",
        endpoint=base_url,
        model=opts.judge_model,
        parent_id=answer_run["id"],
        baseline_id=baseline_run_id,
        questions_path=answer_run.get("questions_path"),
        questions_hash=answer_run.get("questions_hash"),
        config={
            "mode": opts.mode,
            "prompts": prompts_config(prompts, opts.mode),
            "prompts_key": key,
            "prompts_file": str(Path(opts.prompts).resolve()) if opts.prompts else None,
            "max_tokens": opts.max_tokens,
            "temperature": 0.0,
            "reference_categories": sorted(REFERENCE_CATEGORIES),
        },
    )
    if opts.new:
        row, created = cat.get(cat.add_eval(**fields)), True
    else:
        row, created = cat.find_or_add_eval(
            lambda: find_matching_judge(
                cat, answer_run["id"], baseline_run_id, opts.judge_model, base_url, opts.mode, key
            ),
            **fields,
        )
    return JudgeRun(
        row["id"], answer_run["id"], baseline_run_id, row["model"] or opts.judge_model, opts.mode, not created
    )


# -- storing --------------------------------------------------------------------------------------


def store_verdict(cat: Catalog, run: JudgeRun, verdict: Verdict) -> bool:
    """Store one verdict; False when its unit already holds one (it is then dropped)."""
    match = verdict.match
    return cat.insert_new(
        "judgments",
        {
            "eval_id": run.id,
            "question_id": match.question.question_id,
            "turn": match.turn,
            "mode": run.mode,
            "answer_run_id": run.answer_run_id,
            "baseline_run_id": run.baseline_run_id,
            "order": match.order,
            "judge_model": run.judge_model,
            "prompt_name": verdict.prompt_name,
            "raw": verdict.raw,
            "verdict": verdict.verdict,
            "score": verdict.score,
            "parse_ok": int(verdict.parse_ok),
            "meta": verdict.meta,
        },
    )


# -- the command ----------------------------------------------------------------------------------


def run_judge(
    cat: Catalog, answer_ref: str, opts: JudgeOptions, on_event: Callable[[str, dict[str, Any]], None] | None = None
) -> JudgeResult:
    """Create or continue a judge run and judge every match without a verdict. Raises on fatal
    failures after marking the run failed/interrupted; every verdict received is stored."""
    emit = on_event or (lambda kind, data: None)
    answer_run, baseline_run = runs_to_judge(cat, answer_ref, opts, emit)
    prompts = load_prompts(opts.prompts)
    plan = plan_matches(cat, answer_run["id"], baseline_run["id"] if baseline_run else None)
    for note in plan.notes:
        emit("note", {"message": note})
    if not plan.matches:
        raise OpenchatError(
            f"nothing to judge: {answer_run['id']} has no answers"
            + (f" in common with {baseline_run['id']}" if baseline_run else "")
        )
    run = open_judge_run(cat, answer_run, baseline_run, opts, prompts)
    judge = Judge(run.judge_model, opts.mode, prompts, opts.max_tokens)

    done = judged_units(cat, run.id)
    todo = [m for m in plan.matches if m.key not in done]
    total, already = len(plan.matches), len(plan.matches) - len(todo)
    emit(
        "start",
        start_event(
            run.id,
            run.resumed,
            total,
            len(todo),
            mode=opts.mode,
            answer_run_id=run.answer_run_id,
            baseline_run_id=run.baseline_run_id,
        ),
    )
    tally = {"judged": 0, "errors": 0, "elsewhere": 0}

    def result(status: str) -> JudgeResult:
        return JudgeResult(
            run.id,
            run.answer_run_id,
            run.baseline_run_id,
            run.resumed,
            total,
            already,
            tally["judged"],
            tally["elsewhere"],
            tally["errors"],
            status,
            plan.notes,
        )

    def metrics() -> dict[str, Any]:
        from openchat_cli.eval.report import judge_summary

        return judge_summary(cat, run.id, lc_ci=False).to_dict()

    if not todo:
        finish(cat, run.id, "completed", metrics())
        return result("completed")

    finish(cat, run.id, "running")

    def progressed() -> None:
        emit("judged", {"done": already + tally["judged"] + tally["elsewhere"]})

    def done_elsewhere(match: Match) -> None:
        tally["elsewhere"] += 1
        progressed()

    async def go() -> None:
        async with ChatClient(
            normalize_base_url(opts.judge_endpoint),
            run.judge_model,
            api_key=opts.api_key,
            concurrency=opts.concurrency,
            retries=opts.retries,
            retry_wait_s=opts.retry_wait_s,
        ) as client:

            async def play(match: Match) -> None:
                verdict = await judge_match(client, judge, match)
                if not store_verdict(cat, run, verdict):
                    done_elsewhere(match)
                    return
                tally["judged"] += 1
                tally["errors"] += not verdict.parse_ok
                progressed()

            await claimed_pool(
                todo,
                opts.concurrency,
                UnitClaims(cat, run.id),
                lambda m: unit_name(m.key),
                lambda m: is_judged(cat, run.id, m.key),
                play,
                done_elsewhere,
            )

    def kept() -> str:
        return f"Judge run {run.id} keeps the {len(judged_units(cat, run.id))}/{total} judgments received"

    guarded_pass(cat, run.id, go, metrics, kept)
    return result("completed")
