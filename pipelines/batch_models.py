"""A batch-trained scikit-learn model behind River's verbs.

The scorer serves a model through River's interface: ``predict_proba_one(x)`` (a dict
of class probabilities) for classifiers, ``predict_one(x)`` for regressors, and
``learn_one(x, y)`` for each label. :class:`SklearnModel` gives a fitted scikit-learn
estimator (or :class:`~sklearn.pipeline.Pipeline`) that interface, so a scorer serves
either kind of model the same way. A batch model is frozen while it serves:
``learn_one`` does nothing, and ``learns`` says so (a River model learns).

Runtime-free: no Ray here.

>>> import numpy as np
>>> from sklearn.linear_model import LogisticRegression
>>> X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
>>> est = LogisticRegression().fit(X, [True, False, True, False])
>>> model = SklearnModel(est, ["a", "b"], "binary")
>>> proba = model.predict_proba_one({"a": 0.1, "b": 0.8})
>>> sorted(proba), type(next(iter(proba))).__name__, round(sum(proba.values()), 9)
([False, True], 'bool', 1.0)
>>> model.predict_one({"a": 0.1, "b": 0.8}), model.learns
(True, False)
>>> model.model_class, model.params["C"]
('sklearn.linear_model.LogisticRegression', 1.0)
>>> loads_model(dumps_model(model)).predict_proba_one({"a": 0.1, "b": 0.8}) == proba
True
>>> model.predict_one({"a": 0.1})
Traceback (most recent call last):
...
ValueError: SklearnModel(LogisticRegression): missing feature(s) b (it takes a, b)
"""

from __future__ import annotations

import importlib
import math
import pickle
from typing import Any, get_args

import numpy as np
import pandas as pd
from sklearn.base import is_classifier, is_regressor
from sklearn.pipeline import Pipeline

from pipelines.errors import ModelError
from pipelines.models import Task
from pipelines.scoring import task_of_model

__all__ = ["SklearnModel", "dumps_model", "loads_model", "public_name", "sklearn_task",
           "task_of_model"]


class SklearnModel:
    """A fitted scikit-learn estimator served one record at a time, as River serves.

    Parameters
    ----------
    estimator
        A fitted classifier (with ``predict_proba``) or regressor, or a ``Pipeline``
        ending in one, fitted on a 2-D array whose columns are ``features`` in order.
    features
        The feature names, in the estimator's column order. A record must have every
        one of them; other fields of the record are ignored.
    task
        ``"binary"`` or ``"multiclass"`` (a classifier of two, or more, classes) or
        ``"regression"``; checked against the estimator.

    Notes
    -----
    Each ``*_one`` call builds a one-row ``float64`` array in feature order (about 2 µs)
    and asks the estimator, so it costs what scikit-learn's per-call input validation
    costs: 0.5-1 ms with scikit-learn 1.9 for a scaled logistic regression, about 100
    times River's per-record cost (5-9 µs). ``predict_proba_many`` pays that once per
    batch (about 9 µs a row for 500 rows, building the DataFrame included); since a batch
    model does not learn, scoring a batch's events together gives the same predictions.
    """

    learns = False
    """A batch model is frozen while it serves: a new version is trained and registered."""

    def __init__(self, estimator: Any, features: list[str], task: Task) -> None:
        if task not in get_args(Task):
            raise ValueError(f"task must be one of {', '.join(get_args(Task))}, not {task!r}")
        if not features:
            raise ValueError("a SklearnModel needs at least one feature")
        if len(set(features)) != len(features):
            raise ValueError(f"features must be distinct, got {features}")
        self.estimator = estimator
        self.features = list(features)
        self.task: Task = task
        self._check_fits()
        # Plain Python values (not numpy scalars), as the labels of the stream are.
        self._classes: list[Any] = (estimator.classes_.tolist() if task != "regression"
                                    else [])

    def _check_fits(self) -> None:
        est, name = self.estimator, self._name
        n_in = getattr(est, "n_features_in_", None)
        if n_in is not None and n_in != len(self.features):
            raise ValueError(f"{name} was fitted on {n_in} features, but {len(self.features)} "
                             f"are named: {', '.join(self.features)}")
        names_in = getattr(est, "feature_names_in_", None)
        if names_in is not None and list(names_in) != self.features:
            raise ValueError(f"{name} was fitted on columns {list(names_in)}, not on the "
                             f"features {self.features} in this order")
        if self.task == "regression":
            if not is_regressor(est):
                raise ValueError(f"task regression needs a regressor, not {name}")
            return
        if not is_classifier(est):
            raise ValueError(f"task {self.task} needs a classifier, not {name}")
        if not hasattr(est, "predict_proba"):
            raise ValueError(f"{name} has no predict_proba: the scorer needs class "
                             "probabilities")
        classes = getattr(est, "classes_", None)
        if classes is None:
            raise ValueError(f"{name} is not fitted (it has no classes_)")
        if (len(classes) == 2) != (self.task == "binary"):
            raise ValueError(f"task {self.task} does not fit {name}'s {len(classes)} classes")

    @property
    def _name(self) -> str:
        return f"SklearnModel({type(_final(self.estimator)).__name__})"

    def _row(self, x: dict[str, Any]) -> np.ndarray:
        try:
            return np.array([[x[f] for f in self.features]], dtype=np.float64)
        except KeyError:
            missing = [f for f in self.features if f not in x]
            raise ValueError(f"{self._name}: missing feature(s) {', '.join(missing)} "
                             f"(it takes {', '.join(self.features)})") from None

    # -- River's verbs -----------------------------------------------------------------
    def predict_proba_one(self, x: dict[str, Any]) -> dict[Any, float]:
        """Class probabilities of record ``x``; the classes are the labels it was fitted on."""
        if self.task == "regression":
            raise TypeError(f"{self._name} is a regressor: it has no class probabilities")
        proba = self.estimator.predict_proba(self._row(x))[0]
        return dict(zip(self._classes, proba.tolist(), strict=True))

    def predict_one(self, x: dict[str, Any]) -> Any:
        """The most probable class (as the scorer and River pick it), or the predicted value."""
        if self.task != "regression":
            proba = self.predict_proba_one(x)
            return max(proba, key=proba.__getitem__)
        return float(self.estimator.predict(self._row(x))[0])

    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        """Nothing: a batch model does not learn while it serves (see :attr:`learns`)."""

    # River's mini-batch verbs: one call per batch instead of per record. A model that
    # does not learn predicts a batch's events exactly as it would one by one.
    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        """Class probabilities of each row of ``X``: one column per class, ``X``'s index."""
        if self.task == "regression":
            raise TypeError(f"{self._name} is a regressor: it has no class probabilities")
        proba = self.estimator.predict_proba(self._matrix(X))
        return pd.DataFrame(proba, index=X.index, columns=pd.Index(self._classes,
                                                                   dtype=object))

    def predict_many(self, X: pd.DataFrame) -> pd.Series:
        """The most probable class, or the predicted value, of each row of ``X``."""
        if self.task != "regression":
            proba = self.estimator.predict_proba(self._matrix(X))
            classes = np.empty(len(self._classes), dtype=object)
            classes[:] = self._classes
            return pd.Series(classes[proba.argmax(axis=1)], index=X.index, dtype=object)
        return pd.Series(self.estimator.predict(self._matrix(X)), index=X.index,
                         dtype=np.float64)

    def learn_many(self, X: pd.DataFrame, y: pd.Series) -> None:
        """Nothing, as :meth:`learn_one`."""

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        missing = [f for f in self.features if f not in X.columns]
        if missing:
            raise ValueError(f"{self._name}: missing feature(s) {', '.join(missing)} "
                             f"(it takes {', '.join(self.features)})")
        return X[self.features].to_numpy(dtype=np.float64)

    # -- what the registry records -----------------------------------------------------
    @property
    def model_class(self) -> str:
        """The final estimator's public dotted name, e.g.
        ``sklearn.linear_model.LogisticRegression``."""
        return public_name(type(_final(self.estimator)))

    @property
    def params(self) -> dict[str, Any]:
        """The final estimator's parameters, as plain JSON (other values as their repr)."""
        raw = _final(self.estimator).get_params(deep=False)
        return {key: _plain(value) for key, value in sorted(raw.items())}

    def __repr__(self) -> str:
        return f"{self._name}[{self.task}; {', '.join(self.features)}]"


