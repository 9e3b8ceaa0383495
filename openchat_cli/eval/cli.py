"""`openchat eval …` commands (not built yet)."""

import typer

from openchat_cli.stub import not_implemented

app = typer.Typer(no_args_is_help=False, invoke_without_command=True)


@app.callback()
def placeholder() -> None:
    not_implemented("eval")
