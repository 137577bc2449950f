"""Redis commands of concurrent webhooks, sent together: every command issued during one turn of
the event loop goes out in one write on one connection, and each caller gets its own replies.

The hot path's state (sessions, contact memory, replays, the fetch cache) goes through here, not
through redis-py, whose pipeline spends several times this module's CPU a batch in its layers
(pool, retry, command stack, callbacks, a timer per reply; figures in bench/README.md, "Why the
code is written as it is"): here hiredis (redis-py's own C parser) packs the commands and parses
the replies. The connection is multiplexed: batches are written one after the other and their
replies, which Redis sends in order, are matched in order. Nothing here is atomic (no MULTI),
but the commands a caller gives together arrive together and in order.

The connection itself is made as redis-py makes it for the same URL, from redis-py's own URL
parsing and TLS context: every `rediss://` option (`ssl_ca_certs`, `ssl_certfile`,
`ssl_check_hostname`, ...), the credentials, the database, the client name, the connect
timeout. A Redis the queue store reaches, the hot path reaches. That work is done once a
connection: a command costs nothing more.

Everything else (queue configuration, the admin's writes, pub/sub, locks) uses redis-py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from ivr.redis import sentinel, sentinel_url
from ivr.redis.sentinel_url import is_sentinel_url

# The logger keeps the name it had before the move into ivr/redis/: operators filter on it.
log = logging.getLogger("ivr.autopipeline")

# A batch that takes longer fails its callers with TimeoutError, and the connection is dropped
# (a new one is made for the next batch): state makes a call better, never possible, and a hung
# Redis must not hold calls.
BATCH_TIMEOUT = 1.0
# After a batch timed out, a PING goes this often until Redis answers one; meanwhile commands
# fail at once, rather than each round trip of a webhook waiting its own timeout (a message
# makes five or six: 4.75 s in all on a stopped Redis).
PROBE_INTERVAL = 0.25

Command = tuple[Any, ...]  # as Redis takes it: ("SET", key, value, "EX", 60)


class FailedSends:
    """What takes the commands of a `send` that failed, instead of a line in the log."""

    def failed(self, commands: tuple[Command, ...], error: Exception) -> None:
        raise NotImplementedError


# Who gets a caller's replies: its future, or for a command sent without waiting (`send`) what
# to call it in the log should it fail, or what takes it then (no future, no callback made
# per call: two are sent on every call).
_Waiter = asyncio.Future[Any] | str | FailedSends


@dataclass
class _Batch:
    """Commands written together; `callers` hold each caller's commands and waiter."""

    callers: list[tuple[tuple[Command, ...], _Waiter]]
    expected: int
    replies: list[Any] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class AutoPipeline:
    def __init__(self, url: str, timeout: float = BATCH_TIMEOUT) -> None:
        self.url = url
        self.timeout = timeout
        self.batches = 0  # batches written (tests, and anyone profiling)
        self._pending: list[tuple[tuple[Command, ...], _Waiter]] = []
        self._in_flight: collections.deque[_Batch] = collections.deque()
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probing: asyncio.Task[None] | None = None  # while Redis is hung

    @property
    def hung(self) -> bool:
        """Redis did not answer a batch within the timeout, and has not answered since."""
        return self._probing is not None

    async def execute(self, *commands: Command) -> list[Any]:
        """Send `commands` with this turn's batch; their replies, in order, as Redis sends them
        (HGETALL: a flat list). Raises the first error: ResponseError for an error reply, or
        RedisConnectionError or TimeoutError for the whole batch, which never takes longer
        than `timeout`."""
        if not commands:
            return []
        if self._probing is not None:
            raise self._hung_error()
        future = asyncio.get_running_loop().create_future()
        self._enqueue(commands, future)
        replies = await future
        if isinstance(replies, Exception):
            raise replies
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies  # type: ignore[no-any-return]

    def send(self, *commands: Command, what: str | FailedSends) -> None:
        """Queue `commands` without waiting for their replies (a cache write, say); a failure
        is logged as `what` skipped, or given to `what`."""
        if self._probing is not None:
            _answer(what, self._hung_error(), commands)
            return
        self._enqueue(commands, what)

    async def close(self) -> None:
        """Send what is queued, wait for the replies on their way, and disconnect."""
        if self._pending or self._in_flight or self._connecting is not None:
            # Redis answers in order: its reply to this comes after every earlier one's.
            with contextlib.suppress(Exception):
                await self.execute(("PING",))
        if self._probing is not None:
            self._probing.cancel()
            self._probing = None
        self._disconnect(RedisConnectionError("the auto-pipeline is closed"))

    def _hung_error(self) -> RedisConnectionError:
        return RedisConnectionError(f"Redis did not answer within {self.timeout:g} s and has "
                                    "not answered since")

    async def _probe(self) -> None:
        """PING until Redis answers one; then commands go to it again."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            future = asyncio.get_running_loop().create_future()
            self._enqueue((("PING",),), future)
            if not isinstance(await future, Exception):
                log.info("Redis answers again")
                self._probing = None
                return

    # --- batching ---------------------------------------------------------------------------

    def _enqueue(self, commands: tuple[Command, ...], waiter: _Waiter) -> None:
        """Futures get errors as results: a caller that gave up leaves nothing unretrieved."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests): nothing of the old one works
            self._disconnect(RedisConnectionError("event loop changed"))
            self._pending = []
            self._probing = None
            self._loop = loop
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((commands, waiter))

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            if self._connecting is None:  # the batch waits for the connection
                self._connecting = asyncio.ensure_future(self._connect())
            return
        pending, self._pending = self._pending, []
        packed: list[bytes] = []
        callers = []
        for commands, waiter in pending:
            try:
                packed += [hiredis.pack_command(command) for command in commands]
            except (TypeError, ValueError) as exc:  # an argument Redis cannot take: a bug
                _answer(waiter, ResponseError(f"cannot send {commands[0][0]!r}...: {exc}"),
                        commands)
                continue
            callers.append((commands, waiter))
        if not callers:
            return
        batch = _Batch(callers, len(packed))
        batch.timer = asyncio.get_running_loop().call_later(self.timeout, self._expire, batch)
        self._in_flight.append(batch)
        self._writer.write(b"".join(packed))
        self.batches += 1

    def _expire(self, batch: _Batch) -> None:
        if batch in self._in_flight:
            if self._probing is None:
                log.warning("Redis did not answer within %g s: commands fail at once until it "
                            "answers a PING", self.timeout)
                self._probing = asyncio.ensure_future(self._probe())
            self._disconnect(TimeoutError(f"Redis did not answer within {self.timeout:g} s"))

    # --- the connection ---------------------------------------------------------------------

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):  # callers wait for it too
                writer = await _open(self.url)
        except (OSError, TimeoutError, RedisConnectionError, ResponseError) as exc:
            error = exc if isinstance(exc, RedisConnectionError | ResponseError) else (
                RedisConnectionError(f"cannot connect to Redis: {exc or type(exc).__name__}"))
            pending, self._pending = self._pending, []
            for commands, waiter in pending:
                _answer(waiter, error, commands)
            return
        finally:
            self._connecting = None
        self._writer = writer
        # From here on replies are parsed in the transport's callback, as they arrive: no task
        # reading the stream, and each caller resumes one turn of the loop sooner.
        writer.transport.set_protocol(_Replies(self, writer))
        self._flush()

    def _lost(self, writer: asyncio.StreamWriter, error: RedisConnectionError) -> None:
        if self._writer is writer:
            self._disconnect(error)

    def _deliver(self, reply: Any) -> None:
        if not self._in_flight:  # a reply nobody waits for (Redis keeps order): not a crash
            return
        batch = self._in_flight[0]
        if isinstance(reply, hiredis.ReplyError):
            if str(reply).startswith("READONLY"):
                # A master demoted by a failover: the next batch goes to the new one.
                asyncio.get_running_loop().call_soon(self._lost, self._writer, RedisConnectionError(
                    "Redis is a replica now (READONLY): reconnecting"))
            reply = ResponseError(str(reply))
        batch.replies.append(reply)
        if len(batch.replies) < batch.expected:
            return
        self._in_flight.popleft()
        if batch.timer is not None:
            batch.timer.cancel()
        start = 0
        for commands, waiter in batch.callers:
            count = len(commands)
            _answer(waiter, batch.replies[start:start + count], commands)
            start += count

    def _disconnect(self, error: Exception) -> None:
        """Fail every batch in flight with `error`, and drop the connection."""
        writer, self._writer = self._writer, None
        with contextlib.suppress(RuntimeError):  # a loop already closed (tests) has nothing
            if writer is not None:
                writer.close()
        while self._in_flight:
            batch = self._in_flight.popleft()
            if batch.timer is not None:
                batch.timer.cancel()
            for commands, waiter in batch.callers:
                _answer(waiter, error, commands)


