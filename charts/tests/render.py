"""Renders and lints the chart with Helm's own engine (helm-python-sdk from PyPI bundles Helm's
Go library; no helm binary, no cluster) and checks what the values choose. Run by
`cargo test -p shopfloor-e2e --test chart`; exits non-zero with the reason on any problem."""

import sys
from pathlib import Path

import yaml

try:
    import helm_python as helm
except ImportError:
    print("SKIP: helm-python-sdk is not installed (pip install helm-python-sdk); the chart was NOT checked")
    sys.exit(3)

CHART = Path(__file__).resolve().parent.parent / "shopfloor"


def render(values):
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name="shopfloor", namespace="shopfloor-system", is_install=True)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def kinds(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def emit_rbac(namespace):
    """Prints the chart's RBAC for a release in `namespace` watching only that namespace: what the
    real-cluster scenario installs to run the controller as the chart's ServiceAccount."""
    chart = helm.Chart.load(CHART)
    out = chart.render({"watchNamespaces": [namespace]}, name="shopfloor", namespace=namespace, is_install=True)
    docs = [d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]
    print(yaml.safe_dump_all(rbac))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "rbac":
        emit_rbac(sys.argv[2])
        return
    problems = []
    # Linted as for the oldest and the newest supported Kubernetes version.
    for kube in ("v1.30.0", "v1.33.0"):
        for values in ({}, {"watchNamespaces": ["plant-a", "plant-b"]}):
            report = helm.lint(CHART, values, strict=True, namespace="shopfloor-system", kube_version=kube)
            for m in report.get("messages", []):
                if m.get("severity", 0) >= 2:
                    problems.append(f"lint {kube} {values}: {m}")
            problems.extend(f"lint {kube} {values}: {e}" for e in report.get("errors", []))

    default = render({})
    if [r["metadata"]["name"] for r in kinds(default, "ClusterRole")] != ["shopfloor-controller"]:
        problems.append("default values: expected one ClusterRole for the cluster-wide scope")
    env = {e["name"]: e for c in kinds(default, "Deployment")[0]["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    if "SHOPFLOOR_NAMESPACES" in env:
        problems.append("default values: SHOPFLOOR_NAMESPACES must not be set")

    scoped = render({"watchNamespaces": ["plant-a", "plant-b"]})
    if kinds(scoped, "ClusterRole") or kinds(scoped, "ClusterRoleBinding"):
        problems.append("watchNamespaces: no cluster-wide RBAC may be installed")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in kinds(scoped, "Role")}
    for ns in ("plant-a", "plant-b"):
        if (ns, "shopfloor-controller-objects") not in roles:
            problems.append(f"watchNamespaces: no Role in {ns}")
    objects = [r for r in kinds(scoped, "Role") if r["metadata"]["name"] == "shopfloor-controller-objects"]
    for r in objects:
        groups = {g for rule in r["rules"] for g in rule["apiGroups"]}
        if groups != {"shopfloor.io", "events.k8s.io"}:
            problems.append(f"watchNamespaces: Role in {r['metadata']['namespace']} grants {groups}")
    bindings = {(b["metadata"]["namespace"], b["subjects"][0]["namespace"]) for b in kinds(scoped, "RoleBinding")}
    if ("plant-a", "shopfloor-system") not in bindings:
        problems.append("watchNamespaces: the RoleBinding in plant-a must bind the controller's ServiceAccount")
    env = {e["name"]: e for c in kinds(scoped, "Deployment")[0]["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    if env.get("SHOPFLOOR_NAMESPACES", {}).get("value") != "plant-a,plant-b":
        problems.append(f"watchNamespaces: SHOPFLOOR_NAMESPACES is {env.get('SHOPFLOOR_NAMESPACES')}")

    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(f"chart OK: lint clean; {len(default)} objects by default, {len(scoped)} with watchNamespaces")


main()
