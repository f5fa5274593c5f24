"""Drift alarms and the retraining policy, beside the running pipeline.

The Supervisor's :class:`~actors.control.ControlPath` calls :meth:`Retrainer.poll` on
every turn of its loop; every ``scoring.drift.poll_interval_s`` it gathers the
scorers' stats and

1. merges their new drift alarms (a scorer's detector sees its own keys): the alarms
   of one version and kind within :data:`MERGE_S` are one alarm, recorded once, in the
   supervision log (``drift_alarm``), in the registry's lifecycle log (a ``drift`` event
   of the version, or of the newest registered version of the run while the live model
   is the run's own) and so in the tamper-evident access log, and counted;
2. asks the :class:`~pipelines.monitoring.retraining.RetrainPolicy`; when it fires,
   starts :func:`retrain_job` on Ray with ``retraining.num_cpus`` of its own (the
   pipeline never waits for it: its result is picked up at a later poll);
3. launches a registered candidate in shadow through the control path (a ``deploy``
   command, recorded like an operator's), and the promotion policy decides.

Every step is a ``retrain`` event of the version that drifted (started, registered,
gated out, failed) beside the candidate's own lifecycle.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import ray

from pipelines.checkpoint import MANIFEST
from pipelines.config import PipelineConfig
from pipelines.errors import cause_line
from pipelines.monitoring.retraining import Observation, RetrainPolicy, Trigger
from pipelines.protocol import Command
from pipelines.supervision import SupervisionLog

ACTOR = "riffle-retraining"
MERGE_S = 10.0
"""Alarms of one version and kind (and feature) closer than this are one alarm."""
HISTORY = 20


class Retrainer:
    """Gathers drift alarms and runs the retraining policy for one run."""

    def __init__(self, config: PipelineConfig, *, out_dir: Path, log: SupervisionLog,
                 registry: Any, scorers: Any, control: Any) -> None:
        self._config = config
        self._log = log
        self._registry = registry
        self._scorers = scorers
        self._control = control
        self._store_url = config.checkpoint_store_url(out_dir)
        self._registry_url = config.registry_url(out_dir) if config.registry.enabled else None
        self._interval = config.scoring.drift.poll_interval_s
        self._next = 0.0
        self._seen: set[str] = set()
        self._merged: dict[tuple[Any, ...], float] = {}
        self.counts = {"drift_alarms": 0, "concept_alarms": 0, "feature_alarms": 0,
                       "scorer_alarms": 0, "retrains_started": 0, "retrains_registered": 0,
                       "retrains_gated": 0, "retrains_failed": 0}
        """Plain counters (what telemetry exports)."""
        self.alarms: list[dict[str, Any]] = []
        self.retrains: list[dict[str, Any]] = []
        self._policy = RetrainPolicy(config.retraining, now=time.time())
        self._job: tuple[ray.ObjectRef, Trigger, str | None, float] | None = None
        self._registered: dict[str, float | None] = {}

    async def poll(self) -> None:
        if not self._config.scoring.drift.enabled and not self._config.retraining.enabled:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        scorers, _ = self._scorers()
        try:
            stats = await asyncio.gather(*(s.stats.remote() for s in scorers))
        except ray.exceptions.RayError:
            return  # a failure: the watch loop deals with it
        alarms = await self._gather(list(stats))
        if self._job is not None:
            await self._collect()
        if not self._config.retraining.enabled:
            return
        live = self._control.deployment.arms[0].version
        obs = await self._observation(list(stats), live, alarms)
        trigger = self._policy.observe(obs)
        if trigger is not None:
            await self._start(trigger, live)

    # -- alarms ------------------------------------------------------------------------
    async def _gather(self, stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The scorers' new alarms, merged; each merged one recorded."""
        out = []
        wall = time.time()
        for st in stats:
            for alarm in st.get("drift", {}).get("alarms", []):
                if alarm["id"] in self._seen:
                    continue
                self._seen.add(alarm["id"])
                self.counts["scorer_alarms"] += 1
                key = (alarm["version"], alarm["kind"], alarm.get("feature"))
                if wall - self._merged.get(key, -MERGE_S) < MERGE_S:
                    continue
                self._merged[key] = wall
                out.append(alarm)
        for alarm in out:
            await self._record_alarm(alarm)
        return out

    async def _record_alarm(self, alarm: dict[str, Any]) -> None:
        self.counts["drift_alarms"] += 1
        self.counts[f"{alarm['kind']}_alarms"] += 1
        what = (f"{alarm['detector']} on {alarm['arm']}'s errors: "
                f"{alarm['error_before']:.3f} -> {alarm['error_after']:.3f}"
                if alarm["kind"] == "concept" else
                f"feature {alarm['feature']}: PSI {alarm['psi']:.3f}")
        numbers = {k: v for k, v in alarm.items() if k not in ("id",)}
        self.alarms.append({**numbers, "reason": what})
        del self.alarms[:-HISTORY]
        self._log.record("drift_alarm", alarm["scorer"], what, version=alarm["version"],
                         drift=alarm["kind"])
        target = await self._target(alarm["version"])
        alarm["recorded_on"] = target
        await self._registry_event(target, "drift", reason=what, alarm=numbers)

    async def _target(self, version: str) -> str | None:
        """The registered version an alarm or a retrain is recorded on."""
        if self._registry is None:
            return None
        loop = asyncio.get_running_loop()

        def find() -> str | None:
            try:
                return str(self._registry.get(version).id)
            except Exception:
                pass
            mine = [v for v in self._registry.versions(self._config.name)
                    if v.kind == "river" and v.artifact_uri.endswith(MANIFEST)]
            return mine[-1].id if mine else None
        try:
            return await loop.run_in_executor(None, find)
        except Exception as e:
            self._log.record("registry_error", "supervisor", cause_line(e))
            return None

    async def _registry_event(self, target: str | None, kind: str, **details: Any) -> None:
        if self._registry is None:
            return
        loop = asyncio.get_running_loop()

        def write() -> None:
            if target is not None:
                self._registry.record(target, kind, actor=ACTOR, **details)
            else:  # nothing registered yet: the decision log still has it
                self._registry.log_access(kind, pipeline=self._config.name, actor=ACTOR,
                                          **details)
        try:
            await loop.run_in_executor(None, write)
        except Exception as e:
            self._log.record("registry_error", "supervisor", cause_line(e))

    # -- the policy ----------------------------------------------------------------------
    async def _observation(self, stats: list[dict[str, Any]], live: str,
                           alarms: list[dict[str, Any]]) -> Observation:
        labels = 0
        weighted = 0.0
        for st in stats:
            s = st.get("drift", {}).get("streams", {}).get(live)
            if s:
                labels += s["labels"]
                weighted += s["error"] * s["labels"]
        regression = bool(stats) and stats[0].get("task") == "regression"
        quality = None
        if labels:
            error = weighted / labels
            quality = -error if regression else 1.0 - error
        if live not in self._registered:
            self._registered[live] = await self._registered_quality(live, regression)
        return Observation(now=time.time(), labels=labels, quality=quality,
                           registered=self._registered[live],
                           alarms=[a for a in alarms if a["version"] == live])

    async def _registered_quality(self, version: str, regression: bool) -> float | None:
        if self._registry is None:
            return None
        loop = asyncio.get_running_loop()
        try:
            v = await loop.run_in_executor(None, self._registry.get, version)
        except Exception:
            return None
        m = v.metrics.get("mae" if regression else "accuracy")
        return None if m is None else (-m if regression else m)

    async def _start(self, trigger: Trigger, live: str) -> None:
        parent = await self._target(live)
        self.counts["retrains_started"] += 1
        self._log.record("retrain", ACTOR, f"started: {trigger.reason}", trigger=trigger.kind,
                         version=live)
        await self._registry_event(parent, "retrain", step="started", reason=trigger.reason,
                                   trigger=trigger.to_json())
        cfg = self._config.retraining
        free = ray.available_resources().get("CPU", 0.0)
        if free < cfg.num_cpus:  # Ray queues it: say so, or it looks like a hang
            self._log.record("retrain", ACTOR, f"waiting for CPUs: the job needs "
                             f"{cfg.num_cpus:g}, {free:g} free (lower retraining.num_cpus "
                             "or the actors' num_cpus, or add a node)", version=live)
        task = self._control.lifecycle.task
        ref = retrain_job.options(num_cpus=cfg.num_cpus).remote(
            self._config, self._store_url, self._registry_url, trigger.to_json(), parent,
            task)
        self._job = (ref, trigger, parent, time.monotonic())

    async def _collect(self) -> None:
        assert self._job is not None
        ref, trigger, parent, started = self._job
        done, _ = ray.wait([ref], timeout=0)
        if not done:
            if time.monotonic() - started > self._config.retraining.timeout_s:
                ray.cancel(ref, force=True)
                result: dict[str, Any] = {"status": "failed", "why": "timed out"}
            else:
                return
        else:
            try:
                result = await ref
            except Exception as e:
                result = {"status": "failed", "why": cause_line(e)}
        self._job = None
        self._policy.finished(time.time())
        status = result["status"]
        self.counts[{"registered": "retrains_registered", "gated": "retrains_gated"}.get(
            status, "retrains_failed")] += 1
        entry = {"trigger": trigger.to_json(), **result}
        self.retrains.append(entry)
        del self.retrains[:-HISTORY]
        why = result.get("why") or result.get("version") or ""
        self._log.record("retrain", ACTOR, f"{status}: {why}", trigger=trigger.kind)
        await self._registry_event(parent, "retrain", step=status, reason=str(why),
                                   result={k: v for k, v in result.items()
                                           if k in ("version", "gate", "why", "window")})
        if status == "registered":
            cmd = Command(op="deploy", pipeline=self._config.name, version=result["version"],
                          mode="shadow", actor=ACTOR,
                          reason=f"retrained after {trigger.kind}: {trigger.reason}")
            await self._control.command(cmd.to_json(), "auto-retrain")

    def summary(self) -> dict[str, Any]:
        """What ``riffle status`` shows and telemetry exports."""
        return {"counts": dict(self.counts), "alarms": list(self.alarms[-5:]),
                "retrains": list(self.retrains[-5:]),
                "retrain_running": self._job is not None}


