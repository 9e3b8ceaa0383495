"""Training curves of one or more runs on one chart (`openchat catalog plot`), to compare fine-tunes.

`run_series` reads what the catalog holds (store's `run_curve`) into plain series; `render_png`
draws them with matplotlib. Another renderer (the HTML views) takes the same series.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError

LOSS = "loss"
EVAL_LOSS = "eval_loss"
DEFAULT_METRICS = (LOSS, EVAL_LOSS)


@dataclass
class RunSeries:
    """One run's curves: metric name -> [(step, value)], in step order."""

    run_id: str
    label: str
    status: str
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "label": self.label,
            "status": self.status,
            "series": {k: [[s, v] for s, v in points] for k, points in self.series.items()},
        }


def curve_keys(points: list[dict[str, Any]]) -> list[str]:
    """The numeric keys a stored curve has (what --metric can name)."""
    keys = dict.fromkeys(
        k
        for p in points
        for k, v in p.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    return list(keys)


def run_series(catalog: Any, refs: list[str], metrics: list[str] | None = None) -> list[RunSeries]:
    """Series of `metrics` (default: loss and eval_loss) for each run in `refs` (ids or prefixes).
    A metric asked for by name that a run does not have is an error naming what it has; the
    default eval_loss is simply absent for runs trained without --eval-data."""
    explicit = bool(metrics)
    wanted = list(dict.fromkeys(metrics or DEFAULT_METRICS))
    out: list[RunSeries] = []
    for ref in refs:
        run_id = catalog.resolve(ref)
        if catalog.table_of(run_id) != "runs":
            raise OpenchatError(f"{run_id} is not a training run (plot takes run-… ids)")
        curve = catalog.run_curve(run_id)
        label = f"{run_id} ({Path(curve.output_path).name})" if curve.output_path else run_id
        found = RunSeries(run_id, label, curve.status)
        for metric in wanted:
            if metric == EVAL_LOSS:
                points = list(curve.evals)
            else:
                points = [
                    (int(p["step"]), float(p[metric]))
                    for p in curve.points
                    if isinstance(p.get(metric), (int, float)) and not isinstance(p.get(metric), bool)
                ]
            if points:
                found.series[metric] = points
            elif explicit or metric == LOSS:
                have = curve_keys(curve.points) + ([EVAL_LOSS] if curve.evals else [])
                if not curve.points:
                    raise OpenchatError(f"{run_id} ({curve.status}) has no curve points yet: nothing to plot")
                raise OpenchatError(f"{run_id} has no '{metric}' in its curve (it has: {', '.join(have)})")
        out.append(found)
    return out


def panels(metrics: list[str]) -> list[list[str]]:
    """Metrics grouped into axes: loss and eval_loss share one; every other metric gets its own."""
    groups: list[list[str]] = []
    losses = [m for m in metrics if m in (LOSS, EVAL_LOSS)]
    if losses:
        groups.append(losses)
    groups += [[m] for m in metrics if m not in (LOSS, EVAL_LOSS)]
    return groups


def build_figure(runs: list[RunSeries], metrics: list[str]) -> Any:
    """A matplotlib Figure (no pyplot state): one panel per metric group, one colour per run;
    training curves solid, held-out losses dashed with markers."""
    from matplotlib.figure import Figure

    groups = panels(metrics)
    fig = Figure(figsize=(9, 3.6 * len(groups)), layout="constrained")
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for ax, group in zip(axes, groups):
        for run, colour in zip(runs, colours):
            for metric in group:
                points = run.series.get(metric)
                if not points:
                    continue
                steps, values = zip(*points)
                style = {"linestyle": "--", "marker": "o", "markersize": 3} if metric == EVAL_LOSS else {}
                name = "eval loss" if metric == EVAL_LOSS else metric
                ax.plot(steps, values, color=colour, label=f"{run.label} {name}", **style)
        ax.set_ylabel(" / ".join(group))
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize="small")
    axes[-1].set_xlabel("optimizer step")
    return fig


def render_png(runs: list[RunSeries], metrics: list[str], path: Path) -> Path:
    """Draw the chart into `path` (written beside and renamed, so it appears whole)."""
    from openchat_cli.figure_file import save_figure

    return save_figure(build_figure(runs, metrics), path)


def build_plotly_figure(runs: list[RunSeries], metrics: list[str]) -> Any:
    """The same chart as `build_figure` as a plotly figure: one panel per metric group, one
    colour per run, held-out losses dashed with markers; hover shows step and value."""
    import plotly.colors
    from plotly.subplots import make_subplots

    groups = panels(metrics)
    fig = make_subplots(rows=len(groups), cols=1, shared_xaxes=True, vertical_spacing=0.08)
    palette = plotly.colors.qualitative.D3
    for row, group in enumerate(groups, 1):
        for i, run in enumerate(runs):
            for metric in group:
                points = run.series.get(metric)
                if not points:
                    continue
                name = "eval loss" if metric == EVAL_LOSS else metric
                held_out = metric == EVAL_LOSS
                fig.add_scatter(
                    x=[s for s, _ in points],
                    y=[v for _, v in points],
                    row=row,
                    col=1,
                    name=f"{run.label} {name}",
                    mode="lines+markers" if held_out else "lines",
                    line={"color": palette[i % len(palette)], "dash": "dash" if held_out else "solid"},
                    marker={"size": 5},
                    hovertemplate="step %{x}<br>" + name + " %{y:.4g}<extra></extra>",
                )
        fig.update_yaxes(title_text=" / ".join(group), row=row, col=1)
    fig.update_xaxes(title_text="optimizer step", row=len(groups), col=1)
    fig.update_layout(
        height=200 + 320 * len(groups),
        legend_orientation="h",
        hovermode="x unified",
        margin={"l": 10, "r": 10, "t": 20, "b": 10},
    )
    return fig


def render_html(runs: list[RunSeries], metrics: list[str], path: Path) -> Path:
    """The chart as one self-contained interactive page (plotly.js inlined), written whole."""
    from openchat_cli.html_page import figure_div, page, write_page

    body = figure_div(build_plotly_figure(runs, metrics), "curves")
    subtitle = ", ".join(f"{r.run_id} ({r.status})" for r in runs)
    return write_page(
        path, page("openchat training curves", body, subtitle=subtitle, scripts=["document.body.dataset.ready = '1';"])
    )
