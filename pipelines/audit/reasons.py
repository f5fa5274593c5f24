"""Reason codes at scoring time: each prediction's top-k reasons (feature, value,
contribution), the "adverse action notice" of credit scoring.

Computed on the model as it scores (``scoring.explain.top_k``), so they cost the hot path
a little; ``riffle explain`` gives the full explanation later, of the exact model state.

- **Linear** (``LogisticRegression``/``LinearRegression``, alone or after one
  ``StandardScaler``): a feature's contribution is its weight times its scaled value — a
  share of the raw score (log-odds, or the value); the reasons are the k largest by size.
  The same terms as :func:`pipelines.audit.explainers.linear`.
- **Hoeffding trees** (classifier or regressor, alone or after transformers): along the
  record's path from the root, each split's contribution is how much the predicted
  class's share (a regressor: the mean target) changed from the node to the child taken,
  from the statistics the nodes hold (branches keep theirs from when they split) — path
  contributions in the manner of Saabas. They sum to the leaf's share minus the root's.
- Any other model: no reason codes (:func:`reasons_for` returns None).

>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> for x, y in [({"a": 1.0, "b": 2.0}, True), ({"a": 3.0, "b": 0.0}, False)] * 5:
...     model.learn_one(x, y)
>>> x = {"a": 3.0, "b": 0.0}
>>> top = reasons_for(model, 5)(x, False)       # every feature: they add up to the log-odds
>>> import math
>>> p = model.predict_proba_one(x)[True]
>>> lr = model["LogisticRegression"]
>>> abs(sum(c for _, _, c in top) + lr.intercept - math.log(p / (1 - p))) < 1e-9
True
>>> reasons_for(model, 1)(x, False) == top[:1]
True

A linear model after a ``StandardScaler`` is scored and explained in one pass
(:func:`scored_with_reasons`): the scaled features the prediction needs are the ones the
reasons are made of, so the scaling is done once, and the score is River's own.

>>> both = scored_with_reasons(model, 5)
>>> score, why = both(x)
>>> score == model.predict_proba_one(x), why == top
(True, True)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from river import compose, linear_model, preprocessing

__all__ = ["Reasons", "ScoredWithReasons", "reasons_for", "scored_with_reasons"]

Reasons = Callable[[dict[str, Any], Any], list[list[Any]]]
"""``reasons(features, prediction)``: the top-k reasons, largest first, each
``[feature, value, contribution]`` (triples: a prediction record stays small)."""

ScoredWithReasons = Callable[[dict[str, Any]], tuple[Any, list[list[Any]]]]
"""``both(features)``: the model's score (class probabilities, or the value) and the
top-k reasons of it, from one scaling of the features."""

_LINEAR = (linear_model.LogisticRegression, linear_model.LinearRegression)


def is_tree(model: Any) -> bool:
    """Whether ``model`` is a Hoeffding tree (classifier or regressor, adaptive ones
    too). Only a class of ``river.tree``'s modules can make one, so ``river.tree``
    itself (every tree, and ``scipy.stats`` with them) is imported only then."""
    if not any(c.__module__.startswith("river.tree.") for c in type(model).__mro__):
        return False
    from river import tree

    return isinstance(model, (tree.HoeffdingTreeClassifier, tree.HoeffdingTreeRegressor))


def reasons_for(model: Any, top_k: int) -> Reasons | None:
    """The reason codes of ``model``'s predictions, or None for a model without them."""
    steps = list(model.steps.values()) if isinstance(model, compose.Pipeline) else [model]
    final, front = steps[-1], steps[:-1]
    if isinstance(final, _LINEAR) and len(front) <= 1 and all(
            type(s) is preprocessing.StandardScaler for s in front):
        return _linear(final, front[0] if front else None, top_k)
    if is_tree(final) and all(hasattr(s, "transform_one") for s in front):
        return _tree(final, front, top_k)
    return None


