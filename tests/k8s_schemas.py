"""Offline checks of the manifests in ``k8s/`` (used by ``tests/unit/test_k8s_manifests.py``).

- KubeRay kinds against the CRDs' own OpenAPI v3 schemas (``ray.io/v1``), made strict:
  an object that lists ``properties`` takes no other field unless the schema says
  ``x-kubernetes-preserve-unknown-fields`` (what the API server does on a strict apply);
- built-in kinds against Kubernetes' own JSON schemas (``kubernetes-validate``, strict);
- the overlays rendered by kustomize itself (``kustomize build``, or ``kubectl kustomize``
  which has it built in);
- the strings KubeRay hands to Ray: ``serveConfigV2`` against Ray Serve's
  ``ServeDeploySchema`` (and no key it would ignore), runtime envs against
  ``ray.runtime_env.RuntimeEnv``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import yaml

KUBERAY_KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
                 "RayService": "ray.io_rayservices.yaml"}
KUBERNETES_VERSION = "1.32.0"
"""The Kubernetes release whose schemas the built-in kinds are checked against."""


def crd_dir(repo: Path) -> Path:
    """The KubeRay CRDs: ``RIFFLE_KUBERAY_CRDS``, else ``../shared/kuberay-crds`` beside
    the repository (as in CI), else the workplace's shared folder."""
    for candidate in (os.environ.get("RIFFLE_KUBERAY_CRDS"), repo.parent / "shared" /
                      "kuberay-crds", Path("/work/shared/kuberay-crds")):
        if candidate and (Path(candidate) / KUBERAY_KINDS["RayCluster"]).is_file():
            return Path(candidate)
    raise AssertionError("the KubeRay CRDs are not found: set RIFFLE_KUBERAY_CRDS to a folder "
                         f"with {sorted(KUBERAY_KINDS.values())}")


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever it names the known ones (changed
    in place, and returned)."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.cache
def _crd_validator(path: str) -> jsonschema.Draft7Validator:
    # libyaml's loader: a CRD is ~1 MB of YAML (10 s for the pure-Python loader)
    crd = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(strict(v1["schema"]["openAPIV3Schema"]))


def crd_errors(doc: dict[str, Any], crds: Path) -> list[str]:
    """Why ``doc`` (a KubeRay kind) breaks its CRD's strict schema; empty if it does not."""
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion {doc.get('apiVersion')!r}, expected 'ray.io/v1'"]
    validator = _crd_validator(str(crds / KUBERAY_KINDS[doc["kind"]]))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(doc)]


def builtin_errors(doc: dict[str, Any]) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    return []


def kustomize_cmd() -> list[str]:
    """kustomize itself, or kubectl's built-in copy; the tests fail (never skip) without."""
    cached = Path.home() / ".cache" / "riffle" / "bin" / "kustomize"  # make test-deps
    if exe := shutil.which("kustomize") or (str(cached) if cached.is_file() else None):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        return [exe, "kustomize"]
    raise AssertionError("neither kustomize nor kubectl is on PATH: `make test-deps` installs "
                         "kustomize (go install sigs.k8s.io/kustomize/kustomize/v5)")


def render(folder: Path) -> list[dict[str, Any]]:
    """A kustomization rendered by kustomize."""
    proc = subprocess.run([*kustomize_cmd(), str(folder)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"kustomize {folder}: {proc.stderr.strip()}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def documents(folder: Path) -> list[dict[str, Any]]:
    """The base's resources as written (every file its kustomization lists)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((folder / name).read_text()) if d]
    return docs


def serve_config_errors(text: str) -> list[str]:
    """Why a ``serveConfigV2`` string would not deploy: Serve's schema refuses it, or it
    holds a key Serve would silently ignore (a typo: the schema allows extra keys)."""
    import pydantic
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(text)
    try:
        parsed = ServeDeploySchema.model_validate(raw)
    except pydantic.ValidationError as e:
        return [str(e)]
    errors = _unknown_keys(raw, parsed.model_dump(exclude_unset=True), "serveConfigV2")
    for app in raw.get("applications", []):
        errors += runtime_env_errors(app.get("runtime_env") or {})
        for deployment in app.get("deployments", []):
            if "autoscaling_config" in deployment:
                try:
                    AutoscalingConfig.model_validate(deployment["autoscaling_config"])
                except pydantic.ValidationError as e:
                    errors.append(f"{deployment.get('name')}: autoscaling_config: {e}")
    return errors


def _unknown_keys(given: Any, kept: Any, where: str) -> list[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        out = [f"{where}.{k}: not a field Serve knows" for k in given if k not in kept]
        for k in given.keys() & kept.keys():
            out += _unknown_keys(given[k], kept[k], f"{where}.{k}")
        return out
    if isinstance(given, list) and isinstance(kept, list):
        return [e for i, (g, k) in enumerate(zip(given, kept, strict=False))
                for e in _unknown_keys(g, k, f"{where}[{i}]")]
    return []


def runtime_env_errors(env: dict[str, Any]) -> list[str]:
    from ray.runtime_env import RuntimeEnv

    try:
        RuntimeEnv(**env)
    except Exception as e:  # Ray raises ValueError, TypeError or its own errors
        return [f"runtime_env: {type(e).__name__}: {e}"]
    return []
