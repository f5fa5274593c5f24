"""``riffle models``: read the model registry (``list``, ``show``, ``diff``; ``--json``
for scripts), and send lifecycle commands to a running pipeline.

The registry is CONFIG's ``registry.url``, by default the one next to the pipeline's
outputs, ``sqlite:///<out_dir>/registry.db``, unless ``--registry URL`` names another (a
PostgreSQL URL, say). A version is named by its full id (``local/ckpt-000012``) or, within CONFIG's
pipeline, by its local part (``ckpt-000012``). Errors are one line, exit code 2.
Every read is an entry in the registry's access log (``models.list``, ``models.show``,
``models.diff``; the actor is the OS user), written before the answer is given: a
registry the log cannot be written to answers nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from pipelines.cli.output import Fail, one_line, print_json, print_table
from pipelines.config import PipelineConfig, load_config

if TYPE_CHECKING:
    from pipelines.registry import ModelVersion, Registry

__all__ = ["models", "open_registry", "registry_options", "version_ref"]

F = TypeVar("F", bound=Callable[..., Any])


def registry_options(fn: F) -> F:
    """CONFIG and ``--registry URL``: the options of every command that reads the registry."""
    fn = click.option("--registry", "registry_url", metavar="URL",
                      help="Registry database (default sqlite:///<out_dir>/registry.db).")(fn)
    return click.argument("config", type=click.Path(path_type=Path))(fn)


def open_registry(config: Path, registry_url: str | None) -> tuple[PipelineConfig, Registry]:
    """CONFIG and its registry (``--registry`` else CONFIG's), refused if it does not exist."""
    from pipelines.registry import Registry

    with one_line():  # the config only says where the registry is: its source need not be up
        cfg = load_config(config, check_model=False)
        return cfg, Registry(registry_url or cfg.registry_url(), create=False)


def version_ref(cfg: PipelineConfig, ref: str) -> str:
    """A version's full id, from a full id or a local one within CONFIG's pipeline."""
    from pipelines.serving.commands import version_ref as ref_of

    return ref_of(cfg, ref)


def _when(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any) -> str:
    from pipelines.registry import MISSING

    if value is MISSING:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _code(v: ModelVersion) -> str:
    if v.code is None:
        return "unknown"
    return f"{v.code.commit[:12]}{' (dirty)' if v.code.dirty else ''}"


@click.group()
def models() -> None:
    """Read the model registry: versions, their lineage and lifecycle."""


def _version_json(v: ModelVersion) -> dict[str, Any]:
    return {"id": v.id, "pipeline": v.pipeline, "kind": v.kind, "model_class": v.model_class,
            "status": v.status, "parent_id": v.parent_id,
            "code": v.code.model_dump() if v.code else None, "config_hash": v.config_hash,
            "artifact_uri": v.artifact_uri, "artifact_sha256": v.artifact_sha256,
            "created_at": v.created_at, "created_by": v.created_by, "params": v.params,
            "metrics": v.metrics, "data": v.data.model_dump(mode="json")}


_json_option = click.option("--json", "as_json", is_flag=True,
                            help="One JSON document on stdout (for scripts).")


@models.command("list")
@registry_options
@_json_option
def list_versions(config: Path, registry_url: str | None, as_json: bool) -> None:
    """The versions of CONFIG's pipeline, oldest first."""
    cfg, registry = open_registry(config, registry_url)
    with registry:
        with one_line():
            registry.log_access("models.list", pipeline=cfg.name)
            versions = registry.versions(cfg.name)
    if as_json:
        print_json({"pipeline": cfg.name, "versions": [_version_json(v) for v in versions]})
        return
    table = Table(title=f"riffle models: {cfg.name} ({len(versions)} versions)")
    for name in ("version", "kind", "model", "status", "parent", "created (UTC)", "by",
                 "metrics"):
        table.add_column(name, no_wrap=name in ("version", "created (UTC)"))
    for v in versions:
        metrics = " ".join(f"{k}={_short(m)}" for k, m in sorted(v.metrics.items())[:3])
        table.add_row(v.id, v.kind, v.model_class.rsplit(".", 1)[-1], v.status,
                      v.parent_id or "-", _when(v.created_at), v.created_by, metrics)
    print_table(table)


@models.command()
@registry_options
@click.argument("version")
@_json_option
def show(config: Path, registry_url: str | None, version: str, as_json: bool) -> None:
    """One VERSION: what it is, what it learned from, and its lifecycle."""
    cfg, registry = open_registry(config, registry_url)
    with registry:
        with one_line():
            registry.log_access("models.show", pipeline=cfg.name,
                                target=version_ref(cfg, version))
            v = registry.get(version_ref(cfg, version))
            events = registry.events(v.id)
    if as_json:
        print_json({"version": _version_json(v),
                    "events": [{"id": e.id, "kind": e.kind, "at": e.at, "actor": e.actor,
                                "details": e.details} for e in events]})
        return
    table = Table(title=f"model version {v.id}", show_header=False)
    rows = [("kind", v.kind), ("model", v.model_class), ("status", v.status),
            ("parent", v.parent_id or "-"), ("code", _code(v)),
            ("config hash", v.config_hash or "-"), ("artifact", v.artifact_uri),
            ("sha256", v.artifact_sha256), ("created", f"{_when(v.created_at)} UTC"),
            ("created by", v.created_by), ("labels learned", f"{v.data.n_learned:,}")]
    rows += [(f"params.{k}", _short(p)) for k, p in sorted(v.params.items())]
    rows += [(f"metrics.{k}", _short(m)) for k, m in sorted(v.metrics.items())]
    rows += [(f"data {src}", f"[{start}, {end})") for src, (start, end) in v.data.sources.items()]
    for key, value in rows:
        table.add_row(key, value)
    log = Table(title="lifecycle")
    for name in ("at (UTC)", "event", "actor", "details"):
        log.add_column(name, no_wrap=name != "details", overflow="fold")
    for event in events:
        log.add_row(_when(event.at), event.kind, event.actor,
                    _short(event.details) if event.details else "")
    print_table(table, log)


@models.command()
@registry_options
@click.argument("a")
@click.argument("b")
@_json_option
def diff(config: Path, registry_url: str | None, a: str, b: str, as_json: bool) -> None:
    """What changed from version A to version B: identity, code, params, metrics, data."""
    from pipelines.registry import MISSING

    cfg, registry = open_registry(config, registry_url)
    with registry:
        with one_line():
            id_a, id_b = version_ref(cfg, a), version_ref(cfg, b)
            # One entry for both versions: the target is B, and before -> after is A -> B.
            registry.log_access("models.diff", pipeline=cfg.name, target=id_b, before=id_a,
                                after=id_b)
            changes = registry.diff(id_a, id_b)
    if as_json:  # a value one version does not have is left out ("old" or "new")
        print_json({"a": id_a, "b": id_b, "changes": [
            {"section": c.section, "key": c.key,
             **({} if c.old is MISSING else {"old": c.old}),
             **({} if c.new is MISSING else {"new": c.new})} for c in changes]})
        return
    if not changes:
        click.echo(f"{id_a} and {id_b}: no differences")
        return
    table = Table(title=f"{id_a} -> {id_b}")
    for name in ("section", "key", id_a, id_b):
        table.add_column(name, overflow="fold")
    for c in changes:
        table.add_row(c.section, c.key, _short(c.old), _short(c.new))
    print_table(table)


# -- commands to a running pipeline (the control stream) -----------------------------

def _send_options(fn: F) -> F:
    fn = click.option("--reason", help="Why (kept with the command in the registry).")(fn)
    fn = click.option("--out", type=click.Path(path_type=Path),
                      help="The run's output folder, if not CONFIG's (the embedded control "
                           "channel is there).")(fn)
    fn = click.option("--wait/--no-wait", default=True, show_default=True,
                      help="Wait for the running pipeline to apply or refuse it.")(fn)
    fn = click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
                      help="Seconds --wait waits.")(fn)
    return registry_options(fn)