def scored_with_reasons(model: Any, top_k: int) -> ScoredWithReasons | None:
    """Score and reasons in one pass, for ``StandardScaler | LogisticRegression`` (or
    ``LinearRegression``); None for any other model (score it, then :func:`reasons_for`).

    The pipeline's prediction is its scaler's ``transform_one`` and then the linear
    model's own prediction on the scaled features: the same calls here, so the score is
    the pipeline's to the bit. The contributions are the weights times those scaled
    features, the k largest by size.
    """
    if not isinstance(model, compose.Pipeline) or len(model.steps) != 2:
        return None
    scaler, final = model.steps.values()
    if type(scaler) is not preprocessing.StandardScaler or not isinstance(final, _LINEAR):
        return None
    pipeline_type, transform = type(model), scaler.transform_one
    predict = (final.predict_proba_one if isinstance(final, linear_model.LogisticRegression)
               else final.predict_one)
    fallback = reasons_for(model, top_k)
    assert fallback is not None

    def both(x: dict[str, Any]) -> tuple[Any, list[list[Any]]]:
        if pipeline_type._LEARN_UNSUPERVISED_DURING_PREDICT:  # the scaler learns as it predicts
            score = (model.predict_proba_one(x) if predict is not final.predict_one
                     else model.predict_one(x))
            return score, fallback(x, None)
        scaled = transform(x)
        weight = final._weights.to_dict().get  # the live weights, as a plain dict: one copy
        return predict(scaled), _largest(x, [(f, weight(f, 0.0) * v)
                                             for f, v in scaled.items()], top_k)

    return both


_BY_VALUE = itemgetter(1)


def _largest(x: dict[str, Any], terms: list[tuple[str, float]], k: int) -> list[list[Any]]:
    """The reasons of the ``k`` terms ``(feature, contribution)`` largest in size, largest
    first, none that is zero: ``[feature, x[feature], contribution]``.

    Sorted once by signed value (a C-level key; ``terms`` is the caller's own list, sorted
    in place), the largest in size are taken from both ends; of two terms of the same
    size, the positive one comes first, and of two equal terms, the feature that came
    first (the sort is stable).

    >>> x = {"a": 1, "b": 2, "c": 3, "d": 4}
    >>> _largest(x, [("a", 0.5), ("b", -2.0), ("c", 0.0), ("d", 1.0)], 3)
    [['b', 2, -2.0], ['d', 4, 1.0], ['a', 1, 0.5]]
    >>> _largest(x, [("a", 0.0)], 3)
    []
    """
    terms.sort(key=_BY_VALUE)
    lo, hi = 0, len(terms) - 1
    out: list[list[Any]] = []
    for _ in range(k):
        if lo > hi:
            break
        low, high = terms[lo], terms[hi]
        if -low[1] > high[1]:
            out.append([low[0], x[low[0]], low[1]])
            lo += 1
        elif high[1]:
            out.append([high[0], x[high[0]], high[1]])
            hi -= 1
        else:  # what is left is zero
            break
    return out


def _linear(model: Any, scaler: Any, top_k: int) -> Reasons:
    if scaler is not None and scaler.window_size is None and scaler.with_std:
        # StandardScaler.transform_one's arithmetic, folded into one pass (no scaled dict).
        means, variances = scaler.means, scaler.vars

        def reasons(x: dict[str, Any], prediction: Any) -> list[list[Any]]:
            weight = model._weights.to_dict().get  # the live weights (learning replaces them)
            terms = [(f, weight(f, 0.0) * ((xi - means[f]) / v**0.5 if (v := variances[f])
                                           else 0.0)) for f, xi in x.items()]
            return _largest(x, terms, top_k)

        return reasons
    transform = scaler.transform_one if scaler is not None else None

    def general(x: dict[str, Any], prediction: Any) -> list[list[Any]]:
        scaled = transform(x) if transform is not None else x
        weight = model._weights.to_dict().get
        return _largest(x, [(f, weight(f, 0.0) * v) for f, v in scaled.items()], top_k)

    return general


def _tree(model: Any, front: list[Any], top_k: int) -> Reasons:
    from river import tree
    from river.tree.nodes.branch import DTBranch

    classifier = isinstance(model, tree.HoeffdingTreeClassifier)

    def share(stats: Any, target: Any) -> float:
        if classifier:
            total = sum(stats.values()) if stats else 0.0
            return stats.get(target, 0.0) / total if total else 0.0
        return stats.mean.get() if hasattr(stats, "mean") else 0.0

    def reasons(x: dict[str, Any], prediction: Any) -> list[list[Any]]:
        xt = x
        for step in front:
            xt = step.transform_one(xt)
        root = model._root
        if not isinstance(root, DTBranch):
            return []
        path: list[Any] = list(root.walk(xt, until_leaf=True))  # branches, then a leaf
        terms = []
        for node, child in itertools.pairwise(path):
            c = share(child.stats, prediction) - share(node.stats, prediction)
            if c:
                terms.append((abs(c), node.feature, c))
        terms.sort(reverse=True)
        return [[f, x.get(f), c] for _, f, c in terms[:top_k]]

    return reasons
