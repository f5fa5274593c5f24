"""The run summary: what ``summary.json`` holds, from the actors' stats."""

from __future__ import annotations

from typing import Any

from pipelines.protocol import Deployment
from pipelines.scoring import merge_metrics

__all__ = ["arms_summary", "build_summary", "merge_windows"]

_INGEST = ("events", "feedback", "duplicates", "invalid", "feedback_invalid")
_SCORER = ("scored", "learned", "model_errors", "labels_expired", "labels_unmatched",
           "labels_late", "labels_duplicate", "labels_early", "labels_pending")


def merge_windows(scorers: list[dict[str, Any]], task: str) -> list[float]:
    """Per window of labeled events, the accuracy (or MAE) over all scorers.

    >>> merge_windows([{"windows": [[2, 2.0], [2, 0.0]]}, {"windows": [[2, 1.0]]}], "binary")
    [0.75, 0.0]
    """
    n = max((len(s["windows"]) for s in scorers), default=0)
    out = []
    for i in range(n):
        count = sum(s["windows"][i][0] for s in scorers if i < len(s["windows"]))
        total = sum(s["windows"][i][1] for s in scorers if i < len(s["windows"]))
        out.append(total / count if count else 0.0)
    return out


def build_summary(*, name: str, ingest: list[dict[str, Any]], scorers: list[dict[str, Any]],
                  sink: dict[str, Any], wall_s: float, metrics_window: int,
                  stopped: bool) -> dict[str, Any]:
    """The fields of ``summary.json``; counts are sums over the actors of each role."""
    summary: dict[str, Any] = {"pipeline": name}
    for k in _INGEST:
        summary[k] = sum(s.get(k, 0) for s in ingest)
    for k in _SCORER:
        summary[k] = sum(s.get(k, 0) for s in scorers)
    # A label still held for a record that never came is unmatched when the run ends.
    summary["labels_unmatched"] += sum(s.get("labels_held_early", 0) for s in scorers)
    summary["dead_letters"] = sink.get("dead_letters_written", 0)
    summary["predictions_written"] = sink.get("predictions_written", 0)
    started = [s["first_read_at"] for s in ingest if s.get("first_read_at")]
    finished = [s["last_ack_at"] for s in ingest if s.get("last_ack_at")]
    active_s = (max(finished) - min(started)) if started and finished else wall_s
    summary["elapsed_s"] = round(active_s, 3)
    summary["wall_s"] = round(wall_s, 3)
    summary["events_per_s"] = round(summary["events"] / active_s, 1) if active_s > 0 else 0.0
    summary["latency_ms"] = sink.get("latency_ms", {})
    task = scorers[0]["task"] if scorers else "binary"
    summary["task"] = task
    summary["metrics"] = merge_metrics(scorers)
    window_name = "mae" if task == "regression" else "accuracy"
    summary["windows"] = {"size": metrics_window, "metric": window_name,
                          "values": merge_windows(scorers, task)}
    positions: dict[str, int] = {}
    for s in ingest:  # a partition several actors committed (after a rebalance): the furthest
        for name, offset in s.get("committed", {}).items():
            positions[name] = max(offset, positions.get(name, 0))
    summary["positions"] = positions
    summary["stopped_early"] = stopped
    return summary


def arms_summary(scorers: list[dict[str, Any]], deployment: Deployment, *, n_applied: int,
                 n_rejected: int) -> dict[str, Any]:
    """The deployment and, per arm over every scorer, its volume, quality and latency
    (quality weighted by labels, latency by records scored).

    >>> from pipelines.protocol import Deployment
    >>> arm = {"name": "live", "version": "v0", "role": "live", "weight": 1.0,
    ...        "latency_us": {"mean": 10.0, "max": 40.0}}
    >>> s = arms_summary([{"arms": [{**arm, "scored": 3, "labeled": 1, "errors": 0,
    ...                              "metrics": {"accuracy": 1.0}}]},
    ...                   {"arms": [{**arm, "scored": 1, "labeled": 3, "errors": 0,
    ...                              "metrics": {"accuracy": 0.0},
    ...                              "latency_us": {"mean": 50.0, "max": 50.0}}]}],
    ...                  Deployment.single("v0"), n_applied=0, n_rejected=0)
    >>> live = s["arms"]["live"]
    >>> live["scored"], live["metrics"], live["latency_us_mean"], live["latency_us_max"]
    (4, {'accuracy': 0.25}, 20.0, 50.0)
    """
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
    return {"mode": deployment.mode, "arms": arms, "previous": deployment.previous,
            "commands_applied": n_applied, "commands_rejected": n_rejected}
