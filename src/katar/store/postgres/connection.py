"""The PostgreSQL store's connections: the URL's parameters, the pool, an outage noticed
and probed until PostgreSQL answers again, the transactions with their time limit and
watchdog, and the notifications' listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from katar.errors import ConfigError, OutcomeUnknown, StoreError, StoreUnavailable
from katar.logs import mask_credentials

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from katar.core.storage import Observer

log = logging.getLogger("katar")

#: Seconds to open a connection, unless the URL's ``connect_timeout`` says otherwise.
CONNECT_TIMEOUT: Final = 3
#: Seconds a transaction may take, unless the URL's ``query_timeout`` says otherwise.
QUERY_TIMEOUT: Final = 10.0
#: Seconds /healthz waits for PostgreSQL, unless the URL's ``health_timeout`` says otherwise.
HEALTH_TIMEOUT: Final = 2.0
#: Seconds after query_timeout before a transaction's connection is cut: PostgreSQL cancels
#: a slow statement itself first, when it answers at all.
WATCHDOG_GRACE: Final = 1.0
#: Seconds between attempts to reach PostgreSQL while it is known to be down.
PROBE_INTERVAL: Final = 0.25
#: Seconds between two checks that the queue options loaded are those stored.
OPTIONS_CHECK: Final = 2.0
#: Seconds the notifications' connection may stay lost before the log says so.
LISTEN_LOST_SAID: Final = 10.0
#: The fewest seconds between two warnings of a notification that Katar did not send.
MALFORMED_EVERY: Final = 60.0

_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def parse_url(url: str) -> tuple[str, int, str]:
    """The connection string, the pool size and the schema of a ``postgresql://`` URL."""
    conninfo, pool_size, schema, _timeouts = parse_url_timeouts(url)
    return conninfo, pool_size, schema


def _seconds(params: dict[str, str], name: str, default: float, least: float) -> float:
    """The URL parameter ``name`` in seconds, from ``least`` to a day."""
    raw = params.pop(name, None)
    try:
        value = default if raw is None else float(raw)
    except ValueError:
        value = math.nan
    if not least <= value <= 86_400:
        raise ConfigError(
            f"the PostgreSQL URL's {name} must be a number of seconds from {least:g} to 86400,"
            f" not {raw!r}"
        )
    return value


