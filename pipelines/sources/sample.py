"""Sample files of flat loan applications, for the file source and the benchmarks."""

from __future__ import annotations

import csv
import random
import time
from pathlib import Path

import orjson
from river.datasets import synth

__all__ = ["sample_rows", "write_sample"]


def sample_rows(n_events: int, *, seed: int = 42, n_keys: int = 10_000) -> list[dict]:
    """Agrawal loan applications as flat rows: id, key, time, features, label.

    >>> rows = sample_rows(2)
    >>> sorted(rows[0])[:4], rows[0]["record_id"]
    (['age', 'car', 'commission', 'elevel'], 'loan-42-0')
    """
    rng = random.Random(seed)
    t0 = time.time()
    return [
        {"record_id": f"loan-{seed}-{i}", "key": f"applicant-{rng.randrange(n_keys):07d}",
         "event_time": t0 + i * 0.001, **x, "label": y}
        for i, (x, y) in enumerate(synth.Agrawal(seed=seed).take(n_events))
    ]


def write_sample(path: Path, *, n_events: int, seed: int = 42, n_keys: int = 10_000) -> int:
    suffix = path.suffix.lower()
    if suffix not in {".jsonl", ".ndjson", ".csv"}:
        raise ValueError(f"{path}: the sample is written as .jsonl or .csv, not '{suffix}'")
    rows = sample_rows(n_events, seed=seed, n_keys=n_keys)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        with open(path, "wb") as f:
            f.writelines(orjson.dumps(r) + b"\n" for r in rows)
    return len(rows)
