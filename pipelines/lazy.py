"""Deferred imports for short-lived commands (``riffle explain``, ``forget``, ``audit ...``).

Python runs a package's ``__init__`` before any of its submodules, and River's
``__init__`` files import everything of their family: unpickling one
``LogisticRegression`` imports ``river.linear_model``, whose Bayesian regression imports
``river.proba`` and with it ``scipy.stats``; a ``StandardScaler`` imports
``river.preprocessing``, whose gap encoder reaches ``river.datasets`` and ``river.stream``
and with them scikit-learn, pandas and SQLAlchemy's engine. A scorer never touches most
of it, but a cold command pays ~1.5 s of CPU to import it.

:func:`defer` makes the named modules lazy (:class:`importlib.util.LazyLoader`): the
import statement binds a module object at once, and the module's code runs in full the
first time one of its attributes is read. Nothing is left out and nothing changes: a
deferred module that is used is the same module, loaded at first use instead of at
import. Only pure-Python modules are deferred (extension modules cannot be).

>>> import sys
>>> defer("json.tool") and None
>>> import json.tool
>>> type(sys.modules["json.tool"]).__name__
'_LazyModule'
>>> callable(json.tool.main)  # the first attribute read runs the module
True
>>> type(sys.modules["json.tool"]).__name__
'module'
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["AUDIT_COLD", "defer", "deferred"]

AUDIT_COLD = ("river.proba", "river.datasets", "river.stream", "river.drift.datasets",
              "sklearn")
"""What the audit commands' River models import but never use: the modules above and
what hangs off them (scipy.stats, scikit-learn, pandas, SQLAlchemy through
``river.stream.iter_sql``). A scikit-learn arm or a SHAP explanation loads them when it
reads them."""


class _Deferring(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None  # not found here, or not pure Python: the usual finders decide
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


_FINDER = _Deferring()


def defer(*names: str) -> set[str]:
    """Import ``names`` lazily from now on in this process (those not imported yet);
    returns the names newly deferred."""
    new = {n for n in names if n not in sys.modules and n not in _FINDER.names}
    _FINDER.names |= new
    if new and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return new


def deferred() -> list[str]:
    """The deferred modules imported but not run yet (nothing read from them)."""
    lazy = importlib.util._LazyModule  # type: ignore[attr-defined]
    return sorted(n for n in _FINDER.names
                  if isinstance(sys.modules.get(n), lazy))
