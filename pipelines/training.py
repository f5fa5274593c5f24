"""``riffle train``: fit a scikit-learn model on history and register it as a version.

The history (JSONL, CSV or Parquet; a file or a folder of Parquet files) is read with
Ray Data, in file order, into one pandas frame: a batch model is trained on what fits
on the driver. The last ``training.test_fraction`` of the rows is held out to measure
the metrics registered with the version (accuracy and log loss, or MAE and RMSE: the
names the scorer reports). The fitted :class:`~pipelines.batch_models.SklearnModel` is
pickled into the checkpoint store under ``models/<local id>.pkl`` (pruning removes
only ``ckpt-*`` folders) and registered with its hash, so it can be shadowed, canaried
or promoted against the online model like any other version.

Mistakes in the input (a missing file, a missing column, no rows, a feature that is not
a number) raise :class:`~pipelines.errors.SourceError`; an estimator that cannot be
built or fitted raises :class:`~pipelines.errors.ModelError`: one line each.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines.batch_models import SklearnModel, dumps_model, public_name, sklearn_task
from pipelines.checkpoint import CheckpointError
from pipelines.config import PipelineConfig, TrainingConfig
from pipelines.errors import ModelError, SourceError, first_line
from pipelines.models import Task
from pipelines.registry import DataManifest, ModelVersion, Registry, batch_version_id
from pipelines.registry.provenance import sha256_hex
from pipelines.storage import file_uri, is_url, resolve

__all__ = ["Format", "build_estimator", "fit", "history_format", "key_rows", "read_history",
           "read_matrix", "train"]

Format = Literal["json", "csv", "parquet"]
_SUFFIXES: dict[str, Format] = {".jsonl": "json", ".ndjson": "json", ".json": "json",
                                ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def train(config: PipelineConfig, path: str | Path, *, registry_url: str | None = None,
          actor: str | None = None, spec: TrainingConfig | None = None,
          drop: Callable[[Any], bool] | None = None, parent_id: str | None = None,
          **details: Any) -> ModelVersion:
    """Fit ``config.training``'s estimator on the history at ``path`` and register it.

    The registry is ``registry_url``, else ``registry.url``, else the SQLite file in the
    pipeline's ``out_dir``. Ray is started for the read unless it is running (or
    ``RAY_ADDRESS`` names a cluster, whose nodes must then be able to read ``path``).
    ``spec`` replaces ``config.training``; ``drop(key)`` leaves out the rows of the keys
    it is true for (``riffle forget``: a version retrained without a subject, registered
    with ``parent_id`` and ``details``).
    """
    spec = spec or config.training
    where = str(path)
    # The mistakes found without reading are reported before Ray starts.
    estimator = build_estimator(spec)
    if not is_url(where) and not Path(where).exists():
        raise SourceError(f"{where}: no such file or folder")
    X, y, features, fmt = read_matrix(spec, where, num_cpus=config.runtime.num_cpus,
                                      drop=drop)
    n_rows = len(y)
    n_test = math.floor(n_rows * spec.test_fraction)
    n_train = n_rows - n_test
    model, fit_warnings = fit(estimator, spec, X[:n_train], y[:n_train], features, where=where)
    metrics = holdout_metrics(model, X[n_train:], y[n_train:], where=where)

    version_id = batch_version_id(config.name)
    blob = dumps_model(model)
    uri = _write_artifact(config.checkpoint_store_url(),
                          f"models/{version_id.split('/', 1)[1]}.pkl",
                          blob)
    with Registry(registry_url or config.registry_url()) as reg:
        return reg.register(
            pipeline=config.name, kind="sklearn", version_id=version_id,
            model_class=model.model_class, params=model.params, artifact_uri=uri,
            artifact_sha256=sha256_hex(blob), config_hash=config.config_hash(),
            parent_id=parent_id,
            data=DataManifest(sources={_source_name(where): (0, n_rows)}, n_learned=n_train),
            metrics=metrics, actor=actor, logged_as="train",
            rows=n_rows, holdout_rows=n_test, features=features,
            label_column=spec.label_column, task=model.task, reader="ray.data", format=fmt,
            steps=[public_name(type(step)) for _, step in estimator.steps],
            sklearn_version=_sklearn_version(), fit_warnings=fit_warnings, **details)


# -- reading -------------------------------------------------------------------------

def read_matrix(spec: TrainingConfig, where: str, *, num_cpus: int | None = None,
                drop: Callable[[Any], bool] | None = None
                ) -> tuple[np.ndarray, np.ndarray, list[str], Format]:
    """The history at ``where`` as ``spec`` trains on it: the feature matrix (columns in
    feature order), the labels, the feature names and the format read (``drop(key)``:
    without the rows of the keys it is true for, the others in their order)."""
    fmt = history_format(where)
    frame = read_history(where, fmt, num_cpus=num_cpus)
    if drop is not None:
        frame = frame[~key_rows(frame, spec, where, drop)].reset_index(drop=True)
    features = _features(frame, spec, where)
    X, y = _matrix(frame, features, spec.label_column, where)
    return X, y, features, fmt


def key_rows(frame: pd.DataFrame, spec: TrainingConfig, where: str,
             chosen: Callable[[Any], bool]) -> np.ndarray:
    """A boolean mask of ``frame``'s rows whose key (``spec.key_column``) is chosen."""
    if spec.key_column not in frame.columns:
        raise SourceError(f"{where}: no key column '{spec.key_column}': its rows cannot be "
                          "told apart by subject")
    return np.asarray([bool(chosen(k)) for k in frame[spec.key_column].tolist()], dtype=bool)


