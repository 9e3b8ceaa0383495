"""Imports point one way: commands → domain modules → store; tui → store and the HTTP API.

`store/` is the bottom layer (every stage imports it, it imports none of them); the TUI talks
to a server over HTTP and to the catalog, never to the command modules; training does not
reach into the model stage (what both need lives in a module of its own). This test reads
every import statement, including ones inside functions, and fails on any that point up.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# (files, import prefixes they must not use, why)
RULES = [
    ("store/**/*.py", ("openchat_cli", "tui"), "store/ is the lowest layer"),
    ("tui/**/*.py", ("openchat_cli",), "the TUI uses store/ and the HTTP API only"),
    ("openchat_cli/train/**/*.py", ("openchat_cli.model",), "training does not import the model stage"),
]


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every `import X` and `from X import …` (relative ones excluded)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def breaks(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


def test_imports_point_one_way():
    problems = []
    for pattern, forbidden, why in RULES:
        for path in sorted(ROOT.glob(pattern)):
            for line, module in imported_modules(path.read_text(encoding="utf-8")):
                if breaks(module, forbidden):
                    problems.append(f"{path.relative_to(ROOT)}:{line}: imports {module} ({why})")
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_guard_sees_what_it_forbids():
    source = (
        "import os\nfrom openchat_cli.home import catalog_path\n"
        "def f():\n    import openchat_cli.model.lora\n"
        "from openchat_cli import model\nfrom . import sibling\n"
    )
    modules = [m for _, m in imported_modules(source)]
    assert sorted(m for m in modules if breaks(m, ("openchat_cli",))) == [
        "openchat_cli",
        "openchat_cli.home",
        "openchat_cli.home.catalog_path",
        "openchat_cli.model",
        "openchat_cli.model.lora",
    ]
    assert breaks("openchat_cli.model", ("openchat_cli.model",))
    assert not breaks("openchat_cli.model_dir", ("openchat_cli.model",))
    assert not breaks("openchat_cli_extra", ("openchat_cli",))
