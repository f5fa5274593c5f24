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

A package's ``__init__`` can be put off the same way while its submodules import at once
(``packages=``): ``import river.tree.base`` then runs ``river/tree/base.py`` alone, and
the first name read from ``river.tree`` itself (``river.tree.HoeffdingTreeClassifier``)
runs the ``__init__``. River's ``river.tree`` imports every tree, and with them
``river.proba.gaussian`` and ``scipy.stats`` (~0.6 s), for the two classes
``river.feature_extraction`` takes from ``river.tree.padded``.

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
from typing import Any

__all__ = ["AUDIT_COLD", "AUDIT_COLD_PACKAGES", "defer", "deferred"]

AUDIT_COLD = ("river.proba", "river.datasets", "river.stream", "river.drift.datasets",
              "sklearn")
"""What the audit commands' River models import but never use: the modules above and
what hangs off them (scipy.stats, scikit-learn, pandas, SQLAlchemy through
``river.stream.iter_sql``). A scikit-learn arm or a SHAP explanation loads them when it
reads them."""

AUDIT_COLD_PACKAGES = ("river.tree", "river.feature_extraction")
"""Packages whose ``__init__`` the audit commands' linear models never need (a
``StandardScaler`` reaches ``river.tree.padded`` through ``river.feature_extraction``):
their submodules import as usual, the ``__init__`` runs when a tree model reads it."""


class _InitLater(importlib.abc.Loader):
    """A package whose ``__init__`` runs at the first read of a name it does not hold
    yet (its submodules, once imported, are held: reading them runs nothing)."""

    pending: set[str] = set()
    """The packages imported whose ``__init__`` has not run."""

    def __init__(self, loader: importlib.machinery.SourceFileLoader) -> None:
        self.loader = loader

    def __getattr__(self, name: str) -> Any:  # get_filename, get_source, resources...
        return getattr(self.loader, name)

    def exec_module(self, module: ModuleType) -> None:
        def __getattr__(name: str) -> Any:  # PEP 562: only for names not there
            del module.__dict__["__getattr__"]
            _InitLater.pending.discard(module.__name__)
            self.loader.exec_module(module)
            return getattr(module, name)

        module.__dict__["__getattr__"] = __getattr__
        _InitLater.pending.add(module.__name__)


class _Deferring(importlib.abc.MetaPathFinder):
    def __init__(self) -> None:
        self.names: set[str] = set()
        self.packages: set[str] = set()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names and fullname not in self.packages:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None  # not found here, or not pure Python: the usual finders decide
        if fullname in self.packages:
            if spec.submodule_search_locations is None:
                return None  # a plain module: nothing to put off
            spec.loader = _InitLater(spec.loader)
        else:
            spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


_FINDER = _Deferring()


def defer(*names: str, packages: Sequence[str] = ()) -> set[str]:
    """Import ``names`` lazily, and run the ``__init__`` of ``packages`` only when a
    name of theirs is read, from now on in this process (those not imported yet);
    returns the names newly deferred."""
    taken = _FINDER.names | _FINDER.packages
    new = {n for n in names if n not in sys.modules and n not in taken}
    later = {n for n in packages if n not in sys.modules and n not in taken}
    _FINDER.names |= new
    _FINDER.packages |= later
    if (new or later) and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    return new | later


def deferred() -> list[str]:
    """The deferred modules imported but not run yet (nothing read from them), and the
    deferred packages whose ``__init__`` has not run."""
    lazy = importlib.util._LazyModule  # type: ignore[attr-defined]
    return sorted([n for n in _FINDER.names if isinstance(sys.modules.get(n), lazy)]
                  + list(_InitLater.pending))
