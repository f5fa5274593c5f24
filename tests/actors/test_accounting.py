"""Every input line ends up exactly once: in the predictions or in the dead letters."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from river.datasets import synth

from actors.driver import run_pipeline
from tests.helpers import read_jsonl

FEATURES = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]


def _bad_line(i: int, kind: str, good: dict[str, Any]) -> str:
    rid = f"bad-{i}"
    row = {**good, "record_id": rid}
    if kind == "bad_json":
        return orjson.dumps(row).decode()[:-7]  # truncated mid-value
    if kind == "missing_key":
        row.pop("key")
        return orjson.dumps(row).decode()
    if kind == "wrong_type":
        row["age"] = "forty"
        return orjson.dumps(row).decode()
    if kind == "nan":
        return orjson.dumps(row).decode().replace(f'"age":{row["age"]}', '"age":NaN')
    if kind == "infinite":
        return orjson.dumps(row).decode().replace(f'"age":{row["age"]}', '"age":1e999')
    if kind == "huge":
        row["loan"] = 1e300
        return orjson.dumps(row).decode()
    if kind == "extra_field":
        row["favourite_colour"] = "teal"
        return orjson.dumps(row).decode()
    if kind == "id_not_string":
        row["record_id"] = [rid]
        return orjson.dumps(row).decode()
    if kind == "empty":
        return ""
    raise AssertionError(kind)


BAD_KINDS = ["bad_json", "missing_key", "wrong_type", "nan", "infinite", "huge", "extra_field",
             "id_not_string", "empty"]


def test_pipeline_8_partitions_2x2_actors_5pct_malformed_every_line_accounted_once(
    make_config: Any, tmp_path: Path
) -> None:
    rnd = random.Random(99)
    lines: list[str] = []
    good_ids: list[str] = []
    bad: list[tuple[str, str]] = []
    n_dup = 0
    for i, (x, y) in enumerate(synth.Agrawal(seed=5).take(6000)):
        row = {"record_id": f"r{i}", "key": f"applicant-{rnd.randrange(900)}", **x, "label": y}
        roll = rnd.random()
        if roll < 0.05:
            kind = BAD_KINDS[len(bad) % len(BAD_KINDS)]
            lines.append(_bad_line(i, kind, row))
            bad.append((f"bad-{i}", kind))
        elif roll < 0.06 and good_ids:
            dup = good_ids[rnd.randrange(len(good_ids))]  # a replayed record, same key
            lines.append(next(ln for ln in reversed(lines) if f'"record_id":"{dup}"' in ln))
            n_dup += 1
        else:
            lines.append(orjson.dumps(row).decode())
            good_ids.append(row["record_id"])
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = make_config(
        source={"kind": "file", "path": str(path), "partitions": 8, "label_column": "label",
                "features": FEATURES, "label_delay_events": 20, "time_column": None},
        ingest={"n_actors": 2, "batch_size": 128}, scoring={"n_actors": 2})

    summary = run_pipeline(config)

    predictions = read_jsonl(config.out_dir / "predictions.jsonl")
    all_dead = read_jsonl(config.out_dir / "dead_letters.jsonl")
    dead = [d for d in all_dead if d["kind"] == "event"]
    predicted = Counter(p["record_id"] for p in predictions)
    assert len(predictions) + len(dead) == len(lines)
    assert max(predicted.values()) == 1, "a record was scored twice"
    assert set(predicted) == set(good_ids)
    # Each bad line is in exactly one dead letter, found by its id in the raw input.
    for rid, kind in bad:
        if kind == "empty":
            continue
        holders = [d for d in dead if f'"{rid}"' in d["raw"]]
        assert len(holders) == 1, (rid, kind, holders)
        assert holders[0]["error"], (rid, kind)
    reasons = Counter(d["error"] for d in dead)
    assert reasons["empty line"] == sum(k == "empty" for _, k in bad)
    assert sum("duplicate record_id" in e for e in reasons.elements()) == n_dup
    assert summary["events"] == len(lines)
    assert summary["duplicates"] == n_dup
    assert summary["invalid"] + summary["duplicates"] == len(dead) == len(bad) + n_dup
    # Labels of rows that had no valid key cannot be routed: dead letters of kind feedback.
    assert summary["dead_letters"] == len(all_dead)
    assert summary["feedback_invalid"] == len(all_dead) - len(dead)
    assert summary["scored"] == len(good_ids)
    assert {"position", "source", "raw", "error", "record_id"} <= set(dead[0])
