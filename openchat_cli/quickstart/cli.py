"""`openchat quickstart`: generated data → clean → tokenize → tiny model → train → graded before/after."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from openchat_cli.console import print_json


def quickstart_command(
    workdir: Annotated[
        Optional[Path],
        typer.Option("--dir", help="Where to put data, models and logs (default: OPENCHAT_HOME/quickstart)."),
    ] = None,
    size: Annotated[str, typer.Option("--size", help="Model size for `model init`: tiny | small.")] = "tiny",
    train_size: Annotated[int, typer.Option("--train-size", min=50, help="Generated training conversations.")] = 3000,
    eval_size: Annotated[
        int, typer.Option("--eval-size", min=5, help="Held-out questions graded before and after.")
    ] = 60,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")] = 10,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.")] = 5e-3,
    tokens_per_step: Annotated[int, typer.Option("--tokens-per-step", min=64, help="Tokens per optimizer step.")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Seed for data generation and training.")] = 0,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for every step, whatever the machine or $OMP_NUM_THREADS has: "
            "the same seed and threads give the same numbers everywhere.",
        ),
    ] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print run ids and the report as JSON at the end.")] = False,
) -> None:
    """Run the whole loop on CPU in a few minutes: every step is an ordinary openchat command."""
    from openchat_cli.home import home_dir
    from openchat_cli.quickstart.run import QuickstartPlan, run_quickstart

    plan = QuickstartPlan(
        workdir=(workdir or home_dir() / "quickstart").resolve(),
        size=size,
        train_size=train_size,
        eval_size=eval_size,
        epochs=epochs,
        lr=lr,
        tokens_per_step=tokens_per_step,
        seed=seed,
        threads=threads,
        json_output=as_json,
    )
    result = run_quickstart(plan)
    if as_json:
        print_json(result)