def _send(config: Path, registry_url: str | None, out: Path | None, wait: bool,
          timeout_s: float, **fields: Any) -> None:
    """Check the command here first (a clear error before anything is sent), send it on
    the control stream, and (``wait``) report what the pipeline did with it."""
    from pipelines.registry import default_actor
    from pipelines.serving.commands import send_command, wait_outcome

    cfg, registry = open_registry(config, registry_url)
    with registry:
        with one_line():
            sent = send_command(cfg, registry, actor=default_actor(), out_dir=out,
                                wait=False, **fields)
        cmd = sent.command
        click.echo(f"sent {cmd.op} ({cmd.id})" + (f" {cmd.version}" if cmd.version else ""))
        if not wait:
            return
        outcome = wait_outcome(cfg, registry, cmd, timeout_s=timeout_s, poll_s=0.2)
    if outcome.status == "rejected":
        raise Fail(f"refused by the pipeline: {outcome.error}")
    if outcome.status == "applied":
        pause = outcome.details.get("pause_ms_max")
        click.echo(f"applied at {_when(outcome.received_at)} UTC"
                   + (f" (longest scoring pause {pause:.2f} ms)" if pause is not None else ""))
        return
    raise Fail(f"no answer from pipeline {cfg.name} within {timeout_s:.0f} s: is it running? "
               "(the command waits in the control stream for a --resume)")


