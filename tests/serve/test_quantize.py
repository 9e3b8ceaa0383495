"""`serve --quantize`: int8 weights on CPU (PyTorch's dynamic int8, or torchao weight-only), through
the engine process and the real `openai` client; GPU-only methods refused on CPU."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import start_server, stop_server

PROMPTS = [[5, 17, 42, 99, 7], [8, 9, 10], [300, 12, 44, 45, 46, 47, 48], [6, 6, 71], [120, 121, 122, 123]]


def _greedy(engine, prompts):
    from openchat_cli.serve.engines.base import SamplingParams

    async def run():
        await engine.start()
        try:

            async def one(prompt):
                out = []
                async for event in engine.generate(
                    prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True), "q"
                ):
                    out.extend(event.token_ids)
                return out

            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await engine.shutdown()

    return asyncio.run(run())


@pytest.mark.parametrize("method", ["int8", "int8-weight-only"])
def test_int8_engine_shrinks_weights_and_mostly_agrees_with_float32(tiny_model_dir, tiny_engine, method):
    import torch

    if method == "int8-weight-only":
        pytest.importorskip("torchao", reason="the optional [torchao] extra is not installed")
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_model_dir, tokenizer=load_tokenizer(tiny_model_dir), quantize=method)
    assert engine.describe()["quantized"] in ("torchao-int8-weight-only", "torch-dynamic-int8")
    assert engine.quantized == {"int8": "torch-dynamic-int8", "int8-weight-only": "torchao-int8-weight-only"}[method]
    assert tiny_engine.quantized is None
    # The tiny model's weights are mostly its (unquantized) embeddings: the Linear layers shrink 4x.
    assert engine.weight_bytes < 0.75 * tiny_engine.weight_bytes
    linears = [m for m in engine.model.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears or all(type(m.weight).__name__ != "Parameter" or m is engine.model.lm_head for m in linears)
    quantized, reference = _greedy(engine, PROMPTS), _greedy(tiny_engine, PROMPTS)
    assert all(len(r) == 8 for r in quantized)
    agree = sum(a == b for a, b in zip(quantized, reference)) / len(PROMPTS)
    assert agree >= 0.6, (quantized, reference)


def test_serve_quantize_int8_through_the_engine_process(tiny_model_dir, tmp_path):
    import openai

    server = start_server(tiny_model_dir, tmp_path, "--quantize", "int8", "--served-model-name", "q8")
    try:
        health = httpx.get(server.url + "/health", timeout=10).json()
        assert health["engine_process"] and health["quantized"] == "torch-dynamic-int8"
        reply = openai.OpenAI(base_url=server.base_url, api_key="x").chat.completions.create(
            model="q8", messages=[{"role": "user", "content": "What color is the sky?"}], temperature=0, max_tokens=6
        )
        assert reply.usage.completion_tokens > 0 and reply.choices[0].finish_reason in ("stop", "length")
        assert "quantized" in server.log()
    finally:
        stop_server(server)


def test_gpu_only_quantization_is_refused_on_cpu(cli, tiny_model_dir):
    err = cli("serve", tiny_model_dir, "--port", "0", "--in-process", "--quantize", "int4", expect=2).stderr
    assert "int4 needs a CUDA GPU" in err
    err = cli("serve", tiny_model_dir, "--port", "0", "--in-process", "--quantize", "int3", expect=2).stderr
    assert "unknown --quantize 'int3'" in err
