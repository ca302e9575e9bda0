#!/usr/bin/env python3
"""A TCP relay on 127.0.0.1 that adds a round trip: every byte is delivered DELAY_MS later in
each direction (so one exchange through it costs 2 x DELAY_MS more), without limiting
throughput. Stands in for a mirror across a WAN in bench/pipeline.sh.

    delay_relay.py LISTEN_PORT TARGET_PORT DELAY_MS

Runs until killed. Per connection, what one side sends and the other has not yet taken is held
in memory; the benchmark's files are small.
"""

import asyncio
import sys
import time


async def pump(reader, writer, delay):
    """Copies reader to writer, each chunk `delay` seconds after it arrived, in order."""
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                try:
                    writer.write_eof()
                except (OSError, RuntimeError):
                    pass
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            queue.put_nowait((time.monotonic() + delay, data))
            if not data:
                break
    except OSError:
        queue.put_nowait((time.monotonic() + delay, b""))
    try:
        await sender
    except OSError:
        pass


async def main():
    listen, target, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    delay = delay_ms / 1000.0

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pump(client_reader, up_writer, delay),
            pump(up_reader, client_writer, delay),
            return_exceptions=True,
        )
        for w in (client_writer, up_writer):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
