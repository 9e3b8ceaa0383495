"""The transformers serving engine against an earlier version of itself, in one process, side by side.

Why in-process: on a shared machine the HTTP numbers of two servers drift with the neighbours'
load; here both engines run the same work alternately in one process, so their ratio holds.
The earlier engine is read from git (`--baseline REF`, default the commit before the engine-speed
work) and loaded beside the current one.

Parts, each printed as baseline vs current and their ratio:
- sampling: one step's next-token choice at 32 rows x the model's vocabulary (temperature 1, and
  with top-p 0.9);
- prefill: a wave of 32 ShareGPT-like prompts (tokens computed, and time);
- engine: tokens/s and TTFT p50 at concurrency 1, 8 and 32 (128-token replies, ragged prompts);
- dtype: the current engine in float32 and bfloat16;
- packed: the current engine with its Linear layers on F.linear vs on prepacked oneDNN weights
  (packed_linear.py), in float32 and bfloat16;
- fast: the current engine with the transformers forward vs fast_llama.py's forward
  (`--fast-forward off,on`), per `--dtypes`: the in-process decode step (ms per step at batches
  1, 8 and 32, process CPU time) and tokens/s, TTFT p50 at each level;
- kv: the current engine's padded KV batch (`kv_cache="padded"`) vs its ragged cache (per-sequence
  buffers, ragged decode attention, per-prompt packed prefill): the prefill wave and c=1/8/32;
- prefill-thread: the current engine prefilling on its scheduler thread vs on a thread of its own
  beside the decode steps (`prefill_thread=True`), with each thread's CPU ms per token;
- wide: the current engine on its own thread count (`--threads`, default every CPU but one, as the
  engine process runs it) vs the same with each forward allowed every CPU where that times faster
  (`wide_threads`, widening.py); `--hog` runs both beside a busy process (a loaded machine).

`--threads N` sets torch's threads for every engine (the engine process runs 1 on a 2-CPU box).

    python benchmarks/bench_serve_engine.py --size 40m
    python benchmarks/bench_serve_engine.py --model DIR --levels 1,8 --max-tokens 64
    python benchmarks/bench_serve_engine.py --model DIR --parts kv
    python benchmarks/bench_serve_engine.py --model DIR --parts packed
    python benchmarks/bench_serve_engine.py --model DIR --parts fast --dtypes float32,bfloat16
    python benchmarks/bench_serve_engine.py --model DIR --parts prefill-thread --threads 1 --levels 8,32
    python benchmarks/bench_serve_engine.py --model DIR --parts wide --levels 1,8,32 [--hog]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_serve import drive_engine, make_model, sharegpt_like_prompts  # noqa: E402

BASELINE_REF = "fa01902"  # main before the engine-speed work (issue 13)
ENGINE_PATH = "openchat_cli/serve/engines/transformers_engine.py"


def baseline_module(ref: str):
    """The engine module as it was at `ref`, importable beside the current one."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:{ENGINE_PATH}"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="baseline-engine-")) / "baseline_transformers_engine.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_transformers_engine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def best_of(fn, repeats: int) -> float:
    """Fastest of `repeats` runs, in seconds (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def compare_sampling(old_mod, vocab: int, repeats: int) -> list[dict]:
    import torch

    from openchat_cli.serve.engines.base import SamplingParams
    from openchat_cli.serve.engines.sampling import new_row_state, sample

    rows = []
    logits = torch.randn(32, vocab, generator=torch.Generator().manual_seed(0))
    for label, params in [
        ("temperature 1", SamplingParams(max_tokens=1, temperature=1.0, seed=1)),
        ("top_p 0.9", SamplingParams(max_tokens=1, temperature=1.0, top_p=0.9, seed=1)),
    ]:
        old_seqs = []
        for i in range(32):
            seq = old_mod._Seq(request_id=str(i), prompt=[1], params=params, queue=None)
            seq.generator = torch.Generator().manual_seed(i)
            old_seqs.append(seq)
        holder = type("Holder", (), {"vocab_limit": vocab})()
        states = [new_row_state(params, [1], vocab, "cpu") for _ in range(32)]
        with torch.inference_mode():
            old = best_of(lambda h=holder, q=old_seqs: old_mod.TransformersEngine._pick(h, logits.clone(), q), repeats)
            new = best_of(lambda st=states: sample(logits.clone(), st, vocab), repeats)
        rows.append(
            {
                "part": f"sampling 32x{vocab} {label}",
                "baseline_ms": old * 1000,
                "current_ms": new * 1000,
                "speedup": old / new,
            }
        )
    return rows


def compare_prefill(old_engine, new_engine, prompts: list[list[int]], repeats: int) -> list[dict]:
    import torch

    from openchat_cli.serve.engines.base import SamplingParams

    params = SamplingParams(max_tokens=4, temperature=0.0)
    real = sum(len(p) for p in prompts)
    padded = len(prompts) * max(len(p) for p in prompts)

    def run(engine, module):
        seqs = [module._Seq(request_id=str(i), prompt=p, params=params, queue=None) for i, p in enumerate(prompts)]
        with torch.inference_mode():
            engine._prefill(seqs)

    def computed(engine, module, fallback: int) -> int:
        """Tokens one prefill of the wave computes (engines that do not count them: `fallback`)."""
        if not hasattr(engine, "prefill_tokens"):
            return fallback
        before = engine.prefill_tokens
        run(engine, module)
        return engine.prefill_tokens - before

    old_mod = sys.modules[type(old_engine).__module__]
    new_mod = sys.modules[type(new_engine).__module__]
    old = best_of(lambda: run(old_engine, old_mod), repeats)
    new = best_of(lambda: run(new_engine, new_mod), repeats)
    return [
        {
            "part": f"prefill {len(prompts)} ragged prompts ({real} tokens)",
            "baseline_tokens": computed(old_engine, old_mod, padded),
            "current_tokens": computed(new_engine, new_mod, real),
            "baseline_ms": old * 1000,
            "current_ms": new * 1000,
            "speedup": old / new,
        }
    ]


def thread_cpu_s(thread) -> float:
    """CPU seconds a running thread has used (Linux /proc; 0 elsewhere or when it is gone)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, AttributeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def engine_level(engine, prompts: list[list[int]], concurrency: int, max_tokens: int) -> dict:
    await engine.start()  # its threads exist from here on
    threads = [getattr(engine, "_thread", None), getattr(engine, "_prefiller", None)]
    counts, ttfts, wall = await drive_engine(engine, prompts, concurrency, max(8, concurrency), max_tokens)
    cpu = [thread_cpu_s(t) if t is not None else 0.0 for t in threads]  # before the threads end
    await engine.shutdown()
    return {
        "tok_s": sum(counts) / wall,
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "scheduler_cpu_ms_per_token": cpu[0] * 1000 / sum(counts),
        "prefill_thread_cpu_ms_per_token": cpu[1] * 1000 / sum(counts),
    }


