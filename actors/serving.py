"""The scoring service on Ray Serve: the Ray shell of :mod:`pipelines.serving`.

One deployment, ``ScoringReplica``: each replica holds a
:class:`~pipelines.serving.service.ServingCore` (models, keys, feedback stream) and
serves its FastAPI application (``__serve_build_asgi_app__``: the app is built on the
replica, around its core). There is no second deployment behind it: a record is scored
where its request lands, so a request costs one hop (proxy to replica), not two.

Each replica follows the registry on its own (a thread of the core): the stream records
every deployment it applies, and a replica swaps to it within
``serving.poll_interval_s`` — no Serve redeploy, no replica restart, no driver that
must push it (``reconfigure`` with a ``user_config`` would need one for every change).

``build_app`` is the application builder for ``serve run actors.serving:build_app
config=configs/x.yaml`` / ``serve deploy`` / a RayService; ``riffle serve`` uses
:func:`run_service`. The module lives in ``actors/`` because it imports Ray.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ray import serve

from pipelines.config import PipelineConfig, load_config
from pipelines.serving.auth import load_keys
from pipelines.serving.routes import make_api
from pipelines.serving.service import ServingCore, serve_env

__all__ = ["ScoringReplica", "build_app", "direct_urls", "run_service", "stop_service"]


@serve.deployment(name="ScoringReplica", health_check_period_s=2.0,
                  health_check_timeout_s=30.0, graceful_shutdown_timeout_s=5.0)
@serve.ingress()
class ScoringReplica:
    def __init__(self, config: PipelineConfig, out_dir: str | None = None) -> None:
        try:
            replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside a replica (a test of the class itself)
            replica = None
        self._core = ServingCore(config, keys=load_keys(config.serving.keys_file),
                                 out_dir=Path(out_dir) if out_dir else None, replica=replica)
        self._core.start()

    def __serve_build_asgi_app__(self) -> Any:
        return make_api(self._core)

    def check_health(self) -> None:
        if not self._core.alive():
            raise RuntimeError("the registry follower stopped")

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None:
            core.close()


def deployment_for(config: PipelineConfig) -> Any:
    s = config.serving
    options: dict[str, Any] = {"max_ongoing_requests": s.max_ongoing_requests,
                               "ray_actor_options": {"num_cpus": s.num_cpus},
                               "logging_config": {"enable_access_log": s.request_log}}
    if s.autoscaling_config is not None:
        options["autoscaling_config"] = s.autoscaling_config.model_dump()
    else:
        options["num_replicas"] = s.num_replicas
    return ScoringReplica.options(**options)


def build_app(args: dict[str, str]) -> Any:
    """The Serve application of ``args["config"]`` (``out``: the run's output folder if
    not the config's). The keys are checked here, so a service nobody could call fails
    to deploy rather than answering 401 to everyone."""
    if "config" not in args:
        raise ValueError("build_app needs config=PATH (the pipeline's YAML)")
    cfg = load_config(args["config"])
    load_keys(cfg.serving.keys_file)
    return deployment_for(cfg).bind(cfg, args.get("out"))


def run_service(config: PipelineConfig, *, out_dir: Path | None = None,
                host: str | None = None, port: int | None = None) -> str:
    """Start Ray (unless joining one) and Serve, deploy the service, return its URL once
    every replica is up."""
    from actors.driver import ensure_ray

    for name, value in serve_env(config).items():
        os.environ.setdefault(name, value)
    load_keys(config.serving.keys_file)
    ensure_ray(config.runtime.num_cpus)
    host = host or config.serving.host
    port = port or config.serving.port
    serve.start(http_options={"host": host, "port": port})
    app = deployment_for(config).bind(config, str(out_dir) if out_dir else None)
    serve.run(app, name=config.name, route_prefix="/")
    return f"http://{host}:{port}"


def direct_urls(config: PipelineConfig) -> list[str]:
    """With direct ingress (the throughput-optimized mode), each replica's own HTTP
    address: what a load balancer in front of the replicas targets, past Serve's proxy.
    Empty without it. (Serve's controller knows them; it has no public API for it yet.)"""
    import ray
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        return []
    try:
        groups = ray.get(client._controller.get_target_groups.remote(config.name))
        http = ray.get(client._controller.get_http_config.remote())
    except Exception:  # an older or newer Serve without it: the proxy still serves
        return []
    # A replica's server binds Serve's HTTP host: the node's address (what the targets
    # name) is reachable only when that host is every interface; else it is the host
    # itself (loopback, by default).
    return [f"http://{t.ip if http.host in ('0.0.0.0', '::') else http.host}:{t.port}"
            for g in groups if g.protocol == "HTTP"
            for t in g.targets if t.port != http.port]


def stop_service() -> None:
    """Serve down (its replicas closed), then the Ray this process started."""
    from actors.driver import shutdown_ray

    serve.shutdown()
    shutdown_ray()
