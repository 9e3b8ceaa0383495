"""Endpoint conventions as the commands use them: tui/endpoints.py's, with a bad URL reported
as a user-facing OpenchatError."""

from __future__ import annotations

from openchat_cli.errors import OpenchatError
from tui import endpoints as _conventions
from tui.endpoints import DEFAULT_ENDPOINT, DEFAULT_HOST, DEFAULT_PORT, server_message

__all__ = ["DEFAULT_ENDPOINT", "DEFAULT_HOST", "DEFAULT_PORT", "normalize_base_url", "server_message"]


def normalize_base_url(url: str) -> str:
    """`host:port` or `http://host:port` → `http://host:port/v1` (see tui/endpoints.py)."""
    try:
        return _conventions.normalize_base_url(url)
    except _conventions.EndpointError as exc:
        raise OpenchatError(str(exc)) from None
