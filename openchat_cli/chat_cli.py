"""`openchat chat` (not built yet)."""

from openchat_cli.stub import not_implemented


def chat_command() -> None:
    """Chat with a served model in the terminal."""
    not_implemented("chat")
