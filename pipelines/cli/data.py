"""Data in: ``riffle sample`` (a file of loan applications), ``riffle produce`` (into a
pipeline's Kafka topics) and ``riffle tail`` (a topic's messages, one JSON per line)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from pipelines.cli.output import Fail, one_line
from pipelines.cli.run import load_pipeline

__all__ = ["produce", "sample", "tail"]


@click.command()
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
        raise Fail(f"{out}: cannot write: {e.strerror}") from None
    except ValueError as e:
        raise Fail(str(e)) from None
    click.echo(f"{out}: {n:,} events")


@click.command()
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

    cfg = load_pipeline(config)
    partitions = getattr(cfg.source, "partitions", 1)
    src: SyntheticSourceConfig | FileSourceConfig
    with one_line():
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
    click.echo(f"produced {counts['events']:,} events and {counts['feedback']:,} feedback "
               f"({counts['undecodable']:,} undecodable inputs sent raw) to "
               f"{cfg.kafka.topics.events} / {cfg.kafka.topics.feedback}")


@click.command()
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

    cfg = load_pipeline(config_path)
    with one_line():
        for message in tail_topic(topic, cfg.kafka, from_beginning=from_beginning,
                                  max_messages=max_messages, timeout_s=timeout_s):
            click.echo(orjson.dumps(message).decode())
