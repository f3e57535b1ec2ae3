#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/seed-NN: one valid message per shape,
in the byte layouts the code documents (proto/src/wire.rs, proto/src/manifest.rs) and
the JSON shapes serde derives for proto::tracker, Manifest, Layout and ObjectMeta.

    python3 fuzz/seeds.py            # from the repository root

Only seed-* files are rewritten; inputs libFuzzer found or crash reproducers kept for
regression (other names) are left alone. The fuzz targets check every seed as they
load it, so a seed that stopped matching the code shows up as lost coverage, not as
a failure.
"""
import base64
import json
import os
import struct
import sys

from hashlib import blake2b  # stand-in bytes for chunk ids: any 32 bytes are an id


def cid(tag: bytes) -> bytes:
    return blake2b(tag, digest_size=32).digest()


def hexid(tag: bytes) -> str:
    return cid(tag).hex()


def wire():
    req = lambda i, n: struct.pack(">BBH", 1, 1, 38) + cid(i) + struct.pack(">IH", n, 0)
    resp = lambda status, rest: struct.pack(">BBH", 1, 2, 1 + len(rest)) + bytes([status]) + rest
    return [
        req(b"a", 1 << 20),
        req(b"", 0),
        req(b"z", 16 << 20),
        resp(0, struct.pack(">I", 7)),
        resp(0, struct.pack(">I", 16 << 20)),
        resp(1, b""),
        resp(2, struct.pack(">I", 250)),
        resp(3, struct.pack(">H", 2)),
        resp(3, struct.pack(">H", 999)),
        resp(0, struct.pack(">I", 3)) + b"abc",
    ]


def bitmap_b64(indices):
    n = max(indices) // 8 + 1 if indices else 0
    b = bytearray(n)
    for i in indices:
        b[i // 8] |= 1 << (i % 8)
    return base64.b64encode(bytes(b)).decode()


LAYOUT = {"size": 40000, "chunk_size": 16384}
AGENT = {"peer_addr": "10.0.0.1:7482", "topology": {"node": "n1", "zone": "z1", "region": "r1"}, "load": 2}
KEY = "d1 sha256:ab 40000"


def tracker():
    sync = {"agent": AGENT, "key": KEY, "layout": LAYOUT, "have": bitmap_b64([0, 2]), "complete": False,
            "publish": [{"index": 1, "id": hexid(b"x")}], "want_leases": 2,
            "cursor": {"epoch": 7, "pos": 3}, "renew": [1]}
    resp = {"layout": LAYOUT, "ids": [{"index": 0, "id": hexid(b"y")}], "cursor": {"epoch": 7, "pos": 4},
            "more": True, "peers": [{"id": "peer-1", "addr": "[::1]:7482", "proximity": "SameZone",
                                      "load": 0, "complete": False, "have": bitmap_b64([0, 1, 2])}],
            "leases": [2], "lease_ttl_ms": 10000}
    unknown = {"layout": None, "ids": [], "cursor": None, "peers": [], "leases": [], "lease_ttl_ms": 5000}
    announce = {"agent": AGENT, "objects": [{"key": KEY, "layout": LAYOUT, "have": "", "complete": True,
                                             "publish": []}]}
    answer = {"accepted": 1, "want_ids": [KEY], "refused": [{"key": KEY, "reason": "layout differs"}]}
    t = lambda tag, v: bytes([tag]) + json.dumps(v, separators=(",", ":")).encode()
    return [
        t(0, sync),
        t(0, {"agent": {"peer_addr": "127.0.0.1:1"}, "key": "d1 sha256:ab 10"}),
        t(1, resp),
        t(1, unknown),
        t(2, announce),
        t(3, answer),
        t(4, {"error": "bad"}),
    ]


def bitmap():
    return [s.encode() for s in
            ["", bitmap_b64(range(10)), bitmap_b64(range(64)), bitmap_b64([0, 9, 63, 1000]), "AQIAAA==", "////"]]


def rng():
    s = lambda size, h: struct.pack(">Q", size) + h.encode()
    return [
        s(1000, "bytes=0-499"), s(1000, "bytes=500-"), s(1000, "bytes=-100"),
        s(1000, "bytes=0-1, 5-6, -2"), s(1000, "bytes=5-6,0-1,1-3"), s(1000, "bytes=0-999,0-999"),
        s(1000, "Bytes=1-2"), s(0, "bytes=0-"), s(2**64 - 1, "bytes=18446744073709551614-"),
        s(1000, "items=0-1"), s(1000, ",".join(f"{i * 10}-{i * 10 + 1}" for i in range(17)).join(["bytes=", ""])),
    ]


def manifests():
    chunks = [cid(bytes([i])) for i in range(3)]
    return [
        ('v1 http://o.example/pool/a.deb etag:"e1" 40000', 40000, 16384, chunks, "sha256:" + "a" * 64),
        ("d1 sha256:ab 0", 0, 16384, [], None),
    ]


def encode_manifest(key, size, chunk, ids, digest):
    k, d = key.encode(), (digest or "").encode()
    out = b"SHM1" + struct.pack(">H", len(k)) + k + struct.pack(">QII", size, chunk, len(ids))
    return out + b"".join(ids) + struct.pack(">H", len(d)) + d


def manifest_json(key, size, chunk, ids, digest):
    return {"key": key, "layout": {"size": size, "chunk_size": chunk}, "chunks": [i.hex() for i in ids],
            "digest": digest}


def manifest():
    out = []
    for m in manifests():
        out.append(b"\x00" + encode_manifest(*m))
        out.append(b"\x01" + json.dumps(manifest_json(*m)).encode())
    out.append(b"\x02" + json.dumps({"size": 1 << 40, "chunk_size": 16 << 20}).encode())
    out.append(b"\x02" + b'{"size":100000,"chunk_size":16384}')
    return out


def object_meta():
    out = []
    for i, m in enumerate(manifests()):
        url = "http://o.example/pool/a.deb" if i == 0 else "https://r.example/v2/x/blobs/sha256:" + "b" * 64
        meta = {"url": url, "manifest": manifest_json(*m),
                "repr": {"etag": '"e1"', "last_modified": "Tue, 01 Dec 2026 10:00:00 GMT",
                         "headers": [["content-type", "application/octet-stream"]]},
                "validated_at_ms": 1790000000000, "immutable": i == 1}
        out.append(json.dumps(meta).encode())
    return out


def proxy_target():
    t = lambda tag, s: bytes([tag]) + s.encode()
    return [
        t(0, "/pool/main/a.deb"), t(0, "/%2e%2e/x"), t(0, "/a%2fb/..;x"),
        t(1, "/a/b/c/./../../g"), t(1, "/%7euser/%41%62c/%e2%82%ac"),
        t(2, "http://Example.COM:80/a/../b?x=%2e"), t(2, "https://h:443/x"),
        t(2, "/m/deb/dists/stable/Release"), t(2, "/m/r/v2/x/blobs/sha256:00?n=1"),
        t(2, "/m/npm/../../@scope%2fpkg"), t(2, "/m/none/x"), t(2, "/m/deb"),
    ]


def framing():
    r = lambda m, v, h: bytes([m, v]) + h.encode()
    return [
        r(0, 2, "host:a.example:80"), r(0, 2, "host:[::1]:8080\nuser-agent:apt"), r(0, 1, ""),
        r(0, 2, "host:a\nhost:b"), r(0, 2, "host:u@a"), r(0, 2, "host:a\ncontent-length:40"),
        r(3, 2, "host:a\ncontent-length:40"), r(2, 2, "host:a:443\ntransfer-encoding:chunked"),
    ]


def oci_path():
    h = "0123456789abcdef" * 4
    return [p.encode() for p in [
        "/v2/", "/v2", "/v2/library/debian/manifests/bookworm-slim",
        f"/v2/library/debian/manifests/sha256:{h}", f"/v2/a/b/c/blobs/sha256:{h}",
        "/v2/my-org/my__img.x/tags/list", f"/v2/x/referrers/sha256:{h}",
        "/v2/x/blobs/uploads/", "/v2/X/manifests/a", "/v2/a--b/manifests/.x",
        f"/v2/manifests/blobs/manifests/sha512:{h}{h}",
    ]]


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    for target, seeds in [("wire", wire()), ("tracker_json", tracker()), ("bitmap", bitmap()),
                          ("range", rng()), ("manifest", manifest()), ("object_meta", object_meta()),
                          ("proxy_target", proxy_target()), ("framing", framing()),
                          ("oci_path", oci_path())]:
        d = os.path.join(root, target)
        os.makedirs(d, exist_ok=True)
        for i, s in enumerate(seeds):
            with open(os.path.join(d, f"seed-{i:02}"), "wb") as f:
                f.write(s)
        print(f"{target}: {len(seeds)} seeds")


if __name__ == "__main__":
    main()
