"""Benchmark `serve --lora`: what serving adapters unmerged costs in decode tokens/s.

One engine (in this process) with two rank-16 adapters on every attention and MLP projection;
the same fixed greedy prompts at concurrency N, run three ways side by side: all for the base,
half base / half one adapter, and spread over base + both adapters (all in the same batches).
Prints tokens/s and the ratio to the base-only run.

    python benchmarks/bench_serve.py --save-model /tmp/m40 --size 40m  # once: a 40M random model
    python benchmarks/bench_lora.py --model /tmp/m40
    python benchmarks/bench_lora.py --size tiny --max-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_quantize import PROMPTS  # noqa: E402


def make_adapter(model: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(model)),
        LoraConfig(
            r=16,
            lora_alpha=32,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.02)
    peft_model.save_pretrained(out)
    return out


async def _run(engine, prompts, adapters, max_tokens: int, concurrency: int) -> float:
    import time

    from openchat_cli.serve.engines.base import SamplingParams

    queue = list(range(len(prompts)))
    done = 0

    async def worker() -> None:
        nonlocal done
        while queue:
            i = queue.pop(0)
            params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, adapter=adapters[i])
            async for event in engine.generate(prompts[i], params, f"b{i}"):
                done += len(event.token_ids)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--size", default="40m", choices=["tiny", "small", "40m"])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mix (best kept)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    model = args.model
    if model is None:
        from benchmarks.bench_serve import make_model

        model = make_model(work / "model", args.size)
    adapters = {"a": str(make_adapter(model, work / "a", 1)), "b": str(make_adapter(model, work / "b", 2))}
    from openchat_cli.model_dir import load_tokenizer
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine
    from openchat_cli.templates import Conversation, get_template

    tokenizer = load_tokenizer(model)
    template = get_template("openchat_3.5")
    prompts = [
        template.encode_prompt(tokenizer, Conversation.from_dict({"messages": [{"role": "user", "content": p}]}))
        for p in PROMPTS
    ]
    engine = TransformersEngine(model, tokenizer=tokenizer, adapters=adapters, max_batch_size=64)
    mixes = {
        "base only": [None] * len(prompts),
        "half adapter a": [None if i % 2 else "a" for i in range(len(prompts))],
        "base + a + b": [(None, "a", "b")[i % 3] for i in range(len(prompts))],
    }

    async def go() -> dict[str, float]:
        await engine.start()
        try:
            best = {name: 0.0 for name in mixes}
            for _ in range(args.rounds):  # interleaved, so machine noise hits every mix alike
                for name, mix in mixes.items():
                    best[name] = max(best[name], await _run(engine, prompts, mix, args.max_tokens, args.concurrency))
            return best
        finally:
            await engine.shutdown()

    results = asyncio.run(go())
    print(f"model {model} · {len(prompts)} prompts × {args.max_tokens} tokens · concurrency {args.concurrency}")
    for name, tps in results.items():
        print(f"{name:>16}  {tps:8.1f} tok/s  ratio {tps / results['base only']:.2f}")


if __name__ == "__main__":
    main()
