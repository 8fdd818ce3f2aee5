"""The container recipe and the Kubernetes manifests, checked by their shape (Docker and a cluster
are not available where the tests run): the Dockerfile parsed by ``dockerfile-parse``, every
manifest validated against the Kubernetes OpenAPI schemas ``kubernetes-validate`` ships, and the
guard.yaml and policies inside the ConfigMaps checked by the guard's own parsers."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from fixtures import ROOT
from jsonschema import Draft202012Validator

from mcp_guard.config import parse_config
from mcp_guard.grants import generate_keypair, public_jwk
from mcp_guard.policy import parse_sources

K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.33.0"  # the oldest minor the manifests promise to apply on (preStop sleep is GA from 1.33)


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


def kind(name: str, kind_: str) -> dict[str, Any]:
    (found,) = [d for d in manifests() if d["kind"] == kind_ and d["metadata"]["name"] == name]
    return found


# --------------------------------------------------------------------------- Dockerfile


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(path=str(ROOT / "Dockerfile"))
    return parser


def _final_stage(parser: DockerfileParser) -> list[dict[str, Any]]:
    stages: list[list[dict[str, Any]]] = []
    for ins in parser.structure:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages[-1]


def test_the_image_runs_as_a_non_root_user(dockerfile: DockerfileParser) -> None:
    final = _final_stage(dockerfile)
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert re.fullmatch(r"\d+:\d+", users[-1]), "a numeric uid:gid, so runAsNonRoot can verify it"
    # the user is made in the final stage, and nothing runs as root after USER
    last_user = max(n for n, i in enumerate(final) if i["instruction"] == "USER")
    assert all(i["instruction"] != "RUN" for i in final[last_user:])
    assert "useradd" in " ".join(i["value"] for i in final if i["instruction"] == "RUN")


def test_the_image_suits_a_read_only_root_filesystem(dockerfile: DockerfileParser) -> None:
    final = _final_stage(dockerfile)
    env = " ".join(i["value"] for i in final if i["instruction"] == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env  # no .pyc written beside the code at run time
    volumes = [json.loads(i["value"]) for i in final if i["instruction"] == "VOLUME"]
    assert ["/var/lib/mcp-guard"] in volumes  # the one writable place: audit log, SQLite state
    assert "HOME=/var/lib/mcp-guard" in env


def test_the_image_exposes_the_mcp_and_admin_ports_and_checks_its_health(dockerfile: DockerfileParser) -> None:
    final = _final_stage(dockerfile)
    exposed = " ".join(i["value"] for i in final if i["instruction"] == "EXPOSE").split()
    assert {"8765", "9464"} <= set(exposed)
    (health,) = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    assert "CMD" in health and "127.0.0.1:9464/healthz" in health
    assert [i["value"] for i in final if i["instruction"] == "STOPSIGNAL"] == ["SIGTERM"]  # the drain's signal
    (entry,) = [json.loads(i["value"]) for i in final if i["instruction"] == "ENTRYPOINT"]
    assert entry == ["mcp-guard"]
    (cmd,) = [json.loads(i["value"]) for i in final if i["instruction"] == "CMD"]
    assert cmd[:3] == ["serve", "--config", "/etc/mcp-guard/guard.yaml"]
    assert dockerfile.baseimage.startswith("${PYTHON_IMAGE}") or "python" in dockerfile.baseimage


def test_the_build_stage_copies_only_what_the_wheel_needs(dockerfile: DockerfileParser) -> None:
    copied = " ".join(i["value"] for i in dockerfile.structure if i["instruction"] == "COPY")
    for needed in ("pyproject.toml", "README.md", "LICENSE", "mcp_guard"):
        assert needed in copied
    assert "tests" not in copied and ".venv" not in copied


# --------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_against_the_kubernetes_schemas(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_refuses_what_kubernetes_would() -> None:
    broken = copy.deepcopy(kind("mcp-guard", "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    wrong = copy.deepcopy(kind("mcp-guard", "Deployment"))
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, K8S_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_the_deployment_probes_the_admin_port_and_runs_locked_down() -> None:
    deploy = kind("mcp-guard", "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (guard,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in guard["ports"]}
    assert ports == {"mcp": 8765, "admin": 9464}
    assert guard["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert guard["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    sc = guard["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in guard["volumeMounts"]}
    assert {"/var/lib/mcp-guard", "/tmp"} <= mounts  # the writable places a read-only root needs
    # the grace period covers the drain (serve.drain_timeout) plus the preStop pause
    config = yaml.safe_load(kind("mcp-guard-config", "ConfigMap")["data"]["guard.yaml"])
    drain = int(config["serve"]["drain_timeout"].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] > drain + guard["lifecycle"]["preStop"]["sleep"]["seconds"]
    secret_refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in guard["env"] if "valueFrom" in e]
    assert secret_refs == ["mcp-guard-keys"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "mcp-guard-config"
    assert volumes["policies"]["configMap"]["name"] == "mcp-guard-policies"
    assert volumes["keys"]["secret"]["secretName"] == "mcp-guard-keys"
    redis = kind("mcp-guard-redis", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_configmaps_hold_a_guard_yaml_and_policies_the_guard_accepts(tmp_path: Path) -> None:
    from mcp_guard.schema import config_schema

    text = kind("mcp-guard-config", "ConfigMap")["data"]["guard.yaml"]
    doc = yaml.safe_load(text)
    assert not list(Draft202012Validator(config_schema()).iter_errors(doc))
    # laid out as the pod mounts it: guard.yaml, policies/ from the second ConfigMap, keys/ from the Secret
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "corp-idp.jwk").write_text(json.dumps(public_jwk(generate_keypair()[1])))
    policies = kind("mcp-guard-policies", "ConfigMap")["data"]
    (tmp_path / "policies").mkdir()
    for name, body in policies.items():
        (tmp_path / "policies" / name).write_text(body)
    local = text.replace("/etc/mcp-guard/keys/", f"{tmp_path}/keys/")
    config = parse_config(local, str(tmp_path / "guard.yaml"), environ={"MCP_GUARD_APPROVAL_KEY": "ab" * 32, "PATH": "/usr/bin:/bin"})
    assert config.serve.admin is not None and (config.serve.admin.host, config.serve.admin.port) == ("0.0.0.0", 9464)
    assert config.state_url.startswith("redis://mcp-guard-redis:") and config.upstreams["files"].required
    parsed = parse_sources(list(policies.items()), upstreams=list(config.upstreams))
    assert [p.id for p in parsed.policies] == ["files"] and not parsed.problems
    service = kind("mcp-guard", "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["mcp"]  # the admin port is not the public Service
    assert service["spec"].get("sessionAffinity", "None") == "None"  # replicas need no stickiness
