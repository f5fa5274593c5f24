"""Fault drills: crash an actor at a named point, to rehearse recovery (chaos testing).

A drill is ``<actor>@<point>`` or ``<actor>@<point>#<n>``, listed in the config's
``runtime.fault_drills``. At ``point`` the named actor's process exits at once (as
with ``kill -9``: nothing is flushed or closed). Points: ``start`` (in the actor's
constructor: every restart fails too, a crash loop) and ``checkpoint`` (a scorer,
halfway through writing its part of checkpoint number ``n``, or of every one).

>>> Drills(["scorer-0@checkpoint#2"], "scorer-0").armed("checkpoint", 2)
True
>>> Drills(["scorer-0@checkpoint#2"], "scorer-0").armed("checkpoint", 3)
False
>>> Drills(["scorer-1@start"], "scorer-0").armed("start")
False
"""

from __future__ import annotations

import os
import sys

__all__ = ["DRILL_EXIT_CODE", "Drills", "parse_drill"]

DRILL_EXIT_CODE = 137
POINTS = ("start", "checkpoint")


def parse_drill(text: str) -> tuple[str, str, int | None]:
    """``(actor, point, n)`` of a drill; ValueError with what is wrong.

    >>> parse_drill("ingest-0@start")
    ('ingest-0', 'start', None)
    """
    actor, sep, rest = text.partition("@")
    point, _, n = rest.partition("#")
    if not sep or not actor or point not in POINTS or (n and not n.isdigit()):
        raise ValueError(f"fault drill {text!r}: expected <actor>@<point>[#<n>] with point "
                         f"one of {', '.join(POINTS)}")
    return actor, point, int(n) if n else None


class Drills:
    """The drills that apply to one actor."""

    def __init__(self, drills: list[str], actor: str) -> None:
        self._mine = [(point, n) for a, point, n in map(parse_drill, drills) if a == actor]

    def armed(self, point: str, n: int | None = None) -> bool:
        return any(p == point and (want is None or want == n) for p, want in self._mine)

    def fire(self, point: str, n: int | None = None) -> None:
        """Exit the process now if a drill is armed here."""
        if self.armed(point, n):
            sys.stderr.write(f"fault drill: exiting at {point}{'' if n is None else f'#{n}'}\n")
            sys.stderr.flush()
            os._exit(DRILL_EXIT_CODE)
