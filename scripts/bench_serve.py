"""The scoring service's speed on this machine, beside the embedded path (the stream).

1. The stream: ``riffle run`` of the default LR pipeline on N synthetic events (events/s
   from its summary: scoring embedded in the data path, no request at all); it leaves
   committed checkpoints in the registry.
2. The service (``actors.serving.run_service``, what ``riffle serve`` runs) on the same
   config, in a child process per mode (it serves the stream's model as of its last
   checkpoint), loaded over loopback by a bounded client
   (wrk if on PATH, else aiohttp; keep-alive, C concurrent requests in a closed loop):
   single-record requests (req/s, p50/p99), batches of 100 records (records/s), then
   single records paced at half the measured rate (p99 at half load).
   ``--modes`` runs the service in Serve's throughput-optimized mode and/or its default;
   in the optimized mode, through Serve's proxy and straight at the replica's own port
   (direct ingress: what a load balancer in front of the replicas would do).

    .venv/bin/python scripts/bench_serve.py [--events 100000] [--seconds 10] [--clients 32]

The load client shares the machine's cores with Serve (proxy and replicas): the figures
are what one box does end to end, client included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def _config(out: Path, events: int, *, mode: str, replicas: int, port: int) -> Path:
    cfg = {"name": "bench", "source": {"kind": "synthetic", "partitions": 2,
                                       "n_events": events, "seed": 7},
           "output": {"out_dir": str(out)},
           "serving": {"port": port, "num_replicas": replicas, "num_cpus": 0.5,
                       "max_ongoing_requests": 256, "throughput_optimized": mode != "default",
                       "ingress": "haproxy" if mode == "haproxy" else "proxy",
                       "max_batch": 1000}}
    path = out.parent / f"bench-{mode}-{replicas}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _riffle(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stream(config: Path) -> float:
    proc = _riffle("run", str(config))
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"riffle run failed:\n{out.decode()[-2000:]}")
    summary = orjson.loads((Path(yaml.safe_load(config.read_text())["output"]["out_dir"])
                            / "summary.json").read_bytes())
    return float(summary["events_per_s"])


def _record(i: int) -> dict[str, Any]:
    return {"key": f"user-{i % 5000}", "features": {
        "salary": 20000.0 + (i * 37) % 130000, "commission": float((i * 13) % 75000),
        "age": 20.0 + i % 60, "elevel": float(i % 5), "car": float(1 + i % 20),
        "zipcode": float(i % 9), "hvalue": 50000.0 + (i * 7) % 900000,
        "hyears": float(1 + i % 30), "loan": float((i * 11) % 500000)}}


def _body(i: int, batch: int) -> bytes:
    return orjson.dumps({"record": _record(i)} if batch == 1 else
                        {"records": [_record(i * batch + j) for j in range(batch)]})


_WRK = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "{key}"
wrk.body = [==[{body}]==]
{delay}
done = function(summary, latency, requests)
  io.write(string.format("WRK %d %d %d %f %f\\n", summary.requests, summary.duration,
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def _wrk(url: str, *, clients: int, seconds: float, batch: int,
         rate: float | None = None) -> dict[str, float]:
    """The same load from wrk (C, one thread): a few percent of a core, where the
    Python client takes about as much CPU as the service. One body for every request
    (the Python client rotates 256; a key's arm and scorer cost the same). Paced: each
    connection waits ``clients / rate`` after each answer (the rate reached is reported,
    a little under the one asked)."""
    delay = (f"delay = function() return {1000 * clients / rate:.3f} end"
             if rate is not None else "")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK.format(key=KEY, body=_body(7, batch).decode(), delay=delay))
    try:
        cmd = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(seconds))}s", "-s", f.name,
               f"{url}/v1/predict"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    finally:
        os.unlink(f.name)
    line = next((x for x in out.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result for {url}:\n{out[-1000:]}")
    n, micros, failed, p50, p99 = (float(v) for v in line.split()[1:])
    spent = micros / 1e6
    return {"requests_per_s": n / spent, "records_per_s": n * batch / spent,
            "p50_ms": p50, "p99_ms": p99, "failed": int(failed), "requests": int(n)}


async def _load(url: str, *, clients: int, seconds: float, batch: int,
                rate: float | None = None) -> dict[str, float]:
    import aiohttp

    headers = {"X-API-Key": KEY, "content-type": "application/json"}
    bodies = [_body(i, batch) for i in range(256)]
    latencies: list[float] = []
    failed = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)

    async def worker(w: int, session: aiohttp.ClientSession) -> None:
        nonlocal failed
        i = w
        # Paced workers start staggered (worker w at w/rate), so the load is an even
        # stream of requests, not a burst of every client at once each period.
        next_at = time.perf_counter() + (w / rate if rate is not None else 0.0)
        while (now := time.perf_counter()) < stop_at:
            if rate is not None:
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at += clients / rate
            started = time.perf_counter()
            async with session.post(f"{url}/v1/predict", data=bodies[i % 256],
                                    headers=headers) as r:
                await r.read()
                if r.status != 200:
                    failed += 1
            latencies.append(time.perf_counter() - started)
            i += clients

    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        await asyncio.gather(*(worker(w, session) for w in range(clients)))
        spent = time.perf_counter() - began
    latencies.sort()
    n = len(latencies)
    return {"requests_per_s": n / spent, "records_per_s": n * batch / spent,
            "p50_ms": 1000 * latencies[n // 2], "p99_ms": 1000 * latencies[int(n * 0.99)],
            "failed": failed, "requests": n}


def _loads(url: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.client == "wrk":
        def load(**kw: Any) -> dict[str, float]:
            return _wrk(url, **kw)
    else:
        def load(**kw: Any) -> dict[str, float]:
            return asyncio.run(_load(url, **kw))
    load(clients=8, seconds=2, batch=1)  # warm up
    single = load(clients=args.clients, seconds=args.seconds, batch=1)
    batched = load(clients=max(args.clients // 4, 2), seconds=args.seconds, batch=100)
    half = load(clients=args.clients, seconds=args.seconds, batch=1,
                rate=single["requests_per_s"] / 2)
    return {"single": single, "batched": batched, "half": half}


def _child(config: Path, mode: str, args: argparse.Namespace) -> None:
    """One mode in this process: the service started here (Serve's flags are read when
    its processes start), loaded through Serve's proxy and, with direct ingress, straight
    at the replica's own HTTP port (what a load balancer in front of replicas does)."""
    os.environ["RIFFLE_SERVE_KEYS"] = f"bench:admin:{KEY}"
    from actors.serving import direct_urls, run_service, stop_service
    from pipelines.config import load_config

    cfg = load_config(config)
    url = run_service(cfg)
    out: dict[str, Any] = {}
    try:
        out["proxy"] = _loads(url, args)
        if mode == "optimized":  # the replica's own port, past the proxy
            direct = direct_urls(cfg)
            if direct:
                try:
                    out["direct"] = _loads(direct[0], args)
                except OSError as e:  # aiohttp's connection errors: the proxy's rows stand
                    out["direct_error"] = f"{direct[0]}: {e}"
    finally:
        stop_service()
    print("RESULT " + orjson.dumps(out).decode(), flush=True)


def _serve_and_load(config: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ}
    if mode == "default":
        env.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None)
    cmd = [sys.executable, __file__, "--child", mode, "--config", str(config),
           "--seconds", str(args.seconds), "--clients", str(args.clients),
           "--client", args.client]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = orjson.loads(line[7:])
            return result
    raise SystemExit(f"{mode}: no result\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--port", type=int, default=18431)
    ap.add_argument("--modes", default="haproxy,optimized,default",
                    help="haproxy (serving.ingress haproxy), optimized (Serve's proxy, "
                         "RAY_SERVE_THROUGHPUT_OPTIMIZED=1; and the replica's own port), "
                         "default (Serve's proxy, its defaults)")
    ap.add_argument("--client", choices=["wrk", "aiohttp"],
                    default="wrk" if shutil.which("wrk") else "aiohttp",
                    help="the load client (wrk if on PATH: apt-get install wrk)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.config, args.child, args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        out = Path(tmp) / "out"
        first = _config(out, args.events, mode="optimized", replicas=args.replicas,
                        port=args.port)
        embedded = _stream(first)
        print(f"embedded (riffle run, {args.events:,} events, same LR model): "
              f"{embedded:,.0f} records/s")
        rows = []
        for mode in args.modes.split(","):
            config = first if mode == "optimized" else _config(
                out, args.events, mode=mode, replicas=args.replicas, port=args.port)
            found = _serve_and_load(config, mode, args)
            for route, r in ((k, v) for k, v in found.items() if not k.endswith("_error")):
                rows.append((f"{mode}, {route}", r))
                print(f"{mode} {route}: {orjson.dumps(r).decode()}", flush=True)
    print()
    print(f"load client: {args.client}")
    print(f"| path | single-record req/s (p50 / p99 ms, {args.clients} clients) "
          "| records/s, batches of 100 | p99 ms at half load | failed |")
    print("|---|---|---|---|---|")
    print(f"| embedded (stream) | - | {embedded:,.0f} | - | - |")
    for mode, r in rows:
        s, b, h = r["single"], r["batched"], r["half"]
        print(f"| Serve {mode}, {args.replicas} replica(s) | {s['requests_per_s']:,.0f} "
              f"({s['p50_ms']:.1f} / {s['p99_ms']:.1f}) | {b['records_per_s']:,.0f} | "
              f"{h['p99_ms']:.1f} (at {h['requests_per_s']:,.0f} req/s) | "
              f"{s['failed'] + b['failed'] + h['failed']} |")


if __name__ == "__main__":
    main()
