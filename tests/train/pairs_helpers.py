"""Tokenized preference pairs for the trainer's tests, written to the pairs contract exactly
(what c17data's `data tokenize` of pairs writes: see openchat_cli/train/pairs.py)."""

from __future__ import annotations

import random
from pathlib import Path

from openchat_cli import tokenized
from openchat_cli.model_dir import tokenizer_hash
from openchat_cli.templates import Conversation, Message, get_template
from openchat_cli.train.pairs import META_KIND, PAIRS_KIND
from tests.train.helpers import ANIMALS

Pair = tuple[list[Message], str, str]  # prompt messages, chosen reply, rejected reply


def pairs_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("chosen_ids", pa.list_(pa.int32())),
            ("chosen_weights", pa.list_(pa.float32())),
            ("rejected_ids", pa.list_(pa.int32())),
            ("rejected_weights", pa.list_(pa.float32())),
            ("prompt_length", pa.int32()),
            ("length", pa.int32()),
            ("pair_id", pa.string()),
            ("condition", pa.string()),
        ]
    )


def encode_pair(tokenizer, pair: Pair, template: str = "openchat_3.5") -> dict:
    """Both full sequences; weights only on the reply (earlier assistant turns weigh 0)."""
    prompt, chosen, rejected = pair
    prompt = [Message(m.role, m.content, 0.0) for m in prompt]
    enc = get_template(template).encode_many(
        tokenizer, [Conversation(messages=prompt + [Message("assistant", reply)]) for reply in (chosen, rejected)]
    )
    c, r = enc
    shared = next(
        (i for i, (a, b) in enumerate(zip(c.input_ids, r.input_ids)) if a != b), min(len(c.input_ids), len(r.input_ids))
    )
    return {
        "chosen_ids": c.input_ids,
        "chosen_weights": c.weights,
        "rejected_ids": r.input_ids,
        "rejected_weights": r.weights,
        "prompt_length": min(shared, c.message_starts[-1]),
        "length": len(c.input_ids) + len(r.input_ids),
    }


def write_pairs(
    path: Path,
    tokenizer,
    pairs: list[Pair],
    template: str = "openchat_3.5",
    max_len: int = 2048,
    ids: list[str] | None = None,
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [encode_pair(tokenizer, p, template) for p in pairs]
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    columns["pair_id"] = ids or [f"p{i}" for i in range(len(pairs))]
    columns["condition"] = [None] * len(pairs)
    meta = tokenized.make_metadata(template=template, tokenizer_hash=tokenizer_hash(tokenizer), max_len=max_len)
    meta[META_KIND.encode()] = PAIRS_KIND.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(columns, schema=pairs_schema().with_metadata(meta)), str(path))
    return path


def color_pairs(n: int, seed: int, rejected: str = "wrong") -> list[Pair]:
    """'what color is the fox?' -> chosen 'The fox is red.'; rejected a wrong color ('wrong', the
    harder preference for a tiny model), or a non-answer ('unsure': learnt in a few steps)."""
    rng = random.Random(seed)
    colors = sorted(set(ANIMALS.values()))
    out = []
    for _ in range(n):
        animal = rng.choice(sorted(ANIMALS))
        wrong = rng.choice([c for c in colors if c != ANIMALS[animal]])
        bad = f"The {animal} is {wrong}." if rejected == "wrong" else unsure(animal)
        out.append(
            (
                [Message("user", f"Item {rng.randint(0, 999)}: what color is the {animal}?")],
                f"The {animal} is {ANIMALS[animal]}.",
                bad,
            )
        )
    return out


def unsure(animal: str) -> str:
    return f"Sorry, I do not know the color of the {animal}."
