"""Building River models from their spec, and what kind of model they are.

>>> from pipelines.config import ModelSpec, StepSpec
>>> model = build_model(ModelSpec())
>>> [type(step).__name__ for step in model.steps.values()]
['StandardScaler', 'LogisticRegression']
>>> task_of(model)
'binary'
>>> build_model(ModelSpec(steps=[StepSpec(name="linear_model.Nope")]))
Traceback (most recent call last):
...
pipelines.errors.ModelError: scoring.model.steps.0: unknown River estimator 'linear_model.Nope'
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from river import base, compose

from pipelines.config import ModelSpec, StepSpec
from pipelines.errors import ModelError

__all__ = ["Task", "build_model", "resolve_estimator", "task_of"]

Task = Literal["binary", "multiclass", "regression"]


def resolve_estimator(name: str, *, where: str) -> type:
    """The River class named ``name`` (``linear_model.LogisticRegression`` or ``river.…``)."""
    dotted = name if name.startswith("river.") else f"river.{name}"
    module_name, _, class_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError, ValueError):
        raise ModelError(f"{where}: unknown River estimator '{name}'") from None
    if not (inspect.isclass(cls) and issubclass(cls, base.Estimator | base.Base)):
        raise ModelError(f"{where}: '{name}' is not a River estimator")
    return cls


def _build_value(value: Any, *, where: str) -> Any:
    # A parameter that is itself {"name": ..., "params": ...} is a nested River object,
    # e.g. an optimizer: {"name": "optim.SGD", "params": {"lr": 0.05}}.
    if isinstance(value, dict) and set(value) <= {"name", "params"} and "name" in value:
        return _build_step(StepSpec.model_validate(value), where=where)
    if isinstance(value, list):
        return [_build_value(v, where=f"{where}.{i}") for i, v in enumerate(value)]
    return value


def _build_step(step: StepSpec, *, where: str) -> Any:
    cls = resolve_estimator(step.name, where=where)
    params = {k: _build_value(v, where=f"{where}.params.{k}") for k, v in step.params.items()}
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{where}: cannot build {step.name}: {e}") from None


def build_model(spec: ModelSpec) -> base.Estimator:
    """A fresh, untrained model from its spec; steps are composed with ``|``."""
    steps = [_build_step(s, where=f"scoring.model.steps.{i}") for i, s in enumerate(spec.steps)]
    model = steps[0] if len(steps) == 1 else compose.Pipeline(*steps)
    final = steps[-1]
    if not isinstance(final, base.Classifier | base.Regressor):
        raise ModelError(
            f"scoring.model.steps.{len(steps) - 1}: the last step must be a River classifier "
            f"or regressor, got {type(final).__name__}"
        )
    return model


def task_of(model: base.Estimator) -> Task:
    """What a model predicts; ``multiclass`` when its classifier handles more than two classes."""
    final = model[-1] if isinstance(model, compose.Pipeline) else model
    if isinstance(final, base.Regressor) and not isinstance(final, base.Classifier):
        return "regression"
    return "multiclass" if getattr(final, "_multiclass", False) else "binary"
