"""Shell completion scripts in completions/ are generated from the live command tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from openchat_cli.completions import render_all

ROOT = Path(__file__).resolve().parents[2]


def test_completion_scripts_are_current():
    for name, text in render_all().items():
        path = ROOT / "completions" / name
        assert path.exists(), f"{path} missing: run python -m openchat_cli.completions completions/"
        assert path.read_text() == text, f"{path} is stale: run `python -m openchat_cli.completions completions/`"


def _bash_complete(*words: str) -> list[str]:
    script = ROOT / "completions" / "openchat.bash"
    arr = " ".join(f"'{w}'" for w in ("openchat", *words))
    cmd = f'source {script}; COMP_WORDS=({arr}); COMP_CWORD={len(words)}; _openchat; printf "%s\\n" "${{COMPREPLY[@]}}"'
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_bash_completes_groups_commands_and_options():
    assert set(_bash_complete("")) >= {"data", "train", "serve", "eval", "chat", "catalog", "model"}
    assert _bash_complete("catalog", "li") == ["lineage", "list"]
    assert "--json" in _bash_complete("catalog", "list", "--")
    assert "--tokenizer-corpus" in _bash_complete("model", "init", "--")


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish not installed")
def test_fish_completes_groups_commands_and_options():
    script = ROOT / "completions" / "openchat.fish"

    def complete(line: str) -> list[str]:
        out = subprocess.run(
            ["fish", "-c", f"source {script}; complete -C '{line}'"], capture_output=True, text=True, check=True
        ).stdout
        return [row.split("\t")[0] for row in out.splitlines()]

    assert {"data", "train", "serve", "eval", "chat", "catalog", "model"} <= set(complete("openchat "))
    assert complete("openchat catalog li") == ["lineage", "list"]
    assert "--json" in complete("openchat catalog list --")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh not installed")
def test_zsh_script_parses_and_maps_every_command():
    script = ROOT / "completions" / "_openchat"
    subprocess.run(["zsh", "-n", str(script)], check=True)
    words = subprocess.run(
        [
            "zsh",
            "-c",
            f"compdef() {{ :; }}; source {script}; "
            "print -- ${_openchat_words[]}; print -- ${_openchat_words[catalog list]}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert {"data", "train", "serve", "eval", "chat", "catalog", "model"} <= set(words[0].split())
    assert "--json" in words[1].split()
