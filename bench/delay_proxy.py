#!/usr/bin/python3
"""A TCP proxy that makes servers answer late, for bench/run's slow-backends benchmark.

  delay_proxy.py --delay SECONDS --ready FILE NAME=HOST:PORT...

For each NAME=HOST:PORT it listens on a free loopback port and forwards every connection to
HOST:PORT. Bytes from the client go through at once; every chunk the server sends reaches
the client SECONDS after it arrived, in order. Each round trip thus takes SECONDS longer, as
if the server were that far away, and chunks in flight do not add up their delays.

When every listener is up, FILE gets one line per NAME: `NAME PORT`. Stops on SIGTERM.
"""

import argparse
import asyncio
import os
import signal


async def forward(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def forward_late(reader, writer, delay):
    loop = asyncio.get_running_loop()
    chunks = asyncio.Queue()

    async def receive():
        try:
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time() + delay, data))
        except (ConnectionError, OSError):
            pass
        chunks.put_nowait((loop.time() + delay, b""))

    receiving = asyncio.ensure_future(receive())
    try:
        while True:
            due, data = await chunks.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        receiving.cancel()
        writer.close()


def handler(host, port, delay):
    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            forward(client_reader, server_writer),
            forward_late(server_reader, client_writer, delay),
        )

    return handle


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("targets", nargs="+")
    args = parser.parse_args()

    listeners = []
    lines = []
    for target in args.targets:
        name, address = target.split("=", 1)
        host, port = address.rsplit(":", 1)
        server = await asyncio.start_server(
            handler(host, int(port), args.delay), "127.0.0.1", 0
        )
        listeners.append(server)
        lines.append(f"{name} {server.sockets[0].getsockname()[1]}\n")

    partial = args.ready + ".partial"
    with open(partial, "w") as file:
        file.writelines(lines)
    os.rename(partial, args.ready)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for server in listeners:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
