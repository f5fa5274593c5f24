"""Two models compared structurally: every parameter and every piece of learned state.

``pickle.dumps`` of two equal River models is usually the same bytes, but not always:
dict order follows the order features were first seen, a float that differs in its last
bit is a different byte, and a pickle carries object identity. So the proof that a
rebuilt model equals an artifact is a walk over both objects side by side:

- numbers: floats (Python and numpy) equal to ``tolerance`` (absolute; NaN equals NaN),
  integers and booleans exactly;
- numpy arrays: same shape, numbers as above, others exactly;
- mappings (``dict``, ``defaultdict``, ``Counter``, River's ``VectorDict``): the same keys
  (order ignored), then each value; a ``defaultdict``'s factory too;
- sequences: the same length, then each item; sets exactly;
- random generators (``random.Random``, numpy's): the same state;
- classes, functions and modules: the same object;
- any other object: the same type, then its ``__dict__`` and ``__slots__`` (a River
  estimator's constructor parameters, which ``_get_params`` reads, are attributes of
  the same name, so they are compared with its learned state); an object with neither
  (a C type) by its ``pickle.dumps`` bytes.

For ``StandardScaler | LogisticRegression`` this compares the scaler's counts, means and
variances per feature, the weights per feature, the intercept, the optimizer's step
count and every constructor parameter; for a Hoeffding tree every node, split and leaf
statistic. The first difference found is named by its path.

>>> from river import linear_model, preprocessing
>>> def model():
...     return preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> a, b = model(), model()
>>> for m in (a, b):
...     m.learn_one({"x": 1.0, "y": 2.0}, True)
...     m.learn_one({"x": 3.0, "y": 0.5}, False)
>>> same = compare_models(a, b)
>>> same.equal, same.max_error, same.n_values > 10, same.same_bytes
(True, 0.0, True, True)
>>> b["LogisticRegression"].learn_one({"x": 0.0, "y": 0.0}, True)
>>> diff = compare_models(a, b)
>>> diff.equal, diff.first_difference.split(":")[0]
(False, "steps['LogisticRegression'].optimizer.n_iterations")
"""

from __future__ import annotations

import hashlib
import math
import pickle
import random
import types
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TOLERANCE", "Comparison", "compare_models", "model_sha256"]

TOLERANCE = 1e-12
"""How close two parameters must be (absolute)."""


@dataclass(frozen=True)
class Comparison:
    equal: bool
    max_error: float
    """The largest absolute difference between two compared floats."""
    n_values: int
    """How many numbers were compared."""
    first_difference: str | None
    """``path: a != b`` of the first difference found; None when equal."""
    same_bytes: bool
    """``pickle.dumps`` of both gives the same bytes (not needed for ``equal``)."""


def model_sha256(model: Any) -> str:
    """The SHA-256 of ``model``'s pickle (highest protocol)."""
    return hashlib.sha256(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)).hexdigest()


