"""riffle: online machine learning in fast data pipelines.

The ``pipelines`` package holds the runtime-free cores (config, protocol, sources,
validation, routing, scoring, sinks) and the CLI; ``actors`` holds the thin Ray
shells around them.
"""

from __future__ import annotations

__version__ = "0.1.0"
