"""riffle's error hierarchy, and the one way an error becomes one line.

Errors are for failures and mistakes of the operator (a bad config, a missing file);
bad *records* are data and become dead letters instead. The CLI prints any
:class:`RiffleError` as one line and exits with code 2, except a run that failed
after it started (:class:`RunFailed`, e.g. an escalated crash loop): exit code 1.

Every error class riffle defines lives here; the modules that raise them re-export
them (``pipelines.checkpoint.CheckpointError`` is this module's).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "ActorFailed",
    "AuditError",
    "CheckpointError",
    "CommandError",
    "ConfigError",
    "DamagedCheckpoint",
    "LifecycleError",
    "ModelError",
    "PipelineError",
    "RegistryError",
    "RiffleError",
    "RunFailed",
    "SourceError",
    "cause_line",
    "first_line",
    "format_errors",
    "format_validation_error",
    "last_line",
    "named_line",
]


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


class CheckpointError(PipelineError):
    """A checkpoint cannot be written, or one read back is damaged."""


class DamagedCheckpoint(CheckpointError):
    """``--resume`` found no checkpoint whose every part matches its manifest."""


class RegistryError(RiffleError):
    """The model registry cannot be opened, or refused a request (unknown version,
    invalid lifecycle transition, an artifact that does not match its hash)."""


class AuditError(RiffleError):
    """The audit data cannot be read or written (the subject-hash salt, a recorded tree
    head that is malformed)."""


class LifecycleError(RiffleError):
    """A lifecycle command that cannot apply to the current deployment (one line why)."""


class CommandError(RiffleError, ValueError):
    """A control message that is not a valid command (malformed JSON, a bad field)."""


class ActorFailed(Exception):
    """An actor of a running pipeline failed: the supervisor's business (restart or
    escalate), never shown to the operator as it is (hence not a RiffleError)."""

    def __init__(self, actor: str, error: str) -> None:
        super().__init__(f"{actor}: {error}")
        self.actor = actor
        self.error = error


def first_line(error: object) -> str:
    """The first line of an error's message, or its class name when it has none.

    >>> first_line(ValueError("bad value\\n  detail"))
    'bad value'
    >>> first_line(KeyError())
    'KeyError'
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def last_line(error: object) -> str:
    """The last line of an error's message (where a Ray task error keeps its cause).

    >>> last_line(RuntimeError("ray::ScorerActor.process()\\n  ...\\nValueError: boom"))
    'ValueError: boom'
    """
    text = str(error).strip()
    return text.splitlines()[-1].strip() if text else type(error).__name__


def named_line(error: BaseException) -> str:
    """``Class: first line`` of an error, or of the cause a Ray task error wraps (not
    repeated when the message already starts with the class, as kafka-python's do).

    >>> named_line(KeyError("metrics"))
    "KeyError: 'metrics'"
    >>> named_line(TimeoutError("TimeoutError: no answer"))
    'TimeoutError: no answer'
    """
    cause = getattr(error, "cause", None) or error
    name = type(cause).__name__
    text = str(cause).strip()
    line = text.splitlines()[0] if text else ""
    return line if line.startswith(name) else f"{name}: {line}" if line else name


def cause_line(error: BaseException) -> str:
    """``Class: last line`` of the exception a Ray task error wraps (or of ``error``): the
    one line the Supervisor logs for a failed actor call.

    >>> class TaskError(Exception):
    ...     cause = ValueError("scorer-0 at loans[0]@12:\\nexpected a finite number")
    >>> cause_line(TaskError("ray::ScorerActor.process() ..."))
    'ValueError: expected a finite number'
    """
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {last_line(cause)}"


def format_validation_error(error: ValidationError, *, root: str = "<root>",
                            extra_forbidden: str | None = None,
                            collapse: dict[str, str] | None = None) -> str:
    """One line: ``field.path: what was expected`` for each field, joined by ``; ``.

    The first message per field is kept; ``extra_forbidden`` replaces pydantic's message
    for unknown fields; ``collapse`` gives one message for every error under a top-level
    field (a union's alternatives, say).

    >>> from pydantic import BaseModel, ConfigDict
    >>> class Point(BaseModel):
    ...     model_config = ConfigDict(extra="forbid")
    ...     x: int
    >>> try:
    ...     Point.model_validate({"x": "a", "z": 1})
    ... except Exception as e:
    ...     print(format_validation_error(e))
    ...     print(format_validation_error(e, extra_forbidden="unknown field"))
    x: Input should be a valid integer, unable to parse string as an integer; z: Extra inputs are not permitted
    x: Input should be a valid integer, unable to parse string as an integer; z: unknown field
    """  # noqa: E501
    return format_errors(error.errors(include_url=False), root=root,
                         extra_forbidden=extra_forbidden, collapse=collapse)


def format_errors(errors: Iterable[Any], *, root: str = "<root>",
                  extra_forbidden: str | None = None,
                  collapse: dict[str, str] | None = None) -> str:
    """:func:`format_validation_error` of pydantic's error dicts (``error.errors()``, or
    a batch's errors regrouped by item)."""
    parts: dict[str, str] = {}
    for err in errors:
        top = str(err["loc"][0]) if err["loc"] else ""
        if collapse and top in collapse and len(err["loc"]) > 1:
            parts[top] = collapse[top]
            continue
        loc = ".".join(str(p) for p in err["loc"]) or root
        msg = (extra_forbidden if extra_forbidden and err["type"] == "extra_forbidden"
               else err["msg"].removeprefix("Value error, "))
        parts.setdefault(loc, msg)
    return "; ".join(f"{loc}: {msg}" for loc, msg in parts.items())
