"""`openchat data …`: clean, tokenize, stats, show and split chat datasets.

Thin commands: options are parsed here, the work happens in the sibling modules.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from openchat_cli.console import console, err_console, print_json, progress, table
from openchat_cli.errors import OpenchatError

app = typer.Typer(no_args_is_help=True)

FORMAT_HELP = (
    "Force the record format: auto | sharegpt | html | alpaca | dolly | openai, or a preference "
    "format: trl | hh | rm-static | webgpt | shp | gpt4llm."
)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OpenchatError(f"{out} already exists (pass --force to replace it)")
    if out.is_dir():
        raise OpenchatError(f"{out} is a folder; give a file name")


def _default_out(name: str) -> Path:
    from openchat_cli.home import default_output_dir

    return default_output_dir("datasets") / name


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".jsonl", ".json", ".ndjson", ".parquet", ".html", ".htm"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _warn(lines) -> None:
    for line in lines:
        err_console.print(f"[yellow]warning:[/] {line}", highlight=False)


# ---------------------------------------------------------------------------------------------
@app.command("clean")
def clean_command(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT", help="Files or folders (JSON, JSONL, saved HTML pages) or catalog dataset ids."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Output conversations or pairs JSONL (default: HOME/datasets/NAME.clean.jsonl); an input mixing both writes the other kind to OUT.pairs.jsonl / OUT.conversations.jsonl.",
    ),
    fmt: str = typer.Option("auto", "--format", help=FORMAT_HELP),
    html: str = typer.Option(
        "auto", "--html", help="Convert HTML replies to Markdown: auto (when a reply is HTML) | always | never."
    ),
    skip_checks: list[str] = typer.Option(
        [],
        "--skip-check",
        help="Switch off a structure check (repeatable): empty_message, leading_assistant, trailing_user, one_turn, non_alternating, too_short, misplaced_system, no_trainable_reply.",
    ),
    trim_ends: bool = typer.Option(
        True,
        "--trim-ends/--no-trim-ends",
        help="Trim a leading assistant / trailing user turn (the split-off parts of long ShareGPT conversations) and keep the rest; --no-trim-ends drops such conversations instead.",
    ),
    min_chars: int = typer.Option(10, "--min-chars", help="Drop conversations with less text than this (0: off)."),
    blocked_words: Optional[Path] = typer.Option(
        None, "--blocked-words", help="File of blocked words (one a line; default: built-in list)."
    ),
    no_blocked_words: bool = typer.Option(
        False, "--no-blocked-words", help="Do not drop conversations for blocked words."
    ),
    unwanted_phrases: Optional[Path] = typer.Option(
        None, "--unwanted-phrases", help="File of unwanted phrases (default: built-in refusal list)."
    ),
    no_unwanted_phrases: bool = typer.Option(
        False, "--no-unwanted-phrases", help="Do not zero the weight of replies with unwanted phrases."
    ),
    no_dedup: bool = typer.Option(False, "--no-dedup", help="Keep exact duplicates."),
    near_dup: bool = typer.Option(False, "--near-dup", help="Also drop near-duplicates (MinHash LSH; more memory)."),
    near_dup_threshold: float = typer.Option(
        0.85, "--near-dup-threshold", help="Jaccard similarity counted as a near-duplicate."
    ),
    keep_models: list[str] = typer.Option(
        [], "--keep-model", help="Keep only conversations whose model matches (substring or glob; repeatable)."
    ),
    keep_sources: list[str] = typer.Option(
        [], "--keep-source", help="Keep only conversations whose source file matches (repeatable)."
    ),
    condition_from: Optional[str] = typer.Option(
        None,
        "--condition-from",
        help="Give each conversation a class from its `model` field or its source file: model | source.",
    ),
    classes: list[str] = typer.Option(
        [], "--class", help="PATTERN=CLASS: model/source pattern to class name (repeatable; e.g. 'gpt-4*=GPT4')."
    ),
    weights: list[str] = typer.Option(
        [], "--weight", help="CLASS=W: assistant-token weight of a class (repeatable; e.g. GPT4=1 GPT3=0.1)."
    ),
    default_weight: float = typer.Option(1.0, "--default-weight", help="Weight of classes not given with --weight."),
    name: Optional[str] = typer.Option(None, "--name", help="Name in the catalog (default: the output file name)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Normalise, filter and dedupe raw conversation dumps (ShareGPT JSON/HTML, Alpaca, Dolly,
    OpenAI messages) into conversations JSONL, and preference data (TRL, Anthropic HH, rm-static,
    WebGPT, SHP, GPT-4-LLM) into pairs JSONL; every dropped record is reported with a reason."""
    from openchat_cli.data.clean import CleanOptions, parse_pairs, run_clean
    from openchat_cli.data.formats import FORMATS
    from openchat_cli.data.io import StagedOutputs, ensure_registered, resolve_input, side_path
    from openchat_cli.data.records import ALL_REASONS
    from openchat_cli.data.wordlists import DEFAULT_BLOCKED, DEFAULT_UNWANTED
    from store.catalog import open_catalog

    if fmt not in FORMATS:
        raise OpenchatError(f"--format must be one of {', '.join(FORMATS)}")
    resolved = [resolve_input(v) for v in inputs]
    paths = [p for p, _ in resolved]
    out = out or _default_out(f"{_stem(paths[0])}.clean.jsonl")
    _check_out(out, force)
    if any(p.resolve() == out.resolve() for p in paths):
        raise OpenchatError(f"{out} is also an input; write somewhere else")
    options = CleanOptions(
        format=fmt,
        html=html,
        skip_checks=tuple(skip_checks),
        trim_ends=trim_ends,
        min_chars=min_chars,
        blocked_words=None if no_blocked_words else (blocked_words or DEFAULT_BLOCKED),
        unwanted_phrases=None if no_unwanted_phrases else (unwanted_phrases or DEFAULT_UNWANTED),
        dedup=not no_dedup,
        near_dup=near_dup,
        near_dup_threshold=near_dup_threshold,
        keep_models=tuple(keep_models),
        keep_sources=tuple(keep_sources),
        condition_from=condition_from,
        classes=tuple(parse_pairs(classes, "--class")),
        weights=dict(parse_pairs(weights, "--weight", float)),
        default_weight=default_weight,
    )
    dropped_path = side_path(out, "dropped")
    catalog = open_catalog()  # a damaged or unreachable catalog stops the command before any work
    other_paths: dict[str, Path] = {}
    other_files: list = []

    def open_other(kind: str):
        """The second output, for the kind the first kept record was not (a mixed input)."""
        other_paths[kind] = side_path(out, kind)
        _check_out(other_paths[kind], force)
        other_files.append(staged.open(other_paths[kind], "wb"))
        return other_files[-1]

    with StagedOutputs() as staged:
        with progress(transient=True) as bar:
            task = bar.add_task("cleaning", total=None, info="")
            with staged.open(out, "wb") as out_fh, staged.open(dropped_path, "wb") as drop_fh:
                tick = (lambda: bar.advance(task)) if err_console.is_terminal else None
                try:
                    result = run_clean(paths, out_fh, drop_fh, options, on_record=tick, open_other=open_other)
                finally:
                    for fh in other_files:
                        fh.close()
        _warn_stale(staged)
        if result.kept == 0:
            _warn(result.report.warnings[:20])
            raise OpenchatError(_nothing_kept(result, staged, out, dropped_path))
        counts = result.counts()

        def register(catalog) -> str:
            parents = list(
                dict.fromkeys(
                    ensure_registered(p, "raw", given, catalog=catalog, num_records=result.report.files.get(str(p)))
                    for p, given in resolved
                )
            )
            made = {}
            for kind, path in [(result.main_kind, out), *other_paths.items()]:
                made[kind] = catalog.add_dataset(
                    name=(name or out.name) if path == out else path.name,
                    path=path,
                    format=kind,
                    parent_id=parents[0] if parents else None,
                    parents=parents[1:],
                    content_hash=result.content_hashes.get(kind),
                    num_records=result.kinds[kind],
                    counts=counts,
                    meta={
                        "inputs": [str(p) for p in paths],
                        "options": options.describe(),
                        "kind": kind,
                        "dropped_path": str(dropped_path.resolve()),
                    },
                )
            for kind, ds_id in made.items():
                for other, other_id in made.items():
                    if other != kind:
                        catalog.link(ds_id, other_id, "cleaned-with")
            others.update({k: v for k, v in made.items() if k != result.main_kind})
            return made[result.main_kind]

        others: dict[str, str] = {}
        ds = staged.publish(register, catalog)

    _warn(result.report.warnings[:20])
    _warn(_unused_weights(options.weights, result.conditions))
    if result.report.warning_count > 20:
        _warn([f"… {result.report.warning_count - 20} more warnings (in the catalog entry's counts)"])
    if as_json:
        print_json(
            {
                "id": ds,
                "path": str(out),
                "kind": result.main_kind,
                "dropped_path": str(dropped_path),
                "counts": counts,
                "other": {
                    k: {"id": v, "path": str(other_paths[k]), "records": result.kinds[k]} for k, v in others.items()
                },
            }
        )
        return
    if result.dropped:
        rows = [
            (
                reason,
                f"{result.dropped[reason]:,}",
                f"{100 * result.dropped[reason] / max(result.read, 1):.1f}%",
                result.examples.get(reason, ""),
            )
            for reason in ALL_REASONS
            if result.dropped.get(reason)
        ]
        console.print(table("dropped", ["reason", "count", "of read", "first example"], rows))
    if result.fixes:
        console.print(
            table(
                "kept, with changes",
                ["change", "count"],
                [(k.replace("_", " "), f"{v:,}") for k, v in sorted(result.fixes.items())],
            )
        )
    if result.conditions and (condition_from or len(result.conditions) > 1):
        console.print(
            table(
                "kept by condition",
                ["condition", "conversations", "weight"],
                [
                    (c, f"{n:,}", options.weights.get(c, options.default_weight) if condition_from else "")
                    for c, n in result.conditions.most_common()
                ],
            )
        )
    for kind, other_id in others.items():
        console.print(
            f"the input mixes conversations and pairs: {result.kinds[kind]:,} {kind} → "
            f"{other_paths[kind]} as [bold]{other_id}[/]",
            highlight=False,
        )
    console.print(
        f"read [bold]{result.read:,}[/], kept [bold green]{result.kinds[result.main_kind]:,}[/], dropped "
        f"[bold]{sum(result.dropped.values()):,}[/] → {out} as [bold]{ds}[/]"
        + (" (preference pairs)" if result.main_kind == "pairs" else "")
        + (f"\ndropped records (id, file, line, reason): {dropped_path}" if result.dropped else ""),
        highlight=False,
    )


