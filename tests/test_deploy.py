"""The Kubernetes manifests parse and wire gpuosd and the device plugin together as documented."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def documents() -> list[dict]:  # type: ignore[type-arg]
    return [d for path in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "DeviceClass"}


def test_every_manifest_is_a_kubernetes_object_in_the_gpuos_namespace() -> None:
    docs = documents()
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "ClusterRole",
                                         "ClusterRoleBinding", "DeviceClass"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"]["namespace"] == "gpuos-system"


def test_the_daemonset_shares_the_gpuosd_socket_and_the_kubelet_plugin_dir() -> None:
    (ds,) = [d for d in documents() if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "gpuos"]
    pod = ds["spec"]["template"]["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    containers = {c["name"]: c for c in pod["containers"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {name: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for name, c in containers.items()}
    assert mounts["gpuosd"]["run"] == mounts["device-plugin"]["run"] == "/run/gpuos"
    assert mounts["device-plugin"]["device-plugins"] == "/var/lib/kubelet/device-plugins"
    assert volumes["device-plugins"]["hostPath"]["path"] == "/var/lib/kubelet/device-plugins"
    assert "/run/gpuos/gpuos.sock" in containers["device-plugin"]["command"]
    assert "/run/gpuos/gpuos.sock" in containers["gpuosd"]["command"]
    assert containers["gpuosd"]["command"][0] == "gpuosd"
    assert containers["device-plugin"]["command"][0] == "gpuos-device-plugin"


def test_the_device_plugin_sees_pod_resources_cdi_and_the_host_dev_and_gpuosd_the_host_ipc() -> None:
    (ds,) = [d for d in documents() if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "gpuos"]
    pod = ds["spec"]["template"]["spec"]
    (plugin,) = [c for c in pod["containers"] if c["name"] == "device-plugin"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: (volumes.get(m["name"]), m.get("readOnly", False)) for m in plugin["volumeMounts"]}
    assert mounts["/var/lib/kubelet/pod-resources"] == ("/var/lib/kubelet/pod-resources", False)
    assert mounts["/var/run/cdi"] == ("/var/run/cdi", False)
    assert mounts["/host/dev"] == ("/dev", True)
    command = plugin["command"]
    assert command[command.index("--pod-resources-socket") + 1] == "/var/lib/kubelet/pod-resources/kubelet.sock"
    assert command[command.index("--cdi-dir") + 1] == "/var/run/cdi"
    assert command[command.index("--dev-root") + 1] == "/host/dev"
    # MPS clients in pods share memory with servers that gpuosd's MPS daemons start, and reach
    # them through pipes gpuosd keeps beside its state dir, on the host at the same path.
    assert pod["hostIPC"] is True
    (gpuosd,) = [c for c in pod["containers"] if c["name"] == "gpuosd"]
    state = gpuosd["command"][gpuosd["command"].index("--state-dir") + 1]
    gpuosd_mounts = {m["mountPath"]: volumes.get(m["name"]) for m in gpuosd["volumeMounts"]}
    assert gpuosd_mounts[state + "-mps"] == state + "-mps"


def test_the_configmap_holds_a_config_gpuosd_accepts(tmp_path: Path) -> None:
    from gpuos.daemon.config import DaemonConfig

    (cm,) = [d for d in documents() if d["kind"] == "ConfigMap"]
    path = tmp_path / "gpuosd.toml"
    path.write_text(cm["data"]["gpuosd.toml"])
    config = DaemonConfig.load(str(path), {})
    assert config.metrics_listen == "0.0.0.0:9400"


# -- the DRA driver (dra.yaml, deviceclasses.yaml, examples/) ---------------------------------------

EXAMPLES = DEPLOY / "examples"


def examples() -> dict[str, list[dict]]:  # type: ignore[type-arg]
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(EXAMPLES.glob("*.yaml"))}


def as_model(document: dict, kind: str):  # type: ignore[no-untyped-def,type-arg]
    """``document`` as the kubernetes client's model ``kind``, refusing fields the model does not know."""
    import pytest

    k8s = pytest.importorskip("kubernetes.client")
    model = getattr(k8s, kind)
    parsed = model.from_dict(document) if hasattr(model, "from_dict") else \
        k8s.ApiClient()._ApiClient__deserialize(document, kind)
    assert k8s.ApiClient().sanitize_for_serialization(parsed) == document, f"{kind} has fields the model lacks"
    return parsed


