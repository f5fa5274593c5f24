"""Running a pipeline on Ray: the driver side of ``riffle run`` (``ray.init``, run,
shutdown).

The driver only starts the Supervisor, relays progress and stop requests, and writes
the summary; all records flow between the actors. It is the one module outside the
actor shells that starts or stops Ray (``pipelines.training`` joins one to read history).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError, last_line, named_line
from pipelines.monitoring.series import SERIES, SeriesWriter
from pipelines.sources import check_source
from pipelines.status import read_status, write_status

if TYPE_CHECKING:
    from pipelines.models import Task

__all__ = ["ensure_ray", "model_task", "read_status", "run_pipeline", "shutdown_ray",
           "write_status"]

log = logging.getLogger(__name__)


# Ray (>= 2.59) warns on every local ray.init that it turned token authentication on
# (and wrote ~/.ray/auth_token): useful once, noise on every run. The README's operations
# section says what it means for `ray job submit`; Ray's own errors still show.
_RAY_AUTH_LOGGER = "ray._private.authentication"


INLINE_BYTES = 1024 * 1024
"""Ray's ``max_direct_call_object_size`` for a Ray riffle starts: what a sink batch of
up to ~2,000 predictions needs to go from actor to actor without the object store."""


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Join the Ray named by ``RAY_ADDRESS`` or start a local one; True if started here."""
    if ray.is_initialized():
        return False
    logging.getLogger(_RAY_AUTH_LOGGER).setLevel(logging.ERROR)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 2
        # A local Ray starts its workers at nice 15 (so that its daemons keep the CPU); here
        # the workers *are* the pipeline, and at 15 a Kafka feed or broker on the same cores
        # starved them (produce-to-prediction p50 4.7 s at 8,195 events/s, against 70 ms at
        # 0). `ray job submit` runs job workers at 0 already.
        os.environ.setdefault("RAY_worker_niceness", "0")
        # A result over Ray's inline limit (100 KiB) goes through the object store: a
        # scorer's output of ~250 predictions with reason codes (~107 KB) did, and each
        # such object cost the raylet ~1.2 ms of CPU (1.1 s against 0.1 s on 200k events;
        # 26.6k against 30.8k events/s). Batches of this size travel inline.
        os.environ.setdefault("RAY_max_direct_call_object_size", str(INLINE_BYTES))
    ray.init(**kwargs)
    return True


def model_task(config: PipelineConfig) -> Future[Task]:
    """What the pipeline's model predicts, worked out in a thread: building the model
    imports River's modules (~1 s), which overlaps with ``ray.init`` instead of delaying
    the Supervisor's start. A bad model spec raises from ``result()``."""
    def work() -> Task:
        from pipelines.models import build_model, task_of  # River: in this thread

        return task_of(build_model(config.scoring.model))

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="riffle-model")
    future = pool.submit(work)
    pool.shutdown(wait=False)
    return future


def shutdown_ray() -> None:
    """Stop the Ray this process started (:func:`ensure_ray` returned True)."""
    ray.shutdown()


