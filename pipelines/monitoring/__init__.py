"""Monitoring: what a running pipeline tells operators (telemetry, and more to come)."""
