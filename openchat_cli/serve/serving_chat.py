"""POST /v1/chat/completions: messages → the model's conversation template → the engine →
`chat.completion` (whole) or `chat.completion.chunk` events (streamed), with OpenAI's
`logprobs.content` when asked."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from openchat_cli.serve.detokenize import ReplyStream
from openchat_cli.serve.engines.guided import GuideError, json_guide
from openchat_cli.serve.errors import APIError
from openchat_cli.serve.logprobs import ChatLogprobsBuilder
from openchat_cli.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChoiceLogprobs,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
)
from openchat_cli.serve.serving import Choice, ContentEvents, Generation, OpenAIServing
from openchat_cli.templates import Conversation


class OpenAIServingChat(OpenAIServing):
    endpoint = "/v1/chat/completions"
    prompt_param = "messages"

    def encode_prompt(self, body: ChatCompletionRequest) -> list[int]:
        """The prompt's token ids, built by the shared conversation template only (CPU work:
        called off the event loop)."""
        ctx = self.ctx
        messages = [m.to_template_dict() for m in body.messages]
        floor = ctx.prompt_bounds.chat_floor(messages, body.condition)
        if floor > ctx.engine.context_length:
            raise ctx.context_exceeded(floor, "messages")
        return chat_prompt_ids(ctx.template, ctx.prompt_tokenizer, body)

    def logprob_settings(self, body: ChatCompletionRequest) -> tuple[int | None, int | None]:  # type: ignore[override]
        return (body.top_logprobs or 0) if body.logprobs else None, None

    async def create(self, request: Request) -> Response:
        ctx = self.ctx
        body: ChatCompletionRequest = await ctx.parse(ChatCompletionRequest, request)
        ctx.check_load(body.n)
        prompt_ids = await ctx.off_loop(self.encode_prompt, body)
        template = ctx.template
        stops = body.stop_strings() + [s for s in template.stop_strings if s not in body.stop_strings()]
        max_tokens = self.budget(body, len(prompt_ids))
        try:  # compiled once per request; each choice gets its own state in the engine
            guide = json_guide(body.response_format_dict())
        except GuideError as exc:
            raise APIError(400, str(exc), param=exc.param, code="invalid_value") from None

        def choice(i: int) -> Choice:
            reply = ReplyStream(
                ctx.tokenizer,
                stop=stops,
                clean=template.clean_reply,
                strip_prefix=template.sep,
                skip_token_ids=ctx.config.stop_token_ids,
            )
            c = Choice(i, reply, self.sampling(body, max_tokens, i, guide))
            if body.logprobs:
                c.logprobs = ChatLogprobsBuilder(
                    ctx.token_texts, body.top_logprobs or 0, skip_token_ids=ctx.config.stop_token_ids
                )
            return c

        gen = Generation(
            ctx,
            request,
            endpoint=self.endpoint,
            body=body,
            prompts=[prompt_ids],
            runs=[[choice(i) for i in range(body.n)]],
            response_id=f"chatcmpl-{secrets.token_hex(12)}",
            output=lambda c: c.reply.text,
        )
        return await self.respond(gen)

    # -- streamed -------------------------------------------------------------------------------
    chunk_model = ChatCompletionChunk

    def chunk_choice(
        self, index: int, text: str, finish_reason: str | None = None, logprobs: Any = None
    ) -> ChatChunkChoice:
        return ChatChunkChoice(
            index=index,
            delta=ChatDelta() if finish_reason else ChatDelta(content=text),
            logprobs=ChatChoiceLogprobs(content=logprobs) if logprobs is not None else None,
            finish_reason=finish_reason,
        )

    def stream_start(self, gen: Generation, content: ContentEvents) -> tuple[list[str], dict[int, str]]:
        """Each choice opens with the assistant's role (OpenAI's first chunk)."""
        role = [ChatChunkChoice(index=c.index, delta=ChatDelta(role="assistant", content="")) for c in gen.choices]
        return [self.chunk(gen, [choice]) for choice in role], {}

    # -- whole ------------------------------------------------------------------------------------
    def full_response(self, gen: Generation) -> ChatCompletionResponse:
        return ChatCompletionResponse(
            id=gen.response_id,
            created=gen.created,
            model=self.ctx.response_model(gen.body.model),
            system_fingerprint=self.ctx.fingerprint,
            usage=gen.usage(),
            choices=[
                ChatChoice(
                    index=c.index,
                    message=AssistantMessage(content=c.reply.text),
                    finish_reason=c.finish_reason,
                    logprobs=(ChatChoiceLogprobs(content=c.logprobs.result()) if c.logprobs is not None else None),
                )
                for c in gen.choices
            ],
        )


def chat_prompt_ids(template: Any, tokenizer: Any, body: ChatCompletionRequest) -> list[int]:
    """A chat request's prompt: its messages (system ones joined by the template module's rule)
    and condition, through the conversation template, ending in the assistant prefix."""
    messages = [m.to_template_dict() for m in body.messages]
    conv = Conversation.from_dict({"messages": messages, "condition": body.condition})
    return template.encode_prompt(tokenizer, conv)
