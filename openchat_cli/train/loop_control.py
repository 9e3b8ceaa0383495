"""The control of a training loop that every method shares (SFT/DPO/RM in loop.py, GRPO in grpo.py):
resuming from the newest DeepSpeed state, stopping at a step boundary on a signal, resumable state
every --state-minutes, checkpoints every --save-every steps and at the end, --stop-after, rank 0's
progress reporting, and the run's outcome. The methods own only what a step computes.

A method's loop reads:

    control = LoopControl(engine, spec, cfg, comm, stop, total, fingerprint, changed="the data")
    ...                                    # method setup that may need control.resuming
    if comm.rank == 0:
        control.open_reporter("what this run does")
    with control:
        for step in range(control.start, total):
            stop_vote, state_vote = control.votes()
            stops, state_due = comm.sum(stop_vote, state_vote)   # with the step's own sums
            if control.stop_requested(stops):
                break
            ...                                                   # the step
            if control.step_done(step + 1, state_due):
                break
        if control.completed:
            control.save(total, final=True)
    return control.outcome({...})
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

from openchat_cli.errors import OpenchatError
from openchat_cli.train import run_files as ckpt
from openchat_cli.train.config import TrainConfig
from openchat_cli.train.spec import TrainSpec


class StopRequest:
    """SIGTERM/SIGINT/SIGHUP ask this rank to stop at the next step boundary (with its state saved)
    instead of dying mid-step; `openchat train` forwards them to every rank."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {
            sig: signal.signal(sig, self._record) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }

    def _record(self, signum: int, frame: object) -> None:
        self.signal = self.signal or signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class LoopControl:
    """Step/save/stop/resume bookkeeping of one rank's run. Construction resumes from OUT/state when
    there is one (`start`, `metrics` and the curve come back; a changed `fingerprint` refuses).
    `metrics` is the run's summary, which the method adds to and the checkpoints record."""

    def __init__(
        self,
        engine: Any,
        spec: TrainSpec,
        cfg: TrainConfig,
        comm: Any,
        stop: StopRequest,
        total: int,
        fingerprint: str,
        changed: str,
    ):
        self.engine, self.spec, self.cfg, self.comm, self.stop = engine, spec, cfg, comm, stop
        self.out = Path(spec.out)
        self.total = total
        self.fingerprint = fingerprint
        self.start, self._curve, self.metrics = 0, [], {}
        state_step = ckpt.latest_state_step(self.out)
        self.resuming = state_step is not None
        if state_step is not None:
            _, client = engine.load_checkpoint(
                str(self.out / ckpt.STATE_DIR), tag=ckpt.state_tag(state_step), load_module_strict=not cfg.lora
            )
            if client.get("fingerprint") != fingerprint:
                raise OpenchatError(
                    f"cannot resume: {changed} or number of ranks changed "
                    "since the checkpoint (start a new run in another --out)"
                )
            self.start, self._curve, self.metrics = client["step"], client.get("curve", []), client.get("metrics", {})
        self.reporter: Any = None
        self.status = "completed"
        self.done = self.start  # the last finished step
        self.saved = self.start  # the step of the newest resumable state (the one resumed from counts)
        self._last_state_time = time.monotonic()

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def open_reporter(self, note: str) -> None:
        """Rank 0: start the run's account (steps past `start` from a killed invocation are dropped)."""
        from openchat_cli.train.report import Reporter

        ckpt.truncate_steps(self.out, self.start)
        cfg = self.cfg
        self.reporter = Reporter(
            self.out, self.spec.run_id, self.total, self.start, cfg.log_every, self._curve, epochs=cfg.epochs
        )
        self.reporter.note(note + (f"; resuming at step {self.start}" if self.start else ""))

    @property
    def curve(self) -> list[dict[str, Any]]:
        return self.reporter.curve if self.reporter else []

    def __enter__(self) -> LoopControl:
        self._last_state_time = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.restore()
        if self.reporter:
            self.reporter.close()

    # -- each step -------------------------------------------------------------------------------
    def votes(self) -> tuple[float, float]:
        """This rank's votes to stop now (it got a signal) and to save state after this step (rank 0's
        clock says --state-minutes have passed): summed over ranks in the step's one all-reduce, so
        every rank takes both decisions together."""
        cfg = self.cfg
        state_due = (
            self.comm.rank == 0
            and cfg.state_minutes > 0
            and time.monotonic() - self._last_state_time >= cfg.state_minutes * 60
        )
        return float(self.stop.signal is not None), float(state_due)

    def stop_requested(self, stops: float) -> bool:
        """Some rank was asked to stop: save what is not saved yet; the loop breaks before the step."""
        if not stops:
            return False
        if self.done > self.saved:
            self.save_state(self.done)
        self.status = "interrupted"
        return True

    def step_done(self, done: int, state_votes: float) -> bool:
        """After step `done`: the periodic saves; True when the loop ends here (last step, --stop-after)."""
        cfg = self.cfg
        self.done = done
        if done == self.total:
            return True
        if cfg.stop_after and done - self.start >= cfg.stop_after:
            self.save(done, final=False)
            self.status = "interrupted"
            return True
        if cfg.save_every and done % cfg.save_every == 0:
            self.save(done, final=False)
        elif state_votes:
            self.save_state(done)
        if self.saved == done:
            self._last_state_time = time.monotonic()
        return False

    # -- saving ----------------------------------------------------------------------------------
    def save_state(self, step: int) -> None:
        """DeepSpeed state (weights, optimizer, scheduler, the method's position) for --resume."""
        client = {"step": step, "fingerprint": self.fingerprint, "curve": self.curve, "metrics": self.metrics}
        # A LoRA run's frozen base weights need not be copied into every resumable state.
        # DeepSpeed's own `latest` is written in place by rank 0 before the other ranks are
        # done: a kill there points --resume at half a state. Ours is renamed into place once
        # every rank has written its part.
        self.engine.save_checkpoint(
            str(self.out / ckpt.STATE_DIR),
            tag=ckpt.state_tag(step),
            client_state=client,
            exclude_frozen_parameters=self.cfg.lora,
            save_latest=False,
        )
        self.comm.barrier()
        if self.comm.rank == 0:
            ckpt.mark_latest_state(self.out, step)
            ckpt.prune_states(self.out, ckpt.state_tag(step))
            self.reporter.note(f"resumable state saved at step {step}")
        self.saved = step

    def save(self, step: int, final: bool) -> None:
        """A Hugging Face checkpoint (OUT/step-N, with resumable state, or OUT/final)."""
        name = ckpt.FINAL_DIR if final else ckpt.step_dir_name(step)
        save_hf(self.engine, self.cfg, self.spec, self.out, name, step, self.metrics, self.reporter)
        if not final:
            self.save_state(step)

    def outcome(self, extra_metrics: dict[str, Any]) -> dict[str, Any]:
        """The run's result (rank 0's is complete); a completed run's state is removed (nothing left to
        resume) and the engine released."""
        reporter = self.reporter
        result = {
            "status": self.status,
            "steps": self.total,
            "stopped_at": self.done,
            "resume_step": self.saved,
            "metrics": {
                **self.metrics,
                **extra_metrics,
                "final_loss": reporter.curve[-1]["loss"] if reporter and reporter.curve else None,
            },
            "curve": self.curve,
        }
        if self.completed and self.comm.rank == 0:
            shutil.rmtree(self.out / ckpt.STATE_DIR, ignore_errors=True)
        self.engine.destroy()
        return result


