"""The infra files parse and agree: one image name (infra/image.env) built by the Dockerfile and run
by the RayCluster and the Prefect job template, one Ray and torch version everywhere, GPU resources
that match what Ray is told, a GPU group that scales to zero, non-root containers."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"


def _env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


@pytest.fixture(scope="module")
def image() -> dict[str, str]:
    return _env_file(INFRA / "image.env")


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (INFRA / "docker" / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def raycluster() -> dict[str, Any]:
    docs = list(yaml.safe_load_all((INFRA / "k8s" / "raycluster.yaml").read_text()))
    (cluster,) = [d for d in docs if d and d.get("kind") == "RayCluster"]
    return cluster


@pytest.fixture(scope="module")
def job_template() -> dict[str, Any]:
    return json.loads((INFRA / "k8s" / "prefect-base-job-template.json").read_text())


def _tag(image: dict[str, str], variant: str = "cpu") -> str:
    suffix = "" if variant == "cpu" else f"-{variant}"
    return f"{image['AUGFLOW_IMAGE']}:{image['AUGFLOW_VERSION']}{suffix}"


def _arg_defaults(dockerfile: str) -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", dockerfile, flags=re.M))


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pod_specs(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = cluster["spec"]
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec["workerGroupSpecs"]
    ]


def test_versions_agree_with_the_project(image: dict[str, str]) -> None:
    import ray

    project = _pyproject()["project"]
    assert image["AUGFLOW_VERSION"] == project["version"]
    ray_req = next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "ray")
    assert ray_req.specifier.contains(image["RAY_VERSION"])
    # A driver joins a cluster only with the same Ray version: the image's is the one we test with.
    assert image["RAY_VERSION"] == ray.__version__
    makefile_torch = re.search(r"^TORCH \?= torch==(\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert makefile_torch and makefile_torch.group(1) == image["TORCH_VERSION"]


def test_dockerfile_builds_both_variants_of_the_project_as_non_root(
    dockerfile: str, image: dict[str, str]
) -> None:
    args = _arg_defaults(dockerfile)
    assert args["RAY_VERSION"] == image["RAY_VERSION"]
    assert args["TORCH_VERSION"] == image["TORCH_VERSION"]
    assert args["TORCH_INDEX_URL"] == image["TORCH_INDEX_URL_CPU"]
    assert image["TORCH_INDEX_URL_CUDA"] in dockerfile  # the documented CUDA build
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M)
    python = re.search(r"python:(\d+\.\d+)", args["BASE_IMAGE"])
    assert python and f">={python.group(1)}" in _pyproject()["project"]["requires-python"]
    assert re.search(r'"torch==\$\{TORCH_VERSION\}"', dockerfile)
    assert re.search(r'"ray\[[^\]]*default[^\]]*\]==\$\{RAY_VERSION\}"', dockerfile)
    assert re.search(r"^RUN pip install \. ", dockerfile, re.M)
    for docs_tag in re.findall(r"-t (\S+) \.", dockerfile):
        assert docs_tag in (_tag(image), _tag(image, "cuda"))
    users = re.findall(r"^USER\s+(\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    # Every top-level package the project installs is copied into the image.
    for src in _pyproject()["tool"]["setuptools"]["package-dir"].values():
        assert re.search(rf"^COPY {src} ", dockerfile, re.M), src


def test_raycluster_runs_the_image_with_a_gpu_group_that_scales_to_zero(
    raycluster: dict[str, Any], image: dict[str, str]
) -> None:
    assert raycluster["apiVersion"] == "ray.io/v1"
    spec = raycluster["spec"]
    assert spec["rayVersion"] == image["RAY_VERSION"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    (head,) = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["image"] == _tag(image)
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})

    gpu_groups = [g for g in spec["workerGroupSpecs"] if "num-gpus" in g.get("rayStartParams", {})]
    assert gpu_groups
    for group in gpu_groups:
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0
        assert group["maxReplicas"] >= 1
        (worker,) = group["template"]["spec"]["containers"]
        assert worker["image"] == _tag(image, "cuda")
        gpus = int(group["rayStartParams"]["num-gpus"])
        assert gpus >= 1
        assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) == gpus
        assert int(worker["resources"]["requests"]["nvidia.com/gpu"]) == gpus
    for pod in _pod_specs(raycluster):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0


def test_prefect_job_template_runs_the_image_as_a_driver_of_the_raycluster(
    job_template: dict[str, Any], raycluster: dict[str, Any], image: dict[str, str]
) -> None:
    variables = job_template["variables"]["properties"]
    assert variables["image"]["default"] == _tag(image)
    (container,) = job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert container["image"] == "{{ image }}"
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_ADDRESS"]["value"] == "{{ ray_address }}"
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    meta = raycluster["metadata"]
    # KubeRay names the head service <cluster>-head-svc; the GCS port is 6379.
    assert variables["ray_address"]["default"] == (
        f"{meta['name']}-head-svc.{meta['namespace']}.svc.cluster.local:6379"
    )
    assert variables["namespace"]["default"] == meta["namespace"]
    # Every placeholder used in the job configuration is a declared variable.
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(job_template["job_configuration"])))
    assert used <= set(variables), used - set(variables)


def test_prefect_worker_values_serve_the_kubernetes_pool() -> None:
    values = yaml.safe_load((INFRA / "k8s" / "prefect-worker-values.yaml").read_text())
    config = values["worker"]["config"]
    assert config["type"] == "kubernetes"
    assert config["workPool"] == "augflow-k8s"
    readme = (INFRA / "README.md").read_text()
    assert "augflow-k8s" in readme and "prefect-base-job-template.json" in readme