async def _open(url: str) -> asyncio.StreamWriter:
    """A connection to the Redis at `url`, made as redis-py makes it for the same URL (the
    address or Unix socket, TLS with every `ssl_*` option, the credentials, in the address or
    the query, the database, the client name, the connect timeout), or to the master that
    redis+sentinel:// sentinels name now. Its stream reader serves the set-up only: the caller
    then sets its protocol."""
    connection = await _as_redis_py_connects(url)
    async with asyncio.timeout(connection.socket_connect_timeout):  # None: no bound of its own
        if isinstance(connection, UnixDomainSocketConnection):
            reader, writer = await asyncio.open_unix_connection(connection.path)
        else:
            tls = connection.ssl_context.get() if isinstance(connection, SSLConnection) else None
            reader, writer = await asyncio.open_connection(connection.host, connection.port,
                                                           ssl=tls)
    handshake = _handshake(connection)
    if handshake:
        writer.write(b"".join(hiredis.pack_command(command) for command in handshake))
        parser = hiredis.Reader(encoding="utf-8")
        for _ in handshake:
            while (reply := parser.gets()) is False:
                data = await reader.read(4096)
                if not data:
                    writer.close()
                    raise RedisConnectionError("Redis closed the connection during set-up")
                parser.feed(data)
            if isinstance(reply, hiredis.ReplyError):
                writer.close()
                raise ResponseError(f"Redis refused the connection's set-up: {reply}")
    return writer