def save_hf(
    engine: Any,
    cfg: TrainConfig,
    spec: TrainSpec,
    out: Path,
    name: str,
    step: int,
    metrics: dict[str, Any],
    reporter: Any,
) -> None:
    """Rank 0 writes and registers a Hugging Face checkpoint (ZeRO-3 gathers weights first)."""
    state_dict = None
    if cfg.zero == 3:  # every rank takes part in gathering the partitioned weights
        gathered = engine._zero3_consolidated_16bit_state_dict()
        state_dict = {k.removeprefix("lm."): v for k, v in (gathered or {}).items()}
    if reporter is None:
        return
    from openchat_cli.model_dir import load_tokenizer, write_meta
    from store.catalog import open_catalog

    tokenizer = load_tokenizer(Path(spec.model_path))
    if not tokenizer.chat_template:
        from openchat_cli.model_dir import attach_template

        attach_template(tokenizer, spec.template)
    meta = {
        "template": spec.template,
        "method": cfg.method,
        "run_id": spec.run_id,
        "dataset_id": spec.dataset_id,
        "tokenizer_hash": spec.tokenizer_hash,
        "base_model": spec.model_path,
        "base_checkpoint_id": spec.base_checkpoint_id,
        "step": step,
    }
    if cfg.lora:
        meta["lora"] = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets}
    path = ckpt.save_hf(out, name, engine.module.lm, tokenizer, meta, state_dict)
    point = reporter.curve[-1] if reporter.curve else {}
    catalog = open_catalog()
    try:
        old = catalog.find_by_path("checkpoints", path)
        if old:  # a resumed run redoing a step it had saved before being killed
            catalog.remove(old["id"])
        ck = catalog.add_checkpoint(
            path=path,
            kind="reward-model" if cfg.method == "rm" else "trained",
            template=spec.template,
            base_model=spec.model_path,
            run_id=spec.run_id,
            dataset_id=spec.dataset_id,
            step=step,
            metrics={
                "loss": point.get("loss"),
                "eval_loss": metrics.get("eval_loss"),
                "lora": cfg.lora,
                "method": cfg.method,
                **({"eval_accuracy": metrics["eval_accuracy"]} if "eval_accuracy" in metrics else {}),
            },
            parent_id=spec.base_checkpoint_id,
        )
    finally:
        catalog.close()
    write_meta(path, checkpoint_id=ck)
    if name == ckpt.FINAL_DIR:
        metrics["final_checkpoint_id"] = ck
    reporter.note(f"saved {path} ({ck})")
    reporter.flush()
