"""What a training run leaves in its output folder, and how it is written and read back.

OUT/run.json          the resolved settings and ids (what `--resume` continues)
OUT/run.lock          flock'd by the command running the run, for its whole life (run_folder.py)
OUT/steps.jsonl       one line per finished optimizer step (rank 0)
OUT/events.jsonl      this invocation's progress events, followed by `openchat train` (train/report.py)
OUT/tensorboard/      `--report-to tensorboard` event files; OUT/wandb/ the same for W&B (offline)
OUT/state/            DeepSpeed checkpoint of the latest save: model, optimizer and
                      scheduler state, plus the sampler position (for --resume); saved
                      every --state-minutes, at each --save-every step and on SIGTERM/SIGINT
OUT/step-000100/      Hugging Face checkpoint (weights or LoRA adapter, tokenizer with its
                      chat_template, openchat.json), written to a temp dir and renamed
OUT/final/            the checkpoint of the finished run
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from openchat_cli.atomic import atomic_write_text, temp_dir_beside
from openchat_cli.model_dir import write_meta

RUN_FILE = "run.json"
STEPS_FILE = "steps.jsonl"
STATE_DIR = "state"
FINAL_DIR = "final"


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def state_tag(step: int) -> str:
    return f"step-{step}"


def write_run_file(out: Path, data: dict[str, Any]) -> None:
    atomic_write_text(Path(out) / RUN_FILE, json.dumps(data, indent=2, default=str) + "\n")


def read_run_file(out: Path) -> dict[str, Any] | None:
    path = Path(out) / RUN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def latest_state_step(out: Path) -> int | None:
    """The step of the last complete DeepSpeed save (its `latest` file is written last)."""
    latest = Path(out) / STATE_DIR / "latest"
    if not latest.exists():
        return None
    tag = latest.read_text().strip()
    if not tag.startswith("step-") or not (latest.parent / tag).is_dir():
        return None
    return int(tag.split("-", 1)[1])


def mark_latest_state(out: Path, step: int) -> None:
    """Point --resume at a state every rank has finished writing (atomic rename)."""
    atomic_write_text(Path(out) / STATE_DIR / "latest", state_tag(step))


def prune_states(out: Path, keep_tag: str) -> None:
    """Only the newest DeepSpeed state is kept (it holds the optimizer: several x the model)."""
    root = Path(out) / STATE_DIR
    for child in root.iterdir() if root.exists() else ():
        if child.is_dir() and child.name.startswith("step-") and child.name != keep_tag:
            shutil.rmtree(child, ignore_errors=True)


def read_steps(out: Path) -> list[dict[str, Any]]:
    """The step lines written so far (a line cut short by a kill is skipped)."""
    path = Path(out) / STEPS_FILE
    steps = []
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            steps.append(json.loads(line))
        except ValueError:
            continue
    return steps


def remove_partial_saves(out: Path) -> list[str]:
    """Temp files and folders of saves cut short by a kill (`.final.x1y2`, `.steps.jsonl.ab.tmp`,
    a state folder never marked latest): nothing refers to them. Called with the folder's lock held."""
    removed = []
    state = Path(out) / STATE_DIR
    children = [*(Path(out).iterdir() if Path(out).exists() else ()), *(state.iterdir() if state.is_dir() else ())]
    for child in children:
        if child.name.startswith(".") and child.name.count(".") >= 2:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
            removed.append(child.name)
    latest = latest_state_step(out)
    if latest is not None:  # a newer state a kill cut short (never marked latest)
        prune_states(out, state_tag(latest))
    return removed


def truncate_steps(out: Path, upto: int) -> None:
    """Forget step lines after the step a resumed run restarts from (they will be redone)."""
    path = Path(out) / STEPS_FILE
    if not path.exists():
        return
    kept = [json.dumps(step) for step in read_steps(out) if step["step"] <= upto]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def append_step(out: Path, record: dict[str, Any]) -> None:
    with open(Path(out) / STEPS_FILE, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def save_hf(
    out: Path, name: str, module: Any, tokenizer: Any, meta: dict[str, Any], state_dict: dict | None = None
) -> Path:
    """Write a Hugging Face checkpoint dir atomically (temp dir, then rename into place)."""
    target = Path(out) / name
    tmp = temp_dir_beside(target)
    try:
        module.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_meta(tmp, **meta)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
