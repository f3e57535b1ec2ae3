#!/usr/bin/env bash
# Validates the deployment artifacts: JSON, YAML, embedded TOML, the kustomization, the
# Helm chart and the alert expressions, with whatever tools are installed. Needs python3
# with PyYAML (pip install pyyaml); uses, when present: kubectl (kustomize),
# kubernetes-validate (schema check, pip install kubernetes-validate), helm (lint and
# template), promtool or the promql-parser Python module (alert expressions), apt-config
# and the shell linter.
# Exits non-zero on the first failing check; prints what it skipped.
#
#   deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }
skip() { echo "skip: $*"; }
ok() { echo "ok:   $*"; }
have() { command -v "$1" >/dev/null 2>&1; }

PY=${PYTHON:-python3}
"$PY" -c 'import yaml' 2>/dev/null || fail "python3 with PyYAML is required (pip install pyyaml)"

# JSON
for f in deploy/grafana/*.json; do
  "$PY" -m json.tool "$f" >/dev/null || fail "$f is not valid JSON"
  ok "$f: JSON"
done

# YAML (every document), and TOML embedded in ConfigMaps or standing alone.
"$PY" - <<'PY' || fail "YAML/TOML check"
import glob, sys, yaml
try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None
files = sorted(glob.glob("deploy/**/*.yaml", recursive=True)) + ["helm/shoal/Chart.yaml", "helm/shoal/values.yaml"]
for f in files:
    with open(f) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "ConfigMap" and tomllib:
            for key, text in (d.get("data") or {}).items():
                if key.endswith(".toml"):
                    try:
                        tomllib.loads(text)
                    except Exception as e:
                        sys.exit(f"{f}: ConfigMap {d['metadata']['name']} {key}: {e}")
    print(f"ok:   {f}: YAML ({len(docs)} documents)")
if tomllib:
    for f in sorted(glob.glob("deploy/**/*.toml", recursive=True)):
        with open(f, "rb") as fh:
            try:
                tomllib.load(fh)
            except Exception as e:
                sys.exit(f"{f}: {e}")
        print(f"ok:   {f}: TOML")
else:
    print("skip: TOML checks (Python < 3.11 has no tomllib)")
PY

# apt configuration snippet.
if have apt-config; then
  apt-config -c deploy/apt/01shoal dump | grep -q '^Acquire::http::Proxy "http://127.0.0.1:7480";' \
    || fail "deploy/apt/01shoal does not parse or lost its proxy line"
  ok "deploy/apt/01shoal: apt-config"
else
  skip "deploy/apt/01shoal (no apt-config)"
fi

# Alert rules: structure, then expressions.
"$PY" - <<'PY' || fail "deploy/prometheus/alerts.yaml"
import yaml
d = yaml.safe_load(open("deploy/prometheus/alerts.yaml"))
seen = set()
for g in d["groups"]:
    for r in g["rules"]:
        assert r["alert"] not in seen, f"duplicate alert {r['alert']}"
        seen.add(r["alert"])
        assert r.get("expr"), f"{r['alert']}: no expr"
        assert r.get("labels", {}).get("severity") in ("info", "warning", "critical"), r["alert"]
        assert "summary" in r.get("annotations", {}), f"{r['alert']}: no summary"
print(f"ok:   deploy/prometheus/alerts.yaml: {len(seen)} alerts")
PY
if have promtool; then
  promtool check rules deploy/prometheus/alerts.yaml || fail "promtool check rules"
  ok "promtool check rules"
elif "$PY" -c 'import promql_parser' 2>/dev/null; then
  "$PY" - <<'PY' || fail "alert expressions"
import yaml, promql_parser
for g in yaml.safe_load(open("deploy/prometheus/alerts.yaml"))["groups"]:
    for r in g["rules"]:
        promql_parser.parse(r["expr"])
print("ok:   alert expressions parse (promql-parser)")
PY
else
  skip "alert expressions (no promtool, no promql-parser module)"
fi

validate() {  # validate FILE: schema check when kubernetes-validate is installed
  if have kubernetes-validate; then
    kubernetes-validate --strict --quiet "$1" || fail "kubernetes-validate $1"
    ok "$1: Kubernetes schemas"
  fi
}
have kubernetes-validate || skip "Kubernetes schema checks (pip install kubernetes-validate)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Plain manifests.
if have kubectl; then
  kubectl kustomize deploy/kubernetes >"$tmp/kustomize.yaml" || fail "kubectl kustomize deploy/kubernetes"
  ok "kubectl kustomize deploy/kubernetes"
  validate "$tmp/kustomize.yaml"
else
  skip "kustomize build (no kubectl)"
  for f in deploy/kubernetes/*.yaml; do
    case $f in */kustomization.yaml) ;; *) validate "$f" ;; esac
  done
fi

# Helm chart.
if have helm; then
  helm lint helm/shoal || fail "helm lint"
  for set in "" "--set tls.mode=certManagerCSI --set tls.certManager.issuerName=ca --set tracker.hostNetwork=true" "--set ipv6=true --set tracker.replicas=1"; do
    # shellcheck disable=SC2086
    helm template shoal helm/shoal --namespace shoal $set >"$tmp/helm.yaml" || fail "helm template $set"
    "$PY" -c 'import sys, yaml; list(yaml.safe_load_all(open(sys.argv[1])))' "$tmp/helm.yaml" || fail "helm output is not YAML ($set)"
    ok "helm template ${set:-(defaults)}"
    validate "$tmp/helm.yaml"
  done
else
  skip "helm lint/template (no helm)"
fi

# Scripts.
if have shellcheck; then
  shellcheck deploy/check.sh deploy/kubernetes/dev-pki.sh || fail shellcheck
  ok shellcheck
else
  skip "shellcheck (not installed)"
fi
echo "all checks passed"
