"""Where the gateway keeps its async tasks and the index of stored images: SQLite on one machine (the
embedded default, :class:`SqliteTaskStore`), PostgreSQL when several gateway replicas share them
(:class:`~.postgres.PostgresTaskStore`). Both run the same SQL, written once here.

Tasks form a queue that workers drain by *claiming* one: the claim marks the task running under the
worker's id with a lease (an expiry time, by the database's clock so that replicas whose clocks differ
still agree). The worker renews the lease while it runs (:meth:`heartbeat`) and writes the outcome
only if it still holds the task (:meth:`finish_task`). A worker that dies stops renewing; once its
lease has run out, any worker claims the task again. Every claim counts as an attempt (a retry after
Triton was unreachable gives its attempt back); a task claimed more than ``MAX_ATTEMPTS`` times, its
workers having died each time, is failed by the next claimer instead of run again: it may be what
kills them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ATTEMPTS = 3  # claims of one task whose worker died before it finished

# Runs one statement: (sql with %s placeholders, parameters) -> a cursor (fetchone, fetchall, rowcount).
Execute = Callable[[str, Sequence[Any]], Any]


@dataclass(frozen=True)
class TaskRecord:
    id: str
    tool: str
    args: dict[str, Any]
    status: str
    progress: float
    result: dict[str, Any] | None
    error: str | None
    created: float
    updated: float
    attempts: int = 0
    digest: str | None = None  # of the request that created it: a resend is told from a reuse
    live: dict[str, Any] | None = None  # what its handler last reported while running (progress items)


class TaskExists(Exception):
    """A task with this id was created before; ``record`` is that task."""

    def __init__(self, record: TaskRecord) -> None:
        super().__init__(record.id)
        self.record = record


class TaskStoreUnavailable(OSError):
    """The task database did not answer (a restart, a network failure); the caller retries later."""


_COLUMNS = "id, tool, args, status, progress, result, error, created, updated, attempts, digest, live"


class SqlTaskStore:
    """The queue and the image index over any DB-API connection; subclasses say how to connect, what
    the database's clock is, and how a claim skips rows that another transaction holds."""

    shared = False  # True: other gateway processes use the same store (leases decide who runs what)
    now = "0"  # SQL for the database clock, seconds since the epoch
    skip_locked = ""  # appended to the claim's inner SELECT
    new_task_signal = ""  # SQL run in the transaction that stores a task, to wake other processes

    def on_new_task(self, wake: Callable[[], None]) -> None:
        """Have ``wake`` called when another process stores a task. Nothing to do for one process alone:
        the gateway wakes its own workers when it stores one."""

    @contextmanager
    def transaction(self) -> Iterator[Execute]:
        """One transaction, committed at the end (rolled back on an exception)."""
        raise NotImplementedError
        yield  # pragma: no cover

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self.transaction() as execute:
            return execute(sql, params).fetchone()

    # -- the image index --------------------------------------------------------------------------

    def add_image(self, image_uuid: str, ext: str, size: int) -> None:
        with self.transaction() as execute:
            execute(
                f"INSERT INTO images (uuid, ext, size, created) VALUES (%s, %s, %s, {self.now})",  # noqa: S608
                (image_uuid, ext, size),
            )

    def image_extension(self, image_uuid: str) -> str | None:
        row = self._one("SELECT ext FROM images WHERE uuid = %s", (image_uuid,))
        return None if row is None else row["ext"]

    def remove_image(self, image_uuid: str) -> str | None:
        """Forget an image; its extension (the bytes' name) or None when it was not listed."""
        row = self._one("DELETE FROM images WHERE uuid = %s RETURNING ext", (image_uuid,))
        return None if row is None else row["ext"]

    def check(self) -> None:
        """Raise TaskStoreUnavailable when the database does not answer (readiness)."""
        self._one("SELECT 1 AS ok")

    # -- async tasks ------------------------------------------------------------------------------

    def create_task(
        self, tool: str, args: dict[str, Any], task_id: str, digest: str | None = None
    ) -> TaskRecord:
        """A new pending task; :class:`TaskExists` (carrying the stored one) when the id is taken."""
        with self.transaction() as execute:
            row = execute(
                f"INSERT INTO tasks (id, tool, args, status, progress, created, updated, digest) "  # noqa: S608
                f"VALUES (%s, %s, %s, 'pending', 0, {self.now}, {self.now}, %s) "
                f"ON CONFLICT (id) DO NOTHING RETURNING {_COLUMNS}",
                (task_id, tool, json.dumps(args), digest),
            ).fetchone()
            if row is None:
                existing = execute(f"SELECT {_COLUMNS} FROM tasks WHERE id = %s", (task_id,)).fetchone()  # noqa: S608
                raise TaskExists(_task(existing))
            if self.new_task_signal:
                execute(self.new_task_signal, ())
        return _task(row)

    def get_task(self, task_id: str) -> TaskRecord | None:
        row = self._one(f"SELECT {_COLUMNS} FROM tasks WHERE id = %s", (task_id,))  # noqa: S608
        return None if row is None else _task(row)

    def unfinished_tasks(self) -> list[TaskRecord]:
        with self.transaction() as execute:
            rows = execute(
                f"SELECT {_COLUMNS} FROM tasks WHERE status IN ('pending', 'running') ORDER BY created",  # noqa: S608
                (),
            ).fetchall()
        return [_task(row) for row in rows]

    def count_unfinished(self, id_prefix: str) -> int:
        """Tasks waiting or running whose id starts with ``id_prefix`` (one caller's)."""
        row = self._one(
            "SELECT count(*) AS n FROM tasks "
            "WHERE status IN ('pending', 'running') AND substr(id, 1, %s) = %s",
            (len(id_prefix), id_prefix),
        )
        return int(row["n"])

    def claim_task(self, owner: str, lease_seconds: float) -> TaskRecord | None:
        """The oldest task that is due (pending and past its retry time, or running under a lease that
        ran out), now running under ``owner`` until the lease ends; None when nothing is due."""
        now = self.now
        due = f"(status = 'pending' AND not_before <= {now}) OR (status = 'running' AND lease_until < {now})"
        with self.transaction() as execute:
            row = execute(
                f"UPDATE tasks SET status = 'running', owner = %s, lease_until = {now} + %s, "  # noqa: S608
                f"attempts = attempts + 1, progress = 0.1, live = NULL, updated = {now} "
                f"WHERE id = (SELECT id FROM tasks WHERE {due} ORDER BY created LIMIT 1{self.skip_locked}) "
                f"RETURNING {_COLUMNS}",
                (owner, lease_seconds),
            ).fetchone()
        return None if row is None else _task(row)

    def heartbeat(self, held: Mapping[str, str], lease_seconds: float) -> int:
        """Renew the leases of the tasks workers are running now (task id -> its worker); how many were
        renewed. Only tasks named here: one whose outcome could not be written is not kept alive, its
        lease runs out and another worker takes it."""
        if not held:
            return 0
        pairs = " OR ".join("(id = %s AND owner = %s)" for _ in held)
        with self.transaction() as execute:
            cursor = execute(
                f"UPDATE tasks SET lease_until = {self.now} + %s "  # noqa: S608
                f"WHERE status = 'running' AND ({pairs})",
                (lease_seconds, *(value for pair in held.items() for value in pair)),
            )
            return cursor.rowcount

    def report_progress(self, task_id: str, owner: str, progress: float, live: dict[str, Any] | None) -> bool:
        """A running task's progress (0-1) and what its handler says of it, while ``owner`` holds it;
        False when it no longer does."""
        with self.transaction() as execute:
            cursor = execute(
                f"UPDATE tasks SET progress = %s, live = %s, updated = {self.now} "  # noqa: S608
                "WHERE id = %s AND owner = %s AND status = 'running'",
                (progress, None if live is None else json.dumps(live), task_id, owner),
            )
            return cursor.rowcount == 1

    def release_task(self, task_id: str, owner: str, error: str, delay: float) -> bool:
        """Put a task back to wait ``delay`` seconds (a service it needs is down), its attempt given
        back; False when ``owner`` no longer held it."""
        with self.transaction() as execute:
            cursor = execute(
                "UPDATE tasks SET status = 'pending', owner = NULL, progress = 0, live = NULL, error = %s, "
                f"attempts = attempts - 1, not_before = {self.now} + %s, updated = {self.now} "
                "WHERE id = %s AND owner = %s AND status = 'running'",
                (error, delay, task_id, owner),
            )
            return cursor.rowcount == 1

    def release_owned(self, owner: str) -> int:
        """Give back at once whatever ``owner`` runs (a gateway shutting down), attempts given back."""
        with self.transaction() as execute:
            cursor = execute(
                f"UPDATE tasks SET status = 'pending', owner = NULL, progress = 0, live = NULL, "  # noqa: S608
                f"attempts = attempts - 1, updated = {self.now} WHERE owner = %s AND status = 'running'",
                (owner,),
            )
            return cursor.rowcount

    def finish_task(
        self, task_id: str, owner: str, status: str, result: dict[str, Any] | None, error: str | None
    ) -> bool:
        """Write a task's outcome if ``owner`` still holds it; False when its lease ran out and another
        worker took it (that worker's outcome counts, this one is dropped)."""
        if status not in ("completed", "failed"):
            raise ValueError(f"a task finishes completed or failed, not {status!r}")
        with self.transaction() as execute:
            cursor = execute(
                "UPDATE tasks SET status = %s, progress = 1, live = NULL, result = %s, error = %s, "
                f"owner = NULL, updated = {self.now} WHERE id = %s AND owner = %s AND status = 'running'",
                (status, None if result is None else json.dumps(result), error, task_id, owner),
            )
            return cursor.rowcount == 1

    def expire_leases(self) -> int:
        """End every lease now (one machine, the gateway restarting: its old workers are gone)."""
        with self.transaction() as execute:
            return execute("UPDATE tasks SET lease_until = 0 WHERE status = 'running'", ()).rowcount

    def close(self) -> None:
        """Release connections (nothing to do for SQLite)."""


