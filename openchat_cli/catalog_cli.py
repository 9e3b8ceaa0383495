"""`openchat catalog …`: list, show, trace and remove what openchat has made."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.tree import Tree

from openchat_cli.console import console, print_json, table
from openchat_cli.errors import OpenchatError
from store.catalog import LIST_NAMES, open_catalog

app = typer.Typer(no_args_is_help=True)

# Columns shown per table in `catalog list` (everything is in --json).
LIST_COLUMNS: dict[str, list[str]] = {
    "datasets": ["id", "name", "format", "num_records", "parent_id", "created_at", "path"],
    "checkpoints": ["id", "name", "kind", "template", "run_id", "step", "created_at", "path"],
    "runs": ["id", "kind", "status", "dataset_id", "base_checkpoint_id", "created_at", "output_path"],
    "evals": ["id", "kind", "name", "model", "status", "parent_id", "created_at"],
    "chats": ["id", "title", "model", "updated_at"],
}
# Shorter headers for those columns in the tables (the JSON keeps the field names).
LIST_HEADERS = {
    "num_records": "records",
    "parent_id": "parent",
    "created_at": "created",
    "updated_at": "updated",
    "dataset_id": "dataset",
    "base_checkpoint_id": "base",
    "run_id": "run",
    "output_path": "output",
}


def _settle_runs(catalog) -> None:
    """Training runs whose command was killed (their folder lock is free) show as interrupted."""
    from openchat_cli.run_folder import settle_abandoned_runs

    settle_abandoned_runs(catalog)


def _list_table(name: str, rows: list[dict]):
    """One `catalog list` table. Ids are what users copy into the next command, so id columns are
    never cut short on a narrow terminal: short headers and dates leave room, the other columns give way."""
    cols = LIST_COLUMNS[name]
    this_year = datetime.now(UTC).strftime("%Y")
    cells = [[_list_cell(c, r.get(c), this_year) for c in cols] for r in rows]
    shown = table(name, [LIST_HEADERS.get(c, c) for c in cols], cells)
    for i, (col, column) in enumerate(zip(cols, shown.columns)):
        if col == "id" or col.endswith("_id"):
            column.no_wrap = True
            column.min_width = max([2] + [len(row[i] or "") for row in cells])
    return shown


def _list_cell(column: str, value, this_year: str) -> str | None:
    """A table cell: times (UTC) to the minute, without the year when it is this year's."""
    if column.endswith("_at") and isinstance(value, str) and len(value) >= 16 and value[10] == "T":
        return value[5:10] + " " + value[11:16] if value[:4] == this_year else value[:10]
    return None if value is None else str(value)


