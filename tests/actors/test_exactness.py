"""With one partition, one scorer and immediate labels, riffle *is* River's progressive
validation: the same predictions event by event, the same metrics to 1e-12.

This proves the pipeline loses, reorders and leaks nothing between events and labels.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

import pytest
from river import compose, evaluate, linear_model, metrics, preprocessing, tree
from river.datasets import synth

from actors.driver import run_pipeline
from tests.helpers import json_keys, read_jsonl

N = 2500
# Feature names a real schema may have: spaces, hyphens, unicode, dots.
WEIRD = ["annual salary", "commission-rate", "âge (années)", "住宅 value", "car.type",
         "zip code", "h-value €", "years_owned", "loan amount ✓", "x"]


def _renamed(stream: Any, n: int) -> list[tuple[dict[str, Any], Any]]:
    rows = []
    for x, y in itertools.islice(stream, n):
        names = {old: WEIRD[i % len(WEIRD)] + ("" if i < len(WEIRD) else f" {i}")
                 for i, old in enumerate(x)}
        rows.append(({names[k]: v for k, v in x.items()}, y))
    return rows


def _river_loop(model: Any, rows: list[tuple[dict, Any]], classifier: bool) -> list[Any]:
    """River's predict-then-learn loop: what each event must be scored."""
    out = []
    for x, y in rows:
        if classifier:
            proba = model.predict_proba_one(x)
            out.append((proba, model.predict_one(x)))
        else:
            pred = model.predict_one(x)
            out.append((pred, pred))
        model.learn_one(x, y)
    return out


def _river_metric(model: Any, rows: list[tuple[dict, Any]], metric: Any) -> float:
    return evaluate.progressive_val_score(iter(rows), model, metric).get()


def _write_rows(path: Path, rows: list[tuple[dict, Any]], fmt: str) -> None:
    records = [{"record_id": f"r{i}", "key": f"k{i % 37}", **x, "label": y}
               for i, (x, y) in enumerate(rows)]
    if fmt == "jsonl":
        import orjson

        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)  # floats are written with repr: they read back exactly


CASES = {
    "binary": (
        lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        [{"name": "preprocessing.StandardScaler"}, {"name": "linear_model.LogisticRegression"}],
        lambda: synth.Agrawal(classification_function=2, seed=11),
        {"accuracy": metrics.Accuracy, "log_loss": metrics.LogLoss}, "jsonl"),
    "multiclass": (
        lambda: tree.HoeffdingTreeClassifier(grace_period=50),
        [{"name": "tree.HoeffdingTreeClassifier", "params": {"grace_period": 50}}],
        lambda: synth.RandomRBF(seed_model=3, seed_sample=3, n_classes=4, n_features=6),
        {"accuracy": metrics.Accuracy, "log_loss": metrics.CrossEntropy}, "jsonl"),
    "regression": (
        lambda: compose.Pipeline(preprocessing.StandardScaler(), linear_model.LinearRegression()),
        [{"name": "preprocessing.StandardScaler"}, {"name": "linear_model.LinearRegression"}],
        lambda: synth.Friedman(seed=5),
        {"mae": metrics.MAE, "rmse": metrics.RMSE}, "csv"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_one_partition_immediate_labels_equals_river_progressive_validation(
    case: str, make_config: Any, tmp_path: Path
) -> None:
    make_model, steps, make_stream, metric_types, fmt = CASES[case]
    rows = _renamed(make_stream(), N)
    path = tmp_path / f"stream.{fmt}"
    _write_rows(path, rows, fmt)
    config = make_config(
        source={"kind": "file", "path": str(path), "partitions": 1, "label_column": "label",
                "time_column": None},
        ingest={"batch_size": 64}, scoring={"model": {"steps": steps}})

    summary = run_pipeline(config)

    classifier = case != "regression"
    expected = _river_loop(make_model(), rows, classifier)
    got = read_jsonl(config.out_dir / "predictions.jsonl")
    assert [p["record_id"] for p in got] == [f"r{i}" for i in range(N)]
    for i, (p, (score, prediction)) in enumerate(zip(got, expected, strict=True)):
        assert p["score"] == json_keys(score), f"event {i}: score differs"
        assert p["prediction"] == prediction, f"event {i}: prediction differs"
    assert summary["scored"] == summary["learned"] == N
    for name, metric_type in metric_types.items():
        reference = _river_metric(make_model(), rows, metric_type())
        assert summary["metrics"][name] == pytest.approx(reference, abs=1e-12, rel=0)


def test_synthetic_source_one_partition_is_rivers_concept_drift_stream(
    make_config: Any,
) -> None:
    config = make_config(source={"n_events": 3000, "seed": 21, "partitions": 1,
                                 "drift": {"position": 1500, "width": 200, "to_function": 4}})
    summary = run_pipeline(config)

    stream = synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=0, seed=21),
        drift_stream=synth.Agrawal(classification_function=4, seed=21),
        position=1500, width=200, seed=21)
    rows = list(itertools.islice(stream, 3000))
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    expected = _river_loop(model, rows, classifier=True)
    got = read_jsonl(config.out_dir / "predictions.jsonl")
    assert [p["score"] for p in got] == [json_keys(s) for s, _ in expected]
    reference = _river_metric(preprocessing.StandardScaler() | linear_model.LogisticRegression(),
                              rows, metrics.Accuracy())
    assert summary["metrics"]["accuracy"] == pytest.approx(reference, abs=1e-12, rel=0)