async def _as_redis_py_connects(url: str) -> AbstractConnection:
    """The connection redis-py's pool would make for `url`, not connected: its URL parsing and
    its TLS context are the pipeline's, so every option redis-py takes works here too, and a
    Redis the queue store reaches, the hot path reaches (a private CA in `ssl_ca_certs`, say).
    Raises RedisConnectionError for a URL redis-py would refuse (the message names no secret)."""
    try:
        if is_sentinel_url(url):
            target = sentinel_url.parse(url)
            host, port = await sentinel.master_address(target)
            return Connection(host=host, port=port, **target.master_options())
        options = dict(parse_url(url))
        connection_class = options.pop("connection_class", Connection)
        return connection_class(**options)  # type: ignore[no-any-return]
    except (TypeError, ValueError, RedisError) as exc:
        if isinstance(exc, RedisConnectionError):  # no sentinel knows the master
            raise
        raise RedisConnectionError(f"the Redis URL cannot be used: {exc}") from None


def _handshake(connection: AbstractConnection) -> list[Command]:
    """What redis-py sends first on such a connection: AUTH, CLIENT SETNAME, SELECT."""
    commands: list[Command] = []
    if connection.password:
        commands.append(("AUTH", *([connection.username] if connection.username else []),
                         connection.password))
    if connection.client_name:
        commands.append(("CLIENT", "SETNAME", connection.client_name))
    if connection.db:
        commands.append(("SELECT", connection.db))
    return commands


class _Replies(asyncio.Protocol):
    """The connection's protocol once it is set up: every reply to the batch it answers."""

    def __init__(self, pipeline: AutoPipeline, writer: asyncio.StreamWriter) -> None:
        self.pipeline = pipeline
        self.writer = writer
        self.parser = hiredis.Reader(encoding="utf-8")

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        try:
            while (reply := self.parser.gets()) is not False:
                self.pipeline._deliver(reply)
        except hiredis.ProtocolError as exc:
            self.pipeline._lost(self.writer, RedisConnectionError(f"Redis connection lost: {exc}"))

    def eof_received(self) -> bool:
        self.pipeline._lost(self.writer, RedisConnectionError("Redis closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipeline._lost(self.writer, RedisConnectionError(
            f"Redis connection lost: {exc}" if exc else "Redis closed the connection"))


def _answer(waiter: _Waiter, replies: list[Any] | Exception, commands: tuple[Command, ...]
            ) -> None:
    """Give a caller its replies (or the error that lost them)."""
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():  # else its caller gave up waiting
            waiter.set_result(replies)
        return
    # Sent without waiting: only a failure is worth a word.
    error = replies if isinstance(replies, Exception) else next(
        (reply for reply in replies if isinstance(reply, Exception)), None)
    if error is None:
        return
    if isinstance(waiter, str):
        log.warning("%s skipped: %s", waiter, type(error).__name__)
    else:
        waiter.failed(commands, error)
