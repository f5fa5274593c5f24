"""Every manifest in ``k8s/`` checked offline, as a cluster would check it on apply, and
the image they run built from dependencies that are pyproject's (``tests/k8s_schemas.py``
says how each kind is checked)."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from pipelines.config import PipelineConfig
from tests.k8s_schemas import (
    KUBERAY_KINDS,
    builtin_errors,
    crd_dir,
    crd_errors,
    documents,
    render,
    runtime_env_errors,
    serve_config_errors,
)

REPO = Path(__file__).parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")


@pytest.fixture(scope="module")
def crds() -> Path:
    return crd_dir(REPO)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """The base as written, and each overlay as kustomize renders it."""
    out = {"base": documents(K8S / "base")}
    for overlay in OVERLAYS:
        out[overlay] = render(K8S / "overlays" / overlay)
    return out


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_k8s_every_manifest_matches_its_schema_strictly(
        rendered: dict[str, list[dict[str, Any]]], crds: Path) -> None:
    for variant, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"RayCluster", "RayJob", "RayService", "ConfigMap",
                "ServiceAccount"} <= kinds, (variant, kinds)
        # prod's Secret is made out of band: its placeholders are never applied there
        assert ("Secret" in kinds) == (variant != "prod"), (variant, kinds)
        for doc in docs:
            errors = (crd_errors(doc, crds) if doc["kind"] in KUBERAY_KINDS
                      else builtin_errors(doc))
            assert not errors, f"{variant}: {doc['kind']}/{doc['metadata']['name']}: {errors}"


def test_k8s_schema_check_refuses_an_unknown_field(
        rendered: dict[str, list[dict[str, Any]]], crds: Path) -> None:
    """The negative cases: the checks above can fail."""
    cluster = copy.deepcopy(by_kind(rendered["base"], "RayCluster")[0])
    cluster["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4  # a typo of maxReplicas
    assert any("maxReplica" in e for e in crd_errors(cluster, crds))
    nested = copy.deepcopy(by_kind(rendered["base"], "RayCluster")[0])
    nested["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "x"
    assert any("imagePullPolice" in e for e in crd_errors(nested, crds))
    job = copy.deepcopy(by_kind(rendered["base"], "RayJob")[0])
    job["spec"]["shutdownAfterJobFinishes"] = "yes"  # a string for a boolean
    assert crd_errors(job, crds)
    account = copy.deepcopy(by_kind(rendered["base"], "ServiceAccount")[0])
    account["automountToken"] = False
    assert builtin_errors(account)
    secret = copy.deepcopy(by_kind(rendered["base"], "Secret")[0])
    secret["stringData"] = ["not", "a", "map"]
    assert builtin_errors(secret)


def serve_config(docs: list[dict[str, Any]]) -> str:
    text: str = by_kind(docs, "RayService")[0]["spec"]["serveConfigV2"]
    return text


def test_k8s_embedded_serve_config_and_runtime_envs_are_rays_own(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant, docs in rendered.items():
        assert serve_config_errors(serve_config(docs)) == [], variant
        apps = yaml.safe_load(serve_config(docs))["applications"]
        assert [a["import_path"] for a in apps] == ["actors.serving:build_app"]
        scaling = apps[0]["deployments"][0]["autoscaling_config"]
        assert scaling["min_replicas"] < scaling["max_replicas"]
        for job in by_kind(docs, "RayJob"):
            env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
            assert runtime_env_errors(env) == [], variant
            assert job["spec"]["entrypoint"].startswith("riffle run /etc/riffle/pipeline.yaml")
    # ...and they can fail.
    bad = serve_config(rendered["base"]).replace("import_path:", "import_pth:")
    assert serve_config_errors(bad)
    typo = serve_config(rendered["base"]).replace("max_ongoing_requests:", "max_ongoing:")
    assert any("max_ongoing" in e for e in serve_config_errors(typo))
    scale = serve_config(rendered["base"]).replace("min_replicas: 2", "min_replicas: -1")
    assert serve_config_errors(scale)
    assert runtime_env_errors({"pip": 42})


def test_k8s_pipeline_configs_are_valid_riffle_configs(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    for variant, docs in rendered.items():
        (config_map,) = [d for d in by_kind(docs, "ConfigMap")
                         if d["metadata"]["name"] == "riffle-pipeline"]
        config = PipelineConfig.model_validate(yaml.safe_load(config_map["data"]["pipeline.yaml"]))
        assert config.source.kind == "kafka" and config.ingest.n_actors <= config.source.partitions
        # Placement by a custom resource needs a worker group that offers it.
        cluster = by_kind(docs, "RayCluster")[0]
        offered = {k for g in cluster["spec"]["workerGroupSpecs"] for k in g.get("resources", {})}
        assert set(config.runtime.placement.scoring) <= offered, variant
        # Secrets never in the config: the password is the Secret's, read from the env.
        assert "password" not in config_map["data"]["pipeline.yaml"].lower()
        # ...and every pod takes it from the Secret the manifests name.
        refs = {ref["secretRef"]["name"] for d in docs for c in _containers(d)
                for ref in c.get("envFrom", [])}
        assert refs == {"riffle-secrets"}, (variant, refs)
    assert "RIFFLE_KAFKA_PASSWORD" in by_kind(rendered["base"], "Secret")[0]["stringData"]


def test_k8s_overlays_set_namespace_image_and_scale(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    maxima = {}
    for variant in OVERLAYS:
        docs = rendered[variant]
        assert {d["metadata"].get("namespace") for d in docs} == {f"riffle-{variant}"}
        images = {c["image"] for d in docs for c in _containers(d)}
        assert len(images) == 1 and not images & {"riffle:0.1.0"}, images
        group = by_kind(docs, "RayCluster")[0]["spec"]["workerGroupSpecs"][0]
        assert group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        maxima[variant] = group["maxReplicas"]
    assert maxima["dev"] < maxima["prod"]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                found.extend(node["containers"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc.get("spec", {}))
    return found


def test_dockerfile_installs_pyprojects_dependencies_and_the_manifests_ray() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    install = re.search(r'RUN pip install --no-cache-dir \\\n((?:\s+"[^"]+"(?: \\)?\n)+)',
                        dockerfile)
    assert install, "the Dockerfile's dependency layer (RUN pip install ...) is not found"
    in_image = [Requirement(r) for r in re.findall(r'"([^"]+)"', install.group(1))]
    wanted = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    assert [str(r) for r in in_image] == [str(r) for r in wanted]
    base = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py(\d)(\d+)", dockerfile, re.M)
    assert base, "the image is not built on Ray's own"
    ray_req = next(r for r in wanted if r.name == "ray")
    assert ray_req.specifier.contains(base.group(1))
    assert pyproject["project"]["requires-python"] == f">={base.group(2)}.{base.group(3)}"
    versions = {d["spec"].get("rayVersion") or d["spec"]["rayClusterConfig"]["rayVersion"]
                for d in documents(K8S / "base") if d["kind"] in ("RayCluster", "RayService")}
    assert versions == {base.group(1)}
