"""``riffle report``: one self-contained HTML page of a run, for people to look at.

Runtime-free, and it prints nothing (the CLI writes the page). It draws what a run
recorded: ``metrics.jsonl`` (the figures over time, :mod:`pipelines.monitoring.series`),
``summary.json`` (or ``status.json`` while the run goes on), the registry's lifecycle
events (deployments, promotions, rollbacks, drift alarms: marked on the time plots) and
the restarts of ``supervision.jsonl``. The plots are plotly's, and plotly.js itself is
inlined from the Python package, so the page needs no network when it is viewed.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson

from pipelines.monitoring.series import DEAD_LETTER_REASONS, SERIES, read_series

__all__ = ["MARKED_EVENTS", "Marker", "build_report", "markers_of"]

MARKED_EVENTS = ("deployed", "shadowed", "canaried", "promoted", "rolled_back", "retired",
                 "drift")
"""Lifecycle events drawn on the time plots (``drift``: an alarm of a drift detector)."""

_COLOURS = {"deployed": "#2ca02c", "shadowed": "#7f7f7f", "canaried": "#17becf",
            "promoted": "#1f77b4", "rolled_back": "#ff7f0e", "retired": "#8c564b",
            "drift": "#d62728", "restart": "#9467bd"}


class Marker(dict[str, Any]):
    """An event on the time axis: ``at`` (epoch seconds), ``kind``, ``label``."""


def markers_of(registry_url: str | None, pipeline: str, supervision: Path | None
               ) -> list[Marker]:
    """The lifecycle events of ``pipeline``'s versions (from the registry, if there is
    one) and the restarts (from the supervision log), oldest first."""
    out: list[Marker] = []
    if registry_url is not None:
        from pipelines.registry import Registry

        with Registry(registry_url, create=False) as reg:
            for version in reg.versions(pipeline):
                for e in reg.events(version.id):
                    if e.kind in MARKED_EVENTS:
                        out.append(Marker(at=e.at.timestamp(), kind=e.kind,
                                          label=f"{e.kind} {version.id}"))
    if supervision is not None and supervision.exists():
        for line in supervision.read_bytes().splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if entry.get("kind") in ("restart", "drift"):
                out.append(Marker(at=entry["at"], kind=entry["kind"],
                                  label=f"{entry['kind']} {entry.get('actor', '')}"))
    return sorted(out, key=lambda m: m["at"])


def _time(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()


def build_report(folder: Path, *, markers: list[Marker], title: str) -> str:
    """The page for the run whose outputs are in ``folder``."""
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    series = read_series(folder / SERIES) if (folder / SERIES).exists() else []
    summary = _summary(folder)
    times = [_time(r["at"]) for r in series]
    plots: list[tuple[str, str, Any]] = []

    def plot(name: str, caption: str, fig: Any, *, marked: bool = True) -> None:
        fig.update_layout(title=name, height=340, margin={"l": 60, "r": 20, "t": 50, "b": 40},
                          template="plotly_white", legend={"orientation": "h", "y": -0.2})
        if marked and series:
            _mark(fig, markers, series[0]["at"], series[-1]["at"])
        plots.append((name, caption, fig))

    quality = go.Figure()
    gap = go.Figure()
    metric = "mae" if summary.get("task") == "regression" else "accuracy"
    for (arm, version), rows in _arms(series).items():
        name = f"{arm} {version}"
        quality.add_trace(go.Scatter(x=[times[i] for i, _ in rows], name=f"{name} (by count)",
                                     y=[a["window"].get(metric) for _, a in rows]))
        quality.add_trace(go.Scatter(x=[times[i] for i, _ in rows], name=f"{name} (by time)",
                                     y=[a["window_time"].get(metric) for _, a in rows],
                                     line={"dash": "dot"}))
        gap.add_trace(go.Scatter(x=[times[i] for i, _ in rows], name=name,
                                 y=[(a.get("gap") or {}).get(metric) for _, a in rows]))
    plot(f"Serving {metric} per version and arm", "Sliding windows of the labels as they "
         "arrive (by count and by time); vertical lines: deployments, promotions, drift "
         "alarms, restarts.", quality)
    plot(f"Gap to the registered {metric}", "Serving (count window) minus the metrics the "
         "version was registered with.", gap)
    throughput = go.Figure(go.Scatter(x=times[1:], y=_rates(series, "events"),
                                      name="events/s"))
    plot("Throughput", "Events read per second between two records.", throughput)
    latency = go.Figure()
    for q in ("p50", "p99"):
        latency.add_trace(go.Scatter(x=times, name=q,
                                     y=[r.get("latency_ms", {}).get(q) for r in series]))
    latency.update_yaxes(title="ms")
    plot("End-to-end latency", "Read to written, per interval (the sink's sketch).", latency)
    delay = go.Figure()
    for q in ("p50", "p99"):
        delay.add_trace(go.Scatter(x=times, name=f"delay {q}",
                                   y=[r.get("label_delay_s", {}).get(q) for r in series]))
    for (arm, version), rows in _arms(series).items():
        delay.add_trace(go.Scatter(x=[times[i] for i, _ in rows], yaxis="y2",
                                   name=f"arrived {arm} {version}",
                                   y=[a.get("label_ratio") for _, a in rows]))
    delay.update_layout(yaxis={"title": "s"}, yaxis2={"title": "labeled / scored",
                                                      "overlaying": "y", "side": "right"})
    plot("Label delay and arrival", "Seconds from a record's arrival to its label's, and "
         "the share of scored records whose label has arrived.", delay)
    dead = ({name: summary.get(key, 0) for name, key in DEAD_LETTER_REASONS.items()}
            if "events" in summary else series[-1]["dead_letters"] if series else {})
    plot("Dead letters by reason", "Counts at the end of the run (or now).",
         go.Figure(go.Bar(x=list(dead), y=list(dead.values()))), marked=False)
    fairness = (summary.get("quality") or {}).get("fairness", {})
    groups = go.Figure()
    gaps = go.Figure()
    for column, fig in fairness.items():
        names = list(fig["groups"])
        for k in ("positive_rate", "accuracy"):
            groups.add_trace(go.Bar(x=[f"{column}={g}" for g in names], name=k,
                                    y=[fig["groups"][g][k] for g in names]))
            gaps.add_trace(go.Scatter(x=times, name=f"{column} {k} gap",
                                      y=[r.get("fairness", {}).get(column, {})
                                         .get("gap", {}).get(k) for r in series]))
    plot("Fairness per group", "Positive rate and accuracy of the labeled served "
         "predictions per group.", groups, marked=False)
    plot("Fairness gaps", "Largest minus smallest over the groups.", gaps)
    cpu, rss = go.Figure(), go.Figure()
    for actor in _actors(series):
        cpu.add_trace(go.Scatter(x=times[1:], name=actor,
                                 y=_rates(series, _cpu_of(actor), scale=100)))
        rss.add_trace(go.Scatter(x=times, name=actor,
                                 y=[r.get("resources", {}).get(actor, {}).get("rss_mib")
                                    for r in series]))
    cpu.update_yaxes(title="% of a core")
    rss.update_yaxes(title="MiB")
    plot("CPU per actor", "Each actor's process, as it reports itself.", cpu)
    plot("Memory per actor", "Resident set of each actor's process.", rss)
    body = []
    for i, (_, caption, fig) in enumerate(plots):
        div = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"plot-{i}",
                          config={"displaylogo": False, "responsive": True})
        body.append(f'<section class="plot"><p>{html.escape(caption)}</p>{div}</section>')
    return _PAGE.format(title=html.escape(title), plotly=get_plotlyjs(),
                        table=_table(summary), plots="\n".join(body),
                        n=len(series))


def _summary(folder: Path) -> dict[str, Any]:
    for name in ("summary.json", "status.json"):
        path = folder / name
        if path.exists():
            data: dict[str, Any] = orjson.loads(path.read_bytes())
            return data
    return {}


def _arms(series: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[int, Any]]]:
    out: dict[tuple[str, str], list[tuple[int, Any]]] = {}
    for i, r in enumerate(series):
        for a in r.get("arms", []):
            out.setdefault((a["arm"], a["version"]), []).append((i, a))
    return out


def _actors(series: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for r in series:
        names.update(dict.fromkeys(r.get("resources", {})))
    return list(names)


def _cpu_of(actor: str) -> Callable[[dict[str, Any]], float | None]:
    def cpu(record: dict[str, Any]) -> float | None:
        figures = record.get("resources", {}).get(actor)
        return figures.get("cpu_s") if figures else None
    return cpu


def _rates(series: list[dict[str, Any]], field: str | Callable[[dict[str, Any]], Any],
           scale: float = 1.0) -> list[float | None]:
    """Per interval, the change of a count per second (None where it is missing, or it
    went back: an actor restarted)."""
    get = field if callable(field) else (lambda r: r.get(field))
    out: list[float | None] = []
    for prev, cur in pairwise(series):
        a, b, span = get(prev), get(cur), cur["at"] - prev["at"]
        out.append(scale * (b - a) / span if a is not None and b is not None and b >= a
                   and span > 0 else None)
    return out


def _mark(fig: Any, markers: list[Marker], start: float, end: float) -> None:
    for m in markers:
        if not start - 1 <= m["at"] <= end + 1:
            continue
        x = _time(m["at"])
        colour = _COLOURS.get(m["kind"], "#000")
        fig.add_shape(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper",
                      line={"color": colour, "width": 1, "dash": "dash"})
        fig.add_annotation(x=x, y=1, yref="paper", text=m["kind"], showarrow=False,
                           hovertext=m["label"], font={"color": colour, "size": 10},
                           yanchor="bottom")


_ROWS = ("events", "scored", "learned", "dead_letters", "duplicates", "labels_expired",
         "labels_unmatched", "events_per_s", "elapsed_s")


def _table(summary: dict[str, Any]) -> str:
    rows = [(k, f"{summary[k]:,}") for k in _ROWS if k in summary]
    lat = summary.get("latency_ms") or {}
    if lat.get("p50") is not None:
        rows.append(("latency p50 / p99", f"{lat['p50']:.1f} ms / {lat['p99']:.1f} ms"))
    rows += [(k, f"{v:.4f}") for k, v in (summary.get("metrics") or {}).items()]
    windows = summary.get("windows") or {}
    if windows.get("values"):
        rows.append((f"{windows['metric']} per {windows['size']:,} labels",
                     " ".join(f"{v:.3f}" for v in windows["values"])))
    for a in (summary.get("quality") or {}).get("arms", []):
        figures = " ".join(f"{k}={v:.4f}" for k, v in a["window"].items() if k != "n")
        gap = " ".join(f"{k}={v:+.4f}" for k, v in (a.get("gap") or {}).items())
        rows.append((f"arm {a['arm']} {a['version']}",
                     f"{figures} (last {a['window']['n']:,} labels); gap to "
                     f"{a.get('reference')}: {gap or '-'}; labels arrived "
                     f"{(a.get('label_ratio') or 0):.1%}"))
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in rows)
    return f'<table class="summary">{cells}</table>'


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table.summary {{ border-collapse: collapse; margin-bottom: 1em; }}
table.summary th, table.summary td {{ border: 1px solid #ccc; padding: 3px 8px;
  text-align: left; font-size: 13px; }}
.plots {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr));
  gap: 12px; }}
section.plot p {{ margin: 0; font-size: 12px; color: #555; }}
</style>
<script>{plotly}</script></head>
<body><h1>{title}</h1>
<p>{n} records of the run's figures over time.</p>
{table}
<div class="plots">
{plots}
</div></body></html>
"""
