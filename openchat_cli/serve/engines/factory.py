"""Build an engine from plain options: one place, used by `openchat serve` in its own process
and by the engine process (which receives the same options over the wire)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openchat_cli.serve.engines.base import Engine, EngineError


def build_engine(kind: str, model_dir: Path, tokenizer: Any, options: dict[str, Any]) -> Engine:
    """`options` holds only JSON-like values (they cross a process boundary):
    transformers: device, dtype, max_batch_size, max_model_len, threads, wide_threads;
    vllm: tensor_parallel_size, max_model_len, served_model_name, dtype and any vLLM engine arg."""
    options = dict(options)
    if kind == "vllm":
        from openchat_cli.serve.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, tokenizer=tokenizer, **options)
    if kind == "transformers":
        from openchat_cli.serve.engines.transformers_engine import TransformersEngine

        device = options.pop("device", "auto")
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return TransformersEngine(model_dir, tokenizer=tokenizer, device=device, **options)
    raise EngineError(f"unknown engine '{kind}'")
