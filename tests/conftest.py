"""Shared fixtures: a fresh OPENCHAT_HOME per test, one tiny model per session, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Text the tiny tokenizer is trained on: English, digits, code and markdown, so BPE merges are
# realistic enough for the tests.
CORPUS = [
    "The quick brown fox jumps over the lazy dog. What is 12 plus 7? The answer is 19.",
    "Hello! How can I help you today? Please write a short poem about the sea.",
    "def add(a, b):\n    return a + b\n",
    "```python\nprint('hello world')\n```",
    "In mathematics, a prime number is a natural number greater than 1.",
    "Question: What is the capital of France? Answer: Paris. Translate 'cat' to French: chat.",
    "1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.14 -5 + - * / = ( ) [ ] { } # ## ### * ** _",
    "Water boils at 100 degrees Celsius. Can you explain why the sky is blue?",
]


@pytest.fixture(scope="session", autouse=True)
def session_openchat_home(tmp_path_factory: pytest.TempPathFactory):
    """A home for module- and session-scoped fixtures, which run before the per-test one below:
    without it, a fixture that runs `openchat train` registers its run in the user's real catalog."""
    saved = os.environ.get("OPENCHAT_HOME")
    os.environ["OPENCHAT_HOME"] = str(tmp_path_factory.mktemp("session-openchat-home"))
    yield Path(os.environ["OPENCHAT_HOME"])
    if saved is None:
        os.environ.pop("OPENCHAT_HOME", None)
    else:
        os.environ["OPENCHAT_HOME"] = saved


@pytest.fixture(autouse=True)
def openchat_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own empty home (catalog.db and default outputs)."""
    home = tmp_path / "openchat-home"
    home.mkdir()
    monkeypatch.setenv("OPENCHAT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS * 20) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """One tiny model (template openchat_3.5) for the whole session; treat it as read-only."""
    from openchat_cli.model.tiny import SIZES, random_llama, train_tokenizer
    from openchat_cli.model_dir import attach_template, tokenizer_hash, write_meta

    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer = train_tokenizer(corpus_file.read_text().splitlines(), SIZES["tiny"].vocab_size)
    attach_template(tokenizer, "openchat_3.5")
    model = random_llama(tokenizer, SIZES["tiny"], seed=0)
    eot = tokenizer.convert_tokens_to_ids("<|end_of_turn|>")
    model.generation_config.eos_token_id = [eot, tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_meta(out, template="openchat_3.5", size="tiny", tokenizer_hash=tokenizer_hash(tokenizer))
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


class CliResult:
    def __init__(self, result):
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.output = result.output
        self.exception = result.exception

    def json(self):
        import json

        return json.loads(self.stdout)


@pytest.fixture
def cli():
    """Run `openchat ARGS…` in-process through the real click app; returns exit code and output."""
    from click.testing import CliRunner

    from openchat_cli.app import build_cli

    command = build_cli()

    def run(*args: str, input: str | None = None, expect: int | None = 0) -> CliResult:
        runner = CliRunner()
        result = CliResult(runner.invoke(command, [str(a) for a in args], input=input, catch_exceptions=True))
        if expect is not None and result.exit_code != expect:
            import traceback

            tb = "".join(traceback.format_exception(result.exception)) if result.exception else ""
            raise AssertionError(
                f"openchat {' '.join(map(str, args))} exited {result.exit_code}, expected {expect}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}\n{tb}"
            )
        return result

    return run


class ServedModel:
    """A running `openchat serve` process: `.base_url` for OpenAI clients, `.url` for /health."""

    def __init__(self, url: str, model: str, process, log_path: Path):
        self.url = url  # http://127.0.0.1:PORT
        self.base_url = url + "/v1"
        self.model = model  # the name to pass as `model`
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_server(
    model_dir: Path, workdir: Path, *extra_args: str, timeout: float = 180.0, python: str | None = None
) -> ServedModel:
    """Start the real `openchat serve MODEL --port 0 …` on 127.0.0.1 and wait for /health
    (`python`: another venv's interpreter, e.g. the vLLM one)."""
    import re
    import subprocess
    import sys
    import time

    import httpx

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OPENCHAT_HOME"] = str(workdir / "home")
    env["PYTHONUNBUFFERED"] = "1"
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                python or sys.executable,
                "-m",
                "openchat_cli.app",
                "serve",
                str(model_dir),
                "--port",
                "0",
                "--log-level",
                "warning",
                *extra_args,
            ],
            cwd=str(root),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"openchat serve exited with {process.returncode}:\n{log_path.read_text()}")
        if url is None:
            found = re.search(r"http://127\.0\.0\.1:(\d+)/v1", log_path.read_text(errors="replace"))
            if found:
                url = f"http://127.0.0.1:{found.group(1)}"
        if url is not None:
            try:
                health = httpx.get(url + "/health", timeout=2.0)
                if health.status_code == 200:
                    return ServedModel(url, health.json()["model"], process, log_path)
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"openchat serve did not come up in {timeout:.0f}s:\n{log_path.read_text()}")


def stop_server(server: ServedModel) -> None:
    import subprocess

    server.process.terminate()
    try:
        server.process.wait(timeout=60)  # a clean stop: a loaded machine may take a while
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=30)


@pytest.fixture(scope="session")
def tiny_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real `openchat serve <tiny model>` on 127.0.0.1 (a free port), shared by the session.

    Yields an object with `.base_url` ("http://127.0.0.1:PORT/v1", for the `openai` client; any
    api_key works), `.model` (the served model name) and `.url` (the root, e.g. for /health).
    Requests without max_tokens are capped at 256 tokens (the tiny model rarely stops on its
    own); outputs are gibberish: check shapes, not meaning.
    """
    server = start_server(tiny_model_dir, tmp_path_factory.mktemp("tiny-server"), "--default-max-tokens", "256")
    try:
        yield server
    finally:
        stop_server(server)
