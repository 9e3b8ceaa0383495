"""The browser chat page at `/` (`openchat serve --ui`), as llama.cpp's server has one.

The page is static files shipped in the package (ui_static/: our HTML, CSS and JS, plus marked,
DOMPurify and highlight.js vendored from npm), so it works offline. It calls this server's own
OpenAI API like any client; chats stay in the browser's localStorage.

It is served by an ASGI layer outside the API guard because a browser cannot send a Bearer key
when it navigates to a page: the files hold no secrets, and the page asks for the key itself
before it calls /v1. The guard's Host check still applies (a request for a name the server does
not answer to is passed on to the guard, which refuses it). `/` gives the page only to clients
that accept HTML; others (curl, scripts) still get the JSON description from the API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from openchat_cli.serve.guard import host_name

Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

PREFIX = "/ui/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/markdown; charset=utf-8",
}
# Scripts only from this server: Markdown from the model cannot run code even past DOMPurify.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        (
            b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
        ),
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),
]


def ui_files() -> dict[str, tuple[bytes, str]]:
    """URL path → (bytes, content type) for every file of the page, read once at start-up."""
    root = resources.files("openchat_cli.serve") / "ui_static"
    files: dict[str, tuple[bytes, str]] = {}

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif not entry.name.startswith("."):
                suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
                files[prefix + entry.name] = (
                    entry.read_bytes(),
                    CONTENT_TYPES.get(suffix, "text/plain; charset=utf-8"),
                )

    walk(root, PREFIX)
    files["/"] = files.pop(PREFIX + "index.html")
    return files


class UIMiddleware:
    """Answers GET/HEAD for the page's files; passes everything else to the wrapped app."""

    def __init__(self, app: Any, *, allowed_hosts: tuple[str, ...] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts
        self.files = ui_files()

    def _wants(self, scope: dict) -> tuple[bytes, str] | None:
        if scope.get("type") != "http" or scope.get("method") not in ("GET", "HEAD"):
            return None
        path = scope.get("path", "")
        found = self.files.get(path)
        if found is None:
            return None
        headers = dict(scope.get("headers") or [])
        if self.allowed_hosts is not None and host_name(headers.get(b"host", b"")) not in self.allowed_hosts:
            return None  # the guard answers (and refuses) it
        if path == "/" and b"text/html" not in headers.get(b"accept", b""):
            return None  # API clients keep the JSON description
        return found

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        found = self._wants(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        body, content_type = found
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def mount_ui(app: Any) -> None:
    """Serve the chat page from `app` (call after the guard is added, so this layer is outside it)."""
    app.add_middleware(UIMiddleware, allowed_hosts=app.state.config.allowed_hosts)
