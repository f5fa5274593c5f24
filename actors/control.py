"""The control path of a running pipeline: model lifecycle commands, applied by the scorers.

The Supervisor owns one :class:`ControlPath` (``self._control``). It polls the control
stream every ``control.poll_interval_s``; each command is checked and planned by
:class:`pipelines.lifecycle.Lifecycle`, then sent to every scorer, which applies it
between two batches. Commands and checkpoints take turns (:attr:`ControlPath.lock`), so
a checkpoint's parts all reflect the same deployment, and its manifest records that
deployment and the control position after the last command applied.

With ``launch.promotion.mode: auto`` and one candidate deployed, the arms' gains are
gathered from the scorers at each poll and the promotion policy decides; a promotion
goes through the same path as an operator's, with the numbers behind the decision.

A ``forget`` message (``riffle forget`` on a running pipeline) is handed, under the same
lock, to :attr:`ControlPath.on_forget` (the Supervisor's :mod:`actors.erasure`).

The decisions are Ray-free (``lifecycle``, ``promotion``, ``control``); this class only
carries them to the actors and back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import ray

from actors.retrainer import Retrainer
from pipelines.audit.forget_request import forget_id
from pipelines.checkpoint import Manifest
from pipelines.config import PipelineConfig
from pipelines.control import channel_name, open_control
from pipelines.errors import PipelineError
from pipelines.lifecycle import (
    Lifecycle,
    LifecycleError,
    Prepared,
    deployment_from_json,
    launch_command,
)
from pipelines.models import Task
from pipelines.promotion import PromotionPolicy, merge_gains
from pipelines.protocol import Applied, Command, Deployment
from pipelines.summary import arms_summary
from pipelines.supervision import SupervisionLog

AUTO_ACTOR = "riffle-auto-promotion"

Scorers = Callable[[], tuple[list[Any], int]]
"""The scorers in service now and their generation (both change at every restart)."""


class ControlPath:
    """Lifecycle commands from the control stream to the scorers, one at a time."""

    def __init__(self, config: PipelineConfig, *, out_dir: Path, log: SupervisionLog,
                 registry: Any, task: Task, scorers: Scorers,
                 resume_from: Manifest | None = None) -> None:
        self._config = config
        self._out_dir = out_dir
        self._log = log
        self._registry = registry
        self._scorers = scorers
        self.lock = asyncio.Lock()
        """Held while a command is applied, a checkpoint taken or the data path rebuilt."""
        self.lifecycle = Lifecycle(
            pipeline=config.name, live_version=config.scoring.model.version,
            scorers=[f"scorer-{i}" for i in range(config.scoring.n_actors)],
            task=task, registry=registry)
        self._channel = open_control(config, out_dir=out_dir,
                                     client_id=f"{config.name}-supervisor")
        position = None
        if resume_from is not None:  # the deployment and commands as of the checkpoint
            if resume_from.deployment is not None:
                self.lifecycle.deployment = deployment_from_json(resume_from.deployment)
            position = resume_from.control_position
        self._channel.seek(position)
        self._policy: PromotionPolicy | None = None
        self._policy_for: Deployment | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_forget: Callable[[str], Awaitable[None]] | None = None
        """Applies a forget request (its id), called with :attr:`lock` held."""
        self.retrainer = Retrainer(config, out_dir=out_dir, log=log, registry=registry,
                                   scorers=scorers, control=self)
        """Drift alarms and the retraining policy (polled on this loop)."""

    @property
    def deployment(self) -> Deployment:
        return self.lifecycle.deployment

    @property
    def position(self) -> int:
        """The control stream's position after the last command read."""
        return self._channel.position

    def artifacts_for(self, scorer: str) -> dict[str, bytes]:
        return self.lifecycle.artifacts_for(scorer)

    def start(self, stopped: Callable[[], bool]) -> None:
        """Poll the control stream until ``stopped()``."""
        self._task = asyncio.create_task(self._loop(stopped))

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._channel.close()

    async def launch(self) -> None:
        """Apply the config's launch (before the first event, so every record sees it);
        a refusal raises: the run cannot start as the config says."""
        cmd = launch_command(self._config)
        if cmd is not None:
            await self.command(cmd.to_json(), "config", strict=True)

    def summary(self, scorers: list[dict[str, Any]]) -> dict[str, Any]:
        """The deployment and its arms' figures over ``scorers``' stats."""
        return arms_summary(scorers, self.deployment, n_applied=self.lifecycle.n_applied,
                            n_rejected=self.lifecycle.n_rejected)

    async def _loop(self, stopped: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        interval = self._config.control.poll_interval_s
        while not stopped():
            try:
                messages = await loop.run_in_executor(None, self._channel.read)
            except Exception as e:  # the channel is away (a broker outage): try again
                self._log.record("control_error", "supervisor", f"{type(e).__name__}: {e}")
                messages = []
            for position, raw in messages:
                request = forget_id(raw)
                if request is not None:
                    await self._forget(request)
                    continue
                await self.command(raw, channel_name(self._config, position,
                                                     out_dir=self._out_dir))
            await self._evaluate_candidate()
            await self.retrainer.poll()
            await asyncio.sleep(interval)

    async def _forget(self, request: str) -> None:
        if self.on_forget is None:
            self._log.record("command_rejected", "supervisor", "forget: no erasure path",
                             request=request)
            return
        async with self.lock:
            await self.on_forget(request)

    async def command(self, raw: bytes, channel: str, details: dict[str, Any] | None = None,
                      *, strict: bool = False) -> dict[str, Any] | None:
        """Check, plan and apply one command; None if it was refused (and recorded).
        ``strict``: a refusal raises (the config's launch: the run cannot start as told)."""
        loop = asyncio.get_running_loop()
        async with self.lock:
            try:
                prepared = await loop.run_in_executor(None, self.lifecycle.prepare, raw,
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
        scorers, generation = self._scorers()
        refs = [s.apply.remote(prepared.deployment,
                               {v: per[f"scorer-{i}"] for v, per in prepared.artifacts.items()},
                               generation)
                for i, s in enumerate(scorers)]
        try:
            results: list[Applied] = await asyncio.wait_for(
                asyncio.gather(*refs), self._config.supervision.ping_timeout_s)
        except (TimeoutError, ray.exceptions.RayError) as e:
            # A scorer died meanwhile: the recovery rebuilds every scorer with the
            # deployment in force before this command, so none serves it. Re-send it.
            self._log.record("command_failed", "supervisor", f"{type(e).__name__}: {e}",
                             command=prepared.command.id)
            return None
        details = await loop.run_in_executor(None, self.lifecycle.applied, prepared, results)
        cmd = prepared.command
        self._log.record("command", cmd.actor, cmd.op, command=cmd.id, version=cmd.version,
                         mode=cmd.mode, pause_ms_max=details["pause_ms_max"],
                         deployment=details["deployment"])
        return details

    # -- automatic promotion ---------------------------------------------------------
    async def _evaluate_candidate(self) -> None:
        promotion = self._config.launch.promotion
        deployment = self.deployment
        if promotion.mode != "auto" or len(deployment.arms) != 2:
            return
        if self._policy_for != deployment:
            self._policy_for = deployment
            self._policy = PromotionPolicy(promotion,
                                           paired=deployment.arms[1].role == "shadow")
        policy = self._policy
        if policy is None or policy.finished:
            return
        scorers, _ = self._scorers()
        try:
            stats = await asyncio.gather(*(s.stats.remote() for s in scorers))
        except ray.exceptions.RayError:
            return  # a failure: the watch loop deals with it
        gains = merge_gains(list(stats), deployment, paired=policy.paired)
        if gains is None:
            return  # a scorer has not applied the deployment yet
        decision = policy.check(gains.live, gains.candidate, gains.paired)
        if decision is None:
            return
        candidate = deployment.arms[1].version
        numbers = {"decision": {"auto": True, **decision.details(),
                                "decided_at": time.time()}}
        if decision.outcome == "promote":
            cmd = Command(op="promote", pipeline=self._config.name, version=candidate,
                          actor=AUTO_ACTOR, reason=f"beat live by {decision.difference:.4g} "
                          f"(p={decision.p_value:.3g})")
            await self.command(cmd.to_json(), "auto", numbers)
            return
        self._log.record("evaluation", AUTO_ACTOR, "candidate kept out", version=candidate,
                         **numbers["decision"])
        if self._registry is not None:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, lambda: self._registry.record(
                    candidate, "evaluated", actor=AUTO_ACTOR, outcome="keep", **numbers))
            except Exception as e:
                self._log.record("registry_error", "supervisor", f"{e}")
