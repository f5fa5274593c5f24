"""The ``riffle`` command.

Mistakes of the operator (a bad config, a missing file, an unknown model) print one
line on stderr and exit with code 2; bad records never stop a run (dead letters).
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.cli_models import models
from pipelines.cli_train import train
from pipelines.config import PipelineConfig, load_config
from pipelines.errors import RiffleError, RunFailed

# Sources, models and Ray are imported by the commands that need them: `riffle status`
# or `riffle models` should not pay for River's and scikit-learn's imports.

__all__ = ["main"]

EXIT_USAGE = 2


class _Fail(click.ClickException):
    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"riffle: error: {self.format_message()}", err=True)


class _Failed(_Fail):
    exit_code = 1


def _load(path: Path, events: int | None, endless: bool, out: Path | None) -> PipelineConfig:
    overrides: dict[str, Any] = {}
    if events is not None and endless:
        raise _Fail("--events and --endless are exclusive")
    if events is not None or endless:
        raw_kind = _peek_kind(path)
        if raw_kind != "synthetic":
            raise _Fail(f"--events/--endless apply to the synthetic source, not '{raw_kind}'"
                        " (a file source follows its file with source.follow: true)")
        overrides["source.n_events"] = None if endless else events
    if out is not None:
        overrides["output.out_dir"] = str(out)
    try:
        from pipelines.sources import check_source

        config = load_config(path, **overrides)
        check_source(config)
    except RiffleError as e:
        raise _Fail(str(e)) from None
    return config


def _peek_kind(path: Path) -> str | None:
    try:
        return load_config(path).source.kind
    except RiffleError as e:
        raise _Fail(str(e)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="riffle-ml")
def cli() -> None:
    """riffle: online machine learning in fast data pipelines."""


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
def validate(config: Path) -> None:
    """Check CONFIG (and that its source can be read) without running it."""
    cfg = _load(config, None, False, None)
    click.echo(f"{config}: ok (pipeline '{cfg.name}', source {cfg.source.kind}, "
               f"{cfg.ingest.n_actors} ingest x {cfg.scoring.n_actors} scoring actors, "
               f"config {cfg.config_hash()})")


@cli.command()
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
    cfg = _load(config, events, endless, out)
    from pipelines.runner import ensure_ray, run_pipeline

    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: leave now
            raise KeyboardInterrupt
        stop.set()

    console = Console(stderr=True)
    show = console.is_terminal if progress is None else progress
    started_here = ensure_ray(cfg.runtime.num_cpus)
    # After ray.init, which installs its own SIGTERM handler in the driver.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True, disable=not show) as bar:
            task = bar.add_task("starting actors...", total=None)

            def on_progress(status: dict[str, Any]) -> None:
                acc = status["metrics"].get("accuracy", status["metrics"].get("mae"))
                name = "accuracy" if "accuracy" in status["metrics"] else "mae"
                bar.update(task, description=(
                    f"{status['events']:,} events  {status['events_per_s']:,.0f}/s  "
                    f"{name} {acc if acc is None else round(acc, 4)}  "
                    f"dead letters {status['dead_letters']:,}"))

            summary = run_pipeline(cfg, out_dir=out, stop=stop, on_progress=on_progress,
                                   resume=resume)
    except RunFailed as e:
        raise _Failed(str(e)) from None
    except RiffleError as e:
        raise _Fail(str(e)) from None
    finally:
        if started_here:
            import ray

            ray.shutdown()
    _print_summary(summary, cfg.out_dir if out is None else out)


@cli.command()
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--events", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--keys", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Distinct applicants.")
def sample(out: Path, events: int, seed: int, keys: int) -> None:
    """Write OUT (.jsonl or .csv): flat loan applications with a label column."""
    from pipelines.sources.sample import write_sample

    try:
        n = write_sample(out, n_events=events, seed=seed, n_keys=keys)
    except OSError as e:
        raise _Fail(f"{out}: cannot write: {e.strerror}") from None
    except ValueError as e:
        raise _Fail(str(e)) from None
    click.echo(f"{out}: {n:,} events")


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--events", type=click.IntRange(min=1), help="Synthetic events to produce.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Events per second.")
@click.option("--file", "from_file", type=click.Path(path_type=Path),
              help="Replay this JSONL/CSV file (its label column as feedback) instead.")
@click.option("--label-delay-events", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
def produce(config: Path, events: int | None, rate: float | None, from_file: Path | None,
            label_delay_events: int, seed: int) -> None:
    """Load synthetic loan applications (or a file) into CONFIG's events and feedback topics."""
    from pipelines.config import FileSourceConfig, SyntheticSourceConfig
    from pipelines.kafka import ensure_topics
    from pipelines.produce import produce as produce_stream
    from pipelines.sources import check_source, open_reader

    cfg = _load(config, None, False, None)
    partitions = getattr(cfg.source, "partitions", 1)
    src: SyntheticSourceConfig | FileSourceConfig
    try:
        if from_file is not None:
            src = FileSourceConfig(kind="file", path=from_file, partitions=1,
                                   label_column="label", label_delay_events=label_delay_events)
            check_source(cfg.model_copy(update={"source": src}))
        else:
            src = SyntheticSourceConfig(kind="synthetic", partitions=partitions,
                                        n_events=events or 10_000, seed=seed,
                                        label_delay_events=label_delay_events)
        if cfg.kafka.create_topics:
            ensure_topics(cfg.kafka, partitions)
        reader = open_reader(src, list(range(src.partitions)))
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        counts = produce_stream(reader, cfg.kafka, rate_per_s=rate, stop=stop.is_set)
    except RiffleError as e:
        raise _Fail(str(e)) from None
    click.echo(f"produced {counts['events']:,} events and {counts['feedback']:,} feedback "
               f"({counts['undecodable']:,} undecodable inputs sent raw) to "
               f"{cfg.kafka.topics.events} / {cfg.kafka.topics.feedback}")


