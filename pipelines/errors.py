"""riffle's error hierarchy.

Errors are for failures and mistakes of the operator (a bad config, a missing file);
bad *records* are data and become dead letters instead. The CLI prints any
:class:`RiffleError` as one line and exits with code 2, except a run that failed
after it started (:class:`RunFailed`, e.g. an escalated crash loop): exit code 1.
"""

from __future__ import annotations


class RiffleError(Exception):
    """Base of every error riffle raises on purpose."""


class ConfigError(RiffleError):
    """A pipeline config is unreadable or invalid."""


class SourceError(RiffleError):
    """A source cannot be opened or read (missing file, unreachable broker)."""


class ModelError(RiffleError):
    """A model cannot be built from its spec (unknown name, bad parameters)."""


class PipelineError(RiffleError):
    """The pipeline failed while running; the message names the actor and the cause."""


class RunFailed(PipelineError):
    """A running pipeline stopped on a failure its supervisor could not recover from."""
