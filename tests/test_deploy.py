"""The Kubernetes manifests parse and wire gpuosd and the device plugin together as documented."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def documents() -> list[dict]:  # type: ignore[type-arg]
    return [d for path in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_manifest_is_a_kubernetes_object_in_the_gpuos_namespace() -> None:
    docs = documents()
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"}
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "gpuos-system"


def test_the_daemonset_shares_the_gpuosd_socket_and_the_kubelet_plugin_dir() -> None:
    (ds,) = [d for d in documents() if d["kind"] == "DaemonSet"]
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


def test_the_configmap_holds_a_config_gpuosd_accepts(tmp_path: Path) -> None:
    from gpuos.daemon.config import DaemonConfig

    (cm,) = [d for d in documents() if d["kind"] == "ConfigMap"]
    path = tmp_path / "gpuosd.toml"
    path.write_text(cm["data"]["gpuosd.toml"])
    config = DaemonConfig.load(str(path), {})
    assert config.metrics_listen == "0.0.0.0:9400"
