"""``riffle validate`` and ``riffle run``: check a pipeline's config, run it.

Exit codes of ``run``: 0 done, 1 the run failed (an actor's failures escalated), 2 a
mistake in the command or config, 130 interrupted. Bad records never stop a run (they
become dead letters).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click

from pipelines.cli.output import Fail, one_line, print_table
from pipelines.config import PipelineConfig, load_config
from pipelines.errors import SourceError

# Ray, sources and models are imported by the commands that need them: `riffle --help`
# and a bad config's one line should not wait for Ray's, River's or scikit-learn's imports.

__all__ = ["load_pipeline", "progress_line", "run", "validate"]


def load_pipeline(path: Path, events: int | None = None, endless: bool = False,
                  out: Path | None = None) -> PipelineConfig:
    """CONFIG with the command's overrides, its source checked (readable, reachable)."""
    overrides: dict[str, Any] = {}
    if events is not None and endless:
        raise Fail("--events and --endless are exclusive")
    if events is not None or endless:
        with one_line():
            raw_kind = load_config(path).source.kind
        if raw_kind != "synthetic":
            raise Fail(f"--events/--endless apply to the synthetic source, not '{raw_kind}'"
                       " (a file source follows its file with source.follow: true)")
        overrides["source.n_events"] = None if endless else events
    if out is not None:
        overrides["output.out_dir"] = str(out)
    with one_line():
        config = load_config(path, **overrides)
        from pipelines.sources import check_source  # after: a missing config answers fast

        try:
            check_source(config)
        except SourceError as e:
            raise SourceError(f"{e}{_how_to_make(config)}") from None
    return config


def _how_to_make(config: PipelineConfig) -> str:
    """For a file source whose file is missing (a fresh clone): the command that writes
    one (``riffle sample`` writes the columns ``configs/file.yaml`` names)."""
    path = getattr(config.source, "path", None)
    if path is None or Path(path).exists() or Path(path).suffix not in (".jsonl", ".csv"):
        return ""
    return f" (write a sample one with: riffle sample {path} --events 50000)"


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
def validate(config: Path) -> None:
    """Check CONFIG (and that its source can be read) without running it."""
    cfg = load_pipeline(config)
    click.echo(f"{config}: ok (pipeline '{cfg.name}', source {cfg.source.kind}, "
               f"{cfg.ingest.n_actors} ingest x {cfg.scoring.n_actors} scoring actors, "
               f"config {cfg.config_hash()})")


def progress_line(status: dict[str, Any]) -> str:
    """The progress bar's text for a status the driver polled. A status taken while the
    supervisor restarts an actor holds only ``pipeline``, ``restarting`` and
    ``supervision``: every other key may be missing.

    >>> progress_line({"events": 1200, "events_per_s": 600.4, "dead_letters": 3,
    ...                "metrics": {"accuracy": 0.91234}})
    '1,200 events  600/s  accuracy 0.9123  dead letters 3'
    >>> progress_line({"pipeline": "local", "restarting": True,
    ...                "supervision": {"restarts": 1}})
    'restarting an actor (restarts so far: 1)...'
    """
    if status.get("restarting") or "events" not in status:
        restarts = (status.get("supervision") or {}).get("restarts", 0)
        return f"restarting an actor (restarts so far: {restarts})..."
    metrics = status.get("metrics") or {}
    name = "accuracy" if "accuracy" in metrics else "mae"
    value = metrics.get(name)
    shown = "-" if not isinstance(value, int | float) else f"{value:.4f}"
    return (f"{status.get('events', 0):,} events  {status.get('events_per_s', 0):,.0f}/s  "
            f"{name} {shown}  dead letters {status.get('dead_letters', 0):,}")


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--events", type=click.IntRange(min=1), help="Events to generate (synthetic source).")
@click.option("--endless", is_flag=True, help="Never end the synthetic source; stop with Ctrl-C.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default out/NAME).")
@click.option("--progress/--no-progress", default=None,
              help="Live progress bar (default: when stderr is a terminal).")
@click.option("--resume", is_flag=True,
              help="Start from the last committed checkpoint (models, pending labels and "
                   "source positions) and append to the output.")
def run(config: Path, events: int | None, endless: bool, out: Path | None,
        progress: bool | None, resume: bool) -> None:
    """Run the pipeline of CONFIG until its source ends (or Ctrl-C / SIGTERM).

    Exit codes: 0 done, 1 the run failed (an actor's failures escalated), 2 a mistake
    in the command or config, 130 interrupted.
    """
    cfg = load_pipeline(config, events, endless, out)
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # The entry point may start Ray; the cores never do (actors.driver owns ray.init).
    from actors.driver import ensure_ray, model_task, run_pipeline, shutdown_ray

    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: leave now
            raise KeyboardInterrupt
        stop.set()

    console = Console(stderr=True)
    show = console.is_terminal if progress is None else progress
    pipeline_task = model_task(cfg)  # River's imports in a thread, while Ray starts
    started_here = ensure_ray(cfg.runtime.num_cpus)
    # After ray.init, which installs its own SIGTERM handler in the driver.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        with one_line(), Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TimeElapsedColumn(), console=console, transient=True,
                                  disable=not show) as bar:
            task = bar.add_task("starting actors...", total=None)
            summary = run_pipeline(
                cfg, out_dir=out, stop=stop, resume=resume, task=pipeline_task.result(),
                on_progress=lambda status: bar.update(task, description=progress_line(status)),
                on_notice=lambda line: console.print(f"riffle: warning: {line}", markup=False,
                                                     highlight=False, soft_wrap=True))
    finally:
        if started_here:
            shutdown_ray()
    _print_summary(summary, cfg.out_dir if out is None else out)


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"riffle run: {summary['pipeline']}", show_header=False)
    for key in ("events", "scored", "learned", "dead_letters", "duplicates", "labels_expired",
                "labels_unmatched", "events_per_s"):
        table.add_row(key, f"{summary[key]:,}")
    lat = summary["latency_ms"]
    if lat.get("p50") is not None:
        table.add_row("latency p50 / p99", f"{lat['p50']:.1f} ms / {lat['p99']:.1f} ms")
    for name, value in summary["metrics"].items():
        table.add_row(name, f"{value:.4f}")
    windows = summary["windows"]
    if windows["values"]:
        table.add_row(f"{windows['metric']} per {windows['size']:,} labels",
                      " ".join(f"{v:.3f}" for v in windows["values"]))
    if summary["stopped_early"]:
        table.add_row("stopped", "by request (in-flight batches drained)")
    table.add_row("output", str(out))
    print_table(table)
