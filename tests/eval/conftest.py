"""Fixtures for the eval tests: a scripted OpenAI-compatible server and small question sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.eval.scripted import ScriptedServer


@pytest.fixture(scope="session")
def scripted_session():
    server = ScriptedServer().start()
    yield server
    server.stop()


@pytest.fixture
def scripted(scripted_session: ScriptedServer) -> ScriptedServer:
    scripted_session.reset()
    yield scripted_session
    scripted_session.reset()


MTBENCH = [
    {
        "question_id": 81,
        "category": "writing",
        "turns": ["Write a travel blog post about Hawaii.", "Rewrite it starting every sentence with A."],
    },
    {"question_id": 111, "category": "math", "turns": ["What is 12 + 7?", "And 12 * 7?"], "reference": ["19", "84"]},
    {
        "question_id": 121,
        "category": "coding",
        "turns": ["Write a function adding two numbers.", "Now make it add three."],
    },
    {"question_id": 131, "category": "stem", "turns": ["Why is the sky blue?", "And why are sunsets red?"]},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def mtbench_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "question.jsonl", MTBENCH)