def _unused_weights(weights: dict[str, float], kept: Counter) -> list[str]:
    """A --weight whose class no kept conversation has is most likely a typo (GPT-4 for GPT4):
    said, since the weights it was meant to set silently stay at --default-weight otherwise."""
    classes = ", ".join(sorted(c for c in kept if c)) or "none"
    return [
        f"--weight {cls}={w:g}: no kept conversation has class '{cls}' (classes: {classes}); "
        "--class PATTERN=CLASS names the classes"
        for cls, w in weights.items()
        if not kept.get(cls)
    ]


def _warn_stale(staged) -> None:
    if staged.removed_stale:
        names = ", ".join(p.name for p in staged.removed_stale[:3])
        more = f" and {len(staged.removed_stale) - 3} more" if len(staged.removed_stale) > 3 else ""
        _warn([f"removed {len(staged.removed_stale)} temp file(s) a killed earlier run left: {names}{more}"])


def _nothing_kept(result, staged, out: Path, dropped_path: Path) -> str:
    """Why `clean` produced nothing usable; publishes the dropped-records report (if any) so the
    user can see why, never the empty output, and registers nothing."""
    staged.discard(out)
    if result.read == 0:
        staged.discard()
        return (
            f"no records found in the input (an empty file, [] or no conversation in the page); "
            f"nothing written to {out}, nothing registered"
        )
    staged.publish_files()
    reasons = ", ".join(f"{r} {n:,}" for r, n in result.dropped.most_common(5))
    return (
        f"no conversation kept: all {result.read:,} record(s) dropped ({reasons}); see {dropped_path} "
        f"for each record's file, line and reason. Nothing written to {out}, nothing registered"
    )


