"""deploy/ held to the code: what Kubernetes, compose and the images run is what the code serves.

No Docker engine or cluster is needed. The kustomizations are rendered with `kubectl kustomize`
(these tests skip when kubectl is absent) and every fact they must agree on is imported from
the code, never copied: services and ports (services.common.runtime), environment variables
the code reads (runtime.ENV_VARS, orchestrator.settings, the S3 credentials of
services.common.store), entrypoint modules (the files that `python -m` runs). The scripts that
ship in the images (the gRPC health check, the MinIO init, the secret generator) are run for
real. No credentials are committed, so rendering happens in a copy of deploy/ whose secrets
deploy/make-secrets.sh generated, as a user would.
"""
from __future__ import annotations

import ast
import atexit
import base64
import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from orchestrator import settings
from services.common import runtime
from services.common import store as store_mod
from services.common.runtime import DEFAULT_METRICS_PORTS, DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"

#: Every synthaug process: the four services and the orchestrator.
SYNTHAUG = tuple(DEFAULT_PORTS)
#: The services that get a GPU (the issue's split: the rest is CPU work).
GPU_SERVICES = frozenset({"gan", "segmenter"})
#: Containers of the deployment that are not synthaug code.
THIRD_PARTY = frozenset({"minio", "minio-init", "prometheus", "grafana"})

#: Where each rendered target lives, relative to deploy/ ("tls": a test overlay, the GPU setup
#: plus the TLS component, as a user would write it).
RENDER_TARGETS = {
    "deploy": ".",
    "gpu": "kustomize/overlays/gpu",
    "cpu": "kustomize/overlays/cpu",
}
WITH_GPUS = {"deploy": True, "gpu": True, "cpu": False}
TLS_OVERLAY = "kustomize/overlays/tls-test"
SECRETS = "kustomize/base/secrets"
#: What make-secrets.sh writes (and the kustomization and compose read).
SECRET_FILES = ("minio-root-user", "minio-root-password", "s3-access-key", "s3-secret-key", "auth-token", "grafana-admin-password")


def module_of(service: str) -> str:
    """The module `python -m` runs for a service (the orchestrator's server is `orchestrator`)."""
    return f"services.{service}" if service in settings.SERVICES else service


def module_file(module: str) -> Path:
    return ROOT.joinpath(*module.split("."), "__main__.py")


# ---------------------------------------------------------------------------------------------
# the environment variables the code reads

def _string_args(tree: ast.AST, func_names: set[str], position: int) -> set[str]:
    """String constants passed at `position` to calls of any function named in func_names."""
    out = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or len(node.args) <= position:
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        arg = node.args[position]
        if name in func_names and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            out.add(arg.value)
    return out


@functools.cache
def store_env_names() -> frozenset[str]:
    """What open_store reads: env.get("…") names and credentials read by read_secret (+ _FILE)."""
    tree = ast.parse(Path(store_mod.__file__).read_text())
    secrets = _string_args(tree, {"read_secret"}, 1)
    gets = {n for n in _string_args(tree, {"get"}, 0) if n.isupper()}
    return frozenset(gets | secrets | {f"{n}_FILE" for n in secrets} | {store_mod.STORE_ENV})


@functools.cache
def allowed_env() -> frozenset[str]:
    return frozenset(runtime.ENV_VARS) | frozenset(settings.ENV_VARS) | frozenset(settings.ADDRESS_ENV.values()) | store_env_names()


def test_store_env_names_are_what_open_store_reads() -> None:
    """The AST scan finds the credential names open_store documents (guards the scan itself)."""
    names = store_env_names()
    for documented in re.findall(r"\b(SYNTHAUG_S3_[A-Z_]+|AWS_[A-Z_]+)\b", store_mod.open_store.__doc__ or ""):
        assert documented in names
    assert {"SYNTHAUG_S3_ACCESS_KEY_FILE", "SYNTHAUG_S3_SECRET_KEY_FILE"} <= names


# ---------------------------------------------------------------------------------------------
# rendering

def copy_deploy(into: Path) -> Path:
    """deploy/ copied into `into`, without whatever secrets this checkout holds."""
    def skip(folder: str, names: list[str]) -> list[str]:
        if Path(folder).resolve() == (DEPLOY / SECRETS).resolve():
            return [n for n in names if n not in (".gitignore", "README.md")]
        return []

    shutil.copytree(DEPLOY, into / "deploy", ignore=skip)
    return into / "deploy"


@functools.cache
def rendered_tree() -> Path:
    """A copy of deploy/ with secrets from make-secrets.sh and the TLS test overlay."""
    root = Path(tempfile.mkdtemp(prefix="synthaug-deploy-"))
    atexit.register(shutil.rmtree, root, True)
    tree = copy_deploy(root)
    subprocess.run(["/bin/sh", str(tree / "make-secrets.sh")], check=True, capture_output=True, timeout=30)
    overlay = tree / TLS_OVERLAY
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../gpu"], "components": ["../../components/tls"],
    }))
    return tree


def kustomize(path: Path) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomizations")
    return subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)


@functools.cache
def _render(target: str) -> tuple[dict[str, Any], ...]:
    proc = kustomize(rendered_tree() / (TLS_OVERLAY if target == "tls" else RENDER_TARGETS[target]))
    assert proc.returncode == 0, f"kubectl kustomize {target} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def objects(target: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [o for o in _render(target) if kind is None or o["kind"] == kind]


