"""Fairness figures: per group (an age band, a region), the positive rate and accuracy of
the served predictions whose label has arrived, and the largest gap between groups.

Runtime-free. A scorer keeps plain counts per group (exact to merge over scorers); the
supervisor turns the merged counts into rates. Only labeled records count, as for the
quality figures: the positive rate is that of the predictions whose outcome is known.

>>> from pipelines.config import GroupSpec
>>> groups = Groups([GroupSpec(name="age_band", feature="age", edges=[40, 60])], True)
>>> for age, pred, label in [(25, True, True), (30, False, True), (45, True, True),
...                          (70, False, False), (None, True, True)]:
...     groups.observe({"age": age}, pred, label)
>>> fig = fairness_figures([groups.counts()])["age_band"]
>>> fig["groups"]["<40"]
{'n': 2, 'positive_rate': 0.5, 'accuracy': 0.5, 'label_rate': 1.0}
>>> fig["gap"]
{'positive_rate': 1.0, 'accuracy': 0.5}
>>> sorted(fig["groups"])
['40-60', '<40', '>=60', 'missing']
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from pipelines.config import GroupSpec

__all__ = ["Groups", "band_names", "fairness_figures"]

MAX_GROUPS = 50
"""Distinct values kept per group column; more fall into ``other`` (bounded cardinality)."""


def band_names(edges: Sequence[float]) -> list[str]:
    """The names of the bands that inner ``edges`` cut a line into.

    >>> band_names([40, 60.5])
    ['<40', '40-60.5', '>=60.5']
    """
    e = [f"{x:g}" for x in edges]
    return [f"<{e[0]}", *(f"{a}-{b}" for a, b in pairwise(e)), f">={e[-1]}"]


class _Column:
    __slots__ = ("edges", "feature", "names", "rows")

    def __init__(self, spec: GroupSpec) -> None:
        self.feature = spec.feature
        self.edges = list(spec.edges) if spec.edges is not None else None
        self.names = band_names(spec.edges) if spec.edges is not None else None
        self.rows: dict[str, list[int]] = {}
        """Per group: labeled, predicted positive, correct, labeled positive."""

    def group_of(self, value: Any) -> str:
        if value is None:
            return "missing"
        if self.names is not None:
            try:
                return self.names[bisect_right(self.edges, value)]  # type: ignore[arg-type]
            except TypeError:
                return "missing"
        name = str(value)
        return name if name in self.rows or len(self.rows) < MAX_GROUPS else "other"


class Groups:
    """One scorer's counts per group column and group."""

    def __init__(self, specs: Sequence[GroupSpec], positive: Any) -> None:
        self._columns = {s.name: _Column(s) for s in specs}
        self._positive = positive

    def __bool__(self) -> bool:
        return bool(self._columns)

    def observe(self, features: dict[str, Any], prediction: Any, label: Any) -> None:
        """One labeled served prediction."""
        positive = self._positive
        for col in self._columns.values():
            group = col.group_of(features.get(col.feature))
            row = col.rows.get(group)
            if row is None:
                row = col.rows[group] = [0, 0, 0, 0]
            row[0] += 1
            row[1] += prediction == positive
            row[2] += prediction == label
            row[3] += label == positive

    def counts(self) -> dict[str, dict[str, list[int]]]:
        """Plain data (what a scorer reports): per column, per group, the four counts."""
        return {name: {g: list(r) for g, r in col.rows.items()}
                for name, col in self._columns.items()}


def fairness_figures(parts: Sequence[dict[str, dict[str, list[int]]]]) -> dict[str, Any]:
    """Per group column, merged over scorers: each group's labeled count, positive rate,
    accuracy and rate of positive labels; and the gap (largest minus smallest over the
    groups with labels) in positive rate and in accuracy."""
    merged: dict[str, dict[str, list[int]]] = {}
    for part in parts:
        for name, rows in part.items():
            column = merged.setdefault(name, {})
            for g, row in rows.items():
                acc = column.setdefault(g, [0, 0, 0, 0])
                for i, v in enumerate(row):
                    acc[i] += v
    out: dict[str, Any] = {}
    for name, column in merged.items():
        groups: dict[str, dict[str, float]] = {
            g: {"n": n, "positive_rate": pos / n, "accuracy": ok / n, "label_rate": lab / n}
            for g, (n, pos, ok, lab) in sorted(column.items()) if n}
        gap = {k: (max(v[k] for v in groups.values()) - min(v[k] for v in groups.values()))
               if len(groups) > 1 else 0.0 for k in ("positive_rate", "accuracy")}
        out[name] = {"groups": groups, "gap": gap}
    return out
