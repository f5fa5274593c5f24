"""Where a model version comes from: its id, the code that made it, the data it learned,
and its artifact's bytes (verified against the hash the registry holds).

Version ids are ``<pipeline>/<local id>``, unique across the pipelines that share a
registry:

- a River online model's versions are its committed checkpoints, so the local id is
  the checkpoint's: ``local/ckpt-000012`` (the id a prediction's ``checkpoint`` names);
- a scikit-learn batch model gets ``<pipeline>/sk-<12 hex digits>`` (random) when it
  is registered.

>>> river_version_id("local", "ckpt-000012")
'local/ckpt-000012'
>>> batch_version_id("local").startswith("local/sk-")
True
>>> DataManifest(sources={"loans[0]": (0, 500)}, n_learned=480).model_dump(mode="json")
{'sources': {'loans[0]': [0, 500]}, 'n_learned': 480}
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.errors import RegistryError
from pipelines.storage import file_uri as store_file_uri  # re-exported under its old name
from pipelines.storage import resolve

if TYPE_CHECKING:
    from pipelines.config import ModelSpec

__all__ = ["CodeVersion", "DataManifest", "ModelKind", "batch_version_id", "code_version",
           "read_artifact", "read_uri", "river_model_fields", "river_version_id",
           "sha256_hex", "store_file_uri"]

ModelKind = Literal["river", "sklearn"]

_REPO = Path(__file__).resolve().parents[2]


class DataManifest(BaseModel):
    """The training data of a version: per source partition (``topic[p]``), the half-open
    range ``[from, to)`` of positions it learned from, and how many labeled examples."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: dict[str, tuple[int, int]] = Field(default_factory=dict)
    n_learned: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _ranges_forward(self) -> DataManifest:
        for source, (start, end) in self.sources.items():
            if not 0 <= start <= end:
                raise ValueError(f"{source}: range [{start}, {end}) must have 0 <= from <= to")
        return self


class CodeVersion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    commit: str
    dirty: bool


def river_version_id(pipeline: str, checkpoint_id: str) -> str:
    return f"{pipeline}/{checkpoint_id}"


def river_model_fields(spec: ModelSpec) -> dict[str, Any]:
    """What a River version of ``spec`` is registered as: its class (the steps' names,
    composed) and its parameters (every step's, and the spec's version).

    >>> from pipelines.config import ModelSpec
    >>> river_model_fields(ModelSpec())["model_class"]
    'preprocessing.StandardScaler | linear_model.LogisticRegression'
    """
    return {"model_class": " | ".join(step.name for step in spec.steps),
            "params": {"steps": [step.model_dump(mode="json") for step in spec.steps],
                       "version": spec.version}}


def batch_version_id(pipeline: str) -> str:
    return f"{pipeline}/sk-{uuid.uuid4().hex[:12]}"


def code_version(repo: Path | None = None) -> CodeVersion | None:
    """The git commit riffle's code is at and whether the tree has changes; None without git
    or outside a repository (an installed riffle)."""
    git = shutil.which("git")
    where = repo or _REPO
    if git is None:
        return None
    try:
        commit = subprocess.run([git, "-C", str(where), "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run([git, "-C", str(where), "status", "--porcelain",
                                 "--untracked-files=no"], check=True, capture_output=True,
                                text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return CodeVersion(commit=commit, dirty=bool(status.strip())) if commit else None


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def read_uri(uri: str) -> bytes:
    """The bytes of a file named by a local path or a pyarrow filesystem URL."""
    try:
        filesystem, path = resolve(uri)
        with filesystem.open_input_stream(path) as f:
            return bytes(f.read())
    except (OSError, ValueError) as e:
        raise RegistryError(f"artifact {uri} cannot be read: {e}") from None


def read_artifact(uri: str, sha256: str) -> bytes:
    """The bytes at ``uri``, refused unless they hash to ``sha256``."""
    blob = read_uri(uri)
    actual = sha256_hex(blob)
    if actual != sha256:
        raise RegistryError(f"artifact {uri} does not match its registered sha256 "
                            f"(expected {sha256[:12]}..., found {actual[:12]}...): "
                            "it was changed after registration; refusing to load it")
    return blob