@app.command("list")
def list_command(
    what: Annotated[
        Optional[str], typer.Argument(help="datasets | checkpoints | runs | evals | chats (default: all).")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Newest N rows per table.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """List catalog entries, newest first."""
    if what is not None and what not in LIST_NAMES:
        raise OpenchatError(f"unknown kind '{what}': choose one of {', '.join(sorted(LIST_NAMES))}")
    tables = [LIST_NAMES[what]] if what else list(LIST_COLUMNS)
    catalog = open_catalog()
    _settle_runs(catalog)
    result = {t: catalog.list(t, limit=limit) for t in tables}
    if as_json:
        print_json(result if what is None else result[tables[0]])
        return
    for name, rows in result.items():
        if what is None and not rows:
            continue
        console.print(_list_table(name, rows))
    if what is None and not any(result.values()):
        console.print(f"The catalog at {catalog.path} is empty.")


@app.command("show")
def show_command(
    ref: Annotated[str, typer.Argument(help="A catalog id (or a unique prefix of one).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show every field of one catalog entry."""
    catalog = open_catalog()
    _settle_runs(catalog)
    row = catalog.get(ref)
    extra: dict = {}
    if catalog.table_of(row["id"]) == "chats":
        extra["messages"] = catalog.chat_messages(row["id"])
    if catalog.table_of(row["id"]) == "evals":
        extra["num_answers"] = catalog.count("answers", eval_id=row["id"])
        extra["num_judgments"] = catalog.count("judgments", eval_id=row["id"])
    if as_json:
        print_json({**row, **extra})
        return
    rows = []
    for key, value in {**row, **extra}.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
            if len(value) > 300:
                value = value[:300] + "…"
        rows.append((key, value))
    console.print(table(f"{row['id']}: {catalog.summary(row['id'])}", ["field", "value"], rows))


@app.command("lineage")
def lineage_command(
    ref: Annotated[str, typer.Argument(help="A catalog id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """What an entry was made from, and what was made from it."""
    catalog = open_catalog()
    result = catalog.lineage(ref)
    if as_json:
        print_json(result)
        return
    tree = Tree(f"[bold]{result['id']}[/] {result['summary']}")
    _grow(
        tree.add("[cyan]made from[/]"),
        result["id"],
        result["ancestors"] or [],
        lambda n: f"[dim]{n['relation']}[/] {n['id']} {n['summary']}",
        "[dim]nothing recorded[/]",
    )
    _grow(
        tree.add("[cyan]used by[/]"),
        result["id"],
        result["descendants"] or [],
        lambda n: f"{n['id']} {n['summary']} [dim]({n['relation']} {n['via']})[/]",
        "[dim]nothing yet[/]",
    )
    console.print(tree)


def _grow(branch: Tree, root: str, nodes: list[dict], label, empty: str) -> None:
    """Nest lineage nodes under the node they were reached through (`via`), so a tree shows
    which input belongs to which step; a node reached twice is shown once, at its first place."""
    if not nodes:
        branch.add(empty)
        return
    placed: dict[str, Tree] = {root: branch}
    for node in nodes:  # breadth first: a node's `via` is always placed before it
        parent = placed.get(node["via"], branch)
        placed.setdefault(node["id"], parent.add(label(node), highlight=False))


@app.command("rm")
def rm_command(
    refs: Annotated[list[str], typer.Argument(help="Catalog ids to forget (files on disk are kept).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the removed rows as JSON.")] = False,
) -> None:
    """Remove entries from the catalog (and their answers, verdicts or messages). Files stay."""
    catalog = open_catalog()
    removed = [catalog.remove(ref) for ref in refs]
    if as_json:
        print_json(removed)
        return
    for row in removed:
        console.print(f"removed {row['id']}")


@app.command("plot")
def plot_command(
    runs: list[str] = typer.Argument(..., help="Training run ids (run-…) to draw on one chart."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Image to write (.png, .svg or .pdf)."),
    metrics: Optional[list[str]] = typer.Option(
        None,
        "--metric",
        "-m",
        help="A curve key to draw instead of loss and eval_loss (repeatable): lr, tokens_per_s, packing_efficiency, or a method's own (rewards/margins, kl, …).",
    ),
    html_out: Optional[Path] = typer.Option(
        None, "--html", help="Also (or instead) write the chart as one self-contained interactive HTML page."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the series as JSON."),
) -> None:
    """Loss and held-out loss curves of one or more training runs on one chart, to compare fine-tunes."""
    from openchat_cli.run_plot import DEFAULT_METRICS, render_html, render_png, run_series

    if output is None and html_out is None and not as_json:
        raise OpenchatError("say where to draw the chart: -o loss.png or --html loss.html (or --json for the numbers)")
    wanted = list(dict.fromkeys(metrics or DEFAULT_METRICS))
    catalog = open_catalog()
    _settle_runs(catalog)
    found = run_series(catalog, runs, metrics)
    if output is not None:
        render_png(found, wanted, output)
    if html_out is not None:
        render_html(found, wanted, html_out)
    if as_json:
        print_json(
            {
                "metrics": wanted,
                "runs": [r.to_dict() for r in found],
                "output": str(output) if output else None,
                "html": str(html_out) if html_out else None,
            }
        )
        return
    written = " and ".join(str(p) for p in (output, html_out) if p is not None)
    console.print(f"drew {', '.join(wanted)} of {len(found)} run(s) → {written}", highlight=False)


@app.command("path")
def path_command() -> None:
    """Print the path of catalog.db (even when it is damaged, so it can be moved aside)."""
    from store.home import catalog_path

    path = catalog_path()
    typer.echo(str(path))
    open_catalog(path).close()  # creates a new one; a damaged one is reported after its path
