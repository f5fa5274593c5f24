"""``riffle train CONFIG --from PATH``: a scikit-learn model trained on history, registered.

Reads PATH (JSONL, CSV or Parquet, or a folder of Parquet files) with Ray Data, fits
``training`` of CONFIG, holds out the last rows for its metrics, writes the model to the
checkpoint store and registers it (``--registry URL``, else ``registry.url``, else
``sqlite:///<out_dir>/registry.db``). Prints the version id, its metrics and artifact;
errors are one line, exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.cli.output import one_line
from pipelines.config import load_config

__all__ = ["train"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--from", "history", required=True, metavar="PATH",
              help="History to train on: .jsonl/.ndjson/.json, .csv, .parquet, a folder of "
                   "Parquet files, or a URL (s3://...).")
@click.option("--registry", "registry_url", metavar="URL",
              help="Registry database (default registry.url, else "
                   "sqlite:///<out_dir>/registry.db).")
def train(config: Path, history: str, registry_url: str | None) -> None:
    """Train CONFIG's scikit-learn model on history and register it as a version."""
    with one_line():
        cfg = load_config(config)
        # Ray, pandas and scikit-learn are imported only by the command that needs them.
        from pipelines.training import train as train_model

        version = train_model(cfg, history, registry_url=registry_url)
    metrics = "  ".join(f"{name} {value:.4f}" for name, value in sorted(version.metrics.items()))
    n_rows = sum(end - start for start, end in version.data.sources.values())
    click.echo(f"registered {version.id} ({version.model_class}; trained on "
               f"{version.data.n_learned:,} rows, {n_rows - version.data.n_learned:,} held out)")
    click.echo(f"  metrics:  {metrics or 'none (no rows held out)'}")
    click.echo(f"  artifact: {version.artifact_uri}")
    click.echo(f"  sha256:   {version.artifact_sha256}")
