#!/usr/bin/env python3
"""Slow clients for scripts/bench-slow-clients.sh: CONNECTIONS connections to
HOST:PORT from the loopback addresses 127.0.0.FIRST.. (PER_ADDR each), each
sending a POST's first line and one header, then one more header line every
EVERY seconds, reconnecting when the server closes it, for SECONDS. Sends
traffic to loopback only. Prints one line: connections opened, closed by the
server, still open at the end, and the median/max seconds a connection lived
before the server closed it.

    slowloris.py HOST PORT CONNECTIONS SECONDS [EVERY] [FIRST] [PER_ADDR]
"""
import asyncio
import statistics
import sys
import time

host, port, total, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
every = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
first = int(sys.argv[6]) if len(sys.argv) > 6 else 2
per_addr = int(sys.argv[7]) if len(sys.argv) > 7 else 100
assert host.startswith("127.") or host == "localhost", "loopback only"

opened = closed = 0
lived = []


async def one(n, deadline):
    global opened, closed
    source = f"127.0.0.{first + n // per_addr}"
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection(host, port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0.5)
            continue
        opened += 1
        start = time.monotonic()
        try:
            w.write(b"POST /webhook/bench-app HTTP/1.1\r\nHost: pubbot\r\n")
            await w.drain()
            while time.monotonic() < deadline:
                try:
                    data = await asyncio.wait_for(r.read(1024), timeout=every)
                    if not data:
                        raise ConnectionError("closed")
                except asyncio.TimeoutError:
                    w.write(b"X-Slow: 1\r\n")
                    await w.drain()
            w.close()
            return
        except (ConnectionError, OSError):
            closed += 1
            lived.append(time.monotonic() - start)
            w.close()


async def main():
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(one(n, deadline) for n in range(total)))
    still = opened - closed
    med = statistics.median(lived) if lived else 0
    top = max(lived) if lived else 0
    print(f"slow connections: opened {opened} closed by pubbot {closed} open at the end {still} "
          f"lived median {med:.1f} s max {top:.1f} s")


asyncio.run(main())
