"""Monitoring: serving quality against training, fairness, drift, telemetry and the report.

Runtime-free cores, like the rest of ``pipelines``: the actors feed them, the supervisor
merges what the scorers report, and the CLI draws it.
"""
