"""Running a pipeline on Ray: the driver side of ``riffle run``.

The driver only starts the Supervisor, relays progress and stop requests, and writes
the summary; all records flow between the actors.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import ray

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from pipelines.sources import check_source

__all__ = ["ensure_ray", "run_pipeline"]


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Join the Ray named by ``RAY_ADDRESS`` or start a local one; True if started here."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 2
    ray.init(**kwargs)
    return True


def run_pipeline(
    config: PipelineConfig,
    *,
    out_dir: Path | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_started: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Run ``config`` until its source ends or ``stop`` is set; returns the summary.

    Needs Ray (see :func:`ensure_ray`). Writes ``predictions.jsonl``,
    ``dead_letters.jsonl`` and ``summary.json`` under ``out_dir``. ``on_started`` gets
    the Supervisor's handle once every actor answers (e.g. to scale a Kafka group).
    """
    from actors.supervisor import Supervisor

    check_source(config)
    out = Path(out_dir or config.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor.remote(config, str(out))
    try:
        ray.get(supervisor.start.remote())
        done = supervisor.wait.remote()
        if on_started is not None:
            on_started(supervisor)
        stopping = False
        interval = config.runtime.progress_interval_s
        while not ray.wait([done], timeout=interval)[0]:
            if stop is not None and stop.is_set() and not stopping:
                stopping = True
                ray.get(supervisor.stop.remote())
            if on_progress is not None:
                on_progress(ray.get(supervisor.status.remote()))
        try:
            summary: dict[str, Any] = ray.get(done)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, PipelineError) else None
            raise cause or PipelineError(str(e).splitlines()[-1]) from None
    finally:
        ray.kill(supervisor, no_restart=True)
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary
