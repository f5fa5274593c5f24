"""Start, stop and locate the real Kafka broker that riffle's tests run against.

Plain functions only: importing this module starts nothing, so fixtures decide
the scope (see tests/integration/test_kafka_broker.py for the pattern).

The broker is the one scripts/kafka.sh runs (single-node KRaft on 127.0.0.1).
Tests get their own port and state dir, separate from a developer's dev broker
on 9092, so a test session's fresh wipe can never touch dev data.

Environment:
    RIFFLE_KAFKA_BOOTSTRAP    use an already running broker at this address
                              (only if it answers; otherwise one is started)
    RIFFLE_KAFKA_TEST_PORT    PLAINTEXT port of the test broker (default: the
                              first free one from 19092; PORT+1 is the KRaft
                              controller port and must be free too)
    RIFFLE_KAFKA_TEST_STATE   state dir of the test broker
                              (default ~/.cache/riffle/kafka-test-state)

When no broker can be had, ensure_broker() raises BrokerUnavailable with the
broker log's tail: Kafka tests are meant to fail, never to skip, in that case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.ports import port_free

__all__ = [
    "BrokerUnavailable",
    "broker_log_tail",
    "broker_start",
    "broker_stop",
    "ensure_broker",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO_ROOT / "scripts" / "kafka.sh"
HOST = "127.0.0.1"
DEFAULT_TEST_PORT = 19092

# Generous: the first run on a machine also downloads the jars (~15 s), and a
# loaded 2-core CI box can be slow to bring the JVM up. kafka.sh itself gives
# the broker 60 s to answer.
_START_TIMEOUT_S = 240
_STOP_TIMEOUT_S = 60


class BrokerUnavailable(RuntimeError):
    """The Kafka broker could not be started or reached."""


def _state_dir() -> Path:
    default = Path.home() / ".cache" / "riffle" / "kafka-test-state"
    return Path(os.environ.get("RIFFLE_KAFKA_TEST_STATE", default))


def _choose_port() -> int:
    """The test broker's port: the configured one, else the first free pair."""
    configured = os.environ.get("RIFFLE_KAFKA_TEST_PORT")
    if configured:
        return int(configured)
    # Step by 2: each broker also needs PORT+1 for its controller listener.
    for port in range(DEFAULT_TEST_PORT, DEFAULT_TEST_PORT + 200, 2):
        if port_free(HOST, port) and port_free(HOST, port + 1):
            return port
    raise BrokerUnavailable(
        f"no free port pair in {DEFAULT_TEST_PORT}-{DEFAULT_TEST_PORT + 200} on {HOST}"
    )


def _current_port() -> int:
    return int(os.environ.get("RIFFLE_KAFKA_TEST_PORT", DEFAULT_TEST_PORT))


def broker_log_tail(lines: int = 40) -> str:
    """The last `lines` lines of the test broker's log, for failure messages."""
    log = _state_dir() / "broker.log"
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"(no broker log at {log}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _run_kafka_sh(command: str, port: int, *, fresh: bool, timeout_s: float) -> str:
    env = dict(os.environ)
    env.update(
        RIFFLE_KAFKA_PORT=str(port),
        RIFFLE_KAFKA_STATE=str(_state_dir()),
        RIFFLE_KAFKA_FRESH="1" if fresh else "0",
        # The readiness probe needs kafka-python; the interpreter running the
        # tests has it, whatever `python3` on PATH happens to be.
        RIFFLE_PYTHON=sys.executable,
    )
    env.pop("RIFFLE_KAFKA_CONTROLLER_PORT", None)
    try:
        proc = subprocess.run(
            ["bash", str(KAFKA_SH), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerUnavailable(
            f"scripts/kafka.sh {command} did not finish within {timeout_s:.0f}s\n"
            f"--- last 40 lines of {_state_dir() / 'broker.log'} ---\n{broker_log_tail()}"
        ) from exc
    if proc.returncode != 0:
        raise BrokerUnavailable(
            f"scripts/kafka.sh {command} failed (exit {proc.returncode}) on port {port}\n"
            f"--- kafka.sh output ---\n{proc.stdout}{proc.stderr}"
            f"--- last 40 lines of {_state_dir() / 'broker.log'} ---\n{broker_log_tail()}"
        )
    return proc.stdout.strip()


def _answers(bootstrap: str, timeout_ms: int = 5000) -> bool:
    """True if a Kafka broker serves metadata requests at `bootstrap`."""
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="riffle-test-probe",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
        )
    except Exception:
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        admin.close()


def broker_start() -> str:
    """Start the test broker again on its port and state dir, keeping its data.

    For outage tests: pairs with broker_stop(). Returns the bootstrap address.
    """
    port = _current_port()
    _run_kafka_sh("start", port, fresh=False, timeout_s=_START_TIMEOUT_S)
    return f"{HOST}:{port}"


def broker_stop() -> None:
    """Stop the test broker (SIGTERM, then SIGKILL); its data is kept."""
    _run_kafka_sh("stop", _current_port(), fresh=False, timeout_s=_STOP_TIMEOUT_S)


def ensure_broker() -> tuple[str, Callable[[], None]]:
    """Return (bootstrap address, stopper) of a broker that answers now.

    An external broker named by RIFFLE_KAFKA_BOOTSTRAP is used as is and its
    stopper does nothing. Otherwise a test broker is started from a wiped state
    dir and the stopper stops it (calling it twice is harmless).
    """
    external = os.environ.get("RIFFLE_KAFKA_BOOTSTRAP")
    if external and _answers(external):
        return external, lambda: None

    port = _choose_port()
    # Remember the port for broker_stop()/broker_start() and for any
    # subprocess the tests spawn; env rather than a module global, because
    # pytest may import this file under two module names.
    os.environ["RIFFLE_KAFKA_TEST_PORT"] = str(port)
    _run_kafka_sh("start", port, fresh=True, timeout_s=_START_TIMEOUT_S)
    return f"{HOST}:{port}", broker_stop
