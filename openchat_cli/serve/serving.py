"""What every completion endpoint shares (vLLM's `serving_engine.py`): parsing a body off the
event loop, model and load checks, the token budget, sampling settings, and running a request's
choices through the engine, streamed (server-sent events) or whole.

An endpoint's serving class (serving_chat.py, serving_completions.py) builds the prompts, then
hands a `Generation` to `OpenAIServing.respond`; one streaming path serves both, and each renders
its own API shape through the hooks `chunk_choice`, `stream_start` and `full_response`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from openchat_cli import __version__
from openchat_cli.serve.bounds import PromptBounds
from openchat_cli.serve.detokenize import ReplyStream
from openchat_cli.serve.engines.base import Engine, SamplingParams, TokenEvent
from openchat_cli.serve.errors import APIError, EngineFailed, context_exceeded, engine_error
from openchat_cli.serve.guard import LOGGED
from openchat_cli.serve.logprobs import TokenTexts
from openchat_cli.serve.metrics import Metrics
from openchat_cli.serve.protocol import (
    MAX_DEPTH,
    ChatCompletionRequest,
    CompletionRequest,
    Usage,
    nesting_depth,
)
from openchat_cli.serve.request_log import RequestLogger, now

AnyRequest = ChatCompletionRequest | CompletionRequest
#: (choice index, text delta, finish reason or None): what generation yields per engine event
Item = tuple[int, str, str | None]


class PromptTokenizer:
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


class ServingContext:
    """The served model and the server's shared parts, handed to every serving class."""

    def __init__(self, engine: Engine, config: Any, metrics: Metrics, logger: RequestLogger):
        self.engine, self.config, self.metrics, self.logger = engine, config, metrics, logger
        self.tokenizer = engine.tokenizer
        self.prompt_tokenizer = PromptTokenizer(engine.tokenizer)
        self.token_texts = TokenTexts(engine.tokenizer)
        self.template = config.template
        self.adapters = dict(config.adapters)  # LoRA adapter model ids → their folders
        self.known_models = {config.model_name, *config.aliases, *self.adapters}
        self.prompt_bounds = PromptBounds.of(self.template, self.prompt_tokenizer.get_vocab())
        self.fingerprint = f"openchat-{__version__}-{engine.kind}"
        # Tokenizing is CPU work: on the event loop a big prompt would stall every other client.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.tokenize_threads, thread_name_prefix="openchat-tokenize"
        )

    async def off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def check_model(self, name: str) -> None:
        if name not in self.known_models:
            served = ", ".join(f"'{m}'" for m in [self.config.model_name, *self.adapters])
            raise APIError(
                404,
                f"The model '{name}' does not exist: this server serves {served}",
                param="model",
                code="model_not_found",
            )

    def adapter_for(self, name: str) -> str | None:
        """The LoRA adapter a request's `model` names (None: the base model)."""
        return name if name in self.adapters else None

    def response_model(self, name: str) -> str:
        """The `model` a response reports: the adapter asked for, else the served name."""
        return name if name in self.adapters else self.config.model_name

    def check_load(self, n: int) -> None:
        if n > self.config.max_n:
            raise APIError(
                400,
                f"Invalid value for 'n': at most {self.config.max_n} choices per request",
                param="n",
                code="invalid_value",
            )
        if self.engine.stats().waiting >= self.config.max_queue:
            raise APIError(
                503,
                "The server is overloaded: too many requests are waiting; retry later",
                type="server_error",
                code="overloaded",
            )

    def context_exceeded(self, floor: int, prompt_param: str) -> APIError:
        return context_exceeded(self.engine.context_length, floor, prompt_param)

    def precheck(self, data: Any) -> None:
        """Counts that can only fail, checked on the parsed JSON before pydantic sees it."""
        if not isinstance(data, dict):
            return
        ctx = self.engine.context_length
        per_message = self.prompt_bounds.tokens_per_message
        messages = data.get("messages")
        if isinstance(messages, list) and per_message and len(messages) * per_message > ctx:
            raise APIError(
                400,
                f"This model's maximum context length is {ctx} tokens, but the "
                f"request holds {len(messages)} messages, and each takes at least "
                f"{per_message} token(s). Please shorten the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        prompt = data.get("prompt")
        if isinstance(prompt, list) and prompt:
            if isinstance(prompt[0], (str, list)) and len(prompt) > self.config.max_n:
                raise APIError(
                    400,
                    f"Invalid value for 'prompt': at most {self.config.max_n} prompts per request",
                    param="prompt",
                    code="invalid_value",
                )
            if isinstance(prompt[0], int) and len(prompt) > ctx:
                raise self.context_exceeded(len(prompt), "prompt")

    async def parse(self, model: type[AnyRequest], request: Request) -> Any:
        """The request's body validated as `model`, off the event loop; model and stream
        options checked."""
        body = await self.off_loop(parse_body, model, await request.body(), self.precheck)
        self.check_model(body.model)
        if body.stream_options is not None and not body.stream:
            raise APIError(
                400,
                "Invalid value for 'stream_options': only allowed when 'stream' is true",
                param="stream_options",
                code="invalid_value",
            )
        return body


def parse_body(model: type[Any], raw: bytes, precheck: Callable[[Any], None] | None = None) -> Any:
    """The request body validated as `model`, the way FastAPI would, but callable off the event
    loop: 100,000 messages take a second of CPU to parse and check."""
    from pydantic import ValidationError

    if not raw.strip():
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.start),
                    "msg": "JSON decode error",
                    "ctx": {"error": "the body is not UTF-8 text"},
                }
            ]
        ) from None
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "ctx": {"error": exc.msg}}]
        ) from None
    except RecursionError:  # the parser's own limit: far deeper than ours
        data = too_deep = True
    else:
        too_deep = nesting_depth(data, MAX_DEPTH) > MAX_DEPTH
    if too_deep:
        raise APIError(400, f"The JSON body nests arrays and objects more than {MAX_DEPTH} deep", code="invalid_json")
    if precheck is not None:
        precheck(data)  # pydantic holds the GIL for a whole list: refuse huge ones first
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def request_body_schema(model: type[Any]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses its body itself (see `parse_body`)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


# -- choices and their events ---------------------------------------------------------------------
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
    logprobs: Any = None  # a logprobs builder (logprobs.py) when the request asked for them
    echo: EchoedPrompt | None = None


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice 0 uses the request's seed (n=1 and n>1 agree on it); others derive from it.
    Always in [0, 2**63) whatever the engine."""
    if seed is None:
        return None
    if index == 0:
        return seed % (2**63)
    return (seed * 1_000_003 + index * 7_919) % (2**63)


def apply_event(choice: Choice, event: TokenEvent) -> tuple[str, str | None]:
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


async def choice_events(engine: Engine, prompt_ids: list[int], choice: Choice, request_id: str) -> AsyncIterator[Item]:
    """One choice's (index, delta, finish) items; leaving early aborts it in the engine."""
    agen = engine.generate(prompt_ids, choice.params, f"{request_id}-{choice.index}")
    try:
        async for event in agen:
            delta, finish = apply_event(choice, event)
            if delta or finish or (choice.logprobs is not None and choice.logprobs.pending):
                yield choice.index, delta, finish
            if finish:
                break
    finally:
        await agen.aclose()


async def generate_choices(
    engine: Engine, prompt_ids: list[int], choices: list[Choice], request_id: str
) -> AsyncIterator[Item]:
    """(choice index, text delta, finish reason) as they come, for one or many choices."""
    if len(choices) == 1:  # the common case, without tasks and a queue
        items = choice_events(engine, prompt_ids, choices[0], request_id)
        try:
            async for item in items:
                yield item
        finally:
            await items.aclose()
        return
    streams = [choice_events(engine, prompt_ids, choice, request_id) for choice in choices]
    async for item in merge_streams(streams, finishes=len(choices)):
        yield item


async def merge_streams(streams: list[AsyncIterator[Item]], finishes: int) -> AsyncIterator[Item]:
    """Interleave choice-event streams as items arrive, until `finishes` finish reasons were
    seen; an engine failure in any stream is raised here, and the rest are cancelled."""
    out: asyncio.Queue = asyncio.Queue()

    async def pump(stream: AsyncIterator[Item]) -> None:
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


async def wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def sse(model: BaseModel, exclude: set[str] | None = None) -> str:
    """One server-sent event holding a protocol model as JSON."""
    return f"data: {model.model_dump_json(exclude=exclude)}\n\n"


DONE = "data: [DONE]\n\n"


class ContentEvents:
    """Server-sent events that differ only in their text, rendered once per choice index from
    the protocol model (`render(index, text)`), then filled in: content deltas are most of the
    traffic, and a model dump per token would cost the event loop more than the text."""

    MARK = "OPENCHAT-CONTENT-MARK-7f3a91"

    def __init__(self, render: Callable[[int, str], str]):
        self.render = render
        self._parts: dict[int, tuple[str, str]] = {}

    def __call__(self, index: int, text: str) -> str:
        parts = self._parts.get(index)
        if parts is None:
            head, mark, tail = self.render(index, self.MARK).partition(json.dumps(self.MARK))
            assert mark, "the rendered event holds the text as a JSON string"
            parts = self._parts[index] = (head, tail)
        return f"{parts[0]}{json.dumps(text, ensure_ascii=False)}{parts[1]}"


# -- one request --------------------------------------------------------------------------------
class Generation:
    """One request's choices on their way through the engine: what both the streamed and the
    whole response are made of (texts, finish reasons, logprobs, usage), and its log line."""

    def __init__(
        self,
        ctx: ServingContext,
        request: Request,
        *,
        endpoint: str,
        body: AnyRequest,
        prompts: list[list[int]],
        runs: list[list[Choice]],
        response_id: str,
        output: Callable[[Choice], str],
    ):
        self.ctx, self.request, self.endpoint, self.body = ctx, request, endpoint, body
        self.prompts, self.runs, self.response_id, self.output = prompts, runs, response_id, output
        self.choices = [c for group in runs for c in group]
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.created = int(time.time())
        self.started = time.perf_counter()
        self._first = True
        self.request_dump = body.model_dump(exclude_none=True)
        ctx.metrics.prompt_tokens.inc(self.prompt_tokens)

    @property
    def include_usage(self) -> bool:
        return bool(self.body.stream_options and self.body.stream_options.include_usage)

    def usage(self) -> Usage:
        completion = sum(c.reply.num_tokens for c in self.choices)
        return Usage(
            prompt_tokens=self.prompt_tokens, completion_tokens=completion, total_tokens=self.prompt_tokens + completion
        )

    def finish_log(self, status: int, error: str | None = None) -> None:
        metrics = self.ctx.metrics
        latency = time.perf_counter() - self.started
        u = self.usage()
        metrics.generation_tokens.inc(u.completion_tokens)
        metrics.latency.labels(endpoint=self.endpoint).observe(latency)
        metrics.count(self.endpoint, status)
        entry = dict(
            time=now(),
            endpoint=self.endpoint,
            id=self.response_id,
            request=self.request_dump,
            output=[self.output(c) for c in self.choices],
            finish_reasons=[c.finish_reason for c in self.choices],
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            latency_s=round(latency, 4),
            status=status,
        )
        if error:
            entry["error"] = error
        entry["client"] = self.request.client.host if self.request.client else None
        self.ctx.logger.record(**entry)
        self.request.scope[LOGGED] = True

    async def events(self) -> AsyncIterator[Item]:
        """Every choice of every prompt, merged; the first one times the first token."""
        engine = self.ctx.engine
        if len(self.runs) == 1:
            items = generate_choices(engine, self.prompts[0], self.runs[0], self.response_id)
        else:
            items = merge_streams(
                [
                    generate_choices(engine, p, run, f"{self.response_id}-p{pi}")
                    for pi, (p, run) in enumerate(zip(self.prompts, self.runs))
                ],
                finishes=len(self.choices),
            )
        try:
            async for item in items:
                if self._first:
                    self.ctx.metrics.ttft.observe(time.perf_counter() - self.started)
                    self._first = False
                yield item
        finally:
            await items.aclose()


class OpenAIServing:
    """The base of every completion endpoint's serving class."""

    #: the route, for metrics and logs
    endpoint = ""
    #: the request field holding the prompt, named in context-length errors
    prompt_param = "prompt"

    def __init__(self, ctx: ServingContext):
        self.ctx = ctx

    # -- settings -----------------------------------------------------------------------------
    def budget(self, body: AnyRequest, prompt_len: int) -> int:
        """max_tokens for a prompt of this length: as asked, or what the context leaves."""
        ctx, param = self.ctx.engine.context_length, self.prompt_param
        requested, fieldname = body.requested_max_tokens()
        if prompt_len > ctx or (prompt_len == ctx and requested != 0):
            raise APIError(
                400,
                f"This model's maximum context length is {ctx} tokens, but the "
                f"prompt has {prompt_len} tokens (no room to generate). Please "
                f"shorten the {param}.",
                param=param,
                code="context_length_exceeded",
            )
        if requested is None:
            room = ctx - prompt_len
            default = self.ctx.config.default_max_tokens
            return min(room, default) if default else room
        if prompt_len + requested > ctx:
            raise APIError(
                400,
                f"This model's maximum context length is {ctx} tokens. However, you "
                f"requested {prompt_len + requested} tokens ({prompt_len} in the "
                f"{param}, {requested} in the completion). Please reduce "
                f"{fieldname} or the {param}.",
                param=fieldname,
                code="context_length_exceeded",
            )
        return requested

    def logprob_settings(self, body: AnyRequest) -> tuple[int | None, int | None]:
        """(logprobs, prompt_logprobs) for the engine: top alternatives per token, or None."""
        return None, None

    def sampling(self, body: AnyRequest, max_tokens: int, index: int, guide: Any = None) -> SamplingParams:
        """One choice's settings; `guide` constrains the reply (chat's response_format)."""
        temperature = 1.0 if body.temperature is None else float(body.temperature)
        top_p = 1.0 if body.top_p is None else float(body.top_p)
        top_k = body.top_k if body.top_k and body.top_k > 0 else 0
        if top_p <= 0.0:
            top_k = 1
        logprobs, prompt_logprobs = self.logprob_settings(body)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=max(top_p, 1e-6),
            top_k=top_k,
            min_p=float(body.min_p or 0.0),
            seed=choice_seed(body.seed, index),
            presence_penalty=float(body.presence_penalty or 0.0),
            frequency_penalty=float(body.frequency_penalty or 0.0),
            repetition_penalty=float(body.repetition_penalty or 1.0),
            logit_bias=self.checked_logit_bias(body),
            guide=guide,
            stop_token_ids=self.ctx.config.stop_token_ids,
            ignore_eos=bool(body.ignore_eos),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            adapter=self.ctx.adapter_for(body.model),
        )

    def checked_logit_bias(self, body: AnyRequest) -> tuple[tuple[int, float], ...]:
        """logit_bias as SamplingParams takes it, its token ids checked against the vocabulary."""
        bias = body.logit_bias_pairs()
        top = self.ctx.engine.max_token_id()
        if bias and bias[-1][0] > top:  # sorted by id: the last is the largest
            raise APIError(
                400,
                f"Invalid value for 'logit_bias': token id {bias[-1][0]} is outside the vocabulary (ids 0-{top})",
                param="logit_bias",
                code="invalid_value",
            )
        return bias

    # -- the response ---------------------------------------------------------------------------
    #: the protocol model of one streamed event (its choices are `chunk_choice`s)
    chunk_model: type[BaseModel]

    def chunk_choice(self, index: int, text: str, finish_reason: str | None = None, logprobs: Any = None) -> BaseModel:
        """One choice of a streamed event in the endpoint's shape: a text delta (with the
        builder's `take()` as its logprobs), or the choice's end."""
        raise NotImplementedError

    def stream_start(self, gen: Generation, content: ContentEvents) -> tuple[list[str], dict[int, str]]:
        """The events before any token, and text held back per choice index to go out with that
        choice's first logprobs event."""
        return [], {}

    def chunk(self, gen: Generation, choices: list[BaseModel], **extra: Any) -> str:
        """One streamed event; usage only where the request asked for it."""
        chunk = self.chunk_model(
            id=gen.response_id,
            created=gen.created,
            model=self.ctx.response_model(gen.body.model),
            system_fingerprint=self.ctx.fingerprint,
            choices=choices,
            **extra,
        )
        return sse(chunk, exclude=None if gen.include_usage else {"usage"})

    async def stream_events(self, gen: Generation) -> AsyncIterator[str]:
        """The server-sent events of a streamed response (without the final [DONE]): a text
        delta per event (with its logprobs where asked), one event per choice's end, and usage."""
        content = ContentEvents(lambda index, text: self.chunk(gen, [self.chunk_choice(index, text)]))
        opening, held = self.stream_start(gen, content)
        for event in opening:
            yield event
        async for index, delta, finish in gen.events():
            builder = gen.choices[index].logprobs
            if builder is not None:
                delta = held.pop(index, "") + delta
                if delta or builder.pending:
                    yield self.chunk(gen, [self.chunk_choice(index, delta, logprobs=builder.take())])
            elif delta:
                yield content(index, delta)
            if finish:
                yield self.chunk(gen, [self.chunk_choice(index, "", finish_reason=finish)])
        if gen.include_usage:
            yield self.chunk(gen, [], usage=gen.usage())

    def full_response(self, gen: Generation) -> BaseModel:
        """The whole response, once every choice finished."""
        raise NotImplementedError

    async def respond(self, gen: Generation) -> Response:
        if gen.body.stream:
            return StreamingResponse(
                self._stream(gen),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await self._full(gen)

    async def _stream(self, gen: Generation) -> AsyncIterator[str]:
        status, error = 200, None
        metrics = self.ctx.metrics
        metrics.in_progress.inc()
        try:
            async for event in self.stream_events(gen):
                yield event
            yield DONE
        except EngineFailed as exc:
            status, error = 500, str(exc)
            yield sse(engine_error(exc).model())
            yield DONE
        except (asyncio.CancelledError, GeneratorExit):
            status, error = 499, "client disconnected"
            raise
        finally:
            metrics.in_progress.dec()
            gen.finish_log(status, error)

    async def _full(self, gen: Generation) -> Response:
        async def collect() -> None:
            async for _item in gen.events():
                pass

        metrics = self.ctx.metrics
        metrics.in_progress.inc()
        gen_task = asyncio.create_task(collect())
        watch = asyncio.create_task(wait_disconnect(gen.request))
        try:
            done, _ = await asyncio.wait({gen_task, watch}, return_when=asyncio.FIRST_COMPLETED)
            if gen_task not in done:  # the client left: free the batch slots now
                gen_task.cancel()
                await asyncio.gather(gen_task, return_exceptions=True)
                gen.finish_log(499, "client disconnected")
                return Response(status_code=499)
            watch.cancel()
            try:
                gen_task.result()
            except EngineFailed as exc:
                gen.finish_log(500, str(exc))
                return engine_error(exc).response()
        finally:
            metrics.in_progress.dec()
            for t in (gen_task, watch):
                if not t.done():
                    t.cancel()
        gen.finish_log(200)
        return JSONResponse(self.full_response(gen).model_dump())