def one(target: str, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects(target, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{target}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(target: str) -> list[dict[str, Any]]:
    return [o for o in _render(target) if o["kind"] in ("Deployment", "StatefulSet", "Job")]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def named_port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name!r}"
    return ports[name]


def container_env(target: str, container: dict[str, Any]) -> dict[str, str]:
    """Names and values a container gets: env entries plus every key of envFrom sources."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = one(target, "ConfigMap", source["configMapRef"]["name"])
            env.update(cm.get("data", {}))
        if "secretRef" in source:
            secret = one(target, "Secret", source["secretRef"]["name"])
            env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from valueFrom>")
    return env


targets = pytest.mark.parametrize("target", list(RENDER_TARGETS))


@targets
def test_renders(target: str) -> None:
    rendered = objects(target)
    namespaced = [o for o in rendered if o["kind"] != "Namespace"]
    assert namespaced, f"{target} rendered nothing"
    assert {o["metadata"].get("namespace") for o in namespaced} == {"synthaug"}
    assert one(target, "Namespace", "synthaug")


@targets
def test_same_services_as_the_code(target: str) -> None:
    assert {d["metadata"]["name"] for d in objects(target, "Deployment")} == set(SYNTHAUG)
    assert {s["metadata"]["name"] for s in objects(target, "StatefulSet")} == {"minio"}
    assert {j["metadata"]["name"] for j in objects(target, "Job")} == {"minio-init"}
    for name in SYNTHAUG:
        assert only_container(one(target, "Deployment", name))["name"] == name


@targets
def test_entrypoints_and_ports_match_the_code(target: str) -> None:
    for name in SYNTHAUG:
        deployment = one(target, "Deployment", name)
        container = only_container(deployment)
        assert container["command"] == ["python", "-m", module_of(name)]
        assert container["image"].split(":")[0].endswith(f"synthaug/{name}")
        grpc_port, metrics_port = named_port(container, "grpc"), named_port(container, "metrics")
        assert grpc_port == DEFAULT_PORTS[name]
        assert metrics_port == DEFAULT_METRICS_PORTS[name]
        # ports are the code's defaults: nothing overrides them
        env = container_env(target, container)
        assert "SYNTHAUG_PORT" not in env and "SYNTHAUG_METRICS_PORT" not in env
        # probes ask grpc.health.v1 on the gRPC port
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, f"{name} {probe}"
        # Prometheus scrapes the metrics port
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == metrics_port
        assert annotations["prometheus.io/path"] == "/metrics"
        # the Service of the same name exposes both ports and selects these pods
        service = one(target, "Service", name)
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert ports["grpc"]["port"] == grpc_port and ports["grpc"]["targetPort"] == "grpc"
        assert ports["metrics"]["port"] == metrics_port
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@targets
def test_orchestrator_sees_every_replica_through_headless_services(target: str) -> None:
    env = container_env(target, only_container(one(target, "Deployment", "orchestrator")))
    for service, var in settings.ADDRESS_ENV.items():
        host, _, port = env[var].partition(":")
        assert int(port) == DEFAULT_PORTS[service]
        svc = one(target, "Service", host.split(".")[0])
        assert svc["spec"].get("clusterIP") == "None", f"{host} must be headless so DNS lists every replica"
        assert svc["spec"]["selector"]["app.kubernetes.io/name"] == service
        parsed = settings.parse_addresses(None, env)
        assert parsed.addresses[service] == [env[var]]
    assert not settings.parse_addresses(None, env).embedded


@targets
def test_env_names_are_read_by_the_code(target: str) -> None:
    allowed = allowed_env()
    for workload in workloads(target):
        name = workload["metadata"]["name"]
        for container in pod_spec(workload)["containers"]:
            env = container_env(target, container)
            if name in ("minio", "minio-init"):  # MinIO's own settings
                env = {k: v for k, v in env.items() if not k.startswith("MINIO_") and k != "HOME"}
            unknown = sorted(set(env) - allowed)
            assert not unknown, f"{target} {name}: environment variables no code reads: {unknown}"
            if name in SYNTHAUG:
                assert "SYNTHAUG_STORE" in env


@pytest.fixture
def captured_s3(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """open_store's S3 backend replaced by a recorder: what it would connect with."""
    calls: list[dict[str, Any]] = []

    def fake(bucket: str, endpoint: str, access: str, secret: str, secure: bool = False, region: str | None = None, **_: Any) -> str:
        calls.append({"bucket": bucket, "endpoint": endpoint, "access": access, "secret": secret, "secure": secure})
        return "fake-store"

    monkeypatch.setattr(store_mod, "S3Store", fake)
    return calls


def _materialise_secret_files(target: str, workload: dict[str, Any], env: dict[str, str], tmp: Path) -> dict[str, str]:
    """Rewrite *_FILE paths to local copies of the mounted Secret keys they point at."""
    container = only_container(workload)
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    out = dict(env)
    for var, path in env.items():
        if not var.endswith("_FILE"):
            continue
        mounts = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert len(mounts) == 1, f"{var}={path} is not inside exactly one volume mount"
        volume = volumes[mounts[0]["name"]]
        assert "secret" in volume, f"{var} must point into a Secret volume"
        secret = one(target, "Secret", volume["secret"]["secretName"])
        key = path[len(mounts[0]["mountPath"].rstrip("/")) + 1:]
        assert key in secret["data"], f"{var}: Secret {secret['metadata']['name']} has no key {key!r}"
        local = tmp / f"{workload['metadata']['name']}-{key}"
        local.write_bytes(base64.b64decode(secret["data"][key]) + b"\n")
        out[var] = str(local)
    return out


@targets
def test_every_container_opens_the_minio_store(target: str, captured_s3: list[dict[str, Any]], tmp_path: Path) -> None:
    """ConfigMap + mounted Secret, through open_store itself: the bucket, MinIO and the keys."""
    minio = only_container(one(target, "StatefulSet", "minio"))
    minio_service = one(target, "Service", "minio")
    service_ports = {p["port"] for p in minio_service["spec"]["ports"]}
    users = set()
    for name in [*SYNTHAUG, "minio-init"]:
        workload = one(target, "Job" if name == "minio-init" else "Deployment", name)
        env = _materialise_secret_files(target, workload, container_env(target, only_container(workload)), tmp_path)
        assert "SYNTHAUG_S3_ACCESS_KEY" not in env, "credentials come from mounted files, not plain env"
        assert store_mod.open_store(None, env) == "fake-store"
        call = captured_s3[-1]
        host, _, port = call["endpoint"].partition(":")
        assert host == "minio" and int(port) in service_ports
        assert int(port) == named_port(minio, "api")
        assert call["access"] and len(call["secret"]) >= 8
        users.add((call["bucket"], call["access"], call["secret"]))
    assert len(users) == 1, "the init Job must create the user every service connects as"


@targets
def test_store_url_is_the_same_in_kubernetes_and_compose(target: str) -> None:
    config = one(target, "ConfigMap", only_container(one(target, "Deployment", "orchestrator"))["envFrom"][0]["configMapRef"]["name"])
    urls = {svc["environment"]["SYNTHAUG_STORE"] for name, svc in compose()["services"].items() if name in (*SYNTHAUG, "minio-init")}
    assert urls == {config["data"]["SYNTHAUG_STORE"]}


@targets
def test_gpus_only_for_gan_and_segmenter(target: str) -> None:
    for workload in workloads(target):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        for container in spec["containers"]:
            resources = container.get("resources", {})
            gpus = {k: v for part in ("requests", "limits") for k, v in resources.get(part, {}).items() if "gpu" in k}
            if WITH_GPUS[target] and name in GPU_SERVICES:
                assert resources["limits"]["nvidia.com/gpu"] == "1", f"{target} {name}"
                assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            else:
                assert not gpus, f"{target} {name} requests GPUs: {gpus}"
                assert "nodeSelector" not in spec and "tolerations" not in spec


@targets
def test_probes_resources_and_security_on_every_container(target: str) -> None:
    for workload in workloads(target):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] == 1000, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        account = one(target, "ServiceAccount", spec["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            what = f"{target} {name}/{container['name']}"
            if workload["kind"] != "Job":  # a one-shot Job has nothing to probe
                for probe in ("readinessProbe", "livenessProbe"):
                    assert probe in container, f"{what}: no {probe}"
            if name in GPU_SERVICES:
                start = container["startupProbe"]
                assert start["periodSeconds"] * start["failureThreshold"] >= 120, f"{what}: startup budget too short for CUDA init"
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][part]), f"{what}: resources.{part}"
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, what
            assert sc["allowPrivilegeEscalation"] is False, what
            assert sc["capabilities"]["drop"] == ["ALL"], what
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], f"{what}: /tmp must be an emptyDir"


