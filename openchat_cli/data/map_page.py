"""The `data map` outputs: one self-contained interactive page (plotly, WebGL scatter) and a PNG.

The page carries every point's coordinates, groups and conversation as JSON; a small script of
ours draws one trace per group of the field picked in the selector (cluster, source, condition,
drop reason), shows the first turn on hover and the whole conversation in a side panel on click.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli.data.map import COLOR_FIELDS, FIRST_TURN_CHARS, Layout, MapPoint
from openchat_cli.html_page import page, write_page

LABELS = {"cluster": "cluster", "source": "source", "condition": "condition", "drop_reason": "drop reason"}

MAP_CSS = """
#map-wrap { display: flex; gap: 12px; height: calc(100vh - 120px); }
#map { flex: 1; min-width: 0; }
#panel { width: 420px; border-left: 1px solid #d0d7de; padding-left: 12px; overflow-y: auto; }
#controls { margin-bottom: 8px; }
.turn { border: 1px solid #d0d7de; border-radius: 6px; padding: 6px 8px; margin: 6px 0; }
.turn .role { font-size: 11px; text-transform: uppercase; color: #57606a; }
.meta { font-size: 12px; color: #57606a; }
"""

MAP_BODY = """
<div id="controls"><label>Colour by <select id="color-by"></select></label>
  <span id="count" class="meta"></span></div>
<div id="map-wrap"><div id="map"></div>
  <aside id="panel"><p class="meta">Click a point to read its conversation.</p></aside></div>
"""

# Text from the data goes in through textContent only.
MAP_JS = r"""
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("page-data").textContent);
  const pts = data.points;
  const select = document.getElementById("color-by");
  data.fields.forEach((f) => select.append(new Option(data.labels[f], f)));
  const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
    if (text !== undefined) e.textContent = String(text); return e; };
  function traces(field) {
    const groups = new Map();
    pts.forEach((p, i) => { const g = p[field]; if (!groups.has(g)) groups.set(g, []); groups.get(g).push(i); });
    const names = [...groups.keys()].sort((a, b) => groups.get(b).length - groups.get(a).length);
    return names.map((name) => { const idx = groups.get(name);
      return { type: "scattergl", mode: "markers", name: name + " (" + idx.length + ")",
               x: idx.map((i) => data.x[i]), y: idx.map((i) => data.y[i]), customdata: idx,
               text: idx.map((i) => pts[i].hover), hovertemplate: "%{text}<extra>" + name + "</extra>",
               marker: { size: data.marker, opacity: 0.75 } }; });
  }
  const layout = { margin: { l: 10, r: 10, t: 10, b: 10 }, xaxis: { visible: false }, yaxis: { visible: false },
                   legend: { itemsizing: "constant" }, hovermode: "closest", dragmode: "pan" };
  const div = document.getElementById("map");
  function draw() {
    return Plotly.react(div, traces(select.value), layout, { displaylogo: false, responsive: true, scrollZoom: true })
      .then(() => { document.getElementById("count").textContent = pts.length + " conversations";
                    document.body.dataset.ready = "1"; });
  }
  function show(i) {
    const p = pts[i];
    const panel = document.getElementById("panel");
    panel.replaceChildren(el("h3", "", p.id));
    panel.dataset.point = String(i);
    panel.append(el("p", "meta", "cluster " + p.cluster + " · source " + p.source + " · condition " + p.condition
                    + " · " + p.drop_reason + (p.detail ? " (" + p.detail + ")" : "")));
    p.turns.forEach((t) => {
      const box = el("div", "turn");
      box.append(el("div", "role", t.role), el("div", "text", t.content));
      panel.append(box);
    });
    if (p.cut) panel.append(el("p", "meta", "(cut to " + data.max_chars + " characters)"));
  }
  select.addEventListener("change", draw);
  draw().then(() => div.on("plotly_click", (ev) => { if (ev.points.length) show(ev.points[0].customdata); }));
  window.openchatMap = { show };
})();
"""


def _clip_turns(turns: list[dict[str, str]], max_chars: int) -> tuple[list[dict[str, str]], bool]:
    out, left = [], max_chars
    for t in turns:
        if left <= 0:
            return out, True
        text = t["content"]
        out.append({"role": t["role"], "content": text[:left]})
        if len(text) > left:
            return out, True
        left -= len(text)
    return out, False


def page_data(points: list[MapPoint], lay: Layout, max_chars: int) -> dict[str, Any]:
    fields = [f for f in COLOR_FIELDS if f != "drop_reason" or any(p.drop_reason != "kept" for p in points)]
    rows = []
    for p in points:
        turns, cut = _clip_turns(p.messages, max_chars)
        first = p.first_turn
        hover = first[:FIRST_TURN_CHARS] + ("…" if len(first) > FIRST_TURN_CHARS else "")
        rows.append(
            {
                "id": p.id,
                "cluster": p.cluster,
                "source": p.source,
                "condition": p.condition,
                "drop_reason": p.drop_reason,
                "detail": p.extra.get("detail"),
                "hover": html.escape(hover, quote=False).replace("\n", "<br>"),  # plotly reads tags
                "turns": turns,
                "cut": cut,
            }
        )
    n = len(points)
    return {
        "x": [round(float(v), 4) for v in lay.xy[:, 0]],
        "y": [round(float(v), 4) for v in lay.xy[:, 1]],
        "points": rows,
        "fields": fields,
        "labels": LABELS,
        "max_chars": max_chars,
        "marker": 7 if n < 2_000 else 4 if n < 20_000 else 3,
    }


def write_map_html(
    path: Path, points: list[MapPoint], lay: Layout, *, title: str, subtitle: str, max_chars: int
) -> Path:
    return write_page(
        path,
        page(title, MAP_BODY, subtitle=subtitle, css=MAP_CSS, data=page_data(points, lay, max_chars), scripts=[MAP_JS]),
    )


def write_map_png(path: Path, points: list[MapPoint], lay: Layout, title: str) -> Path:
    """A static picture coloured by cluster (the largest 20 named in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from openchat_cli.atomic import temp_file_beside

    counts = Counter(p.cluster for p in points)
    fig, ax = plt.subplots(figsize=(9, 7))
    size = 8 if len(points) < 2_000 else 2 if len(points) < 20_000 else 0.5
    for name, _ in counts.most_common():
        idx = np.array([i for i, p in enumerate(points) if p.cluster == name])
        ax.scatter(lay.xy[idx, 0], lay.xy[idx, 1], s=size, alpha=0.7, label=f"{name} ({len(idx)})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    if len(counts) <= 20:
        ax.legend(fontsize="small", markerscale=max(1.0, 6 / size), loc="best")
    fig.tight_layout()
    import os

    fd, tmp = temp_file_beside(path, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
