"""The `openchat` command: one root Typer app with a sub-app (or command) per stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from openchat_cli import __version__
from openchat_cli.console import err_console
from openchat_cli.errors import OpenchatError
from openchat_cli.home import set_home


class ErrorReportingGroup(TyperGroup):
    """Root group: user-facing errors become one red line and a non-zero exit, not a traceback."""

    def invoke(self, ctx):
        from store.catalog import CatalogError

        try:
            return super().invoke(ctx)
        except OpenchatError as exc:
            err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except CatalogError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=ErrorReportingGroup,
    name="openchat",
    help="Clean chat data, fine-tune, serve, evaluate and chat with open LLMs, tracked in one catalog.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=False,  # completions/ holds generated scripts (python -m openchat_cli.completions)
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"openchat {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    home: Annotated[
        Optional[Path],
        typer.Option(
            "--home",
            envvar="OPENCHAT_HOME",
            show_envvar=False,
            help="Folder holding catalog.db and default outputs (or $OPENCHAT_HOME). Give it before the command.",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """openchat: one tool for the whole life of an open chat LLM."""
    from openchat_cli.determinism import apply_pinned_threads
    from openchat_cli.lifeline import follow_owner

    set_home(home)
    follow_owner()  # started by another openchat command (quickstart's steps, its server): end with it
    apply_pinned_threads()  # $OPENCHAT_THREADS (set by the quickstart for its steps): fixed threads


def _register() -> None:
    from openchat_cli.catalog_cli import app as catalog_app
    from openchat_cli.chat_cli import chat_command
    from openchat_cli.data.cli import app as data_app
    from openchat_cli.eval.cli import app as eval_app
    from openchat_cli.model.cli import app as model_app
    from openchat_cli.quickstart.cli import quickstart_command
    from openchat_cli.serve.cli import serve_command
    from openchat_cli.train.cli import train_command

    app.add_typer(data_app, name="data", help="Clean, filter, dedupe, split and tokenize chat datasets.")
    app.command("train", help="Fine-tune a model on a tokenized dataset (packed, weighted, DeepSpeed).")(train_command)
    app.command("serve", help="Serve a checkpoint behind an OpenAI-compatible API.")(serve_command)
    app.add_typer(eval_app, name="eval", help="Generate answers, judge them with an LLM, grade and report.")
    app.command("chat", help="Chat with a served model in the terminal; browse judge verdicts.")(chat_command)
    app.add_typer(catalog_app, name="catalog", help="List, show, trace and remove what openchat has made.")
    app.add_typer(model_app, name="model", help="Make tiny models, add special tokens, merge LoRA adapters.")
    app.command("quickstart", help="Run the whole loop on CPU: data → train → serve → eval, before/after.")(
        quickstart_command
    )


_register()


def build_cli():
    """The click command behind `openchat` (used by the entry point, tests and completions)."""
    return typer.main.get_command(app)


def main() -> None:
    build_cli()(prog_name="openchat")


if __name__ == "__main__":
    main()
