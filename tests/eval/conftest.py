"""Fixtures for the eval tests: a scripted OpenAI-compatible server and small question sets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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


def spawn_cli(args: list[str], home: Path, output: int | None = subprocess.PIPE) -> subprocess.Popen:
    """`openchat ARGS` as a separate process (to kill, or to run beside another) on catalog HOME.
    Ctrl-C gets its default action in the child: pytest started in the background of a
    non-interactive shell (`cmd &`) has SIGINT ignored, and children inherit that."""
    return subprocess.Popen(
        [sys.executable, "-m", "openchat_cli.app", *args],
        env={**os.environ, "OPENCHAT_HOME": str(home)},
        stdout=output,
        stderr=output,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def answer_run(cli, scripted, path: Path, model: str) -> str:
    """A complete answer run of `model` (named so the scripted server knows how to reply)."""
    return cli("eval", "answer", path, "-e", scripted.base_url, "-m", model, "--json").json()["run_id"]


def pairwise_judge_args(answers: str, baseline: str, judge_url: str, concurrency: int = 2) -> list[str]:
    """`eval judge` of one answer run against a baseline, both orders, by the scripted fair judge."""
    return [
        "eval",
        "judge",
        answers,
        "--baseline",
        baseline,
        "--mode",
        "pairwise",
        "--judge-endpoint",
        judge_url,
        "--judge-model",
        "fair-judge",
        "-c",
        str(concurrency),
    ]
