"""The middleware stack in front of the routes: the guard (Host check, key lockout, Bearer
auth, body limits, the request-log line of every refused request; guard.py) and, when browser
chat UIs are allowed, CORS outermost so preflight requests (which carry no key) are answered."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from openchat_cli.serve.guard import AuthFailures, GuardMiddleware
from openchat_cli.serve.metrics import Metrics
from openchat_cli.serve.request_log import RequestLogger, now


def install_middleware(app: FastAPI, config: Any, metrics: Metrics, logger: RequestLogger) -> None:
    """Add the guard and CORS to `app` as `config` (a ServerConfig) asks."""

    def audit(scope: dict, status: int, error: str | None, body: bytes | None) -> None:
        logger.record(
            time=now(),
            endpoint=scope.get("path", ""),
            request=body,
            status=status,
            error=error,
            client=(scope.get("client") or (None,))[0],
        )

    app.add_middleware(
        GuardMiddleware,
        api_keys=tuple(config.api_keys),
        max_body_bytes=config.max_body_bytes,
        body_timeout_s=config.body_timeout_s,
        allowed_hosts=config.allowed_hosts,
        auth_failures=AuthFailures(config.auth_failure_limit, config.auth_failure_window_s),
        on_reject=metrics.count,
        audit=audit,
    )
    if config.allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.allow_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type"],
        )
