"""The control path's core: a command becomes a new deployment, or a recorded refusal.

Runtime-free; the Supervisor feeds it what the control stream carries and sends the
deployments it returns to every scorer. For each message it

1. parses the command (malformed: refused);
2. plans the next :class:`~pipelines.protocol.Deployment` from the current one
   (:func:`plan`; an impossible step, such as a rollback with nothing to roll back to,
   is refused);
3. checks the versions against the registry (unknown or retired: refused; a refused
   lifecycle step is recorded on the version too) and loads their artifacts, verified
   against their hashes;
4. once the scorers applied it, records the lifecycle events (deployed, shadowed,
   canaried, promoted, rolled back, retired) and the command itself in the registry.

A refused command changes nothing in the stream: the scorers never see it.

>>> from pipelines.protocol import Command
>>> live = Deployment.single("p/v0")
>>> d = plan(live, Command(op="deploy", pipeline="p", version="p/sk-1", mode="canary",
...                        share=0.1, actor="ann"))
>>> [(a.name, a.version, a.weight) for a in d.arms]
[('live', 'p/v0', 0.9), ('candidate', 'p/sk-1', 0.1)]
>>> d = plan(d, Command(op="promote", pipeline="p", actor="ann"))
>>> [(a.name, a.version) for a in d.arms], d.previous
([('live', 'p/sk-1')], 'p/v0')
>>> plan(d, Command(op="rollback", pipeline="p", actor="ann")).arms[0].version
'p/v0'
>>> plan(live, Command(op="rollback", pipeline="p", actor="ann"))
Traceback (most recent call last):
...
pipelines.errors.LifecycleError: rollback: no previous version to roll back to
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn

from pipelines.checkpoint import MANIFEST, CheckpointStore, Manifest
from pipelines.config import PipelineConfig
from pipelines.errors import LifecycleError, RiffleError
from pipelines.protocol import Applied, ArmSpec, Command, CommandError, Deployment, parse_command

__all__ = [
    "Lifecycle",
    "LifecycleError",
    "Prepared",
    "deployment_from_json",
    "deployment_to_json",
    "launch_command",
    "plan",
]

_EVENT_OF_MODE = {"live": "deployed", "shadow": "shadowed", "canary": "canaried",
                  "ab": "canaried"}


def deployment_to_json(d: Deployment) -> dict[str, Any]:
    return {"mode": d.mode, "arms": [a._asdict() for a in d.arms], "previous": d.previous}


def deployment_from_json(data: dict[str, Any]) -> Deployment:
    return Deployment(data["mode"], tuple(ArmSpec(**a) for a in data["arms"]),
                      data.get("previous"))


def launch_command(config: PipelineConfig) -> Command | None:
    """The config's ``launch``, as the command an operator would send (None: the run
    starts with its own model alone, live)."""
    launch = config.launch
    if launch.mode == "live" and launch.candidate is None:
        return None
    return Command(op="deploy", pipeline=config.name,
                   version=launch.candidate or next(iter(launch.weights)),
                   mode=launch.mode, share=launch.share if launch.mode == "canary" else None,
                   weights=dict(launch.weights) or None, actor="config",
                   reason="launch in the pipeline's config")


def _candidates(d: Deployment) -> list[ArmSpec]:
    return list(d.arms[1:])


def plan(current: Deployment, cmd: Command) -> Deployment:
    """The deployment after ``cmd``; :class:`LifecycleError` if it cannot apply."""
    live = current.arms[0]
    op = cmd.op
    if op == "deploy":
        assert cmd.version is not None
        mode = cmd.mode or "live"
        if mode == "live":
            if cmd.version == live.version:
                raise LifecycleError(f"deploy: {cmd.version} is already live")
            return Deployment("live", (ArmSpec("live", cmd.version, "live", 1.0),),
                              live.version)
        if cmd.version == live.version:
            raise LifecycleError(f"deploy {mode}: {cmd.version} is the live version")
        if mode == "shadow":
            return Deployment("shadow", (live._replace(weight=1.0),
                                         ArmSpec("candidate", cmd.version, "shadow", 0.0)),
                              current.previous)
        if mode == "canary":
            share = cmd.share if cmd.share is not None else 0.05
            return Deployment("canary", (live._replace(weight=1.0 - share),
                                         ArmSpec("candidate", cmd.version, "canary", share)),
                              current.previous)
        return _ab(current, cmd.weights or {}, live.version)
    if op == "promote":
        candidates = _candidates(current)
        version = cmd.version
        if version is None:
            if len(candidates) != 1:
                raise LifecycleError(f"promote: name the version ({len(candidates)} "
                                     "candidates are deployed)")
            version = candidates[0].version
        if version == live.version:
            raise LifecycleError(f"promote: {version} is already live")
        if version not in {a.version for a in candidates}:
            raise LifecycleError(f"promote: {version} is not deployed as a candidate (deploy "
                                 "it with a launch mode first, or deploy it live)")
        return Deployment("live", (ArmSpec("live", version, "live", 1.0),), live.version)
    if op == "rollback":
        if current.previous is None:
            raise LifecycleError("rollback: no previous version to roll back to")
        return Deployment("live", (ArmSpec("live", current.previous, "live", 1.0),), None)
    if op == "retire":
        assert cmd.version is not None
        if cmd.version == live.version:
            raise LifecycleError(f"retire: {cmd.version} is live; promote another version "
                                 "or roll back first")
        arms = tuple(a for a in current.arms if a.version != cmd.version)
        previous = None if current.previous == cmd.version else current.previous
        if len(arms) == 1:
            return Deployment("live", (arms[0]._replace(weight=1.0),), previous)
        return _renormalised(current._replace(arms=arms, previous=previous))
    assert op == "set_traffic"
    if current.mode == "canary" and cmd.share is not None:
        cand = current.arms[1]
        return current._replace(arms=(live._replace(weight=1.0 - cmd.share),
                                      cand._replace(weight=cmd.share)))
    if current.mode == "ab" and cmd.weights:
        return _ab(current, cmd.weights, live.version, reweigh=True)
    raise LifecycleError(f"set_traffic: the deployment is {current.mode}; share is for a "
                         "canary, weights for an A/B launch")


def _ab(current: Deployment, weights: dict[str, float], live_version: str, *,
        reweigh: bool = False) -> Deployment:
    resolved = {live_version if v == "live" else v: w for v, w in weights.items()}
    held = {a.version for a in current.arms}
    if reweigh and set(resolved) - held:
        raise LifecycleError(f"set_traffic: {sorted(set(resolved) - held)} not deployed")
    total = sum(resolved.values())
    arms = [ArmSpec("live", live_version, "live", resolved.get(live_version, 0.0) / total)]
    for i, (version, w) in enumerate(v for v in resolved.items() if v[0] != live_version):
        arms.append(ArmSpec(f"arm-{chr(ord('b') + i)}", version, "ab", w / total))
    return Deployment("ab", tuple(arms), current.previous)


def _renormalised(d: Deployment) -> Deployment:
    serving = sum(a.weight for a in d.arms if a.role != "shadow")
    if serving <= 0:
        return d._replace(arms=(d.arms[0]._replace(weight=1.0), *d.arms[1:]))
    return d._replace(arms=tuple(a._replace(weight=a.weight / serving) if a.role != "shadow"
                                 else a for a in d.arms))


@dataclass
class Prepared:
    """A validated command, its next deployment and the artifacts it needs."""

    command: Command
    deployment: Deployment
    artifacts: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """Per scorer name, the artifact bytes of each version it may not hold."""
    raw: bytes = b""
    channel: str = ""
    details: dict[str, Any] = field(default_factory=dict)


class Lifecycle:
    """The deployment in force, and the control path's checks and records."""

    def __init__(self, *, pipeline: str, live_version: str, scorers: list[str],
                 task: str, registry: Any = None) -> None:
        self.pipeline = pipeline
        self.task = task
        self.scorers = scorers
        self.registry = registry
        self.deployment = Deployment.single(live_version)
        self._cache: dict[str, dict[str, bytes]] = {}
        """Artifacts of the versions in force (a rebuilt scorer needs them again)."""
        self.n_applied = 0
        self.n_rejected = 0

    def artifacts_for(self, scorer: str) -> dict[str, bytes]:
        """What a scorer rebuilt from a checkpoint needs to serve the deployment in force."""
        return {v: per[scorer] for v, per in self._cache.items() if scorer in per}

    # -- commands ----------------------------------------------------------------------
    def prepare(self, raw: bytes, channel: str) -> Prepared:
        """A message off the control stream, checked and ready for the scorers; raises
        :class:`LifecycleError` (recorded) if it must be refused."""
        try:
            cmd = parse_command(raw)
        except CommandError as e:
            self._refused(raw, channel, None, f"malformed command: {e}")
        if cmd.pipeline != self.pipeline:
            self._refused(raw, channel, cmd, f"command for pipeline {cmd.pipeline!r}, this is "
                                             f"{self.pipeline!r}")
        cmd = self._resolved(cmd)
        try:
            nxt = plan(self.deployment, cmd)
            artifacts = self._check_and_load(cmd, nxt)
        except RiffleError as e:
            self._refused(raw, channel, cmd, str(e))
        return Prepared(cmd, nxt, artifacts, raw, channel)

    def _resolved(self, cmd: Command) -> Command:
        """Local version names (``sk-1``) as full ids (``<pipeline>/sk-1``)."""
        def full(v: str) -> str:
            return v if "/" in v or v == "live" else f"{self.pipeline}/{v}"
        update: dict[str, Any] = {}
        if cmd.version is not None:
            update["version"] = full(cmd.version)
        if cmd.weights:
            update["weights"] = {full(v): w for v, w in cmd.weights.items()}
        return cmd.model_copy(update=update) if update else cmd

    def _check_and_load(self, cmd: Command, nxt: Deployment) -> dict[str, dict[str, bytes]]:
        held = {a.version for a in self.deployment.arms} | {self.deployment.previous}
        new = [a.version for a in nxt.arms if a.version not in held]
        named = [cmd.version] if cmd.version and cmd.op in ("deploy", "promote", "retire") \
            else []
        if (new or named) and self.registry is None:
            raise LifecycleError(f"{cmd.op}: no model registry to look versions up "
                                 "(registry.enabled is false)")
        for version in dict.fromkeys([*named, *new]):
            v = self.registry.get(version)  # unknown: RegistryError
            if v.pipeline != self.pipeline and v.kind == "river":
                raise LifecycleError(f"{version}: a River version of pipeline {v.pipeline} "
                                     f"cannot be deployed in {self.pipeline}")
            if v.status == "retired":
                kind = "promoted" if cmd.op == "promote" else _EVENT_OF_MODE.get(
                    cmd.mode or "live", "deployed")
                if cmd.op != "retire":  # records the refusal on the version, and raises
                    self.registry.record(version, kind, actor=cmd.actor, command=cmd.id)
                raise LifecycleError(f"{version} is already retired")
        out: dict[str, dict[str, bytes]] = {}
        for version in new:
            out[version] = self._load(version)
        return out

    def _load(self, version: str) -> dict[str, bytes]:
        v = self.registry.get(version)
        blob = self.registry.load_artifact(version)  # hash-verified
        # A River model a retrain job trained is a pickled model, as a batch model is.
        if v.kind != "river" or v.artifact_uri.endswith(".pkl"):
            from pipelines.checkpoint import loads_state
            from pipelines.scoring import task_of_model

            task = task_of_model(loads_state(blob))
            if (task == "regression") != (self.task == "regression"):
                raise LifecycleError(f"{version} is a {task} model; pipeline {self.pipeline} "
                                     f"serves a {self.task} one")
            return dict.fromkeys(self.scorers, blob)
        # A River version is a checkpoint: each scorer continues its own part's model.
        manifest = Manifest.model_validate_json(blob)
        suffix = f"/{manifest.id}/{MANIFEST}"
        if not v.artifact_uri.endswith(suffix):
            raise LifecycleError(f"{version}: artifact {v.artifact_uri} is not a checkpoint "
                                 "manifest")
        store = CheckpointStore(v.artifact_uri[: -len(suffix)])
        missing = [s for s in self.scorers if s not in manifest.parts]
        if missing:
            raise LifecycleError(f"{version}: checkpoint {manifest.id} has no part for "
                                 f"{', '.join(missing)} (it was taken with other scorers)")
        try:
            parts = {s: store.read_part(manifest, s) for s in self.scorers}
        except (OSError, RiffleError) as e:
            raise LifecycleError(f"{version}: cannot read checkpoint {manifest.id} (pruned?): "
                                 f"{e}") from None
        # Only the model goes to the scorer: a part also holds pending labels and the
        # memory of learned ids (megabytes), and unpickling those would pause scoring.
        from pipelines.checkpoint import dumps_state, loads_state
        from pipelines.scoring import live_model_of

        return {s: dumps_state(live_model_of(loads_state(blob))) for s, blob in parts.items()}

    def _refused(self, raw: bytes, channel: str, cmd: Command | None, error: str
                 ) -> NoReturn:
        self.n_rejected += 1
        live = self.deployment.arms[0].version  # a refusal leaves it serving
        self._log(raw, channel, cmd, "rejected", error=error, before=live, after=live)
        raise LifecycleError(error)

    def applied(self, prepared: Prepared, results: list[Applied]) -> dict[str, Any]:
        """The scorers serve ``prepared.deployment``: record it (events and command)."""
        cmd, before = prepared.command, self.deployment
        self.deployment = prepared.deployment
        for version, per in prepared.artifacts.items():
            self._cache[version] = per
        in_force = {a.version for a in self.deployment.arms} | {self.deployment.previous}
        self._cache = {v: per for v, per in self._cache.items() if v in in_force}
        self.n_applied += 1
        pauses = [r.pause_s for r in results]
        details = {"pause_ms_max": round(1000 * max(pauses, default=0.0), 3),
                   "scored_before": {r.name: r.scored for r in results},
                   "deployment": deployment_to_json(self.deployment), **prepared.details}
        for version, kind in _events(cmd, before, self.deployment):
            self._record(version, kind, cmd, details)
        self._log(prepared.raw, prepared.channel, cmd, "applied",
                  before=before.arms[0].version, after=self.deployment.arms[0].version,
                  **details)
        return details

    def _record(self, version: str, kind: str, cmd: Command, details: dict[str, Any]) -> None:
        if self.registry is None:
            return
        try:
            self.registry.get(version)
        except RiffleError:  # the run's own starting model is not a registered version
            return
        extra = {k: v for k, v in details.items() if k in ("decision",)}
        self.registry.record(version, kind, actor=cmd.actor, command=cmd.id,
                             reason=cmd.reason, **extra)

    def _log(self, raw: bytes, channel: str, cmd: Command | None, status: str,
             error: str | None = None, *, before: str, after: str, **details: Any) -> None:
        """The command in the control log, and in the access log with the live version
        ``before`` and ``after`` it and its reason."""
        if self.registry is None:
            return
        self.registry.log_command(
            status=status, raw=raw, channel=channel, pipeline=cmd.pipeline if cmd else None,
            command_id=cmd.id if cmd else None, op=cmd.op if cmd else None,
            version_id=cmd.version if cmd else None, actor=cmd.actor if cmd else None,
            error=error, before=before, after=after, reason=cmd.reason if cmd else None,
            **details)


def _events(cmd: Command, before: Deployment, after: Deployment) -> list[tuple[str, str]]:
    """The registry's lifecycle events that ``cmd`` caused."""
    if cmd.op == "deploy":
        assert cmd.version is not None
        if cmd.mode == "ab":
            old = {a.version for a in before.arms}
            return [(a.version, "canaried") for a in after.arms[1:] if a.version not in old]
        return [(cmd.version, _EVENT_OF_MODE[cmd.mode or "live"])]
    if cmd.op == "promote":
        return [(after.arms[0].version, "promoted")]
    if cmd.op == "rollback":
        return [(before.arms[0].version, "rolled_back"), (after.arms[0].version, "deployed")]
    if cmd.op == "retire":
        assert cmd.version is not None
        return [(cmd.version, "retired")]
    return []
