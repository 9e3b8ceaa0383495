"""Prompt sets for GRPO on the quickstart's task: training prompts with their answers, and a
larger held-out question set, both disjoint from the quickstart's data.

    python -m openchat_cli.quickstart.prompts QUICKSTART_DIR [--train 512] [--heldout 300]

writes QUICKSTART_DIR/grpo_prompts.jsonl (`train --method grpo --prompts`, format
{"id", "prompt", "answer"}) and QUICKSTART_DIR/grpo_heldout.jsonl (`eval answer`'s exact-answer
format). Questions already in the quickstart's training or held-out files are never drawn.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from openchat_cli.atomic import atomic_write_text
from openchat_cli.quickstart.tasks import make_question


def _used_questions(quickstart_dir: Path) -> set[str]:
    raw = quickstart_dir / "raw"
    used: set[str] = set()
    train = raw / "arith_sharegpt.json"
    if train.exists():
        for record in json.loads(train.read_text()):
            for turn in record.get("conversations") or []:
                if turn.get("from") == "human":
                    used.add(turn["value"])
    heldout = raw / "arith_heldout.jsonl"
    if heldout.exists():
        used |= {json.loads(line)["question"] for line in heldout.read_text().splitlines() if line.strip()}
    return used


def write_prompt_sets(quickstart_dir: Path, train: int = 512, heldout: int = 300, seed: int = 1) -> dict[str, Path]:
    """Draw `train` + `heldout` new questions; returns the two files' paths."""
    rng = random.Random(seed)
    used = _used_questions(quickstart_dir)
    drawn: dict[str, tuple[str, str]] = {}
    while len(drawn) < train + heldout:
        category, question, answer = make_question(rng)
        if question not in used and question not in drawn:
            drawn[question] = (category, answer)
    items = list(drawn.items())
    prompts_path = quickstart_dir / "grpo_prompts.jsonl"
    heldout_path = quickstart_dir / "grpo_heldout.jsonl"
    atomic_write_text(
        prompts_path,
        "".join(
            json.dumps({"id": f"g{i:04d}", "prompt": question, "answer": answer}) + "\n"
            for i, (question, (_category, answer)) in enumerate(items[:train])
        ),
    )
    atomic_write_text(
        heldout_path,
        "".join(
            json.dumps({"id": f"gh{i:04d}", "question": question, "label": answer, "category": category}) + "\n"
            for i, (question, (category, answer)) in enumerate(items[train:])
        ),
    )
    return {"prompts": prompts_path, "heldout": heldout_path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("quickstart_dir", type=Path)
    parser.add_argument("--train", type=int, default=512)
    parser.add_argument("--heldout", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for name, path in write_prompt_sets(args.quickstart_dir, args.train, args.heldout, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
