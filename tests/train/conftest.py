"""Fixtures for the trainer: tokenized datasets for the session's tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.helpers import color_task, write_tokenized


@pytest.fixture(scope="session")
def color_data(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> dict[str, Path]:
    """Train / held-out splits of the learnable color task, tokenized for the tiny model."""
    root = tmp_path_factory.mktemp("color-data")
    return {
        "train": write_tokenized(root / "train.parquet", tiny_tokenizer, color_task(600, seed=1)),
        "small": write_tokenized(root / "small.parquet", tiny_tokenizer, color_task(120, seed=3)),
        "eval": write_tokenized(root / "eval.parquet", tiny_tokenizer, color_task(80, seed=2)),
    }
