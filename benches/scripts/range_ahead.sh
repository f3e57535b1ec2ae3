#!/bin/bash
# Cold Range TTFB (issue 11.4): the last 100 bytes of a cold 10 MiB file behind an
# nginx limited to 2 MiB/s, fetched through a fresh agent (empty cache) with curl.
#
#   benches/scripts/range_ahead.sh AGENT_BIN [BEFORE_BIN] [RUNS]
#
# AGENT_BIN and, if given, BEFORE_BIN (e.g. a build of an older commit) run
# interleaved, RUNS times each (default 3). Prints curl's time to the response head
# and to the last byte (for 100 bytes, the first body byte is within a frame of
# the last), whether the bytes are the file's, and shoal_origin_fetches_total
# {reason="range_ahead"}. Needs nginx and curl; uses 127.0.0.241 ports 18080,
# 17480-17482 and a temporary directory.
set -u
AGENT=$(realpath "$1"); BEFORE=${2:+$(realpath "$2")}; RUNS=${3:-3}
D=$(mktemp -d); trap 'kill $(cat $D/nginx.pid 2>/dev/null) 2>/dev/null; rm -rf $D' EXIT
chmod 755 "$D"; mkdir -p "$D"/www
head -c 10485760 /dev/urandom > "$D"/www/f.bin
tail -c 100 "$D"/www/f.bin > "$D"/want.bin
cat > "$D"/nginx.conf <<NGX
daemon on; worker_processes 1; pid $D/nginx.pid; error_log $D/nginx.err;
events { worker_connections 64; }
http { access_log off; server { listen 127.0.0.241:18080; root $D/www; limit_rate 2m; } }
NGX
nginx -c "$D"/nginx.conf || exit 1
cat > "$D"/agent.toml <<TOML
[proxy]
listen = "127.0.0.241:17480"
[admin]
listen = "127.0.0.241:17481"
[cache]
dir = "$D/cache"
max_size = "1GiB"
memory_size = "64MiB"
[egress]
allow_cidrs = ["127.0.0.0/8"]
[peer]
listen = "127.0.0.241:17482"
TOML
for i in $(seq "$RUNS"); do
  for bin in $BEFORE $AGENT; do
    rm -rf "$D"/cache
    $bin run --config "$D"/agent.toml > "$D"/agent.log 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.241:17481/metrics && break; sleep 0.1; done
    t=$(curl -s -x http://127.0.0.241:17480 -r -100 -o "$D"/got.bin \
      -w 'head %{time_starttransfer}s last %{time_total}s status %{http_code}' \
      http://127.0.0.241:18080/f.bin)
    same=$(cmp -s "$D"/got.bin "$D"/want.bin && echo ok || echo DIFFERENT)
    ahead=$(curl -s http://127.0.0.241:17481/metrics \
      | awk '/^shoal_origin_fetches_total\{reason="range_ahead"\}/ {print $2}')
    echo "$(basename "$(dirname "$bin")")/$(basename "$bin") run $i: $t bytes $same range_ahead ${ahead:-0}"
    kill $pid; wait $pid 2>/dev/null
  done
done
echo "direct from nginx: $(curl -s -r -100 -o /dev/null -w 'head %{time_starttransfer}s last %{time_total}s' http://127.0.0.241:18080/f.bin)"
