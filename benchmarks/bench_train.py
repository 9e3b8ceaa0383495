"""Benchmark `openchat train`'s data path on CPU: multipack vs naive padded batches, per-document
attention vs a masked pack, and the supervised-positions-only LM head vs full-vocabulary logits.

    python benchmarks/bench_train.py                   # ~3 minutes on 2 busy cores
    python benchmarks/bench_train.py --json            # one JSON object (for scripts)
    python benchmarks/bench_train.py --lengths short --capacity 2048   # the old short-chat setting

Conversation lengths are ShareGPT-shaped by default: log-normal, median ~1,150 and mean ~1,550
tokens, ~9% cut at the 4,096-token maximum (as a length-capped tokenize leaves them), packed
into 4,096-token micro-batches; `--lengths short` draws the earlier median-~100 distribution.
About 60% of each sequence's tokens are supervised (the assistant turns), as in chat
fine-tuning. Measurements, printed side by side with their ratios:

1. packing: per-epoch efficiency (real tokens / token capacity) of our multipack sampler, with
   and without the epoch's final partial step, tokens dropped (none), vs random batches padded
   to their longest sequence at the same average tokens per batch;
2. useful (non-pad) tokens per second training a tiny Llama (CPU, 1 thread), interleaved step by
   step in one process so background load hits all alike:
   packed = what `openchat train` runs (per-document attention, `attention.PACKED`),
   packed_masked = the same packs through stock `sdpa` (a pack x pack mask from the position
   resets), padded = padded batches with an attention mask;
3. peak memory of one forward+backward over a 2048-token pack with Llama 3's 128k vocabulary:
   LM head at supervised positions only, in recomputed chunks (what training runs) vs full
   logits, plus row selection without chunking (each in its own process: peak RSS growth
   during the step, with the kernel's high-water mark reset first).

With `--dpo`: DPO instead (`train --method dpo`): preference pairs (a shared prompt, two
replies) packed padding-free, a pair's chosen and rejected in one micro-batch, per-sequence
log-probs summed by segment, vs TRL's layout (chosen and rejected stacked into one [2B, longest]
batch padded on the right, attention mask, full logits); pairs/s and useful tokens/s
interleaved step by step, and peak memory of one forward+backward over the same pairs.

    python benchmarks/bench_train.py --dpo --pairs 2000 --seconds 60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openchat_cli.train.dataset import TokenizedData  # noqa: E402
from openchat_cli.train.sampler import MultipackSampler, PackSpec  # noqa: E402

# log-normal (mu, sigma) of sequence lengths: ShareGPT-shaped (median ~1,150, mean ~1,550 once
# capped at 4,096) and the short chats the benchmark drew before (median ~100).
LENGTHS = {"sharegpt": (7.05, 0.95), "short": (4.6, 0.9)}


def skewed_data(n: int, vocab: int, max_len: int, seed: int = 0, shape: str = "short") -> TokenizedData:
    """Random token ids with log-normal lengths; the last ~60% of each sequence is supervised."""
    rng = np.random.default_rng(seed)
    mu, sigma = LENGTHS[shape]
    lengths = np.clip(rng.lognormal(mu, sigma, n), 16, max_len).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(10, vocab, offsets[-1])
    weights = np.zeros(offsets[-1], dtype=np.float32)
    for a, b in zip(offsets[:-1], offsets[1:]):
        weights[a + int((b - a) * 0.4) : b] = 1.0
    return TokenizedData(Path("synthetic"), ids, weights, offsets, {})


def padded_batches(lengths: np.ndarray, batch: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(len(lengths))
    return [order[i : i + batch] for i in range(0, len(order), batch)]


def llama(vocab: int, hidden: int, layers: int, seed: int = 0, attn: str = "sdpa", max_len: int = 4096):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=hidden * 11 // 4,
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config)


# -- 1. packing efficiency ------------------------------------------------------------------------
def packing(data: TokenizedData, capacity: int, epochs: int = 2) -> dict[str, float]:
    lengths = data.lengths
    sampler = MultipackSampler(lengths, PackSpec(capacity=capacity, world=8, seed=0), epochs=epochs)
    per_batch = max(1, int(capacity // lengths.mean()))
    batches = padded_batches(lengths, per_batch)
    padded = sum(int(lengths[b].sum()) for b in batches) / sum(len(b) * int(lengths[b].max()) for b in batches)
    return {
        "multipack": sampler.efficiency(),
        "padded": padded,
        "per_batch": per_batch,
        "per_epoch": [sampler.epoch_efficiency(e) for e in range(epochs)],
        "per_epoch_full_steps": [sampler.epoch_efficiency(e, last_step=False) for e in range(epochs)],
        "dropped_tokens": int(lengths.sum()) * epochs - sampler.kept_tokens(),
    }


# -- 2. useful tokens per second ------------------------------------------------------------------
THROUGHPUT_PATHS = ("packed", "packed_masked", "padded")


def throughput(data: TokenizedData, capacity: int, seconds: float) -> dict[str, float]:
    """Useful tokens/s of each path; each gets its own copy of the same initial model."""
    import torch
    import torch.nn.functional as F

    from openchat_cli.train import attention
    from openchat_cli.train.collate import pack, pad
    from openchat_cli.train.loss import PackedLM

    impl = attention.choose(torch.device("cpu"))
    models = {
        "packed": llama(4096, 128, 2, attn=impl, max_len=capacity),
        "packed_masked": llama(4096, 128, 2, attn="sdpa", max_len=capacity),
        "padded": llama(4096, 128, 2, attn="sdpa", max_len=capacity),
    }
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    lms = {"packed": PackedLM(models["packed"], impl), "packed_masked": PackedLM(models["packed_masked"], "sdpa")}
    lengths = data.lengths
    sampler = MultipackSampler(lengths, PackSpec(capacity=capacity, seed=1))
    per_batch = max(1, int(capacity // lengths.mean()))
    batches = padded_batches(lengths, per_batch, seed=1)

    def packed_step(name: str, i: int) -> int:
        (rows,) = sampler.batches(i % len(sampler), 0)
        b = pack(data, rows)
        loss = lms[name](b) / max(b.weight_sum, 1.0)
        loss.backward()
        opts[name].step()
        opts[name].zero_grad()
        return b.num_tokens

    def padded_step(name: str, i: int) -> int:
        b = pad(data, batches[i % len(batches)])
        model = models[name]
        hidden = model.model(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False
        ).last_hidden_state
        keep = b["label_weights"] > 0  # same supervised-only head: only the padding differs
        ce = F.cross_entropy(model.lm_head(hidden[keep]).float(), b["labels"][keep], reduction="none")
        loss = (ce * b["label_weights"][keep]).sum() / max(float(b["label_weights"].sum()), 1.0)
        loss.backward()
        opts[name].step()
        opts[name].zero_grad()
        return int(b["attention_mask"].sum())

    steps = {"packed": packed_step, "packed_masked": packed_step, "padded": padded_step}
    for name, fn in steps.items():  # warm-up
        fn(name, 0)
    spent = dict.fromkeys(steps, 0.0)
    tokens = dict.fromkeys(steps, 0)
    i = 1
    while sum(spent.values()) < seconds:
        for name, fn in steps.items():
            t0 = time.perf_counter()
            tokens[name] += fn(name, i)
            spent[name] += time.perf_counter() - t0
        i += 1
    return {name: tokens[name] / spent[name] for name in spent} | {"steps": i - 1}


# -- 3. peak memory -------------------------------------------------------------------------------
MEMORY_MODES = ("chunked", "supervised", "full")


def memory_child(mode: str, tokens: int, vocab: int) -> None:
    """One forward+backward in a fresh process; prints peak RSS growth in MiB as JSON.

    chunked: supervised positions only, head+CE in recomputed chunks (what training uses);
    supervised: supervised positions only, one head call; full: logits for every token."""
    import torch

    from openchat_cli.train.collate import pack
    from openchat_cli.train.loss import PackedLM

    torch.set_num_threads(1)
    model = llama(vocab, 64, 2)
    lm = PackedLM(model, "sdpa", supervised_only=mode != "full")
    lm.plain_head = mode == "chunked"
    data = skewed_data(400, vocab, 1024, seed=2)
    (rows,) = MultipackSampler(data.lengths, PackSpec(capacity=tokens, shuffle=False)).batches(0, 0)
    batch = pack(data, rows)
    warm = pack(data, rows[:1])
    lm(warm).backward()  # parameter gradients exist before the baseline is taken
    model.zero_grad(set_to_none=False)
    base = reset_peak_rss()
    lm(batch).backward()
    print(json.dumps({"mib": peak_rss() - base, "tokens": batch.num_tokens, "scored": len(batch.target_pos)}))


def _status(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(text.split(f"{field}:", 1)[1].split()[0]) / 1024  # kB -> MiB


def reset_peak_rss() -> float:
    """Set the peak RSS (VmHWM) back to the current RSS (Linux >= 4.0); returns it in MiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_rss() -> float:
    return _status("VmHWM")


