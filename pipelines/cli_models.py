"""``riffle models``: read the model registry (``list``, ``show``, ``diff``).

The registry is the one next to the pipeline's outputs, ``sqlite:///<out_dir>/registry.db``
(``out_dir`` from CONFIG), unless ``--registry URL`` names another (a PostgreSQL URL,
say). A version is named by its full id (``local/ckpt-000012``) or, within CONFIG's
pipeline, by its local part (``ckpt-000012``). Errors are one line, exit code 2.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from pipelines.config import PipelineConfig, load_config
from pipelines.errors import RiffleError
from pipelines.registry import MISSING, ModelVersion, Registry

__all__ = ["default_registry_url", "models"]

F = TypeVar("F", bound=Callable[..., Any])


class _Fail(click.ClickException):
    """A mistake of the operator: one line on stderr, exit code 2 (as in pipelines.cli)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"riffle: error: {self.format_message()}", err=True)


def default_registry_url(config: PipelineConfig) -> str:
    return f"sqlite:///{(config.out_dir / 'registry.db').resolve()}"


def _registry_options(fn: F) -> F:
    fn = click.option("--registry", "registry_url", metavar="URL",
                      help="Registry database (default sqlite:///<out_dir>/registry.db).")(fn)
    return click.argument("config", type=click.Path(path_type=Path))(fn)


def _open(config: Path, registry_url: str | None) -> tuple[PipelineConfig, Registry]:
    try:  # the config only says where the registry is: its source need not be reachable
        cfg = load_config(config)
        return cfg, Registry(registry_url or default_registry_url(cfg), create=False)
    except RiffleError as e:
        raise _Fail(str(e)) from None


def _ref(cfg: PipelineConfig, ref: str) -> str:
    return ref if "/" in ref else f"{cfg.name}/{ref}"


def _when(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any) -> str:
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


@models.command("list")
@_registry_options
def list_versions(config: Path, registry_url: str | None) -> None:
    """The versions of CONFIG's pipeline, oldest first."""
    cfg, registry = _open(config, registry_url)
    with registry:
        try:
            versions = registry.versions(cfg.name)
        except RiffleError as e:
            raise _Fail(str(e)) from None
    table = Table(title=f"riffle models: {cfg.name} ({len(versions)} versions)")
    for name in ("version", "kind", "model", "status", "parent", "created (UTC)", "by",
                 "metrics"):
        table.add_column(name, no_wrap=name in ("version", "created (UTC)"))
    for v in versions:
        metrics = " ".join(f"{k}={_short(m)}" for k, m in sorted(v.metrics.items())[:3])
        table.add_row(v.id, v.kind, v.model_class.rsplit(".", 1)[-1], v.status,
                      v.parent_id or "-", _when(v.created_at), v.created_by, metrics)
    Console().print(table)


@models.command()
@_registry_options
@click.argument("version")
def show(config: Path, registry_url: str | None, version: str) -> None:
    """One VERSION: what it is, what it learned from, and its lifecycle."""
    cfg, registry = _open(config, registry_url)
    with registry:
        try:
            v = registry.get(_ref(cfg, version))
            events = registry.events(v.id)
        except RiffleError as e:
            raise _Fail(str(e)) from None
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
    console = Console()
    console.print(table)
    console.print(log)


@models.command()
@_registry_options
@click.argument("a")
@click.argument("b")
def diff(config: Path, registry_url: str | None, a: str, b: str) -> None:
    """What changed from version A to version B: identity, code, params, metrics, data."""
    cfg, registry = _open(config, registry_url)
    with registry:
        try:
            id_a, id_b = _ref(cfg, a), _ref(cfg, b)
            changes = registry.diff(id_a, id_b)
        except RiffleError as e:
            raise _Fail(str(e)) from None
    if not changes:
        click.echo(f"{id_a} and {id_b}: no differences")
        return
    table = Table(title=f"{id_a} -> {id_b}")
    for name in ("section", "key", id_a, id_b):
        table.add_column(name, overflow="fold")
    for c in changes:
        table.add_row(c.section, c.key, _short(c.old), _short(c.new))
    Console().print(table)
