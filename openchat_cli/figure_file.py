"""Saving a matplotlib figure as a file that appears whole or not at all (written beside its
name and renamed), with an unknown image format refused in one line instead of a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from openchat_cli.atomic import temp_file_beside
from openchat_cli.errors import OpenchatError


def save_figure(fig: Any, path: Path | str, dpi: int = 120) -> Path:
    """Write `fig` to `path` in the format its suffix names (.png when it has none)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    known = fig.canvas.get_supported_filetypes()
    if fmt not in known:
        raise OpenchatError(f"{path}: cannot write a '{fmt}' image (use one of: {', '.join(sorted(known))})")
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=dpi)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
