"""The training view: rank 0's Reporter writes events, the train command follows them and draws
them live (rendered here to a recording rich Console), as plain lines, or as JSON lines."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from openchat_cli.train.report import EVENTS_FILE, Reporter, summarize
from openchat_cli.train.watch import EventFollower, JsonView, LiveView, PlainView


def step_record(step: int, loss: float, **extra) -> dict:
    """What loop.py hands the reporter per optimizer step (plus a preference method's extras)."""
    return {
        "step": step,
        "epoch": 1 + (step > 4),
        "loss": loss,
        "lr": 1e-3 * step,
        "tokens": 900,
        "seconds": 0.5,
        "tokens_per_s": 1800.0,
        "capacity": 1000,
        "packing_efficiency": 0.9,
        "rank_tokens": [450, 450],
        "weight": 300.0,
        **extra,
    }


def run_reporter(out, steps: int = 8, log_every: int = 4, **extra_per_step) -> Reporter:
    reporter = Reporter(out, None, total=steps, start=0, log_every=log_every, epochs=2)
    reporter.note("8 steps (2 epoch(s)) x 1 rank(s)")
    reporter.eval(0, 5.5, "eval_loss_initial")
    for step in range(1, steps + 1):
        reporter.step(step_record(step, 4.0 / step, **{k: v * step for k, v in extra_per_step.items()}))
    reporter.eval(steps, 0.75, "eval_loss_final", **{"rewards/accuracies": 0.625})
    reporter.close()
    return reporter


def test_curve_points_average_every_numeric_key_including_a_methods_own():
    window = [
        step_record(1, 2.0, **{"rewards/margins": 0.5, "kl": 0.1}),
        step_record(2, 1.0, **{"rewards/margins": 1.5, "kl": 0.3, "reward": 7}),
    ]
    window[1]["tokens"], window[1]["seconds"] = 700, 1.5
    point = summarize(window)
    assert point["step"] == 2 and point["epoch"] == 1 and point["lr"] == pytest.approx(2e-3)  # the last step's
    assert point["loss"] == pytest.approx(1.5) and point["rewards/margins"] == pytest.approx(1.0)
    assert point["kl"] == pytest.approx(0.2) and point["reward"] == 7  # only the steps that reported it
    assert point["tokens_per_s"] == pytest.approx(1600 / 2.0)  # summed tokens over summed seconds
    assert point["packing_efficiency"] == pytest.approx(1600 / 2000)
    assert not {"tokens", "seconds", "capacity", "weight", "rank_tokens"} & point.keys()


def test_reporter_writes_the_event_stream_the_views_follow(tmp_path):
    reporter = run_reporter(tmp_path, **{"rewards/margins": 0.25})
    events = [json.loads(line) for line in (tmp_path / EVENTS_FILE).read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert events[0] | {"total": 8, "start": 0, "epochs": 2} == events[0]
    assert kinds.count("step") == 8 and kinds.count("point") == 2 and kinds.count("eval") == 2
    steps = [e for e in events if e["event"] == "step"]
    assert steps[2]["rewards/margins"] == pytest.approx(0.75) and "rank_tokens" not in steps[2]
    points = [e for e in events if e["event"] == "point"]
    assert [p["step"] for p in points] == [4, 8] == [p["step"] for p in reporter.curve]
    assert points[0]["rewards/margins"] == pytest.approx(0.25 * (1 + 2 + 3 + 4) / 4)
    assert [len(json.loads(line)) for line in (tmp_path / "steps.jsonl").read_text().splitlines()].count(12) == 8


def follow(tmp_path, view, **extra) -> None:
    """Replay a reporter's run through the follower, as `openchat train` does."""
    with EventFollower(tmp_path / EVENTS_FILE, [view]):
        run_reporter(tmp_path, **extra)


def test_live_view_renders_progress_eta_and_a_methods_metrics(tmp_path):
    console = Console(record=True, force_terminal=True, width=160, color_system=None)
    follow(tmp_path, LiveView(console), **{"rewards/margins": 0.25, "kl": 0.01})
    text = console.export_text()
    last = text.rstrip().splitlines()
    assert "8 steps (2 epoch(s))" in text and "eval loss (initial): 5.5000" in text
    assert "eval loss (final): 0.7500" in text and "eval 0.7500" in text.splitlines()[-2]
    bar = next(line for line in reversed(last) if "train" in line and "8/8" in line)
    # The final bar: step/total, epoch of total, smoothed loss (debiased EMA of 4/step), lr,
    # throughput, packing, elapsed and ETA.
    losses = [4.0 / s for s in range(1, 9)]
    ema = 0.0
    for loss in losses:
        ema = 0.9 * ema + 0.1 * loss
    assert f"loss {ema / (1 - 0.9**8):.4f}" in bar
    assert "epoch 2/2" in bar and "lr 8.00e-03" in bar and "1,800 tok/s" in bar and "pack 90%" in bar
    assert "ETA" in bar
    assert "rewards/margins 2.0000" in text and "kl 0.0800" in text  # the method's own, under the bar


def test_plain_view_prints_a_line_per_point_when_not_a_terminal(tmp_path):
    console = Console(record=True, force_terminal=False, width=300)
    follow(tmp_path, PlainView(console), kl=0.5)
    lines = console.export_text().splitlines()
    points = [line for line in lines if line.startswith("step ")]
    assert len(points) == 2
    assert points[0].startswith("step 4/8  epoch 1/2  loss ") and "lr 4.00e-03  1,800 tok/s  packing 90.0%" in points[0]
    assert "kl 1.2500" in points[0] and "ETA 0:00:0" in points[1]
    assert "eval loss (final): 0.7500  rewards/accuracies 0.6250" in lines
    assert "eval loss (initial): 5.5000" in lines and "8 steps (2 epoch(s)) x 1 rank(s)" in lines


def test_json_view_writes_json_lines_for_scripts(tmp_path):
    stream = io.StringIO()
    follow(tmp_path, JsonView(stream))
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["start", "note", "eval", "point", "point", "eval"]
    assert events[0]["total"] == 8 and events[0]["epochs"] == 2
    point = events[3]
    assert point["step"] == 4 and point["total"] == 8 and point["eta_s"] >= 0
    assert point["loss"] == pytest.approx(sum(4.0 / s for s in range(1, 5)) / 4)


def test_follower_waits_for_whole_lines_and_drops_a_failing_sink(tmp_path):
    seen, warnings = [], []

    class Broken:
        def handle(self, event):
            raise RuntimeError("disk full")

        def close(self):
            raise AssertionError("a dropped sink is not closed")

    class Keep:
        closed = False

        def handle(self, event):
            seen.append(event)

        def close(self):
            Keep.closed = True

    path = tmp_path / EVENTS_FILE
    follower = EventFollower(path, [Broken(), Keep()], warn=warnings.append)
    path.write_text('{"event": "note", "text": "a"}\n{"event": "no')
    follower.poll()
    assert seen == [{"event": "note", "text": "a"}] and warnings == ["Broken stopped: disk full"]
    with open(path, "a") as f:
        f.write('te", "text": "b"}\nnot json\n')
    follower.close()
    assert [e["text"] for e in seen] == ["a", "b"] and Keep.closed
