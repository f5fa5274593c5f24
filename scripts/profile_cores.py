#!/usr/bin/env python
"""Where riffle's cores spend an event, beside the minimal loop and River alone.

CPU microseconds per event (``time.process_time``), on one JSONL file of loan applications
(``riffle sample``), StandardScaler | LogisticRegression, each label 20 events later:

  minimal loop     orjson line by line, predict_proba_one, a JSON line out, learn_one 20 later
  River alone      the same predict and learn on features already parsed (the floor of both)
  riffle, by stage the cores' loop of scripts/bench.py timed stage by stage: the file source
                   (read, split, partition, delayed labels), validation + dedupe + routing,
                   the hop to a scorer (encode + decode, which the pipeline pays between actors
                   and the one-process loop does not), scoring (model + bookkeeping), the sink;
                   and the scorer's bookkeeping alone (the same batches on a model that does
                   nothing)
  the audit trail  the same batches on a scorer that keeps the audit trail and training log,
                   and the writing of their Parquet segments (in the pipeline, a scorer's
                   writer thread): what they add to an event
  reason codes     the same batches on scorers with scoring.explain.top_k = 3: the score and
                   its reasons from one scaling (riffle's way), and scored first, then
                   explained in a second pass (the way before): what each adds to an event

    python scripts/profile_cores.py [--events 200000] [--repeats 3]

Each figure is the median of the repeats, taken in one process, one after another.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.allocator import tune_gc  # noqa: E402
from pipelines.audit.trail import AuditStore, SegmentWriter  # noqa: E402
from pipelines.config import ExplainConfig, PipelineConfig  # noqa: E402
from pipelines.ingest import IngestCore  # noqa: E402
from pipelines.models import build_model  # noqa: E402
from pipelines.protocol import Batch, decode_batch, encode_batch  # noqa: E402
from pipelines.scoring import ScorerCore  # noqa: E402
from pipelines.sinks import FileSink  # noqa: E402
from pipelines.sources import open_reader  # noqa: E402
from pipelines.sources.sample import write_sample  # noqa: E402

DELAY = 20
clock = time.process_time


def minimal(path: Path, out: Path) -> float:
    from river import compose, linear_model, preprocessing

    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    held: deque[tuple[dict[str, Any], Any]] = deque()
    n = 0
    t0 = clock()
    with open(path, "rb") as src, open(out, "wb") as dst:
        for line in src:
            row = orjson.loads(line)
            label, rid, key = row.pop("label"), row.pop("record_id"), row.pop("key")
            row.pop("event_time", None)
            proba = model.predict_proba_one(row)
            dst.write(orjson.dumps({"record_id": rid, "key": key, "score": proba},
                                   option=orjson.OPT_NON_STR_KEYS) + b"\n")
            held.append((row, label))
            n += 1
            if len(held) > DELAY:
                model.learn_one(*held.popleft())
    return (clock() - t0) / n * 1e6


def river_alone(rows: list[tuple[dict[str, Any], Any]]) -> float:
    from river import compose, linear_model, preprocessing

    model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
    t0 = clock()
    for i, (x, _) in enumerate(rows):
        model.predict_proba_one(x)
        if i >= DELAY:
            model.learn_one(*rows[i - DELAY])
    return (clock() - t0) / len(rows) * 1e6


class _Null:
    """A model that does nothing: what remains is the scorer's own bookkeeping."""

    def predict_proba_one(self, x: dict[str, Any]) -> dict[bool, float]:
        return {False: 0.4, True: 0.6}

    def learn_one(self, x: dict[str, Any], y: Any) -> None:
        pass