@ray.remote(max_retries=0)
def retrain_job(config: PipelineConfig, store_url: str, registry_url: str | None,
                trigger: dict[str, Any], parent: str | None, task: str) -> dict[str, Any]:
    """Read the window (Ray Data, committed segments only), train, gate, register."""
    from pipelines.monitoring.candidate import (
        register_candidate,
        train_candidate,
        wait_for_window,
    )

    window = config.retraining.window
    since = trigger.get("since")
    every = max(config.checkpoint.interval_s or 0.0, 1.0)
    examples = wait_for_window(
        lambda: read_window(store_url, n_labels=window.n_labels, since=since,
                            max_age_s=window.max_age_s),
        n_labels=window.n_labels, since=since, every_s=every,
        budget_s=min(config.retraining.timeout_s / 2, 20 * every))
    if len(examples) < 10:
        return {"status": "failed", "why": f"{len(examples)} examples in the window"}
    candidate = train_candidate(config, examples, task)
    window_doc = {"n_examples": len(examples), "n_train": candidate.n_train,
                  "n_holdout": candidate.n_holdout, "since": trigger.get("since"),
                  "first_learned_at": examples[0].learned_at,
                  "last_learned_at": examples[-1].learned_at,
                  "reader": "ray.data.read_parquet", "segments": "committed"}
    if not candidate.gate["passed"]:
        return {"status": "gated", "why": candidate.gate["why"], "gate": candidate.gate,
                "window": window_doc}
    if registry_url is None:
        return {"status": "failed", "why": "no registry to register the candidate in"}
    from pipelines.registry import Registry

    provenance = {"trigger": trigger, "window": window_doc, "gate": candidate.gate,
                  "estimator": config.retraining.estimator.kind, "parent": parent}
    with Registry(registry_url) as reg:
        v = register_candidate(config, reg, store_url, candidate, examples, parent=parent,
                               provenance=provenance, actor=ACTOR)
    return {"status": "registered", "version": v.id, "gate": candidate.gate,
            "window": window_doc, "metrics": candidate.metrics}


