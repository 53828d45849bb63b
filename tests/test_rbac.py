"""Least privilege (issue 11 item 5): RBAC generated from the goal limits every write by resourceNames; the opt-in
marker decides what the daemon may touch."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleetpilot.agent.cli import main
from fleetpilot.agent.rbac import MANAGED_LABEL, opt_in_refusal, rbac_manifests
from fleetpilot.simulations.goal import load_goal

REPO = Path(__file__).resolve().parent.parent
ROUTED = REPO / "examples" / "goals" / "two-model-routed.yaml"

WRITE_VERBS = {"patch", "update", "delete", "deletecollection"}


def test_every_write_names_its_targets() -> None:
    goal = load_goal(ROUTED)
    docs = rbac_manifests(goal)
    roles = [d for d in docs if d["kind"] == "Role"]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            if set(rule["verbs"]) & WRITE_VERBS and rule["resources"] != ["events"]:  # Event names are generated
                assert rule.get("resourceNames"), rule
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert not set(rule["verbs"]) & {"delete", "deletecollection", "escalate", "bind", "impersonate"}
    scale = [r for role in roles for r in role["rules"] if r["resources"] == ["deployments/scale"]]
    assert sorted(n for r in scale for n in r["resourceNames"]) == sorted(m.deployment.name for m in goal.models)
    routes = [r for role in roles for r in role["rules"] if r["resources"] == ["httproutes"]]
    assert sorted(n for r in routes for n in r["resourceNames"]) == sorted(
        r.http_route.name for r in goal.routes if r.http_route is not None)


def test_one_role_per_namespace_and_other_kinds() -> None:
    goal = load_goal(ROUTED)
    m0 = goal.models[0]
    moved = dataclasses.replace(m0, deployment=dataclasses.replace(m0.deployment, namespace="other",
                                                                    kind="StatefulSet"))
    goal = dataclasses.replace(goal, models=(moved, *goal.models[1:]))
    docs = rbac_manifests(goal, service_account="fp", service_account_namespace="ops", lease_name="fp-lease")
    by_ns = {d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"}
    assert {"other", "ops", m0.deployment.namespace} <= by_ns
    other = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["namespace"] == "other")
    assert {"apiGroups": ["apps"], "resources": ["statefulsets/scale"], "resourceNames": [m0.deployment.name],
            "verbs": ["get", "patch"]} in other["rules"]
    lease = next(d for d in docs if d["metadata"]["name"] == "fleetpilot-leader-election" and d["kind"] == "Role")
    assert any(r.get("resourceNames") == ["fp-lease"] for r in lease["rules"])
    for b in (d for d in docs if d["kind"] == "RoleBinding"):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "fp", "namespace": "ops"}]


def test_cli_prints_applicable_yaml() -> None:
    r = subprocess.run([sys.executable, "-m", "fleetpilot", "rbac", "--goal", str(ROUTED)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert {d["kind"] for d in docs} == {"Role", "RoleBinding"}
    assert MANAGED_LABEL in r.stdout  # the header tells the operator about the opt-in label
    bad = subprocess.run([sys.executable, "-m", "fleetpilot", "rbac", "--goal", str(ROUTED), "--namespace", "Bad_NS"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_opt_in_marker() -> None:
    assert opt_in_refusal({"metadata": {"labels": {MANAGED_LABEL: "true"}}}, "deployment/a") is None
    assert opt_in_refusal({"metadata": {"annotations": {MANAGED_LABEL: "True"}}}, "deployment/a") is None
    why = opt_in_refusal({"metadata": {"labels": {"app": "x"}}}, "deployment/inference/a")
    assert why is not None and "deployment/inference/a" in why and MANAGED_LABEL in why
    assert opt_in_refusal({"metadata": {"labels": {MANAGED_LABEL: "false"}}}, "httproute/x") is not None
    assert opt_in_refusal({}, "httproute/x") is not None


def test_take_over_keda_adds_only_the_scaledobject_patch() -> None:
    goal = load_goal(ROUTED)
    plain = rbac_manifests(goal)
    taking = rbac_manifests(goal, take_over_keda=True)
    rules = lambda docs: [r for d in docs if d["kind"] == "Role" for r in d["rules"]]  # noqa: E731
    added = [r for r in rules(taking) if r not in rules(plain)]
    namespaces = {m.deployment.namespace for m in goal.models}
    assert len(added) == len(namespaces)
    for r in added:
        assert r == {"apiGroups": ["keda.sh"], "resources": ["scaledobjects"], "verbs": ["patch"]}
    # the default stays as before: ScaledObjects are only read
    assert all("patch" not in r["verbs"] for r in rules(plain) if r["resources"] == ["scaledobjects"])


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("name", ['x"y', "UPPER_case", "-lead", "lead-", "a..b", "a b", "", ".lead", "a" * 254,
                                  "lease\nname"])
def test_lease_name_must_be_a_kubernetes_name(name: str) -> None:
    rc, out, err = _cli(["rbac", "--goal", str(ROUTED), f"--lease-name={name}"])
    assert rc == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and "--lease-name" in err and "DNS-1123" in err


@pytest.mark.parametrize("name", ["fleetpilot", "fleetpilot.leader", "a", "lease-1.example.com", "a" * 253])
def test_lease_name_valid_names_reach_resource_names(name: str) -> None:
    rc, out, err = _cli(["rbac", "--goal", str(ROUTED), f"--lease-name={name}"])
    assert rc == 0, err
    leases = [r for d in yaml.safe_load_all(out) if d and d["kind"] == "Role" for r in d["rules"]
              if "leases" in r.get("resources", []) and r.get("resourceNames")]
    assert leases and all(r["resourceNames"] == [name] for r in leases)


def test_out_is_not_replaced_without_force(tmp_path: Path) -> None:
    out = tmp_path / "rbac.yaml"
    out.write_text("# hand-edited RBAC\n")
    rc, _, err = _cli(["rbac", "--goal", str(ROUTED), "--out", str(out)])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--force" in err and "--out" in err
    assert out.read_text() == "# hand-edited RBAC\n"
    rc, _, err = _cli(["rbac", "--goal", str(ROUTED), "--out", str(out), "--force"])
    assert rc == 0, err
    assert {d["kind"] for d in yaml.safe_load_all(out.read_text()) if d} == {"Role", "RoleBinding"}
