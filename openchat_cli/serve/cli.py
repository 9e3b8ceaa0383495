"""`openchat serve` (not built yet)."""

from openchat_cli.stub import not_implemented


def serve_command() -> None:
    """Serve a checkpoint behind an OpenAI-compatible API."""
    not_implemented("serve")
