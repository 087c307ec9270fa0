#!/usr/bin/env python3
"""A round-robin TCP load balancer for the soak (scripts/soak.sh): what an
operator puts in front of two pubbot replicas. Each connection goes to the
next backend that accepts it; a backend that refuses (killed, restarting)
is skipped, so the platform's next try of a push reaches the other one.

    soak-lb.py LISTEN_PORT BACKEND_PORT [BACKEND_PORT ...]
"""

import asyncio
import itertools
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def main():
    listen = int(sys.argv[1])
    backends = [int(p) for p in sys.argv[2:]]
    turn = itertools.cycle(range(len(backends)))

    async def serve(client_reader, client_writer):
        first = next(turn)
        for k in range(len(backends)):
            port = backends[(first + k) % len(backends)]
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(pipe(client_reader, writer), pipe(reader, client_writer))
            return
        client_writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", listen, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