def test_the_device_classes_select_each_kind_of_device_the_driver_publishes() -> None:
    from gpuos.dra.inventory import Kind

    classes = {d["metadata"]["name"]: as_model(d, "V1DeviceClass") for d in documents() if d["kind"] == "DeviceClass"}
    assert sorted(classes) == sorted(f"{k.value}.gpuos.io" for k in Kind)
    for kind in Kind:
        (selector,) = classes[f"{kind.value}.gpuos.io"].spec.selectors
        assert selector.cel.expression == (f'device.driver == "gpuos.io" && '
                                           f'device.attributes["gpuos.io"].type == "{kind.value}"')


def test_the_examples_claim_a_gpu_a_share_a_mig_slice_and_turns_and_pods_use_them() -> None:
    from gpuos.dra.inventory import COMPUTE, MEMORY, SLOTS

    found = examples()
    assert sorted(found) == ["mig-3g.yaml", "mps-share.yaml", "timeslice.yaml", "whole-gpu.yaml"]
    capacities = {"gpu.gpuos.io": set(), "mps.gpuos.io": {COMPUTE, MEMORY}, "mig.gpuos.io": set(),
                  "timeslice.gpuos.io": {SLOTS}}
    for docs in found.values():
        template, pod = docs
        claim = as_model(template, "V1ResourceClaimTemplate")
        pod_model = as_model(pod, "V1Pod")
        (request,) = claim.spec.spec.devices.requests
        asked = set((request.exactly.capacity.requests if request.exactly.capacity else None) or {})
        # Capacity a claim asks for must be capacity the class's devices publish.
        assert asked <= capacities[request.exactly.device_class_name]
        (ref,) = pod_model.spec.resource_claims
        assert ref.resource_claim_template_name == claim.metadata.name
        assert [c.name for c in pod_model.spec.containers[0].resources.claims] == [ref.name]
    share = as_model(found["mps-share.yaml"][0], "V1ResourceClaimTemplate").spec.spec.devices.requests[0]
    assert share.exactly.capacity.requests == {COMPUTE: "25", MEMORY: "20Gi"}


def test_the_dra_daemonset_reaches_gpuosd_and_the_kubelets_plugin_directories() -> None:
    (ds,) = [d for d in documents() if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "gpuos-dra"]
    pod = ds["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    hosts = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    command = container["command"]
    assert command[0] == "gpuos-dra-plugin"
    for flag, path in (("--socket", "/run/gpuos/gpuos.sock"), ("--registry-dir", "/var/lib/kubelet/plugins_registry"),
                       ("--plugin-dir", "/var/lib/kubelet/plugins/gpuos.io"), ("--cdi-dir", "/var/run/cdi"),
                       ("--state-dir", "/var/lib/gpuos-dra")):
        assert command[command.index(flag) + 1] == path
        # Each path is the host's own (the kubelet dials the plugin socket by its host path).
        name = next(n for n, m in mounts.items() if path.startswith(m))
        assert hosts[name] == mounts[name]
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]} == {"NODE_NAME": "spec.nodeName"}
    assert pod["serviceAccountName"] == "gpuos-dra" and pod.get("automountServiceAccountToken", True)


def test_the_dra_driver_is_granted_what_it_calls_and_no_more() -> None:
    (role,) = [d for d in documents() if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "gpuos-dra"]
    rules = {r["resources"][0]: set(r["verbs"]) for r in role["rules"]}
    assert set(rules) == {"resourceslices", "resourceclaims", "nodes"}
    assert rules["resourceslices"] >= {"list", "create", "update", "delete"}
    assert rules["resourceclaims"] == {"get", "list", "watch"}
    # Its own Node, read for the slices' ownerReference.
    assert rules["nodes"] == {"get"}
    (binding,) = [d for d in documents() if d["kind"] == "ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == "gpuos-dra"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gpuos-dra", "namespace": "gpuos-system"}]
