"""`openchat catalog plot`: curves of training runs, read through the store's read API, on one chart."""

from __future__ import annotations

import pytest

from openchat_cli.run_plot import build_figure, run_series
from store.catalog import open_catalog


def add_run(catalog, name: str, losses: list[float], evals: dict[str, float], margins: bool = False) -> str:
    run_id = catalog.add_run(
        config={"lr": 1e-3}, dataset_id=None, base_checkpoint_id=None, output_path=f"/tmp/runs/{name}"
    )
    curve = [
        {
            "step": 10 * (i + 1),
            "epoch": 1,
            "loss": loss,
            "lr": 1e-3 / (i + 1),
            "tokens_per_s": 1000.0 + i,
            "packing_efficiency": 0.95,
            **({"rewards/margins": 0.1 * i} if margins else {}),
        }
        for i, loss in enumerate(losses)
    ]
    catalog.update("runs", run_id, loss_curve=curve, metrics={**evals, "final_loss": losses[-1]}, status="completed")
    return run_id


@pytest.fixture
def two_runs():
    catalog = open_catalog()
    a = add_run(
        catalog,
        "lr-high",
        [3.0, 2.0, 1.5],
        {"eval_loss_initial": 4.0, "eval_loss_step_20": 2.2, "eval_loss_final": 1.8, "eval_loss": 1.8},
    )
    b = add_run(catalog, "lr-low", [3.5, 3.0], {}, margins=True)
    return a, b


def test_plot_draws_both_runs_and_prints_their_series(cli, two_runs, tmp_path):
    a, b = two_runs
    png = tmp_path / "charts" / "loss.png"
    result = cli("catalog", "plot", a, b[:8], "-o", png, "--json").json()
    assert result["metrics"] == ["loss", "eval_loss"] and result["output"] == str(png)
    first, second = result["runs"]
    assert first["run_id"] == a and first["label"] == f"{a} (lr-high)" and first["status"] == "completed"
    assert first["series"]["loss"] == [[10, 3.0], [20, 2.0], [30, 1.5]]
    assert first["series"]["eval_loss"] == [[0, 4.0], [20, 2.2], [30, 1.8]]  # initial, step 20, final
    assert second["run_id"] == b and second["series"] == {"loss": [[10, 3.5], [20, 3.0]]}  # no eval set: no eval
    from matplotlib.image import imread

    image = imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 800 and image[..., :3].std() > 0.05  # a drawn chart
    assert not [p for p in png.parent.iterdir() if p != png]  # no temp file left beside it
    said = " ".join(cli("catalog", "plot", a, "-o", tmp_path / "a.svg").stdout.split())
    assert "drew loss, eval_loss of 1 run(s)" in said
    assert (tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")


def test_the_chart_holds_exactly_the_stored_points(two_runs):
    a, b = two_runs
    runs = run_series(open_catalog(), [a, b])
    fig = build_figure(runs, ["loss", "eval_loss"])
    (ax,) = fig.axes
    lines = {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()), line.get_linestyle(), line.get_color())
        for line in ax.get_lines()
    }
    assert lines[f"{a} (lr-high) loss"][:2] == ([10, 20, 30], [3.0, 2.0, 1.5])
    assert lines[f"{a} (lr-high) eval loss"][:3] == ([0, 20, 30], [4.0, 2.2, 1.8], "--")
    assert lines[f"{a} (lr-high) loss"][3] == lines[f"{a} (lr-high) eval loss"][3]  # one colour per run
    assert lines[f"{b} (lr-low) loss"][3] != lines[f"{a} (lr-high) loss"][3]
    assert len(lines) == 3
    panels = build_figure(runs[1:], ["loss", "lr", "rewards/margins"]).axes
    assert [ax.get_ylabel() for ax in panels] == ["loss", "lr", "rewards/margins"]


def test_metric_picks_other_curve_keys(cli, two_runs):
    _, b = two_runs
    result = cli("catalog", "plot", b, "--metric", "rewards/margins", "-m", "tokens_per_s", "--json").json()
    assert result["output"] is None and result["metrics"] == ["rewards/margins", "tokens_per_s"]
    assert result["runs"][0]["series"] == {
        "rewards/margins": [[10, 0.0], [20, 0.1]],
        "tokens_per_s": [[10, 1000.0], [20, 1001.0]],
    }


def test_bad_requests_say_what_is_wrong(cli, two_runs, tmp_path):
    a, _ = two_runs
    err = cli("catalog", "plot", a, "--metric", "rewards/margins", "--json", expect=2).stderr
    assert f"{a} has no 'rewards/margins' in its curve" in err and "loss, lr, tokens_per_s" in " ".join(err.split())
    assert "-o loss.png" in cli("catalog", "plot", a, expect=2).stderr
    ds = open_catalog().add_dataset(name="d", path=tmp_path, format="raw")
    assert "is not a training run" in cli("catalog", "plot", ds, "--json", expect=2).stderr
    assert "no run with id 'run-ffffff'" in cli("catalog", "plot", "run-ffffff", "--json", expect=2).stderr
    empty = open_catalog().add_run(config={}, dataset_id=None, base_checkpoint_id=None, output_path=tmp_path)
    assert "has no curve points yet" in cli("catalog", "plot", empty, "--json", expect=2).stderr
    assert "cannot write a 'txt' image" in cli("catalog", "plot", a, "-o", tmp_path / "x.txt", expect=2).stderr
    assert not (tmp_path / "x.txt").exists()
