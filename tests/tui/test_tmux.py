"""Runs tests/tui/tmux_smoke.sh: `openchat chat` in a real terminal (skipped without tmux)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("tmux_smoke.sh")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tmux_smoke(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin:/usr/local/bin",
        "PYTHON": sys.executable,
        "HOME": str(tmp_path),
        "TERM": "xterm-256color",
        "TMUX_TMPDIR": str(tmp_path),
    }
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=540, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tmux smoke: ok" in result.stdout
