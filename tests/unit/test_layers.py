"""The arrows point down: a core (``pipelines/``) never imports ``ray`` or ``actors``.

The two exceptions are named: ``pipelines/training.py`` joins a Ray to read history with
Ray Data, and the command (``pipelines/cli/``) starts a run through ``actors.driver`` and
the scoring service through ``actors.serving``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {"pipelines/training.py": {"ray"}, "pipelines/cli/run.py": {"actors"},
           "pipelines/cli/serve.py": {"actors"}}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_cores_import_neither_ray_nor_actors() -> None:
    offenders = {}
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        bad = (imported_roots(path) & {"ray", "actors"}) - ALLOWED.get(rel, set())
        if bad:
            offenders[rel] = sorted(bad)
    assert not offenders, f"cores importing Ray or the actors: {offenders}"
