#!/usr/bin/env python3
"""Offline checks of Tern's deployment material, run by deploy/check.sh.

Subcommands:
  k8s DIR          validate every rendered manifest in DIR/*.yaml (kustomize
                   output) and the examples: built-in kinds against the
                   Kubernetes OpenAPI schemas (kubernetes-validate, strict),
                   cert-manager kinds against schemas generated from
                   cert-manager's CRDs (cloudcoil-models-cert-manager, made
                   strict here), then Tern's own rules for its workload.
  config FILE...   check Tern TOML configurations against the fields of
                   coordinator/server/src/config.rs; with --tern-bin, also
                   run `tern serve --check` on each.
  monitoring       check the alert rules, the dashboard and docs/metrics.md
                   against the metric names the code registers.

Every failure is printed as "FAIL <where>: <why>"; the exit status is 1 if
there was any.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FAILURES = []

# Metrics announced for work in progress (agent handover, pin rotation).
# Alerts (group tern-planned) and the dashboard (a row whose title says the
# metrics "arrive with" that work) may use them before the code registers
# them, and docs/metrics.md may name them.
PLANNED_METRICS = {
    "tern_agents",
    "tern_handovers_in_flight",
    "tern_agents_staged",
    "tern_agents_stranded",
    "tern_agent_streams",
}

# ConfigMaps and Secrets the operator creates (documented), so a render
# does not contain them.
OPERATOR_PROVIDED = {("ConfigMap", "tern-trust")}


def fail(where, why):
    FAILURES.append((where, why))
    print(f"FAIL {where}: {why}")


def ok(msg):
    print(f"  ok  {msg}")


# ---------------------------------------------------------------- config


def config_schema():
    """The TOML layout `tern serve` accepts, read from config.rs: a tree of
    {key: type}, where type is a nested dict (a table), "map" (free keys),
    ("list", dict) (an array of tables) or a scalar kind."""
    src = open(os.path.join(REPO, "coordinator/server/src/config.rs")).read()
    structs = {}
    for m in re.finditer(r"pub struct (File\w+) \{(.*?)\n\}", src, re.S):
        fields = {}
        for f in re.finditer(r"pub (\w+): ([^,\n]+),", m.group(2)):
            fields[f.group(1)] = f.group(2).strip()
        structs[m.group(1)] = fields
    if "FileConfig" not in structs:
        fail("config.rs", "cannot find `pub struct FileConfig`: update deploy/check/checks.py")
        return {}

    def resolve(name):
        out = {}
        for key, ty in structs[name].items():
            nested = re.search(r"\b(File\w+)\b", ty)
            if nested and nested.group(1) in structs:
                inner = resolve(nested.group(1))
                out[key] = ("list", inner) if ty.startswith("Vec<") else inner
            elif "BTreeMap" in ty or "HashMap" in ty:
                out[key] = "map"
            elif "bool" in ty:
                out[key] = bool
            elif re.search(r"\b(u8|u16|u32|u64|usize|i64|NodeId)\b", ty):
                out[key] = int
            else:
                out[key] = str
        return out

    return resolve("FileConfig")


def check_config_keys(where, data, schema, path=""):
    for key, value in data.items():
        full = f"{path}{key}"
        if key not in schema:
            fail(where, f"unknown field `{full}` (not in config.rs; tern serve refuses it)")
            continue
        ty = schema[key]
        if isinstance(ty, dict):
            if not isinstance(value, dict):
                fail(where, f"`{full}` must be a table")
            else:
                check_config_keys(where, value, ty, full + ".")
        elif isinstance(ty, tuple):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                fail(where, f"`{full}` must be an array of tables")
            else:
                for i, v in enumerate(value):
                    check_config_keys(where, v, ty[1], f"{full}[{i}].")
        elif ty == "map":
            if not isinstance(value, dict):
                fail(where, f"`{full}` must be a table")
        elif ty is int and (not isinstance(value, int) or isinstance(value, bool)):
            fail(where, f"`{full}` must be an integer")
        elif ty is bool and not isinstance(value, bool):
            fail(where, f"`{full}` must be true or false")
        elif ty is str and not isinstance(value, str):
            fail(where, f"`{full}` must be a string")


def file_paths(data, prefix=""):
    """Every (dotted key, path) of a *_file or data_dir setting."""
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += file_paths(value, f"{prefix}{key}.")
        elif isinstance(value, str) and (key.endswith("_file") or key == "data_dir"):
            out.append((prefix + key, value))
    return out


def run_tern_check(where, text, data, tern_bin):
    """`tern serve --check` on a copy of the file whose absolute paths are
    moved under a temporary root (the files exist there, empty)."""
    with tempfile.TemporaryDirectory() as root:
        for key, path in file_paths(data):
            if not path.startswith("/"):
                continue
            text = text.replace(f'"{path}"', f'"{root}{path}"')
            if key.endswith("_file"):
                os.makedirs(os.path.dirname(root + path), exist_ok=True)
                open(root + path, "a").close()
        cfg = os.path.join(root, "tern.toml")
        with open(cfg, "w") as f:
            f.write(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TERN_")}
        r = subprocess.run([tern_bin, "serve", "--check", "--config", cfg],
                           capture_output=True, text=True, env=env, timeout=60)
        if r.returncode != 0:
            msg = (r.stderr.strip() or r.stdout.strip()).replace(root, "")
            fail(where, f"`tern serve --check` exited {r.returncode}: {msg}")
        else:
            ok(f"{where}: tern serve --check accepts it")


def check_config_text(where, text, tern_bin=None):
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(where, f"not valid TOML: {e}")
        return None
    before = len(FAILURES)
    check_config_keys(where, data, config_schema())
    if len(FAILURES) == before:
        ok(f"{where}: every field exists in config.rs")
    if tern_bin:
        run_tern_check(where, text, data, tern_bin)
    return data


def cmd_config(args):
    for path in args.files:
        check_config_text(os.path.relpath(path, REPO), open(path).read(), args.tern_bin)


# ---------------------------------------------------------------- k8s


def load_docs(path):
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d]
    except yaml.YAMLError as e:
        fail(os.path.basename(path), f"not valid YAML: {e}")
        return []


def cert_manager_validator(kind):
    """A strict JSON-schema validator for a cert-manager kind, from the
    models generated from cert-manager's CRDs: unknown fields are errors,
    as they are for built-in kinds under kubernetes-validate --strict."""
    import jsonschema
    from cloudcoil.models.cert_manager import v1

    model = getattr(v1, kind)
    schema = model.model_json_schema(by_alias=True, mode="validation")

    def strict(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)

    strict(schema)
    # The CRDs require these; the models make them optional.
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    for key in ("metadata", "spec"):
        prop = schema["properties"][key]
        if "anyOf" in prop:
            schema["properties"][key] = next(s for s in prop["anyOf"] if s.get("type") != "null")
    schema["properties"]["apiVersion"] = {"const": "cert-manager.io/v1"}
    schema["properties"]["kind"] = {"const": kind}
    return jsonschema.Draft202012Validator(schema)


CERT_MANAGER_KINDS = {"Certificate", "Issuer", "ClusterIssuer"}


def validate_doc(where, doc, versions, cm_validators):
    import functools

    import kubernetes_validate
    import kubernetes_validate.utils as kv_utils

    # Each validation re-reads the (large) schema files: read each once.
    if not hasattr(kv_utils.schema_contents, "cache_info"):
        kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)

    kind = doc.get("kind", "?")
    name = (doc.get("metadata") or {}).get("name", "?")
    label = f"{where}: {kind}/{name}"
    api = doc.get("apiVersion", "")
    if api.startswith("cert-manager.io/"):
        if api != "cert-manager.io/v1" or kind not in CERT_MANAGER_KINDS:
            fail(label, f"unexpected cert-manager kind {api} {kind}")
            return
        if kind not in cm_validators:
            cm_validators[kind] = cert_manager_validator(kind)
        errors = sorted(cm_validators[kind].iter_errors(doc), key=lambda e: list(e.path))
        for e in errors[:5]:
            fail(label, f"cert-manager schema: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
        if not errors:
            ok(f"{label} (cert-manager.io/v1 schema)")
        return
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "(root)"
            fail(label, f"Kubernetes {version} schema: {path}: {e.message}")
            return
        except kubernetes_validate.SchemaNotFoundError:
            fail(label, f"no Kubernetes {version} schema for {api} {kind} (unknown kind or CRD)")
            return
    ok(f"{label} (Kubernetes {', '.join(versions)}, strict)")


def find(docs, kind, name=None, prefix=None):
    out = []
    for d in docs:
        n = d["metadata"]["name"]
        if d["kind"] == kind and (name is None or n == name) and (prefix is None or n.startswith(prefix)):
            out.append(d)
    return out


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_tern_workload(where, docs, tern_bin):
    """Tern's own rules for a rendered overlay."""
    for d in docs:
        if d["kind"] != "Namespace" and not d["metadata"].get("namespace"):
            fail(where, f"{d['kind']}/{d['metadata']['name']} has no namespace (set `namespace:` in the overlay)")
    sts = find(docs, "StatefulSet", "tern")
    if len(sts) != 1:
        fail(where, "expected exactly one StatefulSet named tern")
        return
    sts = sts[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    if spec.get("replicas") != 1:
        fail(where, "StatefulSet tern must have replicas: 1 (one coordinator per region)")
    if not selects(spec["selector"].get("matchLabels"), labels):
        fail(where, "StatefulSet selector does not match its pod labels")
    psc = pod.get("securityContext", {})
    if not psc.get("runAsNonRoot"):
        fail(where, "pod securityContext.runAsNonRoot must be true")
    containers = {c["name"]: c for c in pod["containers"]}
    c = containers.get("tern")
    if not c:
        fail(where, "no container named tern")
        return
    sc = c.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(where, "container tern must have readOnlyRootFilesystem: true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(where, "container tern must have allowPrivilegeEscalation: false")
    if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
        fail(where, "container tern must drop ALL capabilities")
    probe_path = lambda p: (c.get(p) or {}).get("httpGet", {}).get("path")
    if probe_path("livenessProbe") != "/health/live":
        fail(where, "livenessProbe must GET /health/live (never /health/ready: a leaderless federation would restart forever)")
    if probe_path("readinessProbe") != "/health/ready":
        fail(where, "readinessProbe must GET /health/ready")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    # Volumes: every referenced ConfigMap/Secret exists in the render, is
    # issued by a Certificate, or is one the operator provides.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    issued = {d["spec"]["secretName"] for d in find(docs, "Certificate")}
    plain_secrets = not find(docs, "Certificate", "tern-transport")
    for v in volumes.values():
        if "configMap" in v:
            n = v["configMap"]["name"]
            if not find(docs, "ConfigMap", n) and ("ConfigMap", n) not in OPERATOR_PROVIDED:
                fail(where, f"volume {v['name']}: ConfigMap {n} is neither rendered nor operator-provided")
        if "secret" in v:
            n = v["secret"]["secretName"]
            if not find(docs, "Secret", n) and n not in issued and not plain_secrets:
                fail(where, f"volume {v['name']}: Secret {n} is neither rendered nor issued by a Certificate")
    mounts = {}
    for m in c.get("volumeMounts", []):
        name = m["name"]
        if name not in volumes and name not in claims:
            fail(where, f"volumeMount {name} has no volume or claim")
        mounts[m["mountPath"]] = name
    if "/tmp" not in mounts or "emptyDir" not in volumes.get(mounts["/tmp"], {}):
        fail(where, "/tmp must be an emptyDir (the root file system is read-only)")

    # Services select the pod; the headless one publishes not-ready pods.
    svc_names = []
    for s in find(docs, "Service"):
        if selects(s["spec"].get("selector"), labels):
            svc_names.append(s["metadata"]["name"])
            for p in s["spec"].get("ports", []):
                tp = p.get("targetPort")
                if isinstance(tp, str) and tp not in ports:
                    fail(where, f"Service {s['metadata']['name']}: targetPort {tp} is not a container port")
    peer = find(docs, "Service", spec.get("serviceName"))
    if not peer or peer[0]["spec"].get("clusterIP") != "None":
        fail(where, f"serviceName {spec.get('serviceName')} must be a rendered headless Service")
    elif not peer[0]["spec"].get("publishNotReadyAddresses"):
        fail(where, "the headless Service must publish not-ready addresses (peers reach a coordinator before it is ready)")
    for pdb in find(docs, "PodDisruptionBudget"):
        if not selects(pdb["spec"]["selector"].get("matchLabels"), labels):
            fail(where, f"PodDisruptionBudget {pdb['metadata']['name']} does not select the pod")
    for np in find(docs, "NetworkPolicy"):
        if not selects(np["spec"]["podSelector"].get("matchLabels"), labels):
            fail(where, f"NetworkPolicy {np['metadata']['name']} does not select the pod")
    for cert in find(docs, "Certificate", "tern-transport"):
        usages = set(cert["spec"].get("usages", []))
        if not {"server auth", "client auth"} <= usages:
            fail(where, "Certificate tern-transport needs the usages server auth and client auth")

    # The configuration: valid, and consistent with the pod.
    args = c.get("args", [])
    cfg_path = args[args.index("--config") + 1] if "--config" in args else None
    cms = find(docs, "ConfigMap", prefix="tern-config")
    if not cfg_path or len(cms) != 1:
        fail(where, "expected `serve --config PATH` and one generated ConfigMap tern-config-*")
        return
    cm = cms[0]
    key = os.path.basename(cfg_path)
    if mounts.get(os.path.dirname(cfg_path)) != "config" or key not in cm.get("data", {}):
        fail(where, f"--config {cfg_path} is not a key of the mounted ConfigMap {cm['metadata']['name']}")
        return
    data = check_config_text(f"{where}: {cm['metadata']['name']}/{key}", cm["data"][key], tern_bin)
    if data is None:
        return
    listen = data.get("listen", {})
    for field, port_name in (("grpc", "grpc"), ("http", "http")):
        addr = listen.get(field, "")
        if not addr.endswith(f":{ports.get(port_name)}"):
            fail(where, f"listen.{field} = {addr!r} does not match container port {port_name} ({ports.get(port_name)})")
    for dotted, path in file_paths(data):
        if dotted == "data_dir":
            if mounts.get(path) not in claims:
                fail(where, f"data_dir {path} is not the mount of a volumeClaimTemplate")
            continue
        if not any(path.startswith(mp.rstrip("/") + "/") for mp in mounts):
            fail(where, f"{dotted} {path} lies under no volume mount")
    if data.get("role") == "witness" and "control_plane" in data:
        fail(where, "a witness has no control_plane")
    ok(f"{where}: workload rules ({', '.join(sorted(svc_names))} select the pod; config consistent with the pod)")


def cmd_k8s(args):
    versions = args.kube_versions.split(",")
    cm_validators = {}
    rendered = sorted(glob.glob(os.path.join(args.dir, "*.yaml")))
    if not rendered:
        fail(args.dir, "no rendered manifests")
    for path in rendered:
        where = os.path.basename(path)[: -len(".yaml")]
        docs = load_docs(path)
        for d in docs:
            validate_doc(where, d, versions, cm_validators)
        if where != "base":
            check_tern_workload(where, docs, args.tern_bin)
    for path in sorted(glob.glob(os.path.join(REPO, "deploy/k8s/examples/*.yaml"))):
        where = os.path.relpath(path, REPO)
        for d in load_docs(path):
            validate_doc(where, d, versions, cm_validators)


# ---------------------------------------------------------------- monitoring


def registered_metrics():
    """Metric names registered with prometheus-client: in the files that use
    it, a "tern_*" string literal followed by its help text literal (the
    shape of every registration: name, help, metric)."""
    names = set()
    for pattern in ("coordinator/*/src/**/*.rs", "agent-shim/src/**/*.rs"):
        for path in glob.glob(os.path.join(REPO, pattern), recursive=True):
            text = open(path).read()
            if "prometheus_client" not in text:
                continue
            names |= set(re.findall(r'"(tern_[a-z0-9_]+)",\s*"', text))
    return names


def metric_refs(text):
    return set(re.findall(r"\b(tern_[a-z0-9_]+)\b", text))


def known(name, registered):
    """A registered name, or the series a registered counter or histogram
    exposes (prometheus-client adds _total to counters)."""
    for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created"):
        if suffix and not name.endswith(suffix):
            continue
        base = name[: len(name) - len(suffix)] if suffix else name
        if base in registered:
            return True
    return False


def cmd_monitoring(args):
    registered = registered_metrics()
    if not registered:
        fail("metrics", "no metric names found in coordinator/*/src (tern_*)")
        return
    ok(f"{len(registered)} metrics registered in the code")

    # Alerts: planned metrics only in the tern-planned group.
    before = len(FAILURES)
    alerts_path = os.path.join(REPO, "deploy/monitoring/alerts.yml")
    rules = yaml.safe_load(open(alerts_path))
    names = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            if name in names:
                fail("alerts.yml", f"duplicate rule {name}")
            names.add(name)
            if rule.get("alert"):
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    fail("alerts.yml", f"{name}: severity must be critical, warning or info")
                ann = rule.get("annotations", {})
                if not ann.get("summary") or not ann.get("description"):
                    fail("alerts.yml", f"{name}: needs a summary and a description")
            for m in metric_refs(rule["expr"]):
                if known(m, registered):
                    continue
                if m in PLANNED_METRICS:
                    if group["name"] != "tern-planned":
                        fail("alerts.yml", f"{name}: planned metric {m} outside group tern-planned")
                    continue
                fail("alerts.yml", f"{name}: {m} is neither registered in the code nor planned")
    required = {"TernRegionUnreachable", "TernHealthFrozen", "TernAutomationPausedLong",
                "TernRotationBlocked", "TernPinNearExpiry", "TernAgentsStranded", "TernNoLeader"}
    for r in sorted(required - names):
        fail("alerts.yml", f"missing alert {r}")
    if len(FAILURES) == before:
        ok(f"alerts.yml: {len(names)} rules use registered (or planned) metrics")
    before = len(FAILURES)

    # Dashboard: valid JSON, unique panel ids, a datasource variable, known
    # metrics; planned ones only in the collapsed row that says so.
    dash_path = os.path.join(REPO, "deploy/monitoring/dashboard.json")
    try:
        dash = json.load(open(dash_path))
    except json.JSONDecodeError as e:
        fail("dashboard.json", f"not valid JSON: {e}")
        return
    for key in ("title", "uid", "panels", "templating", "schemaVersion"):
        if key not in dash:
            fail("dashboard.json", f"missing {key}")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    if "datasource" not in variables:
        fail("dashboard.json", "needs a datasource variable")
    ids = []
    count = 0

    def walk(panels, planned_row):
        nonlocal count
        for p in panels:
            ids.append(p.get("id"))
            if "gridPos" not in p:
                fail("dashboard.json", f"panel {p.get('title')!r} has no gridPos")
            for t in p.get("targets", []):
                count += 1
                for v in re.findall(r"\$(\w+)", t.get("expr", "")):
                    if v not in variables and not v.startswith("__"):
                        fail("dashboard.json", f"panel {p.get('title')!r}: unknown variable ${v}")
                for m in metric_refs(t.get("expr", "")):
                    if known(m, registered):
                        continue
                    if m in PLANNED_METRICS and planned_row:
                        continue
                    fail("dashboard.json", f"panel {p.get('title')!r}: {m} is neither registered nor planned (in the planned row)")
            if p.get("type") == "row":
                walk(p.get("panels", []), "arrive with" in p.get("title", ""))

    walk(dash.get("panels", []), False)
    if len(ids) != len(set(ids)) or None in ids:
        fail("dashboard.json", "panel ids must be present and unique")
    if len(FAILURES) == before:
        ok(f"dashboard.json: {len(ids)} panels, {count} queries on registered (or planned) metrics")
    before = len(FAILURES)

    # docs/metrics.md documents every registered metric, and names no
    # metric that is neither registered nor planned.
    doc_path = os.path.join(REPO, "docs/metrics.md")
    if not os.path.exists(doc_path):
        fail("docs/metrics.md", "missing")
        return
    doc = open(doc_path).read()
    documented = metric_refs(doc)
    for m in sorted(registered):
        if m not in documented and f"{m}_total" not in documented:
            fail("docs/metrics.md", f"metric {m} is registered in the code but not documented")
    for m in sorted(documented):
        if not known(m, registered) and m not in PLANNED_METRICS:
            fail("docs/metrics.md", f"names {m}, which is neither registered nor planned")
    for m in sorted(PLANNED_METRICS - registered):
        if m not in documented:
            fail("docs/metrics.md", f"planned metric {m} is not listed")
    if len(FAILURES) == before:
        ok(f"docs/metrics.md documents all {len(registered)} registered metrics")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("k8s")
    k.add_argument("dir")
    k.add_argument("--kube-versions", required=True)
    k.add_argument("--tern-bin")
    c = sub.add_parser("config")
    c.add_argument("files", nargs="+")
    c.add_argument("--tern-bin")
    sub.add_parser("monitoring")
    args = ap.parse_args()
    {"k8s": cmd_k8s, "config": cmd_config, "monitoring": cmd_monitoring}[args.cmd](args)
    if FAILURES:
        print(f"{len(FAILURES)} problem(s) found")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
