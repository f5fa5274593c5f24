"""The Supervisor's control path: model lifecycle commands applied to a running pipeline.

A mixin of :class:`actors.supervisor.Supervisor` (kept apart to keep each file about one
path). It polls the control stream every ``control.poll_interval_s``; each command is
checked and planned by :class:`pipelines.lifecycle.Lifecycle`, then sent to every scorer,
which applies it between two batches. Commands and checkpoints take turns (one lock),
so a checkpoint's parts all reflect the same deployment, and its manifest records that
deployment and the control position after the last command applied.

With ``launch.promotion.mode: auto`` and one candidate deployed, the arms' gains are
gathered from the scorers at each poll and the promotion policy decides; a promotion
goes through the same path as an operator's, with the numbers behind the decision.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import ray

from pipelines.errors import PipelineError
from pipelines.lifecycle import Lifecycle, LifecycleError, Prepared, deployment_from_json
from pipelines.promotion import GainStats, PromotionPolicy
from pipelines.protocol import Command

AUTO_ACTOR = "riffle-auto-promotion"


class ControlPath:
    """State and methods the Supervisor gains from this mixin."""

    _config: Any
    _out_dir: Path
    _log: Any
    _registry: Any
    _scorers: list[Any]
    _manifest: Any
    _generation: int
    _stopped: bool

    def _init_control(self, *, resume: bool) -> None:
        from pipelines.control import open_control

        cfg = self._config
        self._control_lock = asyncio.Lock()
        self._lifecycle = Lifecycle(
            pipeline=cfg.name, live_version=cfg.scoring.model.version,
            scorers=[f"scorer-{i}" for i in range(cfg.scoring.n_actors)],
            task=self._task, registry=self._registry)  # type: ignore[attr-defined]
        self._control = open_control(cfg, out_dir=self._out_dir,
                                     client_id=f"{cfg.name}-supervisor")
        position = None
        if resume and self._manifest is not None:
            if self._manifest.deployment is not None:
                self._lifecycle.deployment = deployment_from_json(self._manifest.deployment)
            position = self._manifest.control_position
        self._control.seek(position)
        self._policy: PromotionPolicy | None = None
        self._policy_for: Any = None
        self._control_task: asyncio.Task[None] | None = None

    def _stop_control(self) -> None:
        if self._control_task is not None:
            self._control_task.cancel()
            self._control_task = None
        self._control.close()

    def _channel_name(self, position: int) -> str:
        cfg = self._config
        if cfg.control_kind == "kafka":
            return f"kafka:{cfg.kafka.topics.models}[0]@{position}"
        return f"file:{self._out_dir / 'control.jsonl'}@{position}"

    def _launch_command(self) -> bytes | None:
        """The config's launch, as the command an operator would send."""
        launch = self._config.launch
        if launch.mode == "live" and launch.candidate is None:
            return None
        cmd = Command(op="deploy", pipeline=self._config.name,
                      version=launch.candidate or next(iter(launch.weights)),
                      mode=launch.mode, share=launch.share if launch.mode == "canary" else None,
                      weights=dict(launch.weights) or None, actor="config",
                      reason="launch in the pipeline's config")
        return cmd.to_json()

    async def _control_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._config.control.poll_interval_s
        while not self._stopped:
            try:
                messages = await loop.run_in_executor(None, self._control.read)
            except Exception as e:  # the channel is away (a broker outage): try again
                self._log.record("control_error", "supervisor", f"{type(e).__name__}: {e}")
                messages = []
            for position, raw in messages:
                await self._command(raw, self._channel_name(position))
            await self._evaluate_candidate()
            await asyncio.sleep(interval)

    async def _command(self, raw: bytes, channel: str, details: dict[str, Any] | None = None,
                       *, strict: bool = False) -> dict[str, Any] | None:
        """Check, plan and apply one command; None if it was refused (and recorded).
        ``strict``: a refusal raises (the config's launch: the run cannot start as told)."""
        loop = asyncio.get_running_loop()
        async with self._control_lock:
            try:
                prepared = await loop.run_in_executor(None, self._lifecycle.prepare, raw,
                                                      channel)
            except LifecycleError as e:
                self._log.record("command_rejected", "supervisor", str(e), channel=channel)
                if strict:
                    raise PipelineError(f"launch in the config refused: {e}") from None
                return None
            except Exception as e:  # the registry is away: refused, the stream goes on
                self._log.record("command_rejected", "supervisor",
                                 f"{type(e).__name__}: {e}", channel=channel)
                return None
            prepared.details.update(details or {})
            return await self._apply(prepared)

    async def _apply(self, prepared: Prepared) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        refs = [s.apply.remote(prepared.deployment,
                               {v: per[f"scorer-{i}"] for v, per in prepared.artifacts.items()},
                               self._generation)
                for i, s in enumerate(self._scorers)]
        try:
            results = await asyncio.wait_for(asyncio.gather(*refs),
                                             self._config.supervision.ping_timeout_s)
        except (TimeoutError, ray.exceptions.RayError) as e:
            # A scorer died meanwhile: the recovery rebuilds every scorer with the
            # deployment in force before this command, so none serves it. Re-send it.
            self._log.record("command_failed", "supervisor", f"{type(e).__name__}: {e}",
                             command=prepared.command.id)
            return None
        details = await loop.run_in_executor(None, self._lifecycle.applied, prepared,
                                             list(results))
        cmd = prepared.command
        self._log.record("command", cmd.actor, cmd.op, command=cmd.id, version=cmd.version,
                         mode=cmd.mode, pause_ms_max=details["pause_ms_max"],
                         deployment=details["deployment"])
        return details

    # -- automatic promotion ---------------------------------------------------------
    async def _evaluate_candidate(self) -> None:
        promotion = self._config.launch.promotion
        deployment = self._lifecycle.deployment
        if promotion.mode != "auto" or len(deployment.arms) != 2:
            return
        if self._policy_for != deployment:
            self._policy_for = deployment
            self._policy = PromotionPolicy(promotion,
                                           paired=deployment.arms[1].role == "shadow")
        policy = self._policy
        if policy is None or policy.finished:
            return
        try:
            stats = await asyncio.gather(*(s.stats.remote() for s in self._scorers))
        except ray.exceptions.RayError:
            return  # a failure: the watch loop deals with it
        live, cand = GainStats(), GainStats()
        paired = GainStats() if policy.paired else None
        candidate = deployment.arms[1].version
        for st in stats:
            arms = {a["version"]: a for a in st["arms"]}
            if deployment.arms[0].version not in arms or candidate not in arms:
                return  # a scorer has not applied the deployment yet
            live.merge(GainStats.from_list(arms[deployment.arms[0].version]["gain"]))
            cand.merge(GainStats.from_list(arms[candidate]["gain"]))
            if paired is not None:
                paired.merge(GainStats.from_list(arms[candidate]["paired"]))
        decision = policy.check(live, cand, paired)
        if decision is None:
            return
        numbers = {"decision": {"auto": True, **decision.details(),
                                "decided_at": time.time()}}
        if decision.outcome == "promote":
            cmd = Command(op="promote", pipeline=self._config.name, version=candidate,
                          actor=AUTO_ACTOR, reason=f"beat live by {decision.difference:.4g} "
                          f"(p={decision.p_value:.3g})")
            await self._command(cmd.to_json(), "auto", numbers)
        else:
            self._log.record("evaluation", AUTO_ACTOR, "candidate kept out", version=candidate,
                             **numbers["decision"])
            if self._registry is not None:
                loop = asyncio.get_running_loop()
                try:
                    await loop.run_in_executor(None, lambda: self._registry.record(
                        candidate, "evaluated", actor=AUTO_ACTOR, outcome="keep",
                        **numbers))
                except Exception as e:
                    self._log.record("registry_error", "supervisor", f"{e}")

    def _arms_summary(self, scorers: list[dict[str, Any]]) -> dict[str, Any]:
        """Per arm over every scorer: volume, quality, latency."""
        arms: dict[str, dict[str, Any]] = {}
        for st in scorers:
            for a in st.get("arms", []):
                out = arms.setdefault(a["name"], {
                    "version": a["version"], "role": a["role"], "weight": a["weight"],
                    "scored": 0, "labeled": 0, "errors": 0, "metrics": {},
                    "latency_us_mean": None, "latency_us_max": 0.0, "_lat": [0, 0.0]})
                out["scored"] += a["scored"]
                out["errors"] += a["errors"]
                prev = out["labeled"]
                out["labeled"] += a["labeled"]
                for k, m in a["metrics"].items():  # weighted by labels
                    if out["labeled"]:
                        out["metrics"][k] = (out["metrics"].get(k, 0.0) * prev
                                             + m * a["labeled"]) / out["labeled"]
                lat = a["latency_us"]
                if lat["mean"] is not None:
                    out["_lat"][0] += a["scored"]
                    out["_lat"][1] += lat["mean"] * a["scored"]
                out["latency_us_max"] = max(out["latency_us_max"], lat["max"])
        for out in arms.values():
            n, total = out.pop("_lat")
            out["latency_us_mean"] = total / n if n else None
        return {"mode": self._lifecycle.deployment.mode, "arms": arms,
                "previous": self._lifecycle.deployment.previous,
                "commands_applied": self._lifecycle.n_applied,
                "commands_rejected": self._lifecycle.n_rejected}
