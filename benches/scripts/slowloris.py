#!/usr/bin/env python3
"""Slowloris and idle keep-alive floods against one agent (issue 13 item 2).

Measures a legitimate client's latency for a cached 1 MiB object through the agent
alone, then while N connections from another loopback source (127.0.0.2,
`--flood-source`) either trickle a request head one byte every few seconds (slow) or
sit idle after one request (idle keep-alive). Reports p50/p99 and the ratio to the
baseline measured in the same run, and for each window the CPU seconds spent by the
agent, by this script (the flood) and by the client, the agent's context switches and
open fds, and the agent's shed counters. Loopback only; every loop is bounded;
everything it starts is stopped.

    python3 benches/scripts/slowloris.py --agent target/release/shoal-agent \\
        --connections 10000 --mode slow

The client runs in an interpreter of its own (`--client process`, the default);
`--client thread` runs it in a thread of this script as figures before December 2026
did, where it shares the interpreter lock with the flood's event loop and the flood's
Python work lands in its latency. `--reconnect` reopens every
flood connection the agent closes (a sustained flood rather than one wave); `--pin`
puts the agent on CPU 0 and the flood on CPU 1 (`--client-cpus` places the client).

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


def start_agent(binary, root, proxy_port, admin_port, cpus=""):
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
        (["taskset", "-c", cpus] if cpus else []) + [binary, "run", "--config", conf],
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


def cpu_secs(pid="self"):
    """User + system CPU seconds of process `pid` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wakeups(pid):
    """Context switches of every thread of `pid` so far (voluntary + involuntary)."""
    n = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        n += int(line.split()[1])
        except OSError:
            pass
    return n


def listen_overflows():
    """The kernel's count of connections dropped at a full accept queue (any listener)."""
    with open("/proc/net/netstat") as f:
        rows = [line.split() for line in f if line.startswith("TcpExt:")]
    return int(dict(zip(rows[0], rows[1])).get("ListenOverflows", 0))


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def shed_counts(admin_port):
    """`shoal_client_connections_shed_total` by reason, from the agent's /metrics."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=5)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        c.close()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("shoal_client_connections_shed_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = int(float(line.rsplit(" ", 1)[1]))
    return out


def measure_in_process(proxy_port, url, n, cpus):
    """`measure` in a child process (own interpreter, no GIL shared with the flood),
    optionally pinned to `cpus`: (p50, p99, max, the child's CPU seconds)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--measure", str(proxy_port), url,
           "--requests", str(n)]
    if cpus:
        cmd = ["taskset", "-c", cpus] + cmd
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2]), float(out[3])


def measure(proxy_port, url, n):
    times = []
    for _ in range(n):
        dt, status, size, body = one_get(proxy_port, url)
        if status != 200 or size != 1 << 20:
            raise SystemExit(f"bad response: {status}, {size} bytes: {body[:200]!r}")
        times.append(dt)
    times.sort()
    return (
        statistics.median(times),
        times[min(len(times) - 1, int(len(times) * 0.99))],
        times[-1],
    )


async def flood(proxy_port, url, n, mode, stop, settled, reconnect=False, source="127.0.0.2"):
    conns = []

    async def one():
        # With reconnect, an attacker whose connection was closed opens another.
        first = True
        while not stop.is_set():
            await one_conn(first)
            first = False
            if not reconnect:
                return
            await asyncio.sleep(0.5)

    async def one_conn(first):
        try:
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((source, 0))
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
                if first:
                    settled.append(1)
                if not reconnect:
                    await stop.wait()
                    return
                # Idle until stopped or closed by the agent.
                closed = asyncio.ensure_future(r.read(1))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait([closed, stopped], return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                stopped.cancel()
            else:
                head = f"GET {url} HTTP/1.1\r\nHost: x\r\n".encode()
                i = 0
                if first:
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
        finally:
            w.close()

    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one()))
        # Reconnecting attackers keep the loop busy: yielding after every task would
        # take minutes to start them all.
        if not reconnect or i % 100 == 99:
            await asyncio.sleep(0)
    return tasks, conns


