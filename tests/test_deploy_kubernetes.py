"""deploy/kubernetes: every overlay renders, every object passes the Kubernetes schemas, and the Deployment holds
together (probes, drain inside the grace period, threads from the CPU limit, keys from a Secret).

No kustomize binary is packaged for PyPI or Debian, so `render()` below applies the few kustomize features these
manifests use (resources, namespace, labels, images, strategic-merge patches); it refuses any other field, so a
manifest cannot quietly rely on something this renderer ignores.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchery.config import Settings

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="`pip install kubernetes-validate` (it is in the dev extra)"
)

KUBE = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
OVERLAYS = sorted(p.parent.name for p in (KUBE / "overlays").glob("*/kustomization.yaml"))
KUBERNETES_VERSION = "1.30.0"  # the oldest minor still supported by the main cloud providers
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
CUSTOM_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1"}


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects `kustomize build directory` would print, for the features listed in SUPPORTED."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    assert not unsupported, f"{directory}: this test's renderer does not implement {unsupported}"
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            objects += render(path)
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, "only file patches are rendered here"
        body = yaml.safe_load((directory / patch["path"]).read_text())
        targets = [o for o in objects if (o["kind"], o["metadata"]["name"]) == (body["kind"], body["metadata"]["name"])]
        assert len(targets) == 1, f"patch {patch['path']} matches {len(targets)} objects"
        merged = merge(targets[0], body)
        objects[objects.index(targets[0])] = merged
    for group in kustomization.get("labels", []):
        for obj in objects:
            obj["metadata"].setdefault("labels", {}).update(group["pairs"])
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for container in containers(objects):
            name, _, _ = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
    return objects


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for these kinds: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(x, dict) and "name" in x for x in base + patch):
        out = copy.deepcopy(base)
        for item in patch:
            match = [i for i, x in enumerate(out) if x["name"] == item["name"]]
            if match:
                out[match[0]] = merge(out[match[0]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for o in objects if o["kind"] == "Deployment" for c in o["spec"]["template"]["spec"]["containers"]]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(params=["base", *(f"overlays/{name}" for name in OVERLAYS)])
def objects(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(KUBE / request.param)


def test_there_are_overlays() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)


def test_every_object_passes_the_kubernetes_schemas(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] == CUSTOM_KINDS[obj["kind"]]
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            first_line = str(exc).splitlines()[0]
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {first_line}")


def test_the_expected_objects_are_there(objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in objects}
    wanted = {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"}
    assert wanted <= kinds


def test_deployment_probes_and_drain(objects: list[dict[str, Any]]) -> None:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    config = one(objects, "ConfigMap")["data"]
    drain = float(config.get("BATCHERY_DRAIN_SECONDS", Settings().drain_seconds))
    # SIGTERM arrives after the preStop pause; batchery then drains for up to `drain` seconds.
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain


def test_container_is_bounded_and_unprivileged(objects: list[dict[str, Any]]) -> None:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    env = {e["name"]: e for e in container["env"]}
    workers = env["BATCHERY_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert workers["resource"] == "limits.cpu", "worker lanes follow the CPU limit"
    assert env["BATCHERY_ADMIN_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "batchery-api-keys"
    assert any(v.get("secret", {}).get("secretName") == "batchery-api-keys" for v in pod["volumes"])
    assert any(e.get("configMapRef", {}).get("name") == "batchery-config" for e in container["envFrom"])


def test_every_configured_variable_is_a_setting(objects: list[dict[str, Any]]) -> None:
    """A misspelt BATCHERY_* variable would be ignored silently; each must name a Settings field."""
    fields = {f"BATCHERY_{name.upper()}" for name in Settings.__dataclass_fields__}
    names = set(one(objects, "ConfigMap")["data"])
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    names |= {e["name"] for e in container["env"] if e["name"].startswith("BATCHERY_")}
    assert names <= fields, f"not settings: {sorted(names - fields)}"
    Settings.load(env={k: v for k, v in one(objects, "ConfigMap")["data"].items()} | {"BATCHERY_REDIS_URL": "x"})


def test_selectors_match(objects: list[dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = one(objects, kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= pod_labels.items(), f"{kind} selects no batchery pod"
    service = one(objects, "Service")
    monitor = one(objects, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["endpoints"][0]["path"] == "/metrics"
    target = one(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def test_autoscaler_uses_cpu_and_queue_depth(objects: list[dict[str, Any]]) -> None:
    metrics = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)
    assert any(m["type"] == "Pods" and m["pods"]["metric"]["name"] == "batchery_queue_depth" for m in metrics)


def test_production_overlay_requires_keys_and_shares_state_in_redis() -> None:
    objects = render(KUBE / "overlays" / "production")
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"batchery"}
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/batchery:0.1.0"
    env = {e["name"]: e for e in container["env"]}
    keys_volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert keys_volume["secret"]["optional"] is False
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert env["BATCHERY_API_KEYS_FILE"]["value"].startswith(mount["mountPath"] + "/")
    assert "secretKeyRef" in env["BATCHERY_REDIS_URL"]["valueFrom"], "the Redis URL is a secret"
    config = one(objects, "ConfigMap")["data"]
    assert config["BATCHERY_CACHE"] == "redis"
    assert config["BATCHERY_RATE_LIMIT_BACKEND"] == "redis"
