#!/usr/bin/env python3
"""Slowloris and idle keep-alive floods against one agent (issue 13 item 2).

Measures a legitimate client's latency for a cached 1 MiB object through the agent
alone, then while N connections from another loopback source (127.0.0.2) either
trickle a request head one byte every few seconds (slow) or sit idle after one request
(idle keep-alive). Reports p50/p99 and the ratio to the baseline measured in the same
run. Loopback only; every loop is bounded; everything it starts is stopped.

    python3 benches/scripts/slowloris.py --agent target/release/shoal-agent \\
        --connections 10000 --mode slow

Needs nginx (the origin; `apt-get install nginx-light`) and a file-descriptor limit
above the connection count (it raises its own soft limit).
"""

import argparse
import asyncio
import http.client
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port(ip):
    s = socket.socket()
    s.bind((ip, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_nginx(root, port):
    conf = os.path.join(root, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"""daemon off; pid {root}/nginx.pid; error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {root}/www; }} }}
"""
        )
    return subprocess.Popen(["nginx", "-c", conf, "-p", root], stderr=subprocess.DEVNULL)


def start_agent(binary, root, proxy_port, admin_port):
    conf = os.path.join(root, "agent.toml")
    with open(conf, "w") as f:
        f.write(
            f"""[proxy]
listen = "127.0.0.1:{proxy_port}"
[admin]
listen = "127.0.0.1:{admin_port}"
[cache]
dir = "{root}/cache"
[egress]
allow_cidrs = ["127.0.0.0/8"]
"""
        )
    return subprocess.Popen(
        [binary, "run", "--config", conf],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )


def wait_port(port, deadline=10.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def one_get(proxy_port, url):
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", proxy_port, timeout=30)
    c.request("GET", url, headers={"Host": url.split("/")[2]})
    r = c.getresponse()
    body = r.read()
    c.close()
    return time.perf_counter() - t0, r.status, len(body), body


def measure(proxy_port, url, n):
    times = []
    for _ in range(n):
        dt, status, size, body = one_get(proxy_port, url)
        if status != 200 or size != 1 << 20:
            raise SystemExit(f"bad response: {status}, {size} bytes: {body[:200]!r}")
        times.append(dt)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


async def flood(proxy_port, url, n, mode, stop, settled):
    conns = []

    async def one():
        try:
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind(("127.0.0.2", 0))
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy_port))
            r, w = await asyncio.open_connection(sock=sock)
        except OSError:
            return
        conns.append(w)
        try:
            if mode == "idle":
                w.write(f"GET {url} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n".encode())
                await w.drain()
                await asyncio.wait_for(r.read(4096), 30)
                settled.append(1)
                await stop.wait()
            else:
                head = f"GET {url} HTTP/1.1\r\nHost: x\r\n".encode()
                i = 0
                settled.append(1)
                while not stop.is_set():
                    w.write(head[i % len(head) : i % len(head) + 1])
                    await w.drain()
                    i += 1
                    try:
                        await asyncio.wait_for(stop.wait(), 3)
                    except asyncio.TimeoutError:
                        pass
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass

    tasks = []
    for _ in range(n):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(0)
    return tasks, conns


async def main_async(args, proxy_port, url):
    base50, base99 = measure(proxy_port, url, args.requests)
    stop = asyncio.Event()
    settled = []
    tasks, conns = await flood(proxy_port, url, args.connections, args.mode, stop, settled)
    # Measure once the flood is in place (every connection set up, or 60 s), so the
    # load generator's own work does not land in the legitimate client's figures.
    end = time.time() + 60
    while len(settled) + sum(t.done() for t in tasks) < args.connections and time.time() < end:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    loop = asyncio.get_running_loop()
    load50, load99 = await loop.run_in_executor(None, measure, proxy_port, url, args.requests)
    stop.set()
    for w in conns:
        w.close()
    await asyncio.gather(*tasks, return_exceptions=True)
    return base50, base99, load50, load99


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", default="target/release/shoal-agent")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--mode", choices=["slow", "idle"], default="slow")
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    if not shutil.which("nginx"):
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections * 2 + 1024), hard))
    root = tempfile.mkdtemp(prefix="shoal-slowloris-")
    os.chmod(root, 0o755)  # nginx's workers run unprivileged
    os.makedirs(f"{root}/www")
    with open(f"{root}/www/one.bin", "wb") as f:
        f.write(os.urandom(1 << 20))
    origin_port, proxy_port, admin_port = (free_port("127.0.0.1") for _ in range(3))
    procs = []
    try:
        procs.append(start_nginx(root, origin_port))
        procs.append(start_agent(args.agent, root, proxy_port, admin_port))
        if not (wait_port(origin_port) and wait_port(proxy_port)):
            raise SystemExit("origin or agent did not start")
        url = f"http://127.0.0.1:{origin_port}/one.bin"
        one_get(proxy_port, url)  # warm the cache
        b50, b99, l50, l99 = asyncio.run(main_async(args, proxy_port, url))
        hwm = "?"
        with open(f"/proc/{procs[1].pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = line.split(":", 1)[1].strip()
        print(f"agent peak RSS (VmHWM) {hwm}")
        print(
            f"mode={args.mode} connections={args.connections} requests={args.requests}\n"
            f"baseline p50 {b50 * 1000:.2f} ms p99 {b99 * 1000:.2f} ms\n"
            f"flooded  p50 {l50 * 1000:.2f} ms p99 {l99 * 1000:.2f} ms\n"
            f"p99 ratio {l99 / b99:.2f}x"
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
