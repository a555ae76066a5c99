#!/usr/bin/env python3
"""Checks the Kubernetes manifests in deploy/kubernetes without a cluster.

Every document must parse and carry apiVersion, kind and metadata.name; each kind used here must
have the fields the API server requires (selectors that match their pod templates, containers
with a name and an image, ports, PVC sizes); and the references between them must resolve:
Services select pods and target ports those pods declare, volumes name ConfigMaps and claims that
exist, probes point at declared ports. The planner's containers must run as a non-root user with
gRPC liveness and readiness probes and resource requests; the planner Deployment has one replica
and the Recreate strategy. The ConfigMap's flag file must equal deploy/config/planner.flags, the
worker containers must set the variables client/worker_env.h requires and only ones it knows,
and kustomization.yaml must list files that exist.

  python3 deploy/scripts/check_manifests.py [ROOT]     exit 0: fine; 1: the problems, one a line
"""
import os
import re
import sys

import yaml

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1
                       else os.path.join(os.path.dirname(__file__), "..", ".."))
KUBE = os.path.join(ROOT, "deploy", "kubernetes")
problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def get(obj, path, default=None):
    for key in path.split("."):
        if not isinstance(obj, dict) or key not in obj:
            return default
        obj = obj[key]
    return obj


def worker_env_variables():
    """The variables client/worker_env.h documents, and the required ones."""
    text = open(os.path.join(ROOT, "client", "worker_env.h")).read()
    known, required = set(), set()
    for line in text.splitlines():
        m = re.match(r"//\s+(EPLB_[A-Z_]+)\s+(.*)", line)
        if m:
            known.add(m.group(1))
            if "(required)" in m.group(2):
                required.add(m.group(1))
    return known, required


documents = []  # (file, index, document)
for dirpath, _, files in os.walk(KUBE):
    for name in sorted(files):
        if not name.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, ROOT)
        try:
            docs = list(yaml.safe_load_all(open(path)))
        except yaml.YAMLError as error:
            problem(rel, f"does not parse: {error}")
            continue
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            documents.append((rel, i, doc))

if not documents:
    problem(KUBE, "no manifests found")

by_kind = {}
for rel, i, doc in documents:
    where = f"{rel}#{i}"
    if not isinstance(doc, dict):
        problem(where, "is not a mapping")
        continue
    for field in ("apiVersion", "kind"):
        if not doc.get(field):
            problem(where, f"{field} is missing")
    if doc.get("kind") != "Kustomization" and not get(doc, "metadata.name"):
        problem(where, "metadata.name is missing")
    by_kind.setdefault(doc.get("kind"), []).append((where, doc))

