"""Building tokenized Parquet files for the trainer's tests (the `openchat_cli.tokenized`
contract, written directly with the template encoder)."""

from __future__ import annotations

import random
from pathlib import Path

from openchat_cli import tokenized
from openchat_cli.model_dir import tokenizer_hash
from openchat_cli.templates import Conversation, Message, get_template

ANIMALS = {
    "fox": "red",
    "dog": "brown",
    "cat": "black",
    "sea": "blue",
    "sky": "grey",
    "prime": "green",
    "water": "white",
    "chat": "pink",
}


def write_tokenized(
    path: Path,
    tokenizer,
    convs: list[Conversation],
    template: str = "openchat_3.5",
    max_len: int = 2048,
    hash_override: str | None = None,
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoded = get_template(template).encode_many(tokenizer, convs)
    rows = {
        "input_ids": [e.input_ids[:max_len] for e in encoded],
        "weights": [e.weights[:max_len] for e in encoded],
        "length": [min(len(e.input_ids), max_len) for e in encoded],
        "conversation_id": [c.id or f"c{i}" for i, c in enumerate(convs)],
        "part": [0] * len(convs),
        "condition": [c.condition for c in convs],
    }
    schema = tokenized.schema().with_metadata(
        tokenized.make_metadata(
            template=template, tokenizer_hash=hash_override or tokenizer_hash(tokenizer), max_len=max_len
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), str(path))
    return path


def run_args(model: object, data: object, out: object) -> list[object]:
    """The `openchat train` arguments naming a run's model, data and output folder."""
    return ["--model", model, "--data", data, "--out", out]


def color_task(n: int, seed: int) -> list[Conversation]:
    """A small learnable task: 'Item 37: what color is the fox?' -> 'The fox is red.'; the
    item numbers make every conversation distinct, the mapping is the thing to learn."""
    rng = random.Random(seed)
    convs = []
    for i in range(n):
        turns = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            animal = rng.choice(sorted(ANIMALS))
            turns += [
                Message("user", f"Item {rng.randint(0, 999)}: what color is the {animal}?"),
                Message("assistant", f"The {animal} is {ANIMALS[animal]}."),
            ]
        convs.append(Conversation(messages=turns, id=f"s{seed}-{i}"))
    return convs


def skewed_chat(n: int, seed: int, max_words: int = 300) -> list[Conversation]:
    """Conversations with realistic, skewed lengths (many short, a long tail) and mixed weights."""
    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dog what is 12 plus 7 answer hello sea prime".split()
    convs = []
    for i in range(n):
        turns = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            length = min(max_words, int(rng.lognormvariate(3.0, 1.0)) + 1)
            turns += [
                Message("user", " ".join(rng.choice(words) for _ in range(rng.randint(3, 20)))),
                Message(
                    "assistant",
                    " ".join(rng.choice(words) for _ in range(length)),
                    weight=rng.choice([1.0, 1.0, 0.1, 0.0]),
                ),
            ]
        convs.append(Conversation(messages=turns, id=f"k{seed}-{i}", condition=rng.choice(["GPT4 Correct", "GPT3"])))
    return convs


def sft_on_quickstart_task(cli, tmp_path: Path, *, epochs: int) -> Path:
    """The learning tests' starting point: the quickstart's task cleaned and tokenized, a tiny
    base model, and `epochs` of SFT (under-trained on purpose, so a preference or RL stage has room
    to improve). Returns the SFT run folder (`OUT/final` is the model)."""
    from openchat_cli.quickstart.tasks import generate

    files = generate(tmp_path / "raw", train_size=3000, eval_size=60, seed=0)
    cli("data", "clean", files["train"], "-o", tmp_path / "clean.jsonl", "--force")
    cli("model", "init", tmp_path / "base", "--tokenizer-corpus", files["corpus"], "--size", "tiny", "--force")
    cli(
        "data",
        "tokenize",
        tmp_path / "clean.jsonl",
        "--model",
        tmp_path / "base",
        "--max-len",
        "256",
        "-o",
        tmp_path / "train.parquet",
        "--force",
    )
    cli(
        "train",
        "--model",
        tmp_path / "base",
        "--data",
        tmp_path / "train.parquet",
        "--out",
        tmp_path / "sft",
        "--epochs",
        epochs,
        "--lr",
        "5e-3",
        "--tokens-per-step",
        "512",
        "--seed",
        "0",
    )
    return tmp_path / "sft"
