"""Benchmark ragged decode attention: padded masked sdpa vs a per-row sdpa loop vs the C kernel.

One decode step's attention for one layer: B sequences, each one new query token against its own
KV cache (lengths drawn from 50..880, as a ShareGPT-like serving batch has them). Three ways,
timed side by side in one run (best of --repeat rounds taken in turns, each the mean of --iters calls):
  padded  the batch's cache padded to the longest row, repeat_kv + one sdpa with a boolean mask
          (what transformers' sdpa attention does with a padded cache)
  loop    one sdpa per sequence over its exact-length cache (decode_attention_torch, the fallback)
  kernel  decode_attention (the C kernel in openchat_cli/serve/engines/ragged_attention.c)
Prints ms per call and the ratios padded/kernel and loop/kernel; --json prints the rows as JSON.
--prefill adds packed prefill (causal within each prompt of one row): sdpa(is_causal) per prompt,
as the engine's packed prefill does it, vs prefill_attention, on three prompt-length mixes.

    python benchmarks/bench_attention.py                 # B 1/8/32, D 32/64, fp32/bf16, 1 thread
    python benchmarks/bench_attention.py --threads 4 --batch 64 --head-dim 128
    python benchmarks/bench_attention.py --prefill --batch 32

Numbers depend on the machine and what else runs on it: compare the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from openchat_cli.serve.engines.ragged_attention import (  # noqa: E402
    decode_attention,
    decode_attention_torch,
    kernel_status,
    prefill_attention,
    prefill_attention_torch,
)

# Packed prefill mixes: (name, number of prompts, shortest, longest).
PREFILL_MIXES = [("chat turns", 32, 10, 60), ("sharegpt", 32, 20, 400), ("long", 4, 600, 1000)]


def ragged_lengths(batch: int, low: int, high: int, seed: int) -> list[int]:
    """Cache lengths of one batch, uniform in [low, high], the same for every method."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, (batch,), generator=g).tolist()


def make_case(lengths: list[int], q_heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, room: int):
    """Query, per-row key/value views (with `room` spare rows per head, as a growing cache has),
    and the padded cache + mask the padded method reads."""
    g = torch.Generator().manual_seed(0)
    B, width = len(lengths), max(lengths)
    query = torch.randn(B, q_heads, head_dim, generator=g).to(dtype)
    keys = [torch.randn(kv_heads, n + room, head_dim, generator=g).to(dtype)[:, :n] for n in lengths]
    values = [torch.randn(kv_heads, n + room, head_dim, generator=g).to(dtype)[:, :n] for n in lengths]
    padded_k = torch.zeros(B, kv_heads, width, head_dim, dtype=dtype)
    padded_v = torch.zeros_like(padded_k)
    mask = torch.zeros(B, 1, 1, width, dtype=torch.bool)
    for i, n in enumerate(lengths):  # left-padded, as the engine's batch is
        padded_k[i, :, width - n :] = keys[i]
        padded_v[i, :, width - n :] = values[i]
        mask[i, ..., width - n :] = True
    return query, keys, values, padded_k, padded_v, mask


def padded_sdpa(query, padded_k, padded_v, mask, scale):
    groups = query.shape[1] // padded_k.shape[1]
    k = padded_k.repeat_interleave(groups, dim=1)
    v = padded_v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query.unsqueeze(2), k, v, attn_mask=mask, scale=scale).squeeze(2)


CLOCK = time.perf_counter


