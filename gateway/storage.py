"""Where the gateway keeps images and async tasks: one interface, and the embedded local backend.

:class:`LocalStorage` keeps image metadata and the async tasks in ``DATA/gateway.sqlite3`` and the image
bytes in an :class:`~.blobs.ImageBlobs` store: files under ``DATA/images`` by default, or an
S3-compatible bucket. The bytes are stored whole first, then the row is inserted: an image is listed
only once it is complete, so a crash leaves at worst an orphan object, never a half image behind a UUID.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .blobs import ImageBlobs, LocalBlobs

IMAGE_EXTENSIONS = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
TASK_STATUSES = ("pending", "running", "completed", "failed")


@dataclass(frozen=True)
class StoredImage:
    uuid: str
    ext: str
    data: bytes

    @property
    def media_type(self) -> str:
        return IMAGE_EXTENSIONS[self.ext]


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


class TaskExists(Exception):
    """A task with this id was created before."""


class Storage(Protocol):
    def put_image(self, data: bytes, ext: str) -> str: ...

    def delete_image(self, image_uuid: str) -> None: ...

    def get_image(self, image_uuid: str) -> StoredImage | None: ...

    def image_link(self, image_uuid: str) -> tuple[str, str | None] | None:
        """(extension, a presigned URL or None) of a listed image; None when there is no such image."""
        ...

    def check(self) -> None:
        """Raise OSError when images cannot be stored or read (readiness)."""
        ...

    def create_task(self, tool: str, args: dict[str, Any], task_id: str | None = None) -> TaskRecord:
        """A new pending task; ``task_id`` None draws one. :class:`TaskExists` when the id is taken."""
        ...

    def get_task(self, task_id: str) -> TaskRecord | None: ...

    def update_task(self, task_id: str, **changes: Any) -> None: ...

    def unfinished_tasks(self) -> list[TaskRecord]: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    uuid TEXT PRIMARY KEY, ext TEXT NOT NULL, size INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, tool TEXT NOT NULL, args TEXT NOT NULL, status TEXT NOT NULL,
    progress REAL NOT NULL, result TEXT, error TEXT, created REAL NOT NULL, updated REAL NOT NULL
);
"""


class LocalStorage:
    """Metadata and tasks in SQLite, image bytes in ``blobs`` (default: files under ``ROOT/images``)."""

    def __init__(self, root: Path, blobs: ImageBlobs | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.blobs = blobs if blobs is not None else LocalBlobs(root / "images")
        self._database = root / "gateway.sqlite3"
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection per operation (threads share nothing), committed and closed at the end."""
        db = sqlite3.connect(self._database, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    # -- images -----------------------------------------------------------------------------------

    def put_image(self, data: bytes, ext: str) -> str:
        if ext not in IMAGE_EXTENSIONS:
            raise ValueError(f"unknown image extension {ext!r}")
        image_uuid = str(uuid.uuid4())
        name = f"{image_uuid}.{ext}"
        self.blobs.write(name, data, IMAGE_EXTENSIONS[ext])
        try:
            with self._lock, self._connect() as db:
                db.execute(
                    "INSERT INTO images (uuid, ext, size, created) VALUES (?, ?, ?, ?)",
                    (image_uuid, ext, len(data), time.time()),
                )
        except BaseException:  # a failed insert: the stored bytes go too
            self.blobs.delete(name)
            raise
        return image_uuid

    def delete_image(self, image_uuid: str) -> None:
        """Forget an image (row first, so it is never listed without its bytes); absent is fine."""
        with self._lock, self._connect() as db:
            row = db.execute("SELECT ext FROM images WHERE uuid = ?", (image_uuid,)).fetchone()
            db.execute("DELETE FROM images WHERE uuid = ?", (image_uuid,))
        if row is not None:
            self.blobs.delete(f"{image_uuid}.{row['ext']}")

    def _extension(self, image_uuid: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT ext FROM images WHERE uuid = ?", (image_uuid,)).fetchone()
        return None if row is None else row["ext"]

    def get_image(self, image_uuid: str) -> StoredImage | None:
        ext = self._extension(image_uuid)
        if ext is None:
            return None
        data = self.blobs.read(f"{image_uuid}.{ext}")
        return None if data is None else StoredImage(image_uuid, ext, data)

    def image_link(self, image_uuid: str) -> tuple[str, str | None] | None:
        ext = self._extension(image_uuid)
        return None if ext is None else (ext, self.blobs.link(f"{image_uuid}.{ext}"))

    def check(self) -> None:
        self.blobs.check()
        with self._connect() as db:
            db.execute("SELECT 1").fetchone()

    # -- async tasks ------------------------------------------------------------------------------

    def create_task(self, tool: str, args: dict[str, Any], task_id: str | None = None) -> TaskRecord:
        now = time.time()
        record = TaskRecord(task_id or str(uuid.uuid4()), tool, args, "pending", 0.0, None, None, now, now)
        try:
            with self._lock, self._connect() as db:
                db.execute(
                    "INSERT INTO tasks VALUES (?, ?, ?, ?, ?, NULL, NULL, ?, ?)",
                    (record.id, tool, json.dumps(args), record.status, 0.0, now, now),
                )
        except sqlite3.IntegrityError:
            raise TaskExists(record.id) from None
        return record

    def get_task(self, task_id: str) -> TaskRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return None if row is None else _task(row)

    def update_task(self, task_id: str, **changes: Any) -> None:
        allowed = {"status", "progress", "result", "error"}
        if not changes or set(changes) - allowed:
            raise ValueError(f"update_task takes {sorted(allowed)}, got {sorted(changes)}")
        if "status" in changes and changes["status"] not in TASK_STATUSES:
            raise ValueError(f"unknown task status {changes['status']!r}")
        if "result" in changes and changes["result"] is not None:
            changes["result"] = json.dumps(changes["result"])
        columns = ", ".join(f"{name} = ?" for name in changes)
        with self._lock, self._connect() as db:
            db.execute(
                f"UPDATE tasks SET {columns}, updated = ? WHERE id = ?",  # noqa: S608 - names from `allowed`
                (*changes.values(), time.time(), task_id),
            )

    def unfinished_tasks(self) -> list[TaskRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM tasks WHERE status IN ('pending', 'running') ORDER BY created"
            ).fetchall()
        return [_task(row) for row in rows]


def _task(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        id=row["id"],
        tool=row["tool"],
        args=json.loads(row["args"]),
        status=row["status"],
        progress=row["progress"],
        result=None if row["result"] is None else json.loads(row["result"]),
        error=row["error"],
        created=row["created"],
        updated=row["updated"],
    )