def window(args, proxy_port, admin_port, url, agent_pid):
    """One measured window: latency figures plus who spent how much CPU meanwhile."""
    shed0 = sum(shed_counts(admin_port).values())
    t0, a0, s0, w0 = time.perf_counter(), cpu_secs(agent_pid), cpu_secs(), wakeups(agent_pid)
    fds = open_fds(agent_pid)
    overflows0 = listen_overflows()
    if args.client == "process":
        p50, p99, worst, c = measure_in_process(proxy_port, url, args.requests, args.client_cpus)
    else:
        p50, p99, worst = measure(proxy_port, url, args.requests)
        c = float("nan")
    overflows = listen_overflows() - overflows0
    wall = time.perf_counter() - t0
    agent, script = cpu_secs(agent_pid) - a0, cpu_secs() - s0
    woke = wakeups(agent_pid) - w0
    shed = sum(shed_counts(admin_port).values()) - shed0
    return dict(
        p50=p50, p99=p99, wall=wall, agent=agent, script=script, client=c, fds=fds, woke=woke,
        shed=shed, worst=worst, overflows=overflows,
    )


async def main_async(args, proxy_port, admin_port, url, agent_pid):
    base = window(args, proxy_port, admin_port, url, agent_pid)
    stop = asyncio.Event()
    settled = []
    tasks, conns = await flood(
        proxy_port, url, args.connections, args.mode, stop, settled, args.reconnect,
        args.flood_source,
    )
    # Measure once the flood is in place (every connection set up, or 60 s), so the
    # load generator's own work does not land in the legitimate client's figures.
    end = time.time() + 60
    while len(settled) + sum(t.done() for t in tasks) < args.connections and time.time() < end:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    loop = asyncio.get_running_loop()
    load = await loop.run_in_executor(
        None, window, args, proxy_port, admin_port, url, agent_pid
    )
    stop.set()
    for w in conns:
        w.close()
    # A connect still in SYN retries (a full accept queue) would hold this for minutes.
    _, pending = await asyncio.wait(tasks, timeout=5) if tasks else (set(), set())
    for t in pending:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return base, load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", default="target/release/shoal-agent")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--mode", choices=["slow", "idle"], default="slow")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument(
        "--client",
        choices=["thread", "process"],
        default="process",
        help="legitimate client in a thread of this script (shares the GIL with the "
        "flood) or in a process of its own",
    )
    ap.add_argument(
        "--pin",
        action="store_true",
        help="taskset: agent on CPU 0, this script (the flood) on CPU 1",
    )
    ap.add_argument(
        "--reconnect",
        action="store_true",
        help="an attacker connection closed by the agent is opened again (sustained flood)",
    )
    ap.add_argument(
        "--flood-source",
        default="127.0.0.2",
        help="source address of the flood (127.0.0.1: the same as the legitimate client)",
    )
    ap.add_argument("--client-cpus", default="", help="taskset CPU list for --client process")
    ap.add_argument("--measure", nargs=2, metavar=("PORT", "URL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        p50, p99, worst = measure(int(args.measure[0]), args.measure[1], args.requests)
        print(p50, p99, worst, cpu_secs())
        return
    if args.pin:
        os.sched_setaffinity(0, {1})
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
        procs.append(
            start_agent(args.agent, root, proxy_port, admin_port, "0" if args.pin else "")
        )
        if not (wait_port(origin_port) and wait_port(proxy_port)):
            raise SystemExit("origin or agent did not start")
        url = f"http://127.0.0.1:{origin_port}/one.bin"
        one_get(proxy_port, url)  # warm the cache
        base, load = asyncio.run(main_async(args, proxy_port, admin_port, url, procs[1].pid))
        b50, b99, l50, l99 = base["p50"], base["p99"], load["p50"], load["p99"]
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
        for name, w in (("baseline", base), ("flooded ", load)):
            print(
                f"{name} window {w['wall']:.2f} s: CPU agent {w['agent']:.2f} s, "
                f"script {w['script']:.2f} s, client {w['client']:.2f} s; "
                f"agent context switches {w['woke']}, fds at start {w['fds']}, "
                f"connections shed {w['shed']}; slowest request {w['worst'] * 1000:.1f} ms, "
                f"accept-queue overflows (all listeners) {w['overflows']}"
            )
        print(f"shed {shed_counts(admin_port)}")
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
