"""Why a model said what it said about one record: the method each kind of model allows.

- **Linear** (River ``LogisticRegression`` or ``LinearRegression``, alone or after a
  ``StandardScaler`` in a ``compose.Pipeline``): the raw score (log-odds, or the value)
  is the intercept plus, per feature, weight times scaled value; these parts sum to the
  raw score exactly. The scaler's mean and variance of each feature, as they were, are
  part of the answer (they say what "scaled" meant at that moment).
- **Trees** (``HoeffdingTreeClassifier``/``Regressor`` and their adaptive variants, alone
  or after transformers): the decision path from the root, each split with the record's
  value and the branch taken, and the leaf's statistics and prediction. An adaptive tree
  also consults the leaves of its alternate subtrees: each one reached is listed, and
  their combination is the score.
- **Anything else**: SHAP values (the optional ``shap`` package: ``pip install
  'riffle-ml[explain]'``) of the predicted class's probability (or the value), over a
  background of the examples the scorer learned just before the record. With up to
  :data:`EXACT_MAX_FEATURES` features they are exact Shapley values of that background
  (every coalition evaluated); beyond, a sampled permutation estimate.

>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> for x, y in [({"a": 1.0, "b": 2.0}, True), ({"a": 3.0, "b": 0.0}, False)] * 5:
...     model.learn_one(x, y)
>>> why = explain_model(model, {"a": 2.0, "b": 1.0}, task="binary")
>>> why["method"], abs(why["linear"]["residual"]) < 1e-12
('linear', True)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

from river import compose, linear_model, preprocessing

from pipelines.audit.reasons import is_tree
from pipelines.errors import AuditError

__all__ = ["EXACT_MAX_FEATURES", "ShapMissing", "explain_model", "linear", "tree_path"]

EXACT_MAX_FEATURES = 12
"""Up to this many features, SHAP values are computed exactly (2^n coalitions)."""

BACKGROUND = 20
"""Examples in SHAP's background sample (exact values cost 2^features x this many
model calls: ~3 s for 9 features and a naive Bayes model)."""

_LINEAR = (linear_model.LogisticRegression, linear_model.LinearRegression)


class ShapMissing(AuditError):
    """The model needs SHAP and the ``shap`` package is not installed."""


def _steps(model: Any) -> list[Any]:
    return list(model.steps.values()) if isinstance(model, compose.Pipeline) else [model]


def explain_model(model: Any, features: dict[str, Any], *, task: str,
                  background: Callable[[int], list[dict[str, Any]]] | None = None,
                  prediction: Any = None) -> dict[str, Any]:
    """``{"method": ..., <method>: {...}}`` for ``model``'s score of ``features``."""
    steps = _steps(model)
    final, front = steps[-1], steps[:-1]
    if isinstance(final, _LINEAR) and all(
            type(s) is preprocessing.StandardScaler for s in front) and len(front) <= 1:
        return {"method": "linear", "linear": linear(final, front[0] if front else None,
                                                     features)}
    if is_tree(final):
        x = dict(features)
        for step in front:  # transformers in front: the tree sees what they make of x
            x = step.transform_one(x)
        return {"method": "tree", "tree": tree_path(final, x)}
    return {"method": "shap", "shap": shap_values(model, features, task=task,
                                                  background=background or (lambda n: []),
                                                  prediction=prediction)}


def linear(model: Any, scaler: Any, features: dict[str, Any]) -> dict[str, Any]:
    """Per-feature contributions (weight x scaled value) to the raw score and the
    intercept; ``residual`` is their sum minus the model's own raw score."""
    scaled = scaler.transform_one(features) if scaler is not None else dict(features)
    weights = model.weights
    rows = []
    for name, value in features.items():
        w = float(weights.get(name, 0.0))
        z = float(scaled.get(name, 0.0))
        row: dict[str, Any] = {"feature": name, "value": value, "scaled": z, "weight": w,
                               "contribution": w * z}
        if scaler is not None:
            row["mean"] = float(scaler.means[name]) if name in scaler.means else 0.0
            row["variance"] = float(scaler.vars[name]) if name in scaler.vars else 0.0
            row["count"] = int(scaler.counts[name]) if name in scaler.counts else 0
        rows.append(row)
    rows.sort(key=lambda r: -abs(r["contribution"]))
    intercept = float(model.intercept)
    raw = float(model._raw_dot_one(scaled))
    total = intercept + math.fsum(r["contribution"] for r in rows)
    out = {"intercept": intercept, "raw_score": raw, "sum": total, "residual": total - raw,
           "link": "logistic" if isinstance(model, linear_model.LogisticRegression)
           else "identity", "scaler": scaler is not None, "contributions": rows}
    return out


