"""A small task a tiny model can learn on CPU in minutes, generated here (nothing downloads).

Questions ask which of two numbers is larger or smaller; replies use one fixed format
("The answer is N."), so the exact-answer grader can score them and a random model scores ~0.
Training data comes in ShareGPT shape with a few malformed and duplicate records, so
`data clean` has real work to do; held-out questions never appear in training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from openchat_cli.atomic import atomic_write_text

TEMPLATES = {
    "larger": ["Which number is larger, {a} or {b}?", "What is the larger of {a} and {b}?"],
    "smaller": ["Which number is smaller, {a} or {b}?", "What is the smaller of {a} and {b}?"],
}


def make_question(rng: random.Random) -> tuple[str, str, str]:
    """(category, question, answer)."""
    a, b = rng.sample(range(10, 100), 2)
    category = rng.choice(list(TEMPLATES))
    question = rng.choice(TEMPLATES[category]).format(a=a, b=b)
    answer = max(a, b) if category == "larger" else min(a, b)
    return category, question, str(answer)


def reply(answer: str) -> str:
    return f"The answer is {answer}."


def generate(out_dir: Path, train_size: int = 3000, eval_size: int = 100, seed: int = 0) -> dict[str, Path]:
    """Write train (ShareGPT JSON) and held-out questions (exact-answer JSONL) into out_dir."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    held_out: dict[str, tuple[str, str]] = {}
    while len(held_out) < eval_size:
        category, question, answer = make_question(rng)
        held_out[question] = (category, answer)
    records = []
    seen = set(held_out)
    while len(records) < train_size:
        category, question, answer = make_question(rng)
        if question in seen:
            continue
        seen.add(question)
        records.append(
            {
                "id": f"qs-{len(records):05d}",
                "model": "gpt-4",
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": reply(answer)}],
            }
        )
    # Give cleaning something to do: exact duplicates, an empty reply, a conversation that
    # starts with an assistant greeting (trimmed, and then a duplicate of a training record),
    # one with no user turn at all, and a record with no turns.
    for i in range(0, 60, 3):
        records.append({**records[i], "id": records[i]["id"] + "-dup"})
    records.append(
        {
            "id": "bad-empty",
            "conversations": [
                {"from": "human", "value": "Which number is larger, 10 or 20?"},
                {"from": "gpt", "value": "  "},
            ],
        }
    )
    records.append(
        {
            "id": "bad-leading-gpt",
            "conversations": [
                {"from": "gpt", "value": "Hello! Ask me to compare two numbers."},
                *records[1]["conversations"],
            ],
        }
    )
    records.append({"id": "bad-one-turn", "conversations": [{"from": "gpt", "value": "The answer is 5."}]})
    records.append({"id": "bad-no-turns", "conversations": []})
    rng.shuffle(records)
    train_path = out_dir / "arith_sharegpt.json"
    atomic_write_text(train_path, json.dumps(records, indent=1))
    eval_path = out_dir / "arith_heldout.jsonl"
    atomic_write_text(
        eval_path,
        "".join(
            json.dumps({"id": f"h{i:03d}", "question": question, "label": answer, "category": category}) + "\n"
            for i, (question, (category, answer)) in enumerate(held_out.items())
        ),
    )
    corpus_path = out_dir / "tokenizer_corpus.txt"
    atomic_write_text(
        corpus_path,
        "\n".join(
            r["conversations"][0]["value"] + " " + r["conversations"][-1]["value"]
            for r in records
            if len(r["conversations"]) >= 2
        )
        + "\n",
    )
    return {"train": train_path, "heldout": eval_path, "corpus": corpus_path}
