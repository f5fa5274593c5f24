"""What an actor's process uses: CPU seconds and resident memory, read by the process
itself (so it is right on any node of a cluster), for the status and the report.

>>> f = process_figures()
>>> f["cpu_s"] > 0 and f["rss_mib"] > 1
True
"""

from __future__ import annotations

import os
import resource
from typing import Any

__all__ = ["process_figures", "resources_of"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_figures() -> dict[str, float]:
    """This process's CPU time so far (user + system, seconds) and resident set (MiB)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/self/statm", "rb") as f:
            rss = int(f.read().split()[1]) * _PAGE
    except OSError:  # no procfs: the peak instead (KiB on Linux, bytes on macOS)
        rss = usage.ru_maxrss * 1024
    return {"pid": os.getpid(), "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_mib": rss / 2**20}


def resources_of(ingest: list[dict[str, Any]], scorers: list[dict[str, Any]]
                 ) -> dict[str, dict[str, float]]:
    """Per actor (ingest and scorer actors as they report themselves, and this process,
    the supervisor), its process figures.

    >>> sorted(resources_of([{"name": "ingest-0", "process": {"cpu_s": 1.0}}],
    ...                     [{"process": {"cpu_s": 2.0}}]))
    ['ingest-0', 'scorer-0', 'supervisor']
    """
    out = {s.get("name", f"ingest-{i}"): s["process"] for i, s in enumerate(ingest)
           if "process" in s}
    out.update({f"scorer-{i}": s["process"] for i, s in enumerate(scorers) if "process" in s})
    out["supervisor"] = process_figures()
    return out
