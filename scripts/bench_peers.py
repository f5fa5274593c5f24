#!/usr/bin/env python
"""riffle beside what a user would run instead: a minimal loop, Bytewax + River, Quix
Streams + River, a minimal kafka-python loop; all on the same data, model and label delay.

One run generates one JSONL file of loan applications (``riffle sample``, 200,000 by
default) and, for Kafka, loads it once into one events and one feedback topic (``riffle
produce --file``, each label 20 events after its event). Then, for each model of the sweep
(StandardScaler | LogisticRegression, HoeffdingTreeClassifier, ARFClassifier of 10 trees),
each system runs as its own command, one after another (ARF, ~50x the cost of the
others, runs on the file's first --arf-events lines, 50,000 by default):

  minimal            read the JSONL with orjson, predict_proba_one, write a line, hold the
                     features, learn_one when the label comes 20 events later
  bytewax            Bytewax 0.21, 1 worker: FileSource -> stateful_map -> FileSink
  riffle-IxS         `riffle run` of a generated file config, I ingest + S scoring actors
  kafka-loop         kafka-python: consume events + feedback, predict, produce, learn
  quix               Quix Streams: the same on a dataframe per topic
  riffle-kafka-IxS   `riffle run` of a generated Kafka config on the same topics

(scripts/peer_loops.py holds the peers' code.) For each: events/s over the system's own
processing window (first event read to last prediction written; riffle's summary.json
for riffle), events per second of wall time, CPU seconds per 1,000 events over the whole
process tree (every descendant, Ray's raylet, GCS and workers included: each command runs
in a cgroup of its own and the kernel's cpuacct count is read; without cgroups, the larger
of the reaped children's rusage and the per-process CPU sampled), p50/p99 latency from
an event's read to its prediction's write, peak RSS of the tree (sampled every 0.25 s,
summed over processes, so shared pages count once per process), and wall time from
command start to exit. The Kafka broker's CPU is reported beside, not in the tree. Also
Ray's own floor: ray.init, six actors importing River, ray.shutdown, against `riffle run`
of a 2,000-event file (issue 9's fixed-cost target: within the floor + 3 s).

    pip install -e '.[bench]'                                  # the peers (never runtime deps)
    python scripts/bench_peers.py                               # everything (starts a broker)
    python scripts/bench_peers.py --no-kafka                    # file systems and the floor
    python scripts/bench_peers.py --events 20000 --models logreg --only minimal,bytewax,riffle-1x2

Accuracy (of each prediction against its label) is shown as a check that every system
does the same learning; it differs on Kafka, where the order in which a consumer takes
partitions changes the order of learning (kafka-python takes one partition's fetch at a
time, so its labels come later than 20 events and its accuracy is lower).

Kafka: RIFFLE_KAFKA_BOOTSTRAP names a running broker; otherwise scripts/kafka.sh starts
one on a free port with a state dir of its own, and it is stopped at the end. Topics and
consumer groups are named per run. Writes a markdown table to stdout and, under --out
(default out/bench-peers), peers.json and peers.png (events/s per system per model).
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from peer_loops import FILE_PARTITIONS, LABEL_DELAY, MODELS  # noqa: E402

PEERS = ROOT / "scripts" / "peer_loops.py"
SHAPES = ((1, 1), (1, 2), (2, 2))
FILE_SYSTEMS = ["minimal", "bytewax", "riffle-cores", *(f"riffle-{i}x{s}" for i, s in SHAPES),
                "riffle-1x2-half", "riffle-1x2-noaudit", "riffle-1x2-notelemetry",
                "riffle-1x2-reasons"]
"""``riffle-cores``: riffle's own cores in one process, no Ray (the pipeline's baseline, not a
peer). ``riffle-1x2-half``: 1+2 fed at half the rate riffle-1x2 reached in this run (latency).
``riffle-1x2-noaudit``: 1+2 without the audit trail and training log (what they cost; every
other riffle row keeps them, the default). ``riffle-1x2-notelemetry``: 1+2 without
OpenTelemetry (every other riffle row has the default: the Prometheus endpoint, spans on
1% of batches). ``riffle-1x2-reasons``: 1+2 with reason codes on
every prediction (``scoring.explain.top_k: 3``)."""
KAFKA_SYSTEMS = ["kafka-loop", "quix", *(f"riffle-kafka-{i}x{s}" for i, s in SHAPES)]
KAFKA_PARTITIONS = 4


@dataclass
class Measured:
    """What one command cost, from outside: wall, CPU and peak RSS of its process tree."""

    rc: int
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    cpu_rusage_s: float = 0.0
    cpu_seen_s: float = 0.0
    cpu_method: str = ""
    leftovers: int = 0
    broker_cpu_s: float | None = None
    log: str = ""
    cpu_by_role: dict[str, float] = field(default_factory=dict)
    steady: dict[str, Any] = field(default_factory=dict)
    """CPU cores used per role while the ingest actors were busy (see steady_cpu)."""


@dataclass
class Row:
    system: str
    model: str
    events: int = 0
    events_per_s: float = 0.0
    events_per_wall_s: float = 0.0
    cpu_s_per_1k: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_rss_mib: float = 0.0
    wall_s: float = 0.0
    broker_cpu_s: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --- measuring a command ----------------------------------------------------------------


def become_subreaper() -> bool:
    """Orphans of our commands (Ray's daemons) become our children, so their CPU is
    counted in RUSAGE_CHILDREN when we reap them. Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def process_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


class TreeSampler:
    """Peak RSS summed over this process's descendants, sampled in a thread; and the CPU
    each descendant was last seen to have used (a cross-check of the rusage count, short
    of each process's last interval)."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self.cpu_seen: dict[tuple[int, float], float] = {}  # (pid, create_time) -> s
        self.role: dict[tuple[int, float], str] = {}  # (pid, create_time) -> what it is
        self.history: list[tuple[float, dict[str, float]]] = []
        """(time, CPU seconds so far per role) at every sample."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        total = 0
        for p in psutil.Process().children(recursive=True):
            try:
                with p.oneshot():
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    key = (p.pid, p.create_time())
                    self.cpu_seen[key] = t.user + t.system
                    role = role_of(p.cmdline())
                    if role != "ray idle worker" or key not in self.role:
                        self.role[key] = role
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)
        self.history.append((time.monotonic(), self.cpu_by_role()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds last seen, summed per role (short of each process's last interval)."""
        out: dict[str, float] = {}
        for key, cpu in self.cpu_seen.items():
            role = self.role.get(key, "other")
            out[role] = out.get(role, 0.0) + cpu
        return out


_ROLES = (("ray::IngestActor", "ingest actors"), ("ray::ScorerActor", "scorer actors"),
          ("ray::SinkActor", "sink actor"), ("ray::Supervisor", "supervisor"),
          ("ray::", "ray idle worker"))


def steady_cpu(history: list[tuple[float, dict[str, float]]],
               margin_s: float = 0.5) -> dict[str, Any]:
    """CPU cores each role used while the ingest actors were busy (start-up and shutdown
    left out): from the first sample at which the ingest actors' CPU grew to the last,
    less ``margin_s`` at each end. Empty when that window is under a second."""
    busy = [t for (t, a), (_, b) in itertools.pairwise(history)
            if b.get("ingest actors", 0.0) - a.get("ingest actors", 0.0) > 0.01]
    if len(busy) < 2:
        return {}
    start, end = busy[0] + margin_s, busy[-1] - margin_s
    inside = [(t, c) for t, c in history if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1.0:
        return {}
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    return {"window_s": t1 - t0,
            "cores": {k: (c1.get(k, 0.0) - c0.get(k, 0.0)) / (t1 - t0) for k in c1}}


def role_of(cmdline: list[str]) -> str:
    """What a process of a run is, from its command line (Ray titles its workers
    ``ray::<Actor>.<method>``)."""
    first = cmdline[0] if cmdline else ""
    for prefix, role in _ROLES:
        if first.startswith(prefix):
            return role
    text = " ".join(cmdline[:3])
    for part, role in (("raylet", "ray: raylet"), ("gcs_server", "ray: gcs"),
                       ("dashboard", "ray: agents"), ("runtime_env", "ray: agents"),
                       ("log_monitor", "ray: agents"), ("monitor.py", "ray: agents")):
        if part in text:
            return role
    return "driver and other"


def reap_leftovers(grace_s: float = 20.0) -> int:
    """Wait for what the command left running (Ray's daemons shutting down), then end
    it: our own descendants only, by pid. Returns how many had to be ended."""
    deadline = time.monotonic() + grace_s
    ended = 0
    while True:
        while True:  # reap the zombies adopted as subreaper
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return ended
            if pid == 0:
                break
        alive = []
        for p in psutil.Process().children():
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                continue
        if not alive:
            return ended
        if time.monotonic() > deadline:
            for p in alive:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        p.send_signal(sig)
                        p.wait(5)
                        break
                    except psutil.TimeoutExpired:
                        continue
                    except psutil.Error:
                        break
                ended += 1
        time.sleep(0.1)


class CpuGroup:
    """A cgroup of its own for one command: the kernel's count of the CPU used by every
    process in it, those already gone included (Ray's raylet reaps its workers without
    passing their rusage up, so the rusage of reaped children misses them). cgroup v1's
    cpuacct or v2's cpu.stat; ``None`` where neither can be made (then the bench falls
    back to the larger of rusage and the per-process CPU last seen by the sampler)."""

    ROOTS = (("/sys/fs/cgroup/cpuacct", "cpuacct.usage", 1e-9),
             ("/sys/fs/cgroup", "cpu.stat", 1e-6),
             ("/sys/fs/cgroup/unified", "cpu.stat", 1e-6))

    def __init__(self, path: Path, usage_file: str, scale: float) -> None:
        self.path, self.usage_file, self.scale = path, usage_file, scale

    @classmethod
    def make(cls) -> CpuGroup | None:
        for root, usage, scale in cls.ROOTS:
            if not (Path(root) / "cgroup.procs").exists():
                continue
            path = Path(root) / f"riffle-bench-peers-{uuid.uuid4().hex[:8]}"
            try:
                path.mkdir()
            except OSError:
                continue
            if (path / usage).exists():
                return cls(path, usage, scale)
            path.rmdir()
        return None

    def join(self) -> None:
        """In the child, before exec: the command and all it starts count here."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def cpu_s(self) -> float:
        text = (self.path / self.usage_file).read_text()
        if self.usage_file == "cpu.stat":
            text = text.split("usage_usec", 1)[1].split()[0]
        return int(text.split()[0]) * self.scale

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def measure(cmd: list[str], log: Path, broker_pid: int | None = None) -> Measured:
    """Run ``cmd`` to its end: its tree's wall time, CPU and peak RSS."""
    group = CpuGroup.make()
    cpu0, broker0 = children_cpu_s(), process_cpu_s(broker_pid)
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        # preexec_fn before the sampler's thread starts: the fork is single-threaded.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                preexec_fn=group.join if group else None)
    try:
        with TreeSampler() as tree:
            rc = proc.wait()
            wall = time.perf_counter() - t0
            leftovers = reap_leftovers()
        rusage = children_cpu_s() - cpu0
        seen = sum(tree.cpu_seen.values())
        cpu = group.cpu_s() if group is not None else max(rusage, seen)
    finally:
        if group is not None:
            group.remove()
    return Measured(rc=rc, wall_s=wall, cpu_s=cpu, cpu_rusage_s=rusage, cpu_seen_s=seen,
                    cpu_by_role=tree.cpu_by_role(), steady=steady_cpu(tree.history),
                    cpu_method="cgroup" if group else "max(rusage, sampled)",
                    peak_rss_mib=tree.peak / 2**20, leftovers=leftovers,
                    broker_cpu_s=process_cpu_s(broker_pid) - broker0 if broker_pid else None,
                    log=str(log))


# --- the systems ------------------------------------------------------------------------


def riffle_config(name: str, model: str, n_ingest: int, n_scorers: int,
                  source: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "source": source,
            "ingest": {"n_actors": n_ingest},
            "scoring": {"n_actors": n_scorers, "model": {"steps": MODELS[model]}},
            **(extra or {})}


def file_source(path: Path) -> dict[str, Any]:
    return {"kind": "file", "path": str(path), "partitions": FILE_PARTITIONS,
            "label_column": "label", "label_delay_events": LABEL_DELAY}


def kafka_section(bootstrap: str, topics: dict[str, str], group: str) -> dict[str, Any]:
    return {"kafka": {"bootstrap_servers": bootstrap, "group_id": group, "topics": topics},
            "output": {"kind": "kafka"}}


def kafka_topics(tag: str, system: str) -> dict[str, str]:
    """The shared input topics of this run; output topics of this system's own."""
    return {"events": f"peers-{tag}-events", "feedback": f"peers-{tag}-feedback",
            "predictions": f"peers-{tag}-{system}-predictions",
            "dead_letters": f"peers-{tag}-{system}-dead-letters",
            "models": f"peers-{tag}-{system}-models"}


def shape_of(system: str) -> tuple[int, int]:
    i, s = system.rsplit("-", 1)[1].split("x")
    return int(i), int(s)


def run_riffle(ctx: Context, system: str, model: str, config: dict[str, Any]) -> Row:
    """`riffle run` of ``config`` as a subprocess; its summary.json gives the rates."""
    work = ctx.work / f"{system}-{model}"
    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    out = work / "out"
    m = measure([*ctx.riffle, "run", str(cfg_path), "--out", str(out), "--no-progress"],
                work / "run.log", ctx.broker_pid if system in KAFKA_SYSTEMS else None)
    try:
        s = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError) as e:
        return failed(system, model, m, f"no summary.json ({e})")
    row = to_row(system, model, m, s["events"], s["events_per_s"], s.get("latency_ms", {}))
    row.extra |= {"elapsed_s": s.get("elapsed_s"), "scored": s.get("scored"),
                 "learned": s.get("learned"), "accuracy": s.get("metrics", {}).get("accuracy"),
                 "config": str(cfg_path)}
    ctx.tidy(out)
    return row


def run_peer(ctx: Context, system: str, model: str, args: list[str]) -> Row:
    """A peer of scripts/peer_loops.py as a subprocess; its result file gives the rates."""
    work = ctx.work / f"{system}-{model}"
    work.mkdir(parents=True, exist_ok=True)
    result = work / "result.json"
    m = measure([sys.executable, str(PEERS), *args, "--model", model, "--result", str(result)],
                work / "run.log", ctx.broker_pid if system in KAFKA_SYSTEMS else None)
    try:
        r = json.loads(result.read_text())
    except (OSError, ValueError) as e:
        return failed(system, model, m, f"no result ({e})")
    ctx.tidy(work / "predictions.jsonl")
    row = to_row(system, model, m, r["events"], r["events_per_s"], r["latency_ms"])
    row.extra["accuracy"] = r.get("accuracy")
    return row


def to_row(system: str, model: str, m: Measured, events: int, rate: float,
           latency: dict[str, float]) -> Row:
    return Row(system=system, model=model, events=events, events_per_s=rate,
               events_per_wall_s=events / m.wall_s if m.wall_s else 0.0,
               cpu_s_per_1k=m.cpu_s / events * 1000 if events else 0.0,
               p50_ms=latency.get("p50"), p99_ms=latency.get("p99"),
               peak_rss_mib=m.peak_rss_mib, wall_s=m.wall_s, broker_cpu_s=m.broker_cpu_s,
               error=None if m.rc == 0 else f"exit {m.rc} (log: {m.log})",
               extra={"cpu_s": m.cpu_s, "cpu_method": m.cpu_method,
                      "cpu_by_role": m.cpu_by_role, "steady": m.steady,
                      "cpu_rusage_s": m.cpu_rusage_s, "cpu_seen_s": m.cpu_seen_s,
                      "leftover_processes_ended": m.leftovers})


def failed(system: str, model: str, m: Measured, why: str) -> Row:
    return Row(system=system, model=model, wall_s=m.wall_s,
               error=f"{why}; exit {m.rc}, log: {m.log}")


def run_system(ctx: Context, system: str, model: str) -> Row:
    """One system on one model, over the model's share of the events (see --arf-events)."""
    work = ctx.work / f"{system}-{model}"
    n = ctx.events_for(model)
    if system == "riffle-1x2-half":
        full = ctx.rates.get(("riffle-1x2", model))
        if not full:
            return Row(system=system, model=model, error="needs riffle-1x2 first in this run")
        source = {**file_source(ctx.data_for(n)), "rate_per_s": round(full / 2)}
        return run_riffle(ctx, system, model, riffle_config(
            f"peers-{system}-{model}", model, 1, 2, source))
    if system in ("riffle-1x2-noaudit", "riffle-1x2-notelemetry", "riffle-1x2-reasons"):
        cfg = riffle_config(f"peers-{system}-{model}", model, 1, 2, file_source(ctx.data_for(n)))
        if system == "riffle-1x2-noaudit":
            cfg["audit"] = {"enabled": False}
        elif system == "riffle-1x2-notelemetry":
            cfg["telemetry"] = {"enabled": False}
        else:
            cfg["scoring"]["explain"] = {"top_k": 3}
        return run_riffle(ctx, system, model, cfg)
    if system in ("minimal", "bytewax", "riffle-cores"):
        return run_peer(ctx, system, model, [system, "--file", str(ctx.data_for(n)),
                                             "--out", str(work / "predictions.jsonl")])
    if system.startswith("riffle-kafka-"):
        i, s = shape_of(system)
        group = f"peers-{ctx.tag}-{system}-{model}"
        extra = kafka_section(ctx.bootstrap, ctx.topics_for(n, f"{system}-{model}"), group)
        source = {"kind": "kafka", "partitions": KAFKA_PARTITIONS,
                  "idle_stop_s": ctx.idle_stop_s}
        return run_riffle(ctx, system, model, riffle_config(group, model, i, s, source, extra))
    if system.startswith("riffle-"):
        i, s = shape_of(system)
        return run_riffle(ctx, system, model, riffle_config(
            f"peers-{system}-{model}", model, i, s, file_source(ctx.data_for(n))))
    topics = ctx.topics_for(n, f"{system}-{model}")
    ensure_topic(ctx.bootstrap, topics["predictions"])
    return run_peer(ctx, system, model, [
        system, "--bootstrap", ctx.bootstrap, "--events-topic", topics["events"],
        "--feedback-topic", topics["feedback"], "--predictions-topic", topics["predictions"],
        "--group", f"peers-{ctx.tag}-{system}-{model}", "--n", str(n)])


# --- the run's context: data, broker, topics ----------------------------------------------


@dataclass
class Context:
    work: Path
    riffle: list[str]
    events: int
    arf_events: int
    data: Path = Path()
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    bootstrap: str = ""
    broker_pid: int | None = None
    idle_stop_s: float = 3.0
    keep: bool = False
    prefixes: dict[int, Path] = field(default_factory=dict)
    loaded: dict[int, float] = field(default_factory=dict)
    rates: dict[tuple[str, str], float] = field(default_factory=dict)
    """events/s of each (system, model) run so far (riffle-1x2-half feeds at half)."""
    """Events loaded into Kafka topics of their own -> seconds the load took."""

    def events_for(self, model: str) -> int:
        """ARF (10 trees) costs ~50x a LogisticRegression: it runs on the file's first
        --arf-events lines, so the sweep ends in reasonable time."""
        if model == "arf" and 0 < self.arf_events < self.events:
            return self.arf_events
        return self.events

    def data_for(self, n: int) -> Path:
        """The sample file, or its first ``n`` lines."""
        if n >= self.events:
            return self.data
        if n not in self.prefixes:
            path = self.work / f"loans-first-{n}.jsonl"
            with open(self.data, "rb") as src, open(path, "wb") as dst:
                for _, line in zip(range(n), src, strict=False):
                    dst.write(line)
            self.prefixes[n] = path
        return self.prefixes[n]

    def topics_for(self, n: int, system: str) -> dict[str, str]:
        """Topics holding the first ``n`` events (loaded on first use); outputs of
        ``system``'s own."""
        topics = kafka_topics(f"{self.tag}-{n}", system)
        if n not in self.loaded:
            self.loaded[n] = load_kafka(self, self.data_for(n), topics)
        return topics

    def tidy(self, path: Path) -> None:
        """Outputs are large (a line per prediction): gone once read, unless --keep."""
        if self.keep:
            return
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def riffle_command(given: str | None) -> list[str]:
    if given:
        return shlex.split(given)
    beside = Path(sys.executable).with_name("riffle")
    found = str(beside) if beside.exists() else shutil.which("riffle")
    if not found:
        sys.exit("no `riffle` command beside this Python or on PATH: pip install -e '.[bench]'")
    return [found]


def make_sample(ctx: Context, n: int, name: str) -> Path:
    path = ctx.work / name
    subprocess.run([*ctx.riffle, "sample", str(path), "--events", str(n)], check=True,
                   cwd=ROOT, stdout=subprocess.DEVNULL)
    return path


def start_broker() -> tuple[str, Any]:
    """A broker that answers: RIFFLE_KAFKA_BOOTSTRAP's, or one of our own (own state dir,
    so a test broker of someone else's is never wiped)."""
    os.environ.setdefault("RIFFLE_KAFKA_TEST_STATE",
                          str(Path.home() / ".cache" / "riffle" / "kafka-bench-peers-state"))
    from tests.kafka_broker import ensure_broker

    return ensure_broker()


def broker_pid(bootstrap: str) -> int | None:
    port = bootstrap.rsplit(":", 1)[-1]
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "kafka.Kafka" in cmd:
            try:
                if any(c.laddr.port == int(port) for c in p.net_connections("inet")
                       if c.status == psutil.CONN_LISTEN):
                    return p.pid
            except psutil.Error:
                continue
    return None


def ensure_topic(bootstrap: str, name: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-peers")
    try:
        admin.create_topics([NewTopic(name, KAFKA_PARTITIONS, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def load_kafka(ctx: Context, data: Path, topics: dict[str, str]) -> float:
    """``data`` into the shared events and feedback topics (labels 20 events later),
    once for every Kafka system; returns the seconds it took."""
    cfg = ctx.work / f"produce-{topics['events']}.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "peers-produce", "source": {"kind": "kafka", "partitions": KAFKA_PARTITIONS},
        **kafka_section(ctx.bootstrap, topics, "unused")}))
    t0 = time.perf_counter()
    subprocess.run([*ctx.riffle, "produce", str(cfg), "--file", str(data),
                    "--label-delay-events", str(LABEL_DELAY)], check=True, cwd=ROOT)
    return time.perf_counter() - t0


# --- Ray's floor and riffle's fixed cost --------------------------------------------------


def fixed_cost(ctx: Context) -> dict[str, Any]:
    """Ray's own floor (ray.init, six actors importing River, shutdown) and `riffle run`
    of a 2,000-event file (1 ingest + 2 scoring, LogisticRegression), wall to exit."""
    small = make_sample(ctx, 2_000, "small.jsonl")
    floor = measure([sys.executable, str(PEERS), "ray-floor", "--actors", "6"],
                    ctx.work / "ray-floor.log")
    work = ctx.work / "fixed-cost"
    work.mkdir(exist_ok=True)
    cfg = work / "config.yaml"
    cfg.write_text(yaml.safe_dump(riffle_config("peers-fixed-cost", "logreg", 1, 2,
                                                file_source(small)), sort_keys=False))
    run = measure([*ctx.riffle, "run", str(cfg), "--out", str(work / "out"), "--no-progress"],
                  work / "run.log")
    return {"ray_floor_s": floor.wall_s, "ray_floor_rc": floor.rc,
            "riffle_2k_s": run.wall_s, "riffle_2k_rc": run.rc,
            "over_floor_s": run.wall_s - floor.wall_s,
            "target_met": run.rc == 0 and run.wall_s <= floor.wall_s + 3.0}


# --- report -------------------------------------------------------------------------------


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(rows: list[Row], model: str, n: int) -> str:
    """One model's rows; 'vs loop' is against the minimal loop (file rows) or the
    kafka-python loop (Kafka rows)."""
    base = {"file": next((r.events_per_s for r in rows if r.system == "minimal"
                          and r.model == model and not r.error), None),
            "kafka": next((r.events_per_s for r in rows if r.system == "kafka-loop"
                           and r.model == model and not r.error), None)}
    steps = " | ".join(s["name"].rsplit(".", 1)[1] for s in MODELS[model])
    lines = [f"### {model}: {steps}, {n:,} events",
             "", "| system | events | events/s | vs loop | events/s of wall | CPU s / 1k ev "
             "| p50 ms | p99 ms | peak RSS MiB | wall s | broker CPU s | accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in rows if r.model == model):
        if r.error:
            lines.append(f"| {r.system} | failed: {r.error} ||||||||||| ")
            continue
        b = base["kafka" if r.system in KAFKA_SYSTEMS else "file"]
        vs = f"{r.events_per_s / b:.2f}x" if b else "-"
        lines.append(
            f"| {r.system} | {r.events:,} | {r.events_per_s:,.0f} | {vs} | "
            f"{r.events_per_wall_s:,.0f} | {r.cpu_s_per_1k:.3f} | {fmt(r.p50_ms, '.2f')} | "
            f"{fmt(r.p99_ms, '.2f')} | {r.peak_rss_mib:,.0f} | {r.wall_s:.1f} | "
            f"{fmt(r.broker_cpu_s, '.1f')} | {fmt(r.extra.get('accuracy'), '.4f')} |")
    return "\n".join(lines)


def chart(rows: list[Row], models: list[str], path: Path) -> None:
    """Events/s per system, a panel per model (each its own scale); riffle's bars blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(dict.fromkeys(r.system for r in rows))
    rate = {(r.system, r.model): (0.0 if r.error else r.events_per_s) for r in rows}
    shown = [m for m in models if any(r.model == m for r in rows)]
    fig, axes = plt.subplots(len(shown), 1, squeeze=False,
                             figsize=(max(6.0, 0.9 * len(systems) + 2), 2.8 * len(shown) + 0.8))
    for ax, model in zip(axes[:, 0], shown, strict=True):
        colors = ["tab:blue" if s.startswith("riffle") else "tab:gray" for s in systems]
        bars = ax.bar(range(len(systems)), [rate.get((s, model), 0.0) for s in systems],
                      color=colors)
        ax.bar_label(bars, fmt="{:,.0f}", fontsize=8, padding=2)
        ax.set_title(model, fontsize=10, loc="left")
        ax.set_ylabel("events/s")
        ax.margins(y=0.2)
        ax.set_xticks(range(len(systems)), systems if ax is axes[-1, 0] else [],
                      rotation=30, ha="right")
    fig.suptitle("riffle (blue) and its peers: same data, same model, labels 20 events later",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for pkg in ("riffle-ml", "ray", "river", "bytewax", "quixstreams", "kafka-python",
                "confluent-kafka", "orjson"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


# --- main ---------------------------------------------------------------------------------


def pick_systems(only: str | None, kafka: bool) -> list[str]:
    every = FILE_SYSTEMS + (KAFKA_SYSTEMS if kafka else [])
    if not only:
        return [*every, "floor"]
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in [*FILE_SYSTEMS, *KAFKA_SYSTEMS, "floor"]]
    if unknown:
        sys.exit(f"unknown systems {unknown}; known: {[*FILE_SYSTEMS, *KAFKA_SYSTEMS, 'floor']}")
    return [s for s in wanted if kafka or s not in KAFKA_SYSTEMS]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--models", default="logreg,htree,arf",
                    help=f"comma-separated, of {sorted(MODELS)}")
    ap.add_argument("--model", help="one model (same as --models MODEL)")
    ap.add_argument("--arf-events", type=int, default=50_000,
                    help="ARF runs on the file's first N lines (0: all of it)")
    ap.add_argument("--only", help="comma-separated systems, e.g. minimal,bytewax,riffle-1x2 "
                    "(add 'floor' for Ray's floor); default: all")
    ap.add_argument("--no-kafka", action="store_true", help="skip the Kafka systems")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench-peers")
    ap.add_argument("--workdir", type=Path, help="default: a temporary folder, removed after")
    ap.add_argument("--keep", action="store_true", help="keep predictions and riffle's out dirs")
    ap.add_argument("--riffle", help="the riffle command (default: the `riffle` beside this "
                    "Python)")
    args = ap.parse_args()
    args.models = [args.model] if args.model else args.models.split(",")
    if unknown := [m for m in args.models if m not in MODELS]:
        ap.error(f"unknown models {unknown}; known: {sorted(MODELS)}")
    return args


def run_all(ctx: Context, systems: list[str], models: list[str]) -> list[Row]:
    rows = []
    for model in models:
        for system in (s for s in systems if s != "floor"):
            print(f"... {system} / {model}", file=sys.stderr, flush=True)
            row = run_system(ctx, system, model)
            rows.append(row)
            ctx.rates[system, model] = row.events_per_s
            print(f"    {row.events:,} events, {row.events_per_s:,.0f}/s, "
                  f"wall {row.wall_s:.1f} s{'  ' + row.error if row.error else ''}",
                  file=sys.stderr, flush=True)
    return rows


def main() -> None:
    args = parse_args()
    systems = pick_systems(args.only, not args.no_kafka)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="riffle-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(work=work, riffle=riffle_command(args.riffle), events=args.events,
                  arf_events=args.arf_events, keep=args.keep)
    stop_broker = None
    t0 = time.perf_counter()
    report: dict[str, Any] = {"versions": versions(), "events": args.events,
                              "label_delay_events": LABEL_DELAY, "models": args.models}
    try:
        ctx.data = make_sample(ctx, args.events, "loans.jsonl")
        if any(s in KAFKA_SYSTEMS for s in systems):
            ctx.bootstrap, stop_broker = start_broker()
            ctx.broker_pid = broker_pid(ctx.bootstrap)
        report["subreaper"] = become_subreaper()  # after the broker: not one of ours
        rows = run_all(ctx, systems, args.models)
        if "floor" in systems:
            report["fixed_cost"] = fixed_cost(ctx)
    finally:
        if stop_broker is not None:
            stop_broker()
        if not args.workdir and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["kafka_load_s"] = ctx.loaded
    report["events_by_model"] = {m: ctx.events_for(m) for m in args.models}
    report["rows"] = [asdict(r) for r in rows]
    report["total_s"] = time.perf_counter() - t0
    print_report(report, rows, args)


def marginal_cpu(rows: list[Row]) -> str:
    """Where riffle's cores go, role by role, while it runs at full speed: CPU cores used per
    role over the busy window (steady_cpu), and the CPU us per event that makes at the run's
    events/s."""
    out = ["\nriffle at full speed, CPU by role while the ingest actors were busy "
           "(us per event = cores / events per s; sampled per process every 0.25 s):\n",
           "| system | model | " + " | ".join(ROLE_ORDER) + " | total |",
           "|---|---|" + "---:|" * (len(ROLE_ORDER) + 1)]
    for r in rows:
        cores = (r.extra.get("steady") or {}).get("cores")
        if not r.system.startswith("riffle-") or r.system == "riffle-cores" or not cores \
                or r.error or not r.events_per_s:
            continue
        per = {k: cores.get(k, 0.0) / r.events_per_s * 1e6 for k in ROLE_ORDER}
        out.append(f"| {r.system} | {r.model} | "
                   + " | ".join(f"{per[k]:.1f}" for k in ROLE_ORDER)
                   + f" | {sum(per.values()):.1f} ({sum(cores.values()):.2f} cores) |")
    return "\n".join(out)


ROLE_ORDER = ("ingest actors", "scorer actors", "sink actor", "supervisor", "ray: raylet",
              "ray: gcs", "ray: agents", "ray idle worker", "driver and other")


def print_report(report: dict[str, Any], rows: list[Row], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(report, indent=2))
    if rows:
        chart(rows, args.models, args.out / "peers.png")
    v = report["versions"]
    print(f"{args.events:,} events, labels {LABEL_DELAY} events later; "
          + ", ".join(f"{k} {val}" for k, val in v.items()) + "\n")
    for model in args.models:
        if any(r.model == model for r in rows):
            print(table(rows, model, report["events_by_model"][model]) + "\n")
    if fc := report.get("fixed_cost"):
        print(f"fixed cost: Ray's floor (ray.init, 6 actors importing River, shutdown) "
              f"{fc['ray_floor_s']:.1f} s; `riffle run` of 2,000 events {fc['riffle_2k_s']:.1f} s "
              f"({fc['over_floor_s']:+.1f} s over the floor; target floor + 3 s: "
              f"{'met' if fc['target_met'] else 'not met'})")
    print(marginal_cpu(rows))
    print(f"\n{args.out / 'peers.json'}, {args.out / 'peers.png'}; "
          f"whole run {report['total_s']:.0f} s")


if __name__ == "__main__":
    main()
