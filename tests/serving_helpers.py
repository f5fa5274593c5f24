"""What the scoring service's tests share: registered versions, and the stream's control
core applying commands (the Supervisor's part, without Ray)."""

from __future__ import annotations

import hashlib
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from pipelines.batch_models import SklearnModel
from pipelines.config import PipelineConfig
from pipelines.control import FileControl
from pipelines.errors import LifecycleError
from pipelines.lifecycle import Lifecycle
from pipelines.protocol import Applied, Command
from pipelines.registry import Registry

FEATURES = ["a", "b"]
KEYS = {"web": ("scorer", "k-web"), "ana": ("reader", "k-ana"), "ops": ("admin", "k-ops")}
KEYS_ENV = ",".join(f"{name}:{role}:{key}" for name, (role, key) in KEYS.items())


def keys_file(tmp: Path) -> Path:
    """A secrets file of :data:`KEYS` (what ``serving.keys_file`` names)."""
    path = tmp / "keys.yaml"
    path.write_text("principals:\n" + "".join(
        f"  - {{name: {name}, role: {role}, key: {key}}}\n"
        for name, (role, key) in KEYS.items()))
    return path


def records(n: int, start: int) -> list[dict[str, Any]]:
    """``n`` predict records (keys ``user-<i>``, features a and b) from ``start``."""
    return [{"key": f"user-{i}", "features": {"a": (i % 7) - 3.0, "b": (i % 5) - 2.0}}
            for i in range(start, start + n)]


def fitted(sign: float) -> SklearnModel:
    """A logistic regression on a and b: ``sign`` 1 says a > b is True, -1 the opposite."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 2))
    y = (sign * (X[:, 0] - X[:, 1])) > 0
    return SklearnModel(LogisticRegression().fit(X, y), FEATURES, "binary")


def register(registry: Registry, tmp: Path, pipeline: str, name: str, model: Any) -> str:
    blob = pickle.dumps(model)
    art = tmp / f"{name}.pkl"
    art.write_bytes(blob)
    vid = f"{pipeline}/{name}"
    registry.register(pipeline=pipeline, kind="sklearn", version_id=vid,
                      model_class="sklearn.linear_model.LogisticRegression", params={},
                      artifact_uri=str(art), artifact_sha256=hashlib.sha256(blob).hexdigest(),
                      actor="ci", code=None)
    return vid


def serving_config(make_config: Any, **serving: Any) -> PipelineConfig:
    cfg: PipelineConfig = make_config(serving={"poll_interval_s": 0.1, "access_flush_s": 0.2,
                                               "command_timeout_s": 10.0, **serving})
    return cfg


class Stream:
    """The stream's control path as the Supervisor runs it: read the control channel,
    prepare (check, plan, load) and record each command as applied (or refused)."""

    def __init__(self, cfg: PipelineConfig, registry: Registry) -> None:
        self.lifecycle = Lifecycle(pipeline=cfg.name, live_version=cfg.scoring.model.version,
                                   scorers=["scorer-0"], task="binary", registry=registry)
        self.channel = FileControl(cfg.out_dir / "control.jsonl")
        self.channel.seek(None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def apply(self, cmd: Command) -> None:
        """``cmd`` applied now (as if it came on the control stream)."""
        self._prepare_and_apply(cmd.to_json(), "file:test@0")

    def _prepare_and_apply(self, raw: bytes, channel: str) -> None:
        try:
            prepared = self.lifecycle.prepare(raw, channel)
        except LifecycleError:
            return  # recorded as rejected
        self.lifecycle.applied(prepared, [Applied("scorer-0", 0, 0.0, 0)])

    def start(self) -> Stream:
        def follow() -> None:
            while not self._stop.wait(0.05):
                for position, raw in self.channel.read():
                    self._prepare_and_apply(raw, f"file:test@{position}")
        self._thread = threading.Thread(target=follow, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
