"""What `openchat train` hands its ranks: the resolved settings and ids of one run.

`prepare` (launch.py) builds it once, writes it to OUT/run.json, and every rank reads it back;
`--resume` continues from the same file. Field names are the file's keys."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainSpec:
    run_id: str  # the catalog's run-… id
    out: str  # the run folder
    config: dict[str, Any]  # TrainConfig.to_dict()
    model_path: str  # the base model folder, resolved
    template: str  # the conversation template the base model speaks (its openchat.json)
    vocab_size: int
    tokenizer_hash: str  # the data must have been tokenized with this tokenizer
    pad_id: int | None
    base_checkpoint_id: str | None
    data_path: str | None  # None for grpo (it reads prompts)
    dataset_id: str | None
    eval_data_path: str | None
    eval_dataset_id: str | None
    lr: float  # the learning rate used (--lr, or derived from the batch by auto_lr)
    # --method grpo (train/grpo.py): the prompt file, its size, the rewards as checked by prepare
    prompts_path: str | None = None
    num_prompts: int = 0
    rewards: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        """A spec from run.json; keys it does not know (a newer writer's) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, path: Path | str) -> TrainSpec:
        return cls.from_dict(json.loads(Path(path).read_text()))
