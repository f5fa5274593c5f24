"""Monitoring: telemetry, quality against training, drift detection, retraining policy.

Ray-free cores; each submodule is imported where it is used (nothing is imported here,
so that reading a config does not import River).
"""
