"""The FastAPI application: OpenAI routes, errors in OpenAI's shape, auth, limits, metrics, logs.

Layers, outside in:
- `GuardMiddleware` (plain ASGI, guard.py): the Host check, the wrong-key lockout, Bearer auth,
  the body size limit (413) and read deadline (408), a JSON content type for /v1 bodies so
  `curl -d` works, and a request-log line for every completion request no route logged;
- exception handlers: every error leaves as `{"error": {"message", "type", "param", "code"}}`
  with 400 for validation (FastAPI's 422 is overridden), 404 for unknown models and routes;
- routes: prompts are built by the shared conversation template only; generation goes through
  an `Engine`; text goes through `ReplyStream` (whole characters, stop strings, separator).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from openchat_cli import __version__
from openchat_cli.serve.bounds import PromptBounds
from openchat_cli.serve.detokenize import ReplyStream
from openchat_cli.serve.guard import LOGGED, AuthFailures, GuardMiddleware, request_for_log
from openchat_cli.serve.engines.base import Engine, SamplingParams
from openchat_cli.serve.logprobs import LogprobsBuilder, TokenTexts, prompt_offsets
from openchat_cli.serve.openapi import install_docs, install_openapi
from openchat_cli.serve.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ModelCard,
    MAX_DEPTH,
    ModelList,
    nesting_depth,
    printable,
)
from store.catalog import CatalogError

log = logging.getLogger("openchat.serve")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (the `param` names the field)"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    408: {"model": ErrorResponse, "description": "The request body arrived too slowly"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    429: {"model": ErrorResponse, "description": "Too many wrong API keys from this client "
                                                 "(see Retry-After)"},
}


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
    allow_origins: tuple[str, ...] = ()  # CORS, for chat UIs that call the API from a browser
    allowed_hosts: tuple[str, ...] | None = None  # Host header names accepted (None: any)
    body_timeout_s: float = 60.0  # the whole body must arrive within this
    auth_failure_limit: int = 10  # wrong keys per client address within the window …
    auth_failure_window_s: float = 60.0  # … before it gets 429 until the oldest one expires
    ui: bool = False  # the browser chat page at / (serve/ui.py)
    tokenize_threads: int = field(default_factory=lambda: max(2, min(8, os.cpu_count() or 2)))
    created: int = field(default_factory=lambda: int(time.time()))


# -- errors -------------------------------------------------------------------------------------
class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        # Messages may quote the request: lone surrogates in it must not break the reply.
        message, param = printable(message), printable(param) if param is not None else None
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """('body', 'messages', 0, 'content') -> 'messages[0].content'."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or None


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """The first pydantic/FastAPI error, phrased like OpenAI's, naming the field."""
    if not errors:
        return APIError(400, "invalid request")
    err = errors[0]
    kind = err.get("type", "")
    loc = tuple(err.get("loc", ()))
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return APIError(400, f"We could not parse the JSON body of your request: {detail}".rstrip(": "),
                        code="invalid_json")
    param = _param_from_loc(loc)
    msg = err.get("msg", "invalid value")
    if kind == "lone_surrogate":
        sub = (err.get("ctx") or {}).get("field") or ""
        param = (f"{param}{'' if sub.startswith('[') else '.'}{sub}" if param else sub) or None
        return APIError(400, f"Invalid value for '{param}': {msg}", param=param,
                        code="invalid_encoding")
    if kind == "extra_forbidden":
        return APIError(400, f"Unrecognized request argument supplied: {param}", param=param,
                        code="unrecognized_argument")
    if kind == "missing":
        if param is None:
            return APIError(400, "The request body is missing: send a JSON object", code="missing_body")
        return APIError(400, f"Missing required parameter: '{param}'", param=param,
                        code="missing_required_parameter")
    if param is None:
        if kind in ("model_attributes_type", "dict_type", "model_type"):
            msg = "The request body must be a JSON object"
        return APIError(400, msg, code="invalid_request")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return APIError(400, f"Invalid type for '{param}': {msg}", param=param, code="invalid_type")
    if kind == "unsupported":
        return APIError(400, f"Unsupported value for '{param}': {msg}", param=param,
                        code="unsupported_value")
    return APIError(400, f"Invalid value for '{param}': {msg}", param=param, code="invalid_value")