def read_window(store_url: str, *, n_labels: int, since: float | None = None,
                max_age_s: float | None = None) -> list[Any]:
    """The newest ``n_labels`` examples the live arm learned (after ``since``, at most
    ``max_age_s`` old), oldest first, with their features and the live prediction: the
    committed training log and audit trail, read with Ray Data
    (:func:`pipelines.monitoring.candidate.window_of` makes the window of them)."""
    import ray.data

    from pipelines.audit.trail import AuditStore
    from pipelines.monitoring.candidate import window_of

    store = AuditStore(store_url)
    training = [store.path(s.path) for s in store.committed_segments("training")]
    trail = [store.path(s.path) for s in store.committed_segments("trail")]
    if not training or not trail:
        return []
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # The reads run inside the job's own CPU budget (it holds retraining.num_cpus). Ray
    # Data's newer read path lists the files in a task of its own that asks for a whole
    # CPU beside the job's: with the pipeline's actors holding the rest (2 cores), it
    # waited until the run ended. The classic path lists them here, in the job.
    ctx.use_datasource_v2 = False
    zero = {"num_cpus": 0}
    learned = ray.data.read_parquet(
        training, columns=["record_id", "topic", "partition", "offset", "label", "arm",
                           "learned_at"], ray_remote_args=zero).to_pandas()
    scored = ray.data.read_parquet(trail, columns=["record_id", "role", "features", "output"],
                                   ray_remote_args=zero).to_pandas()
    return window_of(learned, scored, n_labels=n_labels, since=since, max_age_s=max_age_s)
