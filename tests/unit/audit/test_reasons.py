"""Reason codes inline: what each prediction carries with ``scoring.explain.top_k``."""

from __future__ import annotations

import math
from typing import Any

import orjson
from river.datasets import synth
from river.tree.nodes.branch import DTBranch

from pipelines.config import ScoringConfig
from pipelines.protocol import Batch, Event, Feedback
from pipelines.scoring import ScorerCore

TREE = [{"name": "tree.HoeffdingTreeClassifier", "params": {"grace_period": 50}}]


def stream(n: int, seed: int = 3) -> list[Event | Feedback]:
    """Events of River's Agrawal generator, each labelled right after it is scored."""
    items: list[Event | Feedback] = []
    for i, (x, y) in enumerate(synth.Agrawal(seed=seed).take(n)):
        rid = f"r{i}"
        items.append(Event(rid, f"k{i % 50}", 0.0, x, 0, 2 * i, 0.0))
        items.append(Feedback(rid, f"k{i % 50}", y, 0.0, 0, 2 * i + 1, 0.0))
    return items


def run(top_k: int | None, n: int = 2000) -> tuple[ScorerCore, list[dict[str, Any]]]:
    spec: dict[str, Any] = {"explain": {"top_k": top_k}}
    core = ScorerCore(ScoringConfig.model_validate(spec), name="s")
    items = stream(n)
    out = []
    for start in range(0, len(items), 200):
        out += core.process(Batch(start, items[start:start + 200])).predictions
    return core, [orjson.loads(line) for line in out]


def test_no_reasons_unless_asked() -> None:
    _, preds = run(None, n=200)
    assert all("reasons" not in p for p in preds)


def test_linear_reasons_are_the_largest_terms_of_the_scored_log_odds() -> None:
    _, preds = run(3)
    _, plain = run(None)
    # The reasons change nothing: the same scores as without them.
    assert [p["score"] for p in preds] == [p["score"] for p in plain]
    for p in preds[100:]:
        reasons = p["reasons"]
        assert len(reasons) == 3
        sizes = [abs(c) for _, _, c in reasons]
        assert sizes == sorted(sizes, reverse=True)


def test_linear_terms_sum_to_the_log_odds_of_the_score() -> None:
    core = ScorerCore(ScoringConfig.model_validate({"explain": {"top_k": 100}}), name="s")
    items = stream(500)
    core.process(Batch(0, items[:-2]))  # learned up to the last event, which is scored now
    out = orjson.loads(core.process(Batch(1, items[-2:-1])).predictions[0])
    lr = core.model["LogisticRegression"]
    p = out["score"]["true"]  # LogisticRegression: P(True) (Agrawal labels 0 and 1)
    total = sum(c for _, _, c in out["reasons"]) + lr.intercept
    assert abs(total - math.log(p / (1 - p))) < 1e-9
    event = items[-2]
    assert isinstance(event, Event)
    assert {f for f, _, _ in out["reasons"]} <= set(event.features)
    assert all(v == event.features[f] for f, v, _ in out["reasons"])


def test_tree_reasons_follow_the_path_and_sum_to_the_leaf_minus_the_root() -> None:
    core = ScorerCore(ScoringConfig.model_validate(
        {"explain": {"top_k": 100}, "model": {"steps": TREE}}), name="s")
    items = stream(3000)
    core.process(Batch(0, items[:-2]))
    out = orjson.loads(core.process(Batch(1, items[-2:-1])).predictions[0])
    model = core.model
    root = model._root
    assert isinstance(root, DTBranch), "the tree did not split: feed it more"
    event = items[-2]
    assert isinstance(event, Event)
    path = list(root.walk(event.features, until_leaf=True))
    split_features = {n.feature for n in path if isinstance(n, DTBranch)}
    reasons = out["reasons"]
    assert reasons and {f for f, _, _ in reasons} <= split_features

    def share(node: Any) -> float:
        return node.stats.get(out["prediction"], 0.0) / sum(node.stats.values())

    total = sum(c for _, _, c in reasons)
    assert abs(total - (share(path[-1]) - share(path[0]))) < 1e-9
