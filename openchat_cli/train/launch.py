"""Checking a run's inputs, starting its ranks, and recording the outcome.

`openchat train` validates everything in its own process first (so bad input fails in a
second with a clear message), registers the run and writes OUT/run.json. Then ranks run in child processes,
`python -m openchat_cli.train.launch RUN_JSON` each:
- several GPUs or nodes: started by the `deepspeed` launcher (--num-gpus, --hostfile);
- CPU ranks (gloo) or one GPU: spawned here with the torch.distributed environment variables;
  if one fails, the others are stopped.
Rank 0 writes OUT/result.json; this process copies the outcome into the catalog.

Faults: `openchat train` holds OUT/run.lock (flock) for the run's life and its ranks inherit it,
so a second command on the folder refuses; ranks follow this process (`lifeline`) and die with
it even after kill -9; SIGTERM/SIGINT/SIGHUP stop the ranks at a step boundary with their state
saved and mark the run `interrupted`. A run whose command was killed is marked by the next
command that finds its lock free (`run_folder.settle_abandoned_runs`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError
from openchat_cli.run_folder import LOCK_FILE, only_lock_inside
from openchat_cli.train import run_files as ckpt
from openchat_cli.train.config import TrainConfig
from openchat_cli.train.dataset import TokenizedData, load, read_meta_checked, resolve_data
from openchat_cli.train.spec import TrainSpec

RESULT_FILE = "result.json"


# -- preparation --------------------------------------------------------------------------------
def _model_facts(ref: str) -> dict[str, Any]:
    from transformers import AutoConfig

    from openchat_cli.model_dir import (
        checkpoint_id_for,
        load_tokenizer,
        read_meta,
        require_weights,
        resolve_model,
        tokenizer_hash,
    )

    path, ck = resolve_model(ref)
    require_weights(path)
    if not read_meta(path).get("template"):
        raise OpenchatError(
            f"{path} has no openchat.json naming its template (models made by "
            "`openchat model init` or `add-tokens --template` have one)"
        )
    template = read_meta(path)["template"]
    tokenizer = load_tokenizer(path)
    try:
        vocab = AutoConfig.from_pretrained(str(path)).vocab_size
    except (OSError, ValueError) as exc:
        raise OpenchatError(f"{path}: cannot read the model config ({exc})") from None
    return {
        "model_path": str(path.resolve()),
        "template": template,
        "vocab_size": vocab,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "pad_id": tokenizer.pad_token_id,
        "base_checkpoint_id": ck or read_meta(path).get("checkpoint_id") or checkpoint_id_for(path),
    }


# Learning rates of the preference methods when --lr is not given (TRL's defaults).
PREFERENCE_LR = {"dpo": 1e-6, "rm": 1e-4}


def _load_checked(
    ref: str, facts: dict[str, Any], capacity: int, what: str, method: str = "sft"
) -> tuple[TokenizedData, str | None]:
    from openchat_cli.train.pairs import PAIRS_KIND, file_kind, load_pairs, pair_lengths

    path, ds_id = resolve_data(ref)
    meta = read_meta_checked(path, template=facts["template"], tokenizer_hash=facts["tokenizer_hash"])
    pairs = file_kind(path) == PAIRS_KIND
    if pairs != (method in PREFERENCE_LR):
        raise OpenchatError(
            f"{what} {path} holds {'preference pairs' if pairs else 'conversations'}, but "
            f"--method {method} trains on {'pairs' if method in PREFERENCE_LR else 'conversations'}"
            + (
                ": pass --method dpo or rm"
                if pairs
                else ": tokenize pairs (`openchat data tokenize` of a pairs file) or use --method sft"
            )
        )
    if pairs:
        data = load_pairs(path, meta, vocab_size=facts["vocab_size"])
        longest, unit = int(pair_lengths(data).max()), "pair (chosen + rejected)"
    else:
        data = load(path, meta, vocab_size=facts["vocab_size"])
        longest, unit = int(data.lengths.max()), "sequence"
    if longest > capacity:
        raise OpenchatError(
            f"{what} {path} has a {unit} of {longest} tokens, more than a micro-batch "
            f"holds ({capacity}): raise --tokens-per-step/--micro-tokens or re-tokenize "
            f"with a smaller --max-len"
        )
    return data, ds_id


def run_folder(cfg: TrainConfig) -> Path:
    return Path(cfg.out).expanduser().resolve()


def prepare(
    cfg: TrainConfig, *, resume: bool = False, force: bool = False, overrides: dict[str, Any] | None = None
) -> TrainSpec:
    """Validate inputs, register (or reopen) the run, write OUT/run.json (the ranks' spec).
    The caller holds the run folder's lock (`RunFolderLock`)."""
    from openchat_cli.train.grpo_prompts import PROMPTS_FORMAT
    from openchat_cli.train.schedule import auto_lr
    from store.catalog import open_catalog

    out = run_folder(cfg)
    previous = ckpt.read_run_file(out) if out.exists() else None
    if resume:
        if previous is None:
            raise OpenchatError(f"nothing to resume: {out} holds no {ckpt.RUN_FILE}")
        cfg = TrainConfig.from_dict({**previous["config"], "stop_after": cfg.stop_after, **(overrides or {})})
        if (out / ckpt.FINAL_DIR).exists() and ckpt.latest_state_step(out) is None:
            raise OpenchatError(f"run {previous.get('run_id')} in {out} already finished: nothing to resume")
    elif previous is not None and not force:
        raise OpenchatError(
            f"{out} already holds run {previous.get('run_id')}: pass --resume to continue it, or --force to start over"
        )
    elif out.exists() and not only_lock_inside(out) and not force:
        raise OpenchatError(f"{out} already exists and is not empty (pass --force to replace it)")
    cfg.validate()

    facts = _model_facts(cfg.model)
    eval_id, eval_path, method_spec = None, None, {}
    if cfg.method == "grpo":  # prompts and rewards instead of a tokenized dataset
        from openchat_cli.train.config import GRPO_DEFAULT_LR
        from openchat_cli.train.grpo import prepare_inputs

        method_spec = prepare_inputs(cfg)
        data = None
        ds_id = method_spec.pop("dataset_id")
        lr = cfg.lr or GRPO_DEFAULT_LR
    else:
        data, ds_id = _load_checked(cfg.data, facts, cfg.micro_capacity, "dataset", cfg.method)
        if cfg.eval_data:
            eval_data, eval_id = _load_checked(cfg.eval_data, facts, cfg.micro_capacity, "eval dataset", cfg.method)
            eval_path = str(eval_data.path.resolve())
        lr = (
            cfg.lr
            or PREFERENCE_LR.get(cfg.method)
            or auto_lr(cfg.tokens_per_step, cfg.num_gpus, data.supervised_ratio())
        )

    catalog = open_catalog()
    if resume:
        run_id, ds_id = previous["run_id"], previous.get("dataset_id")
        ckpt.remove_partial_saves(out)
        announce_resume(out, run_id)
        catalog.update("runs", run_id, status="running", finished_at=None)
    else:
        if ds_id is None and data is None:  # a hand-made prompt file (grpo)
            prompts_path = Path(method_spec["prompts_path"])
            ds_id = catalog.add_dataset(
                name=prompts_path.stem, path=prompts_path, format=PROMPTS_FORMAT, num_records=method_spec["num_prompts"]
            )
        elif ds_id is None:  # a hand-made file: register it, so the run has lineage
            ds_id = catalog.add_dataset(
                name=data.path.stem,
                path=data.path,
                format="tokenized-pairs" if cfg.method in PREFERENCE_LR else "tokenized",
                num_records=len(data) // 2 if cfg.method in PREFERENCE_LR else len(data),
                meta={k: data.meta.get(k) for k in ("template", "tokenizer_hash", "max_len")},
            )
        if force:
            if previous and previous.get("run_id"):  # the run being replaced stops being `running`
                catalog.write(
                    "update runs set status = 'interrupted' where id = ? and status = 'running'", [previous["run_id"]]
                )
            _empty_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        run_id = catalog.add_run(
            config=cfg.to_dict(), dataset_id=ds_id, base_checkpoint_id=facts["base_checkpoint_id"], output_path=out
        )
    spec = TrainSpec(
        run_id=run_id,
        out=str(out),
        config=cfg.to_dict(),
        **facts,
        data_path=str(data.path.resolve()) if data is not None else None,
        dataset_id=ds_id,
        eval_data_path=eval_path,
        eval_dataset_id=eval_id,
        lr=lr,
        **method_spec,
    )
    ckpt.write_run_file(out, spec.to_dict())
    (out / RESULT_FILE).unlink(missing_ok=True)
    return spec


def _empty_folder(out: Path) -> None:
    """Remove everything in a run folder but its lock file (held by this command)."""
    for child in out.iterdir() if out.exists() else ():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def announce_resume(out: Path, run_id: str) -> None:
    """Say what --resume continues from: the last saved state, or the start if none was saved."""
    from openchat_cli.console import err_console

    steps = ckpt.read_steps(out)
    last = steps[-1]["step"] if steps else 0
    state = ckpt.latest_state_step(out)
    if state is None:
        message = (
            f"run {run_id} stopped after step {last} before any resumable state was saved: starting again from step 1"
            if last
            else f"resuming run {run_id} from step 1"
        )
    else:
        epoch = next((s.get("epoch") for s in steps if s["step"] == state), None)
        redo = f"; steps {state + 1}-{last}, done after that save, will be redone" if last > state else ""
        message = (
            f"resuming run {run_id} from its state saved at step {state}"
            + (f" (epoch {epoch})" if epoch else "")
            + redo
        )
    err_console.print(f"[cyan]{message}[/]", highlight=False, soft_wrap=True)


# -- running ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _package_root() -> str:
    import openchat_cli

    return str(Path(openchat_cli.__file__).resolve().parents[1])


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run(spec: TrainSpec, lock_fd: int | None = None, view: Any = None) -> dict[str, Any]:
    """Train with the configured number of ranks; record the outcome in the catalog.

    SIGTERM/SIGINT stop the run cleanly: the ranks stop at the next step boundary with their
    state saved, the run is marked `interrupted`, and the result carries the signal (a second
    signal kills the ranks at once). `lock_fd` (the run folder's lock) is inherited by the
    ranks, so the folder stays locked until the last of them has exited. While they run, rank 0's
    events are shown by `view` (train/watch.py; default: live on a terminal, plain lines otherwise)
    and sent to the configured trackers.
    """
    from openchat_cli.console import err_console
    from openchat_cli.train import trackers, watch
    from openchat_cli.train.report import EVENTS_FILE

    cfg = TrainConfig.from_dict(spec.config)
    out = Path(spec.out)
    stop = StopSignals()
    try:
        sinks = [view or watch.choose_view(as_json=False)]
        sinks += trackers.open_trackers(
            trackers.chosen(cfg.report_to), out, spec.run_id, spec.config, start=ckpt.latest_state_step(out) or 0
        )
        follower = watch.EventFollower(
            out / EVENTS_FILE, sinks, warn=lambda text: err_console.print(f"[yellow]{text}[/]", highlight=False)
        )
        with stop, follower:
            _run_ranks(out / ckpt.RUN_FILE, cfg, stop, tuple(fd for fd in (lock_fd,) if fd is not None))
        result = json.loads((out / RESULT_FILE).read_text())
    except BaseException as exc:
        if stop.signal is None and not isinstance(exc, KeyboardInterrupt):
            _finish(spec, {"status": "failed", "metrics": {"error": getattr(exc, "message", str(exc))}})
            raise
        stop.signal = stop.signal or signal.SIGINT
        result = {"status": "interrupted", "steps": None, "stopped_at": None}  # the ranks were killed
    if stop.signal is not None and result["status"] != "completed":  # a stop after the end changes nothing
        result = {**result, "status": "interrupted", "signal": stop.signal}
    _finish(spec, result)
    return result


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # kill, Ctrl-C, terminal closed


class StopSignals:
    """While ranks run: the first SIGTERM/SIGINT/SIGHUP asks them to stop cleanly (forwarded as SIGTERM),
    a second one kills them. Only the main thread can take signals; elsewhere this does nothing."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.stop_ranks = lambda hard: None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        hard = self.signal is not None
        self.signal = self.signal or signum
        self.stop_ranks(hard)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _run_ranks(run_file: Path, cfg: TrainConfig, stop: StopSignals, pass_fds: tuple[int, ...]) -> None:
    """Ranks always run in child processes: the same path for 1 and N ranks, a clean
    environment (threads, distributed variables) and a parent that survives a crashed rank.
    They follow this process (`lifeline`): if it dies, even by kill -9, they die with it."""
    from openchat_cli.lifeline import owner_env
    from store.catalog import COMMAND_ENV, current_command

    env = {
        **owner_env(),
        COMMAND_ENV: current_command(),  # what the ranks record with their checkpoints
        "PYTHONPATH": os.pathsep.join(p for p in (_package_root(), os.environ.get("PYTHONPATH")) if p),
    }
    gpus = _gpu_count()
    if cfg.hostfile or (gpus and cfg.num_gpus > 1):
        if not cfg.hostfile and cfg.num_gpus > gpus:
            raise OpenchatError(f"--num-gpus {cfg.num_gpus} but this machine has {gpus} GPU(s)")
        command = [
            sys.executable,
            "-m",
            "deepspeed.launcher.runner",
            "--master_port",
            str(free_port()),
            "--no_local_rank",
            "--module",
        ]
        command += ["--hostfile", cfg.hostfile] if cfg.hostfile else ["--num_gpus", str(cfg.num_gpus)]
        command += ["openchat_cli.train.launch", str(run_file)]
        # Its own process group, so a stop reaches the launcher and the ranks it started.
        proc = subprocess.Popen(command, env=env, start_new_session=True, pass_fds=pass_fds)
        stop.stop_ranks = lambda hard: _signal_group(proc, signal.SIGKILL if hard else signal.SIGTERM)
        try:
            code = proc.wait()
        finally:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
        if code and stop.signal is None:
            raise OpenchatError(f"training ranks failed (exit {code})", exit_code=code if code < 128 else 1)
        return
    _spawn_ranks(run_file, cfg.num_gpus, env, cpu=not gpus, stop=stop, pass_fds=pass_fds)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _spawn_ranks(
    run_file: Path,
    world: int,
    env: dict[str, str],
    cpu: bool,
    stop: StopSignals | None = None,
    pass_fds: tuple[int, ...] = (),
) -> None:
    """Start `world` ranks on this machine and wait; if one fails, kill the rest (they may be
    blocked in a collective with the dead one, where no signal handler runs)."""
    stop = stop or StopSignals()
    port = str(free_port())
    procs: list[subprocess.Popen] = []

    def stop_ranks(hard: bool) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL if hard else signal.SIGTERM)

    stop.stop_ranks = stop_ranks
    for rank in range(world):
        rank_env = {
            **env,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        if cpu:
            # Share the cores between ranks; idle OpenMP threads sleep instead of spinning (a
            # spinning pool slows a busy or oversubscribed machine down by an order of magnitude).
            rank_env.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // world)))
            rank_env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        procs.append(subprocess.Popen(_rank_command(run_file), env=rank_env, pass_fds=pass_fds))
        if stop.signal is not None:  # stopped while starting them: the new one too
            stop_ranks(False)
    try:
        failed = None
        while failed is None:
            codes = [p.poll() for p in procs]  # every rank, every time: a dead rank 1 must not wait
            failed = next((p for p, code in zip(procs, codes) if code), None)  # behind a live rank 0
            if all(code == 0 for code in codes):
                break
            time.sleep(0.2)
        if failed and stop.signal is None:
            rank = procs.index(failed)
            raise OpenchatError(
                f"rank {rank} failed (exit {failed.returncode})",
                exit_code=failed.returncode if 0 < failed.returncode < 128 else 1,
            )
        if failed:  # a stop, and a rank died of it: the others wait for it in a collective
            stop_ranks(True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


def _rank_command(run_file: Path) -> list[str]:
    return [sys.executable, "-m", "openchat_cli.train.launch", str(run_file)]


def _finish(spec: TrainSpec, result: dict[str, Any]) -> None:
    from store.catalog import now, open_catalog

    if not spec.run_id:
        return
    fields: dict[str, Any] = {"status": result["status"], "finished_at": now()}
    if "metrics" in result:
        fields["metrics"] = result["metrics"]
    if result.get("curve"):
        fields["loss_curve"] = result["curve"]
    catalog = open_catalog()
    try:
        catalog.update("runs", spec.run_id, **fields)
    finally:
        catalog.close()


# -- one rank (python -m openchat_cli.train.launch RUN_JSON) ------------------------------------
def rank_main(run_file: str) -> int:
    import warnings

    from openchat_cli.console import err_console
    from openchat_cli.determinism import apply_pinned_threads
    from openchat_cli.train import loop

    # Deprecation notices from inside torch.distributed / transformers / peft, once per rank,
    # say nothing the user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
    from openchat_cli.lifeline import follow_owner

    follow_owner(hard=True)  # `openchat train` gone (even by kill -9): this rank goes too, at once
    apply_pinned_threads()  # $OPENCHAT_THREADS (the quickstart): same numbers on any machine
    stop = loop.StopRequest()
    spec = TrainSpec.read(run_file)
    try:
        result = loop.train(spec, stop)
    except OpenchatError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        return exc.exit_code
    if int(os.environ.get("RANK", "0")) == 0:
        from openchat_cli.atomic import atomic_write_text

        atomic_write_text(Path(spec.out) / RESULT_FILE, json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1]))
