"""`openchat chat`: chat with a served model in the terminal; browse judge verdicts."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from openchat_cli import options as opt
from openchat_cli.endpoints import DEFAULT_ENDPOINT, normalize_base_url  # `openchat serve`'s default address
from openchat_cli.errors import OpenchatError


def chat_command(
    endpoint: Annotated[
        str,
        typer.Option(
            "--endpoint",
            "-e",
            envvar="OPENCHAT_ENDPOINT",
            help="OpenAI-compatible base URL (`openchat serve` listens on this by default).",
        ),
    ] = DEFAULT_ENDPOINT,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Model name as served (default: the first from /v1/models).")
    ] = None,
    api_key: opt.ApiKey = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    condition: Annotated[
        Optional[str], typer.Option("--condition", help="OpenChat condition, e.g. 'GPT4 Correct' or 'Math Correct'.")
    ] = None,
    temperature: Annotated[
        Optional[float],
        typer.Option("--temperature", "-t", min=0.0, max=2.0, help="Sampling temperature (server default if unset)."),
    ] = None,
    max_tokens: Annotated[
        Optional[int], typer.Option("--max-tokens", min=1, help="Longest reply in tokens (server default if unset).")
    ] = None,
    verdicts: Annotated[
        bool,
        typer.Option(
            "--verdicts",
            help="Open the judge verdicts browser (the list of judge and grade runs; "
            "`--verdicts EVAL_ID` opens that run).",
        ),
    ] = False,
    chat: Annotated[
        Optional[str],
        typer.Option("--chat", metavar="CHAT_ID", help="Reopen a saved chat (id or unique prefix) and continue it."),
    ] = None,
    ref: Annotated[
        Optional[str],
        typer.Argument(
            metavar="[EVAL_ID|CHAT_ID]",
            help="A judge/grade run to open in the verdicts browser, or a saved chat to reopen.",
        ),
    ] = None,
) -> None:
    """Chat with a served model in the terminal (streaming, saved chats); browse judge verdicts.

    Start a server in one terminal (`openchat serve MODEL`) and run `openchat chat` in another.
    F1 in the app lists every key.
    """
    from store.catalog import open_catalog

    endpoint = normalize_base_url(endpoint)
    catalog = open_catalog()
    chat_id = None
    run_id: Optional[str] = "" if verdicts else None
    if ref:
        full = catalog.resolve(ref)
        table = catalog.table_of(full)
        if table == "chats" and not verdicts and not chat:
            chat = full
        elif table == "evals":
            row = catalog.get(full)
            if row.get("kind") not in ("judge", "grade"):
                raise OpenchatError(
                    f"'{full}' is an {row.get('kind')} run: pass a judge or grade run "
                    "(`openchat catalog list evals` shows them)"
                )
            run_id = full
        else:
            raise OpenchatError(f"'{ref}' is neither a judge/grade run (ev-…) nor a chat (chat-…)")
    if chat:
        from tui.app import resolve_chat

        chat_id = resolve_chat(catalog, chat)
    if not os.isatty(1) and not os.environ.get("OPENCHAT_TUI_FORCE"):
        raise OpenchatError("`openchat chat` needs a terminal (stdout is not a tty)")

    from tui.app import OpenChatApp
    from tui.screens.settings import ChatSettings

    app = OpenChatApp(
        endpoint=endpoint,
        model=model,
        api_key=api_key,
        settings=ChatSettings(system=system, condition=condition, temperature=temperature, max_tokens=max_tokens),
        chat_id=chat_id,
        verdicts=run_id,
        catalog=catalog,
    )
    try:
        app.run()
    finally:
        catalog.close()
    if app.catalog_error is not None:
        raise app.catalog_error
    if app.return_code:  # the app crashed: Textual printed why; the exit status says so too
        raise typer.Exit(app.return_code)
