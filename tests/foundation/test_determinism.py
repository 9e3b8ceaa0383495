"""The quickstart's fixed thread count reaches every child, whatever the caller's environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from openchat_cli.determinism import pinned_env

ROOT = Path(__file__).resolve().parents[2]


def test_pinned_env_overrides_the_callers_thread_settings():
    env = pinned_env({"OMP_NUM_THREADS": "16", "MKL_NUM_THREADS": "16", "PATH": "/bin"}, 2)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENCHAT_THREADS"] == "2"
    assert env["PATH"] == "/bin"


def test_a_pinned_command_computes_with_that_many_threads():
    """`openchat …` (the root callback) applies $OPENCHAT_THREADS over $OMP_NUM_THREADS."""
    code = (
        "import torch\nfrom openchat_cli.app import build_cli\n"
        "build_cli()(['catalog', 'path'], standalone_mode=False)\n"
        "print(torch.get_num_threads(), torch.get_num_interop_threads())"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENCHAT_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2:] == ["3", "1"]
    del env["OPENCHAT_THREADS"]
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-2] == "1"  # not pinned: torch follows OMP_NUM_THREADS as usual