def riffle_stages(config: PipelineConfig, out: Path) -> dict[str, float]:
    reader = open_reader(config.source, [0])  # type: ignore[arg-type]
    core = IngestCore(config, task="binary")
    scorer, null = ScorerCore(config.scoring, name="s"), ScorerCore(config.scoring, name="n")
    null.arms[0].model = _Null()
    audited = ScorerCore(config.scoring, name="a", audit=True)
    assert audited.audit is not None
    writer = SegmentWriter(AuditStore(str(out) + "-audit"), scorer="a", generation=0,
                           rows_per_segment=config.audit.segment_rows)
    explaining = config.scoring.model_copy(update={"explain": ExplainConfig(top_k=3)})
    reasons = ScorerCore(explaining, name="r")
    apart = ScorerCore(explaining, name="r2")
    apart._explained = None  # scored, then explained in a second pass over the features
    sink = FileSink(out)
    tune_gc()
    spent = dict.fromkeys(("source", "validate, dedupe, route", "hop (encode + decode)",
                           "score and learn", "sink", "scorer bookkeeping",
                           "score and learn, audit on", "audit segments",
                           "score and learn, reasons", "score and learn, reasons apart"), 0.0)
    seq = 0
    while not reader.exhausted:
        t0 = clock()
        messages = reader.read(config.ingest.batch_size)
        t1 = clock()
        if not messages:
            continue
        routed, _ = core.route(messages)
        t2 = clock()
        batch = decode_batch(encode_batch(Batch(seq, routed[0])))
        t3 = clock()
        written = scorer.process(batch)
        t4 = clock()
        sink.write(written)
        t5 = clock()
        null.process(batch)
        t6 = clock()
        audited.process(batch)
        t7 = clock()
        writer.absorb(audited.audit, None)  # process_time counts the writer thread's CPU too
        if reader.exhausted:
            writer.barrier(audited.audit, None, seq)
        t8 = clock()
        reasons.process(batch)
        t9 = clock()
        apart.process(batch)
        t10 = clock()
        seq += 1
        for name, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5,
                                    t7 - t6, t8 - t7, t9 - t8, t10 - t9), strict=True):
            spent[name] += dt
    sink.close()
    writer.close()
    n = core.counts["events"]
    return {k: v / n * 1e6 for k, v in spent.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="riffle-profile-") as tmp:
        work = Path(tmp)
        data = work / "loans.jsonl"
        write_sample(data, n_events=args.events, seed=42)
        config = PipelineConfig.model_validate({
            "name": "profile", "source": {"kind": "file", "path": str(data), "partitions": 1,
                                          "label_column": "label", "label_delay_events": DELAY},
            "scoring": {"n_actors": 1}})
        model = build_model(config.scoring.model)
        del model
        rows = []
        with open(data, "rb") as f:
            for line in f:
                row = orjson.loads(line)
                label = row.pop("label")
                for k in ("record_id", "key", "event_time"):
                    row.pop(k, None)
                rows.append((row, label))
        runs: dict[str, list[float]] = {}
        for _ in range(args.repeats):
            runs.setdefault("minimal loop", []).append(minimal(data, work / "min.jsonl"))
            runs.setdefault("River alone", []).append(river_alone(rows))
            stages = riffle_stages(config, work / "riffle")
            for name, us in stages.items():
                runs.setdefault(name, []).append(us)
    med = {k: statistics.median(v) for k, v in runs.items()}
    cores = sum(med[k] for k in ("source", "validate, dedupe, route", "score and learn", "sink"))
    print(f"{args.events:,} events, CPU us per event (median of {args.repeats})\n")
    print("| what | us/event | vs minimal loop |\n|---|---:|---:|")
    for name in ("minimal loop", "River alone"):
        print(f"| {name} | {med[name]:.1f} | {med[name] / med['minimal loop']:.2f}x |")
    print(f"| riffle's cores, one process (the four stages below) | {cores:.1f} | "
          f"{cores / med['minimal loop']:.2f}x |")
    for name in ("source", "validate, dedupe, route", "score and learn", "sink"):
        print(f"| - {name} | {med[name]:.1f} | |")
    print(f"| -- of scoring, the scorer's bookkeeping (a model that does nothing) | "
          f"{med['scorer bookkeeping']:.1f} | |")
    print(f"| the hop to a scorer (encode + decode; pipeline only) | "
          f"{med['hop (encode + decode)']:.1f} | |")
    rows = med["score and learn, audit on"] - med["score and learn"]
    print(f"| audit trail + training log: rows kept while scoring | {rows:.1f} | |")
    print(f"| audit trail + training log: Parquet segments written | "
          f"{med['audit segments']:.1f} | |")
    for name, what in (("score and learn, reasons", "one pass with the score"),
                       ("score and learn, reasons apart", "scored, then explained")):
        print(f"| reason codes (top 3), {what} | {med[name] - med['score and learn']:.1f} | |")


if __name__ == "__main__":
    main()
