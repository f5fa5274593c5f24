"""``riffle serve`` with Serve's HAProxy ingress (``serving.ingress``'s default for fixed
replicas), as an operator starts it: a process of its own that starts its own Ray (Serve
picks its HAProxy ingress from the environment Ray's processes start with, so the
session's Ray, started with the proxy, cannot show it). Requests go through a real
HAProxy to the replica; a deploy on the control stream reaches it with no failed or
mixed request; SIGTERM stops it with nothing left running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
import yaml

from pipelines.config import PipelineConfig
from pipelines.protocol import Command
from pipelines.registry import Registry
from tests.ray_cluster import free_port, ray_bin
from tests.serving_helpers import (
    KEYS,
    Stream,
    fitted,
    keys_file,
    records,
    register,
    serving_config,
)

START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
WEB = {"X-API-Key": KEYS["web"][1]}


def _session(sid: int) -> list[psutil.Process]:
    """The processes of session ``sid`` still running (the service and every Ray process
    it started: none of them leaves the session)."""
    out = []
    for p in psutil.process_iter(["pid", "name", "status"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


class Service:
    """``riffle serve CONFIG`` in a session of its own, with Ray's temp dir its own."""

    def __init__(self, config_file: Path, root: Path) -> None:
        self.temp_dir = root / "ray"  # short: Ray's socket paths must stay under 108 bytes
        env = {**os.environ, "RAY_TMPDIR": str(self.temp_dir), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        env["PATH"] = f"{ray_bin().parent}{os.pathsep}{env.get('PATH', '')}"
        self.log = root / "serve.log"
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen([str(ray_bin().parent / "riffle"), "serve",
                                      str(config_file)], env=env, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=root)

    def wait_up(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith("serving ") and " at http://" in line:
                    return line
            if self.proc.poll() is not None:
                raise AssertionError(f"riffle serve exited {self.proc.returncode}: "
                                     f"{text[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"riffle serve not up in {START_TIMEOUT_S:.0f} s: "
                             f"{self.log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> int | None:
        """SIGTERM, as an operator's supervisor sends it; then whatever is left is killed
        (and the test fails on it). Returns the exit code (None: it had to be killed)."""
        code = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        else:
            code = self.proc.returncode
        deadline = time.monotonic() + 20
        while _session(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)  # Ray's own processes end a moment after the driver
        self.left = [f"{p.pid} {p.info['name']}" for p in _session(self.proc.pid)]
        if self.left or code is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._out.close()
        return code


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rf-hap-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _predict(url: str, i: int, n: int = 1) -> tuple[int, set[str]]:
    rows = records(n, i)
    body: dict[str, Any] = {"record": rows[0]} if n == 1 else {"records": rows}
    r = requests.post(f"{url}/v1/predict", headers=WEB, json=body, timeout=30)
    if r.status_code != 200:
        return r.status_code, set()
    return 200, {p["model_version"] for p in r.json()["predictions"]}


def test_riffle_serve_with_the_haproxy_ingress_answers_follows_deploys_and_stops_clean(
        make_config: Any, root: Path) -> None:
    port = free_port()
    cfg: PipelineConfig = serving_config(
        make_config, keys_file=str(keys_file(root)), haproxy_threads=1, num_replicas=1, num_cpus=0,
        port=port)  # the default ingress (auto): HAProxy, for fixed replicas
    registry = Registry(cfg.registry_url())
    a = register(registry, root, cfg.name, "sk-a", fitted(1.0))
    b = register(registry, root, cfg.name, "sk-b", fitted(-1.0))
    stream = Stream(cfg, registry)
    stream.apply(Command(pipeline=cfg.name, actor="ci", op="deploy", version=a))
    config_file = root / "serve.yaml"
    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    url = f"http://127.0.0.1:{port}"

    service = Service(config_file, root)
    try:
        banner = service.wait_up()
        assert f"at {url}" in banner and "1 replica(s), Serve's HAProxy ingress" in banner
        # The port is HAProxy's: Serve's Python proxy is not what listens there.
        listeners = {c.pid for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        names = {psutil.Process(pid).name() for pid in listeners if pid}
        assert names and all("haproxy" in n for n in names), names

        assert _predict(url, 0) == (200, {a})
        assert _predict(url, 100, n=100) == (200, {a})
        bad = requests.post(f"{url}/v1/predict", headers={"X-API-Key": "nope"},
                            json={"record": {"key": "k", "features": {"a": 1.0}}}, timeout=30)
        assert bad.status_code == 401  # FastAPI's answers come through HAProxy too

        answers: list[tuple[int, set[str]]] = []
        stop = threading.Event()

        def load() -> None:
            i = 0
            while not stop.is_set():
                answers.append(_predict(url, i, n=10))
                i += 10

        thread = threading.Thread(target=load, daemon=True)
        thread.start()
        try:
            time.sleep(1.0)
            stream.apply(Command(pipeline=cfg.name, actor="ci", op="deploy", version=b))
            deadline = time.monotonic() + 60
            while not any(v == {b} for _, v in answers[-5:]):
                assert time.monotonic() < deadline, "the deploy of b never reached the replica"
                time.sleep(0.2)
        finally:
            stop.set()
            thread.join(timeout=30)
        assert answers and all(status == 200 for status, _ in answers)  # none failed
        assert all(v in ({a}, {b}) for _, v in answers)  # none mixed within a request
        first_b = next(i for i, (_, v) in enumerate(answers) if v == {b})
        assert all(v == {b} for _, v in answers[first_b:])  # no flip back
    finally:
        code = service.stop()
        registry.close()
    assert code == 0, service.log.read_text(errors="replace")[-3000:]
    assert service.left == []  # neither Ray nor HAProxy left running

