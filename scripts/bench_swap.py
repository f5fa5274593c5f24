#!/usr/bin/env python
"""The cost of hot model swaps: the scoring pause each causes, and throughput with swaps.

Same run, side by side: the pipeline replaying a file with no swap (the baseline), then
the same replay while a thread sends a swap through the control stream every
``--every-s`` seconds (a deploy of a registered River version, then a rollback, in
turn). Each swap's pause is what a scorer spent applying it instead of scoring (the
``pause_ms_max`` the control log records: the longest over the scorers).

    python scripts/bench_swap.py                # the README's figures
    python scripts/bench_swap.py --events 200000 --every-s 0.5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actors.driver import run_pipeline  # noqa: E402
from pipelines.config import PipelineConfig  # noqa: E402
from pipelines.control import FileControl  # noqa: E402
from pipelines.protocol import Command  # noqa: E402
from pipelines.registry import Registry  # noqa: E402
from pipelines.sources.sample import write_sample  # noqa: E402


def _config(tmp: Path, name: str, data: Path, *, checkpoints: bool) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "swap", "source": {"kind": "file", "path": str(data), "partitions": 2,
                                   "label_column": "label", "label_delay_events": 50},
        "ingest": {"n_actors": 1, "num_cpus": 0},
        "scoring": {"n_actors": 2, "num_cpus": 0},
        "output": {"out_dir": str(tmp / name)},
        "registry": {"url": f"sqlite:///{tmp / 'registry.db'}"},
        "checkpoint": {"enabled": checkpoints, "interval_s": None},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--every-s", type=float, default=1.0)
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tmp = Path(tempfile.mkdtemp(prefix="riffle-bench-swap-"))
    data = tmp / "events.jsonl"
    write_sample(data, n_events=args.events, seed=7)
    try:
        # A registered version to swap to: the final checkpoint of a first pass.
        run_pipeline(_config(tmp, "train", data, checkpoints=True))
        with Registry(f"sqlite:///{tmp / 'registry.db'}") as reg:
            version = reg.versions("swap")[-1].id

        base = run_pipeline(_config(tmp, "baseline", data, checkpoints=False))

        cfg = _config(tmp, "swaps", data, checkpoints=False)
        control = FileControl(cfg.out_dir / "control.jsonl")
        stop = threading.Event()

        def swaps(_: Any) -> None:
            def loop() -> None:
                n = 0
                while not stop.wait(args.every_s):
                    op = {"op": "deploy", "version": version} if n % 2 == 0 else \
                        {"op": "rollback"}
                    control.send(Command(pipeline="swap", actor="bench", **op).to_json())
                    n += 1
            threading.Thread(target=loop, daemon=True).start()

        swapped = run_pipeline(cfg, on_started=swaps)
        stop.set()
        time.sleep(0.1)
        with Registry(f"sqlite:///{tmp / 'registry.db'}") as reg:
            log = [c for c in reg.commands("swap") if c.status == "applied"]
        pauses = [c.details["pause_ms_max"] for c in log]
        print(f"events {args.events:,}, 1 ingest + 2 scorers, file replay, "
              f"a swap every {args.every_s} s")
        print(f"  no swaps        {base['events_per_s']:>9,.0f} events/s")
        print(f"  with swaps      {swapped['events_per_s']:>9,.0f} events/s "
              f"({len(log)} swaps applied: deploy {version} / rollback in turn)")
        if pauses:
            print(f"  pause per swap  mean {statistics.mean(pauses):.2f} ms, "
                  f"p50 {statistics.median(pauses):.2f} ms, max {max(pauses):.2f} ms")
        deploys = [c.details["pause_ms_max"] for c in log if c.op == "deploy"]
        rollbacks = [c.details["pause_ms_max"] for c in log if c.op == "rollback"]
        if deploys and rollbacks:
            print(f"  deploy (loads the checkpoint part) max {max(deploys):.2f} ms; "
                  f"rollback (warm version) max {max(rollbacks):.2f} ms")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