def history_format(path: str) -> Format:
    """How to read ``path``: by its suffix, or for a local folder by the files in it.

    >>> history_format("data/loans.ndjson"), history_format("s3://bucket/history.parquet")
    ('json', 'parquet')
    >>> history_format("loans.txt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pipelines.errors.SourceError: loans.txt: cannot tell its format: name a .jsonl, ... file, or ...
    """
    local = not is_url(path)
    if local and Path(path).is_dir():
        found = {_SUFFIXES[p.suffix.lower()] for p in Path(path).iterdir()
                 if p.is_file() and not p.name.startswith((".", "_"))
                 and p.suffix.lower() in _SUFFIXES}
        if len(found) != 1:
            kinds = ", ".join(sorted(found)) or "none"
            raise SourceError(f"{path}: a folder must hold files of one format "
                              f"(JSONL, CSV or Parquet); found {kinds}")
        return found.pop()
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    if not local and not suffix:  # a dataset folder at a URL
        return "parquet"
    raise SourceError(f"{path}: cannot tell its format: name a {', '.join(_SUFFIXES)} "
                      "file, or a folder of Parquet files")


def read_history(path: str, fmt: Format, *, num_cpus: int | None = None) -> pd.DataFrame:
    """Every row at ``path``, in file order, read with Ray Data into pandas."""
    with _ray(num_cpus):
        import ray.data

        ctx = ray.data.DataContext.get_current()
        saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
        # Order kept: the holdout is the last rows of the history, as the stream saw them.
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
        # A file is read whatever its suffix (.ndjson is not one Ray Data looks for).
        one_file = not is_url(path) and Path(path).is_file()
        kwargs: dict[str, Any] = {"file_extensions": None} if one_file else {}
        reader = {"json": ray.data.read_json, "csv": ray.data.read_csv,
                  "parquet": ray.data.read_parquet}[fmt]
        try:
            return reader(path, **kwargs).to_pandas()
        except FileNotFoundError:
            raise SourceError(f"{path}: no such file or folder") from None
        except Exception as e:  # pyarrow's parse errors, Ray's task errors: one line
            raise SourceError(f"{path}: cannot read it as {fmt.upper()}: "
                              f"{first_line(e)}") from None
        finally:
            ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


@contextmanager
def _ray(num_cpus: int | None) -> Iterator[None]:
    """A Ray to read with: the running one, the cluster of ``RAY_ADDRESS``, or a local
    one started (and shut down) here."""
    import ray

    if ray.is_initialized():
        yield
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.ERROR}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = num_cpus or min(os.cpu_count() or 1, 4)
    ray.init(**kwargs)
    import ray.data  # configures its logger on import: quieted after

    # The command prints one summary (or one error line): Ray Data's progress logs
    # still go to the session's log files.
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        data_log.setLevel(level)
        ray.shutdown()


def _source_name(path: str) -> str:
    return path if is_url(path) else str(Path(path).resolve())


def _features(frame: pd.DataFrame, spec: TrainingConfig, where: str) -> list[str]:
    if len(frame) == 0:
        raise SourceError(f"{where}: no rows to train on")
    if spec.label_column not in frame.columns:
        raise SourceError(f"{where}: no label column '{spec.label_column}' (columns: "
                          f"{', '.join(map(str, frame.columns))})")
    if spec.features is not None:
        missing = [f for f in spec.features if f not in frame.columns]
        if missing:
            raise SourceError(f"{where}: training.features not in the data: "
                              f"{', '.join(missing)}")
        return list(spec.features)
    skip = {spec.id_column, spec.key_column, spec.time_column, spec.label_column}
    features = [str(c) for c in frame.columns if c not in skip]
    if not features:
        raise SourceError(f"{where}: no feature columns besides the id, key, time and label")
    return features


def _matrix(frame: pd.DataFrame, features: list[str], label: str,
            where: str) -> tuple[np.ndarray, np.ndarray]:
    for name in features:
        column = frame[name]
        if not pd.api.types.is_numeric_dtype(column.dtype):
            raise SourceError(f"{where}: feature '{name}' is not numeric ({column.dtype}); "
                              "list the numeric ones in training.features")
        if column.isna().any():
            raise SourceError(f"{where}: feature '{name}' is empty in "
                              f"{int(column.isna().sum()):,} rows")
    if frame[label].isna().any():
        raise SourceError(f"{where}: label '{label}' is empty in "
                          f"{int(frame[label].isna().sum()):,} rows")
    X = frame[features].to_numpy(dtype=np.float64)
    if not np.isfinite(X).all():
        raise SourceError(f"{where}: the features hold infinite values")
    # The labels as numpy values of their own type (int, bool, str), not pyarrow's.
    y = np.asarray(frame[label].tolist())
    return X, y