@targets
def test_minio_is_a_statefulset_with_a_volume_and_init_job(target: str) -> None:
    minio = one(target, "StatefulSet", "minio")
    claims = minio["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    assert any(m["name"] == "data" and m["mountPath"] == "/data" for m in only_container(minio)["volumeMounts"])
    assert minio["spec"]["serviceName"] == "minio"
    job = one(target, "Job", "minio-init")
    init = only_container(job)
    script_volume = next(v for v in pod_spec(job)["volumes"] if v["name"] == "script")
    script_cm = one(target, "ConfigMap", script_volume["configMap"]["name"])
    shipped = (DEPLOY / "kustomize" / "base" / "minio-init.sh").read_text()
    assert script_cm["data"]["minio-init.sh"] == shipped
    assert init["command"] == ["/bin/sh", "/scripts/minio-init.sh"]


# ---------------------------------------------------------------------------------------------
# network policies, evaluated: who can open a connection to whom

def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not (selector.get("matchLabels", {}).items() <= labels.items()):
        return False
    for expr in selector.get("matchExpressions", []):
        value, present = labels.get(expr["key"]), expr["key"] in labels
        op = expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]):
            return False
        if (op == "Exists" and not present) or (op == "DoesNotExist" and present):
            return False
    return True


@dataclass(frozen=True)
class Peer:
    """One end of a connection: a pod, by its namespace's labels and its own; or, with
    `namespace` None, something outside the cluster."""

    namespace: dict[str, str] | None
    pod: dict[str, str] = field(default_factory=dict)
    #: The workload, when it is one of the deployment's (its policies and ports apply).
    workload: dict[str, Any] | None = None


HOME = {"kubernetes.io/metadata.name": "synthaug"}
KUBE_DNS = Peer({"kubernetes.io/metadata.name": "kube-system"}, {"k8s-app": "kube-dns"})
INTERNET = Peer(None)


def pod(workload: dict[str, Any]) -> Peer:
    return Peer(HOME, workload["spec"]["template"]["metadata"]["labels"], workload)


def _peer_matches(rule_peer: dict[str, Any], peer: Peer) -> bool:
    if peer.namespace is None:
        return "ipBlock" in rule_peer
    if "ipBlock" in rule_peer:
        return False
    namespace_ok = _selects(rule_peer["namespaceSelector"], peer.namespace) if "namespaceSelector" in rule_peer else peer.namespace == HOME
    return namespace_ok and ("podSelector" not in rule_peer or _selects(rule_peer["podSelector"], peer.pod))


def _port_matches(rule_ports: list[dict[str, Any]] | None, port: tuple[str, int, str]) -> bool:
    """`port` = (protocol, number, name) of the destination."""
    protocol, number, name = port
    return not rule_ports or any(p.get("protocol", "TCP") == protocol and p.get("port") in (name, number) for p in rule_ports)


def _admits(target: str, direction: str, subject: Peer, other: Peer, port: tuple[str, int, str]) -> bool:
    """Whether the policies of `subject` (a pod of the deployment) let `direction` traffic
    to/from `other` on `port` pass. Pods no policy isolates in that direction pass all."""
    if subject.workload is None:
        return True  # not ours: no policy of this deployment applies to it
    policies = [p for p in objects(target, "NetworkPolicy")
                if _selects(p["spec"]["podSelector"], subject.pod) and direction.capitalize() in p["spec"]["policyTypes"]]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get(direction, []):
            peers = rule.get("from" if direction == "ingress" else "to")
            if _port_matches(rule.get("ports"), port) and (not peers or any(_peer_matches(r, other) for r in peers)):
                return True
    return False


def connects(target: str, source: Peer, dest: Peer, port: str | tuple[str, int, str]) -> bool:
    """Whether `source` may open a connection to `dest` on `port` (a port name of `dest`'s
    container, or (protocol, number, name)): its egress and dest's ingress must both allow it."""
    if isinstance(port, str):
        assert dest.workload is not None
        port = ("TCP", named_port(only_container(dest.workload), port), port)
    return _admits(target, "egress", source, dest, port) and _admits(target, "ingress", dest, source, port)


@targets
def test_network_policies(target: str) -> None:
    pods = {w["metadata"]["name"]: pod(w) for w in workloads(target)}
    services = [pods[name] for name in settings.SERVICES]
    ci = Peer({"kubernetes.io/metadata.name": "ci", "synthaug.io/orchestrator-client": "true"}, {"app": "synthaug-cli"})
    monitoring = Peer({"kubernetes.io/metadata.name": "monitoring", "synthaug.io/metrics-scraper": "true"}, {"app": "prometheus"})
    unlabelled = Peer({"kubernetes.io/metadata.name": "default"}, {"app": "debug-shell"})
    orchestrator, minio = pods["orchestrator"], pods["minio"]
    # Ingress: only the orchestrator calls the services; the API from labelled namespaces only.
    for name, service in zip(settings.SERVICES, services):
        assert connects(target, orchestrator, service, "grpc"), f"orchestrator must reach {name}"
        for caller in [*settings.SERVICES, "minio", "minio-init"]:
            assert not connects(target, pods[caller], service, "grpc"), f"{caller} must not call {name}"
        for outsider in (ci, monitoring, unlabelled):
            assert not connects(target, outsider, service, "grpc"), f"{name} gRPC must be closed to other namespaces"
        assert connects(target, monitoring, service, "metrics"), f"Prometheus must scrape {name}"
        assert not connects(target, unlabelled, service, "metrics") and not connects(target, ci, service, "metrics")
    assert connects(target, ci, orchestrator, "grpc"), "the CLI's namespace must reach the orchestrator"
    assert not connects(target, unlabelled, orchestrator, "grpc") and not connects(target, monitoring, orchestrator, "grpc")
    assert connects(target, monitoring, orchestrator, "metrics") and not connects(target, ci, orchestrator, "metrics")
    for service in services:
        assert not connects(target, service, orchestrator, "grpc"), "a service has no business with the orchestrator"
    # The store: its clients only, and only its API.
    for client in [*SYNTHAUG, "minio-init"]:
        assert connects(target, pods[client], minio, "api"), f"{client} must reach MinIO"
    for outsider in (ci, monitoring, unlabelled):
        assert not connects(target, outsider, minio, "api")
    assert not connects(target, orchestrator, minio, "console")
    # Egress: DNS for everyone; services → store only; nothing out of the cluster.
    for name, source in pods.items():
        assert connects(target, source, KUBE_DNS, ("UDP", 53, "dns")) and connects(target, source, KUBE_DNS, ("TCP", 53, "dns-tcp")), name
        assert not connects(target, source, INTERNET, ("TCP", 443, "https")), f"{name} must not call out of the cluster"
        assert not connects(target, source, KUBE_DNS, ("TCP", 443, "https")), f"{name}: only DNS in kube-system"
    for service in services:
        for other in services:
            assert not connects(target, service, other, "metrics")
    assert not connects(target, minio, orchestrator, "grpc") and not connects(target, minio, services[0], "grpc")
    assert not connects(target, orchestrator, services[0], "metrics"), "the orchestrator calls the services' gRPC port only"


# ---------------------------------------------------------------------------------------------
# Dockerfiles

def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Stage name → its instructions [(INSTRUCTION, arguments)], continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.IGNORECASE)
            assert m and m.group(2), f"{path.name}: every stage is named: {line}"
            current = stages.setdefault(m.group(2), [])
            current.append(("FROM", m.group(1)))
        elif current is not None:
            current.append((instruction, args))
    return stages


