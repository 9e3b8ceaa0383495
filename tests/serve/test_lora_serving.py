"""`serve BASE --lora NAME=ADAPTER`: adapters from `train --lora` served unmerged next to the base.

Greedy replies through an adapter must equal the merged model's (`model merge-lora`) served on
its own, with base and adapter requests in flight together (so they share batches), through the
real server (engine process) and the real `openai` client.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import start_server, stop_server
from tests.train.helpers import color_task, write_tokenized

PROMPTS = [
    "What color is the sky?",
    "Name a color.",
    "blue or red?",
    "Hello! How can I help you today?",
    "def add(a, b):",
    "The quick brown fox",
    "What is 12 plus 7?",
    "Write a short poem about the sea.",
]


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_dir: Path, tiny_tokenizer, tmp_path_factory: pytest.TempPathFactory):
    """A LoRA adapter trained briefly with `openchat train --lora` (big learning rate, so it
    changes greedy replies), and the same adapter merged with `model merge-lora`."""
    from typer.testing import CliRunner

    from openchat_cli.app import app

    root = tmp_path_factory.mktemp("lora-serving")
    data = write_tokenized(root / "train.parquet", tiny_tokenizer, color_task(200, seed=5))
    runner = CliRunner()

    def run(*args: object) -> None:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output + repr(result.exception)

    run(
        "train",
        "--model",
        tiny_model_dir,
        "--data",
        data,
        "--out",
        root / "run",
        "--lora",
        "--lora-r",
        "8",
        "--lora-targets",
        "q_proj,v_proj,o_proj,down_proj",
        "--lr",
        "3e-2",
        "--tokens-per-step",
        "512",
        "--stop-after",
        "6",
    )
    adapter = root / "run" / "step-000006"
    run("model", "merge-lora", adapter, root / "merged")
    return adapter, root / "merged"


async def _greedy(client, model: str, prompts: list[str]) -> list[str]:
    async def one(prompt: str) -> str:
        reply = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=12
        )
        assert reply.model == model
        return reply.choices[0].message.content

    return list(await asyncio.gather(*(one(p) for p in prompts)))


@pytest.mark.slow
def test_adapter_replies_equal_the_merged_model_batched_with_the_base(tiny_model_dir, trained_adapter, tmp_path):
    import openai

    adapter, merged = trained_adapter
    (tmp_path / "lora").mkdir()
    (tmp_path / "merged").mkdir()
    lora_server = start_server(
        tiny_model_dir, tmp_path / "lora", "--lora", f"colors={adapter}", "--served-model-name", "base"
    )
    merged_server = start_server(merged, tmp_path / "merged", "--served-model-name", "merged")
    try:
        lora = openai.AsyncOpenAI(base_url=lora_server.base_url, api_key="x")
        plain = openai.AsyncOpenAI(base_url=merged_server.base_url, api_key="x")

        async def scenario():
            models = await lora.models.list()
            cards = {m.id: m for m in models.data}
            assert set(cards) == {"base", "colors"}
            assert cards["colors"].model_extra["parent"] == "base"
            assert cards["colors"].model_extra["root"] == str(adapter.resolve())
            # Base and adapter requests in flight together: they share the engine's batches.
            together = await asyncio.gather(_greedy(lora, "colors", PROMPTS), _greedy(lora, "base", PROMPTS))
            alone_base = await _greedy(lora, "base", PROMPTS)
            merged_replies = await _greedy(plain, "merged", PROMPTS)
            return together, alone_base, merged_replies

        (adapted, base_batched), base_alone, merged_replies = asyncio.run(scenario())
        assert adapted == merged_replies
        assert base_batched == base_alone
        assert adapted != base_batched  # the adapter changed the model, so the check above means something
        with pytest.raises(openai.NotFoundError, match="colors"):
            openai.OpenAI(base_url=lora_server.base_url, api_key="x").chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
    finally:
        stop_server(lora_server)
        stop_server(merged_server)


def test_engine_adapter_rows_match_merged_weights_packed_and_padded(tiny_model_dir, tmp_path):
    """Per-token routing inside one forward: a packed prefill mixing base and adapter prompts,
    then batched decode, equals each model run alone (no server: the fast check)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.base import SamplingParams
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "gate_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    tokenizer = load_tokenizer(tiny_model_dir)
    engine = TransformersEngine(tiny_model_dir, tokenizer=tokenizer, adapters={"a": str(tmp_path / "adapter")})
    prompts = [[5, 17, 42, 99, 7], [8, 9, 10], [300, 12, 44, 45, 46, 47, 48], [6, 6]]
    adapters = ["a", None, "a", None]

    async def run():
        await engine.start()
        try:

            async def one(prompt, adapter):
                params = SamplingParams(max_tokens=6, temperature=0, adapter=adapter, ignore_eos=True)
                out = []
                async for event in engine.generate(prompt, params, "r"):
                    out.extend(event.token_ids)
                return out

            return await asyncio.gather(*(one(p, a) for p, a in zip(prompts, adapters)))
        finally:
            await engine.shutdown()

    got = asyncio.run(run())
    fresh_base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    for prompt, adapter, tokens in zip(prompts, adapters, got):
        reference = merged if adapter else fresh_base
        want = reference.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, min_new_tokens=6)[
            0, len(prompt) :
        ].tolist()
        assert tokens == want, (prompt, adapter)
    assert (
        got[0]
        != fresh_base.generate(torch.tensor([prompts[0]]), max_new_tokens=6, do_sample=False, min_new_tokens=6)[
            0, len(prompts[0]) :
        ].tolist()
    )


