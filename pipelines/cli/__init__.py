"""The ``riffle`` command: one module per command group, and the only code that prints.

- :mod:`~pipelines.cli.run`: ``validate``, ``run``; :mod:`~pipelines.cli.status`:
  ``status``; :mod:`~pipelines.cli.data`: ``sample``, ``produce``, ``tail``;
  :mod:`~pipelines.cli.models`: ``models ...``; :mod:`~pipelines.cli.train`: ``train``;
  :mod:`~pipelines.cli.audit`: ``audit verify``, ``audit prove`` (the access log);
  :mod:`~pipelines.cli.lineage`: ``audit record``, ``audit model``, ``audit key``;
  :mod:`~pipelines.cli.explain`: ``explain`` (a record's score, of the model then);
  :mod:`~pipelines.cli.forget`: ``forget`` (erase a data subject, unlearn it exactly);
  :mod:`~pipelines.cli.reproduce`: ``audit reproduce`` (a version rebuilt, proved equal);
  :mod:`~pipelines.cli.serve`: ``serve`` (the scoring service on Ray Serve);

  :mod:`~pipelines.cli.report`: ``report`` (a run's figures over time, one HTML page);
- :mod:`~pipelines.cli.output`: how mistakes become one line (exit code 2) and a failed
  run exit code 1.

Mistakes of the operator (a bad config, a missing file, an unknown model) print one
line on stderr and exit with code 2; bad records never stop a run (dead letters).
"""

from __future__ import annotations

import sys

import click

from pipelines.cli.audit import audit
from pipelines.cli.data import produce, sample, tail
from pipelines.cli.explain import explain
from pipelines.cli.forget import forget
from pipelines.cli.lineage import key, model, record
from pipelines.cli.models import models
from pipelines.cli.output import EXIT_INTERRUPTED, EXIT_USAGE
from pipelines.cli.report import report
from pipelines.cli.reproduce import reproduce
from pipelines.cli.run import run, validate
from pipelines.cli.serve import serve
from pipelines.cli.status import status
from pipelines.cli.train import train

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="riffle-ml")
def cli() -> None:
    """riffle: online machine learning in fast data pipelines."""


for command in (validate, run, sample, produce, tail, status, report, models, train, audit):
    cli.add_command(command)
cli.add_command(explain)
cli.add_command(forget)
cli.add_command(serve)
for command in (record, model, key, reproduce):
    audit.add_command(command)


def main() -> None:
    """The console entry point: click's own exits mapped to riffle's exit codes."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("riffle: aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as e:
        if isinstance(e, click.UsageError):
            click.echo(f"riffle: error: {e.format_message()}", err=True)
            sys.exit(EXIT_USAGE)
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("riffle: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
