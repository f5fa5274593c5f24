"""Where bytes live: a checkpoint store, a model artifact or a history file is named by a
pyarrow filesystem URL (``s3://bucket/x``, ``gs://...``, ``file:///...``) or a plain local
path. One place decides which, so that every reader and writer agrees.

>>> filesystem, path = resolve("out/checkpoints")
>>> type(filesystem).__name__, path
('LocalFileSystem', 'out/checkpoints')
>>> file_uri("file:///tmp/store/", "models/a.pkl")
'file:///tmp/store/models/a.pkl'
"""

from __future__ import annotations

from pathlib import Path

from pyarrow import fs

__all__ = ["file_uri", "is_url", "resolve"]


def is_url(location: str) -> bool:
    """True for ``scheme://...``, False for a local path."""
    return "://" in location


def resolve(location: str) -> tuple[fs.FileSystem, str]:
    """The filesystem that holds ``location`` and the path within it.

    pyarrow raises ``ValueError`` (or ``TypeError``) for a plain relative or absolute
    local path: that is the local filesystem, the path as given.
    """
    try:
        return fs.FileSystem.from_uri(location)
    except (ValueError, TypeError):
        return fs.LocalFileSystem(), location


def file_uri(store_url: str, relpath: str) -> str:
    """The URI of ``relpath`` inside a store (a local folder becomes absolute, so the URI
    still names the file from another working directory)."""
    try:
        fs.FileSystem.from_uri(store_url)
        base = store_url
    except (ValueError, TypeError):
        base = str(Path(store_url).resolve())
    return f"{base.rstrip('/')}/{relpath.lstrip('/')}"