def best_ms(fns: dict, iters: int, repeat: int) -> dict[str, float]:
    """Best-of-`repeat` mean ms per call of each function, the methods taking turns in every round
    (so a burst of load from other processes hits all of them alike)."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            start = CLOCK()
            for _ in range(iters):
                fn()
            best[name] = min(best[name], (CLOCK() - start) / iters * 1e3)
    return best


def measure(lengths: list[int], args, head_dim: int, dtype: torch.dtype) -> dict[str, float]:
    """ms per call of the three methods on one batch."""
    q, ks, vs, pk, pv, mask = make_case(lengths, args.q_heads, args.kv_heads, head_dim, dtype, room=16)
    scale = head_dim**-0.5
    fns = {
        "padded": lambda: padded_sdpa(q, pk, pv, mask, scale),
        "loop": lambda: decode_attention_torch(q, ks, vs, scale),
        "kernel": lambda: decode_attention(q, ks, vs, scale),
    }
    return best_ms(fns, args.iters, args.repeat)


def measure_prefill(lengths: list[int], args, head_dim: int, dtype: torch.dtype) -> dict[str, float]:
    """ms per call: causal sdpa per segment (the engine's packed prefill today) vs prefill_attention."""
    g = torch.Generator().manual_seed(1)
    n = sum(lengths)
    # [N, H, D] in memory seen as [H, N, D], as transformers' projections leave them.
    q = torch.randn(n, args.q_heads, head_dim, generator=g).to(dtype).transpose(0, 1)
    k = torch.randn(n, args.kv_heads, head_dim, generator=g).to(dtype).transpose(0, 1)
    v = torch.randn(n, args.kv_heads, head_dim, generator=g).to(dtype).transpose(0, 1)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    scale = head_dim**-0.5
    fns = {
        "sdpa": lambda: prefill_attention_torch(q, k, v, starts, lengths, scale),
        "kernel": lambda: prefill_attention(q, k, v, starts, lengths, scale),
    }
    return best_ms(fns, max(1, args.iters // 4), args.repeat)


def prefill_rows(args) -> list[dict]:
    rows = []
    if not args.json:
        print("\nprefill (causal within each prompt of one packed row)")
        print(f"{'dtype':<9} {'D':>4} {'mix':<11} {'tokens':>6} {'sdpa ms':>9} {'kernel ms':>10} {'sdpa/kern':>10}")
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for head_dim in args.head_dim:
            for name, count, low, high in PREFILL_MIXES:
                lengths = ragged_lengths(count, low, high, seed=count + low)
                ms = measure_prefill(lengths, args, head_dim, dtype)
                row = {
                    "dtype": dtype_name,
                    "head_dim": head_dim,
                    "mix": name,
                    "tokens": sum(lengths),
                    "sdpa_ms": ms["sdpa"],
                    "kernel_ms": ms["kernel"],
                    "sdpa_over_kernel": ms["sdpa"] / ms["kernel"],
                }
                rows.append(row)
                if not args.json:
                    print(
                        f"{dtype_name:<9} {head_dim:>4} {name:<11} {row['tokens']:>6} {ms['sdpa']:>9.3f} "
                        f"{ms['kernel']:>10.3f} {row['sdpa_over_kernel']:>9.2f}x"
                    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--head-dim", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--q-heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--min-len", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=880)
    ap.add_argument("--threads", type=int, default=1, help="torch (and kernel) threads; the serve engine runs 1")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time instead of wall time (steadier on a machine shared with other work)",
    )
    ap.add_argument("--prefill", action="store_true", help="also packed prefill: per-segment sdpa vs the kernel")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = []
    if not args.json:
        print(
            f"{kernel_status()}; {args.clock} clock; threads {args.threads}; Hq {args.q_heads}, Hkv {args.kv_heads}; "
            f"lengths {args.min_len}..{args.max_len}"
        )
        print(
            f"{'dtype':<9} {'D':>4} {'B':>4} {'real%':>6} {'padded ms':>10} {'loop ms':>9} {'kernel ms':>10} "
            f"{'padded/kern':>12} {'loop/kern':>10}"
        )
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        for head_dim in args.head_dim:
            for batch in args.batch:
                lengths = ragged_lengths(batch, args.min_len, args.max_len, seed=batch)
                ms = measure(lengths, args, head_dim, dtype)
                padded, loop, kernel = ms["padded"], ms["loop"], ms["kernel"]
                row = {
                    "dtype": dtype_name,
                    "head_dim": head_dim,
                    "batch": batch,
                    "real_share": sum(lengths) / (batch * max(lengths)),
                    "padded_ms": padded,
                    "loop_ms": loop,
                    "kernel_ms": kernel,
                    "padded_over_kernel": padded / kernel,
                    "loop_over_kernel": loop / kernel,
                }
                rows.append(row)
                if not args.json:
                    print(
                        f"{dtype_name:<9} {head_dim:>4} {batch:>4} {row['real_share']:>6.0%} {padded:>10.3f} "
                        f"{loop:>9.3f} {kernel:>10.3f} {row['padded_over_kernel']:>11.2f}x "
                        f"{row['loop_over_kernel']:>9.2f}x"
                    )
    prefill = prefill_rows(args) if args.prefill else []
    if args.json:
        report = {"kernel": kernel_status(), "clock": args.clock, "threads": args.threads, "rows": rows}
        if args.prefill:
            report["prefill_rows"] = prefill
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
