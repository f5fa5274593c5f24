"""``riffle status``: progress, checkpoints and supervision log of a pipeline's outputs
(running or done), read from its files: no Ray, no source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from pipelines.cli.output import one_line, print_table
from pipelines.config import load_config

__all__ = ["status"]


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default out/NAME).")
@click.option("--log", "n_log", type=click.IntRange(min=0), default=10, show_default=True,
              help="Supervision log entries to show.")
def status(config: Path, out: Path | None, n_log: int) -> None:
    """Progress, checkpoints and supervision log of CONFIG's pipeline (running or done)."""
    import datetime

    import orjson
    from rich.table import Table

    from pipelines.status import read_status

    with one_line():  # the config only says where the outputs are: its source need not be up
        cfg = load_config(config, check_model=False)
        folder = cfg.out_dir if out is None else out
        st = read_status(folder)
    sup = st.get("supervision", {})
    table = Table(title=f"riffle status: {cfg.name} "
                        f"({'finished' if st['finished'] else 'running'})", show_header=False)
    if "events" in st:
        for key in ("events", "scored", "learned", "dead_letters", "events_per_s"):
            table.add_row(key, f"{st[key]:,}")
    elif st.get("restarting"):
        table.add_row("state", "restarting an actor")
    for name, value in st.get("metrics", {}).items():
        table.add_row(name, f"{value:.4f}")
    table.add_row("restarts", str(sup.get("restarts", 0)))
    table.add_row("last checkpoint", str(sup.get("last_checkpoint")))
    dep = st.get("deployment")
    if dep:
        table.add_row("deployment", f"{dep['mode']} (previous: {dep.get('previous') or '-'}; "
                                    f"commands {dep['commands_applied']} applied, "
                                    f"{dep['commands_rejected']} refused)")
        for name, arm in dep["arms"].items():
            quality = " ".join(f"{k}={v:.4f}" for k, v in arm["metrics"].items())
            latency = arm.get("latency_us_mean")
            table.add_row(f"arm {name}", f"{arm['version']} {arm['role']} "
                          f"w={arm['weight']:.2f} scored={arm['scored']:,} {quality}"
                          + (f" {latency:.0f} us" if latency is not None else ""))
    _quality_rows(table, st.get("quality") or {})

    drift = st.get("drift")
    if drift:
        c = drift["counts"]
        last = drift["alarms"][-1] if drift["alarms"] else None
        table.add_row("drift alarms", f"{c['drift_alarms']} ({c['concept_alarms']} concept, "
                      f"{c['feature_alarms']} feature)"
                      + (f"; last: {last['version']} {last['reason']}" if last else ""))
        done = drift["retrains"][-1] if drift["retrains"] else None
        table.add_row("retrains", f"{c['retrains_started']} started, "
                      f"{c['retrains_registered']} registered, {c['retrains_gated']} gated "
                      f"out, {c['retrains_failed']} failed"
                      + ("; one running" if drift["retrain_running"] else "")
                      + (f"; last: {done['status']} {done.get('version') or done.get('why')}"
                         if done else ""))
    print_table(table)
    log_path = folder / "supervision.jsonl"
    if n_log and log_path.exists():
        lines = log_path.read_bytes().splitlines()[-n_log:]
        for line in lines:
            entry = orjson.loads(line)
            at = datetime.datetime.fromtimestamp(entry["at"]).strftime("%H:%M:%S")
            extra = f" [{entry['checkpoint']}]" if entry.get("checkpoint") else ""
            click.echo(f"{at} {entry['kind']:<20} {entry['actor']:<10} "
                       f"{entry['reason']}{extra}")


def _quality_rows(table: Any, quality: dict[str, Any]) -> None:
    """Serving quality per arm against its registration, label delay, fairness."""
    for a in quality.get("arms", []):
        window = a["window"]
        figures = " ".join(f"{k}={v:.4f}" for k, v in window.items() if k != "n")
        gap = " ".join(f"{k}={v:+.4f}" for k, v in (a.get("gap") or {}).items()) or "-"
        ratio = a.get("label_ratio")
        table.add_row(f"quality {a['arm']} {a['version']}",
                      f"{figures or '-'} (last {window['n']:,} labels); gap to "
                      f"{a.get('reference')}: {gap}; labels arrived "
                      + (f"{ratio:.1%}" if ratio is not None else "-"))
    delay = quality.get("label_delay_s") or {}
    if delay.get("p50") is not None:
        table.add_row("label delay p50 / p99", f"{delay['p50']:.3f} s / {delay['p99']:.3f} s")
    for column, fig in (quality.get("fairness") or {}).items():
        groups = "; ".join(f"{g}: positive {v['positive_rate']:.3f} accuracy "
                           f"{v['accuracy']:.3f}" for g, v in fig["groups"].items())
        table.add_row(f"fairness {column}", f"{groups} (gap: positive rate "
                      f"{fig['gap']['positive_rate']:.3f}, accuracy "
                      f"{fig['gap']['accuracy']:.3f})")
