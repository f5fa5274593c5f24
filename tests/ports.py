"""Free local ports for the services the tests start (Kafka, PostgreSQL)."""

from __future__ import annotations

import socket


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` on ``host`` can be bound now.

    SO_REUSEADDR, like a server's own listener: a port left in TIME_WAIT by a server we
    just stopped is reusable and must not count as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
