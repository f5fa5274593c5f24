"""riffle's Ray actors: thin shells over the runtime-free cores of ``pipelines``.

Each actor module reads as the list of messages it answers.

Each actor's worker process imports its own module only (no re-exports here): a sink
needs neither River nor the registry, and every import is start-up time.
"""