def tree_path(model: Any, x: dict[str, Any]) -> dict[str, Any]:
    """The decision path of ``x`` through a Hoeffding tree, and the leaves that score it."""
    from river import tree
    from river.tree.nodes.branch import DTBranch

    root = model._root
    regression = isinstance(model, tree.HoeffdingTreeRegressor)
    if root is None:
        return {"path": [], "leaves": [], "combined": None, "leaf_gives_score": True}
    nodes: list[Any] = (list(root.walk(x, until_leaf=True)) if isinstance(root, DTBranch)
                        else [root])
    path: list[dict[str, Any]] = []
    for node, child in itertools.pairwise(nodes):
        if not isinstance(node, DTBranch):
            continue
        index = next(i for i, c in enumerate(node.children) if c is child)
        feature = node.feature  # type: ignore[attr-defined]  # every River split has one
        present = feature in x
        step: dict[str, Any] = {
            "depth": len(path), "feature": feature, "value": x.get(feature),
            "test": node.repr_branch(index), "branch": index,
            "missing": not present}
        if hasattr(node, "threshold"):
            step["threshold"] = node.threshold
        path.append(step)
    reached: Any = root.traverse(x, until_leaf=True) if isinstance(root, DTBranch) else root
    leaves = reached if isinstance(reached, list) else [reached]
    described = [_leaf(leaf, x, model, regression) for leaf in leaves]
    combined = _combine(model, [leaf.prediction(x, tree=model) for leaf in leaves],
                        regression)
    own = model.predict_one(x) if regression else model.predict_proba_one(x)
    if regression:
        gives = abs(float(combined) - float(own)) <= 1e-9
    else:
        gives = all(abs(combined.get(c, 0.0) - p) <= 1e-9 for c, p in own.items())
    return {"path": path, "leaves": described, "combined": _plain(combined),
            "leaf_gives_score": gives,
            "leaf_prediction": getattr(model, "leaf_prediction", None)}


def _leaf(leaf: Any, x: dict[str, Any], model: Any, regression: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"depth": getattr(leaf, "depth", None),
                           "weight": float(leaf.total_weight)}
    if regression:
        var = leaf.stats
        out["mean"] = float(var.mean.get())
        out["n"] = float(var.mean.n)
        out["variance"] = float(var.get())
    else:
        out["class_counts"] = _plain(dict(leaf.stats))
    out["prediction"] = _plain(leaf.prediction(x, tree=model))
    return out


def _combine(model: Any, predictions: list[Any], regression: bool) -> Any:
    """The leaves' predictions as the tree combines them into its score."""
    if regression:
        return sum(predictions) / len(predictions)
    from river import tree

    proba: dict[Any, float] = {c: 0.0 for c in model.classes}
    for p in predictions:
        for c, v in (p or {}).items():
            proba[c] = proba.get(c, 0.0) + v
    if isinstance(model, tree.HoeffdingAdaptiveTreeClassifier):  # it normalises the sum
        total = sum(proba.values())
        if total > 0:
            proba = {c: v / total for c, v in proba.items()}
    return proba


def _plain(value: Any) -> Any:
    """Class-keyed dicts with keys as JSON writes them."""
    if isinstance(value, dict):
        return {(str(k).lower() if isinstance(k, bool) else str(k)): float(v)
                for k, v in value.items()}
    return value


def shap_values(model: Any, features: dict[str, Any], *, task: str,
                background: Callable[[int], list[dict[str, Any]]],
                prediction: Any = None) -> dict[str, Any]:
    """SHAP values of the score of ``features`` (the predicted class's probability, or
    the value), with the background drawn by ``background(n)``."""
    try:
        import numpy as np
        import shap
    except ImportError:
        raise ShapMissing("this model is explained with SHAP values and the shap package "
                          "is not installed (pip install 'riffle-ml[explain]')") from None
    names = sorted(features)
    rows = [b for b in background(BACKGROUND) if all(n in b for n in names)]
    if not rows:
        raise AuditError("no examples before the record to draw SHAP's background from")
    regression = task == "regression"
    if not regression and prediction is None:
        scores = model.predict_proba_one(dict(features))
        prediction = max(scores, key=scores.get)
    classes = {str(c).lower() if isinstance(c, bool) else str(c): c
               for c in (getattr(model, "classes", None) or [])}
    target = prediction if regression else _class_of(prediction, classes)

    def f(matrix: Any) -> Any:
        out = []
        for values in matrix:
            x = dict(zip(names, (v.item() if hasattr(v, "item") else v for v in values),
                         strict=True))
            if regression:
                out.append(float(model.predict_one(x)))
            else:
                out.append(float(model.predict_proba_one(x).get(target, 0.0)))
        return np.array(out)

    data = np.array([[b[n] for n in names] for b in rows], dtype=float)
    point = np.array([[features[n] for n in names]], dtype=float)
    masker = shap.maskers.Independent(data, max_samples=len(rows))
    exact = len(names) <= EXACT_MAX_FEATURES
    explainer = (shap.explainers.Exact(f, masker) if exact
                 else shap.explainers.Permutation(f, masker))
    result = explainer(point) if exact else explainer(point, max_evals=max(
        2 * len(names) + 1, 500))
    values = [float(v) for v in result.values[0]]
    base = float(np.asarray(result.base_values).reshape(-1)[0])
    fx = float(f(point)[0])
    residual = base + math.fsum(values) - fx
    rows_out = sorted(({"feature": n, "value": features[n], "shap": v}
                       for n, v in zip(names, values, strict=True)),
                      key=lambda r: -abs(r["shap"]))
    return {
        "method": "exact" if exact else "permutation",
        "explains": "value" if regression else f"probability of {_plain({target: 0})}",
        "background": len(rows), "base_value": base, "output": fx, "residual": residual,
        "error_bound": (0.0 if exact else None),
        "error_note": ("exact Shapley values of the interventional game over the "
                       "background sample; they differ from those of the full history by "
                       "the background's sampling error" if exact else
                       "permutation sampling: values are estimates; their sum is exact"),
        "values": rows_out}


def _class_of(prediction: Any, classes: dict[str, Any]) -> Any:
    """The class the trail's JSON prediction names, in the model's own type."""
    key = str(prediction).lower() if isinstance(prediction, bool) else str(prediction)
    return classes.get(key, prediction)
