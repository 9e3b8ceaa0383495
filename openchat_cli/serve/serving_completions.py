"""POST /v1/completions: raw text or token-id prompts (no template) → the engine →
`text_completion` (whole or streamed), with the legacy `logprobs` object and `echo`
(`max_tokens: 0` scores the prompt only: what lm-evaluation-harness's loglikelihood sends)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from openchat_cli.serve.detokenize import ReplyStream
from openchat_cli.serve.errors import APIError
from openchat_cli.serve.logprobs import LogprobsBuilder, prompt_offsets
from openchat_cli.serve.protocol import (
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from openchat_cli.serve.serving import (
    Choice,
    ContentEvents,
    EchoedPrompt,
    Generation,
    OpenAIServing,
)


class OpenAIServingCompletion(OpenAIServing):
    endpoint = "/v1/completions"
    prompt_param = "prompt"

    def logprob_settings(self, body: CompletionRequest) -> tuple[int | None, int | None]:  # type: ignore[override]
        return body.logprobs, body.logprobs if body.echo else None

    def _encode(self, body: CompletionRequest, p: str | list[int]) -> EchoedPrompt:
        """One prompt's token ids, text, and (for echo with logprobs) token offsets."""
        tokenizer = self.ctx.tokenizer
        add_special = body.add_special_tokens is not False
        if isinstance(p, str):
            if body.echo and body.logprobs is not None:
                ids, starts = prompt_offsets(tokenizer, p, add_special)
                return EchoedPrompt(ids, starts, p)
            return EchoedPrompt(tokenizer.encode(p, add_special_tokens=add_special) if p else [], None, p)
        top = self.ctx.engine.max_token_id()
        bad = [t for t in p if t > top]
        if bad:
            raise APIError(
                400,
                f"Invalid value for 'prompt': token id {bad[0]} is outside the vocabulary (ids 0-{top})",
                param="prompt",
                code="invalid_value",
            )
        return EchoedPrompt(list(p), None, tokenizer.decode(p))

    async def create(self, request: Request) -> Response:
        ctx = self.ctx
        body: CompletionRequest = await ctx.parse(CompletionRequest, request)
        if body.max_tokens == 0 and not body.echo:
            raise APIError(
                400,
                "Invalid value for 'max_tokens': 0 is only allowed with echo (scoring the prompt)",
                param="max_tokens",
                code="invalid_value",
            )
        given = body.prompts()  # at most max_n of them (precheck), each with n choices
        ctx.check_load(body.n)
        for p in given:
            floor = ctx.prompt_bounds.text_floor(p) if isinstance(p, str) else len(p)
            if floor > ctx.engine.context_length:
                raise ctx.context_exceeded(floor, "prompt")
        encoded: list[EchoedPrompt] = []
        for p in given:
            e = await ctx.off_loop(self._encode, body, p)
            if not e.ids:
                if ctx.tokenizer.bos_token_id is None:
                    raise APIError(
                        400, "Invalid value for 'prompt': the prompt is empty", param="prompt", code="invalid_value"
                    )
                e = EchoedPrompt([ctx.tokenizer.bos_token_id], [0], e.text)
            encoded.append(e)
        stops = body.stop_strings()
        n = body.n

        def choice(pi: int, i: int, max_tokens: int) -> Choice:
            reply = ReplyStream(ctx.tokenizer, stop=stops, skip_token_ids=ctx.config.stop_token_ids)
            c = Choice(pi * n + i, reply, self.sampling(body, max_tokens, i), echo=encoded[pi] if body.echo else None)
            if body.logprobs is not None:
                c.logprobs = LogprobsBuilder(ctx.token_texts)
                c.logprobs.start_generation_at(len(encoded[pi].text) if body.echo else 0)
            return c

        runs = []
        for pi, e in enumerate(encoded):
            max_tokens = self.budget(body, len(e.ids))
            runs.append([choice(pi, i, max_tokens) for i in range(n)])
        gen = Generation(
            ctx,
            request,
            endpoint=self.endpoint,
            body=body,
            prompts=[e.ids for e in encoded],
            runs=runs,
            response_id=f"cmpl-{secrets.token_hex(12)}",
            output=self._text,
        )
        return await self.respond(gen)

    @staticmethod
    def _echo(c: Choice) -> str:
        return c.echo.text if c.echo is not None else ""

    def _text(self, c: Choice) -> str:
        return self._echo(c) + c.reply.text

    # -- streamed -------------------------------------------------------------------------------
    chunk_model = CompletionChunk

    def chunk_choice(
        self, index: int, text: str, finish_reason: str | None = None, logprobs: Any = None
    ) -> CompletionChoice:
        return CompletionChoice(
            index=index,
            text=text,
            finish_reason=finish_reason,
            logprobs=CompletionLogprobs(**logprobs) if logprobs is not None else None,
        )

    def stream_start(self, gen: Generation, content: ContentEvents) -> tuple[list[str], dict[int, str]]:
        """The echoed prompt: at once, or with its logprobs (known after prefill) in the first event."""
        want_logprobs = gen.body.logprobs is not None
        opening = [content(c.index, c.echo.text) for c in gen.choices if c.echo and c.echo.text and not want_logprobs]
        held = {c.index: c.echo.text for c in gen.choices if c.echo and want_logprobs}
        return opening, held

    # -- whole ------------------------------------------------------------------------------------
    def full_response(self, gen: Generation) -> CompletionResponse:
        return CompletionResponse(
            id=gen.response_id,
            created=gen.created,
            model=self.ctx.response_model(gen.body.model),
            system_fingerprint=self.ctx.fingerprint,
            usage=gen.usage(),
            choices=[
                CompletionChoice(
                    index=c.index,
                    text=self._text(c),
                    finish_reason=c.finish_reason,
                    logprobs=(CompletionLogprobs(**c.logprobs.result()) if c.logprobs is not None else None),
                )
                for c in gen.choices
            ],
        )
