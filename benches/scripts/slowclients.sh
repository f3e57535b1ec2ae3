#!/bin/bash
# Peak memory of one agent with many slow clients of one disk-cached object
# (issue 11.3; docs/benchmarks.md, "Many slow clients: the read budget").
#
# usage: benches/scripts/slowclients.sh [-n CLIENTS] [-r ROUNDS] AGENT_BIN...
#
# Serves a 300 MB file from nginx on 127.0.0.21 (installed if missing), then for
# each round and each AGENT_BIN in turn: starts the agent on 127.0.0.24 with a
# 32 MiB memory cache, caches the file (two GETs), resets the agent's VmHWM,
# runs CLIENTS curls at 1 MB/s for 20 s and prints the VmHWM. Ports are picked
# free; everything started is stopped by pid, the work directory removed.
set -euo pipefail

clients=60
rounds=1
while getopts "n:r:" o; do
    case "$o" in
        n) clients=$OPTARG ;;
        r) rounds=$OPTARG ;;
        *) echo "usage: $0 [-n CLIENTS] [-r ROUNDS] AGENT_BIN..."; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-n CLIENTS] [-r ROUNDS] AGENT_BIN..."; exit 2; }
command -v nginx >/dev/null || { apt-get update -q && apt-get install -y -q nginx; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /var/tmp/slowclients.XXXXXX)
chmod 755 "$work" # nginx's workers read it as their own user
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/www"
head -c 300000000 /dev/urandom >"$work/www/big"
oport=$(free_port)
cat >"$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.21:$oport; root $work/www; }
}
EOF
nginx -c "$work/nginx.conf" &
pids+=($!)
url=http://127.0.0.21:$oport/big
for _ in $(seq 100); do
    curl -sf -o /dev/null -r 0-0 "$url" && break
    sleep 0.1
done

for _ in $(seq "$rounds"); do
    for bin in "$@"; do
        port=$(free_port)
        admin=$(free_port)
        rm -rf "$work/cache"
        cat >"$work/agent.toml" <<EOF
[proxy]
listen = "127.0.0.24:$port"
[admin]
listen = "127.0.0.24:$admin"
[cache]
dir = "$work/cache"
memory_size = "32MiB"
[egress]
allow_cidrs = ["127.0.0.0/8"]
EOF
        "$bin" run -c "$work/agent.toml" >"$work/agent.log" 2>&1 &
        agent=$!
        pids+=("$agent")
        for _ in $(seq 100); do
            curl -sf -o /dev/null "http://127.0.0.24:$admin/live" && break
            sleep 0.1
        done
        curl -sf -o /dev/null -x "http://127.0.0.24:$port" "$url" || {
            echo "slowclients: $bin could not fetch $url (see $work/agent.log)"
            cat "$work/agent.log"
            exit 2
        }
        curl -sf -o /dev/null -x "http://127.0.0.24:$port" "$url"
        echo 5 >"/proc/$agent/clear_refs"
        curls=()
        for _ in $(seq "$clients"); do
            curl -s -o /dev/null --max-time 25 --limit-rate 1M -x "http://127.0.0.24:$port" "$url" &
            curls+=($!)
        done
        sleep 20
        hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$agent/status")
        kill "${curls[@]}" 2>/dev/null || true
        wait "${curls[@]}" 2>/dev/null || true
        kill "$agent"
        wait "$agent" 2>/dev/null || true
        echo "$bin clients=$clients VmHWM=${hwm}MiB"
    done
done
