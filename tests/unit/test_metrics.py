"""Progressive metrics as plain sums: the same figures as River's metric objects."""

from __future__ import annotations

import random

import pytest
from river import metrics

from pipelines.metrics import Progressive, merge_metrics


def _probas(rng: random.Random, classes: list[object]) -> dict[object, float]:
    raw = [rng.random() ** 3 for _ in classes]  # some near 0: the clamping matters
    total = sum(raw)
    return {c: r / total for c, r in zip(classes, raw, strict=True)}


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_metrics_classifier_equal_rivers_own(task: str) -> None:
    rng = random.Random(7)
    classes: list[object] = [False, True] if task == "binary" else ["a", "b", "c"]
    ours = Progressive(task)  # type: ignore[arg-type]
    acc = metrics.Accuracy()
    loss = metrics.LogLoss() if task == "binary" else metrics.CrossEntropy()
    for _ in range(5000):
        label = rng.choice(classes)
        proba = _probas(rng, classes)
        prediction = max(proba, key=proba.__getitem__)
        ours.update(label, proba, prediction)
        acc.update(label, prediction)
        loss.update(label, proba)
    got = ours.get()
    assert got["accuracy"] == pytest.approx(acc.get(), abs=1e-12, rel=0)
    assert got["log_loss"] == pytest.approx(loss.get(), abs=1e-12, rel=0)


def test_metrics_regression_equal_rivers_own() -> None:
    rng = random.Random(3)
    ours, mae, rmse = Progressive("regression"), metrics.MAE(), metrics.RMSE()
    for _ in range(5000):
        y, p = rng.gauss(0, 10), rng.gauss(0, 10)
        ours.update(y, p, p)
        mae.update(y, p)
        rmse.update(y, p)
    assert ours.get() == pytest.approx({"mae": mae.get(), "rmse": rmse.get()}, abs=1e-9, rel=0)


def test_metrics_merge_of_parts_equals_one_pass() -> None:
    rng = random.Random(5)
    whole, parts = Progressive("binary"), [Progressive("binary") for _ in range(3)]
    for i in range(900):
        label, p = rng.random() < 0.5, rng.random()
        whole.update(label, p, p > 0.5)
        parts[i % 3].update(label, p, p > 0.5)
    merged = merge_metrics([p.state() for p in parts])
    assert merged == pytest.approx(whole.get(), abs=1e-12, rel=0)
    assert merge_metrics([Progressive("binary").state()]) == {}
