"""``riffle serve CONFIG``: the scoring service on Ray Serve, serving the versions the
stream serves (``actors.serving``), until Ctrl-C or SIGTERM.

API keys come from ``RIFFLE_SERVE_KEYS`` or a secrets file (``serving.keys_file``,
``RIFFLE_SERVE_KEYS_FILE``); none: one line, exit 2. The same application deploys with
``serve run actors.serving:build_app config=CONFIG`` (or a RayService).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import click

from pipelines.cli.output import one_line
from pipelines.config import load_config

__all__ = ["serve"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--host", help="Address to listen on (default serving.host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default serving.port).")
@click.option("--out", type=click.Path(path_type=Path),
              help="The run's output folder, if not CONFIG's (registry, control stream).")
def serve(config: Path, host: str | None, port: int | None, out: Path | None) -> None:
    """Serve CONFIG's models over HTTP (predict, feedback, models, audit, admin)."""
    from pipelines.serving.auth import load_keys

    with one_line():
        cfg = load_config(config)
        keys = load_keys(cfg.serving.keys_file)
    from actors.serving import direct_urls, run_service, stop_service

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        with one_line():
            url = run_service(cfg, out_dir=out, host=host, port=port)
        # Again after ray.init, which installs its own SIGTERM handler in the driver (it
        # aborted the process: exit -6, Serve and Ray left to die on their own).
        signal.signal(signal.SIGTERM, on_signal)
        s = cfg.serving
        scale = (f"{s.autoscaling_config.min_replicas}-{s.autoscaling_config.max_replicas} "
                 "replicas (autoscaling)" if s.autoscaling_config else
                 f"{s.num_replicas} replica(s)")
        # What is in effect: the environment Ray started with here (serving.ingress, or
        # the operator's own RAY_SERVE_ENABLE_HA_PROXY), or a joined cluster's own.
        ingress = ("the cluster's ingress" if os.environ.get("RAY_ADDRESS") else
                   "Serve's HAProxy ingress" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY")
                   == "1" else "Serve's proxy")
        click.echo(f"serving {cfg.name} at {url} ({scale}, {ingress}, {len(keys)} API keys); "
                   f"API at {url}/docs; Ctrl-C stops")
        direct = direct_urls(cfg)
        if direct:
            click.echo(f"replicas also answer directly (direct ingress): {', '.join(direct)}")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        click.echo("stopping")
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop_service()
