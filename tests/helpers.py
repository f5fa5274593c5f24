"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def json_keys(score: Any) -> Any:
    """A score as it reads back from JSON: class labels become strings."""
    if isinstance(score, dict):
        return {orjson.loads(orjson.dumps({k: 0}, option=orjson.OPT_NON_STR_KEYS)).popitem()[0]: v
                for k, v in score.items()}
    return score
