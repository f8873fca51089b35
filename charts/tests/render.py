"""Renders and lints the chart with Helm's own engine (helm-python-sdk from PyPI bundles Helm's
Go library; no helm binary, no cluster) and checks what the values choose: with default values
and with every optional feature on; that its values schema refuses wrong values; every rendered
object against the Kubernetes schemas of the supported versions (kubernetes-validate, offline);
the alerts with `promtool check rules` and `promtool test rules` (Debian's prometheus package).
Run by `cargo test -p shopfloor-e2e --test chart`; exits 1 with the reason on any problem, 3 when
Helm's engine is missing (nothing checked), 4 when everything that could run passed but a part
was skipped (named in the output)."""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

try:
    import helm_python as helm
except ImportError:
    print("SKIP: helm-python-sdk is not installed (pip install helm-python-sdk); the chart was NOT checked")
    sys.exit(3)

CHART = Path(__file__).resolve().parent.parent / "shopfloor"
TESTS = Path(__file__).resolve().parent

# Every optional feature on.
EVERYTHING = {
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
    "networkPolicy": {"plantCIDRs": ["10.20.0.0/16", "192.168.50.0/24"]},
    "tracing": {"otlpEndpoint": "http://otel-collector.observability:4318"},
    "watchNamespaces": ["plant-a"],
}

# Wrong values the schema must refuse at install, with the part of Helm's message that says why.
WRONG = [
    ({"replicas": 0}, "replicas"),
    ({"networkPolicy": {"plantCIDRs": ["plant network"]}}, "plantCIDRs"),
    ({"quic": {"port": 70000}}, "port"),
    ({"monitoring": {"prometheusRule": {"commandFailureRatio": 2}}}, "commandFailureRatio"),
    ({"replica": 2}, "replica"),
    ({"kubeApi": {"writesPerSecond": 0}}, "writesPerSecond"),
]

# The Kubernetes versions the chart supports (Chart.yaml kubeVersion).
KUBE_VERSIONS = ("1.30.0", "1.33.0")


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
    skipped = []
    # Linted as for the oldest and the newest supported Kubernetes version.
    for kube in ("v1.30.0", "v1.33.0"):
        for values in ({}, {"watchNamespaces": ["plant-a", "plant-b"]}, EVERYTHING):
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
    args = kinds(default, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    for arg in ("--kube-writes-per-second=50", "--kube-write-burst=100"):
        if arg not in args:
            problems.append(f"default values: the controller's args {args} lack {arg}")

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

    everything = render(EVERYTHING)
    for kind in ("NetworkPolicy", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule", "ConfigMap"):
        if not kinds(everything, kind):
            problems.append(f"every feature on: no {kind}")
    problems.extend(check_network_policy(everything))
    problems.extend(check_dashboard(everything))
    for values, field in WRONG:
        try:
            render(values)
            problems.append(f"the values schema accepted {values}")
        except Exception as e:  # Helm's error, raised through the SDK
            if field not in str(e):
                problems.append(f"the values schema refused {values} without naming {field}: {e}")
    problems.extend(validate_kubernetes(default + scoped + everything, skipped))
    problems.extend(check_alerts(everything, skipped))

    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(
        f"chart OK: lint clean; {len(default)} objects by default, {len(scoped)} with watchNamespaces, "
        f"{len(everything)} with every feature on; {len(WRONG)} wrong values refused by the schema"
    )
    if skipped:
        print("PARTLY SKIPPED: " + "; ".join(skipped))
        sys.exit(4)


def check_network_policy(docs):
    problems = []
    np = kinds(docs, "NetworkPolicy")[0]["spec"]
    quic = [r for r in np["ingress"] if any(p.get("protocol") == "UDP" for p in r["ports"])]
    cidrs = sorted(f["ipBlock"]["cidr"] for r in quic for f in r.get("from", []))
    if cidrs != ["10.20.0.0/16", "192.168.50.0/24"]:
        problems.append(f"NetworkPolicy: QUIC admitted from {cidrs}, not the plant networks")
    metrics = [r for r in np["ingress"] if any(p.get("protocol") == "TCP" for p in r["ports"])]
    if not metrics or "namespaceSelector" not in metrics[0]["from"][0]:
        problems.append("NetworkPolicy: metrics must be admitted from the monitoring namespace only")
    if sorted(np["policyTypes"]) != ["Egress", "Ingress"]:
        problems.append("NetworkPolicy: must restrict both directions")
    return problems


def check_dashboard(docs):
    cm = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"] == "shopfloor-dashboard"]
    if not cm:
        return ["dashboard: no ConfigMap"]
    if cm[0]["metadata"]["labels"].get("grafana_dashboard") != "1":
        return ["dashboard: the ConfigMap lacks the sidecar's label grafana_dashboard=1"]
    dash = json.loads(cm[0]["data"]["shopfloor.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    return [] if exprs else ["dashboard: no queries"]


def validate_kubernetes(docs, skipped):
    try:
        import kubernetes_validate
    except ImportError:
        skipped.append("kubernetes-validate is not installed (pip install kubernetes-validate): rendered objects were NOT checked against the Kubernetes schemas")
        return []
    problems = []
    builtin = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    for version in KUBE_VERSIONS:
        for d in builtin:
            try:
                kubernetes_validate.validate(d, version, strict=True)
            except Exception as e:
                problems.append(f"Kubernetes {version}: {d['kind']} {d['metadata']['name']}: {e}")
    return problems


def check_alerts(docs, skipped):
    promtool = shutil.which("promtool")
    if promtool is None:
        skipped.append("promtool is not installed (apt-get install prometheus): the alerts were NOT checked")
        return []
    rule = kinds(docs, "PrometheusRule")[0]
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "full.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
        # The unit tests compare labels; the annotations' wording is checked by `check rules`.
        bare = json.loads(json.dumps(rule["spec"]["groups"]))
        for g in bare:
            for r in g["rules"]:
                r.pop("annotations", None)
        (tmp / "rules.yaml").write_text(yaml.safe_dump({"groups": bare}))
        shutil.copy(TESTS / "alerts.test.yaml", tmp / "alerts.test.yaml")
        for args in (["check", "rules", str(tmp / "full.yaml")], ["test", "rules", str(tmp / "alerts.test.yaml")]):
            out = subprocess.run([promtool, *args], capture_output=True, text=True)
            if out.returncode != 0:
                problems.append(f"promtool {' '.join(args[:2])}:\n{out.stdout}{out.stderr}")
    return problems


main()