@cli.command()
@click.argument("topic")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              default=Path("configs/kafka.yaml"), show_default=True,
              help="Where the Kafka connection comes from.")
@click.option("--from-beginning/--latest", default=True, show_default=True)
@click.option("-n", "--max-messages", type=click.IntRange(min=1))
@click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="Stop after this long without a message.")
def tail(topic: str, config_path: Path, from_beginning: bool, max_messages: int | None,
         timeout_s: float) -> None:
    """Print the messages of TOPIC, one JSON object per line."""
    import orjson

    from pipelines.produce import tail as tail_topic

    cfg = _load(config_path, None, False, None)
    try:
        for message in tail_topic(topic, cfg.kafka, from_beginning=from_beginning,
                                  max_messages=max_messages, timeout_s=timeout_s):
            click.echo(orjson.dumps(message).decode())
    except RiffleError as e:
        raise _Fail(str(e)) from None


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default out/NAME).")
@click.option("--log", "n_log", type=click.IntRange(min=0), default=10, show_default=True,
              help="Supervision log entries to show.")
def status(config: Path, out: Path | None, n_log: int) -> None:
    """Progress, checkpoints and supervision log of CONFIG's pipeline (running or done)."""
    import datetime

    from pipelines.runner import read_status

    try:  # the config only says where the outputs are: its source need not be reachable
        cfg = load_config(config)
    except RiffleError as e:
        raise _Fail(str(e)) from None
    folder = cfg.out_dir if out is None else out
    try:
        st = read_status(folder)
    except RiffleError as e:
        raise _Fail(str(e)) from None
    sup = st.get("supervision", {})
    table = Table(title=f"riffle status: {cfg.name} "
                        f"({'finished' if st['finished'] else 'running'})", show_header=False)
    if "events" in st:
        for key in ("events", "scored", "learned", "dead_letters", "events_per_s"):
            table.add_row(key, f"{st[key]:,}")
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
    Console().print(table)
    log_path = folder / "supervision.jsonl"
    if n_log and log_path.exists():
        import orjson

        lines = log_path.read_bytes().splitlines()[-n_log:]
        for line in lines:
            entry = orjson.loads(line)
            at = datetime.datetime.fromtimestamp(entry["at"]).strftime("%H:%M:%S")
            extra = f" [{entry['checkpoint']}]" if entry.get("checkpoint") else ""
            click.echo(f"{at} {entry['kind']:<20} {entry['actor']:<10} "
                       f"{entry['reason']}{extra}")


def _print_summary(summary: dict[str, Any], out: Path) -> None:
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
    Console().print(table)


cli.add_command(models)
cli.add_command(train)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("riffle: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        if isinstance(e, click.UsageError):
            click.echo(f"riffle: error: {e.format_message()}", err=True)
            sys.exit(EXIT_USAGE)
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("riffle: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
