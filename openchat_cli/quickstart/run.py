"""Chain ordinary `openchat` commands into the whole loop, printing each one as it runs.

Nothing here does a stage's work itself: every step is a command a user could type, run as a
subprocess of this same installation, so the quickstart doubles as a living tutorial. Every
child follows this process (`lifeline`): killed, even with -9, it takes its server and the
running step with it; SIGTERM/Ctrl-C stop them cleanly first.
"""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from openchat_cli.console import console, err_console
from openchat_cli.determinism import pinned_env
from openchat_cli.errors import OpenchatError
from openchat_cli.lifeline import owner_env
from openchat_cli.quickstart.tasks import generate


@dataclass
class QuickstartPlan:
    workdir: Path
    size: str = "tiny"
    train_size: int = 3000
    eval_size: int = 60
    epochs: int = 10
    lr: float = 5e-3
    tokens_per_step: int = 512
    max_len: int = 256
    seed: int = 0
    threads: int = 2  # every step's thread count, pinned (openchat_cli/determinism.py)
    json_output: bool = False  # keep stdout for the final JSON: narrate on stderr


def _openchat(*args: object) -> list[str]:
    """argv for this installation's `openchat` (works inside a venv that is not activated)."""
    return [sys.executable, "-m", "openchat_cli.app", *map(str, args)]


def _show(args: tuple[object, ...]) -> str:
    return "openchat " + " ".join(shlex.quote(str(a)) for a in args)


_narrator = console  # where the quickstart talks: stdout, or stderr when --json owns stdout
_threads = 2  # the plan's thread count, for every child process


def run_step(title: str, *args: object, capture_json: bool = False) -> object:
    """Print the command, run it with live output; return its parsed --json stdout if asked."""
    _narrator.rule(f"[bold]{title}")
    _narrator.print(f"[cyan]$ {_show(args)}[/]", highlight=False, soft_wrap=True)
    env = {**pinned_env(owner_env(), _threads), "PYTHONUNBUFFERED": "1"}
    child_stdout = subprocess.PIPE if capture_json else (sys.stderr if _narrator is err_console else None)
    with subprocess.Popen(_openchat(*args), stdout=child_stdout, text=True, env=env) as proc:
        try:
            stdout, _ = proc.communicate()
        finally:
            stop_child(proc)
    if proc.returncode != 0:
        raise OpenchatError(
            f"quickstart step failed ({title}): `{_show(args)}` exited {proc.returncode}",
            exit_code=proc.returncode or 1,
        )
    if capture_json:
        return json.loads(stdout)
    return None


def stop_child(proc: subprocess.Popen, grace_s: float = 60.0) -> None:
    """SIGTERM a child still running (it records how it stopped: a training run marks itself
    interrupted), SIGKILL it if it has not exited after `grace_s`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Stopped(OpenchatError):
    """SIGTERM as an exception, so every `finally` runs: the server is stopped, steps end cleanly."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(f"quickstart stopped by {signal.Signals(signum).name}", exit_code=128 + signum)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(model: Path, name: str, log_dir: Path) -> Iterator[str]:
    """`openchat serve MODEL` in the background for the duration of a block; yields its /v1 URL."""
    port = free_port()
    # One sequence at a time: a batch's make-up (which requests arrived together) would change
    # the arithmetic, and with it a greedy answer now and then.
    args = ("serve", model, "--port", port, "--served-model-name", name, "--max-batch-size", 1)
    _narrator.print(f"[cyan]$ {_show(args)} &[/]", highlight=False, soft_wrap=True)
    log = (log_dir / f"serve-{name}.log").open("w")
    # owner_env: the server ends with this process, even if it is killed with -9.
    proc = subprocess.Popen(
        _openchat(*args), stdout=log, stderr=subprocess.STDOUT, env=pinned_env(owner_env(), _threads)
    )
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise OpenchatError(f"`{_show(args)}` exited {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{root}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise OpenchatError(f"`{_show(args)}` did not become healthy in 120 s; see {log.name}")
            time.sleep(0.3)
        yield f"{root}/v1"
    finally:
        stop_child(proc, grace_s=15)
        log.close()


def run_quickstart(plan: QuickstartPlan) -> dict[str, object]:
    previous = (
        signal.signal(signal.SIGTERM, _raise_stopped) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        return _run_quickstart(plan)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run_quickstart(plan: QuickstartPlan) -> dict[str, object]:
    global _narrator, _threads
    _narrator = err_console if plan.json_output else console
    _threads = plan.threads
    work = plan.workdir
    work.mkdir(parents=True, exist_ok=True)
    _narrator.rule("[bold]openchat quickstart")
    _narrator.print(f"Working in {work}. Each step below is an ordinary command you can run yourself.")
    files = generate(work / "raw", train_size=plan.train_size, eval_size=plan.eval_size, seed=plan.seed)
    _narrator.print(
        f"Wrote {files['train']} (ShareGPT, with a few malformed and duplicate records) "
        f"and {files['heldout']} ({plan.eval_size} held-out questions)."
    )
    clean = work / "clean.jsonl"
    base = work / "base-model"
    tokenized = work / "train.parquet"
    trained = work / "trained"
    run_step("1/7 clean the raw conversations", "data", "clean", files["train"], "-o", clean, "--force")
    run_step(
        "2/7 make a tiny base model (tokenizer trained locally)",
        "model",
        "init",
        base,
        "--tokenizer-corpus",
        files["corpus"],
        "--size",
        plan.size,
        "--force",
    )
    run_step(
        "3/7 tokenize for training",
        "data",
        "tokenize",
        clean,
        "--model",
        base,
        "--max-len",
        plan.max_len,
        "-o",
        tokenized,
        "--force",
    )
    run_step(
        "4/7 fine-tune (packed, weighted loss, DeepSpeed on CPU)",
        "train",
        "--model",
        base,
        "--data",
        tokenized,
        "--out",
        trained,
        "--epochs",
        plan.epochs,
        "--lr",
        plan.lr,
        "--tokens-per-step",
        plan.tokens_per_step,
        "--seed",
        plan.seed,
        "--force",
    )
    final = trained / "final" if (trained / "final").is_dir() else trained
    runs: dict[str, str] = {}
    for label, model in (("base", base), ("trained", final)):
        _narrator.rule(
            f"[bold]{'5' if label == 'base' else '6'}/7 answer the held-out questions with the {label} model"
        )
        with served(model, label, work) as endpoint:
            result = run_step(
                f"answers from {label}",
                "eval",
                "answer",
                files["heldout"],
                "--endpoint",
                endpoint,
                "--model",
                label,
                "--name",
                label,
                "--max-tokens",
                16,
                "--new",
                "--json",
                capture_json=True,
            )
        runs[label] = result["run_id"]  # type: ignore[index]
    run_step("7/7 grade both runs and compare", "eval", "grade", runs["base"], runs["trained"])
    report = run_step("report", "eval", "report", runs["base"], runs["trained"], "--json", capture_json=True)
    run_step("before / after", "eval", "report", runs["base"], runs["trained"])
    _narrator.rule("[bold]next")
    _narrator.print("Serve the trained model and chat with it (two terminals):")
    _narrator.print(f"  [cyan]openchat serve {final}[/]", highlight=False, soft_wrap=True)
    _narrator.print("  [cyan]openchat chat[/]")
    _narrator.print("Everything made above is in the catalog: [cyan]openchat catalog list[/]")
    return {"runs": runs, "report": report, "trained": str(final), "workdir": str(work)}
