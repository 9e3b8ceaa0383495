"""`openchat quickstart`: generated data → clean → tokenize → tiny model → train → graded before/after."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from openchat_cli.console import print_json


def quickstart_command(
    workdir: Optional[Path] = typer.Option(
        None, "--dir", help="Where to put data, models and logs (default: OPENCHAT_HOME/quickstart)."),
    size: str = typer.Option("tiny", "--size", help="Model size for `model init`: tiny | small."),
    train_size: int = typer.Option(3000, "--train-size", min=50, help="Generated training conversations."),
    eval_size: int = typer.Option(60, "--eval-size", min=5, help="Held-out questions graded before and after."),
    epochs: int = typer.Option(10, "--epochs", min=1, help="Training epochs."),
    lr: float = typer.Option(5e-3, "--lr", help="Peak learning rate."),
    tokens_per_step: int = typer.Option(512, "--tokens-per-step", min=64, help="Tokens per optimizer step."),
    seed: int = typer.Option(0, "--seed", help="Seed for data generation and training."),
    as_json: bool = typer.Option(False, "--json", help="Print run ids and the report as JSON at the end."),
) -> None:
    """Run the whole loop on CPU in a few minutes: every step is an ordinary openchat command."""
    from openchat_cli.home import home_dir
    from openchat_cli.quickstart.run import QuickstartPlan, run_quickstart

    plan = QuickstartPlan(workdir=(workdir or home_dir() / "quickstart").resolve(), size=size,
                          train_size=train_size, eval_size=eval_size, epochs=epochs, lr=lr,
                          tokens_per_step=tokens_per_step, seed=seed, json_output=as_json)
    result = run_quickstart(plan)
    if as_json:
        print_json(result)