def _task(row: Any) -> TaskRecord:
    return TaskRecord(
        id=row["id"],
        tool=row["tool"],
        args=json.loads(row["args"]),
        status=row["status"],
        progress=float(row["progress"]),
        result=None if row["result"] is None else json.loads(row["result"]),
        error=row["error"],
        created=float(row["created"]),
        updated=float(row["updated"]),
        attempts=int(row["attempts"]),
        digest=row["digest"],
        live=None if row["live"] is None else json.loads(row["live"]),
    )


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    uuid TEXT PRIMARY KEY, ext TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, tool TEXT NOT NULL, args TEXT NOT NULL, status TEXT NOT NULL,
    progress REAL NOT NULL, result TEXT, error TEXT, created REAL NOT NULL, updated REAL NOT NULL
);
"""
# Columns added since the first release: added to an older database when it is opened.
_SQLITE_ADDED = {
    "owner": "TEXT",
    "lease_until": "REAL NOT NULL DEFAULT 0",
    "not_before": "REAL NOT NULL DEFAULT 0",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "digest": "TEXT",
    "live": "TEXT",
}


class SqliteTaskStore(SqlTaskStore):
    """One database file for one gateway process: writes are serialised by SQLite itself, so a claim
    needs no row locks (``skip_locked`` stays empty)."""

    now = "((julianday('now') - 2440587.5) * 86400.0)"

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30)
        try:
            with db:
                db.executescript(_SQLITE_SCHEMA)
                present = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
                for name, kind in _SQLITE_ADDED.items():
                    if name not in present:
                        db.execute(f"ALTER TABLE tasks ADD COLUMN {name} {kind}")
                db.execute("CREATE INDEX IF NOT EXISTS tasks_due ON tasks (status, created)")
        finally:
            db.close()

    @contextmanager
    def transaction(self) -> Iterator[Execute]:
        # One connection per transaction: threads share nothing. A deferred BEGIN: reads (an image's
        # row, a task's status) do not queue behind writes; every write here is one statement (a claim
        # is one UPDATE with its SELECT inside), which SQLite runs atomically under its write lock.
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("BEGIN")
            try:
                yield lambda sql, params: db.execute(sql.replace("%s", "?"), tuple(params))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:  # a locked or broken file: retried later, like a server
            raise TaskStoreUnavailable(f"the task database {self.path}: {exc}") from exc
        finally:
            db.close()
