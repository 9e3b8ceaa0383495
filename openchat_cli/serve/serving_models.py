"""GET /v1/models and /v1/models/{model}: the served model under its name (aliases are
accepted in requests but listed once), then each LoRA adapter (`serve --lora`) as a model of its
own whose `parent` is the base, as vLLM lists them."""

from __future__ import annotations

from openchat_cli.serve.protocol import ModelCard, ModelList
from openchat_cli.serve.serving import ServingContext


class OpenAIServingModels:
    def __init__(self, ctx: ServingContext):
        self.ctx = ctx

    def card(self, name: str | None = None) -> ModelCard:
        config = self.ctx.config
        adapter = self.ctx.adapter_for(name) if name else None
        if adapter is not None:
            return ModelCard(
                id=adapter,
                created=config.created,
                root=self.ctx.adapters[adapter],
                parent=config.model_name,
                max_model_len=self.ctx.engine.context_length,
            )
        return ModelCard(
            id=config.model_name,
            created=config.created,
            root=config.model_path,
            max_model_len=self.ctx.engine.context_length,
        )

    def list(self) -> ModelList:
        return ModelList(data=[self.card(), *(self.card(name) for name in self.ctx.adapters)])

    def show(self, name: str) -> ModelCard:
        self.ctx.check_model(name)
        return self.card(name)
