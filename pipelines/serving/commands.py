"""Lifecycle commands to the running pipeline, as ``riffle models deploy|promote|...``
sends them: checked here first (an unknown version is refused and logged before
anything is sent), sent on the control stream, then (``wait``) answered from the
registry's control log once the pipeline applied or refused it.

The CLI and the service's admin routes both send through :func:`send_command`; only the
actor differs (the OS user, or the API principal).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from pipelines.config import PipelineConfig
from pipelines.errors import CommandError, RiffleError, format_validation_error
from pipelines.protocol import Command

__all__ = ["Outcome", "send_command", "version_ref", "wait_outcome"]


class Outcome(NamedTuple):
    command: Command
    status: str
    """``applied``, ``rejected`` (by the pipeline) or ``pending`` (no answer in time)."""
    error: str | None = None
    details: dict[str, Any] = {}
    received_at: Any = None


def version_ref(cfg: PipelineConfig, ref: str) -> str:
    """A version's full id, from a full id or a local one within CONFIG's pipeline."""
    return ref if "/" in ref else f"{cfg.name}/{ref}"


def send_command(cfg: PipelineConfig, registry: Any, *, actor: str,
                 out_dir: Path | None = None, wait: bool = True, timeout_s: float = 60.0,
                 poll_s: float = 0.1, **fields: Any) -> Outcome:
    """Check, send and (``wait``) follow one command. A command refused before it is
    sent (malformed, unknown version) raises :class:`CommandError` (a version refused
    is logged in the control log first)."""
    from pipelines.control import open_control

    if fields.get("version") and fields["version"] != "live":
        fields["version"] = version_ref(cfg, fields["version"])
    if fields.get("weights"):
        fields["weights"] = {v if v == "live" else version_ref(cfg, v): w
                             for v, w in fields["weights"].items()}
    try:
        cmd = Command(pipeline=cfg.name, actor=actor, **fields)
    except ValidationError as e:
        raise CommandError(format_validation_error(e, root="<command>")) from None
    for version in [cmd.version, *(cmd.weights or {})]:
        if version is None or version == "live":
            continue
        try:
            registry.get(version)
        except RiffleError as e:
            registry.log_command(status="rejected", raw=cmd.to_json(), channel="cli",
                                 pipeline=cfg.name, command_id=cmd.id, op=cmd.op,
                                 version_id=version, actor=cmd.actor, error=str(e))
            raise CommandError(str(e)) from None
    channel = open_control(cfg, out_dir=out_dir)
    try:
        channel.send(cmd.to_json())
    except (OSError, RiffleError) as e:
        raise CommandError(f"cannot send the command: {e}") from None
    finally:
        channel.close()
    if not wait:
        return Outcome(cmd, "pending")
    return wait_outcome(cfg, registry, cmd, timeout_s=timeout_s, poll_s=poll_s)


def wait_outcome(cfg: PipelineConfig, registry: Any, cmd: Command, *, timeout_s: float,
                 poll_s: float = 0.1) -> Outcome:
    """What the pipeline did with ``cmd``, from the control log (``pending``: nothing
    within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = [c for c in registry.commands(cfg.name, limit=200) if c.command_id == cmd.id]
        if done:
            record = done[-1]
            return Outcome(cmd, record.status, record.error, record.details,
                           record.received_at)
        if time.monotonic() >= deadline:
            return Outcome(cmd, "pending")
        time.sleep(poll_s)