def memory(tokens: int, vocab: int) -> dict[str, dict]:
    out = {}
    for mode in MEMORY_MODES:
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", mode, "--pack", str(tokens), "--vocab", str(vocab)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# -- DPO: packed pairs vs padded pairs -------------------------------------------------------------
def pair_data(n: int, vocab: int, max_len: int, seed: int = 0) -> TokenizedData:
    """Random pairs: log-normal prompt and reply lengths (median ~300 and ~250 tokens), weights on
    the replies; rows 2i / 2i + 1 are pair i's chosen / rejected (openchat_cli.train.pairs)."""
    rng = np.random.default_rng(seed)
    prompts = np.clip(rng.lognormal(5.7, 0.9, n), 8, max_len // 2).astype(np.int64)
    replies = np.clip(rng.lognormal(5.5, 0.9, (n, 2)), 4, max_len // 2 - 1).astype(np.int64)
    ids, weights, lengths = [], [], []
    for p, (c, r) in zip(prompts, replies):
        prompt = rng.integers(10, vocab, p)
        for reply in (c, r):
            ids += [prompt, rng.integers(10, vocab, reply)]
            weights += [np.zeros(p, np.float32), np.ones(reply, np.float32)]
            lengths.append(p + reply)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return TokenizedData(Path("synthetic-pairs"), np.concatenate(ids), np.concatenate(weights), offsets, {})


def _padded_dpo_batch(data: TokenizedData, pairs: np.ndarray):
    """TRL's layout: all chosen then all rejected, right-padded to the longest, with a mask."""
    import torch

    from openchat_cli.train.pairs import pair_rows

    rows = pair_rows(pairs)
    rows = np.concatenate([rows[0::2], rows[1::2]])
    width = int(max(data.lengths[rows]))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    weights = torch.zeros((len(rows), width))
    for k, row in enumerate(rows):
        seq, w = data.row(int(row))
        ids[k, : len(seq)] = torch.from_numpy(seq)
        mask[k, : len(seq)] = 1
        weights[k, : len(seq)] = torch.from_numpy(w)
    return ids, mask, weights


def padded_dpo_loss(model, ids, mask, weights, ref, beta: float = 0.1):
    """DPO on a padded batch, the conventional way (full logits, log-softmax, gather)."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    token = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(2)
    logps = (token * weights[:, 1:]).sum(1)
    chosen, rejected = logps.chunk(2)
    return -F.logsigmoid(beta * ((chosen - ref[:, 0]) - (rejected - ref[:, 1]))).sum()


def dpo_throughput(data: TokenizedData, capacity: int, seconds: float) -> dict[str, float]:
    """Pairs/s and useful tokens/s of packed vs padded DPO, interleaved step by step."""
    import torch

    from openchat_cli.train import attention
    from openchat_cli.train.pairs import pair_lengths
    from openchat_cli.train.preference import PreferenceLM, pack_pairs

    impl = attention.choose(torch.device("cpu"))
    models = {
        "packed": llama(4096, 128, 2, attn=impl, max_len=capacity),
        "padded": llama(4096, 128, 2, attn="sdpa", max_len=capacity),
    }
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-5) for name, m in models.items()}
    module = PreferenceLM(models["packed"], impl, "dpo")
    lengths = pair_lengths(data)
    refs = np.zeros((len(lengths), 2))  # the loss's cost does not depend on the reference values
    sampler = MultipackSampler(lengths, PackSpec(capacity=capacity, seed=1))
    per_batch = max(1, int(capacity // lengths.mean()))  # same average tokens per step
    batches = padded_batches(lengths, per_batch, seed=1)

    def packed_step(i: int) -> tuple[int, int]:
        (pairs,) = sampler.batches(i % len(sampler), 0)
        b = pack_pairs(data, pairs, ref_logps=refs)
        (module(b) / max(b.num_pairs, 1)).backward()
        opts["packed"].step()
        opts["packed"].zero_grad()
        return b.num_pairs, b.num_tokens

    def padded_step(i: int) -> tuple[int, int]:
        pairs = batches[i % len(batches)]
        ids, mask, weights = _padded_dpo_batch(data, pairs)
        (padded_dpo_loss(models["padded"], ids, mask, weights, torch.from_numpy(refs[pairs])) / len(pairs)).backward()
        opts["padded"].step()
        opts["padded"].zero_grad()
        return len(pairs), int(mask.sum())

    steps = {"packed": packed_step, "padded": padded_step}
    for fn in steps.values():  # warm-up
        fn(0)
    spent = dict.fromkeys(steps, 0.0)
    done = {name: [0, 0] for name in steps}
    i = 1
    while sum(spent.values()) < seconds:
        for name, fn in steps.items():
            t0 = time.perf_counter()
            pairs, tokens = fn(i)
            spent[name] += time.perf_counter() - t0
            done[name][0] += pairs
            done[name][1] += tokens
        i += 1
    return {
        "pairs_per_s": {n: done[n][0] / spent[n] for n in steps},
        "useful_tokens_per_s": {n: done[n][1] / spent[n] for n in steps},
        "steps": i - 1,
        "pairs_per_padded_batch": per_batch,
    }


def dpo_memory_child(mode: str, tokens: int, vocab: int) -> None:
    """Peak RSS growth (MiB) of one DPO forward+backward over the same pairs, packed or padded."""
    import torch

    from openchat_cli.train.pairs import pair_lengths
    from openchat_cli.train.preference import PreferenceLM, pack_pairs

    torch.set_num_threads(1)
    model = llama(vocab, 64, 2)
    data = pair_data(200, vocab, 1024, seed=2)
    (pairs,) = MultipackSampler(pair_lengths(data), PackSpec(capacity=tokens, shuffle=False)).batches(0, 0)
    refs = np.zeros((len(data) // 2, 2))
    if mode == "packed":
        module = PreferenceLM(model, "sdpa", "dpo")
        module(pack_pairs(data, pairs[:1], ref_logps=refs)).backward()
        model.zero_grad(set_to_none=False)
        base = reset_peak_rss()
        module(pack_pairs(data, pairs, ref_logps=refs)).backward()
    else:
        padded = [_padded_dpo_batch(data, p) for p in (pairs[:1], pairs)]
        padded_dpo_loss(model, *padded[0], torch.from_numpy(refs[pairs[:1]])).backward()
        model.zero_grad(set_to_none=False)
        base = reset_peak_rss()
        padded_dpo_loss(model, *padded[1], torch.from_numpy(refs[pairs])).backward()
    print(json.dumps({"mib": peak_rss() - base, "pairs": len(pairs)}))


def dpo_main(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    data = pair_data(args.pairs, 4096, args.capacity // 2)
    tps = dpo_throughput(data, args.capacity, args.seconds)
    mem = None
    if not args.no_memory:
        mem = {}
        for mode in ("packed", "padded"):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--dpo-memory-child",
                    mode,
                    "--pack",
                    str(args.pack),
                    "--vocab",
                    str(args.vocab),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            mem[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    lengths = data.lengths
    result = {
        "method": "dpo",
        "capacity": args.capacity,
        "pairs": args.pairs,
        "sequence_length": {"median": int(np.median(lengths)), "mean": round(float(lengths.mean()))},
        **tps,
        "ratio_pairs_per_s_packed_vs_padded": tps["pairs_per_s"]["packed"] / tps["pairs_per_s"]["padded"],
        "peak_memory_mib": None if mem is None else {m: mem[m]["mib"] for m in mem},
        "memory_pairs": None if mem is None else mem["packed"]["pairs"],
    }
    if args.json:
        print(json.dumps(result))
        return
    p, u = tps["pairs_per_s"], tps["useful_tokens_per_s"]
    print(
        f"DPO pairs: {args.pairs}, sequence length median {result['sequence_length']['median']}, "
        f"micro-batches of {args.capacity} tokens; padded: {tps['pairs_per_padded_batch']} pairs per batch"
    )
    print(f"{'measurement':40} {'packed':>10} {'padded':>10} {'ratio':>7}")
    print(f"{'pairs/s':40} {p['packed']:>10.2f} {p['padded']:>10.2f} {p['packed'] / p['padded']:>6.2f}x")
    print(
        f"{'useful (non-pad) tokens/s':40} {u['packed']:>10,.0f} {u['padded']:>10,.0f} "
        f"{u['packed'] / u['padded']:>6.2f}x"
    )
    if mem is not None:
        print(
            f"{'peak memory fwd+bwd, same pairs (MiB)':40} {mem['packed']['mib']:>10,.0f} "
            f"{mem['padded']['mib']:>10,.0f} {mem['padded']['mib'] / max(mem['packed']['mib'], 1e-9):>6.2f}x"
            f"  ({mem['packed']['pairs']} pairs, vocab {args.vocab})"
        )
    print(f"(tiny Llama, CPU, 1 thread, {tps['steps']} steps each, interleaved)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", choices=sorted(LENGTHS), default="sharegpt", help="sequence length distribution")
    parser.add_argument("--sequences", type=int, default=20000, help="sequences for the packing comparison")
    parser.add_argument("--capacity", type=int, default=4096, help="tokens per packed micro-batch (and max length)")
    parser.add_argument("--seconds", type=float, default=90.0, help="training time, split between the three paths")
    parser.add_argument("--pack", type=int, default=2048, help="tokens in the memory measurement's pack")
    parser.add_argument("--vocab", type=int, default=128256, help="vocabulary of the memory measurement (Llama 3's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--dpo", action="store_true", help="benchmark DPO: packed vs padded preference pairs")
    parser.add_argument("--pairs", type=int, default=2000, help="preference pairs for --dpo")
    parser.add_argument("--memory-child", choices=MEMORY_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--dpo-memory-child", choices=("packed", "padded"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.pack, args.vocab)
        return
    if args.dpo_memory_child:
        dpo_memory_child(args.dpo_memory_child, args.pack, args.vocab)
        return
    if args.dpo:
        dpo_main(args)
        return

    import torch

    torch.set_num_threads(1)  # steady numbers on a shared machine; the ratio is what matters
    started = time.perf_counter()
    data = skewed_data(args.sequences, 4096, args.capacity, shape=args.lengths)
    lengths = data.lengths
    shape = {
        "sequences": len(lengths),
        "median": int(np.median(lengths)),
        "mean": round(float(lengths.mean())),
        "p99": int(np.percentile(lengths, 99)),
        "max": int(lengths.max()),
        "supervised": round(float(data.supervised_ratio()), 3),
    }
    eff = packing(data, args.capacity)
    tps = throughput(data, args.capacity, args.seconds)
    mem = None if args.no_memory else memory(args.pack, args.vocab)
    tokens_per_s = {name: tps[name] for name in THROUGHPUT_PATHS}
    result = {
        "lengths": args.lengths,
        "capacity": args.capacity,
        "data": shape,
        "packing_efficiency": {
            "multipack": eff["multipack"],
            "padded": eff["padded"],
            "per_epoch": eff["per_epoch"],
            "per_epoch_full_steps": eff["per_epoch_full_steps"],
            "dropped_tokens": eff["dropped_tokens"],
        },
        "useful_tokens_per_s": tokens_per_s,
        "ratio_packed_vs_padded": tps["packed"] / tps["padded"],
        "ratio_packed_masked_vs_padded": tps["packed_masked"] / tps["padded"],
        "ratio_packed_vs_packed_masked": tps["packed"] / tps["packed_masked"],
        "steps_each": tps["steps"],
        "peak_memory_mib": None if mem is None else {mode: mem[mode]["mib"] for mode in MEMORY_MODES},
    }
    if args.json:
        print(json.dumps(result))
        return

    print(
        f"data ({args.lengths}): {shape['sequences']} sequences, length median {shape['median']}, "
        f"mean {shape['mean']}, p99 {shape['p99']}, max {shape['max']}; {shape['supervised']:.0%} of tokens "
        f"supervised; micro-batches of {args.capacity} tokens"
    )
    epochs = ", ".join(
        f"epoch {e + 1}: {a:.1%} ({b:.1%} without its final partial step)"
        for e, (a, b) in enumerate(zip(eff["per_epoch"], eff["per_epoch_full_steps"]))
    )
    print(f"multipack (8 ranks): {epochs}; {eff['dropped_tokens']} tokens dropped")
    rows = [
        (
            "packing efficiency (real / capacity tokens)",
            f"{eff['multipack']:.1%}",
            f"{eff['padded']:.1%}",
            eff["multipack"] / eff["padded"],
            f"padded: random batches of {eff['per_batch']}",
        ),
        (
            "useful tokens/s, packed vs padded",
            f"{tps['packed']:,.0f}",
            f"{tps['padded']:,.0f}",
            tps["packed"] / tps["padded"],
            "packed = per-document attention (what train runs)",
        ),
        (
            "useful tokens/s, packed masked vs padded",
            f"{tps['packed_masked']:,.0f}",
            f"{tps['padded']:,.0f}",
            tps["packed_masked"] / tps["padded"],
            "stock sdpa: pack x pack mask",
        ),
        (
            "useful tokens/s, packed vs packed masked",
            f"{tps['packed']:,.0f}",
            f"{tps['packed_masked']:,.0f}",
            tps["packed"] / tps["packed_masked"],
            f"tiny Llama, CPU, 1 thread, {tps['steps']} steps each, interleaved",
        ),
    ]
    if mem is not None:
        rows += [
            (
                "peak memory of forward+backward (MiB)",
                f"{mem['chunked']['mib']:,.0f}",
                f"{mem['full']['mib']:,.0f}",
                mem["full"]["mib"] / max(mem["chunked"]["mib"], 1e-9),
                f"{mem['full']['tokens']}-token pack, {mem['full']['scored']} scored, vocab {args.vocab}",
            ),
            (
                "  of which: supervised rows, one head call",
                f"{mem['supervised']['mib']:,.0f}",
                f"{mem['full']['mib']:,.0f}",
                mem["full"]["mib"] / max(mem["supervised"]["mib"], 1e-9),
                "no chunking: the gain of row selection alone",
            ),
        ]
    print()
    print(f"{'measurement':46} {'ours':>10} {'baseline':>10} {'ratio':>7}  note")
    for name, ours, base, ratio, note in rows:
        print(f"{name:46} {ours:>10} {base:>10} {ratio:>6.2f}x  {note}")
    print("\nratio = ours / baseline for efficiency and tokens/s; baseline / ours for memory (higher is better).")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
