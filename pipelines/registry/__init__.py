"""The model registry: every model version, its lineage and its lifecycle, in SQL.

A version is a River model's committed checkpoint (``<pipeline>/ckpt-NNNNNN``) or a
batch-trained scikit-learn model (``<pipeline>/sk-<hex>``). The registry records what
it is (class, parameters, code version, config hash), what it learned from (source
position ranges, labeled examples), how good it was when registered, where its bytes
are (an artifact URI and SHA-256 in the checkpoint store: loading verifies the hash),
and every lifecycle event with its time, actor and reasons; and every command a running
pipeline received on its control stream, applied or rejected; and, in a tamper-evident
log (a Merkle tree, :mod:`~pipelines.registry.access`), every one of these writes and
every read of models and audit data. SQLite by default,
PostgreSQL by URL; the schema is migrated with Alembic when a registry is opened.
"""

from pipelines.registry.access import AccessEntry
from pipelines.registry.migrate import RegistryError, head_revision
from pipelines.registry.provenance import (
    CodeVersion,
    DataManifest,
    ModelKind,
    batch_version_id,
    code_version,
    river_model_fields,
    river_version_id,
)
from pipelines.registry.registry import (
    EVENT_KINDS,
    MISSING,
    RAW_MAX_CHARS,
    Change,
    CommandRecord,
    CommandStatus,
    EventKind,
    LifecycleEvent,
    ModelVersion,
    Registry,
    default_actor,
)

__all__ = [
    "EVENT_KINDS",
    "MISSING",
    "RAW_MAX_CHARS",
    "AccessEntry",
    "Change",
    "CodeVersion",
    "CommandRecord",
    "CommandStatus",
    "DataManifest",
    "EventKind",
    "LifecycleEvent",
    "ModelKind",
    "ModelVersion",
    "Registry",
    "RegistryError",
    "batch_version_id",
    "code_version",
    "default_actor",
    "head_revision",
    "river_model_fields",
    "river_version_id",
]
