"""Forwards the in-cluster `kubernetes` Service address to the API server on loopback: what
kube-proxy would do for pods' in-cluster clients (the agent and the operator), without touching the
host's packet filter. TLS passes through untouched.

python -m e2e.realnode.apiproxy LISTEN_HOST:PORT TARGET_HOST:PORT [MARKER]
(MARKER, ignored, tells its owner's processes from others by their command line.)
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError):
            writer.close()


async def _serve(listen: tuple[str, int], target: tuple[str, int]) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))

    server = await asyncio.start_server(handle, *listen)
    async with server:
        await server.serve_forever()


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def main(argv: list[str]) -> None:
    listen, target = (_address(value) for value in argv[:2])
    asyncio.run(_serve(listen, target))


if __name__ == "__main__":
    main(sys.argv[1:])
