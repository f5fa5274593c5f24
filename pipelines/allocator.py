"""Memory in a long-running actor: glibc's malloc, and Python's cyclic garbage collector.

**The collector.** A hot-path process allocates a few objects per record and frees them
a batch later. Each full collection walks every container alive, and after imports a
scorer has ~400,000 of them (River, pydantic, NumPy, Ray): on the cores' loop the
collector cost ~7 us an event, a third of River's own predict and learn. :func:`tune_gc`
freezes what exists once the actor is built (the imports and the model are moved out of
the collector's sight, as CPython's ``gc.freeze`` is meant for) and raises the youngest
generation's threshold so that a batch's short-lived records rarely trigger a pass.
Cycles made later are still collected.

**glibc's malloc**: large freed buffers go back to the system.

glibc serves a request of at least its *mmap threshold* (128 KiB at start) with a
mapping of its own, which ``free`` unmaps. The threshold is dynamic: each such free
raises it to the size freed (up to 32 MiB). The dedupe window's hash table is rebuilt
every ~250,000 new ids (blocks of 4 and 7 MiB); after the first rebuild the next ones,
and any other buffer of that size (a checkpoint's serialised state), come from the heap
instead, and the heap keeps the pages they free. The live data stays flat while the RSS
creeps up: in the ingest path run without Ray, the same 64 MiB of live blocks held 14 MiB
more RSS after 1M events than after 200,000; with the threshold fixed (setting it turns
the dynamic adjustment off), 2.6 MiB more.

>>> pin_mmap_threshold() in (True, False)  # False where malloc is not glibc's
True
"""

from __future__ import annotations

import ctypes
import gc

__all__ = ["GC_THRESHOLD", "MMAP_THRESHOLD_BYTES", "pin_mmap_threshold", "tune_gc"]

GC_THRESHOLD = (50_000, 20, 100)
"""Allocations before a young collection, then young and middle passes before an older one
(CPython's default: 700, 10, 10)."""


def tune_gc() -> None:
    """Freeze the objects alive now and space the collector's passes (call it once the
    process holds what it keeps: imports, config, model).

    >>> tune_gc(); gc.get_threshold() == GC_THRESHOLD and gc.get_freeze_count() > 0
    True
    >>> gc.unfreeze(); gc.set_threshold(700, 10, 10)  # the doctest's process, as it was
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)

MMAP_THRESHOLD_BYTES = 256 * 1024
"""Above a scorer batch of the default size (~45 KiB encoded), so batches stay in the heap."""

_M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``nbytes`` for this process; True if glibc took it."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows): nothing to pin
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, nbytes))