EXPECTED_API = {
    "Deployment": "apps/v1", "StatefulSet": "apps/v1", "Service": "v1", "Pod": "v1",
    "ConfigMap": "v1", "PersistentVolumeClaim": "v1", "Secret": "v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}
for kind, items in by_kind.items():
    if kind not in EXPECTED_API:
        problem(items[0][0], f"kind {kind} is not one this check knows")
        continue
    for where, doc in items:
        if doc.get("apiVersion") != EXPECTED_API[kind]:
            problem(where, f"apiVersion {doc.get('apiVersion')} should be {EXPECTED_API[kind]}")

config_maps = {get(d, "metadata.name"): d for _, d in by_kind.get("ConfigMap", [])}
claims = {get(d, "metadata.name") for _, d in by_kind.get("PersistentVolumeClaim", [])}
known_env, required_env = worker_env_variables()

# Pod specs: (where, labels, spec, owner kind, owner name).
pods = []
for kind in ("Deployment", "StatefulSet"):
    for where, doc in by_kind.get(kind, []):
        selector = get(doc, "spec.selector.matchLabels") or {}
        labels = get(doc, "spec.template.metadata.labels") or {}
        if not selector:
            problem(where, "spec.selector.matchLabels is missing")
        for key, value in selector.items():
            if labels.get(key) != value:
                problem(where, f"selector {key}={value} does not match the pod template's labels")
        spec = get(doc, "spec.template.spec")
        if not isinstance(spec, dict):
            problem(where, "spec.template.spec is missing")
            continue
        pods.append((where, labels, spec, kind, get(doc, "metadata.name")))
        if kind == "StatefulSet" and not get(doc, "spec.serviceName"):
            problem(where, "spec.serviceName is missing")
for where, doc in by_kind.get("Pod", []):
    pods.append((where, get(doc, "metadata.labels") or {}, doc.get("spec") or {}, "Pod",
                 get(doc, "metadata.name")))

for where, doc in by_kind.get("Deployment", []):
    if get(doc, "metadata.name") == "eplb-planner":
        if get(doc, "spec.replicas") != 1:
            problem(where, "the planner Deployment must have exactly 1 replica")
        if get(doc, "spec.strategy.type") != "Recreate":
            problem(where, "the planner Deployment must use strategy Recreate")

for where, labels, spec, kind, name in pods:
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    if not spec.get("containers"):
        problem(where, "spec.containers is empty")
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    for volume in volumes.values():
        cm = get(volume, "configMap.name")
        if cm is not None and cm not in config_maps:
            problem(where, f"volume {volume.get('name')} names ConfigMap {cm}, which no manifest defines")
        claim = get(volume, "persistentVolumeClaim.claimName")
        if claim is not None and claim not in claims:
            problem(where, f"volume {volume.get('name')} names claim {claim}, which no manifest defines")
    pod_security = spec.get("securityContext") or {}
    for c in containers:
        cw = f"{where} container {c.get('name')}"
        if not c.get("name") or not c.get("image"):
            problem(cw, "name and image are required")
        ports = {p.get("containerPort") for p in c.get("ports") or []}
        for mount in c.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                problem(cw, f"mounts volume {mount.get('name')}, which the pod does not define")
        if not get(c, "resources.requests"):
            problem(cw, "resources.requests is missing")
        image = c.get("image", "")
        if "eplb-planner" in image:
            secure = {**pod_security, **(c.get("securityContext") or {})}
            if not secure.get("runAsNonRoot"):
                problem(cw, "the planner must run as non-root (runAsNonRoot)")
            for probe in ("livenessProbe", "readinessProbe"):
                port = get(c, f"{probe}.grpc.port")
                if port is None:
                    problem(cw, f"{probe} must be a gRPC probe (grpc.port)")
                elif port not in ports:
                    problem(cw, f"{probe} port {port} is not a declared containerPort")
            if not any(a.startswith("--flagfile=") for a in c.get("args") or []):
                problem(cw, "the planner should read its flags from the ConfigMap (--flagfile=)")
            if c in (spec.get("initContainers") or []) and c.get("restartPolicy") != "Always":
                problem(cw, "a planner init container must be a native sidecar (restartPolicy: Always)")
        env = {e.get("name") for e in c.get("env") or []}
        eplb_env = {n for n in env if n and n.startswith("EPLB_")}
        if "eplb-worker" in image and not c.get("command"):
            for missing in sorted(required_env - env):
                problem(cw, f"the worker needs {missing}")
            for unknown in sorted(eplb_env - known_env):
                problem(cw, f"{unknown} is not a variable client/worker_env.h reads")

for where, doc in by_kind.get("Service", []):
    selector = get(doc, "spec.selector") or {}
    if not selector:
        problem(where, "spec.selector is missing")
        continue
    matched = [p for p in pods if all(p[1].get(k) == v for k, v in selector.items())]
    if not matched:
        problem(where, f"selector {selector} matches no pod template")
        continue
    for port in get(doc, "spec.ports") or []:
        target = port.get("targetPort", port.get("port"))
        for pw, _, spec, _, _ in matched:
            containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
            names = {p.get("name") for c in containers for p in c.get("ports") or []}
            numbers = {p.get("containerPort") for c in containers for p in c.get("ports") or []}
            if target not in names and target not in numbers:
                problem(where, f"targetPort {target} is not a port of {pw}")

for where, doc in by_kind.get("PersistentVolumeClaim", []):
    if not get(doc, "spec.accessModes"):
        problem(where, "spec.accessModes is missing")
    if not get(doc, "spec.resources.requests.storage"):
        problem(where, "spec.resources.requests.storage is missing")

flags_file = open(os.path.join(ROOT, "deploy", "config", "planner.flags")).read()
for where, doc in by_kind.get("ConfigMap", []):
    if get(doc, "metadata.name") == "eplb-planner-flags":
        if get(doc, "data") is None or "planner.flags" not in doc["data"]:
            problem(where, "data.planner.flags is missing")
        elif doc["data"]["planner.flags"] != flags_file:
            problem(where, "data.planner.flags differs from deploy/config/planner.flags")

for where, doc in by_kind.get("Kustomization", []):
    base = os.path.dirname(os.path.join(ROOT, where.split("#")[0]))
    for resource in doc.get("resources") or []:
        if not os.path.exists(os.path.join(base, resource)):
            problem(where, f"resource {resource} does not exist")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"check_manifests: {len(documents)} documents in {len({d[0] for d in documents})} files are fine")
