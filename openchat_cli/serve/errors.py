"""Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every failure leaves the server this way, whoever raised it: our own `APIError`s, pydantic's
validation errors (FastAPI's 422 becomes 400 and names the field as `param`), Starlette's 404 and
405, and crashes (500, logged with the traceback). The handlers count each status in /metrics.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from openchat_cli.serve.protocol import ErrorDetail, ErrorResponse, printable

log = logging.getLogger("openchat.serve")

#: The error statuses every route may answer, for the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (the `param` names the field)"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    408: {"model": ErrorResponse, "description": "The request body arrived too slowly"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    429: {"model": ErrorResponse, "description": "Too many wrong API keys from this client (see Retry-After)"},
}


class APIError(Exception):
    """An error the client gets back as it is: status, message, and the field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        # Messages may quote the request: lone surrogates in it must not break the reply.
        message, param = printable(message), printable(param) if param is not None else None
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def model(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code))

    def body(self) -> dict[str, Any]:
        return self.model().model_dump()

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class EngineFailed(Exception):
    """The engine reported an error for a sequence (a 500 or an error event in the stream)."""


def engine_error(exc: Exception) -> APIError:
    return APIError(500, f"generation failed: {exc}", type="server_error", code="engine_error")


def context_exceeded(context_length: int, floor: int, prompt_param: str) -> APIError:
    return APIError(
        400,
        f"This model's maximum context length is {context_length} tokens, but "
        f"there are at least {floor} tokens in the {prompt_param}. Please shorten "
        f"the {prompt_param}.",
        param=prompt_param,
        code="context_length_exceeded",
    )


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
    ctx = err.get("ctx") or {}
    if kind == "json_invalid":
        detail = ctx.get("error", "")
        return APIError(
            400, f"We could not parse the JSON body of your request: {detail}".rstrip(": "), code="invalid_json"
        )
    param = _param_from_loc(loc)
    msg = err.get("msg", "invalid value")
    if kind == "lone_surrogate":
        sub = ctx.get("field") or ""
        param = (f"{param}{'' if sub.startswith('[') else '.'}{sub}" if param else sub) or None
        return APIError(400, f"Invalid value for '{param}': {msg}", param=param, code="invalid_encoding")
    if param is None and ctx.get("field"):  # a rule between fields names the one at fault
        param = str(ctx["field"])
    if kind == "extra_forbidden":
        return APIError(
            400, f"Unrecognized request argument supplied: {param}", param=param, code="unrecognized_argument"
        )
    if kind == "missing":
        if param is None:
            return APIError(400, "The request body is missing: send a JSON object", code="missing_body")
        return APIError(400, f"Missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    if param is None:
        if kind in ("model_attributes_type", "dict_type", "model_type"):
            msg = "The request body must be a JSON object"
        return APIError(400, msg, code="invalid_request")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return APIError(400, f"Invalid type for '{param}': {msg}", param=param, code="invalid_type")
    if kind == "unsupported":
        return APIError(400, f"Unsupported value for '{param}': {msg}", param=param, code="unsupported_value")
    return APIError(400, f"Invalid value for '{param}': {msg}", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI, count: Any) -> None:
    """Every error as OpenAI's error object; `count(path, status)` records it in /metrics."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        count(request.url.path, exc.status)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(list(exc.errors()))
        count(request.url.path, err.status)
        return err.response()  # the guard logs it, with the body as it came

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        count(request.url.path, exc.status_code)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"Unknown path {request.url.path}: see /docs for the routes"
        return APIError(exc.status_code, message, code=code).response(headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        count(request.url.path, 500)
        return APIError(
            500, f"internal error: {type(exc).__name__}", type="server_error", code="internal_error"
        ).response()
