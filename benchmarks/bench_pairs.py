"""Benchmark preference pairs in `openchat data`: clean and tokenize throughput, side by side with
the same data as SFT conversations and with a naive per-pair `apply_chat_template` loop.

    python benchmarks/bench_pairs.py                 # ~1 minute on 2 busy cores
    python benchmarks/bench_pairs.py --pairs 20000

Everything is generated locally (HH-style transcripts: several shared turns, two final replies)
with a byte-level BPE tokenizer trained on them. Runs in this process; prints one table of
pairs/s with ratios (absolute numbers move with the machine's load, the ratios much less).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = (
    "the a of to and is in it you that for on with as are this be can what how water sea sky blue "
    "light bread yeast salt owl prime number answer question explain why because model reply"
).split()


def text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def hh_record(rng: random.Random) -> dict:
    shared = ""
    for _ in range(rng.randint(1, 3)):
        shared += f"\n\nHuman: {text(rng, rng.randint(5, 40))}\n\nAssistant: {text(rng, rng.randint(10, 80))}"
    shared += f"\n\nHuman: {text(rng, rng.randint(5, 40))}"
    return {
        "chosen": shared + f"\n\nAssistant: {text(rng, rng.randint(20, 150))}",
        "rejected": shared + f"\n\nAssistant: {text(rng, rng.randint(5, 60))}",
    }


def best_times(fns: dict, rounds: int) -> dict:
    """The fastest of `rounds` runs of each function, the functions taking turns, so a burst of
    load from other processes hits them all alike."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--naive", type=int, default=800, help="Pairs for the naive apply_chat_template loop.")
    ap.add_argument("--template", default="openchat_3.5")
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="Runs of each measurement (the fastest counts).")
    args = ap.parse_args()

    from openchat_cli.data.clean import CleanOptions, run_clean
    from openchat_cli.data.tokenize import TokenizeStats, encode_chunk
    from openchat_cli.data.tokenize_pairs import PairTokenizeStats, encode_pairs, parse_pair
    from openchat_cli.model.tiny import train_tokenizer
    from openchat_cli.model_dir import attach_template
    from openchat_cli.templates import Conversation, get_template

    rng = random.Random(args.seed)
    records = [hh_record(rng) for _ in range(args.pairs)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-pairs-"))
    raw = tmp / "hh.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in records))
    tok = train_tokenizer([r["chosen"] for r in records[:2000]], 4096)
    attach_template(tok, args.template)
    template = get_template(args.template)
    opts = CleanOptions(min_chars=0, blocked_words=None, unwanted_phrases=None)

    out = io.BytesIO()
    run_clean([raw], out, io.BytesIO(), opts)
    pairs_json = [json.loads(line) for line in out.getvalue().decode().splitlines()]
    pairs = [parse_pair(p, str(i)) for i, p in enumerate(pairs_json)]
    n = len(pairs)
    # The same data as SFT: each chosen conversation alone (what tokenizing pairs is compared with).
    sft = [p.side(p.chosen) for p in pairs]
    conv_raw = tmp / "conv.jsonl"
    conv_raw.write_text(
        "".join(
            json.dumps({"id": str(i), "messages": [{"role": m.role, "content": m.content} for m in c.messages]}) + "\n"
            for i, c in enumerate(sft)
        )
    )
    few = pairs[: args.naive]

    def naive() -> None:
        for p in few:
            for reply in (p.chosen, p.rejected):
                tok.apply_chat_template(
                    [{"role": m.role, "content": m.content} for m in p.prompt + reply], tokenize=True
                )
            tok.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in p.prompt], tokenize=True, add_generation_prompt=True
            )

    tok.chat_template = template.jinja()
    assert all(isinstance(c, Conversation) for c in sft)
    t = best_times(
        {
            "clean_pairs": lambda: run_clean([raw], io.BytesIO(), io.BytesIO(), opts),
            "clean_conv": lambda: run_clean([conv_raw], io.BytesIO(), io.BytesIO(), opts),
            "tok_pairs": lambda: [
                encode_pairs(template, tok, pairs[i : i + 256], args.max_len, PairTokenizeStats())
                for i in range(0, n, 256)
            ],
            "tok_sft": lambda: [
                encode_chunk(template, tok, sft[i : i + 512], args.max_len, TokenizeStats()) for i in range(0, n, 512)
            ],
            "naive": naive,
        },
        args.rounds,
    )
    clean_s, conv_s, pairs_s, sft_s, naive_s = (
        t[k] for k in ("clean_pairs", "clean_conv", "tok_pairs", "tok_sft", "naive")
    )

    rows = [
        ("clean, pairs (HH transcripts)", n / clean_s, f"{conv_s / clean_s:.2f}x the SFT clean of the chosen sides"),
        ("clean, chosen sides as conversations", n / conv_s, "1.00x"),
        ("tokenize, pairs (2 sequences a pair)", n / pairs_s, f"{sft_s / pairs_s:.2f}x the SFT rate"),
        ("tokenize, chosen sides as SFT", n / sft_s, "1.00x"),
        (
            "tokenize, naive apply_chat_template x3",
            len(few) / naive_s,
            f"ours is {(n / pairs_s) / (len(few) / naive_s):.1f}x faster",
        ),
    ]
    print(f"{n} pairs ({args.pairs} generated), template {args.template}, best of {args.rounds} rounds")
    print(f"{'':42} {'pairs/s':>10}  ratio")
    for name, rate, ratio in rows:
        print(f"{name:42} {rate:10.0f}  {ratio}")


if __name__ == "__main__":
    main()