def compare_models(a: Any, b: Any, *, tolerance: float = TOLERANCE) -> Comparison:
    """Whether ``a`` and ``b`` hold the same parameters and state (see the module)."""
    walk = _Walk(tolerance)
    walk.compare(a, b, "")
    try:
        same_bytes = model_sha256(a) == model_sha256(b)
    except (pickle.PicklingError, TypeError, AttributeError):
        same_bytes = False
    return Comparison(walk.first is None, walk.max_error, walk.n_values, walk.first,
                      same_bytes)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _Walk:
    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.max_error = 0.0
        self.n_values = 0
        self.first: str | None = None
        self._seen: set[tuple[int, int]] = set()

    def differ(self, path: str, a: Any, b: Any, what: str = "") -> None:
        if self.first is None:
            where = path.lstrip(".") or "the model"
            self.first = f"{where}: {what or f'{_short(a)} != {_short(b)}'}"

    def compare(self, a: Any, b: Any, path: str) -> None:
        if self.first is not None:
            return  # the first difference is the answer; the walk stops there
        if isinstance(a, bool | np.bool_) or isinstance(b, bool | np.bool_):
            if type(a) is not type(b) or bool(a) != bool(b):
                self.differ(path, a, b)
            return
        if isinstance(a, float | np.floating) and isinstance(b, float | np.floating):
            self._float(float(a), float(b), path)
            return
        if isinstance(a, int | np.integer) and isinstance(b, int | np.integer):
            self.n_values += 1
            if int(a) != int(b):
                self.differ(path, a, b)
            return
        if type(a) is not type(b):
            self.differ(path, a, b, f"a {type(a).__name__} and a {type(b).__name__}")
            return
        if a is None or isinstance(a, str | bytes | complex | range):
            if a != b:
                self.differ(path, a, b)
            return
        if isinstance(a, type | types.FunctionType | types.BuiltinFunctionType
                      | types.ModuleType | types.MethodType):
            if a is not b and getattr(a, "__qualname__", a) != getattr(b, "__qualname__", b):
                self.differ(path, a, b)
            return
        pair = (id(a), id(b))
        if pair in self._seen:
            return
        self._seen.add(pair)
        if isinstance(a, np.ndarray):
            self._array(a, b, path)
        elif isinstance(a, random.Random):
            if a.getstate() != b.getstate():
                self.differ(path, a, b, "random generators in different states")
        elif isinstance(a, np.random.Generator | np.random.RandomState):
            sa = a.bit_generator.state if isinstance(a, np.random.Generator) else a.get_state()
            sb = b.bit_generator.state if isinstance(b, np.random.Generator) else b.get_state()
            self.compare(sa, sb, f"{path}.<state>")
        elif isinstance(a, dict) or (hasattr(a, "keys") and hasattr(a, "items")):
            self._mapping(a, b, path)
        elif isinstance(a, list | tuple) or type(a).__name__ == "deque":
            if len(a) != len(b):
                self.differ(path, a, b, f"{len(a)} items != {len(b)} items")
                return
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                self.compare(x, y, f"{path}[{i}]")
        elif isinstance(a, set | frozenset):
            if a != b:
                self.differ(path, a, b)
        else:
            self._object(a, b, path)

    def _float(self, a: float, b: float, path: str) -> None:
        self.n_values += 1
        if math.isnan(a) or math.isnan(b):
            if not (math.isnan(a) and math.isnan(b)):
                self.differ(path, a, b)
            return
        if math.isinf(a) or math.isinf(b):
            if a != b:
                self.differ(path, a, b)
            return
        err = abs(a - b)
        self.max_error = max(self.max_error, err)
        if err > self.tolerance:
            self.differ(path, a, b, f"{a!r} != {b!r} (off by {err:.3g})")

    def _array(self, a: np.ndarray, b: np.ndarray, path: str) -> None:
        if a.shape != b.shape:
            self.differ(path, a, b, f"shape {a.shape} != {b.shape}")
        elif a.dtype.kind in "fc" and b.dtype.kind in "fc":
            self.n_values += a.size
            x, y = a.astype(np.complex128).ravel(), b.astype(np.complex128).ravel()
            nan_x, nan_y = np.isnan(x), np.isnan(y)
            err = np.abs(np.where(nan_x | nan_y, 0, x - y))
            worst = float(err.max(initial=0.0))
            if np.isnan(err).any() or (nan_x != nan_y).any():
                self.differ(path, a, b, "NaN or infinity in one array only")
                return
            self.max_error = max(self.max_error, worst)
            if worst > self.tolerance:
                i = int(err.argmax())
                self.differ(f"{path}[{i}]", x[i], y[i], f"{x[i].real!r} != {y[i].real!r} "
                            f"(off by {worst:.3g})")
        elif a.dtype != b.dtype or not np.array_equal(a, b):
            self.differ(path, a, b)
        else:
            self.n_values += a.size

    def _mapping(self, a: Any, b: Any, path: str) -> None:
        if isinstance(a, defaultdict):
            self.compare(a.default_factory, b.default_factory, f"{path}.default_factory")
        ka, kb = list(a.keys()), list(b.keys())
        if set(ka) != set(kb):
            only = sorted(map(repr, set(ka) ^ set(kb)))[:3]
            self.differ(path, a, b, f"different keys ({', '.join(only)} in one only)")
            return
        for k in ka:
            self.compare(a[k], b[k], f"{path}[{k!r}]")

    def _object(self, a: Any, b: Any, path: str) -> None:
        slots = [s for cls in type(a).__mro__ for s in getattr(cls, "__slots__", ())
                 if s not in ("__dict__", "__weakref__")]
        state_a = dict(getattr(a, "__dict__", {}))
        state_b = dict(getattr(b, "__dict__", {}))
        for s in slots:
            state_a[s] = getattr(a, s, None)
            state_b[s] = getattr(b, s, None)
        if not state_a and not state_b and not hasattr(a, "__dict__"):
            try:  # a C type without attributes to walk: its bytes
                if pickle.dumps(a) != pickle.dumps(b):
                    self.differ(path, a, b)
            except (pickle.PicklingError, TypeError):
                if repr(a) != repr(b):
                    self.differ(path, a, b)
            return
        if set(state_a) != set(state_b):
            only = sorted(set(state_a) ^ set(state_b))[:3]
            self.differ(path, a, b, f"different attributes ({', '.join(only)} in one only)")
            return
        for name in state_a:
            self.compare(state_a[name], state_b[name], f"{path}.{name}")