def decode_step_ms(engine, batch: int, prompt_len: int = 100, steps: int = 100) -> float:
    """Process CPU ms of one decode step of `batch` rows through the engine's ragged forward, on one
    thread (prompts prefilled first; the cache grows by one column per step, as in serving)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU time of one thread: OpenMP workers spinning would count too
    try:
        return _decode_steps(engine, batch, prompt_len, steps)
    finally:
        torch.set_num_threads(threads)


def prefill_ms(engine, prompts: list[list[int]], pack_tokens: int = 512) -> float:
    """Process CPU ms, on one thread, of prefilling `prompts` (shortest first, packs of at most
    `pack_tokens`, as the engine groups them) through the engine's ragged forward."""
    import torch

    from openchat_cli.serve.engines.kv_cache import RaggedCache, SequenceKV
    from openchat_cli.serve.engines.prefill import pack

    groups: list[list[list[int]]] = []
    tokens = 0
    for prompt in sorted(prompts, key=len):
        if groups and tokens + len(prompt) <= pack_tokens:
            groups[-1].append(prompt)
            tokens += len(prompt)
        else:
            groups.append([prompt])
            tokens = len(prompt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.process_time()
        with torch.inference_mode():
            for group in groups:
                rows = [SequenceKV(engine._layers, len(p) + 8) for p in group]
                packed = pack(group, engine.device, None, engine.model.dtype)
                cache = RaggedCache(rows, packed.segments)
                engine._ragged_forward(cache, packed.input_ids, packed.position_ids, packed.last_positions)
        return (time.process_time() - started) * 1000
    finally:
        torch.set_num_threads(threads)


def _decode_steps(engine, batch: int, prompt_len: int, steps: int) -> float:
    import torch

    from openchat_cli.serve.engines.kv_cache import RaggedCache, SequenceKV
    from openchat_cli.serve.engines.prefill import pack

    rows = [SequenceKV(engine._layers, prompt_len + steps + 8) for _ in range(batch)]
    prompts = [[(7 * i + j) % (engine.vocab_limit - 4) + 4 for j in range(prompt_len)] for i in range(batch)]
    with torch.inference_mode():
        packed = pack(prompts, engine.device, None, engine.model.dtype)
        engine._ragged_forward(
            RaggedCache(rows, packed.segments), packed.input_ids, packed.position_ids, packed.last_positions
        )
        ids = torch.tensor([[5]] * batch)
        started = time.process_time()
        for step in range(steps):
            positions = torch.tensor([[prompt_len + step]] * batch)
            engine._ragged_forward(RaggedCache(rows), ids, positions, 1)
        return (time.process_time() - started) / steps * 1000


def compare_fast_forward(
    model, tokenizer, modes: list[str], dtypes: list[str], prompts, levels, max_tokens
) -> list[dict]:
    """The transformers forward vs fast_llama.py's, per dtype: decode step time, then the engine."""
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    rows = []
    for dtype in dtypes:
        engines = {
            mode: TransformersEngine(
                model, tokenizer=tokenizer, max_batch_size=64, dtype=dtype, fast_forward=mode == "on"
            )
            for mode in modes
        }
        print(f"  {dtype}: fast forward {', '.join(f'{m}: {e._fast is not None}' for m, e in engines.items())}")
        for batch in (1, 8, 32):
            times = {mode: min(decode_step_ms(e, batch) for _ in range(2)) for mode, e in engines.items()}
            row = {"part": f"{dtype} decode step batch {batch}", **{f"{m}_ms": t for m, t in times.items()}}
            if len(modes) == 2:
                row["speedup"] = times[modes[0]] / times[modes[1]]
            rows.append(row)
            print(
                "  " + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True
            )
        times = {mode: min(prefill_ms(e, prompts) for _ in range(2)) for mode, e in engines.items()}
        row = {
            "part": f"{dtype} prefill {len(prompts)} prompts (packs of 512)",
            **{f"{m}_ms": t for m, t in times.items()},
        }
        if len(modes) == 2:
            row["speedup"] = times[modes[0]] / times[modes[1]]
        rows.append(row)
        print("  " + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if len(modes) == 2 and levels:
            a, b = engines[modes[0]], engines[modes[1]]
            labels = (f"{dtype}_fast_{modes[0]}", f"{dtype}_fast_{modes[1]}")
            rows += compare_engines(a, b, labels, prompts, levels, max_tokens)
        del engines
    return rows


def compare_engines(a, b, labels: tuple[str, str], prompts, levels: list[int], max_tokens: int) -> list[dict]:
    rows = []
    for c in levels:
        asyncio.run(engine_level(a, prompts, 1, 4))  # warm both
        asyncio.run(engine_level(b, prompts, 1, 4))
        first = asyncio.run(engine_level(a, prompts, c, max_tokens))
        second = asyncio.run(engine_level(b, prompts, c, max_tokens))
        rows.append(
            {
                "part": f"engine c={c} {labels[0]} vs {labels[1]}",
                f"{labels[0]}_tok_s": first["tok_s"],
                f"{labels[1]}_tok_s": second["tok_s"],
                "speedup": second["tok_s"] / first["tok_s"],
                f"{labels[0]}_ttft_p50_ms": first["ttft_p50_ms"],
                f"{labels[1]}_ttft_p50_ms": second["ttft_p50_ms"],
                f"{labels[0]}_cpu_ms_per_token": first["scheduler_cpu_ms_per_token"]
                + first["prefill_thread_cpu_ms_per_token"],
                f"{labels[1]}_cpu_ms_per_token": second["scheduler_cpu_ms_per_token"]
                + second["prefill_thread_cpu_ms_per_token"],
            }
        )
        print(
            "  " + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True
        )
    return rows


def compare_widening(model, tokenizer, threads, hog: bool, dtypes, prompts, levels, max_tokens) -> list[dict]:
    """The engine on its narrow thread count vs the same with per-forward widening (part wide)."""
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine

    cores = len(os.sched_getaffinity(0))
    narrow = threads or max(1, cores - 1)
    if cores <= narrow:
        raise SystemExit(f"part wide needs more CPUs than the narrow count: {cores} CPUs, {narrow} threads")
    rows = []
    for dtype in dtypes:
        common = dict(tokenizer=tokenizer, max_batch_size=64, threads=narrow, prefill_thread=False, dtype=dtype)
        fixed = TransformersEngine(model, **common)
        auto = TransformersEngine(model, wide_threads=cores, **common)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if hog else None
        print(
            f"  {dtype}: {narrow} thread(s) vs up to {cores} per forward{'  ·  beside a busy process' if hog else ''}"
        )
        try:
            labels = (f"{dtype}_{narrow}_threads", f"{dtype}_widening")
            rows += compare_engines(fixed, auto, labels, prompts, levels, max_tokens)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        print("  widening chose: " + json.dumps(auto._widths.describe()["groups"]))
        del fixed, auto
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--size", default="40m", choices=["tiny", "small", "40m"])
    parser.add_argument("--baseline", default=BASELINE_REF, help="git ref of the engine to compare with")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", default="sampling,prefill,engine,dtype")
    parser.add_argument("--fast-forward", default="off,on", help="fast forward modes to compare (part fast)")
    parser.add_argument("--dtypes", default="float32", help="dtypes for parts fast and wide, e.g. float32,bfloat16")
    parser.add_argument("--threads", type=int, help="torch threads for every engine (default: torch's)")
    parser.add_argument("--hog", action="store_true", help="part wide: beside a process that keeps one CPU busy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    levels = [int(x) for x in args.levels.split(",") if x]

    from openchat_cli.model_dir import load_tokenizer, model_template
    from openchat_cli.serve.engines.transformers_engine import TransformersEngine
    from openchat_cli.templates import Conversation, get_template

    model = args.model or make_model(Path(tempfile.mkdtemp(prefix="bench-engine-")) / "model", args.size)
    tokenizer = load_tokenizer(model)
    template = get_template(model_template(model))
    prompts = [
        template.encode_prompt(tokenizer, Conversation.from_dict({"messages": [{"role": "user", "content": text}]}))
        for text in sharegpt_like_prompts(32)
    ]
    if parts in ({"fast"}, {"wide"}):  # engines of their own, per dtype: no current or older engine needed
        print(f"model {model}  ·  levels {levels}  ·  {args.max_tokens}-token replies")
        dtypes = args.dtypes.split(",")
        if parts == {"fast"}:
            rows = compare_fast_forward(
                model, tokenizer, args.fast_forward.split(","), dtypes, prompts, levels, args.max_tokens
            )
        else:
            rows = compare_widening(model, tokenizer, args.threads, args.hog, dtypes, prompts, levels, args.max_tokens)
        if args.json:
            print(json.dumps({"rows": rows}, indent=2))
        return
    current = TransformersEngine(model, tokenizer=tokenizer, max_batch_size=64, threads=args.threads)
    own = {"kv", "packed", "dtype", "prefill-thread"}
    if parts <= own:  # the current engine against itself: no older engine needed
        args.baseline = "the padded batch"
        baseline = TransformersEngine(
            model, tokenizer=tokenizer, max_batch_size=64, kv_cache="padded", threads=args.threads
        )
    else:
        old_mod = baseline_module(args.baseline)
        baseline = old_mod.TransformersEngine(model, tokenizer=tokenizer, max_batch_size=64)
    print(
        f"model {model}  ·  vocab {current.vocab_size}  ·  baseline {args.baseline}  ·  "
        f"prompt tokens p50 {statistics.median(len(p) for p in prompts)}, max {max(len(p) for p in prompts)}"
    )
    rows: list[dict] = []
    if "sampling" in parts:
        rows += compare_sampling(old_mod, current.vocab_size, args.repeats)
    if "prefill" in parts:
        rows += compare_prefill(baseline, current, prompts, max(2, args.repeats // 2))
    for row in rows:
        print("  " + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    if "engine" in parts:
        rows += compare_engines(baseline, current, ("baseline", "current"), prompts, levels, args.max_tokens)
    if "kv" in parts:
        padded = TransformersEngine(
            model, tokenizer=tokenizer, max_batch_size=64, kv_cache="padded", threads=args.threads
        )
        rows += compare_prefill(padded, current, prompts, max(2, args.repeats // 2))
        rows[-1]["part"] += " padded batch vs ragged"
        print("  " + json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()}))
        rows += compare_engines(padded, current, ("padded", "ragged"), prompts, levels, args.max_tokens)
    if "packed" in parts:  # Linear layers on F.linear vs prepacked oneDNN weights, fp32 and bf16
        for dtype in ("float32", "bfloat16"):
            plain = TransformersEngine(model, tokenizer=tokenizer, max_batch_size=64, dtype=dtype, packed_linear=False)
            packed = TransformersEngine(model, tokenizer=tokenizer, max_batch_size=64, dtype=dtype, packed_linear=True)
            print(f"  {dtype}: linear layers {packed.packing.describe()}")
            rows += compare_engines(
                plain, packed, (f"{dtype}_F.linear", f"{dtype}_packed"), prompts, levels, args.max_tokens
            )
            del plain, packed
    if "prefill-thread" in parts:
        overlapped = TransformersEngine(
            model, tokenizer=tokenizer, max_batch_size=64, threads=args.threads, prefill_thread=True
        )
        rows += compare_engines(
            current, overlapped, ("inline_prefill", "prefill_thread"), prompts, levels, args.max_tokens
        )
        del overlapped
    if "dtype" in parts:
        del baseline
        bf16 = TransformersEngine(model, tokenizer=tokenizer, max_batch_size=64, dtype="bfloat16", threads=args.threads)
        rows += compare_engines(current, bf16, ("fp32", "bf16"), prompts, levels, args.max_tokens)
    if args.json:
        print(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
