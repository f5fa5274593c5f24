"""How the ``riffle`` command speaks: one line on stderr per mistake, tables on stdout.

A mistake of the operator (a bad config, a missing file, an unknown version) is
:class:`Fail`: ``riffle: error: <one line>``, exit code 2. A run that failed after it
started (an escalated crash loop), or a check that found damage (``riffle audit
verify``), is :class:`Failed`, exit code 1. Every command turns riffle's own errors
into these through :func:`one_line`. ``--json`` output is one JSON document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from pipelines.errors import RiffleError, RunFailed

__all__ = ["EXIT_INTERRUPTED", "EXIT_USAGE", "Fail", "Failed", "one_line", "print_json",
           "print_table"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Fail(click.ClickException):
    """A mistake of the operator: one line on stderr, exit code 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        click.echo(f"riffle: error: {self.format_message()}", err=True)


class Failed(Fail):
    """A run that failed after it started, or a check that failed: one line, exit code 1."""

    exit_code = 1


@contextmanager
def one_line() -> Iterator[None]:
    """riffle's errors inside become :class:`Fail` (:class:`Failed` for a failed run)."""
    try:
        yield
    except RunFailed as e:
        raise Failed(str(e)) from None
    except RiffleError as e:
        raise Fail(str(e)) from None


T = TypeVar("T")


def logged(registry: Any, action: str, ask: Callable[[], T],
           entry: Callable[[T | None], dict[str, Any]]) -> T:
    """``ask()``'s answer, the question logged in the access log first (found or not:
    ``entry(answer)`` gives the entry's fields); a question that cannot be logged, or has
    no answer, is one line (exit code 2)."""
    answer: T | None
    try:
        answer, error = ask(), None
    except RiffleError as e:
        answer, error = None, str(e)
    try:
        registry.log_access(action, found=error is None, **entry(answer))
    except RiffleError as e:
        raise Fail(f"cannot log the question in the access log: {e}") from None
    if error is not None:
        raise Fail(error)
    assert answer is not None
    return answer


def print_table(*tables: Any) -> None:
    """Rich tables on stdout (imported here: ``riffle --help`` does not pay for rich)."""
    from rich.console import Console

    console = Console()
    for table in tables:
        console.print(table)


def print_json(document: Any) -> None:
    """One JSON document on stdout (times as ISO 8601 strings)."""
    import json

    click.echo(json.dumps(document, indent=2, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")