def _final(estimator: Any) -> Any:
    return estimator[-1] if isinstance(estimator, Pipeline) else estimator


def public_name(cls: type) -> str:
    """``cls``'s dotted name from the deepest public module that exports it.

    >>> from sklearn.ensemble import HistGradientBoostingClassifier
    >>> HistGradientBoostingClassifier.__module__
    'sklearn.ensemble._hist_gradient_boosting.gradient_boosting'
    >>> public_name(HistGradientBoostingClassifier)
    'sklearn.ensemble.HistGradientBoostingClassifier'
    """
    parts = cls.__module__.split(".")
    public = next((i for i, p in enumerate(parts) if p.startswith("_")), len(parts))
    for end in range(public, 0, -1):
        module = ".".join(parts[:end])
        try:
            if getattr(importlib.import_module(module), cls.__name__, None) is cls:
                return f"{module}.{cls.__qualname__}"
        except ImportError:
            continue
    return f"{cls.__module__}.{cls.__qualname__}"


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    return repr(value)


def sklearn_task(estimator: Any) -> Task:
    """The task of a fitted scikit-learn estimator: by its kind and number of classes.

    >>> from sklearn.linear_model import LinearRegression
    >>> sklearn_task(LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]))
    'regression'
    """
    if is_classifier(estimator):
        return "binary" if len(estimator.classes_) == 2 else "multiclass"
    if is_regressor(estimator):
        return "regression"
    raise ModelError(f"{type(_final(estimator)).__name__} is neither a classifier nor a "
                     "regressor")


def dumps_model(model: SklearnModel) -> bytes:
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


def loads_model(blob: bytes) -> SklearnModel:
    """A :class:`SklearnModel` from :func:`dumps_model`'s bytes.

    Unpickling runs code: load only an artifact whose hash the registry verified
    (:meth:`~pipelines.registry.Registry.load_artifact`). A model pickled by another
    scikit-learn version may load with scikit-learn's ``InconsistentVersionWarning``.
    """
    model = pickle.loads(blob)
    if not isinstance(model, SklearnModel):
        raise ModelError(f"the artifact holds a {type(model).__name__}, not a SklearnModel")
    return model
