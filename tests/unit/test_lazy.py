"""pipelines.lazy: a deferred package's submodules import at once and its ``__init__``
runs at the first read of one of its own names, exactly once; nothing else changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_PROBE = """
import sys
from pipelines.lazy import defer, deferred
defer(packages=["pkg"])
import pkg.sub
assert pkg.sub.VALUE == 2 and "pkg" in deferred(), "the submodule ran, not the package"
assert "ran" not in sys.modules["pkg"].__dict__
from pkg import sub  # a submodule already held: still nothing of __init__ runs
assert "pkg" in deferred()
assert pkg.NAME == "from init" and pkg.RUNS == [1]  # a name of the package: __init__ runs
assert pkg.sub is sub and "pkg" not in deferred()
assert pkg.NAME == "from init" and pkg.RUNS == [1]  # once
try:
    pkg.missing
except AttributeError as e:
    assert "missing" in str(e)
else:
    raise AssertionError("a name the package lacks must still be an AttributeError")
print("ok")
"""


def test_deferred_package_runs_its_init_at_the_first_read_of_its_own_names(
        tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("RUNS = [1]\nran = True\nNAME = 'from init'\n"
                                     "from .sub import VALUE\n")
    (pkg / "sub.py").write_text("VALUE = 2\n")
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60,
                         env={"PYTHONPATH": f"{tmp_path}:{repo}", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
