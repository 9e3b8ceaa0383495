"""`openchat data map`: a cleaned file (and what `clean` dropped) mapped with TF-IDF + SVD, UMAP and
k-means into a self-contained page and a PNG; the page in a real headless Chromium."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tests.browser import browser_page
from tests.serve.test_ui import screenshot

pytest.importorskip("umap", reason="umap-learn is not installed (pip install -e .[map])")

TOPICS = {
    "python": [
        "How do I sort a list in Python?",
        "Explain Python decorators with an example",
        "What is a Python generator and when to use one?",
    ],
    "cooking": [
        "How long should I boil an egg?",
        "What is the best way to cook rice?",
        "Give me a recipe for fluffy pancakes",
    ],
    "travel": [
        "What should I see in Paris in two days?",
        "How do I find cheap flights to Tokyo?",
        "Make a packing list for a beach trip",
    ],
}
KEPT, DROPPED = 90, 2


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory):
    """`data clean` on raw ShareGPT records (two of them dropped), then `data map` on the result."""
    from typer.testing import CliRunner

    from openchat_cli.app import app

    work = tmp_path_factory.mktemp("map")
    rng = random.Random(0)
    rows = []
    for i in range(KEPT):
        topic = list(TOPICS)[i % 3]
        question = f"{rng.choice(TOPICS[topic])} (case {i})"
        rows.append(
            {
                "id": f"conv-{i}",
                "conversations": [
                    {"from": "human", "value": question},
                    {
                        "from": "gpt",
                        "value": f"About {topic}: " + " ".join(rng.choice(TOPICS[topic]) for _ in range(3)),
                    },
                ],
            }
        )
    rows.append({"id": "too-short", "conversations": [{"from": "human", "value": "hi"}]})
    rows.append({"id": "only-gpt", "conversations": [{"from": "gpt", "value": "x"}, {"from": "gpt", "value": "y"}]})
    (work / "raw.json").write_text(json.dumps(rows))
    runner = CliRunner()
    home = ["--home", str(work / "home")]
    result = runner.invoke(app, [*home, "data", "clean", str(work / "raw.json"), "-o", str(work / "clean.jsonl")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*home, "data", "map", str(work / "clean.jsonl"), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    return work, json.loads(result.stdout)


def _page_data(path: Path) -> dict:
    text = path.read_text()
    found = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', text, re.DOTALL)
    return json.loads(found.group(1))


@pytest.mark.slow
def test_map_writes_page_and_png(mapped):
    work, summary = mapped
    html, png = Path(summary["html"]), Path(summary["png"])
    assert html == work / "clean.map.html" and png == work / "clean.map.png"
    assert (summary["points"], summary["kept"], summary["dropped"]) == (KEPT + DROPPED, KEPT, DROPPED)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = html.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"http", text)  # self-contained
    data = _page_data(html)
    assert len(data["x"]) == len(data["points"]) == KEPT + DROPPED
    assert data["fields"] == ["cluster", "source", "condition", "drop_reason"]
    reasons = {p["id"]: p["drop_reason"] for p in data["points"]}
    assert reasons["too-short"] != "kept" and reasons["only-gpt"] != "kept" and reasons["conv-0"] == "kept"
    # Three topics, three clusters: each topic's conversations share one cluster.
    by_topic: dict[str, set[str]] = {}
    for p in data["points"]:
        if p["drop_reason"] == "kept":
            topic = next(t for t in TOPICS if p["turns"][1]["content"].startswith(f"About {t}"))
            by_topic.setdefault(topic, set()).add(p["cluster"])
    assert all(len(c) == 1 for c in by_topic.values()) and len(set().union(*by_topic.values())) == 3
    assert data["points"][0]["hover"].startswith(data["points"][0]["turns"][0]["content"][:20])


def test_map_names_the_bad_line(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "messages": [{"role": "user", "content": "hi"}]}\n{"id": "b", "messages": "no"}\n')
    result = cli("data", "map", bad, expect=2)
    assert f"{bad}:2" in result.stderr and "'messages'" in result.stderr
    assert not (tmp_path / "bad.map.html").exists()


@pytest.mark.slow
def test_map_page_in_a_browser(mapped):
    _, summary = mapped
    with browser_page(1300, 800) as (page, errors):
        page.goto(Path(summary["html"]).as_uri())
        page.wait_for_selector("body[data-ready='1']")
        # One legend entry per cluster, and every point drawn (WebGL traces hold them all).
        count = page.evaluate("document.getElementById('map').data.reduce((n, t) => n + t.x.length, 0)")
        assert count == KEPT + DROPPED
        assert page.evaluate("document.getElementById('map').data.length") == 3
        page.select_option("#color-by", "drop_reason")
        names = page.evaluate("document.getElementById('map').data.map(t => t.name)")
        assert any(n.startswith("kept (90)") for n in names) and len(names) >= 2
        # A real click on a point opens its whole conversation in the side panel.
        # Wait for the redraw itself (a loaded machine may take longer than any fixed pause).
        page.evaluate(
            "() => { const gd = document.getElementById('map');"
            " window.redrawn = new Promise((r) => gd.once('plotly_afterplot', r)); }"
        )
        page.select_option("#color-by", "cluster")
        page.evaluate("() => window.redrawn")
        page.wait_for_timeout(300)
        x, y, index = page.evaluate("""() => {
            const gd = document.getElementById('map'), fl = gd._fullLayout, box = gd.getBoundingClientRect();
            const t = gd.data[0];
            return [box.left + fl._size.l + fl.xaxis.l2p(t.x[0]), box.top + fl._size.t + fl.yaxis.l2p(t.y[0]),
                    t.customdata[0]]; }""")
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        page.wait_for_selector("#panel[data-point]", timeout=60_000)
        shown = int(page.get_attribute("#panel", "data-point"))
        data = page.evaluate("JSON.parse(document.getElementById('page-data').textContent)")
        # The point under the cursor (or one drawn on top of it, at the same spot).
        assert abs(data["x"][shown] - data["x"][index]) < 0.5 and abs(data["y"][shown] - data["y"][index]) < 0.5
        assert page.locator("#panel .turn").count() == len(data["points"][shown]["turns"])
        assert page.inner_text("#panel h3") == data["points"][shown]["id"]
        screenshot(page, "data-map.png")
        assert errors == []


def test_model_embeddings_mask_the_padding(tiny_model_dir):
    """--model: mean-pooled hidden states; a text's vector does not depend on its batch-mates'
    lengths (padding is masked) and every row is unit length."""
    import numpy as np

    from openchat_cli.data.embed import model_hidden_states

    texts = ["short", "a much longer text " * 20, "medium length text here", ""]
    one = model_hidden_states(texts, tiny_model_dir, batch_size=1)
    batched = model_hidden_states(texts, tiny_model_dir, batch_size=4)
    assert one.shape[0] == 4 and one.shape[1] > 2
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.allclose(one, batched, atol=1e-4)
    assert not np.allclose(batched[0], batched[1], atol=1e-3)


@pytest.mark.slow
def test_map_with_a_model_from_the_cli(cli, tiny_model_dir, tmp_path):
    """`data map DATA --model M`: the same outputs, from the model's hidden states."""
    data = tmp_path / "convs.jsonl"
    with open(data, "w") as fh:
        for i in range(12):
            topic = list(TOPICS)[i % 3]
            fh.write(
                json.dumps(
                    {
                        "id": f"m{i}",
                        "source": topic,
                        "condition": None,
                        "messages": [
                            {"role": "user", "content": TOPICS[topic][i % 3]},
                            {"role": "assistant", "content": f"About {topic}.", "weight": 1},
                        ],
                    }
                )
                + "\n"
            )
    out = tmp_path / "maps" / "m.html"
    summary = cli(
        "data", "map", data, "--model", tiny_model_dir, "-k", "2", "--batch-size", "5", "-o", out, "--json"
    ).json()
    assert summary["embedding"] == f"model {tiny_model_dir}" and summary["points"] == 12 and summary["dropped"] == 0
    assert summary["html"] == str(out) and (tmp_path / "maps" / "m.png").exists()
    data_block = _page_data(out)
    assert data_block["fields"] == ["cluster", "source", "condition"]  # nothing dropped: no drop-reason colouring
    assert {p["cluster"] for p in data_block["points"]} == {"c0", "c1"}
