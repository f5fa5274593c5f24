"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


def assert_same_items(got: Sequence[Any], expected: Sequence[Any], what: str = "items") -> None:
    """``got == expected`` for long sequences, failing with one short line: the first
    index that differs and how many do (pytest's own diff of thousands of items can
    take longer than the test)."""
    mismatches = [i for i, (g, e) in enumerate(zip(got, expected, strict=False)) if g != e]
    if not mismatches and len(got) == len(expected):
        return
    lines = [f"{what}: {len(mismatches)} of {min(len(got), len(expected))} differ"]
    if mismatches:
        i = mismatches[0]
        lines.append(f"the first at index {i}: got {_short(got[i])}, "
                     f"expected {_short(expected[i])}")
    if len(got) != len(expected):
        lines.append(f"lengths {len(got)} (got) and {len(expected)} (expected)")
    raise AssertionError("; ".join(lines))


def assert_same_set(got: Iterable[Any], expected: Iterable[Any], what: str = "items") -> None:
    """``set(got) == set(expected)``, failing with the counts and a few examples."""
    got_set, expected_set = set(got), set(expected)
    missing, extra = expected_set - got_set, got_set - expected_set
    if missing or extra:
        raise AssertionError(
            f"{what}: {len(missing)} missing (e.g. {_short(sorted(missing, key=str)[:5])}), "
            f"{len(extra)} unexpected (e.g. {_short(sorted(extra, key=str)[:5])})")


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
