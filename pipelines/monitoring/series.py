"""``metrics.jsonl``: the run's figures over time, one line every ``series_interval_s``
(what ``riffle report`` draws). The driver offers every status it polls; a line is
written when the interval has passed, and the final summary is the last line.

>>> import tempfile, orjson
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "metrics.jsonl"
>>> w = SeriesWriter(path, 1.0)
>>> w.offer({"events": 10, "invalid": 1}, now=100.0)
True
>>> w.offer({"events": 20}, now=100.5), w.offer({"events": 30}, now=101.0)
(False, True)
>>> w.close()
>>> [(r["at"], r["events"], r["dead_letters"]["invalid event"]) for r in read_series(path)]
[(100.0, 10, 1), (101.0, 30, 0)]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

import orjson

__all__ = ["DEAD_LETTER_REASONS", "SeriesWriter", "read_series", "series_record"]

SERIES = "metrics.jsonl"

DEAD_LETTER_REASONS = {"invalid event": "invalid", "invalid feedback": "feedback_invalid",
                       "duplicate": "duplicates", "model error": "model_errors"}
"""A dead letter's reason, as the report names it, and the count in the status."""

_COUNTS = ("events", "feedback", "scored", "learned", "predictions_written", "dead_letters",
           "labels_pending", "labels_expired", "labels_unmatched", "labels_late")


def series_record(status: dict[str, Any], at: float) -> dict[str, Any]:
    """One line: the counts so far, the latency since the last line, the quality per arm,
    the label delay, fairness, dead letters by reason and every actor's resources."""
    quality = status.get("quality") or {}
    return {
        "at": at, **{k: status[k] for k in _COUNTS if k in status},
        "dead_letters": {name: status.get(key, 0) for name, key in DEAD_LETTER_REASONS.items()},
        "latency_ms": status.get("latency_recent_ms") or {},
        "arms": [{k: a.get(k) for k in ("arm", "version", "role", "labeled", "scored",
                                        "label_ratio", "window", "window_time", "gap",
                                        "reference")}
                 for a in quality.get("arms", [])],
        "label_delay_s": quality.get("label_delay_s", {}),
        "fairness": quality.get("fairness", {}),
        "resources": status.get("resources", {}),
        "deployment": (status.get("deployment") or {}).get("mode"),
    }


class SeriesWriter:
    """Appends a line of figures to ``path`` at most every ``interval_s`` seconds."""

    def __init__(self, path: Path, interval_s: float, *, append: bool = False) -> None:
        self._interval = interval_s
        self._file: IO[bytes] = open(path, "ab" if append else "wb")
        self._last = float("-inf")

    def offer(self, status: dict[str, Any], *, now: float | None = None,
              force: bool = False) -> bool:
        """Write ``status`` as a line if the interval has passed (or ``force``); a status
        without counts (taken mid-restart) is passed over. True if written."""
        now = time.time() if now is None else now
        if "events" not in status or (not force and now - self._last < self._interval):
            return False
        self._last = now
        self._file.write(orjson.dumps(series_record(status, now),
                                      option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        self._file.flush()
        return True

    def close(self) -> None:
        self._file.close()


def read_series(path: Path) -> list[dict[str, Any]]:
    """Every line of a ``metrics.jsonl`` (a last line cut short by a crash is left out)."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out
