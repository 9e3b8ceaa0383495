"""`openchat data map`: every conversation as a point on a 2-D map (embed → UMAP → k-means),
written as one self-contained interactive page and a PNG.

Points come from a cleaned conversations JSONL (the data contract) and, when `clean` left its
dropped-records report beside it (OUT.dropped.jsonl), from the raw records it dropped, looked up
by file and record number, so the map can be coloured by drop reason too.

UMAP is fitted on every point up to `fit_limit` (200k by default): measured on two busy cores
(benchmarks/bench_map.py), fitting all 50k points took 68 s while fitting a 10k sample and placing
the other 40k with `transform` took 145 s, so sampling only pays for very large sets (memory).
Past the limit UMAP is fitted on a seeded sample and the rest are placed with `transform` (said
in the page's subtitle).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from openchat_cli.errors import OpenchatError

KEPT = "kept"
FIRST_TURN_CHARS = 300  # hover text
COLOR_FIELDS = ("cluster", "source", "condition", "drop_reason")


@dataclass
class MapPoint:
    id: str
    source: str
    condition: str
    drop_reason: str
    messages: list[dict[str, str]]  # role, content (system first when there is one)
    cluster: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def first_turn(self) -> str:
        for m in self.messages:
            if m["role"] == "user":
                return m["content"]
        return self.messages[0]["content"] if self.messages else ""

    @property
    def text(self) -> str:
        """What gets embedded: every turn's text, in order."""
        return "\n".join(m["content"] for m in self.messages)


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in value if isinstance(p, dict))
    return "" if value is None else str(value)


def read_conversations(path: Path) -> Iterator[MapPoint]:
    """The conversations of a cleaned JSONL; a bad line stops with its file, line and field."""
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OpenchatError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise OpenchatError(f"{where}: a conversation must be a JSON object")
            messages = record.get("messages")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise OpenchatError(
                    f"{where}: field 'messages' must be a list of objects "
                    f"(is this a cleaned conversations file? run `openchat data clean` first)"
                )
            turns = [{"role": "system", "content": _content(record["system"])}] if record.get("system") else []
            turns += [{"role": str(m.get("role", "?")), "content": _content(m.get("content"))} for m in messages]
            yield MapPoint(
                id=str(record.get("id", f"line {line_no}")),
                source=str(record.get("source") or "(none)"),
                condition=str(record.get("condition") or "(none)"),
                drop_reason=KEPT,
                messages=turns,
            )


def _raw_turns(record: Any) -> list[dict[str, str]]:
    """Turns of a raw record in any of the common shapes, leniently: it was dropped, maybe malformed."""
    if not isinstance(record, dict):
        return [{"role": "?", "content": _content(record)}]
    for key in ("messages", "conversations", "conversation", "items"):
        value = record.get(key)
        if isinstance(value, list) and value:
            return [
                {
                    "role": str(m.get("role", m.get("from", "?"))),
                    "content": _content(m.get("content", m.get("value", m.get("text")))),
                }
                for m in value
                if isinstance(m, dict)
            ]
    texts = [(k, _content(v)) for k, v in record.items() if isinstance(v, str) and k not in ("id", "source")]
    return [{"role": k, "content": v} for k, v in texts]


def read_dropped(report: Path) -> list[MapPoint]:
    """Dropped records named in a `clean` report (id, file, record, reason), read back from their
    raw files; records whose file is gone are skipped."""
    from openchat_cli.data.readers import ReadReport, read_inputs

    wanted: dict[tuple[str, int], dict[str, Any]] = {}
    with open(report, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                wanted[(str(row["file"]), int(row["record"]))] = row
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise OpenchatError(f"{report}:{line_no}: not a dropped-record line (file, record, reason)") from None
    # The report names files as `clean` was given them: relative to where it ran, or to the report.
    found: dict[str, str] = {}
    for name in {f for f, _ in wanted}:
        for candidate in (Path(name), report.parent / name):
            if candidate.is_file():
                found[str(candidate)] = name
                break
    points = []
    for item in read_inputs([Path(f) for f in sorted(found)], ReadReport()) if found else []:
        row = wanted.get((found.get(item.loc.file, item.loc.file), item.loc.record))
        if row is None:
            continue
        turns = _raw_turns(item.data) if item.error is None else [{"role": "raw", "content": item.error}]
        data = item.data if isinstance(item.data, dict) else {}
        points.append(
            MapPoint(
                id=str(row.get("id") or f"{Path(item.loc.file).name}#{item.loc.record}"),
                source=str(data.get("source") or Path(item.loc.file).name),
                condition=str(data.get("condition") or "(none)"),
                drop_reason=str(row["reason"]),
                messages=turns,
                extra={"detail": row.get("detail")},
            )
        )
    return points


# -- layout ---------------------------------------------------------------------------------------


@dataclass
class Layout:
    xy: np.ndarray  # (n, 2)
    clusters: np.ndarray  # (n,) int
    fitted_on: int  # points UMAP was fitted on (the rest were transformed)


def layout(
    embeddings: np.ndarray, *, clusters: int = 12, neighbors: int = 15, fit_limit: int = 200_000, seed: int = 0
) -> Layout:
    """UMAP to 2-D (fitted on at most `fit_limit` points) and k-means on the embeddings."""
    n = len(embeddings)
    if n == 0:
        raise OpenchatError("nothing to map: no conversations")
    k = max(1, min(clusters, n))
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n > 20_000:
        km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    else:
        km = KMeans(n_clusters=k, random_state=seed, n_init=3)
    labels = km.fit_predict(embeddings) if k > 1 else np.zeros(n, dtype=int)
    if n < 4:  # UMAP needs a few neighbours: spread the handful of points on the first two axes
        xy = np.zeros((n, 2), dtype=np.float32)
        xy[:, : min(2, embeddings.shape[1])] = embeddings[:, :2]
        return Layout(xy, labels, n)
    try:
        import umap
    except ImportError:
        raise OpenchatError("`data map` needs umap-learn: pip install 'openchat-cli[map]'") from None
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=min(neighbors, n - 1),
        metric="cosine",
        random_state=seed,
        init="spectral" if n > 10 else "random",
        n_jobs=1,
    )
    if n > fit_limit:
        idx = np.random.default_rng(seed).choice(n, size=fit_limit, replace=False)
        reducer.fit(embeddings[idx])
        xy = reducer.transform(embeddings)
        xy[idx] = reducer.embedding_
        return Layout(np.asarray(xy, dtype=np.float32), labels, fit_limit)
    return Layout(np.asarray(reducer.fit_transform(embeddings), dtype=np.float32), labels, n)


def load_points(path: Path, dropped: bool | None) -> list[MapPoint]:
    """Kept conversations, plus the dropped ones when `clean`'s report sits beside the file
    (`dropped` None: when present; True: required; False: never)."""
    from openchat_cli.data.io import side_path

    points = list(read_conversations(path))
    report = side_path(path, "dropped")
    if dropped is True and not report.exists():
        raise OpenchatError(f"--dropped: no dropped-records report {report} beside {path}")
    if dropped is not False and report.exists():
        points += read_dropped(report)
    if not points:
        raise OpenchatError(f"{path}: no conversations to map")
    return points


def name_clusters(points: list[MapPoint], labels: np.ndarray) -> None:
    """Cluster names ordered by size: 'c0' is the largest."""
    sizes = np.bincount(labels)
    rank = {int(c): r for r, c in enumerate(np.argsort(-sizes, kind="stable"))}
    for p, label in zip(points, labels):
        p.cluster = f"c{rank[int(label)]}"
