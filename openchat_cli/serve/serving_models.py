"""GET /v1/models and /v1/models/{model}: the served model under its name (aliases are
accepted in requests but listed once)."""

from __future__ import annotations

from openchat_cli.serve.protocol import ModelCard, ModelList
from openchat_cli.serve.serving import ServingContext


class OpenAIServingModels:
    def __init__(self, ctx: ServingContext):
        self.ctx = ctx

    def card(self) -> ModelCard:
        config = self.ctx.config
        return ModelCard(id=config.model_name, created=config.created, root=config.model_path,
                         max_model_len=self.ctx.engine.context_length)

    def list(self) -> ModelList:
        return ModelList(data=[self.card()])

    def show(self, name: str) -> ModelCard:
        self.ctx.check_model(name)
        return self.card()
