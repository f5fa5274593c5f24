"""SklearnModel: a fitted scikit-learn estimator served through River's verbs."""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from river import compose, linear_model, preprocessing
from river.datasets import synth
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from pipelines.batch_models import (
    SklearnModel,
    dumps_model,
    loads_model,
    sklearn_task,
    task_of_model,
)
from pipelines.config import ScoringConfig
from pipelines.errors import ModelError
from pipelines.protocol import Batch, Deployment, Event, Feedback
from pipelines.scoring import ScorerCore

Rows = list[dict[str, Any]]
Fitted = tuple[Any, list[str], Rows, np.ndarray, list[Any]]


@pytest.fixture
def make_fitted() -> Callable[..., Fitted]:
    """Factory: a scaled LogisticRegression fitted on Agrawal rows whose labels are
    mapped by ``label`` (to bool, str, ...), with the rows it was fitted on."""

    def make(label: Callable[[int], Any] = lambda y: y, *, n: int = 1500,
             seed: int = 3) -> Fitted:
        data = list(synth.Agrawal(seed=seed).take(n))
        features = list(data[0][0])
        rows = [x for x, _ in data]
        labels = [label(y) for _, y in data]
        X = np.array([[x[f] for f in features] for x in rows], dtype=np.float64)
        estimator = make_pipeline(StandardScaler(), LogisticRegression())
        estimator.fit(X, np.asarray(labels))
        return estimator, features, rows, X, labels

    return make


def test_sklearn_model_predict_proba_one_equals_sklearn_predict_proba(make_fitted) -> None:
    estimator, features, rows, X, _ = make_fitted()
    model = SklearnModel(estimator, features, "binary")
    expected = estimator.predict_proba(X)
    for i, x in enumerate(rows):
        got = model.predict_proba_one(x)
        assert list(got) == estimator.classes_.tolist()
        for j, p in enumerate(got.values()):
            assert math.isclose(p, expected[i, j], rel_tol=1e-12, abs_tol=1e-15), (i, j)
        assert model.predict_one(x) == estimator.classes_[expected[i].argmax()]


@pytest.mark.parametrize(("label", "kind"), [
    (lambda y: y, int), (lambda y: bool(y), bool), (lambda y: "yes" if y else "no", str),
])
def test_sklearn_model_classes_are_the_plain_label_values(make_fitted, label, kind) -> None:
    estimator, features, rows, _, labels = make_fitted(label)
    model = SklearnModel(estimator, features, "binary")
    proba = model.predict_proba_one(rows[0])
    assert set(proba) == set(labels)
    assert all(type(c) is kind for c in proba)
    assert type(model.predict_one(rows[0])) is kind
    json.dumps({"prediction": model.predict_one(rows[0])})  # plain values, as the sink writes


def test_sklearn_model_multiclass_task_and_probabilities(make_fitted) -> None:
    data = list(synth.Agrawal(seed=5).take(900))
    features = list(data[0][0])
    X = np.array([[x[f] for f in features] for x, _ in data])
    y = np.array([x["elevel"] % 3 for x, _ in data])  # three classes
    estimator = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    model = SklearnModel(estimator, features, sklearn_task(estimator))
    assert model.task == "multiclass" and task_of_model(model) == "multiclass"
    proba = model.predict_proba_one(data[0][0])
    assert list(proba) == [0, 1, 2] and math.isclose(sum(proba.values()), 1.0)


def test_sklearn_model_regressor_predict_one_equals_sklearn_predict() -> None:
    data = list(synth.Agrawal(seed=4).take(500))
    features = ["age", "salary", "hvalue"]
    X = np.array([[x[f] for f in features] for x, _ in data])
    y = np.array([x["loan"] for x, _ in data])
    estimator = LinearRegression().fit(X, y)
    model = SklearnModel(estimator, features, "regression")
    expected = estimator.predict(X)
    got = [model.predict_one(x) for x, _ in data]
    assert all(type(v) is float for v in got)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(TypeError, match="regressor"):
        model.predict_proba_one(data[0][0])


def test_sklearn_model_learn_one_leaves_the_model_unchanged(make_fitted) -> None:
    estimator, features, rows, _, labels = make_fitted()
    model = SklearnModel(estimator, features, "binary")
    before = pickle.dumps(model.estimator)
    predictions = [model.predict_proba_one(x) for x in rows[:50]]
    for x, y in zip(rows, labels, strict=True):
        assert model.learn_one(x, 1 - y) is None  # even the opposite labels teach it nothing
    model.learn_many(pd.DataFrame(rows), pd.Series(labels))
    assert pickle.dumps(model.estimator) == before
    assert [model.predict_proba_one(x) for x in rows[:50]] == predictions
    assert model.learns is False


def test_sklearn_model_pickle_round_trip_predicts_the_same(make_fitted) -> None:
    estimator, features, rows, _, _ = make_fitted(lambda y: bool(y))
    model = SklearnModel(estimator, features, "binary")
    again = loads_model(dumps_model(model))
    assert isinstance(again, SklearnModel) and again.features == features
    assert [again.predict_proba_one(x) for x in rows] == [model.predict_proba_one(x)
                                                          for x in rows]
    assert again.model_class == model.model_class and again.params == model.params


def test_loads_model_other_object_raises_model_error() -> None:
    with pytest.raises(ModelError, match="not a SklearnModel"):
        loads_model(pickle.dumps({"not": "a model"}))


