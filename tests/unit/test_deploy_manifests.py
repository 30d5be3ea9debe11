"""deploy/: the DaemonSet manifest validates offline against the Kubernetes schemas
(kubernetes-validate ships them), its arguments are the agent's, and the Dockerfile
builds in one stage and runs in another."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
from helpers import in_ci

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFEST = DEPLOY / "socklb-agent.yaml"

try:
    import kubernetes_validate  # type: ignore[import-untyped]  # no stubs, no py.typed
    import yaml

    HAVE_VALIDATE = True
except ImportError:  # the dev extra installs them
    if not in_ci():
        pytest.skip("kubernetes-validate is not installed (pip install '.[dev]')", allow_module_level=True)
    HAVE_VALIDATE = False  # CI=true: every test here fails (below), none is skipped


def resources() -> List[Dict[str, Any]]:
    if not HAVE_VALIDATE:
        pytest.fail("kubernetes-validate and PyYAML are missing: install socklb[dev] (CI=true forbids skipping)")
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


@pytest.mark.parametrize("version", ["1.31.0", "1.34.0", "1.37.0"])
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    docs = resources()
    assert [d["kind"] for d in docs] == ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)  # raises on any error or unknown field


def test_a_broken_manifest_is_rejected() -> None:
    ds = resources()[3]
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = "BPF"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, "1.37.0", strict=True)
    ds = resources()[3]
    ds["spec"]["template"]["spec"]["hostPIDs"] = True  # a typo: strict validation knows the fields
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, "1.37.0", strict=True)


def test_rbac_reads_only_what_the_agent_watches() -> None:
    role = resources()[1]
    rules = {(r["apiGroups"][0], res): set(r["verbs"]) for r in role["rules"] for res in r["resources"]}
    assert rules == {
        ("", "services"): {"list", "watch"},
        ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
        ("", "nodes"): {"get", "list", "watch"},
    }


def test_the_daemonset_runs_the_agent_unprivileged_with_named_capabilities() -> None:
    from socklb.cli import parser

    pod = resources()[3]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == {"BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert paths == {"cgroup": "/sys/fs/cgroup", "bpffs": "/sys/fs/bpf"}
    assert mounts["bpffs"] == "/sys/fs/bpf"
    # The container's arguments are the agent's command line (the image's entrypoint is `socklb kubernetes`).
    args = parser().parse_args(["kubernetes", *c["args"]])
    assert args.cgroup.startswith(mounts["cgroup"] + "/")
    assert args.pin_dir.startswith(mounts["bpffs"] + "/")
    assert args.healthz_port == c["livenessProbe"]["httpGet"]["port"] == c["ports"][0]["containerPort"]
    assert args.node_name == "$(NODE_NAME)"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_the_dockerfile_builds_with_clang_and_runs_on_the_system_libbpf() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"
    build, run = text.split("\nFROM ", 2)[1:]
    assert "clang" in build and "libbpf-dev" in build and "pip install" in build
    assert "libbpf1" in run and "clang" not in run and "-dev" not in run
    assert "COPY --from=build" in run
    assert 'ENTRYPOINT ["socklb", "kubernetes"]' in run
