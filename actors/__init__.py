"""riffle's Ray actors: thin shells over the runtime-free cores of ``pipelines``.

Each actor module reads as the list of messages it answers.
"""

from __future__ import annotations

from actors.ingest import IngestActor
from actors.scorer import ScorerActor
from actors.sink import SinkActor
from actors.supervisor import Supervisor

__all__ = ["IngestActor", "ScorerActor", "SinkActor", "Supervisor"]
