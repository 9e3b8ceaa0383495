"""--report-to: what each tracker's own files hold, read back with the tracker's own readers
(TensorBoard's EventAccumulator, MLflow's client on its file store, W&B's offline run file)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from openchat_cli.errors import OpenchatError
from openchat_cli.train import trackers

CONFIG = {"lr": 0.001, "epochs": 2, "eval_data": None, "report_to": ["tensorboard"]}
EVENTS = [
    {"event": "start", "total": 10, "start": 0},
    {"event": "eval", "step": 0, "eval_loss": 5.5, "tag": "eval_loss_initial"},
    {"event": "step", "step": 1, "loss": 9.0},  # per-step events are the views'; trackers log points
    {
        "event": "point",
        "step": 5,
        "epoch": 1,
        "loss": 2.5,
        "lr": 0.001,
        "tokens_per_s": 1800.0,
        "packing_efficiency": 0.9,
        "rewards/margins": 0.25,
        "kl": 0.01,
    },
    {
        "event": "point",
        "step": 10,
        "epoch": 2,
        "loss": 1.25,
        "lr": 0.0005,
        "tokens_per_s": 2000.0,
        "packing_efficiency": 0.95,
        "rewards/margins": 0.5,
        "kl": 0.02,
    },
    {"event": "eval", "step": 10, "eval_loss": 0.75, "tag": "eval_loss_final", "rewards/accuracies": 0.625},
    {"event": "note", "text": "saved"},
    {"event": "end"},
]
EXPECTED = {  # name -> [(step, value)] every tracker must hold
    "train/loss": [(5, 2.5), (10, 1.25)],
    "train/lr": [(5, 0.001), (10, 0.0005)],
    "train/epoch": [(5, 1), (10, 2)],
    "train/tokens_per_s": [(5, 1800), (10, 2000)],
    "train/packing_efficiency": [(5, 0.9), (10, 0.95)],
    "train/rewards/margins": [(5, 0.25), (10, 0.5)],
    "train/kl": [(5, 0.01), (10, 0.02)],
    "eval/loss": [(0, 5.5), (10, 0.75)],
    "eval/rewards/accuracies": [(10, 0.625)],  # a preference method's held-out figure
}


def feed(names: list[str], out: Path, run_id: str = "run-0a1b2c") -> None:
    opened = trackers.open_trackers(names, out, run_id, CONFIG)
    for tracker in opened:
        for event in EVENTS:
            tracker.handle(event)
        tracker.close()


def assert_series(found: dict[str, list[tuple[int, float]]]) -> None:
    assert set(found) >= set(EXPECTED), sorted(found)
    for name, points in EXPECTED.items():
        assert [s for s, _ in found[name]] == [s for s, _ in points], name
        assert [v for _, v in found[name]] == pytest.approx([v for _, v in points], rel=1e-6), name


def test_names_are_checked():
    assert trackers.chosen(["none"]) == [] and trackers.chosen(["tensorboard,wandb", "tensorboard"]) == [
        "tensorboard",
        "wandb",
    ]
    with pytest.raises(OpenchatError, match="unknown tracker 'comet'"):
        trackers.chosen(["comet"])


def test_report_to_in_a_yaml_config(tmp_path):
    from openchat_cli.train import config as config_mod

    path = tmp_path / "run.yaml"
    path.write_text("model: m\ndata: d\nout: o\nreport-to: tensorboard\n")
    cfg = config_mod.merge({"report_to": ["mlflow"]}, set(), config_mod.load_yaml(path)).validate()
    assert cfg.report_to == ["tensorboard"]  # a single name in YAML; the unset flag does not override it
    cfg = config_mod.merge({"report_to": ["mlflow", "wandb"]}, {"report_to"}, config_mod.load_yaml(path)).validate()
    assert cfg.report_to == ["mlflow", "wandb"] and cfg.to_dict()["report_to"] == ["mlflow", "wandb"]
    path.write_text("model: m\ndata: d\nout: o\nreport-to: [tensorboard, neptune]\n")
    with pytest.raises(OpenchatError, match="unknown tracker 'neptune'"):
        config_mod.merge({}, set(), config_mod.load_yaml(path)).validate()


def test_tensorboard_event_files_hold_every_scalar_and_the_run(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    feed(["tensorboard"], tmp_path)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert_series({tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]})
    hparams = acc.PluginTagToContent("hparams")
    assert any(b"run-0a1b2c" in content for content in hparams.values())  # the catalog id, with the config
    assert any(b"lr" in content for content in hparams.values())


def test_mlflow_file_store_holds_metrics_params_and_the_run_id(tmp_path, openchat_home, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    feed(["mlflow"], tmp_path)
    client = MlflowClient(tracking_uri=(openchat_home / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("openchat")
    (run,) = client.search_runs([experiment.experiment_id], "tags.openchat_run_id = 'run-0a1b2c'")
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.001"
    assert run.data.params["run_id"] == "run-0a1b2c" and run.data.params["report_to"] == "tensorboard"
    assert_series(
        {
            name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
            for name in run.data.metrics
        }
    )
    # --resume carries on in the same MLflow run
    feed(["mlflow"], tmp_path)
    assert len(client.search_runs([experiment.experiment_id], "tags.openchat_run_id = 'run-0a1b2c'")) == 1


def wandb_records(path: Path):
    """The protobuf records of a W&B run file (`run-ID.wandb`): a 7-byte header (":W&B", magic,
    version), then 32 KiB blocks of chunks, each with a 7-byte header (crc32c, length, type:
    1 full, 2 first, 3 middle, 4 last), as LevelDB's log format."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        room = 32768 - pos % 32768
        if room < 7:  # the block's tail is padding
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.mark.slow
def test_wandb_offline_run_file_holds_history_and_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))  # our dir= wins: files stay in the run folder
    feed(["wandb"], tmp_path)
    # finish() hands the run to W&B's service process, which writes the file on its own time:
    # shutting the service down waits for it (a CI run once read the file before the history).
    import wandb

    wandb.teardown()
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-run-0a1b2c.wandb")
    kinds = [record.WhichOneof("record_type") for record in wandb_records(run_file)]
    assert "exit" in kinds and kinds.count("history") >= 3, kinds  # the whole run is on disk
    found: dict[str, list[tuple[int, float]]] = {}
    config = {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for key, value in items.items():
                if not key.startswith("_"):
                    found.setdefault(key, []).append((items["_step"], value))
        elif kind == "run":
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
    assert_series(found)
    assert config["run_id"] == "run-0a1b2c" and config["lr"] == 0.001


def test_a_missing_tracker_library_is_reported_before_the_run_is_registered(cli, tiny_model_dir, tmp_path, monkeypatch):
    from store.catalog import open_catalog

    monkeypatch.setitem(trackers.REQUIREMENTS, "wandb", ("openchat_not_installed_module", "wandb"))
    err = cli(
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        tmp_path / "none.parquet",
        "--out",
        tmp_path / "o",
        "--report-to",
        "wandb",
        expect=2,
    ).stderr
    assert "--report-to wandb: not installed here" in " ".join(err.split()) and "pip install wandb" in err
    assert (
        "unknown tracker 'tb'"
        in cli("train", "--model", tiny_model_dir, "--out", tmp_path / "o", "--report-to", "tb", expect=2).stderr
    )
    assert open_catalog().list("runs") == []


@pytest.mark.slow
def test_train_json_lines_tensorboard_and_mlflow_agree_with_the_catalog_across_a_resume(
    cli, tiny_model_dir, color_data, tmp_path, openchat_home, monkeypatch
):
    """A real run (stopped after 5 steps, then resumed): its --json lines, its TensorBoard and
    MLflow records and `catalog plot` all hold the catalog's curve and held-out losses."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    first = cli(
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        color_data["small"],
        "--eval-data",
        color_data["eval"],
        "--out",
        out,
        "--tokens-per-step",
        "256",
        "--lr",
        "3e-3",
        "--log-every",
        "2",
        "--eval-every",
        "4",
        "--report-to",
        "tensorboard",
        "--report-to",
        "mlflow",
        "--stop-after",
        "5",
        "--json",
    )
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    assert lines[0]["event"] == "start" and lines[0]["start"] == 0 and lines[-1]["event"] == "run"
    total = lines[0]["total"]
    assert total > 8
    assert [e["step"] for e in lines if e["event"] == "point"] == [2, 4, 5]
    assert [e["step"] for e in lines if e["event"] == "eval"] == [0, 4]
    assert any(e["event"] == "note" and "resumable state saved at step 5" in e["text"] for e in lines)
    assert lines[-1]["run"]["status"] == "interrupted"

    second = cli("train", "--out", out, "--resume", "--json")
    lines2 = [json.loads(line) for line in second.stdout.splitlines()]
    assert lines2[0]["event"] == "start" and lines2[0]["start"] == 5
    run = lines2[-1]["run"]
    assert run["status"] == "completed" and run["config"]["report_to"] == ["tensorboard", "mlflow"]
    curve = {p["step"]: p["loss"] for p in run["loss_curve"]}
    assert set(curve) == set(range(2, total, 2)) | {total}
    json_points = {e["step"]: e["loss"] for e in lines + lines2 if e["event"] == "point" and e["step"] != 5}
    assert json_points == pytest.approx(curve)
    evals = {e["step"]: e["eval_loss"] for e in lines + lines2 if e["event"] == "eval"}
    assert sorted(evals) == sorted({0, total} | set(range(4, total, 4)))
    assert evals[total] == pytest.approx(run["metrics"]["eval_loss_final"])

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tb_loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert tb_loss == pytest.approx(curve, rel=1e-5)  # step 5 of the first attempt purged on resume
    assert {e.step: e.value for e in acc.Scalars("eval/loss")} == pytest.approx(evals, rel=1e-5)
    assert {"train/lr", "train/tokens_per_s", "train/packing_efficiency", "train/epoch"} <= set(acc.Tags()["scalars"])

    client = MlflowClient(tracking_uri=(openchat_home / "mlruns").as_uri())
    (mlrun,) = client.search_runs(
        [client.get_experiment_by_name("openchat").experiment_id], f"tags.openchat_run_id = '{run['id']}'"
    )
    assert mlrun.info.status == "FINISHED"
    ml_eval = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, "eval/loss")}
    assert ml_eval == pytest.approx(evals, rel=1e-6)

    plotted = cli("catalog", "plot", run["id"], "--json").json()["runs"][0]["series"]
    assert dict(map(tuple, plotted["eval_loss"])) == pytest.approx(evals)
    assert dict(map(tuple, plotted["loss"])) == pytest.approx(curve)