def test_mismatched_base_is_refused_naming_the_adapter(cli, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    other = tmp_path / "small"
    cli("model", "init", other, "--size", "small")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(other)), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "small-adapter")
    err = cli(
        "serve",
        tiny_model_dir,
        "--port",
        "0",
        "--in-process",
        "--lora",
        f"wrong={tmp_path / 'small-adapter'}",
        expect=2,
    ).stderr
    assert "LoRA adapter 'wrong'" in err and "q_proj" in err and "another base" in err
    err = cli("serve", tiny_model_dir, "--port", "0", "--lora", f"x={tiny_model_dir}", expect=None).stderr
    assert "not a LoRA adapter" in err
    # Same shapes, other weights: an adapter of the tiny model refused on another tiny model.
    twin = tmp_path / "twin"
    cli("model", "init", twin, "--size", "tiny", "--seed", "7")
    tiny_adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), LoraConfig(r=2, target_modules=["v_proj"])
    )
    tiny_adapter.save_pretrained(tmp_path / "tiny-adapter")
    err = cli(
        "serve", twin, "--port", "0", "--in-process", "--lora", f"tw={tmp_path / 'tiny-adapter'}", expect=2
    ).stderr
    assert "LoRA adapter 'tw'" in err and f"was trained on {tiny_model_dir}" in err and "v_proj" in err


def test_lora_options_accept_catalog_ids_and_refuse_clashes(tmp_path):
    from openchat_cli.errors import OpenchatError
    from openchat_cli.serve.adapters import parse_lora_options
    from store.catalog import open_catalog

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    ck = open_catalog().add_checkpoint(path=adapter, kind="trained", template="openchat_3.5")
    assert parse_lora_options([ck, f"named={ck}"], reserved={"base"}) == {
        ck: str(adapter.resolve()),
        "named": str(adapter.resolve()),
    }
    with pytest.raises(OpenchatError, match="'base' is already taken"):
        parse_lora_options([f"base={adapter}"], reserved={"base"})
    with pytest.raises(OpenchatError, match="already taken"):
        parse_lora_options([f"x={adapter}", f"x={adapter}"], reserved=set())
    with pytest.raises(OpenchatError, match="--lora y=: expected NAME=ADAPTER_DIR"):
        parse_lora_options(["y="], reserved=set())