def run_pipeline(
    config: PipelineConfig,
    *,
    out_dir: Path | None = None,
    stop: threading.Event | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    on_started: Callable[[Any], None] | None = None,
    resume: bool = False,
    on_notice: Callable[[str], None] | None = None,
    task: Task | None = None,
) -> dict[str, Any]:
    """Run ``config`` until its source ends or ``stop`` is set; returns the summary.

    Needs Ray (see :func:`ensure_ray`). Writes ``predictions.jsonl``,
    ``dead_letters.jsonl``, ``supervision.jsonl``, checkpoints (unless the config puts
    them elsewhere), ``status.json`` while running and ``summary.json`` at the end under
    ``out_dir``. ``on_started`` gets the Supervisor's handle once every actor answers
    (e.g. to scale a Kafka group). ``resume`` starts from the newest intact committed
    checkpoint; ``on_notice`` gets the line saying so when a damaged one was passed over
    (default: a logged warning). With the Prometheus exporter (``telemetry``), the
    driver serves every actor's metrics on one endpoint while the run lasts (and
    ``telemetry.linger_s`` after, or until ``stop`` is set); its URL is in
    ``status.json`` and the summary (``telemetry.prometheus``).
    """
    from actors.supervisor import Supervisor

    check_source(config)
    out = Path(out_dir or config.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = config.checkpoint_store_url(out)
    if not resume:
        (out / "supervision.jsonl").unlink(missing_ok=True)
    tcfg = config.telemetry
    endpoint = None
    if tcfg.active and "prometheus" in tcfg.exporters:
        from pipelines.monitoring.scrape import open_endpoint

        endpoint, trouble = open_endpoint(tcfg.prometheus_host, tcfg.prometheus_port)
        if trouble is not None:
            (on_notice or log.warning)(trouble)
    where = {"telemetry": {"prometheus": endpoint.url}} if endpoint is not None else {}
    # The Supervisor shares the driver's fate (the run ends with either), so it runs on
    # the driver's node: never on a worker node a cluster may lose.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    supervisor = Supervisor.options(scheduling_strategy=here).remote(config, str(out), store,
                                                                    task=task)
    every = config.runtime.series_interval_s
    series = SeriesWriter(out / SERIES, every, append=resume) if every is not None else None
    try:
        # What the operator must know before the run goes on (one line each): a damaged
        # checkpoint passed over on --resume.
        for notice in _get(supervisor.start.remote(resume)):
            (on_notice or log.warning)(notice)
        done = supervisor.wait.remote()
        if on_started is not None:
            on_started(supervisor)
        stopping = False
        interval = config.runtime.progress_interval_s
        # Polled every interval for as long as the pipeline runs: no task events (Ray's GCS
        # would keep a record of each poll; see actors.ingest._without_task_events).
        poll_status = supervisor.status.options(enable_task_events=False)
        poll_metrics = supervisor.metrics.options(enable_task_events=False)
        while not ray.wait([done], timeout=interval)[0]:
            if stop is not None and stop.is_set() and not stopping:
                stopping = True
                ray.get(supervisor.stop.remote())
            metrics = poll_metrics.remote() if endpoint is not None else None
            status = ray.get(poll_status.remote())
            if endpoint is not None and metrics is not None:
                endpoint.update(ray.get(metrics))
            write_status(out, {**status, **where})
            if series is not None:
                series.offer(status)
            if on_progress is not None:
                _observe(on_progress, status)
        summary: dict[str, Any] = _get(done)
        if tcfg.active:  # the final figures; OTLP and console exporters send what they hold
            final = ray.get(supervisor.metrics.remote(True))
            if endpoint is not None:
                endpoint.update(final)
        summary.update(where)
        if series is not None:
            series.offer(summary, force=True)
    finally:
        ray.kill(supervisor, no_restart=True)
        if series is not None:
            series.close()
        if endpoint is not None and sys.exc_info()[0] is not None:
            endpoint.close()
    (out / "summary.json").write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    if endpoint is not None:
        _linger(tcfg.linger_s, stop)
        endpoint.close()
    return summary


def _linger(seconds: float, stop: threading.Event | None) -> None:
    """Serve the final figures a while longer (a scrape interval), unless stopped."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        (stop or threading.Event()).wait(min(0.1, max(deadline - time.monotonic(), 0.0)))


def _observe(on_progress: Callable[[dict[str, Any]], None], status: dict[str, Any]) -> None:
    """Show progress; a display that fails never stops the run it displays (a status
    taken mid-restart holds only ``pipeline``, ``restarting`` and ``supervision``)."""
    try:
        on_progress(status)
    except Exception as e:
        log.warning("progress display failed (the run goes on): %s", named_line(e))


def _get(ref: ray.ObjectRef) -> Any:
    """``ray.get``, with a supervisor's PipelineError raised as itself (one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, PipelineError) else None
        raise cause or PipelineError(last_line(e)) from None
