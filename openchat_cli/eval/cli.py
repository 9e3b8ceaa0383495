"""`openchat eval …`: answer, loglik, judge, grade, report, export."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from openchat_cli import options as opt
from openchat_cli.console import console, err_console, print_json, progress
from openchat_cli.errors import OpenchatError

if TYPE_CHECKING:
    from openchat_cli.eval.judge import JudgeResult

app = typer.Typer(
    no_args_is_help=True,
    help="Generate answers, judge them with an LLM, grade, score multiple choice by log-likelihood, and report.",
)


class _Progress:
    """A rich progress bar fed by the run's events; notes and errors go to stderr."""

    def __init__(self, what: str, quiet: bool = False):
        self.what = what
        self.quiet = quiet
        self.bar = progress()
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "note":
            err_console.print(f"[yellow]note:[/] {data['message']}", highlight=False)
        elif kind == "model":
            err_console.print(f"model: {data['model']} (from the endpoint's /models)", highlight=False)
        elif kind == "start":
            verb = "continuing" if data["resumed"] else "started"
            if not self.quiet:
                err_console.print(
                    f"{verb} {data['run_id']}: {data['already']}/{data['total']} done, {data['todo']} to ask",
                    highlight=False,
                )
            self.task = self.bar.add_task(self.what, total=data["total"], completed=data["already"], info="")
        elif kind in ("answered", "judged") and self.task is not None:
            self.bar.update(self.task, completed=data["done"])
        elif kind == "error":
            err_console.print(f"[red]question {data['question_id']}:[/] {data['message']}", highlight=False)


def _endpoint_of(cat, kind: str, what: str, source: str | None, endpoint: str | None, run: str | None) -> str:
    """The endpoint to ask: --endpoint, else the one the continued --run used."""
    if source is None and run is None:
        raise OpenchatError(f"give a {what} (or --run ID to continue a run)")
    if endpoint is not None:
        return endpoint
    if run is None:
        raise OpenchatError("--endpoint is required (e.g. --endpoint http://127.0.0.1:18888/v1)")
    from openchat_cli.eval.runs import eval_row

    return eval_row(cat, run, kind)["endpoint"]