# -- fitting and measuring -----------------------------------------------------------

def fit(estimator: Any, spec: TrainingConfig, X: np.ndarray, y: np.ndarray,
        features: list[str], *, where: str) -> tuple[SklearnModel, list[str]]:
    """``estimator`` (from :func:`build_estimator`) fitted on ``X``, ``y``, as the model
    a scorer serves, and the warnings of the fit (shown too)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator.fit(X, y)
        task = sklearn_task(estimator)
        model = SklearnModel(estimator, features, task)
    except (ValueError, TypeError) as e:
        raise ModelError(f"training.estimator: cannot fit {spec.estimator} on {where}: "
                         f"{first_line(e)}") from None
    # A fit that warned (did not converge, say) is registered with its warnings, and
    # they are still shown.
    fit_warnings = sorted({f"{w.category.__name__}: {first_line(w.message)}"
                           for w in caught})
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model, fit_warnings


def build_estimator(spec: TrainingConfig) -> Any:
    """A fresh pipeline: ``StandardScaler`` (if ``scale``) and the estimator of ``spec``.

    >>> build_estimator(TrainingConfig(params={"C": 0.5})).steps[-1][1]
    LogisticRegression(C=0.5)
    >>> build_estimator(TrainingConfig(estimator="tree.Nope"))
    Traceback (most recent call last):
    ...
    pipelines.errors.ModelError: training.estimator: unknown scikit-learn estimator 'tree.Nope'
    """
    from sklearn.base import BaseEstimator, is_classifier, is_regressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    name = spec.estimator
    dotted = name if name.startswith("sklearn.") else f"sklearn.{name}"
    module_name, _, class_name = dotted.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        raise ModelError(f"training.estimator: unknown scikit-learn estimator '{name}'") from None
    if not (inspect.isclass(cls) and issubclass(cls, BaseEstimator)):
        raise ModelError(f"training.estimator: '{name}' is not a scikit-learn estimator")
    try:
        estimator = cls(**spec.params)
    except (TypeError, ValueError) as e:
        raise ModelError(f"training.params: cannot build {name}: {first_line(e)}") from None
    if is_classifier(estimator):
        if not hasattr(estimator, "predict_proba"):
            raise ModelError(f"training.estimator: {name} has no predict_proba with these "
                             "params: the scorer needs class probabilities")
    elif not is_regressor(estimator):
        raise ModelError(f"training.estimator: {name} is neither a classifier nor a regressor")
    steps = [("scale", StandardScaler())] if spec.scale else []
    return Pipeline([*steps, ("estimator", estimator)])


def holdout_metrics(model: SklearnModel, X: np.ndarray, y: np.ndarray, *,
                    where: str) -> dict[str, float]:
    """The metrics of ``model`` on held-out rows (none without any): accuracy and log
    loss for classifiers (the prediction is the most probable class, as served), MAE and
    RMSE for regressors."""
    from sklearn import metrics

    if len(y) == 0:
        return {}
    task: Task = model.task
    if task == "regression":
        predicted = model.estimator.predict(X)
        return {"mae": float(metrics.mean_absolute_error(y, predicted)),
                "rmse": float(metrics.root_mean_squared_error(y, predicted))}
    classes = model.estimator.classes_
    unseen = sorted(set(y.tolist()) - set(classes.tolist()), key=str)
    if unseen:
        raise SourceError(f"{where}: the held-out rows have labels the training rows lack: "
                          f"{', '.join(map(str, unseen[:5]))} (lower training.test_fraction)")
    proba = model.estimator.predict_proba(X)
    predicted = classes[proba.argmax(axis=1)]
    return {"accuracy": float(metrics.accuracy_score(y, predicted)),
            "log_loss": float(metrics.log_loss(y, proba, labels=classes))}


# -- writing -------------------------------------------------------------------------

def _write_artifact(store_url: str, relpath: str, blob: bytes) -> str:
    """Write ``blob`` at ``relpath`` in the checkpoint store; returns its URI."""
    uri = file_uri(store_url, relpath)
    try:
        filesystem, path = resolve(uri)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        # Under a temporary name, then moved: the artifact is never seen half-written.
        tmp = f"{path}.tmp"
        with filesystem.open_output_stream(tmp) as out:
            out.write(blob)
        filesystem.move(tmp, path)
    except OSError as e:
        raise CheckpointError(f"checkpoint store {store_url}: cannot write {relpath}: "
                          f"{first_line(e)}") from None
    return uri


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)
