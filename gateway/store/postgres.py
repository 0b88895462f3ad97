"""The task store and per-key limits in PostgreSQL, shared by every gateway replica.

The queue is :class:`~.records.SqlTaskStore`'s SQL; what PostgreSQL adds is ``FOR UPDATE SKIP LOCKED``
on the claim (two replicas claiming at once take different tasks, neither waits for the other) and a
connection pool that replaces connections a restarted server dropped, so a gateway recovers without a
restart of its own. Every failure to reach the server is a :class:`~.records.TaskStoreUnavailable`:
the request gets a 503 and ``/readyz`` reports not-ready until the database answers again.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from triton_inpaint.gateway.store.records import Execute, SqlTaskStore, TaskStoreUnavailable

logger = logging.getLogger("triton_inpaint.gateway")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    uuid TEXT PRIMARY KEY, ext TEXT NOT NULL, size BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, tool TEXT NOT NULL, args TEXT NOT NULL, status TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL, result TEXT, error TEXT,
    created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL,
    owner TEXT, lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    not_before DOUBLE PRECISION NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, digest TEXT
);
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS live TEXT;
CREATE INDEX IF NOT EXISTS tasks_due ON tasks (status, created);
CREATE TABLE IF NOT EXISTS key_hits (who TEXT NOT NULL, at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS key_hits_who ON key_hits (who, at);
CREATE TABLE IF NOT EXISTS key_slots (
    id TEXT PRIMARY KEY, who TEXT NOT NULL, holder TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS key_slots_who ON key_slots (who, expires);
"""
_SCHEMA_LOCK = 0x7472_6974_6F6E  # an advisory lock id: replicas starting together create tables once
_CHANNEL = "triton_inpaint_tasks"  # NOTIFY channel: a task was stored


class OutageLogFilter(logging.Filter):
    """Thins psycopg_pool's "error connecting" warnings, which it logs at every reconnection attempt
    for as long as the server is down, each with libpq's hint on a second line: one line at the start
    of an outage, then one every ``every`` seconds saying how many were left out. (psycopg_pool has no
    option for this; a logging filter is the hook it leaves.)"""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._left_out = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("error connecting"):
            return True
        now = self._clock()
        with self._lock:
            if self._last is not None and now - self._last < self.every:
                self._left_out += 1
                return False
            left_out, self._last, self._left_out = self._left_out, now, 0
        record.msg = " ".join(record.getMessage().split())  # one line: libpq's hint joins it
        record.args = None
        if left_out:
            record.msg += f" ({left_out} more failed attempts since the last one logged)"
        return True


logging.getLogger("psycopg.pool").addFilter(OutageLogFilter())