def parse_url_timeouts(url: str) -> tuple[str, int, str, tuple[float, float]]:
    """:func:`parse_url`, and the URL's (query_timeout, health_timeout) in seconds."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    try:
        pool_size = int(params.pop("pool_size", "10"))
    except ValueError:
        raise ConfigError("the PostgreSQL URL's pool_size must be a whole number") from None
    if not 1 <= pool_size <= 1000:
        raise ConfigError("the PostgreSQL URL's pool_size must be from 1 to 1000")
    query_timeout = _seconds(params, "query_timeout", QUERY_TIMEOUT, 0)
    health_timeout = _seconds(params, "health_timeout", HEALTH_TIMEOUT, 0.1)
    schema = params.pop("schema", "katar")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ConfigError(
            f"invalid schema {schema!r} in the PostgreSQL URL: lower-case letters, digits, '_'"
        )
    # An address that does not answer is an outage, not load: give up on it soon.
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(params), ""))
    return conninfo, pool_size, schema, (query_timeout, health_timeout)


def _translate(exc: Exception, url: str) -> StoreError:
    import psycopg

    if isinstance(exc, psycopg.OperationalError | psycopg.errors.AdminShutdown):
        return StoreUnavailable(mask_credentials(f"PostgreSQL is unavailable: {exc}", url))
    return StoreError(mask_credentials(f"PostgreSQL failed: {exc}", url))


class Connections:
    """The pool of one store, and what it does when PostgreSQL cannot be reached: fail fast
    while a probe tries every PROBE_INTERVAL, then serve from a fresh pool."""

    def __init__(self, url: str) -> None:
        self.conninfo, self.pool_size, self.schema, timeouts = parse_url_timeouts(url)
        #: Seconds a transaction may take (0: no bound), and /healthz's check.
        self.query_timeout, self.health_timeout = timeouts
        self.url = mask_credentials(url)
        self.raw_url = url  # to mask its password in the driver's messages too
        self.pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] | None = None
        #: Set while PostgreSQL is known to be unreachable: requests fail at once instead of
        #: each waiting for the pool's time-out, and this task probes until it answers.
        self.probe: asyncio.Task[None] | None = None
        self.retired: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        import psycopg

        try:
            # One connection first: a mistake in the URL (no such database or role, a wrong
            # port or host, a password refused) is said at once with its cause, where the
            # pool would try again silently until its wait ran out, and say only that.
            first = await psycopg.AsyncConnection.connect(self.conninfo)
            await first.close()
            self.pool = await self._new_pool(10.0)
        except Exception as exc:
            cause = " ".join(str(exc).split())  # the driver's hint comes on lines of its own
            raise StoreUnavailable(
                self.masked(f"cannot connect to PostgreSQL at {self.url}: {cause}")
            ) from exc

    async def _new_pool(self, wait: float) -> AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]]:
        """An open pool with one connection made, within ``wait`` seconds."""
        from psycopg_pool import AsyncConnectionPool

        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]] = AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=self.pool_size,
            open=False,
            # Waiting for a connection when all are busy (load, not an outage: an outage
            # fails at once, see down).
            timeout=self.query_timeout or 10.0,
            kwargs={"autocommit": True},
            configure=self._configure,
        )
        try:
            await pool.open(wait=True, timeout=wait)
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _configure(self, conn: AsyncConnection[tuple[Any, ...]]) -> None:
        """Each new connection: PostgreSQL cancels a statement that outlives query_timeout
        (a lock waited for, a slow plan), leaving the connection usable; the watchdog of
        Transaction, a second later, is for a server that does not answer at all."""
        milliseconds = round(self.query_timeout * 1000)
        await conn.execute(f"SET statement_timeout = {milliseconds}")

    def down(self) -> None:
        """PostgreSQL could not be reached: fail fast until a probe reaches it again."""
        if self.probe is None and self.pool is not None:
            self.probe = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Try every PROBE_INTERVAL; once PostgreSQL answers, serve from a fresh pool. The
        old pool's connections are dead, and it would only try again after its own backoff
        (doubling up to minutes), so it is retired rather than waited for."""
        import psycopg

        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                # One connection first: it fails at once while nothing listens, where a
                # pool would retry on its own backoff until its wait ran out.
                probe = await psycopg.AsyncConnection.connect(self.conninfo)
                await probe.close()
                pool = await self._new_pool(10.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                continue
            old, self.pool = self.pool, pool
            self.probe = None
            if old is not None:
                # Closed once the requests still holding its connections are done.
                retiring = asyncio.get_running_loop().create_task(old.close(timeout=30.0))
                self.retired.add(retiring)
                retiring.add_done_callback(self.retired.discard)
            return

    async def stop_probe(self) -> None:
        """Stop probing, and wait for the pools retired to close."""
        if self.probe is not None:
            self.probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.probe
            self.probe = None
        for retiring in list(self.retired):
            with contextlib.suppress(Exception):
                await retiring

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()

    def transaction(
        self, writes: bool = True, alone: bool = False, limit: float | None = None
    ) -> Transaction:
        # writes=False: a transaction that only reads, whose lost COMMIT loses nothing.
        # alone=True: no transaction block, for one statement that commits as it ends.
        # limit: seconds it may take, instead of query_timeout (0: no bound).
        if limit is None:  # PostgreSQL's statement_timeout first (see _configure)
            limit = self.query_timeout and self.query_timeout + WATCHDOG_GRACE
        return Transaction(self, writes, alone, limit)

    def masked(self, message: str) -> str:
        return mask_credentials(message, self.raw_url)


class Listener:
    """LISTEN on the channel of the servers sharing the schema, and pass what is heard on
    to the observer."""

    def __init__(self, db: Connections, channel: str) -> None:
        self.db = db
        self._channel = channel
        self._malformed_said: float | None = None  # when an odd notification was last said

    async def listen(self, observer: Observer, listening: asyncio.Event) -> None:
        """LISTEN on a connection of its own, for as long as the store is open; after a
        lost connection, connect again (with backoff) and say that events were missed."""
        import psycopg

        delay = 0.1
        loop = asyncio.get_running_loop()
        lost: float | None = None  # since when the connection is lost
        said = False  # said once per loss, not at every attempt to reconnect
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.db.conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {self._channel}")
                    if listening.is_set():
                        observer.resync()
                    if said:
                        log.warning("PostgreSQL notifications are back")
                    lost, said = None, False
                    listening.set()
                    delay = 0.1
                    async for event in conn.notifies():
                        self._heard(observer, event.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A restart of PostgreSQL is an outage, said once by the engine: the loss is
                # worth a line of its own only when it lasts (a proxy that drops LISTEN, a
                # role that may not connect any more), and long polls wake late meanwhile.
                lost = loop.time() if lost is None else lost
                if not said and loop.time() - lost >= LISTEN_LOST_SAID:
                    log.warning(
                        "PostgreSQL notifications lost for %.0fs (%s): long polls here do not"
                        " hear of tasks made on other servers; reconnecting until it answers",
                        loop.time() - lost,
                        self.db.masked(str(exc)),
                    )
                    said = True
                await asyncio.sleep(delay)
                # Events missed while away: long polls must hear of ready tasks soon after
                # PostgreSQL is back.
                delay = min(delay * 2, 1.0)

    def _heard(self, observer: Observer, payload: str) -> None:
        """Pass a notification on to the observer. Anyone who may connect can NOTIFY on the
        channel: a payload that Katar does not send is ignored (and said at most once every
        MALFORMED_EVERY seconds), never a reason to drop the connection."""
        kind, _, rest = payload.partition(":")
        if kind == "r":
            count, _, queue = rest.partition(":")
            if count.isdigit() and 0 < len(count) <= 9 and queue:
                observer.tasks_ready(queue, int(count))
                return
        elif kind == "q" and rest:
            observer.queue_changed(rest)
            return
        elif kind == "s" and not rest:
            observer.schedules_changed()
            return
        clock = asyncio.get_running_loop().time()
        if self._malformed_said is None or clock - self._malformed_said >= MALFORMED_EVERY:
            self._malformed_said = clock
            log.warning(
                "ignored a notification on %s that Katar did not send: %r",
                self._channel,
                payload[:100],
            )


class Transaction:
    """``async with``: a pooled connection inside a transaction; driver errors become
    Katar's (StoreUnavailable when the database cannot be reached, OutcomeUnknown when the
    connection is lost while a transaction that writes commits). ``alone``: no transaction
    block, for one statement that PostgreSQL commits as it ends (the pool's connections
    are in autocommit); a connection lost during that statement is OutcomeUnknown when it
    writes, as it may have been committed.

    ``limit`` (seconds, 0: none) bounds the wait for a connection, and the transaction from
    then to its end: past it, a watchdog cuts the connection (PostgreSQL stopped, or cut off
    by the network, answers nothing; a statement would wait for ever), the statement
    waiting on it fails at once as on a lost connection, and the store fails fast until a
    probe reaches PostgreSQL again."""

    def __init__(
        self, db: Connections, writes: bool, alone: bool = False, limit: float = 0
    ) -> None:
        self.db = db
        self._writes = writes
        self._alone = alone
        self._limit = limit
        self._watchdog: asyncio.TimerHandle | None = None
        self._cut = False
        self._connection: Any = None
        self._conn: Any = None
        self._transaction: Any = None

    async def __aenter__(self) -> AsyncConnection[tuple[Any, ...]]:
        import psycopg

        db = self.db
        if db.pool is None:
            raise StoreUnavailable("the PostgreSQL store is not open")
        if db.probe is not None:
            raise StoreUnavailable("PostgreSQL is unavailable (reconnecting)")
        try:
            self._connection = db.pool.connection(timeout=self._limit or None)
            self._conn = conn = await self._connection.__aenter__()
            if self._limit:
                loop = asyncio.get_running_loop()
                self._watchdog = loop.call_later(self._limit, self._cut_off)
            if not self._alone:
                self._transaction = conn.transaction()
                await self._transaction.__aenter__()
        except (psycopg.Error, OSError) as exc:
            self._stop_watchdog()
            raise self._lost(_translate(exc, db.raw_url)) from exc
        except Exception as exc:
            self._stop_watchdog()
            # The pool's own time-out: every connection busy (load), or none could be made.
            raise StoreUnavailable(f"PostgreSQL is unavailable: {exc}") from exc
        return conn  # type: ignore[no-any-return]

    def _cut_off(self) -> None:
        """The transaction outlived its limit: shut its connection's socket down. The
        statement waiting for an answer reads the end of the connection at once (closing
        the descriptor instead would leave it waiting on a file the loop no longer
        watches)."""
        self._watchdog = None
        self._cut = True
        with contextlib.suppress(OSError, ValueError):
            fd = os.dup(self._conn.pgconn.socket)
            with socket.socket(fileno=fd) as sock:
                sock.shutdown(socket.SHUT_RDWR)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _said(self, error: BaseException) -> str:
        """What the driver's ``error`` means, for the message."""
        if self._cut:
            return f"PostgreSQL did not answer within {self._limit:g}s"
        return mask_credentials(f"PostgreSQL is unavailable: {error}", self.db.raw_url)

    def _lost(self, error: StoreError) -> StoreError:
        """``error``, after noting an outage when the connection is gone (a deadlock or a
        cancelled statement leaves it usable: no outage)."""
        self._stop_watchdog()
        if self._cut and type(error) is StoreUnavailable:
            error = StoreUnavailable(self._said(error))
        if isinstance(error, StoreUnavailable) and (self._conn is None or self._conn.broken):
            self.db.down()
        return error

    def _unknown(self, error: BaseException) -> StoreError:
        """OutcomeUnknown for ``error``, lost while a write committed, the URL's secrets
        masked in its cause."""
        cause = self._said(error) if self._cut else f"PostgreSQL: {error}"
        return self._lost(OutcomeUnknown(cause=mask_credentials(cause, self.db.raw_url)))

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            await self._exit(kind, exc, tb)
        finally:
            self._stop_watchdog()

    async def _exit(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        import psycopg

        if self._alone:
            await self._connection.__aexit__(kind, exc, tb)
            if not isinstance(exc, psycopg.Error):
                return
            if self._writes and self._conn.broken:
                raise self._unknown(exc) from exc
            raise self._lost(_translate(exc, self.db.raw_url)) from exc
        if exc is None and self._conn.broken:
            # Lost since the last statement: COMMIT cannot be sent (psycopg does not even
            # try, nor say so), and PostgreSQL rolls the transaction back. Nothing happened.
            error = psycopg.OperationalError("the connection was lost before COMMIT")
            await self._connection.__aexit__(type(error), error, None)
            raise self._lost(_translate(error, self.db.raw_url))
        try:
            await self._transaction.__aexit__(kind, exc, tb)
        except psycopg.Error as error:
            await self._connection.__aexit__(type(error), error, None)
            if exc is None and self._writes and isinstance(error, psycopg.OperationalError):
                # Lost during or after COMMIT: PostgreSQL may have committed or not.
                raise self._unknown(error) from error
            raise self._lost(_translate(error, self.db.raw_url)) from error
        await self._connection.__aexit__(kind, exc, tb)
        if isinstance(exc, psycopg.Error):
            raise self._lost(_translate(exc, self.db.raw_url)) from exc
