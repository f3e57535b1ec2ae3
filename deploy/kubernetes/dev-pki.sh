#!/usr/bin/env bash
# Development fleet PKI for the manifests in this directory (and the Helm chart with
# tls.mode=secret): one CA, one certificate per node and per tracker replica, and the two
# Secrets as YAML. Not for production (see docs/operations.md, "Certificates").
#
#   deploy/kubernetes/dev-pki.sh OUTDIR [NAMESPACE] [NAME] [TRACKER_REPLICAS]
#   kubectl apply -f OUTDIR/secrets.yaml
#
# NAMESPACE defaults to shoal, NAME (the tracker/agent name prefix: the Helm release's
# fullname) to shoal, TRACKER_REPLICAS to 2. Nodes come from `kubectl get nodes`
# (name and InternalIP), or from NODES="node-a=10.0.0.5,node-b=10.0.0.6" without a
# cluster. Needs shoal-agent on PATH (or SHOAL_AGENT=/path/to/shoal-agent).
#
# Each run mints a NEW CA: adding a node means re-running and re-applying both Secrets,
# then restarting agents and trackers. OUTDIR/pki/ca.key.pem stays on this machine; it
# is never put into a Secret.
set -euo pipefail

out=${1:?usage: dev-pki.sh OUTDIR [NAMESPACE] [NAME] [TRACKER_REPLICAS]}
ns=${2:-shoal}
name=${3:-shoal}
replicas=${4:-2}
agent_bin=${SHOAL_AGENT:-shoal-agent}

if [ -z "${NODES:-}" ]; then
  NODES=$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.addresses[?(@.type=="InternalIP")].address}{","}{end}')
fi

names=() ips=()
IFS=',' read -r -a pairs <<<"$NODES"
for p in "${pairs[@]}"; do
  [ -n "$p" ] || continue
  n=${p%%=*} ip=${p#*=}
  ip=${ip%% *}  # first InternalIP if a node has several
  if ! { [ -n "$n" ] && [ -n "$ip" ] && [ "$n" != "$p" ]; }; then
    echo "bad node entry: $p (want NAME=IP)" >&2
    exit 2
  fi
  names+=("$n") ips+=("$ip")
done
[ ${#names[@]} -gt 0 ] || { echo "no nodes" >&2; exit 2; }
agents=${#names[@]}

# Tracker replicas: the DNS name agents dial is the certificate's name. `certs` wants
# one IP per name; a tracker's IP SAN is never checked, so loopback stands in.
for ((i = 0; i < replicas; i++)); do
  names+=("$name-tracker-$i.$name-tracker.$ns.svc") ips+=("127.0.0.1")
done

mkdir -p "$out"
join() { local IFS=','; echo "$*"; }
"$agent_bin" certs --out "$out/pki" --names "$(join "${names[@]}")" --ips "$(join "${ips[@]}")"

agent_files=(--from-file=ca.pem="$out/pki/ca.pem")
for ((i = 0; i < agents; i++)); do
  agent_files+=(--from-file="$out/pki/${names[$i]}.pem" --from-file="$out/pki/${names[$i]}.key.pem")
done
tracker_files=(--from-file=ca.pem="$out/pki/ca.pem")
for ((i = agents; i < ${#names[@]}; i++)); do
  tracker_files+=(--from-file="$out/pki/${names[$i]}.pem" --from-file="$out/pki/${names[$i]}.key.pem")
done
{
  kubectl create secret generic "$name-agent-tls" -n "$ns" "${agent_files[@]}" --dry-run=client -o yaml
  echo "---"
  kubectl create secret generic "$name-tracker-tls" -n "$ns" "${tracker_files[@]}" --dry-run=client -o yaml
} >"$out/secrets.yaml"
echo "wrote $out/secrets.yaml (agents: $agents nodes, trackers: $replicas replicas); apply it with kubectl apply -f"
