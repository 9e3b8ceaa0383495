"""`--report-to tensorboard|wandb|mlflow`: the run's figures in the trackers people already use.

Each tracker is fed the events of train/watch.py in the `openchat train` process (never in the
DeepSpeed ranks): every curve point (`train/loss`, `train/lr`, `train/tokens_per_s`,
`train/packing_efficiency`, `train/epoch` and any metric the training method adds, e.g.
`train/rewards/margins`) and every held-out loss (`eval/loss`), at its optimizer step. The run's
catalog id and its settings go with them (TensorBoard hparams, W&B config, MLflow params).

The libraries are optional (`pip install 'openchat-cli[tracking]'`) and imported only when
chosen; a missing one is reported before anything starts.

Where they write:
- tensorboard: OUT/tensorboard (`tensorboard --logdir HOME/runs` shows every run side by side).
- wandb: offline unless WANDB_MODE says otherwise (no network is assumed), files under
  OUT/wandb (`wandb sync` uploads them later); project from WANDB_PROJECT (default openchat).
- mlflow: MLFLOW_TRACKING_URI, else the file store HOME/mlruns; experiment from
  MLFLOW_EXPERIMENT_NAME (default openchat).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError

TRACKERS = ("none", "tensorboard", "wandb", "mlflow")
# The module each tracker needs, and the package that provides it.
REQUIREMENTS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow-skinny"),
}


def chosen(names: list[str] | tuple[str, ...] | None) -> list[str]:
    """The trackers named (deduplicated, `none` dropped); an unknown name is an error."""
    out: list[str] = []
    for name in names or ():
        for part in str(name).split(","):
            part = part.strip().lower()
            if part not in TRACKERS:
                raise OpenchatError(f"--report-to: unknown tracker '{part}' (choose from {', '.join(TRACKERS)})")
            if part != "none" and part not in out:
                out.append(part)
    return out


def check_installed(names: list[str]) -> None:
    """Fail before the run starts when a chosen tracker's library is missing."""
    import importlib.util

    missing = [n for n in names if importlib.util.find_spec(REQUIREMENTS[n][0]) is None]
    if missing:
        packages = " ".join(REQUIREMENTS[n][1] for n in missing)
        raise OpenchatError(
            f"--report-to {' '.join(missing)}: not installed here; install it with "
            f"`pip install {packages}` (or `pip install 'openchat-cli[tracking]'`)"
        )


def metric_name(key: str) -> str:
    return "eval/loss" if key == "eval_loss" else f"train/{key}"


def logged_scalars(event: dict[str, Any]) -> tuple[int, dict[str, float]] | None:
    """(step, {name: value}) a tracker logs for an event, or None for events it skips."""
    kind = event.get("event")
    if kind == "point":
        values = {
            metric_name(k): float(v)
            for k, v in event.items()
            if k not in ("event", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        return int(event["step"]), values
    if kind == "eval":
        return int(event["step"]), {
            ("eval/loss" if k == "eval_loss" else f"eval/{k}"): float(v)
            for k, v in event.items()
            if k not in ("event", "step", "tag") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    return None


def flat_config(config: dict[str, Any], run_id: str | None) -> dict[str, Any]:
    """Settings as flat scalars (None as the empty string), with the catalog run id."""
    out: dict[str, Any] = {"run_id": run_id or ""}
    for key, value in config.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        out[key] = "" if value is None else value
    return out


class Tracker:
    """Logs the scalars of each event; subclasses say how."""

    def handle(self, event: dict[str, Any]) -> None:
        logged = logged_scalars(event)
        if logged and logged[1]:
            self.log(*logged)

    def log(self, step: int, values: dict[str, float]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, out: Path, run_id: str | None, config: dict[str, Any], start: int):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.logdir = Path(out) / "tensorboard"
        # purge_step: a resumed run redoes the steps after its saved state; TensorBoard drops the
        # first attempt's points from there on instead of drawing both.
        self.writer = SummaryWriter(log_dir=str(self.logdir), purge_step=start or None)
        flat = flat_config(config, run_id)
        self.writer.add_text("openchat/config", "```\n" + json.dumps(flat, indent=2, default=str) + "\n```", start)
        for summary in hparams(flat, {"train/loss": 0.0, "eval/loss": 0.0}):
            self.writer.file_writer.add_summary(summary)

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, out: Path, run_id: str | None, config: dict[str, Any], start: int):
        os.environ.setdefault("WANDB_MODE", "offline")  # no network assumed; `wandb sync` later
        os.environ.setdefault("WANDB_SILENT", "true")  # its banner would break the live view
        import wandb

        run_key = re.sub(r"[^A-Za-z0-9_-]", "-", run_id) if run_id else None
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "openchat"),
            name=run_id,
            id=run_key,
            config=flat_config(config, run_id),
            dir=str(out),
            resume="allow",
            reinit="create_new",
            tags=["openchat"],
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker(Tracker):
    def __init__(self, out: Path, run_id: str | None, config: dict[str, Any], start: int):
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        from openchat_cli.home import home_dir

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the file store needs no server and no database packages
            uri = (home_dir() / "mlruns").as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps it but asks for consent
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "openchat")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        found = self.client.search_runs([experiment_id], f"tags.openchat_run_id = '{run_id}'") if run_id else []
        if found:  # --resume: the same MLflow run carries on
            self.mlflow_run_id = found[0].info.run_id
            self.client.update_run(self.mlflow_run_id, status="RUNNING")
        else:
            run = self.client.create_run(
                experiment_id, run_name=run_id, tags={"openchat_run_id": run_id or "", "openchat_output": str(out)}
            )
            self.mlflow_run_id = run.info.run_id
            params = [Param(k, str(v)[:6000]) for k, v in flat_config(config, run_id).items()]
            self.client.log_batch(self.mlflow_run_id, params=params, tags=[RunTag("openchat", "train")])

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.mlflow_run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.mlflow_run_id)


KINDS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(
    names: list[str], out: Path, run_id: str | None, config: dict[str, Any], start: int = 0
) -> list[Tracker]:
    """One tracker per name, opened now (in the main thread) so a failure stops the run early."""
    check_installed(names)
    opened: list[Tracker] = []
    try:
        for name in names:
            opened.append(KINDS[name](Path(out), run_id, config, start))
    except OpenchatError:
        raise
    except Exception as exc:  # noqa: BLE001 - any library failure becomes one clear message
        for tracker in opened:
            tracker.close()
        raise OpenchatError(f"--report-to {name}: could not start ({type(exc).__name__}: {exc})") from None
    return opened
