"""Running a pipeline on Ray: the driver side of ``riffle run``.

The driver only starts the Supervisor, relays progress and stop requests, and writes
the summary; all records flow between the actors.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import ray

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError
from pipelines.sources import check_source

__all__ = ["ensure_ray", "read_status", "run_pipeline", "write_status"]


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
    resume: bool = False,
) -> dict[str, Any]:
    """Run ``config`` until its source ends or ``stop`` is set; returns the summary.

    Needs Ray (see :func:`ensure_ray`). Writes ``predictions.jsonl``,
    ``dead_letters.jsonl``, ``supervision.jsonl``, checkpoints (unless the config puts
    them elsewhere), ``status.json`` while running and ``summary.json`` at the end under
    ``out_dir``. ``on_started`` gets the Supervisor's handle once every actor answers
    (e.g. to scale a Kafka group). ``resume`` starts from the last committed checkpoint.
    """
    from actors.supervisor import Supervisor

    check_source(config)
    out = Path(out_dir or config.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = config.checkpoint.store or str(out / "checkpoints")
    if not resume:
        (out / "supervision.jsonl").unlink(missing_ok=True)
    supervisor = Supervisor.remote(config, str(out), store)
    try:
        _get(supervisor.start.remote(resume))
        done = supervisor.wait.remote()
        if on_started is not None:
            on_started(supervisor)
        stopping = False
        interval = config.runtime.progress_interval_s
        # Polled every interval for as long as the pipeline runs: no task events (Ray's GCS
        # would keep a record of each poll; see actors.ingest._without_task_events).
        poll_status = supervisor.status.options(enable_task_events=False)
        while not ray.wait([done], timeout=interval)[0]:
            if stop is not None and stop.is_set() and not stopping:
                stopping = True
                ray.get(supervisor.stop.remote())
            status = ray.get(poll_status.remote())
            write_status(out, status)
            if on_progress is not None:
                on_progress(status)
        summary: dict[str, Any] = _get(done)
    finally:
        ray.kill(supervisor, no_restart=True)
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


def _get(ref: ray.ObjectRef) -> Any:
    """``ray.get``, with a supervisor's PipelineError raised as itself (one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, PipelineError) else None
        raise cause or PipelineError(str(e).strip().splitlines()[-1]) from None


def write_status(out: Path, status: dict[str, Any]) -> None:
    """``status.json`` in ``out``, replaced whole (readers never see half of it)."""
    tmp = out / ".status.json.tmp"
    tmp.write_bytes(orjson.dumps({**status, "written_at": time.time()},
                                 option=orjson.OPT_INDENT_2))
    os.replace(tmp, out / "status.json")


def read_status(out: Path) -> dict[str, Any]:
    """The last status of the pipeline writing to ``out`` (``riffle status``)."""
    path = out / "status.json"
    final = out / "summary.json"
    for candidate in (final, path) if final.exists() and (
            not path.exists() or final.stat().st_mtime >= path.stat().st_mtime) else (path,):
        try:
            data: dict[str, Any] = orjson.loads(candidate.read_bytes())
        except FileNotFoundError:
            continue
        data["finished"] = candidate == final
        return data
    raise PipelineError(f"{out}: no status.json or summary.json (has the pipeline run?)")