def test_sklearn_model_missing_feature_raises_value_error_naming_it(make_fitted) -> None:
    estimator, features, rows, _, _ = make_fitted()
    model = SklearnModel(estimator, features, "binary")
    x = {k: v for k, v in rows[0].items() if k not in ("age", "loan")}
    with pytest.raises(ValueError, match=r"missing feature\(s\) age, loan \(it takes salary"):
        model.predict_proba_one(x)
    with pytest.raises(ValueError, match=r"missing feature\(s\) age, loan"):
        model.predict_proba_many(pd.DataFrame([x]))
    # Fields the model does not take are ignored, as a stream may carry more.
    assert model.predict_proba_one({**rows[0], "extra": 1.0}) == model.predict_proba_one(rows[0])


def test_sklearn_model_many_equals_one_by_one(make_fitted) -> None:
    estimator, features, rows, _, _ = make_fitted(lambda y: "yes" if y else "no")
    model = SklearnModel(estimator, features, "binary")
    frame = pd.DataFrame(rows[:300], index=range(100, 400))
    proba = model.predict_proba_many(frame)
    assert list(proba.columns) == ["no", "yes"] and list(proba.index) == list(frame.index)
    for (_, row), x in zip(proba.iterrows(), rows[:300], strict=True):
        one = model.predict_proba_one(x)
        assert all(math.isclose(row[c], one[c], rel_tol=1e-12) for c in one)
    assert model.predict_many(frame).tolist() == [model.predict_one(x) for x in rows[:300]]


@pytest.mark.parametrize(("task", "fragment"), [
    ("multiclass", "does not fit"), ("regression", "needs a regressor"), ("nope", "task must"),
])
def test_sklearn_model_wrong_task_raises_value_error(make_fitted, task, fragment) -> None:
    estimator, features, *_ = make_fitted()
    with pytest.raises(ValueError, match=fragment):
        SklearnModel(estimator, features, task)


def test_sklearn_model_wrong_features_or_no_probabilities_raise_value_error(
        make_fitted) -> None:
    estimator, features, _, X, labels = make_fitted()
    with pytest.raises(ValueError, match="fitted on 9 features, but 2"):
        SklearnModel(estimator, features[:2], "binary")
    with pytest.raises(ValueError, match="no predict_proba"):
        SklearnModel(SVC().fit(X[:200], labels[:200]), features, "binary")
    frame = pd.DataFrame(X, columns=features)
    by_name = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, labels)
    with pytest.raises(ValueError, match="not on the features"):
        SklearnModel(by_name, list(reversed(features)), "binary")


def test_sklearn_model_class_and_params_are_plain_json(make_fitted) -> None:
    estimator, features, *_ = make_fitted()
    model = SklearnModel(estimator, features, "binary")
    assert model.model_class == "sklearn.linear_model.LogisticRegression"
    json.dumps(model.params, allow_nan=False)
    assert model.params["C"] == 1.0 and model.params["max_iter"] == 100


def test_task_of_model_river_model_uses_river_task() -> None:
    river_model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    assert isinstance(river_model, compose.Pipeline)
    assert task_of_model(river_model) == "binary"
    assert task_of_model(linear_model.LinearRegression()) == "regression"


def test_scorer_core_serves_sklearn_model_and_learns_nothing(make_fitted) -> None:
    estimator, features, rows, _, labels = make_fitted()
    model = SklearnModel(estimator, features, "binary")
    core = ScorerCore(ScoringConfig(), name="scorer-0")
    core.apply(Deployment.single("test/sk-1"), {"test/sk-1": model})  # a hot swap to it
    assert core.model is model
    items: list[Event | Feedback] = []
    for i, (x, y) in enumerate(zip(rows[:200], labels[:200], strict=True)):
        items.append(Event(f"r{i}", "k", 0.0, x, 0, 2 * i, 0.0))
        items.append(Feedback(f"r{i}", "k", y, 0.0, 0, 2 * i + 1, 0.0))
    out = core.process(Batch(0, items))
    assert len(out.predictions) == 200 and not out.dead_letters
    scores = [json.loads(line)["score"] for line in out.predictions]
    # Scored as one batch: equal to one by one up to the last bits of BLAS rounding.
    expected = [{str(k): v for k, v in model.predict_proba_one(x).items()} for x in rows[:200]]
    assert all(s == pytest.approx(e, rel=1e-12) for s, e in zip(scores, expected, strict=True))
    assert core.stats()["learned"] == 200  # each label reached learn_one, which kept it frozen
    assert core.stats()["arms"][0]["learns"] is False


def test_scorer_scores_a_frozen_model_batch_at_once_same_scores_bad_row_dead_lettered(
        make_fitted: Callable[..., Fitted]) -> None:
    estimator, features, rows, _, _ = make_fitted()
    model = SklearnModel(estimator, features, "binary")
    core = ScorerCore(ScoringConfig(), name="scorer-0")
    core.apply(Deployment.single("p/sk-1"), {"p/sk-1": model})
    items: list[Any] = [Event(f"r{i}", f"k{i}", 0.0, x, 0, i, 0.0)
                        for i, x in enumerate(rows[:300])]
    bad = dict(rows[0])
    del bad[features[0]]
    items.insert(150, Event("bad", "kb", 0.0, bad, 0, 999, 0.0))
    out = core.process(Batch(0, items))
    scored = [json.loads(p) for p in out.predictions]
    assert [p["record_id"] for p in scored] == [f"r{i}" for i in range(300)]
    for p, x in zip(scored, rows[:300], strict=True):
        one = model.predict_proba_one(x)
        assert {int(k): v for k, v in p["score"].items()} == pytest.approx(one, rel=1e-12)
    assert [d.record_id for d in out.dead_letters] == ["bad"]
    assert "missing feature" in out.dead_letters[0].error
