"""Alembic migrations of the registry schema, shipped with riffle so that an installed
riffle upgrades an existing registry in place (:func:`pipelines.registry.migrate.upgrade`)."""
