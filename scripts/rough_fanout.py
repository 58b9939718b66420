#!/usr/bin/env python3
"""Rough figures for a running imgate: memory per idle connection and room fan-out time.

Opens N goim TCP clients (authenticated, all in one room) against a running imgate, reads the
server's RSS before and after, then times room pushes from the HTTP call until every client has
received the message. The clients are Python asyncio, so the fan-out time includes Python's own
reading cost: an upper bound, not a benchmark (bench-harness is the rigorous tool).

usage: rough_fanout.py --pid PID [--clients 10000] [--pushes 5]
"""
import argparse
import asyncio
import json
import statistics
import struct
import time
import urllib.request

HEADER = struct.Struct(">ihhii")


def frame(op, seq, body=b""):
    return HEADER.pack(16 + len(body), 16, 1, op, seq) + body


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Client:
    def __init__(self):
        self.waiters = {}

    async def start(self, host, port, mid, room):
        self.reader, self.writer = await asyncio.open_connection(host, port)
        body = json.dumps({"mid": mid, "room_id": room, "platform": "bench", "accepts": [1000]}).encode()
        self.writer.write(frame(7, 1, body))
        await self.writer.drain()
        head = await self.reader.readexactly(16)
        pack_len, _, _, op, _ = HEADER.unpack(head)
        if op != 8:
            raise RuntimeError(f"auth refused: op {op}")
        await self.reader.readexactly(pack_len - 16)

    async def receive(self, count):
        for _ in range(count):
            head = await self.reader.readexactly(16)
            pack_len, _, _, op, _ = HEADER.unpack(head)
            await self.reader.readexactly(pack_len - 16)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tcp", type=int, default=3101)
    ap.add_argument("--http", default="http://127.0.0.1:3111")
    ap.add_argument("--clients", type=int, default=10000)
    ap.add_argument("--pushes", type=int, default=5)
    args = ap.parse_args()

    room = "bench://1"
    before = rss_kib(args.pid)
    clients = [Client() for _ in range(args.clients)]
    t0 = time.monotonic()
    for i in range(0, args.clients, 500):
        await asyncio.gather(*(c.start(args.host, args.tcp, i + j + 1, room) for j, c in enumerate(clients[i:i + 500])))
    connect_s = time.monotonic() - t0
    await asyncio.sleep(1)
    after = rss_kib(args.pid)
    per_conn = (after - before) * 1024 / args.clients
    print(f"connected {args.clients} in {connect_s:.1f}s; server RSS {before} KiB -> {after} KiB: {per_conn:.0f} bytes/connection")

    times = []
    for n in range(args.pushes):
        receivers = asyncio.gather(*(c.receive(1) for c in clients))
        start = time.monotonic()
        req = urllib.request.Request(f"{args.http}/goim/push/room?operation=1000&type=bench&room=1",
                                     data=json.dumps({"n": n}).encode(), method="POST")
        await asyncio.get_running_loop().run_in_executor(None, lambda: urllib.request.urlopen(req, timeout=10).read())
        await asyncio.wait_for(receivers, 30)
        times.append((time.monotonic() - start) * 1000)
    print(f"room push to {args.clients} connections, all received (ms): " + ", ".join(f"{t:.0f}" for t in times)
          + f"; median {statistics.median(times):.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