# -- request logging (file and catalog), off the event loop ------------------------------------
class RequestLogger:
    """One JSON line per request in a file, and/or a `requests` row in the catalog."""

    def __init__(self, path: Path | None, catalog: Any, model: str, checkpoint_id: str | None):
        self.path, self.catalog, self.model, self.checkpoint_id = path, catalog, model, checkpoint_id
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="openchat-request-log", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.path is not None or self.catalog is not None

    def record(self, **entry: Any) -> None:
        if self.enabled:
            self._queue.put(entry)

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is None:
                return
            try:
                entry = self._prepare(entry)
            except Exception:  # a log write must never take the server down
                log.exception("could not log a request")
                continue
            if self.path is not None:
                self._retry("the request log file", self._write_file, entry)
            if self.catalog is not None:
                self._retry("the catalog", self._write_catalog, entry)

    @staticmethod
    def _retry(where: str, write: Callable[[dict[str, Any]], None], entry: dict[str, Any],
               attempts: int = 4) -> None:
        """A full disk or a locked catalog is often brief: try again before giving up (loudly)."""
        for attempt in range(attempts):
            try:
                write(entry)
                return
            except Exception as exc:
                if attempt < attempts - 1:
                    time.sleep(0.25 * 2 ** attempt)
                    continue
                what = (entry.get("endpoint"), entry.get("time"), entry.get("status"), where)
                if isinstance(exc, CatalogError):  # damaged or locked catalog.db: its one line
                    log.warning("could not log a request (%s %s, status %s) to %s: %s", *what, exc)
                else:
                    log.exception("could not log a request (%s %s, status %s) to %s", *what)

    def _prepare(self, entry: dict[str, Any]) -> dict[str, Any]:
        if isinstance(entry.get("request"), (bytes, bytearray)):
            entry["request"] = request_for_log(bytes(entry["request"]))
        return {"time": entry.pop("time"), "endpoint": entry.pop("endpoint"), "model": self.model,
                **({"checkpoint_id": self.checkpoint_id} if self.checkpoint_id else {}), **entry}

    def _write_file(self, entry: dict[str, Any]) -> None:
        # Lone surrogates (JSON allows "\ud800") are written as the JSON escape they came in
        # as: the line stays valid JSON and the entry is not dropped.
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        with open(self.path, "ab") as fh:  # type: ignore[arg-type]
            fh.write(line.encode("utf-8", "backslashreplace"))

    def _write_catalog(self, entry: dict[str, Any]) -> None:
        entry = _printable_values(entry)
        output = entry.get("output")
        if isinstance(output, list):
            output = output[0] if len(output) == 1 else json.dumps(output, ensure_ascii=False)
        if output is None and entry.get("error"):
            output = f"error: {entry['error']}"
        self.catalog.insert("requests", {
            "time": entry["time"], "endpoint": entry["endpoint"], "model": self.model,
            "checkpoint_id": self.checkpoint_id, "request": entry.get("request"),
            "output": output, "prompt_tokens": entry.get("prompt_tokens"),
            "completion_tokens": entry.get("completion_tokens"),
            "latency_s": entry.get("latency_s"), "status": entry.get("status"),
        })

    def close(self, timeout: float = 15.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None


def _printable_values(value: Any) -> Any:
    """`value` with every string UTF-8-encodable (SQLite refuses lone surrogates)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): _printable_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable_values(v) for v in value]
    return value


# -- metrics -------------------------------------------------------------------------------------
class Metrics:
    def __init__(self, engine: Engine, model: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("openchat_requests", "HTTP requests to the API, by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("openchat_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("openchat_generation_tokens", "Tokens generated", registry=r)
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.latency = Histogram("openchat_request_latency_seconds", "End-to-end request latency",
                                 ["endpoint"], buckets=buckets, registry=r)
        self.ttft = Histogram("openchat_time_to_first_token_seconds",
                              "Time from request to the first generated token", buckets=buckets,
                              registry=r)
        self.in_progress = Gauge("openchat_requests_in_progress", "Completion requests being served",
                                 registry=r)
        Gauge("openchat_queue_depth", "Sequences waiting to join the batch",
              registry=r).set_function(lambda: engine.stats().waiting)
        Gauge("openchat_running_sequences", "Sequences in the running batch",
              registry=r).set_function(lambda: engine.stats().running)
        info = Gauge("openchat_model_info", "The served model", ["model", "engine"], registry=r)
        info.labels(model=model, engine=engine.kind).set(1)

    ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                           "/metrics"})

    def count(self, endpoint: str, status: int) -> None:
        # Unknown paths share one label: a scanner must not grow the metric without bound.
        if endpoint not in self.ENDPOINTS:
            endpoint = "/v1/models/{model}" if endpoint.startswith("/v1/models/") else "other"
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


# -- generation helpers --------------------------------------------------------------------------
@dataclass
class EchoedPrompt:
    """What a choice needs to report its prompt's logprobs (completions with echo)."""

    ids: list[int]
    offsets: list[int] | None  # each token's start in `text` (None: from the token texts)
    text: str


@dataclass
class Choice:
    index: int
    reply: ReplyStream
    params: SamplingParams
    finish_reason: str | None = None
    logprobs: LogprobsBuilder | None = None  # when the request asked for logprobs
    echo: EchoedPrompt | None = None


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _choice_seed(seed: int | None, index: int) -> int | None:
    """Choice 0 uses the request's seed (n=1 and n>1 agree on it); others derive from it.
    Always in [0, 2**63) whatever the engine."""
    if seed is None:
        return None
    if index == 0:
        return seed % (2**63)
    return (seed * 1_000_003 + index * 7_919) % (2**63)


class EngineFailed(Exception):
    pass


def _apply(choice: Choice, event: Any) -> tuple[str, str | None]:
    """Feed an engine event to the choice's text stream: (text delta, finish reason or None);
    its logprobs go to the choice's builder."""
    if choice.logprobs is not None:
        if event.prompt_logprobs is not None and choice.echo is not None:
            echo = choice.echo
            choice.logprobs.add_prompt(echo.ids, event.prompt_logprobs, echo.offsets, len(echo.text))
        if event.logprobs:
            choice.logprobs.add_generated(event.logprobs)
    delta = choice.reply.push(event.token_ids)
    finish = None
    if choice.reply.stopped:
        finish = "stop"
    elif event.finish_reason == "error":
        raise EngineFailed(event.error or "generation failed")
    elif event.finish_reason:
        delta += choice.reply.close()
        finish = event.finish_reason
    if finish:
        choice.finish_reason = finish
    return delta, finish


async def _choice_events(engine: Engine, prompt_ids: list[int], choice: Choice,
                         request_id: str) -> AsyncIterator[tuple[int, str, str | None]]:
    """One choice's (index, delta, finish) items; leaving early aborts it in the engine."""
    agen = engine.generate(prompt_ids, choice.params, f"{request_id}-{choice.index}")
    try:
        async for event in agen:
            delta, finish = _apply(choice, event)
            if delta or finish or (choice.logprobs is not None and choice.logprobs.pending):
                yield choice.index, delta, finish
            if finish:
                break
    finally:
        await agen.aclose()


async def generate_choices(engine: Engine, prompt_ids: list[int],
                           choices: list[Choice], request_id: str
                           ) -> AsyncIterator[tuple[int, str, str | None]]:
    """(choice index, text delta, finish reason) as they come, for one or many choices."""
    if len(choices) == 1:  # the common case, without tasks and a queue
        items = _choice_events(engine, prompt_ids, choices[0], request_id)
        try:
            async for item in items:
                yield item
        finally:
            await items.aclose()
        return

    streams = [_choice_events(engine, prompt_ids, choice, request_id) for choice in choices]
    async for item in merge_streams(streams, finishes=len(choices)):
        yield item


async def merge_streams(streams: list[AsyncIterator[tuple[int, str, str | None]]], finishes: int
                        ) -> AsyncIterator[tuple[int, str, str | None]]:
    """Interleave choice-event streams as items arrive, until `finishes` finish reasons were
    seen; an engine failure in any stream is raised here, and the rest are cancelled."""
    out: asyncio.Queue = asyncio.Queue()

    async def pump(stream: AsyncIterator[tuple[int, str, str | None]]) -> None:
        try:
            async for item in stream:
                out.put_nowait(item)
        except EngineFailed as exc:
            out.put_nowait(exc)

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    remaining = finishes
    try:
        while remaining:
            item = await out.get()
            if isinstance(item, Exception):
                raise item
            if item[2] is not None:
                remaining -= 1
            yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# -- the app -------------------------------------------------------------------------------------
class _PromptTokenizer:
    """The tokenizer with its vocabulary cached: the template checks the control tokens on
    every encode, and `get_vocab()` rebuilds a dict of the whole vocabulary each call."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._vocab = tokenizer.get_vocab()

    def get_vocab(self) -> dict[str, int]:
        return self._vocab

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def create_app(engine: Engine, config: ServerConfig) -> FastAPI:
    from openchat_cli.templates import Conversation

    tokenizer = engine.tokenizer
    prompt_tokenizer = _PromptTokenizer(tokenizer)
    token_texts = TokenTexts(tokenizer)
    template = config.template
    metrics = Metrics(engine, config.model_name)
    logger = RequestLogger(config.log_requests, config.catalog, config.model_name,
                           config.checkpoint_id)
    known_models = {config.model_name, *config.aliases}
    prompt_bounds = PromptBounds.of(template, prompt_tokenizer.get_vocab())
    # Tokenizing is CPU work: on the event loop a big prompt would stall every other client.
    tokenize_pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=config.tokenize_threads, thread_name_prefix="openchat-tokenize")

    async def off_loop(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(tokenize_pool, fn, *args)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.shutdown()
            tokenize_pool.shutdown(wait=False, cancel_futures=True)
            logger.close()

    app = FastAPI(
        title="openchat serve",
        version=__version__,
        description=("OpenAI-compatible API for a model trained or served with openchat. "
                     f"Serving **{config.model_name}** with the `{template.name}` template."),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: see openapi.py
        redoc_url=None,
    )
    install_openapi(app, secured=bool(config.api_keys), model_names=sorted(known_models),
                    max_n=config.max_n, context_length=engine.context_length,
                    max_token_id=engine.max_token_id())
    install_docs(app)
    app.state.engine = engine
    app.state.config = config
    app.state.metrics = metrics
    app.state.request_logger = logger

    def audit(scope: dict, status: int, error: str | None, body: bytes | None) -> None:
        logger.record(time=_now(), endpoint=scope.get("path", ""), request=body, status=status,
                      error=error, client=(scope.get("client") or (None,))[0])

    app.add_middleware(GuardMiddleware, api_keys=tuple(config.api_keys),
                       max_body_bytes=config.max_body_bytes, body_timeout_s=config.body_timeout_s,
                       allowed_hosts=config.allowed_hosts,
                       auth_failures=AuthFailures(config.auth_failure_limit,
                                                  config.auth_failure_window_s),
                       on_reject=metrics.count, audit=audit)
    if config.allow_origins:
        # Outermost, so browsers' preflight requests (which carry no API key) are answered here.
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.allow_origins),
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["authorization", "content-type"])
    if config.ui:
        from openchat_cli.serve.ui import mount_ui

        mount_ui(app)

    # -- error handlers ------------------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        metrics.count(request.url.path, exc.status)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(list(exc.errors()))
        metrics.count(request.url.path, err.status)
        return err.response()  # the guard logs it, with the body as it came

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        metrics.count(request.url.path, exc.status_code)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"Unknown path {request.url.path}: see /docs for the routes"
        return APIError(exc.status_code, message, code=code).response(
            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        metrics.count(request.url.path, 500)
        return APIError(500, f"internal error: {type(exc).__name__}", type="server_error",
                        code="internal_error").response()

    # -- shared pieces -------------------------------------------------------------------------
    def check_model(name: str) -> None:
        if name not in known_models:
            raise APIError(404, f"The model '{name}' does not exist: this server serves "
                                f"'{config.model_name}'", param="model", code="model_not_found")

    def check_load(n: int) -> None:
        if n > config.max_n:
            raise APIError(400, f"Invalid value for 'n': at most {config.max_n} choices per request",
                           param="n", code="invalid_value")
        if engine.stats().waiting >= config.max_queue:
            raise APIError(503, "The server is overloaded: too many requests are waiting; retry "
                                "later", type="server_error", code="overloaded")

    def context_exceeded(floor: int, prompt_param: str) -> APIError:
        return APIError(400, f"This model's maximum context length is {engine.context_length} "
                             f"tokens, but there are at least {floor} tokens in the {prompt_param}. "
                             f"Please shorten the {prompt_param}.", param=prompt_param,
                        code="context_length_exceeded")

    def precheck(data: Any) -> None:
        """Counts that can only fail, checked on the parsed JSON before pydantic sees it."""
        if not isinstance(data, dict):
            return
        ctx = engine.context_length
        messages = data.get("messages")
        if (isinstance(messages, list) and prompt_bounds.tokens_per_message
                and len(messages) * prompt_bounds.tokens_per_message > ctx):
            raise APIError(400, f"This model's maximum context length is {ctx} tokens, but the "
                                f"request holds {len(messages)} messages, and each takes at least "
                                f"{prompt_bounds.tokens_per_message} token(s). Please shorten the "
                                f"messages.", param="messages", code="context_length_exceeded")
        prompt = data.get("prompt")
        if isinstance(prompt, list) and prompt:
            if isinstance(prompt[0], (str, list)) and len(prompt) > config.max_n:
                raise APIError(400, f"Invalid value for 'prompt': at most {config.max_n} prompts "
                                    f"per request", param="prompt", code="invalid_value")
            if isinstance(prompt[0], int) and len(prompt) > ctx:
                raise context_exceeded(len(prompt), "prompt")

    def budget(body: ChatCompletionRequest | CompletionRequest, prompt_len: int, prompt_param: str) -> int:
        ctx = engine.context_length
        requested, fieldname = body.requested_max_tokens()
        if prompt_len > ctx or (prompt_len == ctx and requested != 0):
            raise APIError(400, f"This model's maximum context length is {ctx} tokens, but the "
                                f"prompt has {prompt_len} tokens (no room to generate). Please "
                                f"shorten the {prompt_param}.", param=prompt_param,
                           code="context_length_exceeded")
        if requested is None:
            room = ctx - prompt_len
            return min(room, config.default_max_tokens) if config.default_max_tokens else room
        if prompt_len + requested > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you "
                                f"requested {prompt_len + requested} tokens ({prompt_len} in the "
                                f"{prompt_param}, {requested} in the completion). Please reduce "
                                f"{fieldname} or the {prompt_param}.", param=fieldname,
                           code="context_length_exceeded")
        return requested

    def sampling(body: ChatCompletionRequest | CompletionRequest, max_tokens: int, index: int) -> SamplingParams:
        temperature = 1.0 if body.temperature is None else float(body.temperature)
        top_p = 1.0 if body.top_p is None else float(body.top_p)
        top_k = body.top_k if body.top_k and body.top_k > 0 else 0
        if top_p <= 0.0:
            top_k = 1
        completion = isinstance(body, CompletionRequest)  # chat `logprobs` stays refused
        return SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=max(top_p, 1e-6), top_k=top_k,
            seed=_choice_seed(body.seed, index),
            presence_penalty=float(body.presence_penalty or 0.0),
            frequency_penalty=float(body.frequency_penalty or 0.0),
            stop_token_ids=config.stop_token_ids, ignore_eos=body.ignore_eos,
            logprobs=body.logprobs if completion else None,
            prompt_logprobs=body.logprobs if completion and body.echo else None)

    def check_stream_options(body: ChatCompletionRequest | CompletionRequest) -> None:
        if body.stream_options is not None and not body.stream:
            raise APIError(400, "Invalid value for 'stream_options': only allowed when 'stream' is "
                                "true", param="stream_options", code="invalid_value")

    async def serve(request: Request, *, endpoint: str, body: ChatCompletionRequest | CompletionRequest,
                    prompts: list[list[int]], make_reply: Callable[[], ReplyStream],
                    response_id: str, chat: bool, echoed: list[EchoedPrompt] | None = None) -> Response:
        started = time.perf_counter()
        n = body.n
        max_tokens = [budget(body, len(p), "messages" if chat else "prompt") for p in prompts]
        want_logprobs = isinstance(body, CompletionRequest) and body.logprobs is not None

        def make_choice(pi: int, i: int) -> Choice:
            choice = Choice(pi * n + i, make_reply(), sampling(body, max_tokens[pi], i),
                            echo=echoed[pi] if echoed else None)
            if want_logprobs:
                choice.logprobs = LogprobsBuilder(token_texts)
                choice.logprobs.start_generation_at(len(echoed[pi].text) if echoed else 0)
            return choice

        runs = [[make_choice(pi, i) for i in range(n)] for pi in range(len(prompts))]
        all_choices = [c for group in runs for c in group]
        echo = [e.text for e in echoed] if echoed else None
        prompt_tokens = sum(len(p) for p in prompts)
        created = int(time.time())
        request_dump = body.model_dump(exclude_none=True)
        metrics.prompt_tokens.inc(prompt_tokens)

        def usage() -> dict[str, int]:
            completion = sum(c.reply.num_tokens for c in all_choices)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                    "total_tokens": prompt_tokens + completion}

        def finish_log(status: int, error: str | None = None) -> None:
            latency = time.perf_counter() - started
            u = usage()
            metrics.generation_tokens.inc(u["completion_tokens"])
            metrics.latency.labels(endpoint=endpoint).observe(latency)
            metrics.count(endpoint, status)
            entry = dict(time=_now(), endpoint=endpoint, id=response_id, request=request_dump,
                         output=[(echo[c.index // n] if echo else "") + c.reply.text
                                 for c in all_choices],
                         finish_reasons=[c.finish_reason for c in all_choices],
                         prompt_tokens=u["prompt_tokens"], completion_tokens=u["completion_tokens"],
                         latency_s=round(latency, 4), status=status)
            if error:
                entry["error"] = error
            entry["client"] = request.client.host if request.client else None
            logger.record(**entry)
            request.scope[LOGGED] = True

        async def events() -> AsyncIterator[tuple[int, str, str | None]]:
            """Every choice of every prompt, merged."""
            if len(runs) == 1:
                async for item in generate_choices(engine, prompts[0], runs[0], response_id):
                    yield item
                return
            streams = [generate_choices(engine, prompts[pi], runs[pi], f"{response_id}-p{pi}")
                       for pi in range(len(runs))]
            async for item in merge_streams(streams, finishes=len(all_choices)):
                yield item

        fingerprint = f"openchat-{__version__}-{engine.kind}"

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            obj = "chat.completion.chunk" if chat else "text_completion"

            def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
                data = {"id": response_id, "object": obj, "created": created,
                        "model": config.model_name, "system_fingerprint": fingerprint,
                        "choices": choices}
                if include_usage:
                    data["usage"] = None
                data.update(extra)
                return _sse(data)

            def piece(index: int, text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
                if chat:
                    delta: dict[str, Any] = {}
                    if role:
                        delta["role"] = "assistant"
                    if text is not None:
                        delta["content"] = text
                    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
                return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}

            def scored(index: int, text: str, logprobs: dict[str, Any]) -> str:
                return chunk([{"index": index, "text": text, "logprobs": logprobs,
                               "finish_reason": None}])

            # Content events are most of the traffic: pre-render everything around the text.
            head = json.dumps({"id": response_id, "object": obj, "created": created,
                               "model": config.model_name, "system_fingerprint": fingerprint},
                              ensure_ascii=False, separators=(",", ":"))[:-1]
            tail = ',"usage":null}\n\n' if include_usage else "}\n\n"
            field_open = '"delta":{"content":' if chat else '"text":'
            field_close = "}" if chat else ""

            def content(index: int, text: str) -> str:
                return (f'data: {head},"choices":[{{"index":{index},{field_open}'
                        f'{json.dumps(text, ensure_ascii=False)}{field_close},"logprobs":null,'
                        f'"finish_reason":null}}]{tail}')

            async def stream() -> AsyncIterator[str]:
                status, error = 200, None
                first = True
                metrics.in_progress.inc()
                try:
                    for c in all_choices:
                        if chat:
                            yield chunk([piece(c.index, "", None, role=True)])
                        elif echo and echo[c.index // n] and not want_logprobs:
                            yield chunk([piece(c.index, echo[c.index // n], None)])
                    echo_pending = {c.index for c in all_choices} if echo and want_logprobs else set()
                    async for index, delta, finish in events():
                        if first:
                            metrics.ttft.observe(time.perf_counter() - started)
                            first = False
                        if want_logprobs:
                            # The echoed prompt goes out with its logprobs, known after prefill.
                            if index in echo_pending:
                                delta = echo[index // n] + delta
                                echo_pending.discard(index)
                            builder = all_choices[index].logprobs
                            if delta or builder.pending:
                                yield scored(index, delta, builder.take())
                        elif delta:
                            yield content(index, delta)
                        if finish:
                            yield chunk([piece(index, None, finish)])
                    if include_usage:
                        yield chunk([], usage=usage())
                    yield "data: [DONE]\n\n"
                except EngineFailed as exc:
                    status, error = 500, str(exc)
                    yield _sse(APIError(500, f"generation failed: {exc}", type="server_error",
                                        code="engine_error").body())
                    yield "data: [DONE]\n\n"
                except (asyncio.CancelledError, GeneratorExit):
                    status, error = 499, "client disconnected"
                    raise
                finally:
                    metrics.in_progress.dec()
                    finish_log(status, error)

            return StreamingResponse(stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def collect() -> None:
            first = True
            async for _index, _delta, _finish in events():
                if first:
                    metrics.ttft.observe(time.perf_counter() - started)
                    first = False

        metrics.in_progress.inc()
        gen_task = asyncio.create_task(collect())
        watch = asyncio.create_task(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait({gen_task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if gen_task not in done:  # the client left: free the batch slots now
                gen_task.cancel()
                await asyncio.gather(gen_task, return_exceptions=True)
                finish_log(499, "client disconnected")
                return Response(status_code=499)
            watch.cancel()
            try:
                gen_task.result()
            except EngineFailed as exc:
                finish_log(500, str(exc))
                return APIError(500, f"generation failed: {exc}", type="server_error",
                                code="engine_error").response()
        finally:
            metrics.in_progress.dec()
            for t in (gen_task, watch):
                if not t.done():
                    t.cancel()
        finish_log(200)
        if chat:
            return JSONResponse(ChatCompletionResponse(
                id=response_id, created=created, model=config.model_name,
                system_fingerprint=fingerprint,
                choices=[{"index": c.index, "message": {"role": "assistant", "content": c.reply.text},
                          "finish_reason": c.finish_reason} for c in all_choices],
                usage=usage()).model_dump())
        return JSONResponse(CompletionResponse(
            id=response_id, created=created, model=config.model_name, system_fingerprint=fingerprint,
            choices=[{"index": c.index, "text": (echo[c.index // n] if echo else "") + c.reply.text,
                      "finish_reason": c.finish_reason,
                      "logprobs": c.logprobs.result() if c.logprobs is not None else None}
                     for c in all_choices],
            usage=usage()).model_dump())

    # -- routes --------------------------------------------------------------------------------
    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={
        **ERROR_RESPONSES, 200: {"description": "A chat completion, or with `stream: true` a "
                                                "text/event-stream of chat.completion.chunk events",
                                 "content": {"text/event-stream": {}}}},
              openapi_extra=request_body_schema(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        """Chat completion: the prompt is built with the model's conversation template."""
        body = await off_loop(parse_body, ChatCompletionRequest, await request.body(), precheck)
        check_model(body.model)
        check_stream_options(body)
        check_load(body.n)

        def encode() -> list[int]:
            messages = [m.to_template_dict() for m in body.messages]
            floor = prompt_bounds.chat_floor(messages, body.condition)
            if floor > engine.context_length:
                raise context_exceeded(floor, "messages")
            conv = Conversation.from_dict({"messages": messages, "condition": body.condition})
            return template.encode_prompt(prompt_tokenizer, conv)

        prompt_ids = await off_loop(encode)
        stops = body.stop_strings() + [s for s in template.stop_strings if s not in body.stop_strings()]

        def make_reply() -> ReplyStream:
            return ReplyStream(tokenizer, stop=stops, clean=template.clean_reply,
                               strip_prefix=template.sep, skip_token_ids=config.stop_token_ids)

        return await serve(request, endpoint="/v1/chat/completions", body=body,
                           prompts=[prompt_ids], make_reply=make_reply,
                           response_id=f"chatcmpl-{secrets.token_hex(12)}", chat=True)

    @app.post("/v1/completions", response_model=CompletionResponse, responses={
        **ERROR_RESPONSES, 200: {"description": "A text completion, or with `stream: true` a "
                                                "text/event-stream of text_completion events",
                                 "content": {"text/event-stream": {}}}},
              openapi_extra=request_body_schema(CompletionRequest))
    async def completions(request: Request) -> Response:
        """Raw text completion: the prompt is used as given (no conversation template)."""
        body = await off_loop(parse_body, CompletionRequest, await request.body(), precheck)
        check_model(body.model)
        check_stream_options(body)
        if body.max_tokens == 0 and not body.echo:
            raise APIError(400, "Invalid value for 'max_tokens': 0 is only allowed with echo "
                                "(scoring the prompt)", param="max_tokens", code="invalid_value")
        given = body.prompts()  # at most max_n of them (precheck), each with n choices
        check_load(body.n)
        for p in given:
            floor = prompt_bounds.text_floor(p) if isinstance(p, str) else len(p)
            if floor > engine.context_length:
                raise context_exceeded(floor, "prompt")
        want_offsets = body.echo and body.logprobs is not None
        top = engine.max_token_id()

        def encode(p: str | list[int]) -> tuple[list[int], list[int] | None, str]:
            if isinstance(p, str):
                if want_offsets:
                    ids, starts = prompt_offsets(tokenizer, p, body.add_special_tokens)
                    return ids, starts, p
                return (tokenizer.encode(p, add_special_tokens=body.add_special_tokens)
                        if p else []), None, p
            bad = [t for t in p if t > top]
            if bad:
                raise APIError(400, f"Invalid value for 'prompt': token id {bad[0]} is outside "
                                    f"the vocabulary (ids 0-{top})", param="prompt",
                               code="invalid_value")
            return list(p), None, tokenizer.decode(p)

        prompts: list[list[int]] = []
        texts: list[str] = []
        offsets: list[list[int] | None] = []
        for p in given:
            ids, starts, text = await off_loop(encode, p)
            texts.append(text)
            offsets.append(starts)
            if not ids:
                if tokenizer.bos_token_id is None:
                    raise APIError(400, "Invalid value for 'prompt': the prompt is empty",
                                   param="prompt", code="invalid_value")
                ids = [tokenizer.bos_token_id]
                offsets[-1] = [0]
            prompts.append(ids)
        stops = body.stop_strings()

        def make_reply() -> ReplyStream:
            return ReplyStream(tokenizer, stop=stops, skip_token_ids=config.stop_token_ids)

        return await serve(request, endpoint="/v1/completions", body=body, prompts=prompts,
                           make_reply=make_reply, response_id=f"cmpl-{secrets.token_hex(12)}",
                           chat=False,
                           echoed=[EchoedPrompt(ids, starts, text) for ids, starts, text
                                   in zip(prompts, offsets, texts)] if body.echo else None)

    def card(name: str) -> ModelCard:
        return ModelCard(id=name, created=config.created, root=config.model_path,
                         max_model_len=engine.context_length)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        """The served model."""
        return ModelList(data=[card(config.model_name)])

    @app.get("/v1/models/{model:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
    async def model_info(model: str) -> ModelCard:
        check_model(model)
        return card(config.model_name)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness and what is served (never needs an API key)."""
        stats = engine.stats()
        return {"status": "ok", "model": config.model_name, "template": template.name,
                "checkpoint_id": config.checkpoint_id, **engine.describe(),
                "waiting": stats.waiting, "running": stats.running}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        """Prometheus text format: requests, tokens, latency, time to first token, queue depth."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return {"openchat": __version__, "model": config.model_name, "api": "/v1",
                "docs": "/docs", "openapi": "/openapi.json", "health": "/health", "metrics": "/metrics"}

    return app


def parse_body(model: type[Any], raw: bytes, precheck: Callable[[Any], None] | None = None) -> Any:
    """The request body validated as `model`, the way FastAPI would, but callable off the event
    loop: 100,000 messages take a second of CPU to parse and check."""
    from pydantic import ValidationError

    if not raw.strip():
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required",
                                       "input": None}])
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.start),
                                       "msg": "JSON decode error",
                                       "ctx": {"error": "the body is not UTF-8 text"}}]) from None
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos),
                                       "msg": "JSON decode error", "ctx": {"error": exc.msg}}]) from None
    except RecursionError:  # the parser's own limit: far deeper than ours
        data = too_deep = True
    else:
        too_deep = nesting_depth(data, MAX_DEPTH) > MAX_DEPTH
    if too_deep:
        raise APIError(400, f"The JSON body nests arrays and objects more than {MAX_DEPTH} deep",
                       code="invalid_json")
    if precheck is not None:
        precheck(data)  # pydantic holds the GIL for a whole list: refuse huge ones first
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def request_body_schema(model: type[Any]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses its body itself (see `parse_body`)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


