"""The served OpenAPI schema and the /docs page.

The schema says what the server does: with API keys it declares the Bearer scheme on every
operation but /health. FastAPI's Swagger UI and ReDoc pages load their scripts from a CDN,
which a server on an offline machine (or one that must not reach out) cannot use, so /docs and
/redoc are a short self-contained page pointing at /openapi.json instead.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

SCHEME = "bearerAuth"


def id_range_pattern(top: int) -> str:
    """A regular expression for the decimal numbers 0..top, no leading zeros (logit_bias keys)."""
    digits = str(top)
    options = ["0"] if top >= 0 else []
    if len(digits) > 1:  # every number with fewer digits
        options.append("[1-9]" + (f"[0-9]{{0,{len(digits) - 2}}}" if len(digits) > 2 else ""))
    for i, d in enumerate(digits):  # same length: equal up to i, smaller at i, anything after
        low = 1 if i == 0 else 0
        if int(d) > low:
            rest = len(digits) - i - 1
            options.append(digits[:i] + f"[{low}-{int(d) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    if top > 0:
        options.append(digits)
    return "^(" + "|".join(dict.fromkeys(options)) + ")$"


def install_openapi(
    app: FastAPI, *, secured: bool, model_names: list[str], max_n: int, context_length: int, max_token_id: int
) -> None:
    """Replace `app.openapi` with one that states this server's limits (served names, n, the
    context, the vocabulary) and, when keys are required, the security scheme."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        # The request models, for the routes that parse their bodies off the event loop.
        from pydantic.json_schema import models_json_schema

        from openchat_cli.serve.protocol import ChatCompletionRequest, CompletionRequest

        _, defs = models_json_schema(
            [(ChatCompletionRequest, "validation"), (CompletionRequest, "validation")],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, definition in defs.get("$defs", {}).items():
            components.setdefault(name, definition)
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            props = components[name]["properties"]
            props["model"]["enum"] = model_names
            props["n"]["maximum"] = max_n
            for field in ("max_tokens", "max_completion_tokens"):
                if field in props:
                    props[field]["maximum"] = context_length
            bias = props["logit_bias"]
            for option in bias["anyOf"]:
                if option.get("type") == "object":
                    option["propertyNames"] = {"pattern": id_range_pattern(max_token_id)}
        prompt = components["CompletionRequest"]["properties"]["prompt"]
        for option in prompt["anyOf"]:
            if option.get("type") == "array":
                option["maxItems"] = max_n if option["items"].get("type") != "integer" else context_length
                inner = option["items"]
                if inner.get("type") == "integer":
                    inner["maximum"] = max_token_id
                elif inner.get("type") == "array":
                    inner["items"]["maximum"] = max_token_id
                    inner["maxItems"] = context_length
        if secured:
            schema.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
                "type": "http",
                "scheme": "bearer",
                "description": "One of the keys given to `openchat serve --api-keys`.",
            }
            for path, operations in schema.get("paths", {}).items():
                if path == "/health":
                    continue
                for operation in operations.values():
                    operation["security"] = [{SCHEME: []}]
                    operation.setdefault("responses", {}).setdefault(
                        "401",
                        {
                            "description": "Missing or wrong API key",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                        },
                    )
                    operation["responses"].setdefault(
                        "429",
                        {
                            "description": "Too many wrong API keys from this client (see Retry-After)",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
                        },
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


OFFLINE_DOCS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family: sans-serif; max-width: 46em; margin: 2em auto">
<h1>{title}</h1>
<p>The API is described by its OpenAPI schema at <a href="/openapi.json">/openapi.json</a>.</p>
<p>Interactive pages (Swagger UI, ReDoc) are not served: they load their scripts from a CDN,
and this server makes no request to other sites. Open the schema in any OpenAPI viewer or
editor, or run <code>schemathesis</code> or an OpenAPI client generator on it.</p>
</body></html>
"""


def install_docs(app: FastAPI) -> None:
    """/docs and /redoc: a page that works offline and loads nothing from elsewhere."""
    page = OFFLINE_DOCS.format(title=html.escape(f"{app.title} {app.version}"))

    async def docs() -> HTMLResponse:
        return HTMLResponse(page)

    for path in ("/docs", "/redoc"):
        app.add_api_route(path, docs, methods=["GET"], include_in_schema=False)
