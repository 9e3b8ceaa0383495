"""Sampling GRPO's completions with the serving engine, in the training rank's process.

The engine is the one `openchat serve` runs (continuous batching, per-sequence seeded
sampling, stop on the template's end-of-turn token), driven on a private event loop: every
completion of a step is submitted at once and the engine batches them. After each optimizer
step the policy's weights are copied into it (`Engine.load_weights`); with LoRA the adapter is
folded into the copy, so the engine always samples from the model being trained.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from openchat_cli.errors import OpenchatError


@dataclass
class Completion:
    token_ids: list[int]  # generated ids, the end-of-turn token included when it was produced
    finish_reason: str  # stop | length


def policy_weights(lm: Any) -> dict[str, torch.Tensor]:
    """The policy's weights under the plain model's names; a LoRA model's adapters folded in
    (W + B A scaling), computed here without touching the training module."""
    peft_config = getattr(lm, "peft_config", None)
    state = lm.state_dict()
    if not peft_config:
        return {k: v.detach() for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    for module_name, module in lm.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            name = module_name.removeprefix("base_model.model.")
            weight = module.base_layer.weight.detach()
            delta = sum(
                (
                    module.get_delta_weight(a).detach()
                    for a in module.active_adapters
                    if a in getattr(module, "lora_A", {})
                ),
                torch.zeros_like(weight),
            )
            out[f"{name}.weight"] = weight + delta.to(weight.dtype)
    for key, value in state.items():
        if "lora_" in key:
            continue
        name = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        out.setdefault(name, value.detach())
    return out


class Sampler:
    """A `TransformersEngine` on this rank's device, fed prompt ids, returning completions."""

    def __init__(
        self, model_dir: Path, tokenizer: Any, stop_ids: tuple[int, ...], device: torch.device, max_batch_size: int
    ):
        from openchat_cli.serve.engines.transformers_engine import TransformersEngine

        self.engine = TransformersEngine(
            model_dir,
            tokenizer=tokenizer,
            device=str(device),
            dtype="float32" if device.type == "cpu" else "bfloat16",
            max_batch_size=max_batch_size,
        )
        self.stop_ids = stop_ids
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.engine.start())

    def sync(self, lm: Any) -> None:
        self.engine.load_weights(policy_weights(lm))

    def sample(
        self, prompt_ids: list[list[int]], seeds: list[int], *, max_tokens: int, temperature: float
    ) -> list[Completion]:
        """One completion per (prompt, seed), all sampled together."""
        return self.loop.run_until_complete(self._sample(prompt_ids, seeds, max_tokens, temperature))

    async def _sample(
        self, prompt_ids: list[list[int]], seeds: list[int], max_tokens: int, temperature: float
    ) -> list[Completion]:
        from openchat_cli.serve.engines.base import SamplingParams

        async def one(i: int, ids: list[int], seed: int) -> Completion:
            params = SamplingParams(
                max_tokens=max_tokens, temperature=temperature, seed=seed, stop_token_ids=self.stop_ids
            )
            tokens: list[int] = []
            async for event in self.engine.generate(ids, params, f"grpo-{i}"):
                tokens.extend(event.token_ids)
                if event.finish_reason == "error":
                    raise OpenchatError(f"sampling failed: {event.error}")
                if event.finish_reason is not None:
                    return Completion(tokens, event.finish_reason)
            return Completion(tokens, "length")

        return list(await asyncio.gather(*(one(i, ids, s) for i, (ids, s) in enumerate(zip(prompt_ids, seeds)))))

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.shutdown())
        self.loop.close()