def stage_chain(stages: dict[str, list[tuple[str, str]]], name: str) -> list[tuple[str, str]]:
    """Instructions of a stage including those of the stages it is built FROM."""
    own = stages[name]
    parent = own[0][1]
    return (stage_chain(stages, parent) if parent in stages else []) + own


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"exec form expected: {args}"
    return value


def dockerfile_for(service: str) -> Path:
    return DOCKER / ("Dockerfile.gpu" if service in GPU_SERVICES else "Dockerfile.cpu")


@pytest.mark.parametrize("service", SYNTHAUG)
def test_dockerfile_target_runs_the_service(service: str) -> None:
    stages = dockerfile_stages(dockerfile_for(service))
    chain = stage_chain(stages, service)
    cmd = [exec_form(a) for i, a in chain if i == "CMD"][-1]
    assert cmd == ["python", "-m", module_of(service)]
    health = [a for i, a in chain if i == "HEALTHCHECK"][-1]
    assert exec_form(health.split(" CMD ", 1)[1]) == ["python", "/opt/synthaug/healthcheck.py", str(DEFAULT_PORTS[service])]
    exposed = {int(p) for i, a in chain if i == "EXPOSE" for p in a.split()}
    assert exposed == {DEFAULT_PORTS[service], DEFAULT_METRICS_PORTS[service]}
    assert ("USER", "1000:1000") in chain
    env = " ".join(a for i, a in chain if i == "ENV")
    assert "PYTHONUNBUFFERED=1" in env
    for name in re.findall(r"\b(SYNTHAUG_[A-Z0-9_]+)=", env):
        assert name in allowed_env()


@pytest.mark.parametrize("service", SYNTHAUG)
def test_entrypoint_module_exists(service: str) -> None:
    """`python -m <module>` in the images, compose and Kubernetes runs a file that exists."""
    assert module_file(module_of(service)).is_file(), f"{module_file(module_of(service)).relative_to(ROOT)} is missing"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfile_installs_dependencies_before_the_source(dockerfile: str) -> None:
    builder = dockerfile_stages(DOCKER / dockerfile)["builder"]
    steps = [(i, a) for i, a in builder]
    first_source = next(n for n, (i, a) in enumerate(steps) if i == "COPY" and re.search(r"\bservices\b", a))
    installs = [n for n, (i, a) in enumerate(steps) if i == "RUN" and "pip install -r" in a]
    assert installs and max(installs) < first_source, "dependencies must be installed before the code is copied"
    assert any(i == "COPY" and a.startswith("pyproject.toml") for i, a in steps[:first_source])
    assert any(i == "RUN" and "pip install --no-deps ." in a for i, a in steps[first_source:])
    # every file the Dockerfile copies from the context exists and is not ignored
    for i, a in [x for stage in dockerfile_stages(DOCKER / dockerfile).values() for x in stage]:
        if i == "COPY" and not a.startswith("--from"):
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src}: no such file in the build context"


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex over paths relative to the context ('**' spans
    directories, '*' and '?' stay within one)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out, as docker and podman read .dockerignore:
    the last pattern that matches the path or one of its parent directories decides, and a
    pattern starting with '!' lets it back in."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _ignore_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    return [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]


def copied_sources() -> set[str]:
    """Every path the Dockerfiles COPY from the build context."""
    return {src for dockerfile in ("Dockerfile.cpu", "Dockerfile.gpu")
            for stage in dockerfile_stages(DOCKER / dockerfile).values()
            for i, a in stage if i == "COPY" and not a.startswith("--from") for src in a.split()[:-1]}


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()


def test_dockerignore_sends_what_the_dockerfiles_copy_and_nothing_else() -> None:
    patterns = dockerignore_patterns()
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "services", "orchestrator", "synthaug", "examples"} <= sources
    for path in tracked_files():
        if any(path == src or path.startswith(src.rstrip("/") + "/") for src in sources):
            assert not dockerignore_excludes(path, patterns), f"{path} is copied by a Dockerfile but .dockerignore leaves it out"
        else:
            assert dockerignore_excludes(path, patterns), f"{path} reaches the build context but no Dockerfile copies it"
    # What must never reach an image layer, whether git tracks it or not.
    for path in (".git/config", ".venv/bin/python", ".synthaug/store/datasets/x/dataset.json", "deploy/.env",
                 "deploy/kustomize/base/secrets/auth-token", "deploy/kustomize/base/secrets/s3-secret-key",
                 "services/.env", "services/common/__pycache__/store.cpython-311.pyc", "synthaug.egg-info/PKG-INFO",
                 ".gpu-check/wheels/torch.whl", "out/report/index.html", "data/isic/image.png", "tests/unit/test_deploy.py"):
        assert dockerignore_excludes(path, patterns), f"{path} would reach the build context"


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher above, on the cases that decide: parents, '**', negation order."""
    assert dockerignore_excludes("a/b/c.py", ["a"]) and not dockerignore_excludes("ab/c.py", ["a"])
    assert dockerignore_excludes("x/y/__pycache__/z.pyc", ["**/__pycache__"])
    assert dockerignore_excludes("__pycache__/z.pyc", ["**/__pycache__"])
    assert not dockerignore_excludes("keep/me.py", ["*", "!keep"])
    assert dockerignore_excludes("keep/me.py", ["!keep", "*"])
    assert dockerignore_excludes("keep/x.pyc", ["*", "!keep", "**/*.pyc"])
    assert not dockerignore_excludes("dir/file.md", ["*.md"])  # '*' stays within one directory


def cpu_image_servers() -> list[str]:
    """The server modules the CPU image runs (its Dockerfile installs no torch)."""
    return [f"{module_of(s)}.server" for s in SYNTHAUG if dockerfile_for(s).name == "Dockerfile.cpu"]


def test_cpu_image_servers_do_not_import_torch() -> None:
    """Dockerfile.cpu installs every dependency but torch and torchvision: importing what its
    images run with torch made unimportable must work (the traceback names the importer)."""
    code = ("import importlib, sys\n"
            "class NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.partition('.')[0] in ('torch', 'torchvision'):\n"
            "            raise ModuleNotFoundError(f'No module named {name!r} (the CPU image has no torch)')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n")
    proc = subprocess.run([sys.executable, "-c", code, *cpu_image_servers()], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"a CPU-image server imports torch:\n{proc.stderr[-3000:]}"


def test_dockerfiles_check_their_servers_import_and_never_compile_the_whole_venv() -> None:
    """The builder imports every server its image runs (a missing dependency fails the build,
    not the pod), from the installed package; and bytecode comes from pip, per package:
    `compileall` over the venv fails on files for other Python versions (torch ships one)."""
    for dockerfile, servers in (("Dockerfile.cpu", cpu_image_servers()),
                                ("Dockerfile.gpu", [f"{module_of(s)}.server" for s in sorted(GPU_SERVICES)])):
        builder = " ".join(a for i, a in dockerfile_stages(DOCKER / dockerfile)["builder"] if i == "RUN")
        imported = re.search(r'cd / && python -c "import ([\w., ]+)"', builder)
        assert imported, f"{dockerfile}: no import check of the installed servers"
        assert sorted(m.strip() for m in imported.group(1).split(",")) == sorted(servers)
        assert "compileall" not in builder or "/opt/venv" not in builder.split("compileall", 1)[1], dockerfile


def test_image_tags_are_the_package_version() -> None:
    """make images tags synthaug/<service>:<pyproject version>; compose and kustomize run that tag."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    kustomization = yaml.safe_load((DEPLOY / "kustomize" / "base" / "kustomization.yaml").read_text())
    assert {i["name"]: i["newTag"] for i in kustomization["images"]} == {f"synthaug/{s}": version for s in SYNTHAUG}
    example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert example["SYNTHAUG_VERSION"] == version
    for service in SYNTHAUG:
        assert compose()["services"][service]["image"] == f"synthaug/{service}:${{SYNTHAUG_VERSION:-{version}}}"