@app.command("answer")
def answer_command(
    questions: Annotated[
        Optional[str],
        typer.Argument(
            help="Question file (MT-bench/FastChat, Vicuna, AlpacaEval, multiple-choice, exact-answer "
            "or plain JSONL), a benchmark suite folder laid out like OpenChat's eval_data (or one "
            "of its task files), or an eval id whose questions to reuse."
        ),
    ] = None,
    endpoint: Annotated[
        Optional[str],
        typer.Option("--endpoint", "-e", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:18888/v1."),
    ] = None,
    model: opt.Model = None,
    api_key: opt.ApiKey = None,
    concurrency: opt.Concurrency = 32,
    temperature: Annotated[
        Optional[float],
        typer.Option("--temperature", "-t", help="One temperature for all (default: MT-bench's per category)."),
    ] = None,
    max_tokens: Annotated[
        Optional[int],
        typer.Option(
            "--max-tokens",
            min=1,
            help="Max new tokens per turn (default 1024; suites: none sent, as their reference harness).",
        ),
    ] = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt for every question.")] = None,
    name: opt.RunName = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Continue this answer run (eval id).")] = None,
    new: opt.New = False,
    checkpoint: opt.CheckpointRef = None,
    limit: opt.Limit = None,
    seed: Annotated[
        Optional[int],
        typer.Option(
            "--seed",
            help="Repeatable sampling: each request's seed comes from (SEED, question, turn), whatever the "
            "order or concurrency; two models answering with one SEED share their random draws.",
        ),
    ] = None,
    retries: opt.Retries = 6,
    retry_wait: opt.RetryWait = 1.0,
    as_json: opt.AsJson = False,
) -> None:
    """Ask an endpoint every question; answers are stored as they arrive. Re-run to resume."""
    from openchat_cli.eval.answer import AnswerOptions, run_answer
    from store.catalog import open_catalog

    cat = open_catalog()
    endpoint = _endpoint_of(cat, "answer", "question file", questions, endpoint, run)
    opts = AnswerOptions(
        endpoint=endpoint,
        model=model,
        api_key=api_key,
        concurrency=concurrency,
        temperature=temperature,
        max_tokens=max_tokens,
        system=system,
        name=name,
        run=run,
        new=new,
        checkpoint=checkpoint,
        retries=retries,
        retry_wait_s=retry_wait,
        limit=limit,
        seed=seed,
    )
    with _Progress("answering", quiet=as_json) as bar:
        result = run_answer(cat, questions or "", opts, bar)
    m = result.metrics
    truncated = f", {m['truncated']} truncated (the model's context was full)" if m.get("truncated") else ""
    _show_pass(
        result,
        as_json,
        answered_now=result.answered_now,
        line=f"[bold]{result.run_id}[/] {result.status}: {m['answered']}/{result.total} answered "
        f"({result.answered_now} now){truncated}, {m['completion_tokens']} completion tokens",
    )


def _show_pass(result: Any, as_json: bool, line: str, **done_now: int) -> None:
    """What a pass over a run's questions prints (`--json`: the result; else one line), and its exit:
    non-zero when questions failed, so the same command is re-run to retry them."""
    if as_json:
        print_json(
            {
                "run_id": result.run_id,
                "status": result.status,
                "resumed": result.resumed,
                "questions": result.total,
                "already": result.already,
                **done_now,
                "errors": result.errors,
                "metrics": result.metrics,
            }
        )
    else:
        console.print(line)
    if result.errors:
        raise OpenchatError(
            f"{len(result.errors)} questions failed (e.g. {result.errors[0]}); re-run the same command to retry them",
            exit_code=1,
        )


@app.command("loglik")
def loglik_command(
    task: Annotated[
        Optional[str],
        typer.Argument(
            help="Multiple-choice JSONL: ARC, MMLU or HellaSwag rows as on the hub, or OpenChat's "
            "{question, options, label}; or a loglik eval id to continue."
        ),
    ] = None,
    endpoint: Annotated[
        Optional[str],
        typer.Option(
            "--endpoint",
            "-e",
            help="OpenAI-compatible base URL with /v1/completions echo + logprobs (openchat serve, vLLM).",
        ),
    ] = None,
    task_format: Annotated[
        str,
        typer.Option(
            "--task-format",
            "-f",
            help="auto | arc | mmlu | hellaswag | choice: how to build the context and choices (as lm-evaluation-harness's task of that name).",
        ),
    ] = "auto",
    model: opt.Model = None,
    api_key: opt.ApiKey = None,
    concurrency: opt.Concurrency = 32,
    bos: Annotated[
        bool,
        typer.Option(
            "--bos/--no-bos",
            help="Let the server add its BOS token to each prompt (lm-evaluation-harness does not by default).",
        ),
    ] = False,
    name: opt.RunName = None,
    run: Annotated[Optional[str], typer.Option("--run", help="Continue this loglik run (eval id).")] = None,
    new: opt.New = False,
    checkpoint: opt.CheckpointRef = None,
    limit: opt.Limit = None,
    retries: opt.Retries = 6,
    retry_wait: opt.RetryWait = 1.0,
    as_json: opt.AsJson = False,
) -> None:
    """Score multiple-choice questions by log-likelihood (acc, acc_norm) as lm-evaluation-harness does. Re-run to resume."""
    from openchat_cli.eval.loglik import LoglikOptions, run_loglik
    from openchat_cli.eval.mc_tasks import TASK_FORMATS
    from store.catalog import open_catalog

    if task_format not in TASK_FORMATS:
        raise OpenchatError(f"--task-format must be one of {', '.join(TASK_FORMATS)}, not '{task_format}'")
    cat = open_catalog()
    endpoint = _endpoint_of(cat, "loglik", "task file", task, endpoint, run)
    opts = LoglikOptions(
        endpoint=endpoint,
        model=model,
        api_key=api_key,
        task_format=task_format,
        concurrency=concurrency,
        bos=bos,
        name=name,
        run=run,
        new=new,
        checkpoint=checkpoint,
        retries=retries,
        retry_wait_s=retry_wait,
        limit=limit,
    )
    with _Progress("scoring", quiet=as_json) as bar:
        result = run_loglik(cat, task or "", opts, bar)
    m = result.metrics

    def show(metric: str) -> str:
        value, err = m.get(metric), m.get(f"{metric}_stderr")
        if value is None:
            return f"{metric} -"
        return f"{metric} {100 * value:.1f}%" + (f" ± {100 * err:.1f}" if err is not None else "")

    _show_pass(
        result,
        as_json,
        scored_now=result.scored_now,
        line=f"[bold]{result.run_id}[/] {result.status}: {m['scored']}/{result.total} scored "
        f"({result.scored_now} now); {show('acc')}, {show('acc_norm')}  "
        f"(details: openchat eval report {result.run_id})",
    )


@app.command("judge")
def judge_command(
    answer_runs: Annotated[list[str], typer.Argument(help="Answer run(s) to judge (eval ids, prefixes ok).")],
    judge_endpoint: Annotated[
        str,
        typer.Option(
            "--judge-endpoint", envvar="OPENCHAT_JUDGE_ENDPOINT", help="OpenAI-compatible base URL of the judge."
        ),
    ],
    judge_model: Annotated[str, typer.Option("--judge-model", envvar="OPENCHAT_JUDGE_MODEL", help="Judge model name.")],
    judge_api_key: opt.JudgeApiKey = None,
    mode: Annotated[
        str, typer.Option("--mode", help="single (1-10 rating per turn) | pairwise (vs --baseline, both orders).")
    ] = "single",
    baseline: Annotated[
        Optional[str], typer.Option("--baseline", "-b", help="The other answer run, for pairwise.")
    ] = None,
    prompts: Annotated[
        Optional[Path], typer.Option("--prompts", help="FastChat-format judge prompt file (default: built-in prompts).")
    ] = None,
    concurrency: opt.Concurrency = 32,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Max tokens of each judgment.")] = 2048,
    retries: opt.Retries = 6,
    retry_wait: opt.RetryWait = 1.0,
    run: Annotated[Optional[str], typer.Option("--run", help="Continue this judge run.")] = None,
    new: Annotated[bool, typer.Option("--new", help="Start a fresh judge run even if a matching one exists.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Label for the judge run.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Judge answers with an LLM: single ratings, or pairwise in both orders. Re-run to resume."""
    from openchat_cli.eval.judge import JudgeOptions, run_judge
    from store.catalog import open_catalog

    if mode not in ("single", "pairwise"):
        raise OpenchatError(f"--mode must be 'single' or 'pairwise', not '{mode}'")
    if run and len(answer_runs) > 1:
        raise OpenchatError("--run continues one judge run: give one answer run with it")
    cat = open_catalog()
    opts = JudgeOptions(
        judge_endpoint=judge_endpoint,
        judge_model=judge_model,
        mode=mode,
        baseline=baseline,
        prompts=str(prompts) if prompts else None,
        api_key=judge_api_key,
        concurrency=concurrency,
        max_tokens=max_tokens,
        retries=retries,
        retry_wait_s=retry_wait,
        run=run,
        new=new,
        name=name,
    )
    results = []
    for ref in answer_runs:
        with _Progress(f"judging {ref}", quiet=as_json) as bar:
            result = run_judge(cat, ref, opts, bar)
        results.append(result)
        if not as_json:
            console.print(_judged_line(result, cat.get(result.run_id).get("metrics") or None))
    if as_json:
        print_json(
            [
                {
                    "run_id": r.run_id,
                    "answer_id": r.answer_run_id,
                    "baseline_id": r.baseline_run_id,
                    "status": r.status,
                    "resumed": r.resumed,
                    "judgments": r.total,
                    "already": r.already,
                    "judged_now": r.judged_now,
                    "judged_elsewhere": r.judged_elsewhere,
                    "parse_failures_now": r.parse_failures_now,
                    "notes": r.notes,
                }
                for r in results
            ]
        )


def _judged_line(result: JudgeResult, metrics: dict[str, Any] | None) -> str:
    """One line per judge run, from the summary `eval judge` stored as the run's metrics."""
    from openchat_cli.eval.summaries import PairwiseSummary, judge_summary_from_dict

    summary = judge_summary_from_dict(metrics) if metrics else None
    stored = result.already + result.judged_now + result.judged_elsewhere
    line = (
        f"[bold]{result.run_id}[/] {result.status}: {stored}/"
        f"{result.total} judgments ({result.judged_now} now), parse failures "
        f"{summary.reliability.parse_failures if summary else 0}"
    )
    if isinstance(summary, PairwiseSummary):
        if summary.adjusted_win_rate is not None:
            rel = summary.reliability
            line += (
                f"; adjusted win rate {100 * summary.adjusted_win_rate:.1f}%, flipped on swap "
                f"{rel.flipped}/{rel.swapped_pairs}"
            )
    elif summary is not None and summary.average is not None:
        line += f"; average score {summary.average:.2f}"
    return line + f"  (details: openchat eval report {result.run_id})"


@app.command("grade")
def grade_command(
    answer_runs: Annotated[
        list[str], typer.Argument(help="Answer run(s) of multiple-choice / exact-answer sets or suites.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Grade exact-answer sets without a judge (option letter, last number, \\boxed{} answer);
    suites by each task type's reference rules, with unmatched and lenient columns."""
    from openchat_cli.eval.grade import run_grade
    from openchat_cli.eval.report import render_suites
    from store.catalog import open_catalog

    cat = open_catalog()
    results = []
    for ref in answer_runs:
        with progress() as bar:
            task = bar.add_task(f"grading {ref}", total=None, info="")

            def on_event(kind: str, data: dict[str, Any], task=task, bar=bar) -> None:
                if kind == "start":
                    bar.update(task, total=data["total"])
                elif kind == "graded":
                    bar.update(task, completed=data["done"])

            results.append(run_grade(cat, ref, on_event))
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    for r in results:
        acc = "-" if r.accuracy is None else f"{100 * r.accuracy:.1f}%"
        console.print(
            f"[bold]{r.run_id}[/] {r.model}: accuracy {acc} ({r.correct}/{r.graded}), no answer found in {r.no_answer}"
        )
        for task_type, reason in (r.skipped or {}).items():
            err_console.print(f"[yellow]note:[/] {task_type} not graded ({reason})", highlight=False)
    if any(r.suite for r in results):
        render_suites(results, console)


@app.command("score")
def score_command(
    answer_run: str = typer.Argument(..., help="Answer run (ev-…) to score."),
    rm: str = typer.Option(
        ..., "--rm", help="Reward model: a checkpoint id (ck-…) or dir from `openchat train --method rm`."
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Conversations per forward pass (padded, grouped by length; default 8 on a GPU, 1 on CPU, where batching is slower).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Score every answer with a reward model (a judge that needs no API); `eval report` shows the
    mean reward with a bootstrap CI next to judge scores."""
    from openchat_cli.eval.reward_score import run_score
    from store.catalog import open_catalog

    with progress() as bar:
        task = bar.add_task(f"scoring {answer_run}", total=None, info="")

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "start":
                bar.update(task, total=data["total"])
            elif kind == "scored":
                bar.update(task, completed=data["done"])

        result = run_score(open_catalog(), answer_run, rm, on_event, batch_size=batch_size)
    if as_json:
        print_json(result.to_dict())
        return
    ci = result.mean_ci
    console.print(
        f"[bold]{result.run_id}[/] {result.model}: mean reward {result.mean:.3f}"
        + (f" (95% CI {ci.low:.3f} to {ci.high:.3f})" if ci else "")
        + f" over {result.scored} answers, by {result.reward_model}"
    )


@app.command("report")
def report_command(
    runs: Annotated[
        Optional[list[str]], typer.Argument(help="Judge, grade or answer runs (default: every judge and grade run).")
    ] = None,
    baseline: Annotated[
        Optional[list[str]], typer.Option("--baseline", "-b", help="Answer run to express single scores as a % of.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (rates as fractions).")] = False,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Also write a PNG: scores by category, models side by side.")
    ] = None,
    html_out: Annotated[
        Optional[Path],
        typer.Option(
            "--html", help="Also write one self-contained HTML page: the same numbers as charts, and a verdict browser."
        ),
    ] = None,
) -> None:
    """Scores, win rates and accuracy with bootstrap CIs, and judge reliability."""
    from openchat_cli.eval.report import build_report, render
    from openchat_cli.eval.report import plot as plot_report
    from store.catalog import open_catalog

    cat = open_catalog()
    report = build_report(cat, list(runs or []), list(baseline or []))
    if plot is not None:
        report = replace(report, plot=str(plot_report(report, plot)))
    if html_out is not None:
        from openchat_cli.eval.report_html import write_report_html

        report = replace(report, html=str(write_report_html(cat, report, html_out)))
    if as_json:
        print_json(report.to_dict())
        return
    render(report, console)
    if report.plot is not None:
        console.print(f"plot written to {report.plot}")
    if report.html is not None:
        console.print(f"HTML report written to {report.html}")


@app.command("export")
def export_command(
    run: Annotated[str, typer.Argument(help="Answer or judge run to export.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="fastchat | alpaca_eval")] = "fastchat",
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Write answers or judgments in FastChat's or AlpacaEval's formats."""
    from openchat_cli.eval.export import export_run
    from store.catalog import open_catalog

    cat = open_catalog()
    text, count, row = export_run(cat, run, fmt)
    if output is None:
        typer.echo(text, nl=False)
        return
    from openchat_cli.atomic import atomic_write_text

    atomic_write_text(output, text)
    noun = ("answer" if row["kind"] == "answer" else "judgment") + ("" if count == 1 else "s")
    err_console.print(
        f"wrote {count} {noun} of {row['id']} to {output}",
        highlight=False,
    )


@app.command("perplexity")
def perplexity_command(
    model_ref: str = typer.Argument(..., metavar="MODEL", help="Model dir or checkpoint id."),
    data: str = typer.Argument(
        ...,
        metavar="DATA",
        help="Tokenized .parquet (or ds-… id) made for this model, "
        "or a conversations JSONL (tokenized here with the model's template).",
    ),
    buckets: Optional[str] = typer.Option(
        None,
        "--buckets",
        help="Position bucket edges, e.g. 2048,4096 (default: quarters of the context, plus the "
        "original context of an extended model).",
    ),
    max_len: Optional[int] = typer.Option(
        None, "--max-len", min=2, help="Split JSONL conversations longer than this (default: the model's context)."
    ),
    tokens_per_batch: int = typer.Option(
        8192, "--tokens-per-batch", min=1, help="Tokens packed into one forward pass."
    ),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 | bf16."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Mean loss and perplexity on the supervised tokens of held-out data, by token position (packed, no padding)."""
    import tempfile

    from transformers import AutoConfig

    from openchat_cli.console import table
    from openchat_cli.eval.perplexity import default_edges, load_data, load_model, make_buckets, score
    from openchat_cli.model.context import context_length
    from openchat_cli.model_dir import load_tokenizer, model_template, read_meta, require_weights, resolve_model
    from store.catalog import open_catalog

    if dtype not in ("fp32", "bf16"):
        raise OpenchatError(f"--dtype must be fp32 or bf16, not '{dtype}'")
    model_dir, ck = resolve_model(model_ref)
    require_weights(model_dir)
    meta = read_meta(model_dir)
    ck = ck or meta.get("checkpoint_id")
    try:
        edges = [int(x) for x in buckets.split(",") if x.strip()] if buckets else None
    except ValueError:
        raise OpenchatError(f"--buckets must be comma-separated token positions, not '{buckets}'") from None
    context = context_length(model_dir)
    tokenizer = load_tokenizer(model_dir)
    vocab = AutoConfig.from_pretrained(str(model_dir)).vocab_size
    cat = open_catalog()
    with tempfile.TemporaryDirectory(prefix="openchat-ppl-") as scratch:
        tokens, ds_id = load_data(
            data,
            model_dir,
            template_name=model_template(model_dir),
            tokenizer=tokenizer,
            max_len=max_len or context or 2048,
            vocab_size=vocab,
            scratch=Path(scratch),
        )
    edges = edges or default_edges(context, meta.get("original_context_length"))
    eval_id = cat.add_eval(
        kind="perplexity",
        name=model_dir.name,
        questions_path=str(data),
        checkpoint_id=ck,
        model=str(model_dir),
        config={"buckets": edges, "dtype": dtype, "dataset_id": ds_id},
    )
    cat.link(eval_id, ds_id, "evaluates-on")
    try:
        model = load_model(model_dir, dtype)
        bar = progress()
        with bar:
            task = bar.add_task("scoring", total=len(tokens), visible=not as_json)
            result = score(
                model,
                tokens,
                buckets=make_buckets(edges),
                tokens_per_batch=tokens_per_batch,
                on_batch=lambda n: bar.advance(task, n),
            )
    except BaseException:
        cat.update("evals", eval_id, status="failed")
        raise
    result.facts = {
        "eval_id": eval_id,
        "model": str(model_dir),
        "checkpoint_id": ck,
        "data": str(data),
        "context_length": context,
        "original_context_length": meta.get("original_context_length"),
        "rope_scaling": meta.get("rope_scaling"),
    }
    summary = result.to_dict()
    cat.update(
        "evals",
        eval_id,
        status="completed",
        metrics={k: summary[k] for k in ("sequences", "tokens", "mean_loss", "perplexity", "buckets")},
    )
    if as_json:
        print_json(summary)
        return
    rows = [
        (
            b.label(),
            f"{b.tokens:,}",
            f"{b.mean_loss:.4f}" if b.tokens else "-",
            f"{b.perplexity:.2f}" if b.tokens else "-",
        )
        for b in result.buckets
    ]
    console.print(table(f"{model_dir.name} on {data}", ["positions", "tokens", "mean loss", "perplexity"], rows))
    console.print(
        f"[bold]{eval_id}[/]: {result.sequences:,} sequences, {result.tokens:,} supervised tokens; "
        f"mean loss {result.mean_loss:.4f}, perplexity {result.perplexity:.2f}",
        highlight=False,
    )
