"""The FastAPI application: a thin router over the serving classes (vLLM's entrypoint shape).

Outside in:
- middleware (middleware.py, guard.py): Host check, wrong-key lockout, Bearer auth, body size
  limit and read deadline, JSON content type for /v1 bodies, a request-log line for every
  completion request no route logged, CORS when asked;
- error handlers (errors.py): every error leaves as `{"error": {"message", "type", "param",
  "code"}}`, 400 for validation (FastAPI's 422 is overridden), 404 for unknown models and routes;
- one serving class per endpoint (serving_chat.py, serving_completions.py, serving_models.py)
  over the shared request flow (serving.py): prompts are built by the shared conversation
  template only, generation goes through an `Engine`, text through `ReplyStream`, responses and
  streamed chunks are the protocol's pydantic models (protocol.py);
- metrics (metrics.py) and the request log (request_log.py).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from openchat_cli import __version__
from openchat_cli.serve.engines.base import Engine
from openchat_cli.serve.errors import ERROR_RESPONSES, APIError, install_error_handlers, validation_error
from openchat_cli.serve.metrics import Metrics
from openchat_cli.serve.middleware import install_middleware
from openchat_cli.serve.openapi import install_docs, install_openapi
from openchat_cli.serve.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
)
from openchat_cli.serve.request_log import RequestLogger
from openchat_cli.serve.serving import ServingContext, parse_body, request_body_schema
from openchat_cli.serve.serving_chat import OpenAIServingChat
from openchat_cli.serve.serving_completions import OpenAIServingCompletion
from openchat_cli.serve.serving_models import OpenAIServingModels

__all__ = ["APIError", "RequestLogger", "ServerConfig", "create_app", "parse_body", "validation_error"]


# -- configuration ------------------------------------------------------------------------------
@dataclass
class ServerConfig:
    model_name: str
    template: Any  # openchat_cli.templates.ChatTemplate
    stop_token_ids: tuple[int, ...]
    aliases: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = ()
    max_n: int = 16
    max_body_bytes: int = 4 * 1024 * 1024
    max_queue: int = 4096
    default_max_tokens: int | None = None
    log_requests: Path | None = None
    catalog: Any = None  # store.catalog.Catalog when --log-to-catalog
    checkpoint_id: str | None = None
    model_path: str | None = None
    adapters: tuple[tuple[str, str], ...] = ()  # (model id, folder): LoRA adapters served unmerged
    allow_origins: tuple[str, ...] = ()  # CORS, for chat UIs that call the API from a browser
    allowed_hosts: tuple[str, ...] | None = None  # Host header names accepted (None: any)
    body_timeout_s: float = 60.0  # the whole body must arrive within this
    auth_failure_limit: int = 10  # wrong keys per client address within the window …
    auth_failure_window_s: float = 60.0  # … before it gets 429 until the oldest one expires
    ui: bool = False  # the browser chat page at / (serve/ui.py)
    tokenize_threads: int = field(default_factory=lambda: max(2, min(8, os.cpu_count() or 2)))
    created: int = field(default_factory=lambda: int(time.time()))


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    """The API for `engine` as `config` says; the engine starts and stops with the app."""
    metrics = Metrics(engine, config.model_name)
    logger = RequestLogger(config.log_requests, config.catalog, config.model_name, config.checkpoint_id)
    ctx = ServingContext(engine, config, metrics, logger)
    chat = OpenAIServingChat(ctx)
    completion = OpenAIServingCompletion(ctx)
    models = OpenAIServingModels(ctx)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.shutdown()
            ctx.close()
            logger.close()

    app = FastAPI(
        title="openchat serve",
        version=__version__,
        description=(
            "OpenAI-compatible API for a model trained or served with openchat. "
            f"Serving **{config.model_name}** with the `{config.template.name}` template."
        ),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: see openapi.py
        redoc_url=None,
    )
    install_openapi(
        app,
        secured=bool(config.api_keys),
        model_names=sorted(ctx.known_models),
        max_n=config.max_n,
        context_length=engine.context_length,
        max_token_id=engine.max_token_id(),
    )
    install_docs(app)
    app.state.config = config  # the UI middleware reads its allowed hosts
    install_middleware(app, config, metrics, logger)
    install_error_handlers(app, metrics.count)

    if config.ui:
        from openchat_cli.serve.ui import mount_ui

        mount_ui(app)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses={
            **ERROR_RESPONSES,
            200: {
                "description": "A chat completion, or with `stream: true` a "
                "text/event-stream of chat.completion.chunk events",
                "content": {"text/event-stream": {}},
            },
        },
        openapi_extra=request_body_schema(ChatCompletionRequest),
    )
    async def chat_completions(request: Request) -> Response:
        """Chat completion: the prompt is built with the model's conversation template."""
        return await chat.create(request)

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses={
            **ERROR_RESPONSES,
            200: {
                "description": "A text completion, or with `stream: true` a "
                "text/event-stream of text_completion events",
                "content": {"text/event-stream": {}},
            },
        },
        openapi_extra=request_body_schema(CompletionRequest),
    )
    async def completions(request: Request) -> Response:
        """Raw text completion: the prompt is used as given (no conversation template)."""
        return await completion.create(request)

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        """The served model."""
        return models.list()

    @app.get("/v1/models/{model:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
    async def model_info(model: str) -> ModelCard:
        return models.show(model)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and what is served (never needs an API key)."""
        stats = engine.stats()
        return {
            "status": "ok",
            "model": config.model_name,
            "template": config.template.name,
            "checkpoint_id": config.checkpoint_id,
            **engine.describe(),
            "waiting": stats.waiting,
            "running": stats.running,
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus text format: requests, tokens, latency, time to first token, queue depth."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return {
            "openchat": __version__,
            "model": config.model_name,
            "api": "/v1",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "health": "/health",
            "metrics": "/metrics",
        }

    return app
