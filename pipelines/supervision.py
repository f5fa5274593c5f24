"""Supervision policy, Akka-style: what to do when an actor fails.

Runtime-free; the Supervisor actor applies it. A failure is answered with a restart
after a backoff (exponential, capped, with jitter) until more than ``max_restarts``
failures fall within ``within_s``; then the failure escalates and the pipeline stops
with the actor's name and last error. The count forgets failures older than the
window, so a pipeline that fails rarely is never stopped for it.

>>> from pipelines.config import RestartPolicyConfig
>>> clock = [0.0]
>>> policy = RestartPolicy(RestartPolicyConfig(max_restarts=2, within_s=10.0, backoff_jitter=0),
...                        clock=lambda: clock[0])
>>> [policy.on_failure("boom").delay_s for _ in range(2)]
[0.5, 1.0]
>>> policy.on_failure("boom")
Escalate(reason='3 failures within 10.0 s (max_restarts 2); last: boom')
>>> clock[0] = 60.0; policy.on_failure("boom")   # the window has passed: counting starts anew
Restart(delay_s=0.5, attempt=1)
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from pipelines.config import RestartPolicyConfig

__all__ = ["Escalate", "Restart", "RestartPolicy", "SupervisionLog"]


class Restart(NamedTuple):
    delay_s: float
    attempt: int
    """How many failures the window holds, this one included."""


class Escalate(NamedTuple):
    reason: str


class RestartPolicy:
    """Restart-or-escalate decisions for one actor (or one group, for all-for-one)."""

    def __init__(self, config: RestartPolicyConfig, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self._clock = clock
        self._rng = rng or random.Random()
        self._failures: deque[float] = deque()

    def on_failure(self, error: str) -> Restart | Escalate:
        cfg = self.config
        now = self._clock()
        failures = self._failures
        failures.append(now)
        while failures and failures[0] <= now - cfg.within_s:
            failures.popleft()
        attempt = len(failures)
        if attempt > cfg.max_restarts:
            return Escalate(f"{attempt} failures within {cfg.within_s} s "
                            f"(max_restarts {cfg.max_restarts}); last: {error}")
        delay = min(cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** (attempt - 1))
        if cfg.backoff_jitter:
            delay *= 1 + self._rng.uniform(-cfg.backoff_jitter, cfg.backoff_jitter)
        return Restart(round(delay, 6), attempt)


class SupervisionLog:
    """Every failure, restart and escalation: who, when, why, which checkpoint.

    Kept in memory for ``riffle status`` and appended to ``supervision.jsonl``.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []

    def record(self, kind: str, actor: str, reason: str, **extra: Any) -> dict[str, Any]:
        entry = {"at": time.time(), "kind": kind, "actor": actor, "reason": reason, **extra}
        self.entries.append(entry)
        del self.entries[:-1000]  # the file keeps them all
        if self.path is not None:
            with open(self.path, "ab") as f:
                f.write(orjson.dumps(entry) + b"\n")
        return entry
