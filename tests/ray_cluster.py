"""A Ray cluster of our own, started with ``ray start`` as an operator would, that no
other Ray on the machine can find or stop.

``ray.init()`` without an address joins the cluster named in ``ray_current_cluster``
under Ray's temp dir (``RAY_TMPDIR``, else ``/tmp/ray``), and ``ray stop`` kills every
Ray process on the machine. So each cluster here has its own temp dir (``--temp-dir``
and ``RAY_TMPDIR``), its own free ports, its own token (``RAY_AUTH_MODE=token`` with
``RAY_AUTH_TOKEN``, never ``~/.ray/auth_token``), and runs as one process group
(``ray start --block`` in a new session) that :meth:`RayHead.stop` ends: never
``ray stop``.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import psutil

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
TERM_GRACE_S = 5.0
"""How long the processes get after SIGTERM before SIGKILL (nothing of a test cluster
needs saving)."""


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ray_bin() -> Path:
    """The ``ray`` command of the Python running the tests (``RIFFLE_PYTHON`` if set)."""
    python = Path(os.environ.get("RIFFLE_PYTHON") or sys.executable)
    return python.parent / "ray"


class RayHead:
    """``ray start --head --block`` with its own temp dir, ports and token.

    ``env`` is what a client of this cluster needs (``ray job submit``, ``ray.init``):
    the token, and the temp dir so that nothing else's temp dir is touched.
    """

    def __init__(self, root: Path, *, num_cpus: int = 2,
                 resources: dict[str, float] | None = None) -> None:
        self.root = root
        self.temp_dir = root / "ray"  # short: Ray's socket paths must stay under 108 bytes
        self.num_cpus = num_cpus
        self.resources = resources or {}
        self.port = free_port()
        self.dashboard_port = free_port()
        self.token = secrets.token_hex(32)
        self.env = {**os.environ, "RAY_TMPDIR": str(self.temp_dir),
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.env["PATH"] = f"{ray_bin().parent}{os.pathsep}{self.env.get('PATH', '')}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = root / "ray-start.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> RayHead:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        ports = {"--port": self.port, "--dashboard-port": self.dashboard_port,
                 "--ray-client-server-port": free_port(),
                 "--dashboard-agent-listen-port": free_port(),
                 "--dashboard-agent-grpc-port": free_port(),
                 "--metrics-export-port": free_port(),
                 "--runtime-env-agent-port": free_port(),
                 "--node-manager-port": free_port(), "--object-manager-port": free_port()}
        cmd = [str(ray_bin()), "start", "--head", "--block", "--disable-usage-stats",
               "--node-ip-address", "127.0.0.1", "--include-dashboard", "true",
               "--dashboard-host", "127.0.0.1", f"--num-cpus={self.num_cpus}",
               f"--temp-dir={self.temp_dir}", "--object-store-memory", str(200 * 2**20),
               *(f"{k}={v}" for k, v in ports.items())]
        if self.resources:
            cmd.append(f"--resources={orjson.dumps(self.resources).decode()}")
        with open(self._log, "wb") as log:
            self._proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log,
                                          start_new_session=True, cwd=self.root)
        self._wait_up()
        return self

    def _wait_up(self) -> None:
        """Until the job server answers (the dashboard is the last to come up)."""
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AssertionError(f"ray start exited {self._proc.returncode}: "
                                     f"{self._log.read_text()[-2000:]}")
            try:
                req = urllib.request.Request(f"{self.dashboard_url}/api/version",
                                             headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the Ray head did not answer within {START_TIMEOUT_S} s: "
                                     f"{self._log.read_text()[-2000:]}")
            time.sleep(0.25)

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: its session, or a command line naming its
        temp dir (a worker that left the session would still name it)."""
        found = []
        sid = self._proc.pid if self._proc is not None else None
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if proc.info["pid"] == os.getpid():
                    continue
                in_session = sid is not None and os.getsid(proc.info["pid"]) == sid
                names_dir = any(str(self.temp_dir) in part
                                for part in (proc.info["cmdline"] or []))
                if (in_session or names_dir) and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (psutil.Error, ProcessLookupError):
                continue
        return found

    def stop(self) -> None:
        """End every process of this cluster: SIGTERM to the group (``ray start
        --block`` stops its node), then SIGKILL to whatever is left."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self._proc.wait(TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (left := self.processes()) and time.monotonic() < deadline:
            for proc in left:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            time.sleep(0.2)
        self._proc.wait(STOP_TIMEOUT_S)
        left = self.processes()
        assert not left, f"processes of the cluster still running: {[p.pid for p in left]}"

    def __enter__(self) -> RayHead:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