# ---------------------------------------------------------------------------------------------
# the image scripts, run against a recording container engine

FAKE_ENGINE = """#!/bin/sh
# records each call; `info` answers as $FAKE_INFO_RC says; every image exists
printf '%s\\n' "$*" >> "$ENGINE_LOG"
[ "$1" = info ] && exit "${FAKE_INFO_RC:-0}"
exit 0
"""


def _fake_engine(bin_dir: Path, name: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    engine = bin_dir / name
    engine.write_text(FAKE_ENGINE)
    engine.chmod(engine.stat().st_mode | stat.S_IEXEC)
    return engine


def _script(name: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / name), *args], env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, timeout=60)


def test_container_engine_prefers_a_running_docker_then_podman(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    _fake_engine(bin_dir, "docker")
    _fake_engine(bin_dir, "podman")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ENGINE_LOG": str(tmp_path / "log")}
    assert _script("container-engine.sh", env=env).stdout == "docker\n"
    assert _script("container-engine.sh", env={**env, "FAKE_INFO_RC": "1"}).stdout == "podman\n"  # a client without a daemon
    assert _script("container-engine.sh", env={**env, "CONTAINER_ENGINE": "podman"}).stdout == "podman\n"
    missing = _script("container-engine.sh", env={**env, "CONTAINER_ENGINE": "nerdctl"})
    assert missing.returncode == 1 and "nerdctl is not installed" in missing.stderr
    # podman's flags: limits any sandbox accepts, HEALTHCHECK kept; docker needs none
    podman = {**env, "CONTAINER_ENGINE": "podman"}
    build_flags = _script("container-engine.sh", "build-flags", env=podman).stdout.split()
    assert build_flags[:6] == ["--format", "docker", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
    assert _script("container-engine.sh", "run-flags", env=podman).stdout.split() == build_flags[2:6]
    assert _script("container-engine.sh", "build-flags", env={**env, "CONTAINER_ENGINE": "docker"}).stdout == ""
    assert _script("container-engine.sh", "run-flags", env={**podman, "CONTAINER_RUN_FLAGS": "--a b"}).stdout.split() == ["--a", "b"]


def _builds(log: Path) -> dict[str, list[str]]:
    """target → the arguments of its `build` call, from the recorded engine calls."""
    out: dict[str, list[str]] = {}
    for line in log.read_text().splitlines():
        args = line.split()
        if args[0] == "build":
            target = args[args.index("--target") + 1]
            assert target not in out, f"{target} built twice"
            out[target] = args
    return out


def _build_arg(args: list[str], name: str) -> str | None:
    values = [args[n + 1].split("=", 1)[1] for n, a in enumerate(args[:-1]) if a == "--build-arg" and args[n + 1].startswith(f"{name}=")]
    return values[-1] if values else None


def test_build_images_builds_every_service_from_its_dockerfile(tmp_path: Path) -> None:
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    engine = _fake_engine(tmp_path / "bin", "podman")
    log = tmp_path / "engine.log"
    env = {"CONTAINER_ENGINE": str(engine), "ENGINE_LOG": str(log)}
    proc = _script("build-images.sh", env=env)
    assert proc.returncode == 0, proc.stderr
    builds = _builds(log)
    assert set(builds) == set(SYNTHAUG)
    for service, args in builds.items():
        assert args[args.index("-f") + 1] == str(dockerfile_for(service).relative_to(ROOT))
        assert args[args.index("-t") + 1] == f"synthaug/{service}:{version}"
        assert args[-1] == "." and args[1:3] == ["--format", "docker"]
        if service in GPU_SERVICES:  # CUDA torch from the Dockerfile's default base
            assert _build_arg(args, "TORCH_IMAGE") is None
        else:
            assert _build_arg(args, "BASE_IMAGE") == "localhost/synthaug-base:bookworm"
    assert not any(line.startswith("import") for line in log.read_text().splitlines()), "the base existed: not rebuilt"
    # CPU-only torch for gan and segmenter: over the same base, from the index given.
    log.unlink()
    proc = _script("build-images.sh", "gan", env={**env, "TORCH": "cpu", "TORCH_INDEX_URL": "http://mirror/whl/cpu", "TAG": "t"})
    assert proc.returncode == 0, proc.stderr
    [(target, args)] = _builds(log).items()
    assert target == "gan" and args[args.index("-t") + 1] == "synthaug/gan:t"
    assert (_build_arg(args, "TORCH_IMAGE"), _build_arg(args, "TORCH_INDEX_URL")) == ("localhost/synthaug-base:bookworm", "http://mirror/whl/cpu")
    for bad, message in ((["nope"], "unknown service nope"), ([], "TORCH must be cuda or cpu")):
        proc = _script("build-images.sh", *bad, env={**env, "TORCH": "rocm" if not bad else "cuda"})
        assert proc.returncode == 2 and message in proc.stderr


def test_pyproject_deps_partitions_the_dependencies() -> None:
    script = DOCKER / "pyproject_deps.py"
    run = lambda *a: subprocess.run([sys.executable, str(script), str(ROOT / "pyproject.toml"), *a], capture_output=True, text=True, check=True).stdout.split()
    import tomllib

    everything = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch, rest = run("--only", "torch,torchvision"), run("--exclude", "torch,torchvision")
    assert {r.split(">")[0].split("=")[0] for r in torch} == {"torch", "torchvision"}
    assert sorted(torch + rest) == sorted(everything) == sorted(run())


# ---------------------------------------------------------------------------------------------
# the health check script the images ship

def _load_healthcheck():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthaug_healthcheck", DOCKER / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_follows_grpc_health(tmp_path: Path) -> None:
    from services.common.store import FileStore

    healthcheck = _load_healthcheck()
    config = runtime.ServerConfig(service="compositor", host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=0.0)
    server = runtime.ServiceRuntime(config, store=FileStore(str(tmp_path / "store")))
    port = server.start(ready=False)
    try:
        assert healthcheck.main([str(port)]) == 1  # NOT_SERVING until ready
        server.mark_ready()
        assert healthcheck.main([f"127.0.0.1:{port}"]) == 0
        env = {**os.environ, "SYNTHAUG_PORT": str(port)}
        proc = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    finally:
        server.stop(grace=0)
    assert healthcheck.main([str(port)]) == 1  # nothing listening any more


# ---------------------------------------------------------------------------------------------
# the MinIO init script, run against a recording `mc`

FAKE_MC = """#!/bin/sh
# records each call (after --config-dir DIR) and keeps the policy file given to `policy create`
printf '%s\\n' "$*" >> "$MC_LOG"
if [ "$3 $4 $5" = "admin policy create" ]; then eval "cp \\"\\${$#}\\" \\"$MC_LOG.policy\\""; fi
exit 0
"""


def _run_init(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    mc = bin_dir / "mc"
    mc.write_text(FAKE_MC)
    mc.chmod(mc.stat().st_mode | stat.S_IEXEC)
    full = {"PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path), "MC_LOG": str(tmp_path / "mc.log"), **env}
    return subprocess.run(["/bin/sh", str(DEPLOY / "kustomize" / "base" / "minio-init.sh")], env=full, capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs a POSIX shell")
def test_minio_init_creates_bucket_and_least_privilege_user(tmp_path: Path) -> None:
    (tmp_path / "access").write_text("svc-user\n")
    (tmp_path / "secret").write_text("svc-secret-123\n")
    store_url = compose()["services"]["minio-init"]["environment"]["SYNTHAUG_STORE"]
    proc = _run_init(tmp_path, {
        "SYNTHAUG_STORE": store_url, "MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": "root-password",
        "SYNTHAUG_S3_ACCESS_KEY_FILE": str(tmp_path / "access"), "SYNTHAUG_S3_SECRET_KEY_FILE": str(tmp_path / "secret"),
    })
    assert proc.returncode == 0, proc.stderr
    bucket = urlparse(store_url).netloc
    endpoint = parse_qs(urlparse(store_url).query)["endpoint"][0]
    calls = [line.split(" ", 2)[2] for line in (tmp_path / "mc.log").read_text().splitlines()]  # drop --config-dir DIR
    assert calls[0] == f"alias set store http://{endpoint} root root-password"
    assert f"mb --ignore-existing store/{bucket}" in calls
    assert "admin user add store svc-user svc-secret-123" in calls
    assert "admin policy attach store synthaug-rw --user svc-user" in calls
    policy = json.loads((tmp_path / "mc.log.policy").read_text())
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    assert not any("s3:*" in s["Action"] or "admin:" in " ".join(s["Action"]) for s in policy["Statement"])


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs a POSIX shell")
@pytest.mark.parametrize("env, message", [
    ({"SYNTHAUG_STORE": "file:///data"}, "must be s3://"),
    ({"SYNTHAUG_STORE": "s3://bucket"}, "needs a bucket and endpoint"),
    ({"SYNTHAUG_STORE": "s3://b?endpoint=minio:9000", "SYNTHAUG_S3_SECRET_KEY": "x" * 8}, "set SYNTHAUG_S3_ACCESS_KEY or SYNTHAUG_S3_ACCESS_KEY_FILE"),
])
def test_minio_init_rejects_bad_settings(tmp_path: Path, env: dict[str, str], message: str) -> None:
    proc = _run_init(tmp_path, {"MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": "root-password", **env})
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "mc.log").exists()


# ---------------------------------------------------------------------------------------------
# compose

@functools.cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_the_same_services() -> None:
    assert set(compose()["services"]) == set(SYNTHAUG) | THIRD_PARTY


@pytest.mark.parametrize("service", SYNTHAUG)
def test_compose_service_matches_code_and_image(service: str) -> None:
    svc = compose()["services"][service]
    port, metrics = DEFAULT_PORTS[service], DEFAULT_METRICS_PORTS[service]
    assert svc["command"] == ["python", "-m", module_of(service)]
    assert {int(p) for p in svc["expose"]} == {port, metrics}
    assert svc["healthcheck"]["test"] == ["CMD", "python", "/opt/synthaug/healthcheck.py", str(port)]
    # the image compose builds is the Dockerfile target that runs the same module
    build = svc["build"]
    dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile == dockerfile_for(service)
    assert (DEPLOY / build["context"]).resolve() == ROOT
    chain = stage_chain(dockerfile_stages(dockerfile), build["target"])
    assert [exec_form(a) for i, a in chain if i == "CMD"][-1] == svc["command"]
    # non-root, read-only, no capabilities, waits for the bucket
    assert svc["user"] == "1000:1000" and svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
    assert any(t.startswith("/tmp") for t in svc["tmpfs"])
    assert svc["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    # environment: names the code reads; the store is the MinIO service
    env = svc["environment"]
    unknown = sorted(set(env) - allowed_env())
    assert not unknown, f"{service}: environment variables no code reads: {unknown}"
    store_url = urlparse(env["SYNTHAUG_STORE"])
    assert store_url.scheme == "s3" and parse_qs(store_url.query)["endpoint"] == ["minio:9000"]
    # GPUs for the GPU services only
    devices = svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if service in GPU_SERVICES:
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    else:
        assert not devices


def test_compose_orchestrator_addresses_and_dependencies() -> None:
    services = compose()["services"]
    orch = services["orchestrator"]
    env = {k: str(v) for k, v in orch["environment"].items()}
    parsed = settings.parse_addresses(None, env)
    for service in settings.SERVICES:
        assert parsed.addresses[service] == [f"{service}:{DEFAULT_PORTS[service]}"]
        assert orch["depends_on"][service]["condition"] == "service_healthy"
        assert set(services[service]["networks"]) >= {"rpc"}
    assert orch["ports"] == [f"127.0.0.1:{DEFAULT_PORTS['orchestrator']}:{DEFAULT_PORTS['orchestrator']}"]
    # nothing but the orchestrator publishes a synthaug port
    for service in settings.SERVICES:
        assert "ports" not in services[service]
    # MinIO only on the store network: Prometheus and Grafana cannot reach it
    assert services["minio"]["networks"] == ["store"]
    assert "store" not in services["prometheus"]["networks"] and "store" not in services["grafana"]["networks"]


def test_compose_init_uses_the_kustomize_script_and_env_example_covers_every_variable() -> None:
    services = compose()["services"]
    init = services["minio-init"]
    assert init["entrypoint"] == ["/bin/sh", "/scripts/minio-init.sh"]
    host_path = init["volumes"][0].split(":")[0]
    assert (DEPLOY / host_path).resolve() == (DEPLOY / "kustomize" / "base" / "minio-init.sh").resolve()
    text = (DEPLOY / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = {line.split("=", 1)[0] for line in (DEPLOY / ".env.example").read_text().splitlines() if "=" in line and not line.startswith("#")}
    assert used, "compose interpolates nothing?"
    assert used == example, (f"compose uses {sorted(used - example)} that .env.example does not document; "
                             f".env.example sets {sorted(example - used)} that compose never uses")
    assert not re.search(r"(?i)(password|secret|token|key)", " ".join(example)), ".env holds no secrets: they are files"


def test_real_env_file_is_ignored_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "deploy/.env"], cwd=ROOT).returncode == 0
    example = subprocess.run(["git", "check-ignore", "-q", "deploy/.env.example"], cwd=ROOT).returncode == 0
    assert ignored and not example


def test_prometheus_scrapes_every_replica_of_every_service() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for service in SYNTHAUG:
        sd = jobs[service]["dns_sd_configs"]
        assert sd == [{"names": [service], "type": "A", "port": DEFAULT_METRICS_PORTS[service]}]
    mounted = [v for v in compose()["services"]["prometheus"]["volumes"] if v.endswith(":/etc/prometheus/prometheus.yml:ro")]
    assert mounted and (DEPLOY / mounted[0].split(":")[0]).resolve() == (DEPLOY / "prometheus" / "prometheus.yml").resolve()


# ---------------------------------------------------------------------------------------------
# Grafana

def _dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "synthaug.json").read_text())


_LABELS_IN = re.compile(r"\{([^}]*)\}|\b(?:by|without)\s*\(([^)]*)\)")


def _expressions() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _metrics_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label matchers and groupings removed)."""
    return set(re.findall(r"\b((?:synthaug|grpc|process|python)_[a-z0-9_]+|up)\b", _LABELS_IN.sub(" ", expr)))


def _labels_in(expr: str) -> set[str]:
    labels = set()
    for matchers, grouping in _LABELS_IN.findall(expr):
        labels |= set(re.findall(r"([a-z_][a-z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
        labels |= {g.strip() for g in grouping.split(",") if g.strip()}
    return labels - {"le"}


def _dashboard_metrics() -> set[str]:
    return {n for e in _expressions() for n in _metrics_in(e)}


def _exported_metrics(tmp_path: Path) -> dict[str, set[str]]:
    """Sample name → label names of everything synthaug's /metrics endpoints can carry.

    Built from the real registries: a service runtime's (gRPC and job metrics, on every
    service) with the orchestrator's metrics registered on it, as its server does.
    """
    from orchestrator.metrics import OrchestratorMetrics
    from services.common.store import FileStore

    config = runtime.ServerConfig(service="orchestrator", host="127.0.0.1", port=0, metrics_port=-1)
    server = runtime.ServiceRuntime(config, store=FileStore(str(tmp_path / "store")))
    try:
        OrchestratorMetrics(server.registry)
        out: dict[str, set[str]] = {}
        for family in server.registry.collect():
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            collector = server.registry._names_to_collectors.get(family.name + suffixes[0])  # noqa: SLF001
            labels = set(getattr(collector, "_labelnames", ()))
            out.update({family.name + s: labels for s in suffixes})
        return out
    finally:
        server.jobs.shutdown(timeout=0)


def test_dashboard_is_provisioned_and_covers_the_issue() -> None:
    dashboard = _dashboard()
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("run progress", "step durations", "throughput", "losses", "evaluation scores", "grpc error rate", "process cpu", "process memory"):
        assert topic in titles, f"dashboard has no panel on {topic}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "synthaug.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    grafana = compose()["services"]["grafana"]
    assert f"./grafana/dashboards:{path}:ro" in grafana["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"


def test_dashboard_queries_metrics_and_labels_the_code_exports(tmp_path: Path) -> None:
    from synthaug.v1 import common_pb2

    exported = _exported_metrics(tmp_path)
    used = _dashboard_metrics() - {"up"}  # `up` is Prometheus' own
    assert not used - set(exported), f"dashboard metrics nothing exports: {sorted(used - set(exported))}"
    for expr in _expressions():
        metrics = _metrics_in(expr) - {"up"}
        if not metrics:
            continue
        known = set().union(*(exported[m] for m in metrics))
        assert _labels_in(expr) <= known, f"{expr}: labels {sorted(_labels_in(expr) - known)} do not exist"
        for state in re.findall(r'\bstate\s*=\s*"([^"]+)"', expr):
            assert state in common_pb2.JobState.keys(), f"{expr}: {state} is not a JobState name"


def test_dashboard_configmap_in_default_kustomization() -> None:
    cm = one("deploy", "ConfigMap", "synthaug-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["synthaug.json"]) == _dashboard()


# ---------------------------------------------------------------------------------------------
# no credentials committed; the ones a user generates reach every container as files

_SECRET_NAME = re.compile(r"(?i)(PASSWORD|SECRET|TOKEN|ACCESS_KEY)")


def test_no_credentials_in_the_tree_and_rendering_refuses_without_them(tmp_path: Path) -> None:
    committed = [p.relative_to(DEPLOY) for p in DEPLOY.rglob("*") if p.is_file() and SECRETS not in p.relative_to(DEPLOY).as_posix()]
    assert not [p for p in committed if p.suffix == ".env" or p.name.endswith(".env")], "credential env files are not shipped"
    assert sorted(p.name for p in (DEPLOY / SECRETS).iterdir() if p.name in (".gitignore", "README.md")) == [".gitignore", "README.md"]
    if shutil.which("git") and (ROOT / ".git").exists():
        for name in SECRET_FILES:
            assert subprocess.run(["git", "check-ignore", "-q", f"deploy/{SECRETS}/{name}"], cwd=ROOT).returncode == 0, f"{name} must be ignored by git"
        assert subprocess.run(["git", "check-ignore", "-q", f"deploy/{SECRETS}/README.md"], cwd=ROOT).returncode == 1
    bare = copy_deploy(tmp_path)
    for target in RENDER_TARGETS.values():
        proc = kustomize(bare / target)
        assert proc.returncode != 0, f"{target} rendered without user-supplied secrets"
        assert "secrets/" in proc.stderr, proc.stderr


def test_make_secrets_writes_random_secrets_once(tmp_path: Path) -> None:
    script = DEPLOY / "make-secrets.sh"
    for run in ("a", "b"):
        subprocess.run(["/bin/sh", str(script), str(tmp_path / run)], check=True, capture_output=True, timeout=30)
    a = {n: (tmp_path / "a" / n).read_text() for n in SECRET_FILES}
    b = {n: (tmp_path / "b" / n).read_text() for n in SECRET_FILES}
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(SECRET_FILES)
    for name in ("minio-root-password", "s3-secret-key", "auth-token", "grafana-admin-password"):
        assert a[name] != b[name] and len(a[name]) >= 20, f"{name} must be random and long"
    from services.common.security import ServerSecurity

    assert ServerSecurity(token=a["auth-token"]).token  # long enough for the runtime's check
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    (tmp_path / "a" / "auth-token").write_text("chosen-by-the-operator-123456")
    subprocess.run(["/bin/sh", str(script), str(tmp_path / "a")], check=True, capture_output=True, timeout=30)
    assert (tmp_path / "a" / "auth-token").read_text() == "chosen-by-the-operator-123456"  # kept


@targets
def test_every_synthaug_container_binds_all_interfaces_and_checks_the_same_token(target: str, captured_s3: list[dict[str, Any]], tmp_path: Path) -> None:
    from services.common.security import ClientSecurity, ServerSecurity

    expected = (rendered_tree() / SECRETS / "auth-token").read_text()
    tokens = set()
    for name in SYNTHAUG:
        workload = one(target, "Deployment", name)
        env = container_env(target, only_container(workload))
        assert env["SYNTHAUG_HOST"] == "0.0.0.0", f"{name} must be reachable through its Service"
        assert "SYNTHAUG_AUTH_TOKEN" not in env, "the token comes from a mounted file"
        env = _materialise_secret_files(target, workload, env, tmp_path)
        config = runtime.parse_config(name, [], env)
        assert config.host == "0.0.0.0" and config.security.token == expected
        tokens.add(config.security.token)
        if name == "orchestrator":  # it sends what the services check
            tokens.add(ClientSecurity.from_env(env).token)
        assert ServerSecurity.from_env(env).token == expected
    assert tokens == {expected}


@pytest.mark.parametrize("service", SYNTHAUG)
def test_images_bind_all_interfaces(service: str) -> None:
    chain = stage_chain(dockerfile_stages(dockerfile_for(service)), service)
    env = " ".join(a for i, a in chain if i == "ENV")
    assert re.search(r"\bSYNTHAUG_HOST=0\.0\.0\.0\b", env)


def test_compose_credentials_come_from_secret_files(captured_s3: list[dict[str, Any]], tmp_path: Path) -> None:
    from services.common.security import ServerSecurity

    spec = compose()
    secrets_dir = tmp_path / "secrets"
    subprocess.run(["/bin/sh", str(DEPLOY / "make-secrets.sh"), str(secrets_dir)], check=True, capture_output=True, timeout=30)
    declared = spec["secrets"]
    assert sorted(Path(s["file"]).name for s in declared.values()) == sorted(SECRET_FILES)
    for secret in declared.values():
        assert (DEPLOY / secret["file"]).parent.resolve() == (DEPLOY / SECRETS).resolve()
    for name, svc in spec["services"].items():
        env = {k: str(v) for k, v in svc.get("environment", {}).items()}
        for var, value in env.items():
            if _SECRET_NAME.search(var):
                assert var.endswith("_FILE"), f"{name}: {var} must come from a secret file, not an environment value"
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/") and secret in svc.get("secrets", []), f"{name}: {var}={value} is not a mounted secret"
                assert secret in declared
        if name in SYNTHAUG:
            assert env["SYNTHAUG_HOST"] == "0.0.0.0"
            # What the code makes of it, with the secrets make-secrets.sh wrote.
            local = {k: str(secrets_dir / Path(declared[v.removeprefix("/run/secrets/")]["file"]).name) if k.endswith("_FILE") else v
                     for k, v in env.items()}
            assert store_mod.open_store(None, local) == "fake-store"
            expected = ((secrets_dir / "s3-access-key").read_text(), (secrets_dir / "s3-secret-key").read_text())
            assert (captured_s3[-1]["access"], captured_s3[-1]["secret"]) == expected
            assert ServerSecurity.from_env(local).token == (secrets_dir / "auth-token").read_text()


def test_tls_component_serves_mutual_tls_and_probes_the_health_port() -> None:
    from services.common.security import ClientSecurity

    for name in SYNTHAUG:
        workload = one("tls", "Deployment", name)
        container = only_container(workload)
        env = {k: v for k, v in container_env("tls", container).items() if not k.endswith("_FILE")}
        config = runtime.parse_config(name, [], env)
        assert config.security.tls and config.security.client_ca_file, f"{name}: mutual TLS"
        assert config.health_port > 0 and config.health_port != DEFAULT_PORTS[name]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == config.health_port, f"{name} {probe} must use the plaintext health port"
        assert named_port(container, "grpc") == DEFAULT_PORTS[name]
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        for path in (config.security.cert_file, config.security.key_file, config.security.client_ca_file):
            mounts = [m for m in container["volumeMounts"] if str(path).startswith(m["mountPath"] + "/")]
            assert len(mounts) == 1 and volumes[mounts[0]["name"]]["secret"]["secretName"] == "synthaug-tls", f"{name}: {path}"
        if name == "orchestrator":
            client = ClientSecurity.from_env(env)
            assert client.tls and client.client_cert_file, "the orchestrator dials the services with TLS and its certificate"
    assert not [s for s in objects("tls", "Secret") if s["metadata"]["name"].startswith("synthaug-tls")], "the certificate is the user's, never rendered"


def test_healthcheck_uses_the_plaintext_health_port_and_needs_no_token(tmp_path: Path) -> None:
    from services.common.security import ServerSecurity
    from services.common.store import FileStore

    config = runtime.ServerConfig(service="gan", host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=0.0, health_port=0,
                                  security=ServerSecurity(token="a-token-the-check-does-not-know"))
    server = runtime.ServiceRuntime(config, store=FileStore(str(tmp_path / "store")))
    server.start()
    try:
        env = {**os.environ, "SYNTHAUG_HEALTH_PORT": str(server.health_port)}
        env.pop("SYNTHAUG_AUTH_TOKEN", None)
        env.pop("SYNTHAUG_AUTH_TOKEN_FILE", None)
        for port in (str(server.port), "1"):  # the health port wins over whatever port is named
            proc = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py"), port], env=env, capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
        healthcheck = _load_healthcheck()
        assert healthcheck.main([str(server.port)]) == 0  # the main port: health needs no token
    finally:
        server.stop(grace=0)


@pytest.mark.skipif(not Path("/bin/sh").exists(), reason="needs a POSIX shell")
def test_minio_init_reads_every_credential_from_files_as_compose_mounts_them(tmp_path: Path) -> None:
    init_env = {k: str(v) for k, v in compose()["services"]["minio-init"]["environment"].items()}
    secrets_dir = tmp_path / "secrets"
    subprocess.run(["/bin/sh", str(DEPLOY / "make-secrets.sh"), str(secrets_dir)], check=True, capture_output=True, timeout=30)
    declared = compose()["secrets"]
    env = {k: str(secrets_dir / Path(declared[v.removeprefix("/run/secrets/")]["file"]).name) if k.endswith("_FILE") else v for k, v in init_env.items()}
    proc = _run_init(tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split(" ", 2)[2] for line in (tmp_path / "mc.log").read_text().splitlines()]
    root_user, root_password = (secrets_dir / "minio-root-user").read_text(), (secrets_dir / "minio-root-password").read_text()
    assert calls[0].endswith(f"{root_user} {root_password}")
    access, secret = (secrets_dir / "s3-access-key").read_text(), (secrets_dir / "s3-secret-key").read_text()
    assert f"admin user add store {access} {secret}" in calls


def test_cuda_image_installs_the_cpu_image_dependencies_plus_torch() -> None:
    """Issue 16: the CUDA image's Python dependency set is the CPU image's plus torch and
    torchvision (the CPU image's services import no torch), both read from pyproject.toml."""
    script = DOCKER / "pyproject_deps.py"

    def installed(dockerfile: str) -> set[str]:
        text = (DOCKER / dockerfile).read_text()
        names: set[str] = set()
        for args in re.findall(r"pyproject_deps\.py pyproject\.toml([^>]*)>", text):
            out = subprocess.run([sys.executable, str(script), str(ROOT / "pyproject.toml"), *args.split()],
                                 capture_output=True, text=True, check=True).stdout.split()
            names |= {re.split(r"[<>=!~\[; ]", r)[0] for r in out}
        assert names, f"{dockerfile} installs nothing from pyproject.toml"
        return names

    cpu, gpu = installed("Dockerfile.cpu"), installed("Dockerfile.gpu")
    assert gpu - cpu == {"torch", "torchvision"}
    assert cpu <= gpu