def redacted(url: str) -> str:
    """The database URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unparsable database URL)"
    where = f"{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"
    return f"postgresql://{info.get('user', '')}@{where}"


class PostgresTaskStore(SqlTaskStore):
    """Tasks and the image index in one PostgreSQL database (``postgresql://USER:PASSWORD@HOST/DB``)."""

    shared = True
    now = "extract(epoch from clock_timestamp())::double precision"
    skip_locked = " FOR UPDATE SKIP LOCKED"
    new_task_signal = f"NOTIFY {_CHANNEL}"  # delivered when the storing transaction commits
    RELISTEN_SECONDS = 2.0

    def __init__(self, url: str, pool_size: int = 8, timeout: float = 10.0) -> None:
        self.name = redacted(url)
        self._url = url
        self._timeout = timeout
        self._closed = threading.Event()
        self._listener: threading.Thread | None = None
        # Opened without waiting: the gateway starts (not ready) while the database is still down.
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            timeout=timeout,
            open=False,
            check=ConnectionPool.check_connection,  # a connection the server dropped is replaced
            kwargs={"connect_timeout": max(1, int(timeout)), "row_factory": dict_row},
            name="triton-inpaint",
        )
        self._pool.open(wait=False)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[Execute]:
        self._ensure_schema()
        with self._session() as connection:
            yield connection.execute

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection(timeout=self._timeout) as connection, connection.transaction():
                yield connection
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise TaskStoreUnavailable(f"the task database {self.name} is unavailable: {exc}") from exc

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock, self._session() as connection:
            if not self._schema_ready:
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                connection.execute(_SCHEMA)
                self._schema_ready = True

    def on_new_task(self, wake: Callable[[], None]) -> None:
        """LISTEN on a connection of its own: an idle worker on any replica starts on a task another
        replica stored at once, rather than at its next poll."""
        self._listener = threading.Thread(
            target=self._listen, args=(wake,), name="task-notifications", daemon=True
        )
        self._listener.start()

    def _listen(self, wake: Callable[[], None]) -> None:
        while not self._closed.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=max(1, int(self._timeout))
                ) as connection:
                    connection.execute(f"LISTEN {_CHANNEL}")
                    wake()  # tasks stored while nothing listened (at start, during an outage)
                    while not self._closed.is_set():
                        for _ in connection.notifies(timeout=1.0):
                            wake()
            except psycopg.Error:  # the outage is logged by the pool; workers poll meanwhile
                self._closed.wait(self.RELISTEN_SECONDS)

    def close(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.join(timeout=3.0)
        self._pool.close()


class SharedKeyLimits:
    """Per-key limits counted in the shared database, so that they hold across replicas: the one-minute
    request window as rows of ``key_hits``, the requests running at once as rows of ``key_slots``. A slot
    carries an expiry its gateway renews every few seconds: the slots of a gateway that died lapse
    within ``SLOT_SECONDS`` instead of blocking the key. Keys are stored as digests, never as sent.

    Methods block on the database: callers in the event loop run them in a thread (``blocking``)."""

    blocking = True
    SLOT_SECONDS = 30.0

    def __init__(self, store: PostgresTaskStore, concurrency: int, per_minute: int) -> None:
        self.store = store
        self.concurrency = concurrency
        self.per_minute = per_minute
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._slots: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._renewer = threading.Thread(target=self._renew, name="key-slots", daemon=True)
        self._renewer.start()

    def acquire(self, who: str) -> float | None:
        """None when the request may go ahead (call :meth:`release` after); else the seconds to wait.
        :class:`TaskStoreUnavailable` when the database does not answer."""
        digest = hashlib.sha256(who.encode()).hexdigest()
        slot = uuid.uuid4().hex
        now = self.store.now
        with self.store.transaction() as execute:
            # One key's acquisitions queue on its own lock; other keys go on in parallel.
            execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (digest,))
            execute(f"DELETE FROM key_hits WHERE who = %s AND at <= {now} - 60", (digest,))  # noqa: S608
            hits = execute(
                f"SELECT count(*) AS n, min(at) AS first, {now} AS now FROM key_hits WHERE who = %s",  # noqa: S608
                (digest,),
            ).fetchone()
            if hits["n"] >= self.per_minute:
                return float(max(1, math.ceil(60.0 - (hits["now"] - hits["first"]))))
            running = execute(
                f"SELECT count(*) AS n FROM key_slots WHERE who = %s AND expires > {now}",  # noqa: S608
                (digest,),
            ).fetchone()
            if running["n"] >= self.concurrency:
                return 1.0
            execute(f"INSERT INTO key_hits (who, at) VALUES (%s, {now})", (digest,))  # noqa: S608
            execute(
                f"INSERT INTO key_slots (id, who, holder, expires) VALUES (%s, %s, %s, {now} + %s)",  # noqa: S608
                (slot, digest, self.holder, self.SLOT_SECONDS),
            )
        with self._lock:
            self._slots.setdefault(who, []).append(slot)
        return None

    def release(self, who: str) -> None:
        with self._lock:
            held = self._slots.get(who)
            slot = held.pop() if held else None
        if slot is None:
            return
        try:
            with self.store.transaction() as execute:
                execute("DELETE FROM key_slots WHERE id = %s", (slot,))
        except TaskStoreUnavailable as exc:  # the slot lapses on its own once it is no longer renewed
            logger.warning("a key slot was not released (it lapses in %g s): %s", self.SLOT_SECONDS, exc)

    def _renew(self) -> None:
        while not self._stop.wait(self.SLOT_SECONDS / 3):
            try:
                with self.store.transaction() as execute:
                    now = self.store.now
                    execute(
                        f"UPDATE key_slots SET expires = {now} + %s WHERE holder = %s",  # noqa: S608
                        (self.SLOT_SECONDS, self.holder),
                    )
                    # Old rows of every key, this one's and the others' (a gateway that died left some).
                    execute(f"DELETE FROM key_hits WHERE at <= {now} - 60", ())  # noqa: S608
                    execute(f"DELETE FROM key_slots WHERE expires <= {now}", ())  # noqa: S608
            except TaskStoreUnavailable as exc:
                logger.warning("key slots not renewed: %s", exc)

    def close(self) -> None:
        self._stop.set()
