"""`openchat train`: flags (or --config run.yaml) in, a trained checkpoint and a catalog run out."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from openchat_cli.console import console, err_console
from openchat_cli.train.config import TrainConfig

D = TrainConfig()
PERF = "Performance"
LORA = "LoRA"
RUN = "Run control"
PREF = "Preference methods"
GRPO = "GRPO (--method grpo)"


def train_command(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", help="Model dir or checkpoint id (ck-…) to fine-tune."),
    data: Optional[str] = typer.Option(
        None, "--data", help="Tokenized .parquet (from `openchat data tokenize`) or dataset id (ds-…)."
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Run folder: checkpoints step-N/, final/, resumable state/ (default: HOME/runs/train-DATE-TIME).",
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", help="YAML file with any of these settings (flags override it)."
    ),
    eval_data: Optional[str] = typer.Option(
        None, "--eval-data", help="Held-out tokenized .parquet or ds-… id: eval loss before, during and after."
    ),
    method: str = typer.Option(
        D.method,
        "--method",
        help="sft (conversations) | dpo | rm (reward model); dpo and rm read tokenized preference pairs | grpo (online RL from rewards: --prompts, --reward).",
        rich_help_panel=PREF,
    ),
    beta: Optional[float] = typer.Option(
        None,
        "--beta",
        help="DPO/IPO beta: how far the policy may move from the reference (default 0.1); grpo: the KL weight to the starting model (default 0.04, DeepSeekMath's; 0 turns it off).",
        rich_help_panel=PREF,
    ),
    label_smoothing: float = typer.Option(
        D.label_smoothing,
        "--label-smoothing",
        help="cDPO: the share of pairs assumed mislabeled (0 to 0.5).",
        rich_help_panel=PREF,
    ),
    loss_type: str = typer.Option(D.loss_type, "--loss-type", help="DPO loss: sigmoid | ipo.", rich_help_panel=PREF),
    rpo_alpha: float = typer.Option(
        D.rpo_alpha,
        "--rpo-alpha",
        help="dpo: add RPO's NLL on the chosen reply (per token, averaged over pairs) with this weight; 0: off.",
        rich_help_panel=PREF,
    ),
    epochs: int = typer.Option(D.epochs, "--epochs", help="Passes over the data."),
    lr: Optional[float] = typer.Option(
        None,
        "--lr",
        help="Peak learning rate (default: OpenChat's rule for sft, 3e-4 x sqrt(supervised tokens per step / 4M); 1e-6 for dpo, 1e-4 for rm, as TRL).",
    ),
    warmup_ratio: float = typer.Option(D.warmup_ratio, "--warmup-ratio", help="Fraction of steps with linear warmup."),
    min_lr_ratio: float = typer.Option(
        D.min_lr_ratio, "--min-lr-ratio", help="Cosine decay floor, as a fraction of the peak lr."
    ),
    weight_decay: float = typer.Option(D.weight_decay, "--weight-decay", help="AdamW weight decay (matrices only)."),
    max_grad_norm: float = typer.Option(D.max_grad_norm, "--max-grad-norm", help="Gradient clipping norm (0: off)."),
    tokens_per_step: int = typer.Option(
        D.tokens_per_step,
        "--tokens-per-step",
        help="Tokens per optimizer step per rank (packed sequences).",
        rich_help_panel=PERF,
    ),
    micro_tokens: Optional[int] = typer.Option(
        None,
        "--micro-tokens",
        help="Tokens per forward pass; smaller than --tokens-per-step means gradient accumulation.",
        rich_help_panel=PERF,
    ),
    seed: int = typer.Option(D.seed, "--seed", help="Seed for shuffling, packing and initialisation."),
    grad_checkpointing: bool = typer.Option(
        D.grad_checkpointing,
        "--grad-checkpointing",
        help="Recompute activations in backward (less memory, ~30% slower).",
        rich_help_panel=PERF,
    ),
    save_every: int = typer.Option(
        D.save_every, "--save-every", help="Save a checkpoint every N steps (0: only at the end).", rich_help_panel=RUN
    ),
    state_minutes: float = typer.Option(
        D.state_minutes,
        "--state-minutes",
        help="Save resumable state (for --resume) at least every N minutes; also saved on SIGTERM/Ctrl-C (0: only at --save-every steps).",
        rich_help_panel=RUN,
    ),
    eval_every: int = typer.Option(
        D.eval_every, "--eval-every", help="Eval loss every N steps (0: only before and after).", rich_help_panel=RUN
    ),
    log_every: int = typer.Option(
        D.log_every, "--log-every", help="Steps per point of the stored loss curve.", rich_help_panel=RUN
    ),
    zero: int = typer.Option(D.zero, "--zero", help="DeepSpeed ZeRO stage (0-3).", rich_help_panel=PERF),
    offload: bool = typer.Option(
        D.offload,
        "--offload",
        help="Keep optimizer states (and with --zero 3 parameters) in CPU memory.",
        rich_help_panel=PERF,
    ),
    num_gpus: int = typer.Option(
        D.num_gpus,
        "--num-gpus",
        help="Ranks: one per GPU (several through the deepspeed launcher), or CPU processes (gloo) on a machine without one.",
        rich_help_panel=PERF,
    ),
    hostfile: Optional[str] = typer.Option(
        None, "--hostfile", help="DeepSpeed hostfile for multi-node training.", rich_help_panel=PERF
    ),
    precision: str = typer.Option(
        D.precision, "--precision", help="auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32.", rich_help_panel=PERF
    ),
    lora: bool = typer.Option(
        D.lora,
        "--lora",
        help="Train a LoRA adapter instead of all weights (fold it back with `openchat model merge-lora`).",
        rich_help_panel=LORA,
    ),
    lora_r: int = typer.Option(D.lora_r, "--lora-r", help="LoRA rank.", rich_help_panel=LORA),
    lora_alpha: int = typer.Option(D.lora_alpha, "--lora-alpha", help="LoRA alpha.", rich_help_panel=LORA),
    lora_dropout: float = typer.Option(D.lora_dropout, "--lora-dropout", help="LoRA dropout.", rich_help_panel=LORA),
    lora_targets: str = typer.Option(
        D.lora_targets,
        "--lora-targets",
        help="Modules to adapt: all-linear or a comma list (q_proj,v_proj).",
        rich_help_panel=LORA,
    ),
    stop_after: Optional[int] = typer.Option(
        None,
        "--stop-after",
        help="Stop after N steps of this invocation, keeping resumable state (time-boxed jobs).",
        rich_help_panel=RUN,
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the run in --out from its last checkpoint (its settings are reused).",
        rich_help_panel=RUN,
    ),
    force: bool = typer.Option(False, "--force", help="Replace --out if it holds something.", rich_help_panel=RUN),
    prompts: Optional[str] = typer.Option(
        None,
        "--prompts",
        help='GRPO prompts: JSONL {"id", "messages"|"prompt", "answer"} or a ds-… id.',
        rich_help_panel=GRPO,
    ),
    reward: Optional[list[str]] = typer.Option(
        None,
        "--reward",
        help="grade | rm:ck-…|DIR | judge:URL[#MODEL], each with an optional =WEIGHT; repeat to combine.",
        rich_help_panel=GRPO,
    ),
    group_size: int = typer.Option(
        D.group_size,
        "--group-size",
        help="Completions sampled per prompt (advantages are relative within the group).",
        rich_help_panel=GRPO,
    ),
    prompts_per_step: int = typer.Option(
        D.prompts_per_step, "--prompts-per-step", help="Prompts per optimizer step per rank.", rich_help_panel=GRPO
    ),
    max_completion_tokens: int = typer.Option(
        D.max_completion_tokens, "--max-completion-tokens", help="Longest completion sampled.", rich_help_panel=GRPO
    ),
    temperature: float = typer.Option(
        D.temperature,
        "--temperature",
        help="Sampling temperature (log-probs are taken at the same temperature).",
        rich_help_panel=GRPO,
    ),
    epsilon: float = typer.Option(
        D.epsilon, "--epsilon", help="PPO-style clip range of the probability ratio.", rich_help_panel=GRPO
    ),
    grpo_iterations: int = typer.Option(
        D.grpo_iterations,
        "--grpo-iterations",
        help="Updates per sampled batch (the ratio moves off 1 and clipping acts from the second).",
        rich_help_panel=GRPO,
    ),
    grpo_loss: str = typer.Option(
        D.grpo_loss,
        "--grpo-loss",
        help="grpo: mean over each completion, then over completions | dapo: mean over all tokens.",
        rich_help_panel=GRPO,
    ),
    report_to: list[str] = typer.Option(
        [],
        "--report-to",
        help="Also log to a tracker: none | tensorboard | wandb | mlflow (repeatable; wandb runs offline unless WANDB_MODE says otherwise).",
        rich_help_panel=RUN,
    ),
    as_json: bool = typer.Option(
        False,
        "--json",
        help='Progress as JSON lines on stdout (start, curve points, evals, notes), then the run\'s catalog entry (event "run").',
    ),
) -> None:
    """Fine-tune a causal LM on tokenized conversations: multipack packing, padding-free batches,
    weighted (C-RLFT) loss, DeepSpeed ZeRO; checkpoints in Hugging Face format. --method dpo|rm
    learns from tokenized preference pairs instead (DPO, or a reward model); --method grpo is
    online RL from a grader, reward model or judge on completions the serving engine samples."""
    from openchat_cli.errors import OpenchatError
    from openchat_cli.train import config as config_mod
    from openchat_cli.train.launch import prepare, run, run_folder
    from openchat_cli.train.watch import choose_view

    values = {k: v for k, v in ctx.params.items() if k in D.to_dict()}
    values["out"] = str(out) if out else None
    # Typer vendors its own click: compare the source by name.
    given = {k for k in values if getattr(ctx.get_parameter_source(k), "name", "") in ("COMMANDLINE", "ENVIRONMENT")}
    cfg = config_mod.merge(values, given, config_mod.load_yaml(config) if config else {})
    if resume:
        extra = [
            f"--{k.replace('_', '-')}" for k in sorted(given - {"out", "stop_after", "state_minutes", "report_to"})
        ]
        if extra or config:
            raise OpenchatError(
                "--resume continues with the run's own settings: only --out, --stop-after, "
                f"--state-minutes and --report-to may be given (got {', '.join(extra or ['--config'])})"
            )
    from openchat_cli.train import trackers

    trackers.check_installed(trackers.chosen(cfg.report_to))  # before anything is registered
    if not cfg.out:
        if resume:
            raise OpenchatError("--resume needs --out: the run folder to continue")
        import time

        from openchat_cli.home import default_output_dir

        cfg.out = str(default_output_dir("runs") / time.strftime("train-%Y%m%d-%H%M%S"))
    from openchat_cli.run_folder import RunFolderLock, settle_abandoned_runs
    from store.catalog import open_catalog

    settle_abandoned_runs(open_catalog())  # runs whose command was killed stop showing `running`
    with RunFolderLock(run_folder(cfg)) as lock:
        spec = prepare(
            cfg,
            resume=resume,
            force=force,
            overrides={k: getattr(cfg, k) for k in ("state_minutes", "report_to") if k in given},
        )
        result = run(spec, lock.fd, view=choose_view(as_json))
    if as_json:
        print_json_line({"event": "run", "run": open_catalog().get(spec.run_id)})
        if result.get("signal"):
            raise typer.Exit(128 + result["signal"])
        return
    metrics = result.get("metrics", {})
    where = Path(spec.out)
    if result["status"] == "completed" and metrics.get("method") == "grpo":
        console.print(
            f"[green]trained[/] {result['steps']} GRPO steps, mean reward {metrics.get('reward_initial', 0):.3f} "
            f"(first step) → {metrics.get('reward', 0):.3f} (last) → {where / 'final'} "
            f"([bold]{metrics.get('final_checkpoint_id')}[/], run {spec.run_id})"
        )
    elif result["status"] == "completed":
        eval_text = (
            f", held-out loss {metrics['eval_loss_initial']:.4f} → {metrics['eval_loss']:.4f}"
            if "eval_loss_initial" in metrics and "eval_loss" in metrics
            else ""
        )
        if "eval_accuracy" in metrics:  # the preference methods: held-out pairs ranked right
            eval_text += (
                f", held-out pair accuracy {metrics.get('eval_accuracy_initial', float('nan')):.1%} → "
                f"{metrics['eval_accuracy']:.1%}"
            )
        console.print(
            f"[green]trained[/] {result['steps']} steps, train loss {metrics['final_loss']:.4f}{eval_text}"
            + f" → {where / 'final'} ([bold]{metrics.get('final_checkpoint_id')}[/], run {spec.run_id})"
        )
    elif result.get("signal"):
        import signal

        from openchat_cli.train.run_files import latest_state_step

        saved = latest_state_step(where)
        state = f"--resume continues from step {saved}" if saved else "no state saved: --resume starts over"
        progress_text = f" after step {result['stopped_at']} of {result['steps']}" if result.get("steps") else ""
        err_console.print(
            f"[yellow]stopped by {signal.Signals(result['signal']).name}[/]{progress_text} ({state}): "
            f"continue with `openchat train --out {where} --resume` (run {spec.run_id}, "
            "marked interrupted)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(128 + result["signal"])
    else:
        console.print(
            f"[yellow]stopped[/] after step {result['stopped_at']} of {result['steps']}: continue with "
            f"`openchat train --out {where} --resume` (run {spec.run_id})"
        )


def print_json_line(data: object) -> None:
    """One compact JSON object on its own line: --json output is JSON Lines (see train/watch.py)."""
    import json
    import sys

    sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()
