"""``riffle report``: a run's figures over time as one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli.output import one_line
from pipelines.config import load_config

__all__ = ["report"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", "page", type=click.Path(path_type=Path),
              help="The page to write (default: report.html in the run's output folder).")
@click.option("--dir", "folder", type=click.Path(path_type=Path),
              help="The run's output folder (default out/NAME, or the config's out_dir).")
def report(config: Path, page: Path | None, folder: Path | None) -> None:
    """Write the report of CONFIG's run (running or done): quality per version and arm
    with lifecycle events and drift alarms marked, throughput, latency, label delay,
    dead letters, fairness, resources per actor, and the summary table."""
    from pipelines.errors import PipelineError
    from pipelines.monitoring.report import build_report, markers_of

    with one_line():
        cfg = load_config(config, check_model=False)
        where = cfg.out_dir if folder is None else folder
        if not (where / "metrics.jsonl").exists() and not (where / "summary.json").exists():
            raise PipelineError(f"{where}: no metrics.jsonl or summary.json (has the "
                                "pipeline run?)")
        registry = cfg.registry_url(where) if cfg.registry.enabled else None
        if registry is not None and registry.startswith("sqlite:///") and not Path(
                registry.removeprefix("sqlite:///")).exists():
            registry = None  # no run has made it: nothing to mark
        markers = markers_of(registry, cfg.name, where / "supervision.jsonl")
        text = build_report(where, markers=markers, title=f"riffle report: {cfg.name}")
        target = page or where / "report.html"
        target.write_text(text, encoding="utf-8")
    click.echo(f"{target} ({len(text) / 2**20:.1f} MiB, {len(markers)} events marked)")