# ---------------------------------------------------------------------------------------------
@app.command("pairs")
def pairs_command(
    judge_run: str = typer.Argument(
        ..., metavar="JUDGE_RUN", help="A pairwise judge run (ev-…): `eval judge A --baseline B --mode pairwise`."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output pairs JSONL (default: HOME/datasets/JUDGE_RUN.pairs.jsonl)."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Name in the catalog (default: the output file name)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Preference pairs from a pairwise judge run: the winner's reply is chosen, kept only where
    the verdict agrees in both display orders (flips, ties and unparsed verdicts are counted).
    Every judged turn gives a pair. For a later turn the judge compared each run's reply in that
    run's own conversation, so the pair does too: the prompt is what both conversations share
    (the first question, plus earlier turns whose replies are the same), and chosen / rejected
    are each run's own conversation from there on, its earlier replies as context (weight 0) and
    only the judged reply trained on (weight 1)."""
    from openchat_cli.data.io import StagedOutputs, sha256_file
    from openchat_cli.data.judge_pairs import DROP_REASONS, pairs_from_judge_run
    from store.catalog import open_catalog

    catalog = open_catalog()
    found = pairs_from_judge_run(catalog, judge_run)
    run_id = found.judge_run["id"]
    out = out or _default_out(f"{run_id}.pairs.jsonl")
    _check_out(out, force)
    counts = found.counts()
    if not found.records:
        reasons = ", ".join(f"{r} {n:,}" for r, n in found.dropped.most_common()) or "no verdicts yet"
        raise OpenchatError(
            f"{run_id}: no pair whose verdict agrees in both orders ({found.judged:,} judged: "
            f"{reasons}); nothing written to {out}, nothing registered"
        )
    with StagedOutputs() as staged:
        with staged.open(out, "wb") as fh:
            for record in found.records:
                fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))
        _warn_stale(staged)
        content_hash = sha256_file(staged.temp_of(out))

        def register(catalog) -> str:
            return catalog.add_dataset(
                name=name or out.name,
                path=out,
                format="pairs",
                parent_id=run_id,
                parents=[found.answer_run_id, found.baseline_run_id],
                content_hash=content_hash,
                num_records=len(found.records),
                counts=counts,
                meta={
                    "kind": "pairs",
                    "judge_run": run_id,
                    "answer_run": found.answer_run_id,
                    "baseline_run": found.baseline_run_id,
                    "judge_model": found.judge_run.get("model"),
                },
            )

        ds = staged.publish(register, catalog)
    _warn(found.notes)
    if as_json:
        print_json(
            {
                "id": ds,
                "path": str(out),
                "judge_run": run_id,
                "answer_run": found.answer_run_id,
                "baseline_run": found.baseline_run_id,
                "counts": counts,
            }
        )
        return
    rows = [(r, f"{found.dropped[r]:,}") for r in DROP_REASONS if found.dropped.get(r)]
    if rows:
        console.print(table("left out", ["reason", "pairs"], rows))
    console.print(
        f"{found.judged:,} judged pairs of {run_id}: kept [bold green]{len(found.records):,}[/] "
        f"(chosen from {found.answer_run_id}: {found.chosen_from['answer_run']:,}, from "
        f"{found.baseline_run_id}: {found.chosen_from['baseline']:,}) → {out} as [bold]{ds}[/]",
        highlight=False,
    )


# ---------------------------------------------------------------------------------------------
@app.command("tokenize")
def tokenize_command(
    input: str = typer.Argument(
        ..., metavar="INPUT", help="Conversations or pairs JSONL (from `data clean` / `data pairs`) or its catalog id."
    ),
    model: str = typer.Option(..., "--model", "-m", help="Model dir or checkpoint id whose tokenizer to use."),
    template_name: Optional[str] = typer.Option(
        None, "--template", help="Conversation template (default: the model's openchat.json)."
    ),
    max_len: Optional[int] = typer.Option(
        None,
        "--max-len",
        help="Tokens per training sequence; longer conversations are split at turn boundaries (default: the model's max positions, at most 4096).",
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output Parquet (default: HOME/datasets/NAME.parquet)."
    ),
    chunk_size: int = typer.Option(512, "--chunk-size", help="Conversations per batched tokenizer call."),
    workers: int = typer.Option(
        0,
        "--workers",
        help="Encode in N worker processes (for many cores and big data; 0: in this process, the tokenizer still uses every core).",
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Name in the catalog."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Tokenize conversations into per-token ids and loss weights (Parquet the trainer reads),
    splitting long conversations at turn boundaries instead of cutting them; preference pairs
    become chosen/rejected sequences sharing the prompt (for `train --method dpo|rm`)."""
    from openchat_cli.data.io import ensure_registered, resolve_input
    from openchat_cli.data.tokenize import tokenize_file
    from openchat_cli.model_dir import load_tokenizer, model_template, resolve_model, tokenizer_hash
    from openchat_cli.templates import check_tokenizer, get_template
    from openchat_cli.tokenized import make_metadata
    from store.catalog import open_catalog

    src, given = resolve_input(input)
    if not src.is_file():
        raise OpenchatError(f"{src} is not a file")
    model_dir, model_id = resolve_model(model)
    tname = model_template(model_dir, template_name)
    template = get_template(tname)
    tokenizer = load_tokenizer(model_dir)
    check_tokenizer(template, tokenizer)
    positions = _max_positions(model_dir)
    if max_len is None:
        max_len = min(positions or 4096, 4096)
    if max_len < 8:
        raise OpenchatError("--max-len must be at least 8 tokens")
    if chunk_size < 1:
        raise OpenchatError("--chunk-size must be positive")
    if workers < 0:
        raise OpenchatError("--workers must be 0 or more")
    if positions and max_len > positions:
        err_console.print(
            f"[yellow]warning:[/] --max-len {max_len} exceeds the model's {positions} positions", highlight=False
        )
    out = out or _default_out(f"{_stem(src)}.parquet")
    _check_out(out, force)
    catalog = open_catalog()
    if not model_id:
        row = catalog.find_by_path("checkpoints", model_dir)
        model_id = row["id"] if row else None
    from openchat_cli.data.tokenize_pairs import sniff_pairs

    pairs_input = sniff_pairs(src)
    parent = ensure_registered(src, "pairs" if pairs_input else "conversations", given, catalog=catalog)
    thash = tokenizer_hash(tokenizer)

    def metadata(stats, kind: str | None = None):
        return make_metadata(
            template=tname,
            tokenizer_hash=thash,
            max_len=max_len,
            kind=kind,
            source={
                "path": str(src.resolve()),
                "dataset_id": parent,
                "model": str(model_dir.resolve()),
                "model_id": model_id,
            },
            stats=stats.to_dict(),
        )

    dataset_meta = {"template": tname, "tokenizer_hash": thash, "max_len": max_len}
    model_meta = {"model": str(model_dir.resolve()), "model_id": model_id}
    if pairs_input:
        return _tokenize_pairs(
            src,
            out,
            template,
            tokenizer,
            max_len,
            chunk_size,
            workers,
            metadata,
            dataset_meta,
            model_meta,
            parent,
            name,
            catalog,
            as_json,
        )

    def write(tmp: Path, on_progress) -> Any:
        return tokenize_file(
            src,
            tmp,
            template,
            tokenizer,
            max_len,
            metadata,
            chunk_size=chunk_size,
            on_progress=on_progress,
            workers=workers,
            model_dir=model_dir,
            name=str(src),
        )

    def nothing_written(stats) -> str:
        why = (
            f"{src}: no training sequence to write ({stats.conversations:,} conversation(s) read, "
            f"{stats.malformed:,} malformed, {stats.dropped_no_targets:,} part(s) without a supervised "
            f"token within --max-len {max_len})"
        )
        if not stats.conversations and stats.malformed:  # most likely a raw dump (ShareGPT, Alpaca, …)
            why += (
                f". `data tokenize` reads conversations JSONL as `data clean` writes it: "
                f"run `openchat data clean {src} -o clean.jsonl` first"
            )
        return why

    ds, stats = _publish_tokenized(
        src,
        out,
        write,
        records=lambda st: st.sequences,
        nothing_written=nothing_written,
        noun="record(s)",
        label="tokenizing",
        fmt="tokenized",
        meta={**dataset_meta, **model_meta},
        parent=parent,
        name=name,
        catalog=catalog,
    )
    if as_json:
        print_json({"id": ds, "path": str(out), **dataset_meta, "stats": stats.to_dict()})
        return
    s = stats
    console.print(
        table(
            f"tokenized with {tname}, max {max_len} tokens",
            ["", ""],
            [
                ("conversations", f"{s.conversations:,}"),
                ("sequences", f"{s.sequences:,}"),
                ("split at turn boundaries", f"{s.split_conversations:,} conversations"),
                ("truncated (one turn > window)", f"{s.truncated:,} sequences"),
                ("dropped, nothing to train on", f"{s.dropped_no_targets:,} sequences"),
                ("malformed", f"{s.malformed:,}"),
                ("tokens", f"{s.tokens:,}"),
                ("supervised tokens", f"{s.supervised_tokens:,}"),
                ("longest", f"{s.longest:,}"),
            ],
        )
    )
    console.print(f"→ {out} as [bold]{ds}[/]", highlight=False)


def _publish_tokenized(
    src: Path,
    out: Path,
    write,
    *,
    records,
    nothing_written,
    noun: str,
    label: str,
    fmt: str,
    meta: dict[str, Any],
    parent: str,
    name: str | None,
    catalog,
) -> tuple[str, Any]:
    """The staging shared by conversations and pairs: `write(tmp, on_progress)` fills OUT's temp
    name under a progress bar; an empty result is refused (nothing written, nothing registered);
    otherwise the file appears together with its catalog entry. Returns (dataset id, stats)."""
    from openchat_cli.data.io import StagedOutputs, sha256_file

    total = _count_lines(src) if err_console.is_terminal else None
    with StagedOutputs() as staged:
        with progress(transient=True) as bar:
            task = bar.add_task(label, total=total, info="")
            tmp = staged.path(out)
            stats = write(tmp, lambda n: bar.advance(task, n))
        _warn_stale(staged)
        if records(stats) == 0:
            if stats.malformed:
                _warn([f"{stats.malformed} malformed {noun} skipped, e.g."] + stats.errors[:5])
            raise OpenchatError(f"{nothing_written(stats)}; nothing written to {out}, nothing registered")
        content_hash = sha256_file(tmp)

        def register(catalog) -> str:
            ds = catalog.add_dataset(
                name=name or out.name,
                path=out,
                format=fmt,
                parent_id=parent,
                content_hash=content_hash,
                num_records=records(stats),
                counts=stats.to_dict(),
                meta={**meta, "errors": stats.errors},
            )
            if meta.get("model_id"):
                catalog.link(ds, meta["model_id"], "tokenized-with")
            return ds

        ds = staged.publish(register, catalog)
    if stats.malformed:
        _warn([f"{stats.malformed} malformed {noun} skipped, e.g."] + stats.errors[:5])
    return ds, stats


def _tokenize_pairs(
    src: Path,
    out: Path,
    template,
    tokenizer,
    max_len: int,
    chunk_size: int,
    workers: int,
    metadata,
    dataset_meta: dict[str, Any],
    model_meta: dict[str, Any],
    parent: str,
    name: str | None,
    catalog,
    as_json: bool,
) -> None:
    """`data tokenize` of a pairs JSONL: the pairs Parquet (openchat_cli.tokenized), registered
    as `tokenized-pairs`."""
    from openchat_cli.data.tokenize_pairs import tokenize_pairs_file
    from openchat_cli.tokenized import PAIRS_KIND

    if workers:
        err_console.print("[yellow]warning:[/] --workers is not used for pairs (encoded in this process)")

    def write(tmp: Path, on_progress) -> Any:
        return tokenize_pairs_file(
            src,
            tmp,
            template,
            tokenizer,
            max_len,
            lambda stats: metadata(stats, kind=PAIRS_KIND),
            chunk_size=min(chunk_size, 256),
            name=str(src),
            on_progress=on_progress,
        )

    def nothing_written(stats) -> str:
        return (
            f"{src}: no pair to write ({stats.pairs:,} pair(s) read, {stats.malformed:,} malformed, "
            f"{stats.dropped_too_long:,} too long for --max-len {max_len}, {stats.dropped_no_targets:,} "
            f"without a supervised token)"
        )

    kind_meta = {**dataset_meta, "kind": PAIRS_KIND}
    ds, stats = _publish_tokenized(
        src,
        out,
        write,
        records=lambda st: st.written,
        nothing_written=nothing_written,
        noun="pair(s)",
        label="tokenizing pairs",
        fmt="tokenized-pairs",
        meta={**kind_meta, **model_meta},
        parent=parent,
        name=name,
        catalog=catalog,
    )
    if as_json:
        print_json({"id": ds, "path": str(out), "kind": PAIRS_KIND, **dataset_meta, "stats": stats.to_dict()})
        return
    s = stats
    console.print(
        table(
            f"pairs tokenized with {dataset_meta['template']}, max {max_len} tokens a side",
            ["", ""],
            [
                ("pairs", f"{s.pairs:,}"),
                ("written", f"{s.written:,}"),
                ("oldest prompt turns cut to fit", f"{s.shortened:,} pairs"),
                ("truncated at --max-len", f"{s.truncated:,} pairs"),
                ("dropped, prompt fills the window", f"{s.dropped_too_long:,}"),
                ("dropped, nothing to train on", f"{s.dropped_no_targets:,}"),
                ("malformed", f"{s.malformed:,}"),
                ("tokens", f"{s.tokens:,}"),
                ("supervised tokens", f"{s.supervised_tokens:,}"),
                ("longest side", f"{s.longest:,}"),
            ],
        )
    )
    console.print(f"→ {out} as [bold]{ds}[/]", highlight=False)


def _max_positions(model_dir: Path) -> int | None:
    from openchat_cli.model.context import context_length

    return context_length(model_dir)


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


# ---------------------------------------------------------------------------------------------
@app.command("stats")
def stats_command(
    inputs: list[str] = typer.Argument(
        ..., metavar="INPUT", help="Conversations (any input format), tokenized Parquet, or catalog ids."
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Count tokens with this model's tokenizer (conversations only; default: characters).",
    ),
    template_name: Optional[str] = typer.Option(
        None, "--template", help="Template for token counts (default: the model's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Counts, turns, a length histogram and a breakdown by condition."""
    from openchat_cli.data.io import is_parquet, resolve_input
    from openchat_cli.data.stats import (
        conversation_stats,
        jsonable,
        pair_stats,
        render,
        tokenized_pairs_stats,
        tokenized_stats,
    )
    from openchat_cli.data.tokenize_pairs import sniff_pairs
    from openchat_cli.tokenized import PAIRS_KIND, read_metadata

    paths = [resolve_input(v)[0] for v in inputs]
    if any(is_parquet(p) for p in paths):
        if len(paths) > 1:
            raise OpenchatError("give one tokenized Parquet file at a time")
        if model:
            err_console.print("[yellow]warning:[/] --model is not needed for a tokenized file")
        pairs = read_metadata(paths[0])["kind"] == PAIRS_KIND
        stats = tokenized_pairs_stats(paths[0]) if pairs else tokenized_stats(paths[0])
    elif len(paths) == 1 and paths[0].is_file() and sniff_pairs(paths[0]):
        stats = pair_stats(paths[0])
    else:
        tokenizer = template = None
        if model:
            from openchat_cli.model_dir import load_tokenizer, model_template, resolve_model
            from openchat_cli.templates import get_template

            model_dir, _ = resolve_model(model)
            template = get_template(model_template(model_dir, template_name))
            tokenizer = load_tokenizer(model_dir)
        stats = conversation_stats(paths, tokenizer, template)
        _warn(stats.get("warnings", []))
    if as_json:
        print_json(jsonable(stats))
        return
    render(stats, console, title=", ".join(str(p) for p in paths))


# ---------------------------------------------------------------------------------------------
@app.command("show")
def show_command(
    input: Annotated[
        str,
        typer.Argument(metavar="INPUT", help="Conversations (any input format), tokenized Parquet, or a catalog id."),
    ],
    ids: Annotated[Optional[list[str]], typer.Option("--id", help="Conversation id to show (repeatable).")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many to show (at most N).")] = 3,
    sample: Annotated[bool, typer.Option("--random", help="A seeded random sample instead of the first N.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --random.")] = 0,
    template_name: Annotated[
        Optional[str], typer.Option("--template", help="Show conversations as this template renders them.")
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option("--model", "-m", help="Tokenizer to decode a tokenized file (default: the one it was made with)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON.")] = False,
) -> None:
    """Render a few conversations, or tokenized sequences with their supervised tokens marked."""
    from openchat_cli.data import show
    from openchat_cli.data.io import is_parquet, resolve_input
    from openchat_cli.data.tokenize_pairs import sniff_pairs
    from openchat_cli.tokenized import PAIRS_KIND, read_metadata

    ids = ids or []
    path, given = resolve_input(input)
    if is_parquet(path) and read_metadata(path)["kind"] == PAIRS_KIND:
        rows = show.pick(show.tokenized_rows(path), lambda r: r["pair_id"], ids, limit, sample, seed)
        if as_json:
            print_json(rows)
            return
        tokenizer = _tokenizer_for(path, given, model)
        for row in rows:
            console.print(show.render_pair_row(row, tokenizer))
    elif path.is_file() and not is_parquet(path) and sniff_pairs(path):
        rows = show.pick(show.pairs_jsonl(path), lambda r: str(r.get("id")), ids, limit, sample, seed)
        if as_json:
            print_json(rows)
            return
        for pair in rows:
            console.print(show.render_pair(pair))
    elif is_parquet(path):
        rows = show.pick(show.tokenized_rows(path), lambda r: r["conversation_id"], ids, limit, sample, seed)
        if as_json:
            print_json(rows)
            return
        tokenizer = _tokenizer_for(path, given, model)
        for row in rows:
            console.print(show.render_sequence(row, tokenizer))
    else:
        convs = show.pick(show.conversations([path]), lambda c: c.id, ids, limit, sample, seed)
        if as_json:
            print_json([c.to_json() for c in convs])
            return
        template = None
        if template_name:
            from openchat_cli.templates import get_template

            template = get_template(template_name)
        for conv in convs:
            console.print(show.render_conversation(conv, template))
        rows = convs
    if ids and len(rows) < len(set(ids)):
        found = {
            str(r.get("conversation_id", r.get("pair_id", r.get("id")))) if isinstance(r, dict) else r.id for r in rows
        }
        raise OpenchatError(f"not found in {path}: {', '.join(i for i in ids if i not in found)}")
    if not rows:
        err_console.print(f"[yellow]{path} holds no readable conversations[/]")


def _tokenizer_for(path: Path, given: str | None, model: str | None):
    """The tokenizer to decode a tokenized file: --model, else the model recorded at tokenize time."""
    from openchat_cli.model_dir import load_tokenizer, resolve_model
    from openchat_cli.tokenized import read_metadata

    if model:
        return load_tokenizer(resolve_model(model)[0])
    recorded = read_metadata(path).get("source", {}).get("model")
    if recorded and Path(recorded).is_dir():
        return load_tokenizer(Path(recorded))
    err_console.print(
        "[yellow]the model this file was tokenized with is gone: showing token ids (pass --model to decode)[/]"
    )
    return None


# ---------------------------------------------------------------------------------------------
@app.command("split")
def split_command(
    input: str = typer.Argument(
        ..., metavar="INPUT", help="Conversations JSONL or tokenized Parquet, or a catalog id."
    ),
    eval_fraction: float = typer.Option(0.02, "--eval", help="Fraction of conversations for the eval split (0–1)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same split."),
    train_out: Optional[Path] = typer.Option(
        None, "--train-out", help="Train output (default: INPUT.train.EXT next to it)."
    ),
    eval_out: Optional[Path] = typer.Option(
        None, "--eval-out", help="Eval output (default: INPUT.eval.EXT next to it)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace outputs that exist."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Reproducible train/eval split by conversation id (split parts of a conversation stay together)."""
    from openchat_cli.data.io import StagedOutputs, ensure_registered, is_parquet, resolve_input, sha256_file
    from openchat_cli.data.split import counts, split_jsonl, split_parquet
    from store.catalog import open_catalog

    if not 0.0 < eval_fraction < 1.0:
        raise OpenchatError("--eval must be a fraction between 0 and 1 (e.g. 0.02)")
    src, given = resolve_input(input)
    if not src.is_file():
        raise OpenchatError(f"{src} is not a file")
    parquet = is_parquet(src)
    ext = ".parquet" if parquet else ".jsonl"
    train_out = train_out or src.with_name(f"{_stem(src)}.train{ext}")
    eval_out = eval_out or src.with_name(f"{_stem(src)}.eval{ext}")
    if train_out.resolve() == eval_out.resolve() or src.resolve() in (train_out.resolve(), eval_out.resolve()):
        raise OpenchatError("train, eval and input must be three different files")
    _check_out(train_out, force)
    _check_out(eval_out, force)
    from openchat_cli.data.tokenize_pairs import sniff_pairs
    from openchat_cli.tokenized import PAIRS_KIND, read_metadata

    pairs = read_metadata(src)["kind"] == PAIRS_KIND if parquet else sniff_pairs(src)
    fmt = ("tokenized" if parquet else "conversations") if not pairs else ("tokenized-pairs" if parquet else "pairs")
    catalog = open_catalog()  # a damaged or unreachable catalog stops the command before any work
    parent = ensure_registered(src, fmt, given, catalog=catalog)
    with StagedOutputs() as staged:
        if parquet:
            result = split_parquet(src, staged.path(train_out), staged.path(eval_out), eval_fraction, seed)
        else:
            with staged.open(train_out) as tfh, staged.open(eval_out) as efh:
                result = split_jsonl(src, tfh, efh, eval_fraction, seed)
        _warn_stale(staged)
        if result.train + result.eval == 0:
            if result.errors:
                _warn([f"{result.malformed} malformed line(s) skipped, e.g."] + result.errors[:5])
            raise OpenchatError(
                f"{src}: no {'sequence' if parquet else 'conversation'} to split "
                f"({result.malformed} malformed); nothing written, nothing registered"
            )
        hashes = {
            which: sha256_file(staged.temp_of(path)) for which, path in (("train", train_out), ("eval", eval_out))
        }

        def register(catalog) -> dict[str, str]:
            parent_row = catalog.get(parent)
            meta = {**(parent_row.get("meta") or {}), "split": None, "seed": seed, "eval_fraction": eval_fraction}
            made = {}
            for which, path, n in (("train", train_out, result.train), ("eval", eval_out, result.eval)):
                made[which] = catalog.add_dataset(
                    name=path.name,
                    path=path,
                    format=fmt,
                    parent_id=parent,
                    content_hash=hashes[which],
                    num_records=n,
                    counts=counts(result),
                    meta={**meta, "split": which},
                )
            return made

        made = staged.publish(register, catalog)
    if result.errors:
        _warn([f"{result.malformed} malformed line(s) skipped, e.g."] + result.errors[:5])
    if result.eval == 0:
        err_console.print("[yellow]warning:[/] the eval split is empty (too few conversations for --eval)")
    if as_json:
        print_json(
            {
                "train": {"id": made["train"], "path": str(train_out), "records": result.train},
                "eval": {"id": made["eval"], "path": str(eval_out), "records": result.eval},
                "seed": seed,
                "eval_fraction": eval_fraction,
                "malformed": result.malformed,
            }
        )
        return
    unit = "pairs" if pairs else ("sequences" if parquet else "conversations")
    console.print(
        f"train: {result.train:,} {unit} → {train_out} as [bold]{made['train']}[/]\n"
        f"eval:  {result.eval:,} {unit} → {eval_out} as [bold]{made['eval']}[/]",
        highlight=False,
    )


# ---------------------------------------------------------------------------------------------
@app.command("map")
def map_command(
    data: str = typer.Argument(..., metavar="DATA", help="Cleaned conversations JSONL or a catalog dataset id."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="The HTML page (default: DATA's name + .map.html beside it); the PNG goes beside it."
    ),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        "-m",
        help="Embed with this model's mean-pooled hidden states (folder or ck-… id; default: TF-IDF + SVD, no model).",
    ),
    clusters: int = typer.Option(12, "--clusters", "-k", min=1, help="k-means clusters."),
    dropped: Optional[bool] = typer.Option(
        None,
        "--dropped/--no-dropped",
        help="Also map the records `clean` dropped (default: when DATA.dropped.jsonl is beside DATA).",
    ),
    fit_limit: int = typer.Option(
        200_000,
        "--fit-limit",
        min=100,
        help="Fit UMAP on at most this many points "
        "(a seeded sample) and place the rest with transform (slower per point below "
        "~100k: see benchmarks/bench_map.py).",
    ),
    dims: int = typer.Option(64, "--dims", min=2, help="TF-IDF + SVD dimensions."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Texts per forward pass (--model)."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=8, help="Tokens of each conversation embedded (--model)."),
    device: str = typer.Option("cpu", "--device", help="--model: cpu, cuda, cuda:1 …"),
    max_chars: int = typer.Option(
        4000, "--max-chars", min=100, help="Characters of each conversation kept in the page's side panel."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the samples, UMAP and k-means."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """A 2-D map of the conversations (embed → UMAP → k-means) as an interactive HTML page and a PNG."""
    import time

    from openchat_cli.data.embed import model_hidden_states, tfidf_svd
    from openchat_cli.data.io import resolve_input
    from openchat_cli.data.map import layout, load_points, name_clusters
    from openchat_cli.data.map_page import write_map_html, write_map_png

    path, _ = resolve_input(data)
    if not path.is_file():
        raise OpenchatError(f"{path}: give a conversations JSONL file")
    html_path = out or path.with_name(_stem(path) + ".map.html")
    png_path = html_path.with_suffix(".png")
    started = time.monotonic()
    points = load_points(path, dropped)
    texts = [p.text for p in points]
    with progress(transient=True) as bar:
        task = bar.add_task("embedding", total=len(texts))
        tick = lambda n: bar.advance(task, n)  # noqa: E731
        if model:
            from openchat_cli.model_dir import resolve_model

            model_dir, _ = resolve_model(model)
            embeddings = model_hidden_states(
                texts, model_dir, batch_size=batch_size, max_tokens=max_tokens, device=device, tick=tick
            )
        else:
            embeddings = tfidf_svd(texts, dims=dims, seed=seed, tick=tick)
        embedded = time.monotonic()
        bar.add_task("UMAP + k-means", total=None)
        lay = layout(embeddings, clusters=clusters, fit_limit=fit_limit, seed=seed)
    name_clusters(points, lay.clusters)
    how = f"model {model}" if model else "TF-IDF + SVD"
    sampled = f", UMAP fitted on {lay.fitted_on:,} sampled points" if lay.fitted_on < len(points) else ""
    kept = sum(p.drop_reason == "kept" for p in points)
    subtitle = (
        f"{path.name}: {len(points):,} conversations ({kept:,} kept, {len(points) - kept:,} dropped) · "
        f"{how} · UMAP{sampled} · k-means k={min(clusters, len(points))}"
    )
    write_map_html(
        html_path, points, lay, title=f"openchat data map: {path.name}", subtitle=subtitle, max_chars=max_chars
    )
    write_map_png(png_path, points, lay, title=f"{path.name} ({len(points):,} conversations, {how})")
    summary = {
        "html": str(html_path),
        "png": str(png_path),
        "points": len(points),
        "kept": kept,
        "dropped": len(points) - kept,
        "clusters": int(lay.clusters.max()) + 1,
        "embedding": how,
        "umap_fitted_on": lay.fitted_on,
        "embed_s": round(embedded - started, 2),
        "total_s": round(time.monotonic() - started, 2),
    }
    if as_json:
        print_json(summary)
        return
    console.print(
        f"mapped [bold]{len(points):,}[/] conversations ({how}{sampled}) in {summary['total_s']:.1f}s → "
        f"{html_path} and {png_path}",
        highlight=False,
        soft_wrap=True,
    )
