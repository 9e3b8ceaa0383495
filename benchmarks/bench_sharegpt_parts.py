"""What `data clean` keeps of a ShareGPT-V3-shaped dump whose long conversations were split into
parts (issue #12, data item 7): with `--no-trim-ends` (the old default) and with the default,
which trims a leading assistant / trailing user turn instead of dropping the part.

    python benchmarks/bench_sharegpt_parts.py                # ~1 minute on 2 busy cores
    python benchmarks/bench_sharegpt_parts.py --conversations 5000

The dump is generated here (no real ShareGPT data needed): conversations from bench_data's
generator, split at message boundaries whenever a part reaches --part-chars characters, as the
V3 dump was split at a token budget, so a part may start with a reply and end with a question.
Tokens are counted with a BPE tokenizer trained on the corpus, by `data tokenize`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import conversation, make_tokenizer_dir, make_vocab, run_openchat  # noqa: E402


def split_parts(record: dict, part_chars: int) -> list[dict]:
    """`ID_0`, `ID_1`, …: consecutive messages until a part holds `part_chars` characters."""
    parts, current, size = [], [], 0
    for turn in record["conversations"]:
        if current and size + len(turn["value"]) > part_chars:
            parts.append(current)
            current, size = [], 0
        current.append(turn)
        size += len(turn["value"])
    if current:
        parts.append(current)
    return [{**record, "id": f"{record['id']}_{k}", "conversations": part} for k, part in enumerate(parts)]


def write_dump(path: Path, n: int, part_chars: int, seed: int) -> dict:
    rng = random.Random(seed)
    vocab = make_vocab(random.Random(0))
    records = []
    for i in range(n):
        records += split_parts(conversation(rng, vocab, i), part_chars)
    path.write_text(json.dumps(records, ensure_ascii=False))
    usable = sum(
        1
        for r in records
        if any(a["from"] == "human" and b["from"] == "gpt" for a, b in zip(r["conversations"], r["conversations"][1:]))
    )
    return {
        "conversations": n,
        "records": len(records),
        "with_an_exchange": usable,
        "leading_gpt": sum(1 for r in records if r["conversations"][0]["from"] == "gpt"),
        "trailing_human": sum(1 for r in records if r["conversations"][-1]["from"] == "human"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--part-chars", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--template", default="openchat_3.5")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        from bench_data import child

        child(rest)
        return
    with tempfile.TemporaryDirectory(prefix="bench_parts_") as tmp:
        work = Path(tmp)
        dump = work / "sharegpt_parts.json"
        shape = write_dump(dump, args.conversations, args.part_chars, args.seed)
        model_dir = work / "tokenizer"
        corpus = work / "corpus.txt"
        corpus.write_text(
            "\n".join(t["value"] for r in json.loads(dump.read_text())[:3000] for t in r["conversations"])
        )
        make_tokenizer_dir(model_dir, corpus, args.template)
        rows = []
        for label, flags in (("--no-trim-ends (old default)", ["--no-trim-ends"]), ("default (trim ends)", [])):
            home = work / f"home{len(rows)}"
            out = work / f"clean{len(rows)}.jsonl"
            cleaned = run_openchat(["data", "clean", dump, "-o", out, "--force", *flags], home)["result"]["counts"]
            tok = run_openchat(
                [
                    "data",
                    "tokenize",
                    out,
                    "--model",
                    model_dir,
                    "--max-len",
                    4096,
                    "-o",
                    work / f"t{len(rows)}.parquet",
                    "--force",
                ],
                home,
            )["result"]["stats"]
            rows.append((label, cleaned, tok))
        print(
            f"dump: {shape['conversations']:,} conversations split into {shape['records']:,} parts "
            f"({shape['leading_gpt']:,} start with a reply, {shape['trailing_human']:,} end with a question, "
            f"{shape['with_an_exchange']:,} hold a user→assistant exchange)"
        )
        print(f"{'':30} {'kept':>8} {'tokens':>12} {'supervised':>12}  dropped / trimmed")
        for label, c, t in rows:
            print(
                f"{label:30} {c['kept']:>8,} {t['tokens']:>12,} {t['supervised_tokens']:>12,}  "
                f"{c['dropped']} {c['fixes']}"
            )
        (_, c0, t0), (_, c1, t1) = rows
        print(
            f"default / old: {c1['kept'] / max(c0['kept'], 1):.2f}x conversations, "
            f"{t1['tokens'] / max(t0['tokens'], 1):.2f}x tokens, "
            f"{t1['supervised_tokens'] / max(t0['supervised_tokens'], 1):.2f}x supervised tokens"
        )


if __name__ == "__main__":
    main()
