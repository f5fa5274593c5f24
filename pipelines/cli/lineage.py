"""``riffle audit record|model|key``: lineage both ways, from the committed audit trail,
the training log and the registry (``--json`` on each: one JSON document).

- ``riffle audit record CONFIG RECORD_ID``: the trail's rows of a record (served and
  shadow), who and what put each version in place (lifecycle events, control-log
  entry), and whether its label was learned, by which arms, into which versions;
- ``riffle audit model CONFIG VERSION``: what a version is, its parents, its exact
  training data (count, position ranges, distinct keys, first and last record;
  ``--records``: every record id), its lifecycle, metrics and every access to it;
- ``riffle audit key CONFIG KEY``: every record of a data subject, each one's prediction
  and version, and every version whose training includes the subject.

The audit data is read from CONFIG's checkpoint store (in ``--out`` when the run wrote
elsewhere than the config says), the registry from CONFIG's (or ``--registry``). Each
query is logged in the access log (``audit.record``, ``audit.model``, ``audit.key``;
a key only as its salted hash), found or not. Something unknown: one line, exit 2.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.table import Table

from pipelines.cli.output import logged, one_line, print_json, print_table
from pipelines.config import load_config
from pipelines.errors import RiffleError

if TYPE_CHECKING:
    from pipelines.audit.lineage import Lineage

__all__ = ["key", "model", "record"]

F = TypeVar("F", bound=Callable[..., Any])


def _options(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True,
                      help="One JSON document on stdout (for scripts).")(fn)
    fn = click.option("--out", type=click.Path(path_type=Path),
                      help="The run's output folder, if not CONFIG's.")(fn)
    fn = click.option("--registry", "registry_url", metavar="URL",
                      help="Registry database (default sqlite:///<out_dir>/registry.db).")(fn)
    return click.argument("config", type=click.Path(path_type=Path))(fn)


@contextmanager
def _lineage(config: Path, registry_url: str | None, out: Path | None
             ) -> Iterator[tuple[Lineage, str]]:
    from pipelines.audit.lineage import Lineage
    from pipelines.registry import Registry

    with one_line():
        cfg = load_config(config, check_model=False)
        registry = Registry(registry_url or cfg.registry_url(out), create=False)
    with registry, Lineage(registry, pipeline=cfg.name,
                           store_url=cfg.checkpoint_store_url(out)) as lineage:
        yield lineage, cfg.name


def _answer(lineage: Lineage, action: str, target: str, ask: Callable[[], Any]) -> Any:
    """``ask()``'s answer, the query logged (found or not) before anything is shown."""
    return logged(lineage.registry, action, ask,
                  lambda _: {"pipeline": lineage.pipeline, "target": target})


def _when(at: float | str | None) -> str:
    if at is None:
        return "-"
    moment = (dt.datetime.fromisoformat(at) if isinstance(at, str)
              else dt.datetime.fromtimestamp(at, dt.UTC))
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and value and all(isinstance(p, list) for p in value):
        return " ".join(f"{c}:{p:.3f}" if isinstance(p, float) else f"{c}:{p}"
                        for c, p in value)  # class probabilities
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return "-" if value is None else str(value)


@click.command()
@_options
@click.argument("record_id")
def record(config: Path, registry_url: str | None, out: Path | None, as_json: bool,
           record_id: str) -> None:
    """Which model scored RECORD_ID, who put it there, and where its label went."""
    with _lineage(config, registry_url, out) as (lineage, _):
        doc = _answer(lineage, "audit.record", record_id, lambda: lineage.record(record_id))
    if as_json:
        print_json(doc)
        return
    tables: list[Any] = []
    for row in doc["served"] + doc["shadow"]:
        placed = row["placed_by"]
        how = placed["how"] + (f" at {_when(placed['command']['received_at'])} UTC"
                               if placed["command"] else "")
        table = Table(title=f"record {record_id}: {row['role']} arm {row['arm']}",
                      show_header=False)
        for k, value in (("version", row["model_version"]), ("placed by", how),
                         ("scorer", row["scorer"]), ("prediction", _short(row["prediction"])),
                         ("score", _short(row["score"])),
                         ("scored", f"{_when(row['scored_at'])} UTC"),
                         ("continued from", row["checkpoint"] or "-"),
                         ("position", f"{row['topic']}[{row['partition']}]@{row['offset']}"),
                         ("key", row["key"]), ("features", _short(row["features"]))):
            table.add_row(k, value)
        tables.append(table)
    for row in doc["learned"]:
        tables.append(f"label {_short(row['label'])} learned by {row['arm']} "
                      f"({row['model_version']}) at {_when(row['learned_at'])} UTC, "
                      f"committed into {row['committed_into']}")
    if not doc["learned"]:
        tables.append("label not learned (yet)")
    if doc["in_versions"]:
        tables.append(f"in the training data of: {', '.join(doc['in_versions'])}")
    print_table(*tables)


