#!/usr/bin/env python3
"""Rough push throughput and end-to-end latency through logic's HTTP API.

One goim TCP subscriber (mid 900001, key bench-900001) listens; W workers each keep one
HTTP/1.1 connection and POST /goim/push/mids (stored, the default) or /goim/push/keys (--kind
keys, not stored) for it as fast as answers come back, for D seconds. Each body carries
its send time; the subscriber records HTTP-sent -> frame-received latency. Prints pushes/s
(HTTP answers), delivered count and latency percentiles. Python is the client on the same
cores, so these are lower bounds on throughput (bench-harness will do this properly).

usage: push_latency.py [--http 127.0.0.1:3111] [--tcp 127.0.0.1:3101] [--workers 8] [--seconds 10]
       [--rate N]   (N pushes/s in total, paced; default: as fast as possible)
"""
import argparse
import asyncio
import json
import struct
import time

HEADER = struct.Struct(">ihhii")
MID = 900001
KEY = "bench-900001"


async def subscriber(host, port, latencies, ready, state):
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"mid": MID, "key": KEY, "accepts": [1000]}).encode()
    writer.write(HEADER.pack(16 + len(body), 16, 1, 7, 1) + body)
    await writer.drain()
    head = await reader.readexactly(16)
    if HEADER.unpack(head)[3] != 8:
        raise RuntimeError("auth refused")
    await reader.readexactly(HEADER.unpack(head)[0] - 16)
    ready.set()

    async def heartbeat():
        while True:
            writer.write(HEADER.pack(16, 16, 1, 2, 1))
            await asyncio.sleep(10)

    hb = asyncio.create_task(heartbeat())
    try:
        while True:
            head = await reader.readexactly(16)
            pack_len, _, _, op, _ = HEADER.unpack(head)
            payload = await reader.readexactly(pack_len - 16)
            if op == 1000:
                latencies.append(time.monotonic() - float(payload))
    except (asyncio.IncompleteReadError, ConnectionResetError):
        # comet closes a subscriber that falls send_queue pushes behind (a slow consumer).
        state["closed_by_server"] = True
    finally:
        hb.cancel()


async def worker(host, port, deadline, interval, counts, kind):
    reader, writer = await asyncio.open_connection(host, port)
    # mids: stored in the user's inbox first (imgate); keys: fire-and-forget (goim's semantics).
    path = f"/goim/push/mids?operation=1000&mids={MID}" if kind == "mids" else f"/goim/push/keys?operation=1000&keys={KEY}"
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        if interval:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
        body = repr(time.monotonic()).encode()
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        length = int(next(l.split(":")[1] for l in head.split("\r\n") if l.lower().startswith("content-length")))
        answer = await reader.readexactly(length)
        ok = head.startswith("HTTP/1.1 200") and json.loads(answer)["code"] == 0
        counts["ok" if ok else "failed"] += 1
    writer.close()


def pct(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))] * 1000


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--http", default="127.0.0.1:3111")
    ap.add_argument("--tcp", default="127.0.0.1:3101")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--kind", choices=["mids", "keys"], default="mids")
    args = ap.parse_args()
    http_host, http_port = args.http.split(":")
    tcp_host, tcp_port = args.tcp.split(":")

    latencies, ready, state = [], asyncio.Event(), {"closed_by_server": False}
    sub = asyncio.create_task(subscriber(tcp_host, int(tcp_port), latencies, ready, state))
    await asyncio.wait_for(ready.wait(), 10)
    counts = {"ok": 0, "failed": 0}
    interval = args.workers / args.rate if args.rate else 0
    start = time.monotonic()
    await asyncio.gather(*(worker(http_host, int(http_port), start + args.seconds, interval, counts, args.kind)
                           for _ in range(args.workers)))
    elapsed = time.monotonic() - start
    await asyncio.sleep(2)  # let the last pushes arrive
    sub.cancel()
    lat = sorted(latencies)
    print(json.dumps({
        "pushes_per_sec": round(counts["ok"] / elapsed),
        "accepted": counts["ok"], "failed": counts["failed"], "delivered": len(lat),
        "subscriber_closed_as_slow": state["closed_by_server"],
        "latency_ms": {"p50": round(pct(lat, 0.5), 2), "p90": round(pct(lat, 0.9), 2),
                       "p99": round(pct(lat, 0.99), 2), "max": round(lat[-1] * 1000, 2)} if lat else None,
    }))


if __name__ == "__main__":
    asyncio.run(main())
