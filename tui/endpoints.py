"""Client-side conventions for OpenAI-compatible endpoints, shared by the TUI, `eval` and `chat`.

It lives in tui/ because the TUI is the lowest layer that calls endpoints (it may import only
store/ and the HTTP API); the commands reach it through openchat_cli/endpoints.py.

`openchat serve` listens on DEFAULT_ENDPOINT unless told otherwise; people type endpoints in
many shapes (`127.0.0.1:18888`, a URL without `/v1`, a full `/chat/completions` URL), and
servers put their error text in different places of the body.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse


class EndpointError(ValueError):
    """Text that cannot be an endpoint URL."""


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 18888
DEFAULT_ENDPOINT = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/v1"


def normalize_base_url(url: str) -> str:
    """`host:port` or `http://host:port` → `http://host:port/v1`; a URL with a path is kept,
    less a trailing `/chat/completions` or `/completions`."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parsed = urlparse(url)
    if not parsed.netloc:
        raise EndpointError(f"'{url}' is not an endpoint URL (expected e.g. {DEFAULT_ENDPOINT})")
    if parsed.path in ("", "/"):
        url += "/v1"
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


def server_message(exc: Any) -> str:
    """The `error.message` of an OpenAI-style error body (an `openai.APIStatusError`), else its text."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("detail"):
            return str(body["detail"])
    return getattr(exc, "message", None) or str(exc)