@click.command()
@_options
@click.argument("version")
@click.option("--records", is_flag=True, help="List every record id it learned from.")
def model(config: Path, registry_url: str | None, out: Path | None, as_json: bool,
          version: str, records: bool) -> None:
    """What VERSION is and exactly which records it learned from."""
    with _lineage(config, registry_url, out) as (lineage, pipeline):
        ref = version if "/" in version or not _registered_ref(lineage, pipeline, version) \
            else f"{pipeline}/{version}"
        doc = _answer(lineage, "audit.model", ref,
                      lambda: lineage.model(ref, records=records))
    if as_json:
        print_json(doc)
        return
    about = Table(title=f"model version {doc['version']}", show_header=False)
    rows = [("kind", doc["kind"])]
    if doc["registered"]:
        rows += [("class", doc["class"]), ("status", doc["status"]),
                 ("parents", " <- ".join(doc["parents"]) or "-"),
                 ("code", _short(doc["code"])), ("config hash", doc["config_hash"] or "-"),
                 ("created", f"{_when(doc['created_at'])} UTC by {doc['created_by']}")]
        rows += [(f"params.{k}", _short(p)) for k, p in sorted(doc["params"].items())]
        rows += [(f"metrics.{k}", _short(m)) for k, m in sorted(doc["metrics"].items())]
    rows += [("lineage", " + ".join(
        f"{t['model_version']}'s examples to {t['committed_by'] or 'now'}"
        + (" (its last stay)" if t["last_stay_only"] else "") for t in doc["lineage"]) or "-")]
    training = doc.get("training")
    if training:
        rows += [("examples learned", f"{training['n_examples']:,}"),
                 ("distinct keys", f"{training['n_keys']:,}")]
        rows += [(f"data {src}", f"[{lo}, {hi})") for src, (lo, hi) in
                 training["sources"].items()]
        for end in ("first", "last"):
            if training[end]:
                e = training[end]
                rows.append((f"{end} record", f"{e['record_id']} ({e['topic']}"
                             f"[{e['partition']}]@{e['offset']}, {_when(e['learned_at'])})"))
        if records:
            rows.append(("records", " ".join(training["records"])))
    for k, value in rows:
        about.add_row(k, value)
    log = Table(title="lifecycle and accesses")
    for name in ("at (UTC)", "what", "who", "why"):
        log.add_column(name, overflow="fold")
    for e in doc["lifecycle"]:
        log.add_row(_when(e["at"]), e["event"], e["actor"], e["reason"] or "")
    for a in doc["accesses"]:
        log.add_row(_when(a["at"]), a["action"], a["actor"], a["reason"] or "")
    print_table(about, log)


def _registered_ref(lineage: Lineage, pipeline: str, version: str) -> bool:
    """A local id (``ckpt-000003``) names ``<pipeline>/ckpt-000003`` when that is
    registered; otherwise it is a version the trail names as it is (``v0``)."""
    try:
        lineage.registry.get(f"{pipeline}/{version}")
    except RiffleError:
        return False
    return True


@click.command()
@_options
@click.argument("key")
def key(config: Path, registry_url: str | None, out: Path | None, as_json: bool,
        key: str) -> None:
    """Every record of the data subject KEY, and every version trained on it."""
    from pipelines.audit.subjects import subject_hash

    with _lineage(config, registry_url, out) as (lineage, _):
        with one_line():
            hashed = subject_hash(key)
        doc = _answer(lineage, "audit.key", hashed, lambda: lineage.key(key))
    if as_json:
        print_json(doc)
        return
    table = Table(title=f"subject {key}: {doc['n_records']} records, "
                        f"{doc['n_learned']} labels learned")
    for name in ("record", "position", "version", "arm", "prediction", "scored (UTC)",
                 "label", "learned by"):
        table.add_column(name, overflow="fold")
    for r in doc["records"]:
        served = r["served"] or {}
        table.add_row(r["record_id"], r["position"], served.get("model_version", "-"),
                      served.get("arm", "-"), _short(served.get("prediction")),
                      _when(served.get("scored_at")), _short(r["label"]),
                      ", ".join(r["learned_by"]) or "-")
    gone = [f"forgotten at {_when(f['at'])} UTC by {f['actor']} (certificate: access log "
            f"entry {f['log_index']})" for f in doc.get("forgotten", [])]
    print_table(table, "trained on this subject: " + (", ".join(doc["versions"]) or "none"),
                *gone)