def _weights(items: tuple[str, ...]) -> dict[str, float]:
    """``--weight VERSION=W`` options as a mapping (a malformed one: one line, exit 2)."""
    parsed: dict[str, float] = {}
    for item in items:
        name, _, w = item.rpartition("=")
        try:
            parsed[name] = float(w)
        except ValueError:
            raise Fail(f"--weight {item!r}: expected VERSION=WEIGHT") from None
    return parsed


@models.command()
@_send_options
@click.argument("version")
@click.option("--mode", type=click.Choice(["live", "shadow", "canary", "ab"]), default="live",
              show_default=True, help="live: hot swap; shadow, canary, ab: beside live.")
@click.option("--share", type=float, help="Canary: the share of keys it serves (0-1).")
@click.option("--weight", "weights", multiple=True, metavar="VERSION=W",
              help="A/B: an arm and its weight (repeat; 'live' names the live model).")
def deploy(config: Path, registry_url: str | None, out: Path | None, wait: bool,
           timeout_s: float, reason: str | None, version: str, mode: str, share: float | None,
           weights: tuple[str, ...]) -> None:
    """Deploy VERSION to CONFIG's running pipeline (hot, no downtime)."""
    parsed = _weights(weights)
    if mode == "ab":
        parsed.setdefault(version, parsed.pop(version, 1.0))
    _send(config, registry_url, out, wait, timeout_s, op="deploy", version=version, mode=mode,
          share=share, weights=parsed or None, reason=reason)


@models.command()
@_send_options
@click.argument("version", required=False)
def promote(config: Path, registry_url: str | None, out: Path | None, wait: bool,
            timeout_s: float, reason: str | None, version: str | None) -> None:
    """Make the candidate (or VERSION) live; the replaced version stays warm for rollback."""
    _send(config, registry_url, out, wait, timeout_s, op="promote", version=version,
          reason=reason)


@models.command()
@_send_options
def rollback(config: Path, registry_url: str | None, out: Path | None, wait: bool,
             timeout_s: float, reason: str | None) -> None:
    """Serve the previous live version again."""
    _send(config, registry_url, out, wait, timeout_s, op="rollback", reason=reason)


@models.command()
@_send_options
@click.argument("version")
def retire(config: Path, registry_url: str | None, out: Path | None, wait: bool,
           timeout_s: float, reason: str | None, version: str) -> None:
    """Take VERSION out of service for good."""
    _send(config, registry_url, out, wait, timeout_s, op="retire", version=version,
          reason=reason)


@models.command("set-traffic")
@_send_options
@click.option("--share", type=float, help="The canary's new share of keys (0-1).")
@click.option("--weight", "weights", multiple=True, metavar="VERSION=W",
              help="An A/B arm's new weight (repeat).")
def set_traffic(config: Path, registry_url: str | None, out: Path | None, wait: bool,
                timeout_s: float, reason: str | None, share: float | None,
                weights: tuple[str, ...]) -> None:
    """Change the canary's share or the A/B weights."""
    parsed = _weights(weights)
    _send(config, registry_url, out, wait, timeout_s, op="set_traffic", share=share,
          weights=parsed or None, reason=reason)
