"""``status.json`` and ``summary.json``: how a running (or finished) pipeline's progress
is seen from outside (``riffle status``, operators' scripts, fault drills).

The driver replaces ``status.json`` whole on every poll; ``summary.json`` is written once
at the end. Plain files, no Ray: reading them must not start or join a cluster.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import orjson

from pipelines.errors import PipelineError

__all__ = ["read_status", "write_status"]


def write_status(out: Path, status: dict[str, Any]) -> None:
    """``status.json`` in ``out``, replaced whole (readers never see half of it)."""
    tmp = out / ".status.json.tmp"
    tmp.write_bytes(orjson.dumps({**status, "written_at": time.time()},
                                 option=orjson.OPT_INDENT_2))
    os.replace(tmp, out / "status.json")


def read_status(out: Path) -> dict[str, Any]:
    """The last status of the pipeline writing to ``out`` (``riffle status``): the summary
    if the run has finished since its last status, else that status."""
    path = out / "status.json"
    final = out / "summary.json"
    for candidate in (final, path) if final.exists() and (
            not path.exists() or final.stat().st_mtime >= path.stat().st_mtime) else (path,):
        try:
            data: dict[str, Any] = orjson.loads(candidate.read_bytes())
        except FileNotFoundError:
            continue
        data["finished"] = candidate == final
        return data
    raise PipelineError(f"{out}: no status.json or summary.json (has the pipeline run?)")
