"""The dedupe window's rebuilt hash table stays out of glibc's heap once the threshold is
pinned (each case in a fresh process: the threshold is process-wide and only moves up)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Churns a RecentIds of 100,000 through 700,000 ids (its table is rebuilt at ~424,000 and
# ~674,000) and prints how much glibc's heap grew meanwhile, in MiB.
CHURN = """
import ctypes, sys
from pipelines.allocator import pin_mmap_threshold
from pipelines.validation import RecentIds

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "pinned":
    assert pin_mmap_threshold()
ids = [f"loans-42-0-{i}" for i in range(700_000)]
seen = RecentIds(100_000)
heap = mallinfo2().arena
for i in ids:
    seen.add(i)
print((mallinfo2().arena - heap) / 2**20)
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")  # glibc >= 2.33
    except OSError:
        return False


def _heap_growth_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True, timeout=120)
    return float(out.stdout)


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc's malloc (mallinfo2) only")
def test_allocator_dedupe_churn_unpinned_heap_grows() -> None:
    # The cause: each rebuilt table (several MiB) lands in the heap once glibc has raised
    # its threshold past it, and the heap keeps what the old one leaves.
    assert _heap_growth_mib("default") > 8


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc's malloc (mallinfo2) only")
def test_allocator_dedupe_churn_pinned_heap_flat() -> None:
    assert _heap_growth_mib("pinned") < 2
